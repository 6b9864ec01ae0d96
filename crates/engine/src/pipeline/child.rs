//! What every command of the pipeline (git, build steps) starts from.

/// Kills a child's whole process group when dropped (a timeout, an abort,
/// or leftovers such as daemons a build started).
pub(crate) struct GroupGuard(Option<i32>);

impl GroupGuard {
    pub(crate) fn new(pid: Option<u32>) -> GroupGuard {
        GroupGuard(pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The environment every command of the pipeline starts from: enough to
/// find programs and a home directory, nothing of cutover's own.
pub(crate) fn base_env() -> Vec<(String, String)> {
    let mut env = vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string()),
    )];
    for name in ["HOME", "USER", "LOGNAME", "LANG", "TMPDIR"] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.to_string(), value));
        }
    }
    env
}
