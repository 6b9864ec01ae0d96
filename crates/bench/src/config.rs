//! Command line and environment: every knob of `bench/run` is a flag whose
//! default comes from the environment variable the script always read.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::FalseyValueParser;
use clap::{Parser, ValueEnum};

/// What one run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One table per worker count for the request shape of the flags.
    Table,
    /// WORKERS=1 and 2 for three shapes, then `idle`, then `switch`.
    Full,
    /// Resident memory holding IDLE_CONNS idle keep-alive connections.
    Idle,
    /// Failed requests during SWITCHES blue/green switches under load.
    Switch,
    /// Failed requests and added p99 during UPGRADES upgrades of the proxy
    /// itself under load: cutover upgrade, nginx -s reload, nginx's binary upgrade.
    Upgrade,
    /// Swarm services: a switch under load per REPLICAS count, then req/s
    /// through cutover to 2 tasks against nginx with both in its upstream.
    Swarm,
}

/// `REPLICAS`: the task counts of the swarm mode's switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicas(pub Vec<u32>);

impl FromStr for Replicas {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let counts = s
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|word| !word.is_empty())
            .map(positive)
            .collect::<Result<Vec<_>, _>>()?;
        if counts.is_empty() {
            return Err("no replica counts given".into());
        }
        Ok(Replicas(counts))
    }
}

/// One thing wrk is pointed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Direct,
    Cutover,
    /// cutover with `[proxy] io = "epoll"`; only when asked for.
    CutoverEpoll,
    NginxSeed,
    NginxKeepalive,
    /// The io_uring prototype (crates/uring-probe); only when asked for.
    UringProbe,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Direct,
        Target::Cutover,
        Target::CutoverEpoll,
        Target::NginxSeed,
        Target::NginxKeepalive,
        Target::UringProbe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Cutover => "cutover",
            Target::CutoverEpoll => "cutover-epoll",
            Target::NginxSeed => "nginx-seed",
            Target::NginxKeepalive => "nginx-keepalive",
            Target::UringProbe => "uring-probe",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown target '{s}'"))
    }
}

/// The targets of a table, in the order given (`TARGETS="direct cutover"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<Target>);

impl FromStr for Targets {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let targets = s
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|word| !word.is_empty())
            .map(Target::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err("no targets given".into());
        }
        Ok(Targets(targets))
    }
}

/// `WORKERS`: a positive count, or `both` (1, then 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Count(u32),
    Both,
}

impl Workers {
    pub fn counts(self) -> Vec<u32> {
        match self {
            Workers::Count(n) => vec![n],
            Workers::Both => vec![1, 2],
        }
    }
}

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "both" {
            return Ok(Workers::Both);
        }
        positive(s)
            .map(Workers::Count)
            .map_err(|_| format!("WORKERS must be a positive integer or 'both', got '{s}'"))
    }
}

/// `NGINX_HEADERS`: whether nginx-keepalive does cutover's header work too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NginxHeaders {
    /// X-Forwarded-Proto and an X-Request-Id, like cutover.
    Same,
    /// Only the seed's headers.
    Seed,
}

/// A wrk duration (`10s`, `1m`, `500ms`); `0` means "skip" for the warm-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrkDuration(pub String);

impl WrkDuration {
    pub fn is_zero(&self) -> bool {
        self.0.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0"
    }
}

impl fmt::Display for WrkDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WrkDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &s[digits.len()..];
        let known_unit = matches!(unit, "" | "us" | "ms" | "s" | "m" | "h");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !known_unit {
            return Err(format!("not a wrk duration (like 10s or 1m): '{s}'"));
        }
        Ok(WrkDuration(s.to_string()))
    }
}

fn positive(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 && !s.starts_with('+') => Ok(n),
        _ => Err(format!("must be a positive integer, got '{s}'")),
    }
}

fn request_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_string())
    } else {
        Err(format!("BENCH_PATH must start with /, got '{s}'"))
    }
}

/// `SERVER_CPUS` / `WRK_CPUS`: a taskset cpu list; empty means "no pinning".
fn cpu_list(s: &str) -> Result<String, String> {
    if s.bytes()
        .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
    {
        Ok(s.to_string())
    } else {
        Err(format!("not a cpu list like 0 or 0-1,3: '{s}'"))
    }
}

