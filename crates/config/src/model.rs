//! The validated configuration model.

use crate::error::ConfigError;
use crate::raw::{RawApp, RawConfig, RawHealth, RawProcess};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

/// One of an app's two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::Blue, Slot::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Slot, String> {
        match s {
            "blue" => Ok(Slot::Blue),
            "green" => Ok(Slot::Green),
            other => Err(format!("`{other}` is not a slot; use blue or green")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub file: PathBuf,
    /// Directory holding the SQLite database, release logs and the admin socket.
    pub state_dir: PathBuf,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    pub access_log: AccessLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Combined,
    Json,
    Off,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    Auto,
    Manual,
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    /// Host-header patterns: exact hosts, or `*` for the default app.
    pub hosts: Vec<String>,
    pub drain_timeout: Duration,
    pub keep_old: Duration,
    pub promotion: Promotion,
    pub preview_header: String,
    /// How many deployment requests may wait behind the running one.
    /// Requests beyond it replace the newest waiting one (bursts collapse).
    pub max_queued: usize,
    pub health: HealthConfig,
    pub driver: DriverConfig,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    /// Inclusive range of accepted status codes.
    pub expect_status: (u16, u16),
    pub expect_body: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
    pub deploy_timeout: Duration,
    pub healthy_after: u32,
}

#[derive(Debug, Clone)]
pub enum DriverConfig {
    Process(ProcessConfig),
}

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// argv with placeholders `{port}`, `{version}`, `{slot}`, `{app}`, `{artifact}`.
    pub command: Vec<String>,
    /// Fixed ports per slot; `None` picks a free port at each start.
    pub ports: Option<SlotPorts>,
    pub env: BTreeMap<String, String>,
    /// Where the command runs; defaults to the config file's directory.
    pub working_dir: PathBuf,
    pub stop_signal: StopSignal,
    pub stop_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPorts {
    pub blue: u16,
    pub green: u16,
}

impl SlotPorts {
    pub fn of(&self, slot: Slot) -> u16 {
        match slot {
            Slot::Blue => self.blue,
            Slot::Green => self.green,
        }
    }
}

/// Signals an operator may choose to stop a release with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Usr2,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }

    fn parse(text: &str) -> Option<StopSignal> {
        let upper = text.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        Some(match bare {
            "TERM" => StopSignal::Term,
            "INT" => StopSignal::Int,
            "QUIT" => StopSignal::Quit,
            "HUP" => StopSignal::Hup,
            "USR1" => StopSignal::Usr1,
            "USR2" => StopSignal::Usr2,
            _ => return None,
        })
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(file).map_err(|e| {
            ConfigError::unlocated(
                file,
                format!(
                    "cannot read the configuration file: {e} (pass another one with --config FILE)"
                ),
            )
        })?;
        Config::parse(file, &source)
    }

    /// Validates configuration text; `file` names it in errors and anchors relative paths.
    pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(source)
            .map_err(|e| ConfigError::at(file, source, e.span(), e.message().trim()))?;
        Validator { file, source }.config(raw)
    }

    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|app| app.name == name)
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("cutover.db")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

struct Validator<'a> {
    file: &'a Path,
    source: &'a str,
}

