//! # cutover-nginx
//!
//! The nginx front mode: cutover drives an existing nginx (on this host or
//! over `ssh`) instead of its built-in proxy.
//!
//! A switch of an app ([`Nginx::switch`]):
//!
//! 1. reads nginx's master pid (the pid file) and lists its children: the
//!    workers serving right now;
//! 2. writes `<include_dir>/<app>.upstream.conf` atomically (temp file,
//!    fsync, rename, fsync of the directory) with the new release's
//!    address in an `upstream` block with a `keepalive` pool;
//! 3. validates the whole configuration (`test`, `nginx -t`);
//! 4. reloads (`reload`: `nginx -s reload`, `systemctl reload nginx`, ...);
//! 5. confirms the reload: the master started new workers (nginx that
//!    cannot apply a configuration keeps its old workers and says so only
//!    in its error log).
//!
//! If 3, 4 or 5 fails, the previous include is put back (or removed if
//! there was none) and the error carries nginx's own output; the old
//! release keeps serving. The drain ([`Nginx::wait_exited`]) waits until
//! every worker listed in 1 has exited: they finish the requests (and
//! upgraded connections) they hold, so the old release may be stopped.
//!
//! # Layout
//!
//! - `host.rs`: running commands, reading and writing files, listing
//!   processes, locally or over `ssh` (argv only; see [`quote`]).
//! - `pid.rs`: where nginx's pid file is: `pid_file`, else the `pid` of
//!   the configuration as `nginx -T` reports it (looked up once).
//! - `site.rs`: the include's content ([`upstream_block`]) and the site
//!   config for teams ([`site_config`]).

#![forbid(unsafe_code)]

mod host;
mod pid;
mod site;

pub use cutover_config::NginxConfig;
pub use host::{quote, remote_command_line};
pub use site::{
    conf_includes, site_config, upstream_block, upstream_servers, KEEPALIVE_CONNECTIONS,
};

use host::{display_argv, Host};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for nginx to start new workers after a reload.
const RELOAD_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A switch that did not happen; the message says why, with nginx's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxError(pub String);

impl fmt::Display for NginxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NginxError {}

/// The nginx workers that served before a reload, to be drained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OldWorkers {
    /// nginx's master at the time (its children are the workers).
    pub master: Option<u32>,
    pub pids: Vec<u32>,
}

impl OldWorkers {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }
}

/// A done switch.
#[derive(Debug, Clone)]
pub struct Switched {
    /// Workers that served before the reload (none when the include already
    /// had this content and nothing was reloaded).
    pub old_workers: OldWorkers,
    pub reloaded: bool,
}

/// How waiting for old workers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkersExit {
    /// All of them exited (or there were none).
    Exited { waited: Duration, workers: usize },
    /// The timeout passed with `remaining` of `workers` still running.
    TimedOut { remaining: usize, workers: usize },
}

/// One nginx that cutover drives. Switches of different apps are
/// serialised: each validates and reloads the whole configuration.
pub struct Nginx {
    config: NginxConfig,
    host: Host,
    switching: tokio::sync::Mutex<()>,
    /// The pid file, once known (see `pid.rs`).
    pid_file: tokio::sync::OnceCell<PathBuf>,
}

impl Nginx {
    pub fn new(config: NginxConfig) -> Nginx {
        let host = match &config.ssh {
            Some(ssh) => Host::Ssh(ssh.clone()),
            None => Host::Local,
        };
        Nginx {
            config,
            host,
            switching: tokio::sync::Mutex::new(()),
            pid_file: tokio::sync::OnceCell::new(),
        }
    }

    /// nginx's pid file: `pid_file`, else the `pid` of its configuration.
    pub async fn pid_file(&self) -> Result<&Path, NginxError> {
        self.pid_file
            .get_or_try_init(|| pid::discover(&self.config, &self.host))
            .await
            .map(PathBuf::as_path)
            .map_err(|e| NginxError(format!("cannot tell where nginx writes its pid: {e}")))
    }

