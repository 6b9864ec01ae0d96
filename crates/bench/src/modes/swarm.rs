//! `swarm`: cutover with an `[app.swarm]` app on this machine's swarm
//! (tasks of the release testapp in a `FROM scratch` image). For each
//! REPLICAS count, v1 → v2 under keep-alive load: failed requests and the
//! switch delay after the last task became healthy. Then, with 2 tasks,
//! req/s through cutover against nginx with an upstream of the same two
//! endpoints (keepalive), and one task directly for reference.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bench::Bench;
use crate::client::{self, Client, ClientSpec};
use crate::cutover::{Cutover, CutoverSpec};
use crate::net;
use crate::nginx::{self, NginxSpec};
use crate::pin::Pins;
use crate::report;
use crate::swarm::{self, SwarmGuard};
use crate::wrk::{Charged, Metrics};

const WORKERS: u32 = 1;
/// The task count of the req/s comparison.
const THROUGHPUT_REPLICAS: u32 = 2;
const VERSIONS: [&str; 2] = ["v1", "v2"];

/// One switch under load.
struct SwitchRow {
    replicas: u32,
    requests: Option<u64>,
    failed: Option<u64>,
    failure_kinds: Option<String>,
    deploy_ms: u128,
    switch_after_healthy_ms: Option<i64>,
}

impl SwitchRow {
    fn line(&self) -> String {
        let count = |n: Option<u64>| n.map_or_else(|| "?".into(), |n| n.to_string());
        let delay = self
            .switch_after_healthy_ms
            .map_or_else(|| "?".into(), |ms| ms.to_string());
        format!(
            "{:<8} {:>9} {:>7} {:>10} {:>26}  {}",
            self.replicas,
            count(self.requests),
            count(self.failed),
            self.deploy_ms,
            delay,
            self.failure_kinds.as_deref().unwrap_or("none")
        )
    }
}

pub fn run(bench: &Bench) -> Result<String> {
    swarm::require_manager()?;
    let guard = SwarmGuard;
    let repository = swarm::unique_repository();
    log!("swarm: building {repository}:{{v1,v2}} (release testapp FROM scratch)");
    swarm::build_images(&bench.bins.testapp, &repository, &VERSIONS, WORKERS)?;
    let pins = bench.pins(WORKERS);
    let conns = bench.cli.conns;
    let mut report = format!(
        "\n== swarm: v1 -> v2 under keep-alive load ({conns} connections), WORKERS={WORKERS}, proxy on cpus '{}', load on '{}', tasks unpinned\n{:<8} {:>9} {:>7} {:>10} {:>26}  failures\n",
        pins.servers.or("any"),
        pins.load.or("any"),
        "replicas",
        "requests",
        "failed",
        "deploy_ms",
        "switch_ms_after_healthy"
    );
    let mut throughput = None;
    for &replicas in &bench.cli.replicas.0 {
        let case = Case {
            bench,
            guard: &guard,
            pins: &pins,
            repository: &repository,
            replicas,
        };
        match case.run(throughput.is_none() && replicas == THROUGHPUT_REPLICAS) {
            Ok((row, measured)) => {
                report += &row.line();
                report.push('\n');
                throughput = throughput.or(measured);
            }
            Err(e) => {
                bench.mark_failed();
                log!("  {replicas} replicas: not measured: {e:#}");
                let _ = writeln!(report, "{replicas:<8} not measured: {e:#}");
            }
        }
    }
    report += &throughput.unwrap_or_else(|| {
        format!("\n(req/s comparison not run: REPLICAS has no {THROUGHPUT_REPLICAS})\n")
    });
    drop(guard);
    Ok(report)
}

/// One cutover instance with `replicas` tasks per release.
struct Case<'a> {
    bench: &'a Bench,
    guard: &'a SwarmGuard,
    pins: &'a Pins,
    repository: &'a str,
    replicas: u32,
}

