//! Helpers for the proxy's end-to-end tests (`tests/proxy_*.rs`): a daemon
//! with extra `[proxy]` keys, the daemon's process id, its metrics.

use super::{AppOptions, Daemon};
use cutover_test_support::process;
use std::fs;

/// A daemon whose `[proxy]` table also has `proxy_keys` (TOML lines), and
/// whose config may carry `tail` (more TOML, e.g. `[[proxy.tls]]` tables).
pub fn daemon_with_proxy(options: AppOptions, proxy_keys: &str, tail: &str) -> Daemon {
    let mut daemon = Daemon::start(options);
    // Nothing is deployed yet: stopping and starting again is clean.
    daemon.kill9();
    let config = fs::read_to_string(&daemon.config).unwrap();
    let listen = format!("listen = [\"127.0.0.1:{}\"]", daemon.proxy_port);
    assert!(
        config.contains(&listen),
        "unexpected harness config:\n{config}"
    );
    let config = config.replacen(&listen, &format!("{listen}\n{proxy_keys}"), 1);
    fs::write(&daemon.config, format!("{config}\n{tail}\n")).unwrap();
    daemon.spawn();
    daemon
}

/// The process id of this daemon's `cutover serve`.
pub fn serve_pid(daemon: &Daemon) -> u32 {
    let config = daemon.config.to_string_lossy().into_owned();
    process::find_by_args(&["serve", &config])
        .unwrap_or_else(|| panic!("no `cutover serve` process for {config}"))
}

/// GET on the admin API over its unix socket: (status, body).
pub fn admin_get_text(daemon: &Daemon, path: &str) -> (u16, String) {
    let answer = daemon.admin_request(path);
    (answer.status, answer.text())
}

/// One sample of Prometheus text: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses Prometheus text format 0.0.4 strictly enough to catch a broken
/// exposition: `# HELP` / `# TYPE` lines, then `name{k="v",...} value`.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "info",
                    ]
                    .contains(&kind)
                    {
                        return Err(at("unknown type"));
                    }
                    typed.insert(name.to_owned());
                }
                (Some("HELP"), Some(_), _) => {}
                _ => return Err(at("bad comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("bad value"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let rest = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                let mut labels = Vec::new();
                let mut rest = rest;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").ok_or_else(|| at("bad label"))?;
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, escaped)) = chars.next() {
                                    value.push(match escaped {
                                        'n' => '\n',
                                        other => other,
                                    });
                                }
                            }
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    let end = end.ok_or_else(|| at("unterminated label value"))?;
                    labels.push((key.trim_start_matches(',').to_owned(), value));
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        if name.is_empty() || !name.chars().all(valid) {
            return Err(at("bad metric name"));
        }
        let family_known = typed.iter().any(|t| {
            name == t
                || name.strip_prefix(t.as_str()).is_some_and(|suffix| {
                    ["_bucket", "_sum", "_count", "_total", "_info"].contains(&suffix)
                })
        });
        if !family_known {
            return Err(at("sample without # TYPE"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
}

/// Scrapes `/metrics` and parses it (panics with the text if it does not parse).
pub fn scrape(daemon: &Daemon) -> Vec<Sample> {
    let (status, text) = admin_get_text(daemon, "/metrics");
    assert_eq!(status, 200, "{text}");
    parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{text}"))
}
