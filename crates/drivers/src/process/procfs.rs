//! What Linux's `/proc` tells about processes: state, parent, process
//! group, start time and the environment a process was started with.
//!
//! Every reader returns `None` (or skips the entry) when a process is gone
//! or its files cannot be read: processes come and go while we look.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// The fields of `/proc/<pid>/stat` the driver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

impl Stat {
    /// False for zombies: they have exited and only wait to be reaped
    /// (which may never happen if pid 1 does not reap).
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `pid (comm) state ppid pgrp ... starttime ...`. The command name
/// may contain spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// True while the process `pid` started at `start` exists and has not exited.
pub(crate) fn is_running(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start == start && s.is_running())
}

/// Every pid currently listed in `/proc`.
pub(crate) fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .collect()
}

/// Running (non-zombie) processes whose process group is `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<(i32, Stat)> {
    pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, s)| s.pgid == pgid && s.is_running())
        .collect()
}

/// The environment `pid` was started with, for the variables in `names`.
/// `None` when it cannot be read (gone, or another user's process).
pub(crate) fn environ(pid: i32, names: &[&str]) -> Option<HashMap<String, OsString>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(parse_environ(&bytes, names))
}

pub(crate) fn parse_environ(bytes: &[u8], names: &[&str]) -> HashMap<String, OsString> {
    let mut found = HashMap::new();
    for entry in bytes.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        if let Some(wanted) = names.iter().find(|n| n.as_bytes() == name) {
            found.insert((*wanted).to_string(), OsString::from_vec(value.to_vec()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_command_name() {
        let line = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                ppid: 1,
                pgid: 4242,
                start: 987654
            }
        );
        assert!(parse_stat("4242 (x) S 1 2").is_none());
    }

    #[test]
    fn reads_our_own_stat() {
        let me = stat(std::process::id() as i32).unwrap();
        assert!(me.is_running());
        assert!(is_running(std::process::id() as i32, me.start));
        assert!(!is_running(std::process::id() as i32, me.start + 1));
    }

    #[test]
    fn parses_environ() {
        let env = parse_environ(
            b"A=1\0CUTOVER_APP=web\0B\0CUTOVER_SLOT=a=b\0",
            &["CUTOVER_APP", "CUTOVER_SLOT", "C"],
        );
        assert_eq!(env.get("CUTOVER_APP").unwrap(), "web");
        assert_eq!(env.get("CUTOVER_SLOT").unwrap(), "a=b");
        assert!(!env.contains_key("C"));
    }
}
