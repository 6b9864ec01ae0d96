//! Processes by PID: signals (never to PID 0 or 1, never by name), state
//! and children from /proc, resident memory, stopping a child gracefully
//! and sending a child's output to a log file.

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A PID that names one process: not 0 ("my group") nor 1 (init).
fn target(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|pid| *pid > 1)
        .map(Pid::from_raw)
}

/// Sends `signal` to one process; a process that is gone is no error.
pub fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = target(pid) {
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

/// SIGKILLs the process group that `leader` leads.
pub fn kill_group(leader: u32) {
    if let Some(pid) = target(leader) {
        let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
    }
}

/// A process's line in /proc/<pid>/stat, the fields after its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// `R`, `S`, `Z`, … (`Z` and `X` have exited).
    pub state: char,
    pub parent: u32,
    /// Start time in clock ticks after boot: tells a reused PID apart.
    pub start_time: u64,
}

pub fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        parent: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Exists and has not exited (a zombie has exited: it only waits to be reaped).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// PIDs of every process in /proc.
fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Live children of `parent`, zombies excluded, sorted.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut found: Vec<u32> = all_pids()
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.parent == parent && s.state != 'Z'))
        .collect();
    found.sort_unstable();
    found
}

/// The first live process whose command line holds every one of `args`.
pub fn find_by_args(args: &[&str]) -> Option<u32> {
    all_pids().into_iter().find(|pid| {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let have: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.iter().all(|a| have.iter().any(|h| h == a))
    })
}

/// Resident set size of a process, in bytes (0 if it is gone).
pub fn rss_of(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples a process's resident set every 5 ms in a thread until stopped
/// (or dropped); `peak()` is the largest seen.
pub struct RssSampler {
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_of(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_of(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        RssSampler {
            pid,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak so far, a sample taken now included.
    pub fn peak(&self) -> u64 {
        let now = rss_of(self.pid);
        self.peak.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Stops sampling; the peak.
    pub fn stop(mut self) -> u64 {
        self.join();
        self.peak()
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.join();
    }
}

/// Waits up to `within` for `child` to exit; its status, or None.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaped.
pub fn stop_child(child: &mut Child, grace: Duration) {
    signal(child.id(), Signal::SIGTERM);
    if wait_exit(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `ready` every `every` until it holds. Fails if `child` exits
/// first, or stops it and fails once `within` passed; `diagnostics()` (its
/// log, say) goes into the message.
pub fn wait_ready(
    child: &mut Child,
    what: &str,
    (within, every): (Duration, Duration),
    mut ready: impl FnMut() -> bool,
    diagnostics: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !ready() {
        if let Some(status) = child.try_wait().ok().flatten() {
            panic!("{what} exited at start ({status}):\n{}", diagnostics());
        }
        if Instant::now() >= deadline {
            stop_child(child, Duration::from_secs(5));
            panic!(
                "{what} did not come up within {within:?}:\n{}",
                diagnostics()
            );
        }
        std::thread::sleep(every);
    }
}

/// Starts `command` with stdin closed and stdout and stderr appended to
/// the file at `log`.
pub fn spawn_logged(command: &mut Command, log: &Path) -> std::io::Result<Child> {
    let (stdout, stderr) = log_to(log);
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
}

/// Stdout and stderr for a child, both appended to the file at `path`.
fn log_to(path: &Path) -> (Stdio, Stdio) {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the log {}: {e}", path.display()));
    (log.try_clone().unwrap().into(), log.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_child_is_alive_listed_and_found_until_stopped() {
        // Unique per test process: other checkouts run this test at the same time.
        let duration = format!("60.{}", std::process::id());
        let mut child = Command::new("sleep")
            .arg(&duration)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(alive(pid));
        assert!(children_of(std::process::id()).contains(&pid));
        // Between fork and exec the child's command line is still ours.
        let deadline = Instant::now() + Duration::from_secs(5);
        while find_by_args(&["sleep", &duration]).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(find_by_args(&["sleep", &duration]), Some(pid));
        assert!(rss_of(pid) > 0);
        stop_child(&mut child, Duration::from_secs(5));
        assert!(!alive(pid));
        assert!(!children_of(std::process::id()).contains(&pid));
    }

    #[test]
    fn signals_never_reach_pid_0_or_1() {
        assert!(target(0).is_none());
        assert!(target(1).is_none());
        assert_eq!(target(2), Some(Pid::from_raw(2)));
    }
}
