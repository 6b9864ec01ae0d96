//! What `/proc` says about processes: parent, group, state, CPU time,
//! start time, resident memory. Linux only, like the rest of the bench.

/// The fields of `/proc/<pid>/stat` the bench uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// User plus system CPU time of all threads, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time in clock ticks since boot: with the pid, a process's identity.
    pub start: u64,
}

impl Stat {
    /// Zombies and dead processes no longer run (nor use memory or CPU).
    pub fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `pid (comm) state ppid pgrp … utime stime … starttime …`; the
/// command name may hold spaces and parentheses, so fields start after the
/// last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        cpu_ticks: number(11)? + number(12)?,
        start: number(19)?,
    })
}

/// A process as it was when seen: the start time tells a reused pid apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub pid: i32,
    pub start: u64,
    /// It leads its own process group (so the group is its to stop).
    pub leads_group: bool,
}

impl Seen {
    /// Still the same process, and not exited.
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && !s.has_exited())
    }
}

fn all_stats() -> Vec<(i32, Stat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The living children of `pid`.
pub fn children(pid: i32) -> Vec<Seen> {
    descendants_in(&all_stats(), pid, false)
}

/// Every living descendant of `pid`, parents before their children.
pub fn descendants(pid: i32) -> Vec<Seen> {
    descendants_in(&all_stats(), pid, true)
}

fn descendants_in(stats: &[(i32, Stat)], root: i32, deep: bool) -> Vec<Seen> {
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for (pid, s) in stats {
            if s.ppid == parent && !s.has_exited() {
                found.push(Seen {
                    pid: *pid,
                    start: s.start,
                    leads_group: s.pgrp == *pid,
                });
                if deep {
                    parents.push(*pid);
                }
            }
        }
    }
    found
}

/// Summed user + system CPU ticks of `pids` (gone ones count 0).
pub fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| stat(*pid))
        .map(|s| s.cpu_ticks)
        .sum()
}

/// Summed resident memory of `pids`, in KiB (gone ones count 0).
pub fn rss_kib(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| parse_vm_rss(&status))
        .sum()
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// True if `pid`'s environment holds the `NAME=value` entry exactly.
pub fn environ_has(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|bytes| bytes.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as u64,
        _ => 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let text = "4242 (my (odd) app) S 17 4242 17 0 -1 4194560 100 0 0 0 \
                    250 30 0 0 20 0 3 0 987654 123456 789 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 17,
                pgrp: 4242,
                cpu_ticks: 280,
                start: 987654
            }
        );
        assert!(!s.has_exited());
        assert!(parse_stat("12 (x) Z 1 12").is_none());
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn descendants_follow_parents_and_skip_zombies() {
        let st = |ppid, pgrp, state| Stat {
            state,
            ppid,
            pgrp,
            cpu_ticks: 0,
            start: 1,
        };
        let stats = [
            (10, st(1, 10, 'S')),
            (11, st(10, 10, 'S')),
            (12, st(11, 12, 'R')),
            (13, st(10, 10, 'Z')),
            (14, st(1, 14, 'S')),
        ];
        let pids = |v: Vec<Seen>| v.into_iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(pids(descendants_in(&stats, 10, true)), [11, 12]);
        assert_eq!(pids(descendants_in(&stats, 10, false)), [11]);
        let leaders: Vec<bool> = descendants_in(&stats, 10, true)
            .iter()
            .map(|s| s.leads_group)
            .collect();
        assert_eq!(leaders, [false, true]);
    }

    #[test]
    fn this_process_is_seen_running_with_cpu_time() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        let seen = Seen {
            pid: me,
            start: s.start,
            leads_group: false,
        };
        assert!(seen.is_running());
        assert!(!Seen {
            start: s.start + 1,
            ..seen
        }
        .is_running());
        assert!(rss_kib(&[me]) > 0);
        let path = std::env::var("PATH").unwrap();
        assert!(environ_has(me, &format!("PATH={path}")));
        assert!(!environ_has(me, "PATH="));
    }
}