impl Validator<'_> {
    fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, self.source, Some(spanned.span()), message)
    }

    fn base_dir(&self) -> PathBuf {
        let parent = self
            .file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let base = self.base_dir();
        let state_dir = base.join(raw.state_dir.as_deref().unwrap_or(".cutover"));
        let proxy = self.proxy(raw.proxy)?;
        let admin = AdminConfig {
            socket: raw
                .admin
                .socket
                .map(|s| base.join(s))
                .unwrap_or_else(|| state_dir.join("admin.sock")),
        };
        let mut names = HashSet::new();
        let mut default_host_owner: Option<String> = None;
        let mut host_owners: BTreeMap<String, String> = BTreeMap::new();
        let mut apps = Vec::new();
        for raw_app in raw.app {
            let app = self.app(&raw_app, &base)?;
            if !names.insert(app.name.clone()) {
                return Err(self.error(
                    &raw_app.get_ref().name,
                    format!(
                        "duplicate app name `{}`: every [[app]] needs its own name",
                        app.name
                    ),
                ));
            }
            for host in &app.hosts {
                let owner = if host == "*" {
                    default_host_owner.replace(app.name.clone())
                } else {
                    host_owners.insert(host.clone(), app.name.clone())
                };
                if let Some(owner) = owner {
                    return Err(self.error(
                        &raw_app.get_ref().name,
                        format!(
                            "host `{host}` of app `{}` is already routed to app `{owner}`",
                            app.name
                        ),
                    ));
                }
            }
            apps.push(app);
        }
        Ok(Config {
            file: std::path::absolute(self.file).unwrap_or_else(|_| self.file.to_path_buf()),
            state_dir,
            proxy,
            admin,
            apps,
        })
    }

    fn proxy(&self, raw: crate::raw::RawProxy) -> Result<ProxyConfig, ConfigError> {
        if let Some(mode) = &raw.mode {
            if mode.get_ref() != "builtin" {
                return Err(self.error(
                    mode,
                    format!(
                        "proxy mode `{}` is not supported by this build; use \"builtin\"",
                        mode.get_ref()
                    ),
                ));
            }
        }
        let listen = match raw.listen {
            None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            Some(list) => list
                .iter()
                .map(|addr| {
                    addr.get_ref().parse::<SocketAddr>().map_err(|_| {
                        self.error(addr, format!("`{}` is not a listen address; write it like \"127.0.0.1:8080\" or \"[::]:80\"", addr.get_ref()))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let access_log = match raw.access_log.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("combined") => AccessLog::Combined,
            Some("json") => AccessLog::Json,
            Some("off") => AccessLog::Off,
            Some(other) => {
                return Err(self.error(
                    raw.access_log.as_ref().expect("matched Some"),
                    format!(
                        "access_log `{other}` is not known; use \"combined\", \"json\" or \"off\""
                    ),
                ))
            }
        };
        Ok(ProxyConfig {
            listen,
            max_body: raw.max_body.map_or(100 << 20, |s| s.0),
            header_read_timeout: raw
                .header_read_timeout
                .map_or(Duration::from_secs(10), |d| d.0),
            idle_timeout: raw.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
            upstream_connect_timeout: raw
                .upstream_connect_timeout
                .map_or(Duration::from_secs(5), |d| d.0),
            upstream_response_timeout: raw
                .upstream_response_timeout
                .map_or(Duration::from_secs(60), |d| d.0),
            access_log,
        })
    }

    fn app(&self, spanned: &Spanned<RawApp>, base: &Path) -> Result<AppConfig, ConfigError> {
        let raw = spanned.get_ref();
        let name = raw.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && !name.starts_with('-');
        if !name_ok {
            return Err(self.error(
                &raw.name,
                format!("app name `{name}` is not valid: use 1-63 lowercase letters, digits, `-` or `_`, not starting with `-`"),
            ));
        }
        let hosts = match &raw.hosts {
            None => vec!["*".to_string()],
            Some(hosts) if hosts.is_empty() => {
                return Err(self.error(
                    &raw.name,
                    format!("app `{name}` has an empty `hosts` list; omit it or use [\"*\"]"),
                ))
            }
            Some(hosts) => hosts
                .iter()
                .map(|h| {
                    let host = h.get_ref().trim().to_ascii_lowercase();
                    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
                        Err(self.error(h, format!("`{}` is not a host name", h.get_ref())))
                    } else {
                        Ok(host)
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let promotion = match raw.promotion.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("auto") => Promotion::Auto,
            Some("manual") => {
                return Err(self.error(
                    raw.promotion.as_ref().expect("matched Some"),
                    "promotion = \"manual\" is not available in this version of cutover yet; remove it (\"auto\" is the default)",
                ))
            }
            Some(other) => {
                return Err(self.error(
                    raw.promotion.as_ref().expect("matched Some"),
                    format!("promotion `{other}` is not known; use \"auto\" or \"manual\""),
                ))
            }
        };
        if raw.keep_old.is_some_and(|d| !d.0.is_zero()) {
            return Err(self.error(
                &raw.name,
                format!("app `{name}`: keep_old is not available in this version of cutover yet; remove it (the old slot is stopped once drained)"),
            ));
        }
        let max_queued = match &raw.max_queued {
            None => 1,
            Some(n) if (0..=100).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => return Err(self.error(n, "max_queued must be between 0 and 100")),
        };
        let driver = match (&raw.process, &raw.docker) {
            (Some(_), Some(docker)) => {
                return Err(self.error(
                    docker,
                    format!("app `{name}` has both [app.process] and [app.docker]; an app runs with exactly one driver, remove one"),
                ))
            }
            (None, Some(docker)) => {
                return Err(self.error(
                    docker,
                    "the docker driver is not available in this version of cutover; use [app.process]",
                ))
            }
            (None, None) => {
                return Err(self.error(
                    &raw.name,
                    format!("app `{name}` has no driver: add an [app.process] section with a `command`"),
                ))
            }
            (Some(process), None) => DriverConfig::Process(self.process(process, base)?),
        };
        Ok(AppConfig {
            name: name.clone(),
            hosts,
            drain_timeout: raw.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
            keep_old: raw.keep_old.map_or(Duration::ZERO, |d| d.0),
            promotion,
            preview_header: raw
                .preview_header
                .clone()
                .unwrap_or_else(|| "X-Cutover-Preview".to_string()),
            max_queued,
            health: self.health(&raw.health)?,
            driver,
        })
    }

    fn health(&self, raw: &RawHealth) -> Result<HealthConfig, ConfigError> {
        let path = match &raw.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                return Err(self.error(
                    p,
                    format!("health path `{}` must start with `/`", p.get_ref()),
                ))
            }
        };
        let expect_status = match &raw.expect_status {
            None => (200, 399),
            Some(s) => parse_status_range(s.get_ref()).ok_or_else(|| {
                self.error(s, format!("expect_status `{}` is not a status or range; write it like \"200\" or \"200-399\"", s.get_ref()))
            })?,
        };
        let healthy_after = match &raw.healthy_after {
            None => 1,
            Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => return Err(self.error(n, "healthy_after must be between 1 and 100")),
        };
        Ok(HealthConfig {
            path,
            expect_status,
            expect_body: raw.expect_body.clone(),
            timeout: raw.timeout.map_or(Duration::from_secs(2), |d| d.0),
            interval: raw
                .interval
                .map_or(Duration::from_secs(1), |d| d.0)
                .max(Duration::from_millis(100)),
            deploy_timeout: raw.deploy_timeout.map_or(Duration::from_secs(120), |d| d.0),
            healthy_after,
        })
    }

    fn process(
        &self,
        spanned: &Spanned<RawProcess>,
        base: &Path,
    ) -> Result<ProcessConfig, ConfigError> {
        let raw = spanned.get_ref();
        let command = raw.command.get_ref();
        if command.is_empty() || command[0].trim().is_empty() {
            return Err(self.error(
                &raw.command,
                "`command` must name a program, e.g. [\"java\", \"-jar\", \"app.jar\"]",
            ));
        }
        let ports = match &raw.ports {
            None => None,
            Some(p) => {
                let ports = p.get_ref();
                if ports.blue == 0 || ports.green == 0 || ports.blue == ports.green {
                    return Err(self.error(
                        p,
                        "ports.blue and ports.green must be two different non-zero ports",
                    ));
                }
                Some(SlotPorts {
                    blue: ports.blue,
                    green: ports.green,
                })
            }
        };
        let stop_signal = match &raw.stop_signal {
            None => StopSignal::Term,
            Some(s) => StopSignal::parse(s.get_ref()).ok_or_else(|| {
                self.error(s, format!("stop_signal `{}` is not supported; use SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2", s.get_ref()))
            })?,
        };
        Ok(ProcessConfig {
            command: command.clone(),
            ports,
            env: raw.env.clone(),
            working_dir: raw
                .working_dir
                .as_ref()
                .map_or_else(|| base.to_path_buf(), |d| base.join(d)),
            stop_signal,
            stop_timeout: raw.stop_timeout.map_or(Duration::from_secs(10), |d| d.0),
        })
    }
}

fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let valid = |code: u16| (100..=599).contains(&code);
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (low.trim().parse().ok()?, high.trim().parse().ok()?),
        None => {
            let code = text.trim().parse().ok()?;
            (code, code)
        }
    };
    (valid(low) && valid(high) && low <= high).then_some((low, high))
}
