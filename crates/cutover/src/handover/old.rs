//! The running process's side of an upgrade: start the new binary, hand it
//! the listening sockets and the live releases, wait for it to serve; then
//! pass it each idle client connection while this process drains.

use super::wire::{self, HandoverError, ListenerTag, Message};
use cutover_engine::{AppHandover, Engine, EngineError};
use cutover_proxy::HandedConn;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that tells a starting `cutover serve` where
/// to take over from.
pub const UPGRADE_SOCKET_ENV: &str = "CUTOVER_UPGRADE_SOCKET";
/// How long the new process has to connect and say it serves.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the wait looks at whether the new process exited.
const CHILD_POLL: Duration = Duration::from_millis(20);

/// What a running daemon can hand over, kept from its start.
pub struct Upgrader {
    pub state_dir: PathBuf,
    /// Second descriptors of the listening sockets, with what they serve.
    pub listeners: Vec<(ListenerTag, OwnedFd)>,
    pub admin: OwnedFd,
    pub engine: Engine,
}

/// Why an upgrade did not happen (this process serves on).
#[derive(Debug)]
pub struct UpgradeFailed {
    pub why: String,
    /// Refused before anything was tried because a deployment runs or is
    /// queued: worth asking again once it ended.
    pub busy: bool,
}

impl From<String> for UpgradeFailed {
    fn from(why: String) -> UpgradeFailed {
        UpgradeFailed { why, busy: false }
    }
}

/// A new process that serves now; this one drains.
pub struct HandedOver {
    pub stream: UnixStream,
    pub pid: u32,
}

impl Upgrader {
    /// Runs an upgrade to `binary` (default: this executable, read again
    /// from disk), recording each step. On failure the new process is
    /// stopped, deployments may start again, and this process serves on.
    pub async fn upgrade(
        &self,
        binary: Option<PathBuf>,
        steps: &mut Vec<String>,
    ) -> Result<HandedOver, UpgradeFailed> {
        steps.push("holding new deployments while cutover is upgraded".to_string());
        let apps = self.engine.freeze().await.map_err(|e| UpgradeFailed {
            busy: matches!(e, EngineError::Conflict(_)),
            why: e.to_string(),
        })?;
        let binary = match binary.map_or_else(own_executable, Ok) {
            Ok(binary) => binary,
            Err(why) => {
                self.engine.thaw().await;
                return Err(why.into());
            }
        };
        let hello = self.hello(&apps);
        let fds = self
            .duplicate_fds()
            .map_err(|e| format!("cannot hand over the sockets: {e}"));
        let state_dir = self.state_dir.clone();
        let ran = match fds {
            Ok(fds) => tokio::task::spawn_blocking(move || {
                let mut steps = Vec::new();
                let result = take_over(&state_dir, &binary, &hello, &fds, &mut steps);
                (result, steps)
            })
            .await
            .map_err(|e| format!("the upgrade task failed: {e}")),
            Err(why) => Err(why),
        };
        let result = match ran {
            Ok((result, more)) => {
                steps.extend(more);
                result
            }
            Err(why) => Err(why),
        };
        if result.is_err() {
            self.engine.thaw().await;
        }
        result.map_err(UpgradeFailed::from)
    }

    fn hello(&self, apps: &[AppHandover]) -> Message {
        Message::Hello {
            protocol: wire::PROTOCOL,
            pid: std::process::id(),
            listeners: self.listeners.iter().map(|(tag, _)| tag.clone()).collect(),
            apps: apps.iter().map(super::snapshot_of).collect(),
        }
    }

    fn duplicate_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.listeners
            .iter()
            .map(|(_, fd)| fd)
            .chain(std::iter::once(&self.admin))
            .map(|fd| fd.try_clone())
            .collect()
    }
}

/// This process's executable as it is on disk now (a package upgrade
/// replaced the file: the path names the new one).
fn own_executable() -> Result<PathBuf, String> {
    let path = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find this executable (/proc/self/exe): {e}; pass --binary"))?;
    let text = path.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(replaced) => PathBuf::from(replaced),
        None => path,
    })
}

