//! The tables, as text: one per shape and worker count (median round by
//! req/s, ratios below), the idle-memory table and the switch table.

use std::fmt::Write;

use crate::config::Target;
use crate::wrk::Metrics;

/// How one round of one target ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Measured(Metrics),
    /// `target/release/cutover` is missing.
    Skipped,
    /// It could not be set up.
    Failed,
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Measured(_) => "measured",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

/// One round of one target at one worker count.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub workers: u32,
    pub target: Target,
    pub outcome: Outcome,
}

/// The title line of a table.
pub struct Heading<'a> {
    pub shape: &'a str,
    pub workers: u32,
    pub conns: u32,
    pub duration: &'a str,
    pub rounds: u32,
    pub path: &'a str,
    pub server_cpus: &'a str,
    pub load_cpus: &'a str,
}

/// The round with the median req/s (the lower one of an even count).
pub fn median<'a>(measured: impl IntoIterator<Item = &'a Metrics>) -> Option<&'a Metrics> {
    let mut sorted: Vec<&Metrics> = measured.into_iter().collect();
    sorted.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

fn measured(rounds: &[Round], workers: u32, target: Target) -> Vec<&Metrics> {
    rounds
        .iter()
        .filter(|r| r.workers == workers && r.target == target)
        .filter_map(|r| match &r.outcome {
            Outcome::Measured(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn or_dash(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// One table: a row per target (its median round), then the ratio lines.
pub fn table(heading: &Heading<'_>, targets: &[Target], rounds: &[Round]) -> String {
    let h = heading;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {}  WORKERS={}  conns={}  duration={} x {} round(s)  path={}   pin: servers={} wrk={}",
        h.shape, h.workers, h.conns, h.duration, h.rounds, h.path, h.server_cpus, h.load_cpus
    );
    out.push_str(&columns());
    for &target in targets {
        out.push_str(&target_row(h, target, rounds));
    }
    out.push_str(&ratios(h.workers, rounds));
    out
}

fn target_row(h: &Heading<'_>, target: Target, rounds: &[Round]) -> String {
    let unmeasured: Vec<&Outcome> = rounds
        .iter()
        .filter(|r| r.workers == h.workers && r.target == target)
        .map(|r| &r.outcome)
        .filter(|o| !matches!(o, Outcome::Measured(_)))
        .collect();
    let last_word = unmeasured.last().map(|o| o.word());
    let Some(m) = median(measured(rounds, h.workers, target)) else {
        return last_word.map_or_else(String::new, |w| {
            format!("{target:<16} {:>11}\n", format!("({w})"))
        });
    };
    let note = last_word.map_or_else(String::new, |w| {
        format!("  ({w} in {} of {} rounds)", unmeasured.len(), h.rounds)
    });
    let row = metrics_row(target.name(), m);
    format!("{}{note}\n", row.trim_end_matches('\n'))
}

/// The line naming a table's columns.
pub fn columns() -> String {
    format!(
        "{:<16} {:>11} {:>8} {:>8} {:>8} {:>6} {:>10} {:>8} {:>16} {:>14} {:>14}\n",
        "target",
        "req/s",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "proxy_cpu%",
        "app_cpu%",
        "proxy_cpu_us/req",
        "app_cpu_us/req",
        "wrk_cpu_us/req"
    )
}

/// One measured row of a table's columns, named `name`.
pub fn metrics_row(name: &str, m: &Metrics) -> String {
    format!(
        "{:<16} {:>11} {:>8} {:>8} {:>8} {:>6} {:>10} {:>8} {:>16} {:>14} {:>14}\n",
        name,
        format!("{:.1}", m.requests_per_second),
        ms(m.p50_us),
        ms(m.p99_us),
        ms(m.max_us),
        m.errors,
        or_dash(m.proxy_cpu_percent, 0),
        format!("{:.0}", m.app_cpu_percent),
        or_dash(m.proxy_cpu_us_per_request, 1),
        or_dash(m.app_cpu_us_per_request, 1),
        or_dash(m.load_cpu_us_per_request, 1),
    )
}

fn ratios(workers: u32, rounds: &[Round]) -> String {
    let of = |target| median(measured(rounds, workers, target));
    let cutover = of(Target::Cutover);
    let keepalive = of(Target::NginxKeepalive);
    let seed = of(Target::NginxSeed);
    let mut out = String::from(
        "ratios (req/s: higher is better for the first; p99 and proxy CPU per request: lower is better):\n",
    );
    out.push_str(&ratio_line("cutover/nginx-keepalive", cutover, keepalive));
    out.push_str(&ratio_line("cutover/nginx-seed     ", cutover, seed));
    out.push_str(&ratio_line("nginx-keepalive/seed   ", keepalive, seed));
    let epoll = of(Target::CutoverEpoll);
    if epoll.is_some() {
        out.push_str(&ratio_line(
            "cutover-epoll/nginx-keepalive",
            epoll,
            keepalive,
        ));
        out.push_str(&ratio_line("cutover/cutover-epoll        ", cutover, epoll));
    }
    // The io_uring prototype only when it was asked for (TARGETS).
    let probe = of(Target::UringProbe);
    if probe.is_some() {
        out.push_str(&ratio_line("uring-probe/nginx-keepalive", probe, keepalive));
        out.push_str(&ratio_line("uring-probe/cutover        ", probe, cutover));
    }
    out
}

/// `a` against `b`: req/s, p99 and proxy CPU per request as factors.
pub fn ratio_line(label: &str, a: Option<&Metrics>, b: Option<&Metrics>) -> String {
    let (Some(a), Some(b)) = (a, b) else {
        return format!("  {label}  n/a (a target was not measured)\n");
    };
    let p99 = if b.p99_us > 0.0 {
        a.p99_us / b.p99_us
    } else {
        0.0
    };
    let cpu = match (a.proxy_cpu_us_per_request, b.proxy_cpu_us_per_request) {
        (Some(a), Some(b)) if b > 0.0 => format!("x{:.2}", a / b),
        _ => "n/a".into(),
    };
    format!(
        "  {label}  req/s x{:.2}   p99 x{p99:.2}   proxy cpu/req {cpu}\n",
        a.requests_per_second / b.requests_per_second
    )
}

/// Memory of one proxy holding idle connections.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleRow {
    pub target: String,
    pub connections: u64,
    pub rss_before_kib: u64,
    pub rss_holding_kib: u64,
}

impl IdleRow {
    pub fn line(&self) -> String {
        let per_conn = if self.connections > 0 {
            let grown = self.rss_holding_kib as f64 - self.rss_before_kib as f64;
            format!("{:.1}", grown / self.connections as f64)
        } else {
            "-".into()
        };
        format!(
            "{:<16} {:>14} {:>12.1} {:>14.1} {:>16}",
            self.target,
            self.connections,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_holding_kib as f64 / 1024.0,
            per_conn
        )
    }
}

pub fn idle_table(rows: &[IdleRow]) -> String {
    let mut out = String::from(
        "\n== idle keep-alive connections: resident memory (master + workers for nginx; `cutover serve` alone)\n",
    );
    let _ = writeln!(
        out,
        "{:<16} {:>14} {:>12} {:>14} {:>16}",
        "target", "connections", "rss_before_MiB", "rss_holding_MiB", "KiB_per_conn"
    );
    for row in rows {
        let _ = writeln!(out, "{}", row.line());
    }
    out
}

/// Failed requests of one target during its switches.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchRow {
    pub target: String,
    pub switches_ok: u32,
    pub switches: u32,
    /// From the load client's summary; `None` if it printed none.
    pub requests: Option<u64>,
    pub failed: Option<u64>,
    pub failure_kinds: Option<String>,
    pub ms_per_switch: u64,
}

impl SwitchRow {
    pub fn line(&self) -> String {
        let known = |v: Option<u64>| v.map_or_else(|| "?".into(), |v| v.to_string());
        format!(
            "{:<18} {:>8} {:>10} {:>10} {:>14}  {}",
            self.target,
            format!("{}/{}", self.switches_ok, self.switches),
            known(self.requests),
            known(self.failed),
            self.ms_per_switch,
            self.failure_kinds.as_deref().unwrap_or("?")
        )
    }
}

pub fn switch_table(conns: u32, rows: &[SwitchRow]) -> String {
    let mut out = format!(
        "\n== switches under keep-alive load ({conns} connections; a failed request = no complete 2xx answer)\n"
    );
    let _ = writeln!(
        out,
        "{:<18} {:>8} {:>10} {:>10} {:>14}  failure_kinds",
        "target", "switches", "requests", "failed", "ms_per_switch"
    );
    for row in rows {
        let _ = writeln!(out, "{}", row.line());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(rps: f64, p99_us: f64, proxy_us: Option<f64>) -> Metrics {
        Metrics {
            requests_per_second: rps,
            p50_us: 1234.0,
            p99_us,
            max_us: 10_000.0,
            errors: 0,
            proxy_cpu_percent: proxy_us.map(|_| 48.0),
            app_cpu_percent: 51.0,
            proxy_cpu_us_per_request: proxy_us,
            app_cpu_us_per_request: Some(12.25),
            load_cpu_us_per_request: Some(9.5),
        }
    }

    fn round(target: Target, outcome: Outcome) -> Round {
        Round {
            workers: 1,
            target,
            outcome,
        }
    }

    fn heading(rounds: u32) -> Heading<'static> {
        Heading {
            shape: "keepalive",
            workers: 1,
            conns: 50,
            duration: "10s",
            rounds,
            path: "/",
            server_cpus: "0",
            load_cpus: "1",
        }
    }

    #[test]
    fn the_median_is_the_middle_round_by_requests_per_second() {
        let rounds = [
            metrics(30.0, 1.0, None),
            metrics(10.0, 2.0, None),
            metrics(20.0, 3.0, None),
        ];
        assert_eq!(median(&rounds).unwrap().requests_per_second, 20.0);
        // An even count takes the lower of the two middle rounds.
        assert_eq!(median(&rounds[..2]).unwrap().requests_per_second, 10.0);
        assert!(median(&[]).is_none());
    }

    #[test]
    fn a_table_has_a_row_per_target_and_the_ratio_lines() {
        let rounds = [
            round(
                Target::Direct,
                Outcome::Measured(metrics(50000.0, 1500.0, None)),
            ),
            round(
                Target::Cutover,
                Outcome::Measured(metrics(42000.0, 1800.0, Some(11.0))),
            ),
            round(
                Target::NginxSeed,
                Outcome::Measured(metrics(12000.0, 6000.0, Some(40.0))),
            ),
            round(
                Target::NginxKeepalive,
                Outcome::Measured(metrics(40000.0, 2000.0, Some(12.5))),
            ),
        ];
        let text = table(&heading(1), &Target::ALL, &rounds);
        let expected = "
== keepalive  WORKERS=1  conns=50  duration=10s x 1 round(s)  path=/   pin: servers=0 wrk=1
target                 req/s   p50_ms   p99_ms   max_ms errors proxy_cpu% app_cpu% proxy_cpu_us/req app_cpu_us/req wrk_cpu_us/req
direct               50000.0     1.23     1.50    10.00      0          -       51                -           12.2            9.5
cutover              42000.0     1.23     1.80    10.00      0         48       51             11.0           12.2            9.5
nginx-seed           12000.0     1.23     6.00    10.00      0         48       51             40.0           12.2            9.5
nginx-keepalive      40000.0     1.23     2.00    10.00      0         48       51             12.5           12.2            9.5
ratios (req/s: higher is better for the first; p99 and proxy CPU per request: lower is better):
  cutover/nginx-keepalive  req/s x1.05   p99 x0.90   proxy cpu/req x0.88
  cutover/nginx-seed       req/s x3.50   p99 x0.30   proxy cpu/req x0.28
  nginx-keepalive/seed     req/s x3.33   p99 x0.33   proxy cpu/req x0.31
";
        assert_eq!(text, expected);
    }

    #[test]
    fn skipped_and_failed_rounds_show_in_the_table() {
        let rounds = [
            round(Target::Cutover, Outcome::Skipped),
            round(Target::NginxKeepalive, Outcome::Failed),
            round(
                Target::NginxKeepalive,
                Outcome::Measured(metrics(40000.0, 2000.0, Some(12.5))),
            ),
        ];
        let targets = [Target::Cutover, Target::NginxKeepalive];
        let text = table(&heading(2), &targets, &rounds);
        assert!(text.contains("\ncutover            (skipped)\n"), "{text}");
        assert!(text.contains("9.5  (failed in 1 of 2 rounds)\n"), "{text}");
        assert!(text.contains("  cutover/nginx-keepalive  n/a (a target was not measured)\n"));
    }

    #[test]
    fn the_uring_probe_gets_its_ratio_lines_only_when_measured() {
        let keepalive = round(
            Target::NginxKeepalive,
            Outcome::Measured(metrics(40000.0, 2000.0, Some(12.5))),
        );
        let probe = round(
            Target::UringProbe,
            Outcome::Measured(metrics(48000.0, 1000.0, Some(10.0))),
        );
        let targets = [Target::NginxKeepalive, Target::UringProbe];
        let text = table(&heading(1), &targets, &[keepalive.clone(), probe]);
        assert!(
            text.contains(
                "  uring-probe/nginx-keepalive  req/s x1.20   p99 x0.50   proxy cpu/req x0.80\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  uring-probe/cutover          n/a"),
            "{text}"
        );
        let without = table(&heading(1), &targets, &[keepalive]);
        assert!(!without.contains("uring-probe/"), "{without}");
    }

    #[test]
    fn ratios_without_a_proxy_cost_or_p99_say_so() {
        let a = metrics(10.0, 5.0, Some(1.0));
        let b = metrics(20.0, 0.0, None);
        assert_eq!(
            ratio_line("a/b", Some(&a), Some(&b)),
            "  a/b  req/s x0.50   p99 x0.00   proxy cpu/req n/a\n"
        );
    }

    #[test]
    fn the_idle_table_shows_memory_per_connection() {
        let rows = [
            IdleRow {
                target: "cutover".into(),
                connections: 1000,
                rss_before_kib: 10240,
                rss_holding_kib: 14336,
            },
            IdleRow {
                target: "nginx-keepalive".into(),
                connections: 0,
                rss_before_kib: 2048,
                rss_holding_kib: 2048,
            },
        ];
        let text = idle_table(&rows);
        assert!(text.contains("\ntarget              connections rss_before_MiB rss_holding_MiB     KiB_per_conn\n"), "{text}");
        assert!(
            text.contains(
                "\ncutover                    1000         10.0           14.0              4.1\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "nginx-keepalive               0          2.0            2.0                -\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_switch_table_shows_failed_requests_and_their_kinds() {
        let row = SwitchRow {
            target: "nginx-seed-reload".into(),
            switches_ok: 5,
            switches: 5,
            requests: Some(81234),
            failed: Some(0),
            failure_kinds: Some(String::new()),
            ms_per_switch: 41,
        };
        let text = switch_table(
            50,
            &[
                row.clone(),
                SwitchRow {
                    requests: None,
                    failed: None,
                    failure_kinds: None,
                    ..row
                },
            ],
        );
        assert!(text.starts_with("\n== switches under keep-alive load (50 connections; a failed request = no complete 2xx answer)\n"));
        assert!(text.contains("\ntarget             switches   requests     failed  ms_per_switch  failure_kinds\n"), "{text}");
        assert!(
            text.contains("\nnginx-seed-reload       5/5      81234          0             41  \n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\nnginx-seed-reload       5/5          ?          ?             41  ?\n"
            ),
            "{text}"
        );
    }
}
