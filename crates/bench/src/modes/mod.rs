//! The modes; each returns the text it adds to the report.

mod idle;
mod swarm;
mod switch;
mod table;
mod upgrade;

use anyhow::Result;

use crate::bench::Bench;
use crate::config::{full_shapes, Mode};

/// `full`'s load for `idle`/`switch`, whatever CONNS said.
const FULL_SWITCH_CONNS: u32 = 50;

pub fn run(bench: &Bench) -> Result<String> {
    match bench.cli.mode {
        Mode::Table => table::run(bench, &bench.cli.shape()),
        Mode::Idle => idle::run(bench),
        Mode::Switch => switch::run(bench, bench.cli.conns),
        Mode::Upgrade => upgrade::run(bench),
        Mode::Swarm => swarm::run(bench),
        Mode::Full => {
            let mut report = String::new();
            for shape in full_shapes() {
                report += &table::run(bench, &shape)?;
            }
            report += &idle::run(bench)?;
            report += &switch::run(bench, FULL_SWITCH_CONNS)?;
            Ok(report)
        }
    }
}