/// Throughput and latency of cutover's proxy against nginx, side by side.
/// Every option defaults to the environment variable named in brackets.
#[derive(Debug, Parser)]
#[command(name = "cutover-bench", version)]
pub struct Cli {
    /// What to measure.
    #[arg(value_enum, default_value_t = Mode::Table)]
    pub mode: Mode,

    /// Proxy workers = testapp threads = nginx worker_processes, or `both`
    /// (1, then 2). Default 1; `full` defaults to both.
    #[arg(long, env = "WORKERS", value_parser = Workers::from_str)]
    pub workers: Option<Workers>,

    /// Measured wrk run per target.
    #[arg(long, env = "DURATION", default_value = "10s", value_parser = WrkDuration::from_str)]
    pub duration: WrkDuration,

    /// Unmeasured wrk run before each target (0 to skip).
    #[arg(long, env = "WARMUP", default_value = "2s", value_parser = WrkDuration::from_str)]
    pub warmup: WrkDuration,

    /// wrk keep-alive connections (wrk runs one thread); also the load of `switch`.
    #[arg(long, env = "CONNS", default_value = "50", value_parser = positive)]
    pub conns: u32,

    /// Repeat all targets N times, interleaved; tables show the median round (by req/s).
    #[arg(long, env = "ROUNDS", default_value = "1", value_parser = positive)]
    pub rounds: u32,

    /// Request path, e.g. '/bytes?n=1048576' for 1 MB responses.
    #[arg(long = "path", env = "BENCH_PATH", default_value = "/", value_parser = request_path)]
    pub bench_path: String,

    /// A new connection per request (`Connection: close`).
    #[arg(long, env = "NEWCONN", value_parser = FalseyValueParser::new(), default_value = "0")]
    pub newconn: bool,

    /// `idle`: client connections held open.
    #[arg(long, env = "IDLE_CONNS", default_value = "10000", value_parser = positive)]
    pub idle_conns: u32,

    /// `switch`: switches per target.
    #[arg(long, env = "SWITCHES", default_value = "50", value_parser = positive)]
    pub switches: u32,

    /// `upgrade`: upgrades per target, one a second.
    #[arg(long, env = "UPGRADES", default_value = "20", value_parser = positive)]
    pub upgrades: u32,

    /// `swarm`: task counts of the switches under load, space or comma separated.
    #[arg(long, env = "REPLICAS", default_value = "1 2 4", value_parser = Replicas::from_str)]
    pub replicas: Replicas,

    /// Targets of the tables, space or comma separated.
    #[arg(
        long,
        env = "TARGETS",
        default_value = "direct cutover nginx-seed nginx-keepalive",
        value_parser = Targets::from_str
    )]
    pub targets: Targets,

    /// Keep the scratch directory (configs, logs, raw wrk output).
    #[arg(long, env = "KEEP", value_parser = FalseyValueParser::new(), default_value = "0")]
    pub keep: bool,

    /// `same`: nginx-keepalive does cutover's header work too; `seed`: only the seed's headers.
    #[arg(long, env = "NGINX_HEADERS", value_enum, default_value_t = NginxHeaders::Same)]
    pub nginx_headers: NginxHeaders,

    /// Cpus of the servers (proxy and backend); empty = no pinning. Default: see README.
    #[arg(long, env = "SERVER_CPUS", value_parser = cpu_list)]
    pub server_cpus: Option<String>,

    /// Cpus of the load generator; empty = no pinning. Default: see README.
    #[arg(long, env = "WRK_CPUS", value_parser = cpu_list)]
    pub wrk_cpus: Option<String>,

    /// Directory of the release binaries (cutover-testapp, cutover-bench-client).
    /// Default: the directory of this binary.
    #[arg(long, env = "BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// The `cutover` binary; the cutover target is skipped if it is missing.
    /// Default: `cutover` in the binary directory.
    #[arg(long, env = "CUTOVER_BIN")]
    pub cutover_bin: Option<PathBuf>,
}

/// The request shape of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The table's title (`keepalive`, or `path=/` in table mode).
    pub label: String,
    pub conns: u32,
    pub path: String,
    pub newconn: bool,
}

/// The three shapes of `full`.
pub fn full_shapes() -> [Shape; 3] {
    let shape = |label: &str, conns, path: &str, newconn| Shape {
        label: label.into(),
        conns,
        path: path.into(),
        newconn,
    };
    [
        shape("keepalive", 50, "/", false),
        shape("newconn", 50, "/", true),
        shape("1mb", 10, "/bytes?n=1048576", false),
    ]
}

