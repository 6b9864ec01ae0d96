//! wrk runs and what they measured: wrk prints one `BENCH_RESULT` line
//! through `bench/report.lua` (exact percentiles in µs, no human units),
//! and the CPU time of the proxy and of the backend is read from `/proc`
//! around the measured run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::WrkDuration;
use crate::pin::Pin;
use crate::processes::Processes;
use crate::procfs;

/// The wrk `done()` hook, written next to the raw output of each run.
pub const REPORT_LUA: &str = include_str!("../../../bench/report.lua");

/// What wrk reported for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub non2xx: u64,
    pub socket_errors: u64,
}

/// Reads the `BENCH_RESULT key=value …` line out of wrk's output.
pub fn parse_result(output: &str) -> Result<WrkResult> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_RESULT "))
        .context("no BENCH_RESULT line in wrk's output")?;
    let field = |name: &str| -> Result<&str> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("BENCH_RESULT without {name}: {line}"))
    };
    let int = |name: &str| -> Result<u64> {
        let value = field(name)?;
        value
            .parse()
            .with_context(|| format!("BENCH_RESULT {name}={value}: not a count"))
    };
    let micros = |name: &str| -> Result<f64> {
        let value = field(name)?;
        value
            .parse()
            .with_context(|| format!("BENCH_RESULT {name}={value}: not a number"))
    };
    Ok(WrkResult {
        requests: int("requests")?,
        duration_us: int("duration_us")?,
        p50_us: micros("p50_us")?,
        p99_us: micros("p99_us")?,
        max_us: micros("max_us")?,
        non2xx: int("non2xx")?,
        socket_errors: int("sockerr")?,
    })
}

/// CPU clock ticks used during the measured run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuUse {
    /// `None` for `direct` (there is no proxy).
    pub proxy_ticks: Option<u64>,
    pub app_ticks: u64,
    pub ticks_per_second: u64,
    /// wrk's own CPU time (user + system), µs; `None` if it could not be
    /// read.
    pub load_us: Option<u64>,
}

/// One measured round of one target: a row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub errors: u64,
    /// % of one core.
    pub proxy_cpu_percent: Option<f64>,
    pub app_cpu_percent: f64,
    pub proxy_cpu_us_per_request: Option<f64>,
    pub app_cpu_us_per_request: Option<f64>,
    /// The load generator's: on CPUs it shares with the servers, what it
    /// takes per request is not the proxy's to spend.
    pub load_cpu_us_per_request: Option<f64>,
}

impl Metrics {
    pub fn new(result: &WrkResult, cpu: CpuUse) -> Metrics {
        let seconds = result.duration_us.max(1) as f64 / 1e6;
        let cpu_seconds = |ticks: u64| ticks as f64 / cpu.ticks_per_second.max(1) as f64;
        let per_request = |ticks: u64| {
            (result.requests > 0).then(|| 1e6 * cpu_seconds(ticks) / result.requests as f64)
        };
        Metrics {
            requests_per_second: result.requests as f64 / seconds,
            p50_us: result.p50_us,
            p99_us: result.p99_us,
            max_us: result.max_us,
            errors: result.non2xx + result.socket_errors,
            proxy_cpu_percent: cpu.proxy_ticks.map(|t| 100.0 * cpu_seconds(t) / seconds),
            app_cpu_percent: 100.0 * cpu_seconds(cpu.app_ticks) / seconds,
            proxy_cpu_us_per_request: cpu.proxy_ticks.and_then(per_request),
            app_cpu_us_per_request: per_request(cpu.app_ticks),
            load_cpu_us_per_request: cpu
                .load_us
                .filter(|_| result.requests > 0)
                .map(|us| us as f64 / result.requests as f64),
        }
    }
}

/// The load settings every wrk run of a table shares.
pub struct Wrk<'a> {
    pub processes: &'a Processes,
    pub pin: Pin,
    pub conns: u32,
    pub duration: WrkDuration,
    pub warmup: WrkDuration,
    pub newconn: bool,
    /// Where raw outputs (and report.lua) go.
    pub dir: PathBuf,
}

/// The processes whose CPU time a run is charged to.
pub struct Charged<'a> {
    pub proxy: Option<&'a [i32]>,
    pub app: &'a [i32],
}

