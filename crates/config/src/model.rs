//! The validated configuration model.

use crate::error::{ConfigError, Located};
use crate::raw::{RawApp, RawConfig, RawHealth, RawPorts, RawProcess};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
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
    /// The git webhook receiver (`[webhook]`), when configured.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Release groups (`[[group]]`): apps deployed and switched as one.
    pub groups: Vec<crate::group::GroupConfig>,
}

/// `[proxy] max_connections_per_client` when not set.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 1024;

/// Most proxy worker threads `[proxy] workers` may ask for.
pub const MAX_WORKERS: usize = 256;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    /// Threads serving client traffic, each with its own event loop;
    /// `None`: one per CPU (`workers = "auto"`, the default).
    pub workers: Option<NonZeroUsize>,
    /// How the workers hand bytes to the kernel (`[proxy] io`).
    pub io: ProxyIo,
    pub access_log: AccessLog,
    /// Where access log lines go; `None`: standard output.
    pub access_log_file: Option<PathBuf>,
    /// HTTPS listeners, their certificates, the redirect of cleartext.
    pub tls: crate::tls::TlsConfig,
    /// Peers whose `X-Forwarded-*` / `X-Real-IP` headers are believed (the
    /// `X-Forwarded-For` chain extended); empty: nobody (the default).
    pub trusted_proxies: Vec<crate::cidr::Cidr>,
    /// Client connections open at once over all listeners; `None`: derived
    /// from the file descriptor limit at start.
    pub max_connections: Option<usize>,
    /// Client connections open at once from one address (0: unlimited);
    /// peers in `trusted_proxies` are exempt.
    pub max_connections_per_client: usize,
    /// `mode = "nginx"`: cutover drives this nginx and listens for no
    /// client traffic itself. `None`: the built-in proxy (the default).
    pub nginx: Option<crate::nginx::NginxConfig>,
    /// `[proxy.acme]`: certificates ordered from an ACME server.
    pub acme: Option<crate::acme::AcmeConfig>,
}

/// `[proxy] io`: how the proxy's workers hand bytes to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyIo {
    /// io_uring where the kernel allows it, else epoll (the default).
    #[default]
    Auto,
    /// io_uring; the start fails where the kernel refuses it.
    Uring,
    /// epoll only.
    Epoll,
}

/// `[[app]] upstream_protocol`: how the proxy talks to the app's releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive connections (the default).
    Http1,
    /// HTTP/2 without TLS, with prior knowledge (gRPC servers).
    H2c,
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
    /// The TCP listener for remote operation (`[admin] listen`), if any.
    pub remote: Option<crate::admin::RemoteAdmin>,
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
    /// Path prefixes routed to this app on its hosts (`["/"]`: all); the
    /// longest matching prefix wins.
    pub paths: Vec<String>,
    pub drain_timeout: Duration,
    pub keep_old: Duration,
    pub promotion: Promotion,
    pub preview_header: String,
    /// How the proxy talks to this app's releases.
    pub upstream_protocol: UpstreamProtocol,
    /// How many deployment requests may wait behind the running one.
    /// Requests beyond it replace the newest waiting one (bursts collapse).
    pub max_queued: usize,
    /// With manual promotion: promote by itself after this long.
    pub auto_promote_after: Option<Duration>,
    /// With manual promotion: abort by itself after this long.
    pub auto_abort_after: Option<Duration>,
    /// Watch the new release after the switch; roll back if it misbehaves.
    pub verify: Option<VerifyConfig>,
    /// Move traffic to the new release in steps instead of at once.
    pub shift: Option<ShiftConfig>,
    pub hooks: HooksConfig,
    pub health: HealthConfig,
    /// How the proxy spreads requests over a release's endpoints.
    pub balance: Balance,
    pub driver: DriverConfig,
    /// The git source and build pipeline (`[app.source]`), when configured.
    pub source: Option<crate::source::SourceConfig>,
    /// What happens when the live release dies.
    pub supervise: crate::supervise::SuperviseConfig,
}

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// How long the new release is watched after the switch (and at each shift step).
    pub window: Duration,
    /// Highest accepted share of 5xx answers and upstream errors, 0.0-1.0.
    pub max_error_ratio: f64,
    /// Answers needed before the ratio is judged (fewer: not judged).
    pub min_requests: u64,
    /// An external check run at the end of the window; must exit 0.
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ShiftConfig {
    /// Percentages of new requests sent to the new release, ending at 100.
    pub steps: Vec<u8>,
    pub every: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct HooksConfig {
    pub before_switch: Vec<Vec<String>>,
    pub after_switch: Vec<Vec<String>>,
    pub on_failure: Vec<Vec<String>>,
    pub timeout: Duration,
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

/// `[app] balance`: how requests are spread over a release's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// The less busy of two endpoints picked at random (the default).
    #[default]
    LeastRequests,
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastRequests => "least_requests",
            Balance::RoundRobin => "round_robin",
        }
    }
}

