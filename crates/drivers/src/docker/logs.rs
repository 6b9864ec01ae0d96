//! Container output streamed into the release's log file.
//!
//! The stream asks Docker for timestamped lines and writes them without
//! the timestamp, so the file reads like a process release's log. The
//! timestamp of the last line written is kept in a cursor file (written at
//! most every [`CURSOR_EVERY`] while lines flow, and as soon as they
//! pause); after a restart of cutover the stream is attached again from the
//! cursor, so nothing is written twice (beyond the lines of the last
//! [`CURSOR_EVERY`] before a crash) and nothing Docker kept while cutover
//! was down is lost.

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How stale the cursor may get while output flows.
const CURSOR_EVERY: Duration = Duration::from_millis(50);

/// Opens `path` for appending, creating its directory.
pub(crate) fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Container output may hold anything the app prints: the owner's alone.
    std::os::unix::fs::OpenOptionsExt::mode(OpenOptions::new().create(true).append(true), 0o600)
        .open(path)
}

/// Where following a container's output resumes: the time saved in
/// `cursor` (lines up to it were written already), and options that
/// follow from that second on (everything when there is none), with
/// timestamps so those lines can be skipped.
pub(crate) fn follow_from(cursor: &Path) -> (Option<SystemTime>, LogsOptions) {
    let cutoff = std::fs::read_to_string(cursor)
        .ok()
        .and_then(|text| parse_rfc3339(text.trim()));
    let since = cutoff
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        timestamps: true,
        since,
        ..LogsOptions::default()
    };
    (cutoff, options)
}

/// Streams the container's output into `path` until the container stops
/// (or is removed), keeping its position in `cursor`. Lines at or before
/// the position already in `cursor` are skipped.
pub(crate) fn spawn(docker: Docker, id: String, path: PathBuf, cursor: PathBuf) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut file = match open(&path) {
            Ok(file) => file,
            Err(e) => {
                warn!(container = %short(&id), "cannot open the release log {}: {e}; the container's output is not recorded", path.display());
                return;
            }
        };
        let (cutoff, options) = follow_from(&cursor);
        let mut stream = docker.logs(&id, Some(options));
        let mut position = Position::new(cursor);
        loop {
            let item = if position.pending() {
                tokio::select! {
                    item = stream.next() => item,
                    () = tokio::time::sleep(CURSOR_EVERY) => {
                        position.save();
                        continue;
                    }
                }
            } else {
                stream.next().await
            };
            let bytes = match item {
                Some(Ok(
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message },
                )) => message,
                Some(Ok(LogOutput::StdIn { .. })) => continue,
                Some(Err(e)) => {
                    debug!(container = %short(&id), "the log stream ended: {e}");
                    break;
                }
                None => break,
            };
            let (stamp, line) = split_timestamp(&bytes);
            if let (Some(cutoff), Some((time, _))) = (cutoff, stamp) {
                if time <= cutoff {
                    continue;
                }
            }
            if let Err(e) = file.write_all(line) {
                warn!(container = %short(&id), "cannot write to the release log {}: {e}", path.display());
                return;
            }
            if let Some((_, text)) = stamp {
                position.advance(text);
            }
        }
        position.save();
    })
}

/// Where the stream is: the timestamp of the last line written.
struct Position {
    path: PathBuf,
    last: Option<String>,
    saved: Option<Instant>,
    dirty: bool,
}

impl Position {
    fn new(path: PathBuf) -> Position {
        Position {
            path,
            last: None,
            saved: None,
            dirty: false,
        }
    }

    fn pending(&self) -> bool {
        self.dirty
    }

    fn advance(&mut self, stamp: &str) {
        self.last = Some(stamp.to_string());
        self.dirty = true;
        if self.saved.is_none_or(|at| at.elapsed() >= CURSOR_EVERY) {
            self.save();
        }
    }

    fn save(&mut self) {
        let Some(last) = &self.last else { return };
        if !self.dirty {
            return;
        }
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&self.path, last));
        if let Err(e) = written {
            debug!("cannot save the log position {}: {e}", self.path.display());
        }
        self.saved = Some(Instant::now());
        self.dirty = false;
    }
}

/// Splits Docker's `2024-05-01T12:00:00.123456789Z ` prefix off a line.
pub(crate) fn split_timestamp(bytes: &[u8]) -> (Option<(SystemTime, &str)>, &[u8]) {
    let Some(space) = bytes.iter().take(40).position(|b| *b == b' ') else {
        return (None, bytes);
    };
    let Ok(text) = std::str::from_utf8(&bytes[..space]) else {
        return (None, bytes);
    };
    match parse_rfc3339(text) {
        Some(stamp) => (Some((stamp, text)), &bytes[space + 1..]),
        None => (None, bytes),
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC, as Docker writes it).
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, fraction),
        None => (time, ""),
    };
    let mut clock_parts = clock.splitn(3, ':');
    let hour: u64 = clock_parts.next()?.parse().ok()?;
    let minute: u64 = clock_parts.next()?.parse().ok()?;
    let second: u64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        let value: u32 = digits.parse().ok()?;
        value * 10u32.pow(9 - digits.len() as u32)
    };
    let days = days_from_civil(year, month, day);
    let seconds = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The first 12 characters of a container id, as Docker shows them.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_the_nanosecond() {
        let stamp = parse_rfc3339("2024-05-01T12:00:01.5Z").unwrap_or(UNIX_EPOCH);
        assert_eq!(
            stamp.duration_since(UNIX_EPOCH).ok(),
            Some(Duration::new(1_714_564_801, 500_000_000))
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn lines_lose_their_timestamp() {
        let (stamp, line) = split_timestamp(b"2024-05-01T12:00:01.123456789Z hello world\n");
        assert_eq!(
            stamp.map(|(_, text)| text),
            Some("2024-05-01T12:00:01.123456789Z")
        );
        assert_eq!(line, b"hello world\n");
        let (stamp, line) = split_timestamp(b"no stamp here\n");
        assert!(stamp.is_none());
        assert_eq!(line, b"no stamp here\n");
    }
}