/// The blocking part: socket, child, hello, ready.
fn take_over(
    state_dir: &Path,
    binary: &Path,
    hello: &Message,
    fds: &[OwnedFd],
    steps: &mut Vec<String>,
) -> Result<HandedOver, String> {
    let socket = HandoverSocket::bind(state_dir)?;
    let mut child = Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(UPGRADE_SOCKET_ENV, &socket.path)
        .stdin(Stdio::null())
        // Its own process group: a signal to this one's (a terminal's
        // Ctrl-C) does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    steps.push(format!("started {} (pid {})", binary.display(), child.id()));
    let deadline = Instant::now() + TAKE_OVER_TIMEOUT;
    let result = socket.accept(&mut child, deadline).and_then(|stream| {
        steps.push(
            "handed over the listening sockets, the admin socket and the live releases".to_string(),
        );
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        wire::send(&stream, hello, &borrowed).map_err(|e| e.to_string())?;
        let pid = wait_ready(&stream, &mut child, deadline)?;
        Ok(HandedOver { stream, pid })
    });
    match &result {
        Ok(handed) => steps.push(format!(
            "the new process (pid {}) serves; this one (pid {}) stops accepting, finishes its requests and hands over idle connections",
            handed.pid,
            std::process::id()
        )),
        Err(_) => stop_child(&mut child),
    }
    result
}

/// The unix socket the new process connects to, in state_dir (0700), mode
/// 0600; removed when the hand-over is done either way.
struct HandoverSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl HandoverSocket {
    fn bind(state_dir: &Path) -> Result<HandoverSocket, String> {
        let path = state_dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&path);
        let failed = |e: std::io::Error| format!("cannot create {}: {e}", path.display());
        let listener = UnixListener::bind(&path).map_err(failed)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        Ok(HandoverSocket { listener, path })
    }

    /// The new process's connection, unless it exits or the time is up.
    fn accept(&self, child: &mut Child, deadline: Instant) -> Result<UnixStream, String> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| format!("hand-over socket: {e}"))?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("hand-over socket: {e}")),
            }
            check_child(child, deadline, "connected")?;
            std::thread::sleep(CHILD_POLL);
        }
    }
}

impl Drop for HandoverSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for `Ready` (or a refusal, an exit, the deadline).
fn wait_ready(stream: &UnixStream, child: &mut Child, deadline: Instant) -> Result<u32, String> {
    stream
        .set_read_timeout(Some(CHILD_POLL * 5))
        .map_err(|e| format!("hand-over socket: {e}"))?;
    loop {
        match wire::receive_message(stream, wire::descriptors_of) {
            Ok((Message::Ready { pid }, _)) => {
                let _ = stream.set_read_timeout(None);
                return Ok(pid);
            }
            Ok((Message::Refused { reason }, _)) => {
                return Err(format!("the new process refused to take over: {reason}"))
            }
            Ok(_) => return Err("the new process sent an unexpected message".to_string()),
            Err(HandoverError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(HandoverError::Closed) => {
                // It is exiting: say how, if it does so soon.
                let soon = Instant::now() + Duration::from_secs(2);
                check_child(child, soon.min(deadline), "said it serves")?;
                while Instant::now() < soon {
                    check_child(child, deadline, "said it serves")?;
                    std::thread::sleep(CHILD_POLL);
                }
                return Err(
                    "the new process closed the hand-over socket before it served".to_string(),
                );
            }
            Err(e) => return Err(format!("the hand-over failed: {e}")),
        }
        check_child(child, deadline, "said it serves")?;
    }
}

/// An error if the new process exited or the deadline passed.
fn check_child(child: &mut Child, deadline: Instant, before: &str) -> Result<(), String> {
    match child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "the new process exited ({status}) before it {before}"
        )),
        _ if Instant::now() >= deadline => Err(format!(
            "the new process did not take over within {}s",
            TAKE_OVER_TIMEOUT.as_secs()
        )),
        _ => Ok(()),
    }
}

/// A new process that did not take over is stopped (it holds no traffic:
/// it never said it serves) and reaped.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Passes each idle connection the listeners give up to the new process,
/// until the listeners' handoff is disarmed. Returns how many went over.
pub fn forward_connections(
    stream: UnixStream,
    connections: std::sync::mpsc::Receiver<HandedConn>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut passed = 0;
        for conn in connections {
            let message = Message::Connection {
                listener: conn.listener,
                prefix: conn.prefix.to_vec(),
                fresh: conn.fresh,
            };
            match wire::send(&stream, &message, &[conn.stream.as_fd()]) {
                Ok(()) => passed += 1,
                // The connection closes as it is dropped here.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pass a client connection to the new process")
                }
            }
        }
        passed
    })
}
