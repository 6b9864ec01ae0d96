//! `GET /v1/apps/{app}/logs`: the last lines of a release's log, then
//! (with `follow=true`) what is appended to it, until the client goes away
//! or the daemon stops.
//!
//! Nothing signals that a log file grew, so a follow polls its size at a
//! short interval. A file that shrank (truncated) or was replaced (another
//! inode at the path) is read again from its start.

use crate::error::HttpError;
use crate::shutdown::Shutdown;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How often a follow looks for new output.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) struct LogRequest {
    pub tail: usize,
    pub follow: bool,
}

pub(crate) async fn stream(
    path: PathBuf,
    request: LogRequest,
    shutdown: Shutdown,
) -> Result<Response, HttpError> {
    let opened = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || open_at_tail(&path, request.tail))
            .await
            .map_err(|_| {
                HttpError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "the daemon is shutting down",
                )
            })?
    };
    let (file, offset) = opened.map_err(|error| {
        if error.kind() == io::ErrorKind::NotFound {
            HttpError::not_found(format!(
                "the log file {} does not exist (yet)",
                path.display()
            ))
        } else {
            HttpError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the log file {}: {error}", path.display()),
            )
        }
    })?;
    let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::spawn(pump(
        Source { path, file, offset },
        request.follow,
        sender,
        shutdown,
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(receiver)),
    )
        .into_response())
}

struct Source {
    path: PathBuf,
    file: File,
    offset: u64,
}

/// Sends what the file holds past `offset`; with `follow`, keeps going.
async fn pump(
    mut source: Source,
    follow: bool,
    sender: mpsc::Sender<io::Result<Bytes>>,
    shutdown: Shutdown,
) {
    let shutdown = shutdown.requested();
    tokio::pin!(shutdown);
    loop {
        // Send everything available now.
        loop {
            let (back, chunk) = match tokio::task::spawn_blocking(move || {
                let chunk = read_more(&mut source);
                (source, chunk)
            })
            .await
            {
                Ok(result) => result,
                Err(_) => return,
            };
            source = back;
            match chunk {
                Ok(Some(bytes)) => {
                    if sender.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(path = %source.path.display(), %error, "reading a release log failed");
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        tokio::select! {
            _ = sender.closed() => return,
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// The next chunk past the offset, `None` when there is nothing new.
fn read_more(source: &mut Source) -> io::Result<Option<Bytes>> {
    let mut len = source.file.metadata()?.len();
    // Replaced by another file (a new release's log), or truncated: start over.
    let replaced = match std::fs::metadata(&source.path) {
        Ok(at_path) => {
            let ours = source.file.metadata()?;
            at_path.ino() != ours.ino() || at_path.dev() != ours.dev()
        }
        Err(_) => false,
    };
    if replaced && len <= source.offset {
        if let Ok(file) = File::open(&source.path) {
            source.file = file;
            source.offset = 0;
            len = source.file.metadata()?.len();
        }
    } else if len < source.offset {
        source.offset = 0;
    }
    if len <= source.offset {
        return Ok(None);
    }
    let want = usize::try_from(len - source.offset)
        .unwrap_or(CHUNK)
        .min(CHUNK);
    let mut buffer = vec![0; want];
    source.file.seek(SeekFrom::Start(source.offset))?;
    let read = source.file.read(&mut buffer)?;
    if read == 0 {
        return Ok(None);
    }
    buffer.truncate(read);
    source.offset += read as u64;
    Ok(Some(Bytes::from(buffer)))
}

fn open_at_tail(path: &Path, lines: usize) -> io::Result<(File, u64)> {
    let mut file = File::open(path)?;
    let offset = tail_start(&mut file, lines)?;
    Ok((file, offset))
}

/// The offset where the last `lines` lines of the file begin. A final line
/// break does not start another (empty) line.
pub(crate) fn tail_start<F: Read + Seek>(file: &mut F, lines: usize) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(len);
    }
    let mut newlines = 0;
    let mut end = len;
    let mut buffer = vec![0; CHUNK];
    while end > 0 {
        let start = end.saturating_sub(CHUNK as u64);
        let chunk = &mut buffer[..usize::try_from(end - start).unwrap_or(CHUNK)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            let position = start + i as u64;
            if *byte == b'\n' && position + 1 != len {
                newlines += 1;
                if newlines == lines {
                    return Ok(position + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Cursor;

    fn tail(text: &str, lines: usize) -> String {
        let mut cursor = Cursor::new(text.as_bytes().to_vec());
        let start = tail_start(&mut cursor, lines).unwrap() as usize;
        text[start..].to_string()
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 10), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 0), "");
        assert_eq!(tail("", 5), "");
        assert_eq!(tail("\n\n", 1), "\n");
    }

    #[test]
    fn tail_spans_chunks() {
        let line = "x".repeat(1000) + "\n";
        let text = line.repeat(200);
        assert_eq!(tail(&text, 150), line.repeat(150));
    }

    #[tokio::test]
    async fn follow_picks_up_appended_bytes_and_truncation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let (file, offset) = open_at_tail(&path, 1).unwrap();
        let (sender, mut receiver) = mpsc::channel(4);
        let task = tokio::spawn(pump(
            Source {
                path: path.clone(),
                file,
                offset,
            },
            true,
            sender,
            Shutdown::never(),
        ));
        assert_eq!(receiver.recv().await.unwrap().unwrap(), "two\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        assert_eq!(receiver.recv().await.unwrap().unwrap(), "three\n");
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(receiver.recv().await.unwrap().unwrap(), "new\n");
        drop(receiver);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}
