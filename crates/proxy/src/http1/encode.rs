//! The one encoder: request and status lines, header lines, the end of a
//! head, and chunked framing. Appends to a caller's buffer, so a head and
//! a small body go out in one write.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode, Uri};

/// The chunked body's last chunk with an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `GET /path HTTP/1.1\r\n`; an absolute-form target (`http://host/path`)
/// is written in origin form.
pub(crate) fn request_line(out: &mut Vec<u8>, method: &Method, uri: &Uri) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// `HTTP/1.1 200 OK\r\n`
pub(crate) fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `name: value\r\n`
pub(crate) fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `name: value\r\n` with the name in lower case (a name read in place
/// keeps the case its sender gave it).
pub(crate) fn lowercase_header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let at = out.len();
    header_line(out, name, value);
    out[at..at + name.len()].make_ascii_lowercase();
}

/// How a request's body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    None,
    /// A body of known size.
    Length(u64),
    /// A body of unknown size: chunked.
    Chunked,
}

/// The framing header and the empty line that end a request head. A
/// method that usually has a body but has none (and no `Content-Length`
/// of its own, `has_length`) says so.
pub(crate) fn end_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    framing: RequestFraming,
    has_length: bool,
) {
    match framing {
        RequestFraming::None
            if !has_length && matches!(*method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::None => {}
        RequestFraming::Length(n) => content_length_line(out, n),
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `content-length: n\r\n`
pub(crate) fn content_length_line(out: &mut Vec<u8>, n: u64) {
    header_line(out, b"content-length", itoa(n, &mut [0u8; 20]));
}

/// The size line of a chunk of `len` bytes.
pub(crate) fn chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// A whole chunk: size line, data, CRLF (nothing for empty data, which
/// would read as the last chunk).
pub(crate) fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    chunk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

thread_local! {
    /// `date: <IMF-fixdate>\r\n` for the current second.
    static DATE_LINE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Appends a `Date` header for now (formatted once per second per thread).
pub(crate) fn date_line(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_LINE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            cached.1.extend_from_slice(b"date: ");
            crate::access_log::http_date(&mut cached.1, now);
            cached.1.extend_from_slice(b"\r\n");
            cached.0 = secs;
        }
        out.extend_from_slice(&cached.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::body::{Decoded, Decoder};
    use crate::http1::head::BodyLength;
    use bytes::BytesMut;

    #[test]
    fn numbers_and_dates_are_formatted_for_heads() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1_048_576, &mut [0; 20]), b"1048576");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut out = Vec::new();
        date_line(&mut out);
        let line = String::from_utf8(out).expect("ascii");
        assert!(
            line.starts_with("date: ") && line.ends_with(" GMT\r\n"),
            "{line}"
        );
    }

    #[test]
    fn absolute_form_targets_are_written_in_origin_form() {
        let line = |uri: &'static str| {
            let mut out = Vec::new();
            request_line(&mut out, &Method::GET, &Uri::from_static(uri));
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(
            line("http://example.com:8080/a/b?c=d"),
            "GET /a/b?c=d HTTP/1.1\r\n"
        );
        assert_eq!(line("http://example.com"), "GET / HTTP/1.1\r\n");
        assert_eq!(line("/x"), "GET /x HTTP/1.1\r\n");
    }

    #[test]
    fn heads_are_encoded_line_by_line() {
        let mut out = Vec::new();
        request_line(&mut out, &Method::PUT, &"/a?b=c".parse().expect("uri"));
        header_line(&mut out, b"host", b"example.com");
        end_request_head(&mut out, &Method::PUT, RequestFraming::None, false);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "PUT /a?b=c HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\n\r\n"
        );
        out.clear();
        request_line(&mut out, &Method::POST, &Uri::from_static("http://x"));
        end_request_head(&mut out, &Method::POST, RequestFraming::Chunked, false);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        status_line(&mut out, StatusCode::NOT_FOUND);
        content_length_line(&mut out, 12);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n"
        );
    }

    #[test]
    fn encoded_chunks_decode_to_the_same_body() {
        let mut out = Vec::new();
        for part in [&b"hello"[..], b"", b" world", &[b'x'; 300]] {
            chunk(&mut out, part);
        }
        out.extend_from_slice(LAST_CHUNK);
        let mut decoder = Decoder::new(BodyLength::Chunked);
        let mut buf = BytesMut::from(&out[..]);
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buf).expect("valid") {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(&body[..11], b"hello world");
        assert_eq!(body.len(), 311);
        assert!(buf.is_empty());
    }
}
