//! Hand-written argument parsing (no clap: this binary must start fast and
//! stay tiny). Every flag accepts `--flag VALUE` and `--flag=VALUE`.

use std::fmt;

pub const USAGE: &str = "\
usage: cutover-testapp [--port N] [options]

A tiny HTTP/1.1 keep-alive server for cutover's tests and benchmarks.
Listens on 127.0.0.1 (env LISTEN_HOST: another address, e.g. 0.0.0.0
in a container).

options:
  --port N               port to listen on (else env PORT; 0 = a free port,
                         the one picked is printed)
  --version V            version label answered by / (default: dev)
  --threads N            tokio worker threads (default: 1)
  --health-path P        health check path (default: /health)
  --health-status CODE   status the health path answers (default: 200)
  --health-body TEXT     body the health path answers (default: ok)
  --healthy-after MS     health path answers 503 until MS ms after listening
  --start-delay MS       sleep MS ms before binding (a slow starter)
  --exit-at-start CODE   print a line to stderr and exit with CODE at once
  --exit-after MS        exit with code 1 MS ms after listening (a crash)
  --mount P              also answer every route below path prefix P
                         (`/api` → `/`, `/api/slow` → `/slow`), as behind
                         a proxy that routes P here and passes it on
  --fail-ratio R         fraction (0.0-1.0) of requests to / answering 500,
                         deterministically (every 1/R-th request)
  --ignore-sigterm       ignore SIGTERM (SIGINT still shuts down); for tests
                         of stop timeouts and SIGKILL
  -h, --help             print this help

routes:
  /                  200 version=<V>
  <health path>      200 ok (see --health-*)
  /slow?ms=N         sleeps N ms, then 200 version=<V> slept=<N>
  /echo              echoes the request body (streaming)
  /count             reads the request body (keeping nothing), answers
                     version=<V> bytes=<N>
  /headers           the request headers as `name: value` lines
  /bytes?n=N         N bytes of body
  /status?code=N     answers status N
  /sse?n=N&ms=M      text/event-stream: N events, one every M ms
  /upgrade           with `Connection: upgrade` + `Upgrade: X`: 101, then
                     echoes raw bytes (a stand-in for WebSockets)
  /ws                WebSocket echo (text and binary messages); the 101
                     has x-testapp-version; a close from the peer is
                     reported on stderr with its code
  anything else      404

SIGTERM/SIGINT: stop accepting, close idle connections, let in-flight
requests finish, exit 0. A second signal exits at once (code 1).
";

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub port: u16,
    pub version: String,
    pub threads: usize,
    pub health_path: String,
    pub health_status: u16,
    pub health_body: String,
    pub healthy_after_ms: Option<u64>,
    pub start_delay_ms: Option<u64>,
    pub exit_at_start: Option<i32>,
    pub exit_after_ms: Option<u64>,
    pub fail_ratio: f64,
    pub ignore_sigterm: bool,
    /// `--mount`: a path prefix stripped before routing.
    pub mount: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum ParseOutcome {
    Run(Box<Args>),
    Help,
}

#[derive(Debug, PartialEq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ArgError> {
    Err(ArgError(msg.into()))
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: &str, what: &str) -> Result<T, ArgError> {
    value
        .trim()
        .parse::<T>()
        .or_else(|_| err(format!("{flag}: expected {what}, got {value:?}")))
}

/// A number of `range`; `what` names it when it is not a number.
fn parse_within<T>(
    flag: &str,
    value: &str,
    what: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ArgError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    let n: T = parse_num(flag, value, what)?;
    if !range.contains(&n) {
        return err(format!(
            "{flag}: expected {}-{}, got {n}",
            range.start(),
            range.end()
        ));
    }
    Ok(n)
}

/// The options that take a value.
const VALUE_FLAGS: [&str; 12] = [
    "--port",
    "--version",
    "--threads",
    "--health-path",
    "--health-status",
    "--health-body",
    "--healthy-after",
    "--start-delay",
    "--exit-at-start",
    "--exit-after",
    "--fail-ratio",
    "--mount",
];

/// Parses the arguments (without the program name). `env_port` is the value
/// of the `PORT` environment variable, if set.
pub fn parse<I>(args: I, env_port: Option<String>) -> Result<ParseOutcome, ArgError>
where
    I: IntoIterator<Item = String>,
{
    let mut parsed = Args {
        port: 0,
        version: String::from("dev"),
        threads: 1,
        health_path: String::from("/health"),
        health_status: 200,
        health_body: String::from("ok"),
        healthy_after_ms: None,
        start_delay_ms: None,
        exit_at_start: None,
        exit_after_ms: None,
        fail_ratio: 0.0,
        ignore_sigterm: false,
        mount: None,
    };
    let mut port: Option<u16> = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(ParseOutcome::Help);
        }
        if !arg.starts_with("--") {
            return err(format!("unexpected argument {arg:?}"));
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if flag == "--ignore-sigterm" {
            if inline.is_some() {
                return err("--ignore-sigterm takes no value");
            }
            parsed.ignore_sigterm = true;
            continue;
        }
        if !VALUE_FLAGS.contains(&flag.as_str()) {
            return err(format!("unknown option {flag:?} (see --help)"));
        }
        let value = match inline {
            Some(v) => v,
            None => match it.next() {
                Some(v) => v,
                None => return err(format!("{flag} needs a value")),
            },
        };
        if flag == "--port" {
            port = Some(parse_num(&flag, &value, "a port number 0-65535")?);
        } else {
            set_option(&mut parsed, &flag, value)?;
        }
    }
    parsed.port = resolve_port(port, env_port, parsed.exit_at_start.is_some())?;
    Ok(ParseOutcome::Run(Box::new(parsed)))
}

