//! The access log: one line per request, in nginx's `combined` format or as
//! JSON, written by its own thread.
//!
//! Requests never wait for it: each finished request hands its facts to a
//! bounded channel with `try_send`; when the writer falls behind (a slow
//! disk, a full pipe) lines are dropped and counted
//! (`cutover_proxy_access_log_dropped_total`). Formatting happens on the
//! writer thread, not on the request path.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};

use crate::metrics;
use crate::upstream::Upstream;

/// Lines that may wait for the writer; beyond, new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Line format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// nginx's `combined`: `$remote_addr - $remote_user [$time_local]
    /// "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`.
    Combined,
    /// One JSON object per line: time, client, request, status, bytes,
    /// duration, request id, app, slot, release.
    Json,
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Appended to; reopened by [`AccessLog::reopen`] (log rotation).
    File(PathBuf),
}

/// Why the access log could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open the access log {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the access log writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// A handle to the access log writer; cheap to clone. The writer thread
/// ends when the last handle is dropped, after writing what is queued.
#[derive(Debug, Clone)]
pub struct AccessLog {
    sender: SyncSender<Message>,
    format: AccessLogFormat,
}

#[derive(Debug)]
enum Message {
    Line(Box<Entry>),
    Reopen,
}

/// The facts of one request, gathered on the request path without
/// formatting anything.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) time: SystemTime,
    pub(crate) client_ip: HeaderValue,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) app: Option<Arc<str>>,
    pub(crate) upstream: Option<Arc<Upstream>>,
}

