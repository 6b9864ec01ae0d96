//! The child registry: every process the bench starts is spawned through
//! [`Processes`], in its own process group, and stopped by pid — with its
//! group and every descendant it had (cutover's app slots, nginx workers) —
//! when its caller is done with it, or at the latest when the registry is
//! dropped (any return, `?`, panic) or the bench gets SIGINT/SIGTERM/SIGHUP.
//!
//! Nothing is ever stopped by port or by name: only pids the bench started,
//! their descendants as `/proc` listed them while the parent was alive
//! (checked against their start time before each signal, so a reused pid is
//! left alone), and orphans re-parented to the bench, which is a child
//! subreaper so that a descendant whose parent exits (a slot of a stopped
//! `cutover serve`) comes back to it instead of to init. An orphan is only
//! stopped if it carries the registry's marker variable in its environment
//! (inherited from the child the registry started), so two registries in
//! one process (tests) never stop each other's.

use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use crate::procfs::{self, Seen};

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a SIGKILLed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
/// Set in the environment of every child, inherited by its descendants.
const MARKER_VARIABLE: &str = "CUTOVER_BENCH_REGISTRY";

/// Set when a signal arrived: the signal thread ends the process.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Blocks for good if a signal is being handled, so that the main thread,
/// whose children just disappeared, neither reports that as an error nor
/// exits before the signal thread exits with the signal's status.
pub fn yield_to_signal_handler() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        thread::park();
    }
}

/// A process the bench started (a handle; the registry owns the child).
#[derive(Debug, Clone)]
pub struct Proc {
    id: u64,
    pub pid: i32,
    pub name: String,
}

/// What [`Processes::spawn`] gives back.
pub struct Spawned {
    pub proc: Proc,
    /// The child's standard input, when the command asked for a pipe.
    pub stdin: Option<ChildStdin>,
}

struct Tracked {
    id: u64,
    name: String,
    child: Child,
}

struct Registry {
    /// `CUTOVER_BENCH_REGISTRY=<this value>` marks its descendants.
    marker: String,
    next_id: u64,
    /// In start order; stopped in reverse.
    children: Vec<Tracked>,
    /// Set once everything was stopped for good: nothing new may start.
    closed: bool,
}

/// The registry of running children; dropping it stops them all.
pub struct Processes {
    shared: Arc<Mutex<Registry>>,
}