impl Cli {
    /// The worker counts to run; `full` defaults to both.
    pub fn worker_counts(&self) -> Vec<u32> {
        let default = match self.mode {
            Mode::Full => Workers::Both,
            _ => Workers::Count(1),
        };
        self.workers.unwrap_or(default).counts()
    }

    /// The shape the flags describe (table mode).
    pub fn shape(&self) -> Shape {
        let suffix = if self.newconn {
            ", new connection per request"
        } else {
            ""
        };
        Shape {
            label: format!("path={}{suffix}", self.bench_path),
            conns: self.conns,
            path: self.bench_path.clone(),
            newconn: self.newconn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cutover-bench").chain(args.iter().copied()))
    }

    #[test]
    fn targets_are_split_on_spaces_and_commas_in_order() {
        let targets: Targets = "nginx-keepalive  direct,cutover".parse().unwrap();
        assert_eq!(
            targets.0,
            [Target::NginxKeepalive, Target::Direct, Target::Cutover]
        );
        assert!("direct nginx".parse::<Targets>().is_err());
        assert!("  ".parse::<Targets>().is_err());
    }

    #[test]
    fn replica_counts_are_positive_and_split_on_spaces_and_commas() {
        assert_eq!("1 2,4".parse::<Replicas>().unwrap().0, [1, 2, 4]);
        assert!("1 0".parse::<Replicas>().is_err());
        assert!("".parse::<Replicas>().is_err());
        let cli = parse(&["swarm", "--replicas=2"]).unwrap();
        assert_eq!((cli.mode, cli.replicas.0), (Mode::Swarm, vec![2]));
    }

    #[test]
    fn workers_are_a_positive_count_or_both() {
        assert_eq!("2".parse::<Workers>().unwrap().counts(), [2]);
        assert_eq!("both".parse::<Workers>().unwrap().counts(), [1, 2]);
        for bad in ["0", "", "-1", "two", "+1"] {
            assert!(bad.parse::<Workers>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_what_wrk_accepts_and_zero_skips() {
        for good in ["10s", "1m", "500ms", "3"] {
            assert!(good.parse::<WrkDuration>().is_ok(), "{good}");
        }
        for bad in ["", "s", "1.5s", "10x", "-1s"] {
            assert!(bad.parse::<WrkDuration>().is_err(), "{bad}");
        }
        assert!("0".parse::<WrkDuration>().unwrap().is_zero());
        assert!("0s".parse::<WrkDuration>().unwrap().is_zero());
        assert!(!"10s".parse::<WrkDuration>().unwrap().is_zero());
    }

    // The environment is shared by the tests of this binary, so the flags
    // are tested without it; `bench/run` passes the variables.
    #[test]
    fn flags_parse_to_the_settings_of_a_run() {
        let cli = parse(&[
            "full",
            "--duration=3s",
            "--warmup=0",
            "--conns=10",
            "--path=/bytes?n=1024",
            "--newconn",
            "--keep",
            "--targets=direct cutover",
            "--nginx-headers=seed",
            "--server-cpus=",
            "--wrk-cpus=1",
        ])
        .unwrap();
        assert_eq!(cli.mode, Mode::Full);
        assert_eq!(cli.worker_counts(), [1, 2], "full defaults to both");
        assert_eq!(cli.duration.0, "3s");
        assert!(cli.warmup.is_zero());
        assert_eq!(cli.conns, 10);
        assert!(cli.newconn && cli.keep);
        assert_eq!(cli.targets.0, [Target::Direct, Target::Cutover]);
        assert_eq!(cli.nginx_headers, NginxHeaders::Seed);
        assert_eq!(cli.server_cpus.as_deref(), Some(""));
        assert_eq!(cli.wrk_cpus.as_deref(), Some("1"));
        assert_eq!(
            cli.shape().label,
            "path=/bytes?n=1024, new connection per request"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["bogus"]).is_err());
        assert!(parse(&["--conns=0"]).is_err());
        assert!(parse(&["--path=nope"]).is_err());
        assert!(parse(&["--workers=0"]).is_err());
        assert!(parse(&["--server-cpus=a"]).is_err());
    }

    #[test]
    fn table_mode_defaults_to_one_worker_and_keepalive() {
        let cli = Cli::try_parse_from(["cutover-bench", "--workers=3"]).unwrap();
        assert_eq!(cli.worker_counts(), [3]);
        assert!(!cli.newconn);
        assert_eq!(cli.shape().label, "path=/");
    }
}