impl AccessLog {
    /// Opens the target (a file is created if missing, then appended to)
    /// and starts the writer thread.
    pub fn start(
        format: AccessLogFormat,
        target: AccessLogTarget,
    ) -> Result<AccessLog, AccessLogError> {
        let sink = Sink::open(&target)?;
        let (sender, receiver) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, sink, target, format))
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog { sender, format })
    }

    pub fn format(&self) -> AccessLogFormat {
        self.format
    }

    /// Reopens the log file (after it was rotated away); a no-op for stdout.
    pub fn reopen(&self) {
        if self.sender.try_send(Message::Reopen).is_err() {
            tracing::warn!("access log queue full; the log file is reopened with a delay");
            let sender = self.sender.clone();
            std::thread::spawn(move || sender.send(Message::Reopen));
        }
    }

    /// Queues a line; drops (and counts) it if the writer is behind.
    pub(crate) fn log(&self, entry: Box<Entry>) {
        let metrics = metrics::global();
        match self.sender.try_send(Message::Line(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

enum Sink {
    Stdout(io::Stdout),
    File(File),
}

impl Sink {
    fn open(target: &AccessLogTarget) -> Result<Sink, AccessLogError> {
        match target {
            AccessLogTarget::Stdout => Ok(Sink::Stdout(io::stdout())),
            AccessLogTarget::File(path) => open_append(path).map(Sink::File),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(buf),
            Sink::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(file) => file.flush(),
        }
    }
}

/// Created owner-only (0600): client addresses and paths are not for
/// every local user.
fn open_append(path: &Path) -> Result<File, AccessLogError> {
    std::os::unix::fs::OpenOptionsExt::mode(OpenOptions::new().create(true).append(true), 0o600)
        .open(path)
        .map_err(|source| AccessLogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// The writer thread: formats and writes lines in batches, flushing when
/// the queue runs empty.
fn write_lines(
    receiver: Receiver<Message>,
    sink: Sink,
    target: AccessLogTarget,
    format: AccessLogFormat,
) {
    let metrics = metrics::global();
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut line = String::with_capacity(512);
    let mut failing = false;
    while let Ok(mut message) = receiver.recv() {
        loop {
            match message {
                Message::Line(entry) => {
                    line.clear();
                    match format {
                        AccessLogFormat::Combined => combined(&mut line, &entry),
                        AccessLogFormat::Json => json(&mut line, &entry),
                    }
                    line.push('\n');
                    match out.write_all(line.as_bytes()) {
                        Ok(()) => {
                            failing = false;
                            metrics.access_log_lines.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
                            if !failing {
                                tracing::error!(error = %e, "writing the access log failed");
                                failing = true;
                            }
                        }
                    }
                }
                Message::Reopen => {
                    let _ = out.flush();
                    if let AccessLogTarget::File(path) = &target {
                        match open_append(path) {
                            Ok(file) => {
                                out = BufWriter::with_capacity(64 * 1024, Sink::File(file));
                                tracing::info!(path = %path.display(), "access log reopened");
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "reopening the access log failed; writing to the old file")
                            }
                        }
                    }
                }
            }
            match receiver.try_recv() {
                Ok(next) => message = next,
                Err(_) => break,
            }
        }
        if let Err(e) = out.flush() {
            if !failing {
                tracing::error!(error = %e, "writing the access log failed");
                failing = true;
            }
        }
    }
    let _ = out.flush();
}

/// `127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /a?b HTTP/1.1" 200 2326 "referer" "agent"`
/// (UTC; nginx escapes: `"`, `\` and bytes outside printable ASCII as `\xHH`).
fn combined(line: &mut String, e: &Entry) {
    escaped(line, e.client_ip.as_bytes());
    line.push_str(" - - [");
    clf_time(line, e.time);
    line.push_str("] \"");
    escaped(line, e.method.as_str().as_bytes());
    line.push(' ');
    request_target(line, e);
    line.push(' ');
    line.push_str(version(e.version));
    let _ = write!(line, "\" {} {} \"", e.status, e.bytes);
    header_or_dash(line, e.referer.as_ref());
    line.push_str("\" \"");
    header_or_dash(line, e.user_agent.as_ref());
    line.push('"');
}

fn request_target(line: &mut String, e: &Entry) {
    match e.uri.path_and_query() {
        Some(pq) => escaped(line, pq.as_str().as_bytes()),
        None => line.push('/'),
    }
}

fn header_or_dash(line: &mut String, value: Option<&HeaderValue>) {
    match value {
        Some(value) => escaped(line, value.as_bytes()),
        None => line.push('-'),
    }
}

fn escaped(line: &mut String, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'"' | b'\\' | 0..=0x1f | 0x7f..=0xff => {
                let _ = write!(line, "\\x{b:02X}");
            }
            _ => line.push(char::from(b)),
        }
    }
}

fn version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn json(line: &mut String, e: &Entry) {
    line.push_str("{\"time\":\"");
    rfc3339(line, e.time);
    line.push_str("\",\"remote_addr\":");
    json_str(line, e.client_ip.as_bytes());
    line.push_str(",\"method\":");
    json_str(line, e.method.as_str().as_bytes());
    line.push_str(",\"uri\":");
    let target = e.uri.path_and_query().map_or("/", |pq| pq.as_str());
    json_str(line, target.as_bytes());
    line.push_str(",\"protocol\":");
    json_str(line, version(e.version).as_bytes());
    line.push_str(",\"host\":");
    json_opt(line, e.host.as_ref());
    let _ = write!(
        line,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"request_id\":",
        e.status,
        e.bytes,
        e.duration.as_secs_f64() * 1000.0
    );
    json_str(line, e.request_id.as_bytes());
    line.push_str(",\"app\":");
    let app = e
        .upstream
        .as_ref()
        .map(|u| u.app().as_bytes())
        .or(e.app.as_deref().map(str::as_bytes));
    match app {
        Some(app) => json_str(line, app),
        None => line.push_str("null"),
    }
    match &e.upstream {
        Some(upstream) => {
            line.push_str(",\"slot\":");
            json_str(line, upstream.slot().as_bytes());
            line.push_str(",\"release\":");
            json_str(line, upstream.release().as_bytes());
        }
        None => line.push_str(",\"slot\":null,\"release\":null"),
    }
    line.push_str(",\"referer\":");
    json_opt(line, e.referer.as_ref());
    line.push_str(",\"user_agent\":");
    json_opt(line, e.user_agent.as_ref());
    line.push('}');
}

fn json_opt(line: &mut String, value: Option<&HeaderValue>) {
    match value {
        Some(value) => json_str(line, value.as_bytes()),
        None => line.push_str("null"),
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD.
fn json_str(line: &mut String, bytes: &[u8]) {
    line.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// Civil date and time (UTC) of a time: (year, month, day, h, m, s, ms).
fn civil(time: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis(),
    )
}

/// `10/Oct/2000:13:55:36 +0000`
fn clf_time(line: &mut String, time: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, h, m, s, _) = civil(time);
    let month = MONTHS[(month as usize).clamp(1, 12) - 1];
    let _ = write!(line, "{day:02}/{month}/{year}:{h:02}:{m:02}:{s:02} +0000");
}

/// `Tue, 10 Oct 2000 13:55:36 GMT` (IMF-fixdate, for `Date` headers).
pub(crate) fn http_date(out: &mut Vec<u8>, time: SystemTime) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (year, month, day, h, m, s, _) = civil(time);
    let month = MONTHS[(month as usize).clamp(1, 12) - 1];
    let weekday = DAYS[(days % 7) as usize];
    let _ = std::io::Write::write_fmt(
        out,
        format_args!("{weekday}, {day:02} {month} {year} {h:02}:{m:02}:{s:02} GMT"),
    );
}

/// `2000-10-10T13:55:36.123Z`
fn rfc3339(line: &mut String, time: SystemTime) {
    let (year, month, day, h, m, s, ms) = civil(time);
    let _ = write!(
        line,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(971_186_136_123),
            client_ip: HeaderValue::from_static("192.0.2.7"),
            method: Method::GET,
            uri: "/a/b?c=d%20e".parse().expect("uri"),
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("example.com")),
            referer: None,
            user_agent: Some(
                HeaderValue::from_bytes("agent \"quoted\" \\ é".as_bytes()).expect("value"),
            ),
            request_id: HeaderValue::from_static("abc"),
            status: 200,
            bytes: 2326,
            duration: Duration::from_micros(1500),
            app: Some(Arc::from("web")),
            upstream: None,
        }
    }

    #[test]
    fn combined_line_matches_nginx() {
        let mut line = String::new();
        combined(&mut line, &entry());
        assert_eq!(
            line,
            "192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /a/b?c=d%20e HTTP/1.1\" 200 2326 \"-\" \"agent \\x22quoted\\x22 \\x5C \\xC3\\xA9\""
        );
    }

    #[test]
    fn json_line_escapes_and_names_every_field() {
        let mut line = String::new();
        json(&mut line, &entry());
        assert_eq!(
            line,
            "{\"time\":\"2000-10-10T13:55:36.123Z\",\"remote_addr\":\"192.0.2.7\",\"method\":\"GET\",\
             \"uri\":\"/a/b?c=d%20e\",\"protocol\":\"HTTP/1.1\",\"host\":\"example.com\",\"status\":200,\
             \"bytes\":2326,\"duration_ms\":1.500,\"request_id\":\"abc\",\"app\":\"web\",\"slot\":null,\
             \"release\":null,\"referer\":null,\"user_agent\":\"agent \\\"quoted\\\" \\\\ é\"}"
        );
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        let mut out = Vec::new();
        http_date(&mut out, UNIX_EPOCH + Duration::from_secs(784_111_777));
        assert_eq!(out, b"Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn civil_dates_cover_leap_years_and_the_epoch() {
        let at = |secs: u64| civil(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), (1970, 1, 1, 0, 0, 0, 0));
        assert_eq!(at(951_782_400), (2000, 2, 29, 0, 0, 0, 0));
        assert_eq!(at(1_709_251_199), (2024, 2, 29, 23, 59, 59, 0));
    }
}
