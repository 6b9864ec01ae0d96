//! The outside tools the bench drives: wrk, nginx, taskset.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// `name` on PATH or in one of `extra` directories.
pub fn find(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// wrk and nginx, installed from Debian if missing and the bench runs as
/// root (it never uses sudo: otherwise it says what to install).
pub fn ensure_wrk_and_nginx() -> Result<()> {
    let missing = || find("wrk", &[]).is_none() || crate::nginx::binary().is_none();
    if !missing() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("wrk and nginx are needed: apt-get install wrk nginx (as root)");
    }
    eprintln!("bench: installing wrk and nginx from Debian");
    let install = || apt_get(&["install", "-y", "wrk", "nginx"]);
    if !install()? {
        apt_get(&["update"])?;
        install()?;
    }
    if missing() {
        bail!("wrk/nginx still missing");
    }
    Ok(())
}

fn apt_get(args: &[&str]) -> Result<bool> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running apt-get")?;
    Ok(status.success())
}

/// The first line of `wrk --version` / `nginx -v`, for the log.
pub fn versions() -> String {
    let first_line = |program: &Path, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let wrk = find("wrk", &[]).map(|p| first_line(&p, "--version"));
    let nginx = crate::nginx::binary().map(|p| first_line(&p, "-v"));
    let wrk = wrk.unwrap_or_default();
    let wrk = wrk.split_whitespace().nth(1).unwrap_or("?");
    let nginx = nginx.unwrap_or_default();
    let nginx = nginx.rsplit(": ").next().unwrap_or("?");
    format!("wrk {wrk}, {nginx}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_on_path_or_in_extra_directories() {
        assert!(find("sh", &[]).is_some());
        assert!(find("no-such-tool-anywhere", &["/usr/sbin"]).is_none());
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("my-tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let extra = [dir.path().to_str().unwrap()];
        assert!(find("my-tool", &extra).is_none(), "not executable yet");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find("my-tool", &extra), Some(tool));
    }
}
