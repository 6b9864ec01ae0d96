//! `cutover-bench` (`bench/run`): throughput and latency of cutover's
//! built-in proxy against nginx, side by side, on one machine, in front of
//! the same backend with the same worker count. See bench/README.md.

/// Progress on standard error; the report goes to standard output.
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("bench: {}", format_args!($($arg)*))
    };
}

mod backend;
mod bench;
mod client;
mod config;
mod cutover;
mod modes;
mod net;
mod nginx;
mod pin;
mod processes;
mod procfs;
mod report;
mod swarm;
mod tools;
mod uring_probe;
mod wrk;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = config::Cli::parse();
    let outcome = run(cli);
    processes::yield_to_signal_handler();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            log!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The report on standard output; `false` if a target could not be set up.
fn run(cli: config::Cli) -> anyhow::Result<bool> {
    let bench = bench::Bench::new(cli)?;
    let report = modes::run(&bench)?;
    print!("{report}");
    if let Some(dir) = bench.kept_scratch() {
        println!("raw wrk output and configs: {}", dir.display());
    }
    Ok(!bench.has_failed())
}
