//! `idle`: resident memory of cutover and nginx-keepalive holding
//! IDLE_CONNS idle keep-alive client connections (each sent one request,
//! so it is established through the proxy).

use std::time::Duration;

use anyhow::Result;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::bench::Bench;
use crate::client::{self, Client, ClientSpec};
use crate::config::Target;
use crate::net;
use crate::nginx::{self, NginxSpec};
use crate::pin::Pins;
use crate::procfs;
use crate::report::{self, IdleRow};

const WORKERS: u32 = 1;

pub fn run(bench: &Bench) -> Result<String> {
    let conns = bench.cli.idle_conns;
    let pins = bench.pins(WORKERS);
    raise_open_files(u64::from(conns) * 3 + 4096);
    log!("idle: {conns} idle keep-alive client connections, WORKERS={WORKERS}");
    let mut rows = Vec::new();
    match cutover_row(bench, &pins) {
        Ok(row) => rows.push(row),
        Err(e) => {
            bench.mark_failed();
            log!("  cutover: not measured: {e:#}");
        }
    }
    bench.processes.stop_all();
    rows.push(nginx_row(bench, &pins)?);
    bench.processes.stop_all();
    Ok(report::idle_table(&rows))
}

/// `cutover serve` alone (its app slots are not the proxy).
fn cutover_row(bench: &Bench, pins: &Pins) -> Result<IdleRow> {
    if !bench.cutover_available() {
        anyhow::bail!("{} is missing", bench.bins.cutover.display());
    }
    let cutover = bench.start_cutover(WORKERS, &pins.servers)?;
    let row = hold_idle(
        bench,
        pins,
        Target::Cutover,
        cutover.port,
        &[cutover.proc.pid],
    );
    cutover.stop(&bench.processes);
    row
}

/// nginx master + workers, with room for every connection (nginx
/// preallocates per connection, which is part of its number).
fn nginx_row(bench: &Bench, pins: &Pins) -> Result<IdleRow> {
    let backend = bench.start_backend(WORKERS, &pins.servers)?;
    let port = net::free_port()?;
    let nginx = bench.start_nginx(NginxSpec {
        dir: bench.fresh_dir("nginx-idle-w1"),
        port,
        workers: WORKERS,
        worker_connections: bench.cli.idle_conns + 1024,
        site: nginx::keepalive_site(port, backend.port, bench.cli.nginx_headers),
        include: None,
        pin: &pins.servers,
    })?;
    let row = hold_idle(bench, pins, Target::NginxKeepalive, port, &nginx.pids());
    bench.processes.stop(&nginx.proc);
    row
}

/// The memory of `pids` before and while the client holds its connections.
fn hold_idle(
    bench: &Bench,
    pins: &Pins,
    target: Target,
    port: u16,
    pids: &[i32],
) -> Result<IdleRow> {
    let before = procfs::rss_kib(pids);
    let client = Client::start(
        &bench.processes,
        ClientSpec {
            binary: &bench.bins.client,
            pin: &pins.load,
            mode: "idle",
            port,
            conns: bench.cli.idle_conns,
            out: bench
                .fresh_dir(&format!("idle-{target}"))
                .with_extension("out"),
        },
    )?;
    let ready = client.wait_for_line(&bench.processes, "ready", Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let holding = procfs::rss_kib(pids);
    client.finish(&bench.processes);
    let row = IdleRow {
        target: target.to_string(),
        connections: ready
            .as_deref()
            .and_then(client::ready_connections)
            .unwrap_or(0),
        rss_before_kib: before,
        rss_holding_kib: holding,
    };
    log!("  {}", row.line());
    Ok(row)
}

/// Room for the client's, the proxy's and the backend's sockets (they all
/// inherit the bench's limit).
fn raise_open_files(wanted: u64) {
    let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
        if soft >= wanted {
            return Ok(());
        }
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted))
    });
    if raised.is_err() {
        log!("WARNING: cannot raise the open-files limit to {wanted}; connections may fail");
    }
}
