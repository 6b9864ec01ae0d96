//! `switch`: SWITCHES blue/green switches under keep-alive load, cutover
//! against the seed's deploy with nginx; failed requests counted by the
//! load client.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::backend::TestApp;
use crate::bench::Bench;
use crate::client::{self, Client, ClientSpec};
use crate::net;
use crate::nginx::{self, Nginx, NginxSpec};
use crate::pin::Pins;
use crate::processes::Proc;
use crate::report::{self, SwitchRow};

const WORKERS: u32 = 1;
/// Between two switches (not counted in ms_per_switch).
const PAUSE: Duration = Duration::from_millis(200);

pub fn run(bench: &Bench, conns: u32) -> Result<String> {
    let pins = bench.pins(WORKERS);
    let switches = bench.cli.switches;
    log!("switch: {switches} switches under keep-alive load ({conns} connections), WORKERS={WORKERS}");
    let mut rows = Vec::new();
    match cutover_row(bench, &pins, conns) {
        Ok(row) => rows.push(row),
        Err(e) => {
            bench.mark_failed();
            log!("  cutover: not measured: {e:#}");
        }
    }
    bench.processes.stop_all();
    rows.push(seed_row(bench, &pins, conns)?);
    bench.processes.stop_all();
    Ok(report::switch_table(conns, &rows))
}

/// `cutover deploy bench --version vN`, N = 2, 3, …: each starts the new
/// release, health-checks it, switches, drains and stops the old one.
fn cutover_row(bench: &Bench, pins: &Pins, conns: u32) -> Result<SwitchRow> {
    if !bench.cutover_available() {
        anyhow::bail!("{} is missing", bench.bins.cutover.display());
    }
    let cutover = bench.start_cutover(WORKERS, &pins.servers)?;
    let deploy = |n: u32| cutover.deploy(&bench.processes, &format!("v{}", n + 1));
    let row = under_load(bench, pins, "cutover", cutover.port, conns, deploy);
    cutover.stop(&bench.processes);
    row
}

/// The seed's deploy without docker: start the new version on another
/// port, wait until it answers, rewrite `service-url.inc`, `nginx -s
/// reload`, SIGTERM the old version.
fn seed_row(bench: &Bench, pins: &Pins, conns: u32) -> Result<SwitchRow> {
    let backend = bench.start_backend(WORKERS, &pins.servers)?;
    let port = net::free_port()?;
    let dir = bench.fresh_dir("nginx-seed-switch-w1");
    let nginx = bench.start_nginx(NginxSpec {
        site: nginx::seed_site(port, &dir),
        dir,
        port,
        workers: WORKERS,
        worker_connections: nginx::DEFAULT_WORKER_CONNECTIONS,
        include: Some(nginx::service_url_include(backend.port)),
        pin: &pins.servers,
    })?;
    let mut live = backend.proc;
    let switch = |n: u32| seed_switch(bench, pins, &nginx, &mut live, n);
    under_load(bench, pins, "nginx-seed-reload", port, conns, switch)
}

fn seed_switch(bench: &Bench, pins: &Pins, nginx: &Nginx, live: &mut Proc, n: u32) -> Result<()> {
    let next = TestApp {
        binary: &bench.bins.testapp,
        pin: &pins.servers,
        port: Some(net::free_port()?),
        version: &format!("v{}", n + 1),
        threads: WORKERS,
        log: &bench.fresh_dir("seed-app"),
    }
    .start(&bench.processes)?;
    nginx.switch_backend(next.port)?;
    bench.processes.terminate(live);
    *live = next.proc;
    Ok(())
}

/// The load client on `port` while `switch(1..=SWITCHES)` runs.
fn under_load(
    bench: &Bench,
    pins: &Pins,
    name: &str,
    port: u16,
    conns: u32,
    mut switch: impl FnMut(u32) -> Result<()>,
) -> Result<SwitchRow> {
    let client = Client::start(
        &bench.processes,
        ClientSpec {
            binary: &bench.bins.client,
            pin: &pins.load,
            mode: "load",
            port,
            conns,
            out: bench
                .fresh_dir(&format!("switch-{name}"))
                .with_extension("out"),
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let switches = bench.cli.switches;
    let started = Instant::now();
    let mut switches_ok = 0;
    for n in 1..=switches {
        match switch(n) {
            Ok(()) => switches_ok += 1,
            Err(e) => log!("  {name}: switch {n} failed: {e:#}"),
        }
        std::thread::sleep(PAUSE);
    }
    let took = started.elapsed().saturating_sub(PAUSE * switches);
    std::thread::sleep(Duration::from_secs(1));
    let summary = client::load_summary(&client.finish(&bench.processes));
    let row = SwitchRow {
        target: name.to_string(),
        switches_ok,
        switches,
        requests: summary.requests,
        failed: summary.failed,
        failure_kinds: summary.failure_kinds,
        ms_per_switch: u64::try_from((took / switches).as_millis()).unwrap_or(u64::MAX),
    };
    log!("  {}", row.line());
    Ok(row)
}