fn lock(shared: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Processes {
    /// Makes this process a child subreaper (see the module docs).
    pub fn new() -> Result<Self> {
        static REGISTRIES: AtomicU64 = AtomicU64::new(0);
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
        let number = REGISTRIES.fetch_add(1, Ordering::Relaxed);
        let registry = Registry {
            marker: format!("{}-{number}", std::process::id()),
            next_id: 0,
            children: Vec::new(),
            closed: false,
        };
        Ok(Processes {
            shared: Arc::new(Mutex::new(registry)),
        })
    }

    /// On SIGINT, SIGTERM or SIGHUP: stop every child, run `cleanup`, exit
    /// with 128 + the signal number. (A handler, not a blocked mask waited
    /// on: children inherit a signal mask, they do not inherit handlers.)
    pub fn stop_on_signals(&self, cleanup: impl FnOnce() + Send + 'static) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the signal runtime")?;
        let listen = |kind| runtime.block_on(async { signal(kind) });
        let mut interrupt = listen(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut terminate = listen(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut hangup = listen(SignalKind::hangup()).context("SIGHUP handler")?;
        let shared = self.shared.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let signal = runtime.block_on(async {
                    tokio::select! {
                        _ = interrupt.recv() => Signal::SIGINT,
                        _ = terminate.recv() => Signal::SIGTERM,
                        _ = hangup.recv() => Signal::SIGHUP,
                    }
                });
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!("bench: {signal}: stopping everything it started");
                stop_everything(&shared);
                cleanup();
                std::process::exit(128 + signal as i32);
            })
            .context("starting the signal thread")?;
        Ok(())
    }

    /// Starts `command` in its own process group and registers it.
    pub fn spawn(&self, name: &str, mut command: Command) -> Result<Spawned> {
        let mut registry = lock(&self.shared);
        command
            .process_group(0)
            .env(MARKER_VARIABLE, &registry.marker);
        if registry.closed {
            bail!("not starting {name}: the bench is stopping");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        registry.next_id += 1;
        let proc = Proc {
            id: registry.next_id,
            pid: child.id() as i32,
            name: name.to_string(),
        };
        let stdin = child.stdin.take();
        registry.children.push(Tracked {
            id: proc.id,
            name: proc.name.clone(),
            child,
        });
        Ok(Spawned { proc, stdin })
    }

    /// Waits for `proc` to exit, up to `timeout`; `None` if it still runs.
    /// An exited process is forgotten.
    pub fn wait(&self, proc: &Proc, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status(proc)? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// True while `proc` has not exited.
    pub fn is_running(&self, proc: &Proc) -> bool {
        matches!(self.exit_status(proc), Ok(None))
    }

    fn exit_status(&self, proc: &Proc) -> Result<Option<ExitStatus>> {
        let mut registry = lock(&self.shared);
        let Some(index) = registry.children.iter().position(|t| t.id == proc.id) else {
            bail!("{} (pid {}) is no longer tracked", proc.name, proc.pid);
        };
        let status = registry.children[index]
            .child
            .try_wait()
            .with_context(|| format!("waiting for {}", proc.name))?;
        if status.is_some() {
            registry.children.remove(index);
        }
        Ok(status)
    }

    /// Sends SIGTERM to `proc`'s group without waiting (the seed's deploy
    /// stops the old version this way); it stays registered until stopped.
    pub fn terminate(&self, proc: &Proc) {
        let registry = lock(&self.shared);
        if registry.children.iter().any(|t| t.id == proc.id) {
            signal_group(proc.pid, Signal::SIGTERM);
        }
    }

    /// Stops `proc`, its group and its descendants, and forgets it.
    pub fn stop(&self, proc: &Proc) {
        let mut registry = lock(&self.shared);
        if let Some(index) = registry.children.iter().position(|t| t.id == proc.id) {
            let mut tracked = registry.children.remove(index);
            stop_tracked(&mut tracked);
        }
    }

    /// Stops every child (newest first) and every orphan adopted meanwhile.
    pub fn stop_all(&self) {
        let mut registry = lock(&self.shared);
        stop_registered(&mut registry);
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        stop_everything(&self.shared);
    }
}

fn stop_everything(shared: &Mutex<Registry>) {
    let mut registry = lock(shared);
    registry.closed = true;
    stop_registered(&mut registry);
}

fn stop_registered(registry: &mut Registry) {
    while let Some(mut tracked) = registry.children.pop() {
        stop_tracked(&mut tracked);
    }
    let marker = format!("{MARKER_VARIABLE}={}", registry.marker);
    let orphans: Vec<Seen> = procfs::children(std::process::id() as i32)
        .into_iter()
        .filter(|child| procfs::environ_has(child.pid, &marker))
        .collect();
    stop_seen(&orphans);
}

fn stop_tracked(tracked: &mut Tracked) {
    let pid = tracked.child.id() as i32;
    // Listed first: once the parent is gone they are harder to tell apart.
    let descendants = procfs::descendants(pid);
    if !matches!(tracked.child.try_wait(), Ok(Some(_))) {
        signal_group(pid, Signal::SIGTERM);
        if !child_exits(&mut tracked.child, STOP_GRACE) {
            eprintln!(
                "bench: {} (pid {pid}) ignored SIGTERM for {STOP_GRACE:?}: SIGKILL",
                tracked.name
            );
            signal_group(pid, Signal::SIGKILL);
            let _ = tracked.child.wait();
        }
    }
    stop_seen(&descendants);
}

fn child_exits(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        thread::sleep(POLL);
    }
    false
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`], to processes seen earlier
/// that still run as themselves; reaps the ones re-parented to the bench.
fn stop_seen(seen: &[Seen]) {
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let running: Vec<&Seen> = seen.iter().filter(|s| s.is_running()).collect();
        if running.is_empty() {
            break;
        }
        for s in &running {
            signal_seen(s, signal);
        }
        let within = if signal == Signal::SIGTERM {
            STOP_GRACE
        } else {
            KILL_WAIT
        };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            reap(seen);
            if running.iter().all(|s| !s.is_running()) {
                break;
            }
            thread::sleep(POLL);
        }
    }
    reap(seen);
}

fn signal_seen(seen: &Seen, signal: Signal) {
    if seen.leads_group {
        signal_group(seen.pid, signal);
    } else {
        let _ = kill(Pid::from_raw(seen.pid), signal);
    }
}

/// Collects the exit status of those that are (now) the bench's children.
fn reap(seen: &[Seen]) {
    let me = std::process::id() as i32;
    for s in seen {
        if procfs::stat(s.pid).is_some_and(|st| st.ppid == me && st.start == s.start) {
            let _ = waitpid(Pid::from_raw(s.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

fn signal_group(leader: i32, signal: Signal) {
    // ESRCH (the group is gone) is what we want anyway.
    let _ = killpg(Pid::from_raw(leader), signal);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]).stdin(Stdio::null());
        command
    }

    fn gone(pid: i32) -> bool {
        procfs::stat(pid).is_none_or(|s| s.has_exited())
    }

    #[test]
    fn stop_ends_the_child_and_the_grandchild_in_a_group_of_its_own() {
        let processes = Processes::new().unwrap();
        // The grandchild starts its own group, like cutover's app slots.
        let spawned = processes
            .spawn("parent", sh("setsid sleep 300 & exec sleep 300"))
            .unwrap();
        let pid = spawned.proc.pid;
        let deadline = Instant::now() + Duration::from_secs(5);
        // The forked shell is a descendant a moment before `setsid` makes
        // it a group leader: wait for the leader, not just the process.
        let grandchild = loop {
            if let Some(g) = procfs::descendants(pid).into_iter().find(|g| g.leads_group) {
                break g;
            }
            assert!(Instant::now() < deadline, "no grandchild leading its group");
            thread::sleep(POLL);
        };
        processes.stop(&spawned.proc);
        assert!(gone(pid));
        assert!(gone(grandchild.pid));
        assert!(!processes.is_running(&spawned.proc));
    }

    #[test]
    fn dropping_the_registry_stops_what_it_started_and_the_orphans_it_adopted() {
        let processes = Processes::new().unwrap();
        // The middle process exits at once: its child is re-parented to us.
        let spawned = processes
            .spawn("orphan-maker", sh("setsid sleep 300 & sleep 0.2"))
            .unwrap();
        let orphan = procfs::descendants(spawned.proc.pid)
            .first()
            .copied()
            .or_else(|| {
                thread::sleep(Duration::from_millis(100));
                procfs::descendants(spawned.proc.pid).first().copied()
            })
            .expect("the orphan-to-be");
        let kept = processes.spawn("sleeper", sh("exec sleep 300")).unwrap();
        assert_eq!(
            processes
                .wait(&spawned.proc, Duration::from_secs(5))
                .unwrap()
                .map(|s| s.success()),
            Some(true)
        );
        assert!(orphan.is_running());
        drop(processes);
        assert!(!orphan.is_running());
        assert!(gone(kept.proc.pid));
    }

    #[test]
    fn wait_times_out_on_a_running_child_and_reports_an_exit() {
        let processes = Processes::new().unwrap();
        let slow = processes.spawn("slow", sh("exec sleep 300")).unwrap();
        assert!(processes
            .wait(&slow.proc, Duration::from_millis(50))
            .unwrap()
            .is_none());
        processes.terminate(&slow.proc);
        let status = processes.wait(&slow.proc, Duration::from_secs(5)).unwrap();
        assert!(status.is_some_and(|s| !s.success()));
        let quick = processes.spawn("quick", sh("exit 3")).unwrap();
        let status = processes.wait(&quick.proc, Duration::from_secs(5)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
    }
}
