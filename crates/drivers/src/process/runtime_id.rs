//! The process driver's runtime id: `pid=1234;start=5678;port=8081`.
//!
//! The start time (field 22 of `/proc/<pid>/stat`, in clock ticks since
//! boot) makes the id name one process for good: a later process that gets
//! the same pid has another start time, so it is never mistaken for the
//! release (and never signalled).

use std::fmt;
use std::str::FromStr;

/// Identifies one release process across cutover restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuntimeId {
    /// The release's pid, which is also its process group id.
    pub pid: i32,
    /// Start time of the process, in clock ticks since boot.
    pub start: u64,
    /// The port the release was given (0 if it is not known).
    pub port: u16,
}

impl RuntimeId {
    /// What identifies the process itself (the port is only informative).
    pub fn process(&self) -> (i32, u64) {
        (self.pid, self.start)
    }
}

impl fmt::Display for RuntimeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid={};start={};port={}",
            self.pid, self.start, self.port
        )
    }
}

impl FromStr for RuntimeId {
    type Err = crate::DriverError;

    /// Accepts exactly what [`Display`](fmt::Display) writes: the three
    /// fields in order, plain decimal digits, a positive pid.
    fn from_str(text: &str) -> Result<RuntimeId, Self::Err> {
        let bad = || crate::DriverError::BadRuntimeId(text.to_string());
        let mut fields = text.split(';');
        let mut field = |key: &str| {
            let (k, value) = fields.next()?.split_once('=')?;
            let digits_only =
                !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit());
            (k == key && digits_only).then_some(value)
        };
        let pid = field("pid").and_then(|v| v.parse::<i32>().ok());
        let start = field("start").and_then(|v| v.parse::<u64>().ok());
        let port = field("port").and_then(|v| v.parse::<u16>().ok());
        match (pid, start, port, fields.next()) {
            (Some(pid), Some(start), Some(port), None) if pid > 0 => {
                Ok(RuntimeId { pid, start, port })
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = RuntimeId {
            pid: 1234,
            start: 5678,
            port: 8081,
        };
        assert_eq!(id.to_string(), "pid=1234;start=5678;port=8081");
        assert_eq!(
            "pid=1234;start=5678;port=8081"
                .parse::<RuntimeId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn rejects_anything_else() {
        for text in [
            "",
            "1234",
            "pid=1234;start=5678",
            "pid=1234;start=5678;port=8081;",
            "pid=1234;start=5678;port=8081;extra=1",
            "start=5678;pid=1234;port=8081",
            "pid=0;start=5678;port=8081",
            "pid=-1;start=5678;port=8081",
            "pid=+1;start=5678;port=8081",
            "pid=1234;start=5678;port=70000",
            "pid=1234;start=;port=8081",
            "pid=1234;start=5678;port=8081 ",
            "pid=99999999999;start=5678;port=8081",
            "docker:abcdef",
        ] {
            assert!(text.parse::<RuntimeId>().is_err(), "accepted {text:?}");
        }
    }
}