    /// The master's pid, read from the pid file.
    async fn read_master(&self) -> Result<u32, String> {
        let file = self.pid_file().await.map_err(|e| e.0)?;
        self.host.read_pid(file).await
    }

    pub fn config(&self) -> &NginxConfig {
        &self.config
    }

    /// The file cutover rewrites for `app`.
    pub fn include_path(&self, app: &str) -> PathBuf {
        self.config.include_path(app)
    }

    /// Where nginx runs, for messages ("this host", `user@host:port`).
    pub fn location(&self) -> String {
        self.host.describe()
    }

    /// The current content of `app`'s include (None: there is none).
    pub async fn read_include(&self, app: &str) -> Result<Option<String>, NginxError> {
        self.host
            .read_file(&self.include_path(app))
            .await
            .map(|bytes| bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(NginxError)
    }

    /// Routes every new request of `app` to `addr` (None: to nothing):
    /// include, `nginx -t`, reload, confirmation; on any failure the
    /// previous include is restored. Does nothing (and reloads nothing)
    /// when the include already routes to `addr`.
    pub async fn switch(
        &self,
        app: &str,
        addr: Option<SocketAddr>,
    ) -> Result<Switched, NginxError> {
        let servers: Vec<SocketAddr> = addr.into_iter().collect();
        self.switch_to(app, &servers).await
    }

    /// [`Nginx::switch`] to every one of `servers` (a release with several
    /// endpoints).
    pub async fn switch_to(
        &self,
        app: &str,
        servers: &[SocketAddr],
    ) -> Result<Switched, NginxError> {
        let _one_at_a_time = self.switching.lock().await;
        let path = self.include_path(app);
        let content = upstream_servers(app, servers);
        let previous = self
            .host
            .read_file(&path)
            .await
            .map_err(|e| NginxError(format!("{e}; nothing changed")))?;
        if previous.as_deref() == Some(content.as_bytes()) {
            return Ok(Switched {
                old_workers: OldWorkers::default(),
                reloaded: false,
            });
        }
        let pid_file = self.pid_file().await?;
        let master = self.host.read_pid(pid_file).await.map_err(|e| {
            NginxError(format!(
                "cannot read nginx's pid file {} on {} ({e}); is nginx running, and is [proxy.nginx] pid_file the `pid` of its configuration? nothing changed",
                pid_file.display(),
                self.host.describe()
            ))
        })?;
        let before = self.host.children(master).await.map_err(|e| {
            NginxError(format!(
                "cannot list nginx's workers (children of {master}): {e}; nothing changed"
            ))
        })?;

        self.host
            .write_atomic(&path, content.as_bytes())
            .await
            .map_err(|e| NginxError(format!("{e}; nothing changed")))?;

        let test = self.host.run(&self.config.test, None).await;
        if let Some(why) = failure(&self.config.test, test) {
            let restored = self.restore(&path, previous.as_deref()).await;
            return Err(NginxError(format!(
                "nginx rejected the new configuration of {app}: {why}\n{restored}; nginx was not reloaded"
            )));
        }
        let reload = self.host.run(&self.config.reload, None).await;
        if let Some(why) = failure(&self.config.reload, reload) {
            let restored = self.restore(&path, previous.as_deref()).await;
            return Err(NginxError(format!(
                "reloading nginx failed: {why}\n{restored}"
            )));
        }
        if let Err(why) = self.confirm_reload(master, &before).await {
            let restored = self.restore(&path, previous.as_deref()).await;
            // nginx may still apply the new file late: reload the restored one.
            let again = match failure(
                &self.config.reload,
                self.host.run(&self.config.reload, None).await,
            ) {
                None => "and nginx was reloaded with it".to_string(),
                Some(e) => format!("and reloading nginx with it failed too: {e}"),
            };
            return Err(NginxError(format!("{why}\n{restored} {again}")));
        }
        Ok(Switched {
            old_workers: OldWorkers {
                master: Some(master),
                pids: before,
            },
            reloaded: true,
        })
    }

    /// Puts the previous include back (or removes the new one if there was
    /// none); says what happened.
    async fn restore(&self, path: &Path, previous: Option<&[u8]>) -> String {
        let result = match previous {
            Some(bytes) => self.host.write_atomic(path, bytes).await,
            None => self.host.remove(path).await,
        };
        match (result, previous) {
            (Ok(()), Some(_)) => format!("the previous {} was restored", path.display()),
            (Ok(()), None) => format!("the new {} was removed again", path.display()),
            (Err(e), _) => format!("restoring the previous {} FAILED: {e}", path.display()),
        }
    }

    /// Waits until nginx runs workers that are not in `before` (or another
    /// master): the reload took effect.
    async fn confirm_reload(&self, master: u32, before: &[u32]) -> Result<(), String> {
        if before.is_empty() {
            // No separate workers (master_process off): nothing to compare.
            return Ok(());
        }
        let deadline = Instant::now() + RELOAD_CONFIRM_TIMEOUT;
        let mut last_error = None;
        loop {
            match self.host.children(master).await {
                Ok(now) if now.iter().any(|pid| !before.contains(pid)) => return Ok(()),
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
            if let Ok(pid) = self.read_master().await {
                if pid != master {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let detail = last_error.map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(format!(
                    "nginx did not start new workers within {RELOAD_CONFIRM_TIMEOUT:?} of `{}`{detail}: it did not apply the new configuration (see nginx's error log)",
                    display_argv(&self.config.reload)
                ));
            }
            tokio::time::sleep(self.poll_interval()).await;
        }
    }

    fn poll_interval(&self) -> Duration {
        if self.host.is_remote() {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(20)
        }
    }

    /// Workers of nginx's master right now (for tests and status).
    pub async fn workers(&self) -> Result<(u32, Vec<u32>), NginxError> {
        let master = self.read_master().await.map_err(NginxError)?;
        let children = self.host.children(master).await.map_err(NginxError)?;
        Ok((master, children))
    }

    /// Waits until every worker in `old` has exited, or `timeout`. Ends as
    /// soon as the last one is gone; never sleeps a fixed time beyond the
    /// polling interval.
    pub async fn wait_exited(&self, old: &OldWorkers, timeout: Duration) -> WorkersExit {
        let started = Instant::now();
        let workers = old.pids.len();
        let Some(master) = old.master.filter(|_| workers > 0) else {
            return WorkersExit::Exited {
                waited: Duration::ZERO,
                workers,
            };
        };
        let mut remaining = workers;
        loop {
            match self.host.children(master).await {
                Ok(now) => {
                    remaining = old.pids.iter().filter(|pid| now.contains(pid)).count();
                    if remaining == 0 {
                        return WorkersExit::Exited {
                            waited: started.elapsed(),
                            workers,
                        };
                    }
                }
                Err(e) => tracing::warn!("cannot list nginx's workers while draining: {e}"),
            }
            if started.elapsed() >= timeout {
                return WorkersExit::TimedOut { remaining, workers };
            }
            let left = timeout.saturating_sub(started.elapsed());
            tokio::time::sleep(self.poll_interval().min(left)).await;
        }
    }
}

/// None when the command ran and exited 0; else what went wrong, with its output.
fn failure(argv: &[String], result: Result<host::Output, String>) -> Option<String> {
    match result {
        Err(e) => Some(e),
        Ok(output) if output.status.success() => None,
        Ok(output) => {
            let said = output.said();
            let said = if said.is_empty() {
                "(no output)".to_string()
            } else {
                said
            };
            Some(format!(
                "`{}` exited with {}:\n{said}",
                display_argv(argv),
                output
                    .status
                    .code()
                    .map_or_else(|| output.status.to_string(), |c| format!("status {c}"))
            ))
        }
    }
}
