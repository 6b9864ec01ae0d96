//! CPU pinning. The load generator and the servers must not fight over the
//! same core, or the numbers measure the scheduler. With N cores and W
//! workers (W < N): servers (proxy + backend, with all their children) on
//! cores 0..W-1, wrk on the last core. The proxy and the backend share the
//! server cores in every proxied target, so the comparison stays fair; the
//! `direct` row has the backend alone there. When W >= N nothing is pinned
//! and wrk competes with the servers: read those numbers as relative only.

use std::ffi::OsStr;
use std::process::Command;

/// A taskset cpu list, or no pinning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pin(Option<String>);

impl Pin {
    /// `program` run on these cpus: `taskset -c CPUS program`. taskset execs
    /// the program in place, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match &self.0 {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpus).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// The cpu list, or `fallback` when nothing is pinned.
    pub fn or<'a>(&'a self, fallback: &'a str) -> &'a str {
        self.0.as_deref().unwrap_or(fallback)
    }
}

/// Where the servers and the load generator run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    pub servers: Pin,
    pub load: Pin,
}

/// The pinning for `workers` workers on `cpus` cores; an override (from
/// SERVER_CPUS / WRK_CPUS) wins, an empty one meaning "not pinned".
pub fn pins(
    workers: u32,
    cpus: u32,
    taskset_found: bool,
    server_override: Option<&str>,
    load_override: Option<&str>,
) -> Pins {
    let (servers, load) = if taskset_found && workers < cpus {
        let servers = if workers > 1 {
            format!("0-{}", workers - 1)
        } else {
            "0".to_string()
        };
        (Some(servers), Some((cpus - 1).to_string()))
    } else {
        (None, None)
    };
    let choose = |default: Option<String>, given: Option<&str>| match given {
        Some("") => Pin(None),
        Some(cpus) => Pin(Some(cpus.to_string())),
        None => Pin(default),
    };
    Pins {
        servers: choose(servers, server_override),
        load: choose(load, load_override),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(p: &Pins) -> (&str, &str) {
        (p.servers.or("none"), p.load.or("none"))
    }

    #[test]
    fn servers_get_the_first_cores_and_the_load_the_last() {
        assert_eq!(lists(&pins(1, 2, true, None, None)), ("0", "1"));
        assert_eq!(lists(&pins(3, 8, true, None, None)), ("0-2", "7"));
    }

    #[test]
    fn nothing_is_pinned_without_a_spare_core_or_taskset() {
        assert_eq!(lists(&pins(2, 2, true, None, None)), ("none", "none"));
        assert_eq!(lists(&pins(1, 2, false, None, None)), ("none", "none"));
    }

    #[test]
    fn overrides_win_and_empty_means_unpinned() {
        let p = pins(1, 2, true, Some(""), Some("0-1"));
        assert_eq!(lists(&p), ("none", "0-1"));
        assert_eq!(lists(&pins(2, 2, true, Some("1"), None)), ("1", "none"));
    }

    #[test]
    fn a_pinned_command_goes_through_taskset() {
        let pinned = Pin(Some("0".into())).command("wrk");
        assert_eq!(pinned.get_program(), "taskset");
        let args: Vec<_> = pinned.get_args().collect();
        assert_eq!(args, ["-c", "0", "wrk"]);
        assert_eq!(Pin(None).command("wrk").get_program(), "wrk");
    }
}
