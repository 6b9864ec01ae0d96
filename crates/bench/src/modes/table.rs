//! The table: every target at every worker count for one request shape,
//! ROUNDS times interleaved, each target's median round shown.

use anyhow::{Context, Result};

use crate::backend::Backend;
use crate::bench::Bench;
use crate::config::{Shape, Target};
use crate::net;
use crate::nginx::{self, NginxSpec};
use crate::pin::Pins;
use crate::report::{self, Heading, Outcome, Round};
use crate::wrk::{Charged, Metrics};

/// Where one measurement happens.
struct Setting<'a> {
    shape: &'a Shape,
    workers: u32,
    pins: &'a Pins,
    backend: &'a Backend,
    round: u32,
}

impl Setting<'_> {
    fn url(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}{}", self.shape.path)
    }

    /// The raw output's file name.
    fn label(&self, target: Target) -> String {
        let shape: String = (self.shape.label.chars())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("wrk-{shape}-w{}-{target}-r{}", self.workers, self.round)
    }
}

pub fn run(bench: &Bench, shape: &Shape) -> Result<String> {
    let targets = &bench.cli.targets.0;
    let counts = bench.cli.worker_counts();
    let mut rounds = Vec::new();
    for &workers in &counts {
        rounds.extend(run_workers(bench, shape, workers, targets)?);
    }
    let tables = counts.iter().map(|&workers| {
        let pins = bench.pins(workers);
        let heading = Heading {
            shape: &shape.label,
            workers,
            conns: shape.conns,
            duration: &bench.cli.duration.0,
            rounds: bench.cli.rounds,
            path: &shape.path,
            server_cpus: pins.servers.or("none"),
            load_cpus: pins.load.or("none"),
        };
        report::table(&heading, targets, &rounds)
    });
    Ok(tables.collect())
}

/// All rounds of all targets at one worker count, on one backend.
fn run_workers(
    bench: &Bench,
    shape: &Shape,
    workers: u32,
    targets: &[Target],
) -> Result<Vec<Round>> {
    let pins = bench.pins(workers);
    log!(
        "{}, WORKERS={workers}: servers on cpus '{}', wrk on cpus '{}'",
        shape.label,
        pins.servers.or("any"),
        pins.load.or("any")
    );
    let backend = bench.start_backend(workers, &pins.servers)?;
    let mut rounds = Vec::new();
    for round in 1..=bench.cli.rounds {
        if bench.cli.rounds > 1 {
            log!("round {round}/{}", bench.cli.rounds);
        }
        let setting = Setting {
            shape,
            workers,
            pins: &pins,
            backend: &backend,
            round,
        };
        for &target in targets {
            let outcome = measure(bench, &setting, target)?;
            if let Outcome::Measured(m) = &outcome {
                log_measured(target, m);
            }
            rounds.push(Round {
                workers,
                target,
                outcome,
            });
            bench.pause();
        }
    }
    bench.processes.stop_all();
    Ok(rounds)
}

fn log_measured(target: Target, m: &Metrics) {
    log!(
        "  {target}: {:.1} req/s, p99 {:.2} ms, errors {}",
        m.requests_per_second,
        m.p99_us / 1000.0,
        m.errors
    );
}

fn measure(bench: &Bench, at: &Setting<'_>, target: Target) -> Result<Outcome> {
    let wrk = bench.wrk(&at.pins.load, at.shape.conns, at.shape.newconn);
    let backend = [at.backend.proc.pid];
    match target {
        Target::Direct => {
            let charged = Charged {
                proxy: None,
                app: &backend,
            };
            let url = at.url(at.backend.port);
            Ok(Outcome::Measured(wrk.measure(
                &at.label(target),
                &url,
                charged,
            )?))
        }
        Target::Cutover => measure_cutover(bench, at, Target::Cutover),
        Target::CutoverEpoll => measure_cutover(bench, at, Target::CutoverEpoll),
        Target::UringProbe => measure_uring_probe(bench, at),
        Target::NginxSeed | Target::NginxKeepalive => {
            let nginx = start_nginx(bench, at, target)?;
            let proxy = nginx.pids();
            let charged = Charged {
                proxy: Some(&proxy),
                app: &backend,
            };
            let measured = wrk.measure(&at.label(target), &at.url(nginx.port), charged);
            bench.processes.stop(&nginx.proc);
            Ok(Outcome::Measured(measured?))
        }
    }
}