#[derive(Debug, Clone)]
pub enum DriverConfig {
    Process(ProcessConfig),
    Docker(crate::docker::DockerConfig),
    Swarm(crate::swarm::SwarmConfig),
}

impl DriverConfig {
    /// How long a release may take to stop once asked.
    pub fn stop_timeout(&self) -> Duration {
        match self {
            DriverConfig::Process(process) => process.stop_timeout,
            DriverConfig::Docker(docker) => docker.stop_timeout,
            DriverConfig::Swarm(swarm) => swarm.stop_timeout,
        }
    }

    /// `advertise` of a local release (process, docker): the address a
    /// front on another host reaches this host's releases at. Swarm
    /// endpoints are node addresses already.
    pub fn advertise(&self) -> Option<std::net::IpAddr> {
        match self {
            DriverConfig::Process(process) => process.advertise,
            DriverConfig::Docker(docker) => docker.advertise,
            DriverConfig::Swarm(_) => None,
        }
    }
}

/// `advertise = "10.0.0.5"`: an IP address (a front cannot resolve names
/// the way this host does), not unspecified.
pub(crate) fn advertise(raw: &Spanned<String>) -> Result<std::net::IpAddr, Located> {
    match raw.get_ref().trim().parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => Ok(ip),
        _ => Err((
            raw.span(),
            format!(
                "advertise `{}` is not an IP address of this host; write the address a front on another host reaches it at, e.g. \"10.0.0.5\"",
                raw.get_ref()
            ),
        )),
    }
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
    /// The address a front on another host reaches this host's releases
    /// at (`None`: 127.0.0.1). cutover itself keeps using 127.0.0.1.
    pub advertise: Option<std::net::IpAddr>,
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

/// Fixed ports per slot (`ports` of a process, `host_ports` of a container).
pub(crate) fn slot_ports(raw: &Spanned<RawPorts>, key: &str) -> Result<SlotPorts, Located> {
    let ports = raw.get_ref();
    if ports.blue == 0 || ports.green == 0 || ports.blue == ports.green {
        return Err((
            raw.span(),
            format!("{key}.blue and {key}.green must be two different non-zero ports"),
        ));
    }
    Ok(SlotPorts {
        blue: ports.blue,
        green: ports.green,
    })
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
        let source = read_config_file(file)?;
        Config::parse(file, &source)
    }

    /// [`Config::load`], and the files the configuration names must exist
    /// now (webhook secrets): what `config check` and `serve` use, so that
    /// a missing file is reported before anything starts.
    pub fn load_checked(file: &Path) -> Result<Config, ConfigError> {
        let source = read_config_file(file)?;
        let raw = raw_config(file, &source)?;
        Validator {
            file,
            source: &source,
            check_files: true,
        }
        .config(raw)
    }

    /// Validates configuration text; `file` names it in errors and anchors relative paths.
    pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw = raw_config(file, source)?;
        Validator {
            file,
            source,
            check_files: false,
        }
        .config(raw)
    }

    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|app| app.name == name)
    }

    /// The release group named `name`.
    pub fn group(&self, name: &str) -> Option<&crate::group::GroupConfig> {
        self.groups.iter().find(|group| group.name == name)
    }

    /// The release group `app` belongs to, if any.
    pub fn group_of(&self, app: &str) -> Option<&crate::group::GroupConfig> {
        self.groups
            .iter()
            .find(|group| group.apps.iter().any(|a| a == app))
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("cutover.db")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

/// Largest configuration file read: far beyond any real one, and it keeps
/// `--config /dev/zero` (or a log file named by mistake) from filling memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

fn read_config_file(file: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| {
        ConfigError::unlocated(
            file,
            format!(
                "cannot read the configuration file: {e} (pass another one with --config FILE)"
            ),
        )
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::unlocated(
            file,
            format!(
                "the configuration file is larger than {} MiB, so it is not a cutover.toml; pass the right one with --config FILE",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text ({e})"),
        ))
    })
}

/// The file as written; a nesting too deep for the parser is located at
/// the deepest dotted key, since the parser gives no place for it.
fn raw_config(file: &Path, source: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(source).map_err(|e| {
        let message = e.message().trim();
        match e.span() {
            Some(span) => ConfigError::at(file, source, Some(span), message),
            None if message.contains("recursion") => ConfigError::at(
                file,
                source,
                Some(deepest_key(source)),
                format!("{message}: keys and tables nest too deeply here; cutover.toml never nests more than a few levels"),
            ),
            None => ConfigError::unlocated(file, message),
        }
    })
}