impl Wrk<'_> {
    /// A warm-up run (unless WARMUP=0), then the measured run against `url`.
    pub fn measure(&self, label: &str, url: &str, charged: Charged<'_>) -> Result<Metrics> {
        if !self.warmup.is_zero() {
            let out = self.dir.join(format!("{label}.warmup.txt"));
            self.run(&self.warmup, false, url, &out)?;
        }
        let out = self.dir.join(format!("{label}.txt"));
        let proxy_before = charged.proxy.map(procfs::cpu_ticks);
        let app_before = procfs::cpu_ticks(charged.app);
        let load_before = reaped_children_cpu_us();
        self.run(&self.duration, true, url, &out)?;
        // wrk (taskset execs it) is the only child reaped during its run,
        // unless a caller reaps others meanwhile (the upgrade mode drops it).
        let load_us = reaped_children_cpu_us()
            .zip(load_before)
            .map(|(after, before)| after.saturating_sub(before));
        let cpu = CpuUse {
            proxy_ticks: charged
                .proxy
                .zip(proxy_before)
                .map(|(pids, before)| procfs::cpu_ticks(pids).saturating_sub(before)),
            app_ticks: procfs::cpu_ticks(charged.app).saturating_sub(app_before),
            ticks_per_second: procfs::ticks_per_second(),
            load_us,
        };
        let output = std::fs::read_to_string(&out)?;
        let result = parse_result(&output)
            .with_context(|| format!("wrk for {label} (see {})", out.display()))?;
        Ok(Metrics::new(&result, cpu))
    }

    fn run(&self, duration: &WrkDuration, measured: bool, url: &str, out: &Path) -> Result<()> {
        let mut command = self.pin.command("wrk");
        command.args([
            "-t1",
            &format!("-c{}", self.conns),
            &format!("-d{duration}"),
        ]);
        if measured {
            let lua = self.dir.join("report.lua");
            if !lua.exists() {
                std::fs::write(&lua, REPORT_LUA)?;
            }
            command.arg("--latency").arg("-s").arg(lua);
        }
        if self.newconn {
            command.args(["-H", "Connection: close"]);
        }
        command
            .arg(url)
            .stdin(Stdio::null())
            .stdout(File::create(out)?)
            .stderr(Stdio::inherit());
        let wrk = self.processes.spawn("wrk", command)?.proc;
        // wrk stops itself after the duration; a generous bound for a hang.
        let limit = Duration::from_secs(3600);
        match self.processes.wait(&wrk, limit)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("wrk {url}: {status} (see {})", out.display()),
            None => {
                self.processes.stop(&wrk);
                bail!("wrk {url} did not finish within {limit:?}")
            }
        }
    }
}

/// CPU time (user + system, µs) of this process's children that were
/// waited for.
fn reaped_children_cpu_us() -> Option<u64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).ok()?;
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Some(us(usage.user_time()) + us(usage.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 3s test @ http://127.0.0.1:4000/\n  1 threads and 50 connections\n\
        Requests/sec:  41000.12\n\
        BENCH_RESULT requests=123000 duration_us=3000000 p50_us=1100 p99_us=2450 max_us=9800 non2xx=2 sockerr=1\n";

    #[test]
    fn the_bench_result_line_is_read_from_wrk_output() {
        assert_eq!(
            parse_result(OUTPUT).unwrap(),
            WrkResult {
                requests: 123000,
                duration_us: 3000000,
                p50_us: 1100.0,
                p99_us: 2450.0,
                max_us: 9800.0,
                non2xx: 2,
                socket_errors: 1,
            }
        );
    }

    #[test]
    fn output_without_a_complete_result_is_an_error() {
        assert!(parse_result("Running 3s test\nRequests/sec: 1\n").is_err());
        assert!(parse_result("BENCH_RESULT requests=1 duration_us=2\n").is_err());
        assert!(parse_result(&OUTPUT.replace("non2xx=2", "non2xx=x")).is_err());
    }

    #[test]
    fn metrics_are_per_second_and_per_request() {
        let result = parse_result(OUTPUT).unwrap();
        let cpu = CpuUse {
            proxy_ticks: Some(150),
            app_ticks: 120,
            ticks_per_second: 100,
            load_us: Some(246_000),
        };
        let m = Metrics::new(&result, cpu);
        assert_eq!(m.load_cpu_us_per_request, Some(2.0));
        assert_eq!(m.requests_per_second, 41000.0);
        assert_eq!(m.errors, 3);
        assert_eq!(m.proxy_cpu_percent, Some(50.0));
        assert_eq!(m.app_cpu_percent, 40.0);
        let per_req = m.proxy_cpu_us_per_request.unwrap();
        assert!((per_req - 1e6 * 1.5 / 123000.0).abs() < 1e-9);
        let direct = Metrics::new(
            &result,
            CpuUse {
                proxy_ticks: None,
                ..cpu
            },
        );
        assert_eq!(direct.proxy_cpu_percent, None);
        assert_eq!(direct.proxy_cpu_us_per_request, None);
    }

    #[test]
    fn no_requests_means_no_cost_per_request() {
        let result = WrkResult {
            requests: 0,
            ..parse_result(OUTPUT).unwrap()
        };
        let m = Metrics::new(
            &result,
            CpuUse {
                proxy_ticks: Some(1),
                app_ticks: 1,
                ticks_per_second: 100,
                load_us: Some(1),
            },
        );
        assert_eq!(m.app_cpu_us_per_request, None);
        assert_eq!(m.proxy_cpu_us_per_request, None);
        assert_eq!(m.load_cpu_us_per_request, None);
    }

    #[test]
    fn a_waited_for_childs_cpu_time_is_counted() {
        let before = reaped_children_cpu_us().unwrap();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(reaped_children_cpu_us().unwrap() > before);
    }
}