fn start_nginx(bench: &Bench, at: &Setting<'_>, target: Target) -> Result<nginx::Nginx> {
    let dir = bench.fresh_dir(&format!("{target}-w{}", at.workers));
    let port = net::free_port()?;
    let backend_port = at.backend.port;
    let (site, include) = match target {
        Target::NginxSeed => (
            nginx::seed_site(port, &dir),
            Some(nginx::service_url_include(backend_port)),
        ),
        _ => (
            nginx::keepalive_site(port, backend_port, bench.cli.nginx_headers),
            None,
        ),
    };
    let nginx = bench.start_nginx(NginxSpec {
        dir,
        port,
        workers: at.workers,
        worker_connections: nginx::DEFAULT_WORKER_CONNECTIONS,
        site,
        include,
        pin: &at.pins.servers,
    })?;
    net::check_version(nginx.port, "version=direct")
        .with_context(|| format!("nginx ({target}) does not proxy"))?;
    Ok(nginx)
}

/// Skipped if the binary is missing; failed (noted, the run goes on) if it
/// cannot be set up.
fn measure_cutover(bench: &Bench, at: &Setting<'_>, target: Target) -> Result<Outcome> {
    if !bench.cutover_available() {
        log!(
            "  cutover: SKIPPED: {} is missing (cargo build --release -p cutover)",
            bench.bins.cutover.display()
        );
        return Ok(Outcome::Skipped);
    }
    let io = if target == Target::CutoverEpoll {
        "epoll"
    } else {
        "auto"
    };
    let cutover = match bench.start_cutover_with_io(at.workers, &at.pins.servers, io) {
        Ok(cutover) => cutover,
        Err(e) => {
            log!("  {target}: FAILED: {e:#}");
            bench.mark_failed();
            return Ok(Outcome::Failed);
        }
    };
    let proxy = [cutover.proc.pid];
    let slots = cutover.slot_pids();
    let charged = Charged {
        proxy: Some(&proxy),
        app: &slots,
    };
    let wrk = bench.wrk(&at.pins.load, at.shape.conns, at.shape.newconn);
    let measured = wrk.measure(&at.label(target), &at.url(cutover.port), charged);
    cutover.stop(&bench.processes);
    Ok(Outcome::Measured(measured?))
}

/// Like cutover: skipped if the binary is missing, failed (noted, the run
/// goes on) if it cannot be set up.
fn measure_uring_probe(bench: &Bench, at: &Setting<'_>) -> Result<Outcome> {
    if !bench.uring_probe_available() {
        log!(
            "  uring-probe: SKIPPED: {} is missing (cargo build --release -p cutover-uring-probe)",
            bench.bins.uring_probe.display()
        );
        return Ok(Outcome::Skipped);
    }
    let probe = match bench.start_uring_probe(at.workers, &at.pins.servers, at.backend.port) {
        Ok(probe) => probe,
        Err(e) => {
            log!("  uring-probe: FAILED: {e:#}");
            bench.mark_failed();
            return Ok(Outcome::Failed);
        }
    };
    let proxy = [probe.proc.pid];
    let backend = [at.backend.proc.pid];
    let charged = Charged {
        proxy: Some(&proxy),
        app: &backend,
    };
    let wrk = bench.wrk(&at.pins.load, at.shape.conns, at.shape.newconn);
    let measured = wrk.measure(&at.label(Target::UringProbe), &at.url(probe.port), charged);
    bench.processes.stop(&probe.proc);
    Ok(Outcome::Measured(measured?))
}