/// Sets the option `flag` (one of [`VALUE_FLAGS`] but `--port`) to `value`.
fn set_option(args: &mut Args, f: &str, value: String) -> Result<(), ArgError> {
    match f {
        "--version" => {
            if value.is_empty() || value.chars().any(|c| c.is_control()) {
                return err("--version: expected a non-empty label without control characters");
            }
            args.version = value;
        }
        "--mount" => {
            if !value.starts_with('/') || value.len() < 2 {
                return err(format!(
                    "--mount: expected a path prefix like /api, got {value:?}"
                ));
            }
            args.mount = Some(value.trim_end_matches('/').to_string());
        }
        "--threads" => args.threads = parse_within(f, &value, "a thread count", 1..=1024)?,
        "--health-path" => {
            if !value.starts_with('/') {
                return err(format!("--health-path: must start with '/', got {value:?}"));
            }
            args.health_path = value;
        }
        "--health-status" => {
            args.health_status = parse_within(f, &value, "an HTTP status code", 200..=599)?;
        }
        "--health-body" => args.health_body = value,
        "--healthy-after" => args.healthy_after_ms = Some(parse_num(f, &value, "milliseconds")?),
        "--start-delay" => args.start_delay_ms = Some(parse_num(f, &value, "milliseconds")?),
        "--exit-at-start" => {
            args.exit_at_start = Some(parse_within(f, &value, "an exit code 0-255", 0..=255)?);
        }
        "--exit-after" => args.exit_after_ms = Some(parse_num(f, &value, "milliseconds")?),
        "--fail-ratio" => {
            let r: f64 = parse_num(f, &value, "a ratio 0.0-1.0")?;
            if !(0.0..=1.0).contains(&r) {
                return err(format!("--fail-ratio: expected 0.0-1.0, got {value}"));
            }
            args.fail_ratio = r;
        }
        _ => unreachable!("checked against `VALUE_FLAGS`"),
    }
    Ok(())
}

/// `--port`, else `PORT`; none needed by a release that exits at start.
fn resolve_port(
    flag: Option<u16>,
    env_port: Option<String>,
    exits_at_start: bool,
) -> Result<u16, ArgError> {
    match (flag, env_port) {
        (Some(p), _) => Ok(p),
        (None, Some(env)) => env.trim().parse::<u16>().or_else(|_| {
            err(format!(
                "env PORT: expected a port number 0-65535, got {env:?}"
            ))
        }),
        (None, None) if exits_at_start => Ok(0),
        (None, None) => err("no port: pass --port N or set PORT"),
    }
}

/// Whether the `n`-th request (1-based) to `/` should fail for ratio `r`:
/// it does when `n * r` crosses an integer, so exactly `floor(n * r)` of the
/// first `n` requests fail, evenly spread.
pub fn should_fail(n: u64, r: f64) -> bool {
    if r <= 0.0 || n == 0 {
        return false;
    }
    if r >= 1.0 {
        return true;
    }
    ((n as f64) * r).floor() > (((n - 1) as f64) * r).floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str], env: Option<&str>) -> Result<ParseOutcome, ArgError> {
        parse(
            args.iter().map(|s| s.to_string()),
            env.map(|s| s.to_string()),
        )
    }

    fn run(args: &[&str], env: Option<&str>) -> Args {
        match p(args, env) {
            Ok(ParseOutcome::Run(a)) => *a,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_port_sources() {
        let a = run(&["--port", "8081"], None);
        assert_eq!(a.port, 8081);
        assert_eq!(a.version, "dev");
        assert_eq!(a.threads, 1);
        assert_eq!(a.health_path, "/health");
        assert_eq!(a.health_status, 200);
        assert_eq!(run(&[], Some("9000")).port, 9000);
        assert_eq!(run(&["--port=7"], Some("9000")).port, 7);
        assert!(p(&[], None).is_err());
        assert!(p(&[], Some("x")).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &["--port", "70000"][..],
            &["--port"],
            &["--port", "1", "--bogus"],
            &["--port", "1", "stray"],
            &["--port", "1", "--fail-ratio", "1.5"],
            &["--port", "1", "--fail-ratio", "NaN"],
            &["--port", "1", "--threads", "0"],
            &["--port", "1", "--health-path", "health"],
            &["--port", "1", "--health-status", "99"],
            &["--port", "1", "--exit-at-start", "256"],
            &["--port", "1", "--ignore-sigterm=yes"],
            &["--port", "1", "--version", ""],
        ] {
            assert!(p(bad, None).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(p(&["--help"], None), Ok(ParseOutcome::Help));
    }

    #[test]
    fn fail_ratio_is_deterministic_and_exact() {
        for (r, n, expect) in [(0.0, 100, 0), (1.0, 100, 100), (0.1, 100, 10), (0.5, 10, 5)] {
            let fails = (1..=n).filter(|&i| should_fail(i, r)).count();
            assert_eq!(fails, expect, "ratio {r} over {n}");
        }
        assert!(!should_fail(1, 0.5));
        assert!(should_fail(2, 0.5));
        assert!(should_fail(10, 0.1));
        assert!(!should_fail(9, 0.1));
    }
}