impl Case<'_> {
    /// The switch row, and the req/s table when `compare` (with v2 live).
    fn run(&self, compare: bool) -> Result<(SwitchRow, Option<String>)> {
        let bench = self.bench;
        let dir = bench.fresh_dir(&format!("cutover-swarm-r{}", self.replicas));
        self.guard.track_instance(&dir.join("state"));
        let listen = net::free_port()?;
        let config = swarm::cutover_config(&dir, listen, WORKERS, self.repository, self.replicas);
        let spec = CutoverSpec {
            binary: &bench.bins.cutover,
            testapp: &bench.bins.testapp,
            pin: &self.pins.servers,
            workers: WORKERS,
            io: "auto",
            dir: dir.clone(),
        };
        log!("swarm: {} replicas: deploying v1", self.replicas);
        let cutover = Cutover::start_with_config(&bench.processes, &spec, listen, &config)?;
        let outcome = self.switch(&cutover).and_then(|row| {
            let table = compare.then(|| self.throughput(&cutover)).transpose()?;
            Ok((row, table))
        });
        cutover.stop(&bench.processes);
        swarm::remove_services(&dir.join("state").display().to_string());
        outcome
    }

    /// v1 → v2 while the load client runs.
    fn switch(&self, cutover: &Cutover) -> Result<SwitchRow> {
        let bench = self.bench;
        let client = Client::start(
            &bench.processes,
            ClientSpec {
                binary: &bench.bins.client,
                pin: &self.pins.load,
                mode: "load",
                port: cutover.port,
                conns: bench.cli.conns,
                out: bench
                    .fresh_dir(&format!("swarm-load-r{}", self.replicas))
                    .with_extension("out"),
            },
        )?;
        std::thread::sleep(Duration::from_secs(2));
        let started = std::time::Instant::now();
        let deployed = cutover.deploy(&bench.processes, "v2");
        let deploy_ms = started.elapsed().as_millis();
        std::thread::sleep(Duration::from_secs(1));
        let summary = client::load_summary(&client.finish(&bench.processes));
        deployed?;
        let row = SwitchRow {
            replicas: self.replicas,
            requests: summary.requests,
            failed: summary.failed,
            failure_kinds: summary.failure_kinds,
            deploy_ms,
            switch_after_healthy_ms: switch_delay(cutover),
        };
        log!("  {}", row.line());
        Ok(row)
    }

    /// req/s: one task directly, cutover to both tasks, nginx to both.
    fn throughput(&self, cutover: &Cutover) -> Result<String> {
        let bench = self.bench;
        let (slot, endpoints) = live_endpoints(cutover)?;
        let first = endpoints.first().context("no live endpoint")?;
        let app = swarm::task_pids(&format!("bench-{slot}"));
        let port = net::free_port()?;
        let nginx = bench.start_nginx(NginxSpec {
            dir: bench.fresh_dir("nginx-swarm-upstream"),
            port,
            workers: WORKERS,
            worker_connections: nginx::DEFAULT_WORKER_CONNECTIONS,
            site: nginx::upstream_site(port, &endpoints, bench.cli.nginx_headers),
            include: None,
            pin: &self.pins.servers,
        })?;
        let wrk = bench.wrk(&self.pins.load, bench.cli.conns, false);
        let (cutover_pids, nginx_pids) = ([cutover.proc.pid], nginx.pids());
        log!("swarm: req/s with {} tasks {endpoints:?}", endpoints.len());
        let measure = |label: &str, url: String, proxy: Option<&[i32]>| {
            bench.pause();
            let charged = Charged { proxy, app: &app };
            let measured = wrk.measure(&format!("wrk-swarm-{label}"), &url, charged);
            measured.map(|m| (label.to_string(), m))
        };
        let rows = [
            measure("direct-1-task", format!("http://{first}/"), None)?,
            measure("cutover", cutover_url(cutover), Some(&cutover_pids))?,
            measure(
                "nginx-upstream",
                format!("http://127.0.0.1:{port}/"),
                Some(&nginx_pids),
            )?,
        ];
        bench.processes.stop(&nginx.proc);
        Ok(throughput_table(bench, self.pins, &rows))
    }
}

fn cutover_url(cutover: &Cutover) -> String {
    format!("http://127.0.0.1:{}/", cutover.port)
}

/// The live slot and the `addr` of every healthy endpoint of its release
/// (`cutover status`).
fn live_endpoints(cutover: &Cutover) -> Result<(String, Vec<String>)> {
    let status = cutover.json(&["status", "bench"])?;
    let slot = status["live_slot"].as_str().context("no live slot")?;
    let endpoints = status["endpoints"].as_array().cloned().unwrap_or_default();
    let healthy = endpoints
        .iter()
        .filter(|e| e["healthy"] == true)
        .filter_map(|e| e["addr"].as_str().map(str::to_string))
        .collect();
    Ok((slot.to_string(), healthy))
}

/// The last deployment's switch delay after its last task was healthy.
fn switch_delay(cutover: &Cutover) -> Option<i64> {
    let history = cutover.json(&["history", "bench", "--limit", "1"]).ok()?;
    let id = history[0]["id"].as_i64()?;
    let detail = cutover.admin_get(&format!("/v1/deployments/{id}")).ok()?;
    swarm::switch_delay_ms(&detail)
}

fn throughput_table(bench: &Bench, pins: &Pins, rows: &[(String, Metrics)]) -> String {
    let mut out = format!(
        "\n== swarm req/s: {THROUGHPUT_REPLICAS} tasks, WORKERS={WORKERS}  conns={}  duration={}  path=/   pin: proxy={} wrk={} tasks=none\n{}",
        bench.cli.conns,
        bench.cli.duration,
        pins.servers.or("none"),
        pins.load.or("none"),
        report::columns(),
    );
    for (label, m) in rows {
        out += &report::metrics_row(label, m);
    }
    let of = |name: &str| rows.iter().find(|(l, _)| l == name).map(|(_, m)| m);
    out.push_str("ratios (req/s: higher is better for the first; p99 and proxy CPU per request: lower is better):\n");
    out += &report::ratio_line(
        "cutover/nginx-upstream",
        of("cutover"),
        of("nginx-upstream"),
    );
    out += &report::ratio_line("cutover/direct-1-task ", of("cutover"), of("direct-1-task"));
    out
}