/// The span of the line whose key or table header has the most dotted parts.
fn deepest_key(source: &str) -> std::ops::Range<usize> {
    let mut deepest = (0, 0..0);
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        let key = line.split('=').next().unwrap_or(line);
        let depth = key.matches('.').count() + key.matches('[').count();
        if depth > deepest.0 {
            deepest = (depth, offset..offset + line.len());
        }
        offset += line.len();
    }
    deepest.1
}

struct Validator<'a> {
    file: &'a Path,
    source: &'a str,
    /// Whether files the configuration names must exist now.
    check_files: bool,
}

impl Validator<'_> {
    fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, self.source, Some(spanned.span()), message)
    }

    fn locate(&self, located: Located) -> ConfigError {
        ConfigError::located(self.file, self.source, located)
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
        let proxy = self.proxy(&raw.proxy)?;
        let admin = self.admin(&raw, &base, &state_dir)?;
        let apps = self.apps(&raw, &proxy, &base, &state_dir)?;
        let webhook = self.webhook(&raw, &proxy, &base)?;
        self.check_port_clashes(&raw, &proxy, webhook.as_ref())?;
        self.check_admin_port(&raw, &proxy, webhook.as_ref(), admin.remote.as_ref())?;
        let mut proxy = proxy;
        proxy.acme = self.acme(&raw, &proxy, &apps)?;
        let groups = self.groups(&raw, &apps, &proxy)?;
        Ok(Config {
            file: std::path::absolute(self.file).unwrap_or_else(|_| self.file.to_path_buf()),
            state_dir,
            proxy,
            admin,
            apps,
            webhook,
            groups,
        })
    }

    fn admin(
        &self,
        raw: &RawConfig,
        base: &Path,
        state_dir: &Path,
    ) -> Result<AdminConfig, ConfigError> {
        Ok(AdminConfig {
            socket: raw
                .admin
                .socket
                .as_ref()
                .map(|s| base.join(s))
                .unwrap_or_else(|| state_dir.join("admin.sock")),
            remote: crate::admin::validate(
                &raw.admin,
                base,
                self.file,
                self.source,
                self.check_files,
            )?,
        })
    }

    /// Every `[[app]]`, in order, each checked against the ones before it.
    fn apps(
        &self,
        raw: &RawConfig,
        proxy: &ProxyConfig,
        base: &Path,
        state_dir: &Path,
    ) -> Result<Vec<AppConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut route_owners: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut apps = Vec::new();
        for raw_app in &raw.app {
            let app = self.app(raw_app, base, state_dir)?;
            self.check_front_supports(raw_app, &app, proxy)?;
            if !names.insert(app.name.clone()) {
                return Err(self.error(
                    &raw_app.get_ref().name,
                    format!(
                        "duplicate app name `{}`: every [[app]] needs its own name",
                        app.name
                    ),
                ));
            }
            self.claim_routes(raw_app, &app, &mut route_owners)?;
            apps.push(app);
        }
        Ok(apps)
    }

    /// `shift` and `paths` need the built-in proxy.
    fn check_front_supports(
        &self,
        raw_app: &Spanned<RawApp>,
        app: &AppConfig,
        proxy: &ProxyConfig,
    ) -> Result<(), ConfigError> {
        if let (Some(_), Some(shift)) = (&proxy.nginx, &raw_app.get_ref().shift) {
            return Err(self.error(
                shift,
                format!("app `{}` sets `shift`, which needs the built-in proxy: nginx (`[proxy] mode = \"nginx\"`) switches all traffic at once; remove `shift`", app.name),
            ));
        }
        if let (Some(_), Some(paths)) = (&proxy.nginx, &raw_app.get_ref().paths) {
            return Err(self.error(
                paths,
                format!("app `{}` sets `paths`, which needs the built-in proxy: the nginx front routes by host only; remove `paths`", app.name),
            ));
        }
        Ok(())
    }

    /// Each (host, path prefix) pair of `app` belongs to it alone.
    fn claim_routes(
        &self,
        raw_app: &Spanned<RawApp>,
        app: &AppConfig,
        route_owners: &mut BTreeMap<(String, String), String>,
    ) -> Result<(), ConfigError> {
        for (host, path) in app
            .hosts
            .iter()
            .flat_map(|h| app.paths.iter().map(move |p| (h, p)))
        {
            let owner = route_owners.insert((host.clone(), path.clone()), app.name.clone());
            if let Some(owner) = owner {
                let place = match path.as_str() {
                    "/" => String::new(),
                    path => format!(" with path `{path}`"),
                };
                return Err(self.error(
                    &raw_app.get_ref().name,
                    format!(
                        "host `{host}`{place} of app `{}` is already routed to app `{owner}`",
                        app.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn webhook(
        &self,
        raw: &RawConfig,
        proxy: &ProxyConfig,
        base: &Path,
    ) -> Result<Option<crate::WebhookConfig>, ConfigError> {
        let Some(raw_webhook) = &raw.webhook else {
            return Ok(None);
        };
        let webhook =
            crate::webhook::validate(raw_webhook, base, self.file, self.source, self.check_files)?;
        if proxy.nginx.is_some() && webhook.listen.is_none() {
            return Err(self.error(
                raw_webhook,
                "[webhook] needs `listen` in nginx front mode: nginx takes the client traffic, so the receiver needs a listener of its own, e.g. listen = \"127.0.0.1:9000\"",
            ));
        }
        Ok(Some(webhook))
    }

    fn groups(
        &self,
        raw: &RawConfig,
        apps: &[AppConfig],
        proxy: &ProxyConfig,
    ) -> Result<Vec<crate::group::GroupConfig>, ConfigError> {
        let shifts = raw
            .app
            .iter()
            .filter_map(|a| {
                let a = a.get_ref();
                Some((a.name.get_ref().as_str(), a.shift.as_ref()?.span()))
            })
            .collect();
        let facts = crate::group::AppFacts {
            apps,
            shifts,
            nginx: proxy.nginx.is_some(),
        };
        crate::group::validate(&raw.group, &facts, self.file, self.source)
    }

    /// Two listeners of cutover, or a listener and a slot's fixed port, on
    /// one port: the second bind would fail at run time, so refuse it now.
    fn check_port_clashes(
        &self,
        raw: &RawConfig,
        proxy: &ProxyConfig,
        webhook: Option<&crate::webhook::WebhookConfig>,
    ) -> Result<(), ConfigError> {
        let tls_spans = raw.proxy.tls_listen.iter().flatten();
        for (addr, spanned) in proxy.tls.listen.iter().zip(tls_spans) {
            if let Some(plain) = proxy.listen.iter().find(|plain| clash(plain, addr)) {
                return Err(self.error(
                    spanned,
                    format!("tls_listen `{addr}` uses the port of [proxy] listen `{plain}`; one port serves either HTTP or HTTPS, choose another"),
                ));
            }
        }
        let mut listeners: Vec<(SocketAddr, &str)> = proxy_listeners(proxy).collect();
        let own_listener = webhook.and_then(|w| w.listen);
        if let (Some(webhook_listen), Some(raw_webhook)) = (own_listener, &raw.webhook) {
            if let Some((addr, key)) = listeners
                .iter()
                .find(|(addr, _)| clash(addr, &webhook_listen))
            {
                let span = raw_webhook
                    .get_ref()
                    .listen
                    .as_ref()
                    .map_or_else(|| raw_webhook.span(), Spanned::span);
                return Err(ConfigError::at(self.file, self.source, Some(span), format!(
                    "[webhook] listen `{webhook_listen}` uses the port of {key} `{addr}`; the webhook receiver needs a port of its own: choose a free one"
                )));
            }
            listeners.push((webhook_listen, "[webhook] listen"));
        }
        for raw_app in &raw.app {
            self.check_slot_ports(raw_app.get_ref(), &listeners)?;
        }
        Ok(())
    }

    /// `[admin] listen` on the port of another listener or a slot.
    fn check_admin_port(
        &self,
        raw: &RawConfig,
        proxy: &ProxyConfig,
        webhook: Option<&crate::webhook::WebhookConfig>,
        remote: Option<&crate::admin::RemoteAdmin>,
    ) -> Result<(), ConfigError> {
        let (Some(remote), Some(spanned)) = (remote, &raw.admin.listen) else {
            return Ok(());
        };
        let taken = proxy_listeners(proxy).chain(
            webhook
                .and_then(|w| w.listen)
                .map(|addr| (addr, "[webhook] listen")),
        );
        for (addr, key) in taken {
            if clash(&addr, &remote.listen) {
                return Err(self.error(
                    spanned,
                    format!("[admin] listen `{}` uses the port of {key} `{addr}`; the admin API needs a port of its own", remote.listen),
                ));
            }
        }
        for raw_app in &raw.app {
            self.check_slot_ports(raw_app.get_ref(), &[(remote.listen, "[admin] listen")])?;
        }
        Ok(())
    }

    fn check_slot_ports(
        &self,
        raw: &RawApp,
        listeners: &[(SocketAddr, &str)],
    ) -> Result<(), ConfigError> {
        let ports = match (&raw.process, &raw.docker) {
            (Some(process), _) => process.get_ref().ports.as_ref().map(|p| (p, "ports")),
            (None, Some(docker)) => docker
                .get_ref()
                .host_ports
                .as_ref()
                .map(|p| (p, "host_ports")),
            (None, None) => None,
        };
        let Some((ports, key)) = ports else {
            return Ok(());
        };
        for (slot, port) in [
            ("blue", ports.get_ref().blue),
            ("green", ports.get_ref().green),
        ] {
            if let Some((addr, listener)) = listeners.iter().find(|(addr, _)| addr.port() == port) {
                return Err(self.error(
                    ports,
                    format!(
                        "app `{}`: {key}.{slot} = {port} is the port of {listener} `{addr}`; a release cannot listen where cutover does, choose another port",
                        raw.name.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[proxy] workers`: a count from 1 to [`MAX_WORKERS`], or "auto"
    /// (`None`).
    fn workers(&self, value: &Spanned<toml::Value>) -> Result<Option<NonZeroUsize>, ConfigError> {
        let count = match value.get_ref() {
            toml::Value::String(word) if word == "auto" => return Ok(None),
            toml::Value::Integer(n) => usize::try_from(*n)
                .ok()
                .filter(|n| *n <= MAX_WORKERS)
                .and_then(NonZeroUsize::new),
            _ => None,
        };
        count.map(Some).ok_or_else(|| {
            self.error(
                value,
                format!(
                    "workers must be a number from 1 to {MAX_WORKERS} or \"auto\" (one per CPU), not `{}`",
                    value.get_ref()
                ),
            )
        })
    }

    /// `[proxy] listen`; not given: 127.0.0.1:8080.
    fn listen(
        &self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        let Some(list) = raw else {
            return Ok(vec![SocketAddr::from(([127, 0, 0, 1], 8080))]);
        };
        if list.get_ref().is_empty() {
            return Err(self.error(
                list,
                "`listen = []` leaves the proxy without a listener; give at least one address, e.g. listen = [\"127.0.0.1:8080\"], or omit the key for that default",
            ));
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in list.get_ref() {
            let parsed = addr.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.error(addr, format!("`{}` is not a listen address; write it like \"127.0.0.1:8080\" or \"[::]:80\"", addr.get_ref()))
            })?;
            if addrs.contains(&parsed) {
                return Err(self.error(
                    addr,
                    format!("`{parsed}` is listed twice in [proxy] listen; a port can be bound once, remove the repeat"),
                ));
            }
            addrs.push(parsed);
        }
        Ok(addrs)
    }

    fn io(&self, raw: Option<&Spanned<String>>) -> Result<ProxyIo, ConfigError> {
        match raw.map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "auto")) => Ok(ProxyIo::Auto),
            Some((_, "uring")) => Ok(ProxyIo::Uring),
            Some((_, "epoll")) => Ok(ProxyIo::Epoll),
            Some((spanned, other)) => Err(self.error(
                spanned,
                format!("io `{other}` is not known; use \"auto\" (io_uring where the kernel allows it), \"uring\" or \"epoll\""),
            )),
        }
    }

    fn access_log(&self, raw: Option<&Spanned<String>>) -> Result<AccessLog, ConfigError> {
        match raw.map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "combined")) => Ok(AccessLog::Combined),
            Some((_, "json")) => Ok(AccessLog::Json),
            Some((_, "off")) => Ok(AccessLog::Off),
            Some((spanned, other)) => Err(self.error(
                spanned,
                format!("access_log `{other}` is not known; use \"combined\", \"json\" or \"off\""),
            )),
        }
    }

    fn proxy(&self, raw: &crate::raw::RawProxy) -> Result<ProxyConfig, ConfigError> {
        let nginx_mode = crate::nginx::mode(
            raw.mode.as_ref(),
            raw.nginx.as_ref(),
            self.file,
            self.source,
        )?;
        let listen_given = raw.listen.is_some();
        let listen = self.listen(raw.listen.as_ref())?;
        let access_log = self.access_log(raw.access_log.as_ref())?;
        let workers = match raw.workers.as_ref() {
            None => None,
            Some(value) => self.workers(value)?,
        };
        let nginx = if nginx_mode {
            Some(crate::nginx::validate(
                raw.nginx.as_ref(),
                listen_given.then_some(listen.as_slice()),
                &self.base_dir(),
                self.file,
                self.source,
            )?)
        } else {
            None
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
            workers,
            io: self.io(raw.io.as_ref())?,
            access_log,
            access_log_file: raw
                .access_log_file
                .clone()
                .map(|file| self.base_dir().join(file)),
            tls: crate::tls::validate(
                crate::tls::RawTlsKeys {
                    listen: raw.tls_listen.as_ref(),
                    certs: raw.tls.as_ref(),
                    redirect_http: raw.redirect_http.as_ref(),
                    nginx_mode,
                    acme: raw.acme.is_some(),
                },
                &self.base_dir(),
                self.file,
                self.source,
            )?,
            trusted_proxies: self.trusted_proxies(raw.trusted_proxies.as_deref())?,
            max_connections: self
                .count(raw.max_connections.as_ref(), "max_connections", 1)?
                .map(|n| n as usize),
            max_connections_per_client: self
                .count(
                    raw.max_connections_per_client.as_ref(),
                    "max_connections_per_client",
                    0,
                )?
                .map_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT, |n| n as usize),
            nginx,
            acme: None,
        })
    }

    /// `[proxy.acme]`, once the apps' hosts (its default names) are known.
    fn acme(
        &self,
        raw: &RawConfig,
        proxy: &ProxyConfig,
        apps: &[AppConfig],
    ) -> Result<Option<crate::acme::AcmeConfig>, ConfigError> {
        let Some(acme) = &raw.proxy.acme else {
            return Ok(None);
        };
        let base = self.base_dir();
        let context = crate::acme::AcmeContext {
            base: &base,
            app_hosts: apps
                .iter()
                .flat_map(|app| app.hosts.iter().map(String::as_str))
                .collect(),
            has_tls_listen: !proxy.tls.listen.is_empty(),
            has_plain_listen: !proxy.listen.is_empty(),
            nginx_mode: proxy.nginx.is_some(),
            check_files: self.check_files,
        };
        crate::acme::validate(acme, &context, self.file, self.source).map(Some)
    }

    /// `[proxy] trusted_proxies`: CIDR blocks (or lone addresses).
    fn trusted_proxies(
        &self,
        raw: Option<&[Spanned<String>]>,
    ) -> Result<Vec<crate::cidr::Cidr>, ConfigError> {
        raw.unwrap_or_default()
            .iter()
            .map(|block| {
                block.get_ref().parse().map_err(|e| {
                    self.error(
                        block,
                        format!(
                            "trusted_proxies: {e}; write blocks like \"10.0.0.0/8\" or \"::1/128\""
                        ),
                    )
                })
            })
            .collect()
    }

    /// A `[proxy]` count of at least `min`; `None` when not set.
    fn count(
        &self,
        raw: Option<&Spanned<i64>>,
        key: &str,
        min: i64,
    ) -> Result<Option<u64>, ConfigError> {
        match raw {
            None => Ok(None),
            Some(n) => match u64::try_from(*n.get_ref()) {
                Ok(count) if *n.get_ref() >= min => Ok(Some(count)),
                _ => Err(self.error(n, format!("{key} must be a whole number of at least {min}"))),
            },
        }
    }

    fn app(
        &self,
        spanned: &Spanned<RawApp>,
        base: &Path,
        state_dir: &Path,
    ) -> Result<AppConfig, ConfigError> {
        let raw = spanned.get_ref();
        let name = self.app_name(&raw.name)?;
        let hosts = self.hosts(raw)?;
        let paths = crate::group::paths(name, raw.paths.as_ref()).map_err(|l| self.locate(l))?;
        let promotion = self.promotion(raw.promotion.as_ref())?;
        let max_queued = match &raw.max_queued {
            None => 1,
            Some(n) if (0..=100).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => return Err(self.error(n, "max_queued must be between 0 and 100")),
        };
        let driver = self.driver(raw, base)?;
        let supervise = crate::supervise::validate(crate::supervise::RawSupervise {
            restart: raw.restart.as_ref(),
            restart_limit: raw.restart_limit.as_ref(),
            restart_window: raw.restart_window.as_ref(),
            restart_backoff: raw.restart_backoff.as_ref(),
            restart_backoff_max: raw.restart_backoff_max.as_ref(),
            on_live_failure: raw.on_live_failure.as_ref(),
        })
        .map_err(|located| ConfigError::located(self.file, self.source, located))?;
        Ok(AppConfig {
            supervise,
            name: name.clone(),
            hosts,
            paths,
            drain_timeout: raw.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
            keep_old: raw.keep_old.map_or(Duration::ZERO, |d| d.0),
            promotion,
            preview_header: raw
                .preview_header
                .clone()
                .unwrap_or_else(|| "X-Cutover-Preview".to_string()),
            max_queued,
            upstream_protocol: self.upstream_protocol(raw.upstream_protocol.as_ref())?,
            auto_promote_after: raw.auto_promote_after.map(|d| d.0),
            auto_abort_after: raw.auto_abort_after.map(|d| d.0),
            verify: self.verify(raw)?,
            shift: self.shift(raw)?,
            hooks: self.hooks(raw)?,
            health: self.health(&raw.health)?,
            balance: self.balance(raw.balance.as_ref())?,
            driver,
            source: match &raw.source {
                Some(source) => Some(crate::source::validate(
                    source,
                    name,
                    base,
                    state_dir,
                    self.file,
                    self.source,
                )?),
                None => None,
            },
        })
    }

    fn app_name<'n>(&self, raw: &'n Spanned<String>) -> Result<&'n String, ConfigError> {
        let name = raw.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && !name.starts_with('-');
        if !name_ok {
            return Err(self.error(
                raw,
                format!("app name `{name}` is not valid: use 1-63 lowercase letters, digits, `-` or `_`, not starting with `-`"),
            ));
        }
        Ok(name)
    }

    /// Host-header patterns, lowercased; not given: `*` (the default app).
    fn hosts(&self, raw: &RawApp) -> Result<Vec<String>, ConfigError> {
        match &raw.hosts {
            None => Ok(vec!["*".to_string()]),
            Some(hosts) if hosts.is_empty() => Err(self.error(
                &raw.name,
                format!(
                    "app `{}` has an empty `hosts` list; omit it or use [\"*\"]",
                    raw.name.get_ref()
                ),
            )),
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
                .collect(),
        }
    }

    fn promotion(&self, raw: Option<&Spanned<String>>) -> Result<Promotion, ConfigError> {
        match raw.map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "auto")) => Ok(Promotion::Auto),
            Some((_, "manual")) => Ok(Promotion::Manual),
            Some((spanned, other)) => Err(self.error(
                spanned,
                format!("promotion `{other}` is not known; use \"auto\" or \"manual\""),
            )),
        }
    }

    /// Exactly one of `[app.process]`, `[app.docker]` and `[app.swarm]`.
    fn driver(&self, raw: &RawApp, base: &Path) -> Result<DriverConfig, ConfigError> {
        let name = raw.name.get_ref();
        let sections = [
            ("process", raw.process.as_ref().map(Spanned::span)),
            ("docker", raw.docker.as_ref().map(Spanned::span)),
            ("swarm", raw.swarm.as_ref().map(Spanned::span)),
        ];
        let present: Vec<(&str, std::ops::Range<usize>)> = sections
            .into_iter()
            .filter_map(|(section, span)| Some((section, span?)))
            .collect();
        if let [(first, _), (second, span), ..] = present.as_slice() {
            return Err(self.locate((
                span.clone(),
                format!("app `{name}` has both [app.{first}] and [app.{second}]; an app runs with exactly one driver, remove one"),
            )));
        }
        if let Some(docker) = &raw.docker {
            return Ok(DriverConfig::Docker(crate::docker::validate(
                docker,
                name,
                base,
                self.file,
                self.source,
            )?));
        }
        if let Some(swarm) = &raw.swarm {
            return Ok(DriverConfig::Swarm(crate::swarm::validate(
                swarm,
                name,
                base,
                self.file,
                self.source,
            )?));
        }
        match &raw.process {
            Some(process) => Ok(DriverConfig::Process(self.process(process, base)?)),
            None => Err(self.error(
                &raw.name,
                format!("app `{name}` has no driver: add an [app.process] section with a `command`, an [app.docker] section with an `image`, or an [app.swarm] section with an `image`"),
            )),
        }
    }

    fn balance(&self, raw: Option<&Spanned<String>>) -> Result<Balance, ConfigError> {
        match raw.map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "least_requests")) => Ok(Balance::LeastRequests),
            Some((_, "round_robin")) => Ok(Balance::RoundRobin),
            Some((spanned, other)) => Err(self.error(
                spanned,
                format!("balance `{other}` is not known; use \"least_requests\" (the default) or \"round_robin\""),
            )),
        }
    }

    fn upstream_protocol(
        &self,
        raw: Option<&Spanned<String>>,
    ) -> Result<UpstreamProtocol, ConfigError> {
        match raw.map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "http1")) => Ok(UpstreamProtocol::Http1),
            Some((_, "h2c")) => Ok(UpstreamProtocol::H2c),
            Some((spanned, other)) => Err(self.error(
                spanned,
                format!(
                    "upstream_protocol `{other}` is not known; use \"http1\" (the default) or \"h2c\" (HTTP/2 without TLS, e.g. gRPC)"
                ),
            )),
        }
    }

    fn verify(&self, raw: &RawApp) -> Result<Option<VerifyConfig>, ConfigError> {
        let Some(window) = raw.verify_for.map(|d| d.0).filter(|d| !d.is_zero()) else {
            if let Some(ratio) = &raw.verify_max_error_ratio {
                return Err(self.error(
                    ratio,
                    "verify_max_error_ratio needs verify_for (how long to watch)",
                ));
            }
            return Ok(None);
        };
        let max_error_ratio = match &raw.verify_max_error_ratio {
            None => 0.05,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                return Err(self.error(
                    r,
                    "verify_max_error_ratio must be between 0.0 and 1.0, e.g. 0.05",
                ))
            }
        };
        let command = match &raw.verify_command {
            None => None,
            Some(c) if c.get_ref().first().is_some_and(|p| !p.trim().is_empty()) => {
                Some(c.get_ref().clone())
            }
            Some(c) => {
                return Err(self.error(
                    c,
                    "verify_command must name a program, e.g. [\"./smoke.sh\"]",
                ))
            }
        };
        Ok(Some(VerifyConfig {
            window,
            max_error_ratio,
            min_requests: 20,
            command,
        }))
    }

    fn shift(&self, raw: &RawApp) -> Result<Option<ShiftConfig>, ConfigError> {
        let Some(shift) = &raw.shift else {
            return Ok(None);
        };
        let steps = &shift.get_ref().steps;
        let increasing = steps.windows(2).all(|w| w[0] < w[1]);
        let in_range = steps.iter().all(|s| (1..=100).contains(s));
        if steps.is_empty() || !increasing || !in_range || steps.last() != Some(&100) {
            return Err(self.error(
                shift,
                "shift.steps must be increasing percentages from 1 to 100 ending at 100, e.g. [10, 50, 100]",
            ));
        }
        let every = shift.get_ref().every.0;
        if every.is_zero() {
            return Err(self.error(shift, "shift.every must be longer than 0s, e.g. \"30s\""));
        }
        Ok(Some(ShiftConfig {
            steps: steps.iter().map(|s| *s as u8).collect(),
            every,
        }))
    }

    fn hooks(&self, raw: &RawApp) -> Result<HooksConfig, ConfigError> {
        let Some(hooks) = &raw.hooks else {
            return Ok(HooksConfig {
                timeout: Duration::from_secs(60),
                ..HooksConfig::default()
            });
        };
        let value = hooks.get_ref();
        for command in value
            .before_switch
            .iter()
            .chain(&value.after_switch)
            .chain(&value.on_failure)
        {
            if command.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(self.error(hooks, "every hook must be an argv list naming a program, e.g. [\"./smoke.sh\", \"--fast\"]"));
            }
        }
        Ok(HooksConfig {
            before_switch: value.before_switch.clone(),
            after_switch: value.after_switch.clone(),
            on_failure: value.on_failure.clone(),
            timeout: value.timeout.map_or(Duration::from_secs(60), |d| d.0),
        })
    }

    fn process_env(
        &self,
        raw: Option<&Spanned<BTreeMap<String, String>>>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let Some(env) = raw else {
            return Ok(BTreeMap::new());
        };
        match env
            .get_ref()
            .iter()
            .find_map(|(key, value)| env_entry_problem(key, value))
        {
            Some(problem) => Err(self.error(env, format!("[app.process] env: {problem}"))),
            None => Ok(env.get_ref().clone()),
        }
    }

    fn health(&self, raw: &RawHealth) -> Result<HealthConfig, ConfigError> {
        let path = match &raw.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().contains(|c: char| c.is_control() || c == ' ') => {
                return Err(self.error(
                    p,
                    format!(
                        "health path {:?} contains a space or a control character, which cannot be sent in a request line; percent-encode it (e.g. %20)",
                        p.get_ref()
                    ),
                ))
            }
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
        if command.iter().any(|arg| arg.contains('\0')) {
            return Err(self.error(
                &raw.command,
                "`command` has an argument with a NUL character, which no program can receive; remove it",
            ));
        }
        let ports = raw
            .ports
            .as_ref()
            .map(|ports| slot_ports(ports, "ports"))
            .transpose()
            .map_err(|located| self.locate(located))?;
        let stop_signal = match &raw.stop_signal {
            None => StopSignal::Term,
            Some(s) => StopSignal::parse(s.get_ref()).ok_or_else(|| {
                self.error(s, format!("stop_signal `{}` is not supported; use SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2", s.get_ref()))
            })?,
        };
        Ok(ProcessConfig {
            command: command.clone(),
            ports,
            env: self.process_env(raw.env.as_ref())?,
            working_dir: raw
                .working_dir
                .as_ref()
                .map_or_else(|| base.to_path_buf(), |d| base.join(d)),
            stop_signal,
            stop_timeout: raw.stop_timeout.map_or(Duration::from_secs(10), |d| d.0),
            advertise: raw
                .advertise
                .as_ref()
                .map(advertise)
                .transpose()
                .map_err(|located| self.locate(located))?,
        })
    }
}

/// Whether binding both addresses would fail: one port (not 0, which
/// picks a free one) on the same address or on a wildcard one.
fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Why an environment entry cannot be handed to a process, if it cannot.
pub(crate) fn env_entry_problem(key: &str, value: &str) -> Option<String> {
    if key.is_empty() {
        Some(
            "an environment variable name is empty; give it a name, e.g. RUST_LOG = \"info\""
                .into(),
        )
    } else if key.contains(['=', '\0']) {
        Some(format!(
            "environment variable name {key:?} contains `=` or a NUL character, which a process environment cannot hold; rename it"
        ))
    } else if value.contains('\0') {
        Some(format!(
            "the value of environment variable `{key}` contains a NUL character, which a process environment cannot hold; remove it"
        ))
    } else {
        None
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

/// The proxy's listening addresses, each with the key that sets it.
fn proxy_listeners(proxy: &ProxyConfig) -> impl Iterator<Item = (SocketAddr, &'static str)> + '_ {
    let plain = proxy.listen.iter().map(|addr| (*addr, "[proxy] listen"));
    let tls = proxy
        .tls
        .listen
        .iter()
        .map(|addr| (*addr, "[proxy] tls_listen"));
    plain.chain(tls)
}
