//! The header work of cutover's HTTP/1.1 path, with `httparse`: parse a
//! request head, write the head sent upstream (hop-by-hop headers dropped,
//! `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`, `X-Request-Id`),
//! parse the response head and write the one returned to the client (with
//! the same `X-Request-Id`). Content-Length framing only.

use std::io::Write;

/// The largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// A request head that can be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the head in the input (the body starts after them).
    pub head_len: usize,
    pub body_len: u64,
    pub keep_alive: bool,
    /// HEAD: the response has no body whatever its Content-Length says.
    pub head_only: bool,
}

/// A response head that can be returned.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub head_len: usize,
    pub body_len: u64,
}

/// Why a request is refused (its status), or a response is a 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u16);

/// Request headers never forwarded: hop-by-hop ones, and the ones this hop
/// sets itself (the peer is not a trusted proxy).
const DROPPED_REQUEST: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
    "content-length",
];

const DROPPED_RESPONSE: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "x-request-id",
    "content-length",
];

/// Parses the request head at the start of `input`; on success writes the
/// head to send upstream into `out`. `Ok(None)`: the head is incomplete.
pub fn request(
    input: &[u8],
    client_ip: &str,
    request_id: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<Request>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => return Err(Refused(431)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refused(431)),
        Err(_) => return Err(Refused(400)),
    };
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Refused(400));
    };
    let framing = Framing::of(parsed.headers)?;
    if framing.chunked || framing.upgrade || (method == "CONNECT") {
        return Err(Refused(501));
    }
    let keep_alive = match version {
        1 => !framing.close,
        _ => framing.keep_alive,
    };
    let body_len = framing.content_length.unwrap_or(0);
    let _ = write!(out, "{method} {path} HTTP/1.1\r\n");
    copy_headers(out, parsed.headers, &DROPPED_REQUEST);
    forwarded(out, client_ip, request_id);
    if framing.content_length.is_some() {
        let _ = write!(out, "content-length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Request {
        head_len,
        body_len,
        keep_alive,
        head_only: method == "HEAD",
    }))
}

fn forwarded(out: &mut Vec<u8>, client_ip: &str, request_id: &[u8]) {
    header(out, b"x-forwarded-for", client_ip.as_bytes());
    header(out, b"x-real-ip", client_ip.as_bytes());
    header(out, b"x-forwarded-proto", b"http");
    header(out, b"x-request-id", request_id);
}

/// Parses the response head at the start of `input`; on success writes the
/// head for the client into `out` (`Connection: close` when `closing`).
pub fn response(
    input: &[u8],
    head_only: bool,
    closing: bool,
    request_id: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<Response>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => return Err(Refused(502)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Refused(502)),
    };
    let code = parsed.code.ok_or(Refused(502))?;
    let framing = Framing::of(parsed.headers).map_err(|_| Refused(502))?;
    let bodiless = head_only || code == 204 || code == 304;
    let body_len = match framing.content_length {
        _ if (100..200).contains(&code) || framing.chunked => return Err(Refused(502)),
        _ if bodiless => 0,
        Some(n) => n,
        // Read-until-close bodies are out of the prototype's scope.
        None => return Err(Refused(502)),
    };
    let _ = write!(
        out,
        "HTTP/1.1 {code} {}\r\n",
        parsed.reason.unwrap_or_default()
    );
    copy_headers(out, parsed.headers, &DROPPED_RESPONSE);
    if let Some(n) = framing.content_length {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    header(out, b"x-request-id", request_id);
    if closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response { head_len, body_len }))
}

/// The answer to a refused request; the connection closes after it.
pub fn refusal(status: u16, out: &mut Vec<u8>) {
    let reason = match status {
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Bad Gateway",
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

/// What the headers say about framing and persistence.
#[derive(Default)]
struct Framing {
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

impl Framing {
    fn of(headers: &[httparse::Header<'_>]) -> Result<Framing, Refused> {
        let mut framing = Framing::default();
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = parse_length(h.value).ok_or(Refused(400))?;
                // Two different lengths: ambiguous framing (smuggling).
                if framing.content_length.is_some_and(|m| m != n) {
                    return Err(Refused(400));
                }
                framing.content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                framing.chunked = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                framing.upgrade = true;
            } else if h.name.eq_ignore_ascii_case("connection") {
                for option in h.value.split(|b| *b == b',') {
                    let option = option.trim_ascii();
                    framing.close |= option.eq_ignore_ascii_case(b"close");
                    framing.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        Ok(framing)
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn copy_headers(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], dropped: &[&str]) {
    for h in headers {
        if !dropped.iter().any(|d| h.name.eq_ignore_ascii_case(d)) {
            header(out, h.name.as_bytes(), h.value);
        }
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Made-up request ids: 32 hex digits, a per-worker random-ish prefix and a
/// counter (unique per process run, like nginx's `$request_id` in shape).
pub struct RequestIds {
    prefix: u64,
    next: u64,
}

impl RequestIds {
    pub fn new(worker: usize) -> RequestIds {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let prefix = nanos ^ (u64::from(std::process::id()) << 32) ^ (worker as u64) << 56;
        RequestIds { prefix, next: 0 }
    }

    pub fn next(&mut self) -> [u8; 32] {
        self.next += 1;
        let mut id = [0u8; 32];
        let _ = write!(&mut id[..], "{:016x}{:016x}", self.prefix, self.next);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(input: &[u8]) -> (Result<Option<Request>, Refused>, String) {
        let mut out = Vec::new();
        let parsed = request(input, "10.0.0.7", b"abc", &mut out);
        (parsed, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn a_get_is_forwarded_with_the_forwarding_headers_and_without_hop_by_hop_ones() {
        let (parsed, out) = forward(
            b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nX-Forwarded-For: 6.6.6.6\r\n\r\nrest",
        );
        let parsed = parsed.expect("parses").expect("complete");
        // Everything but the 4 bytes after the head ("rest").
        assert_eq!(parsed.head_len, 82);
        assert!(parsed.keep_alive);
        assert_eq!(
            out,
            "GET /x?y=1 HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 10.0.0.7\r\nx-real-ip: 10.0.0.7\r\n\
             x-forwarded-proto: http\r\nx-request-id: abc\r\n\r\n"
        );
    }

    #[test]
    fn chunked_requests_are_not_implemented_and_ambiguous_lengths_are_bad() {
        let (parsed, _) = forward(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(parsed, Err(Refused(501)));
        let (parsed, _) =
            forward(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(parsed, Err(Refused(400)));
        let (parsed, _) = forward(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert_eq!(parsed, Ok(None));
    }

    #[test]
    fn a_response_gets_the_request_id_and_keeps_its_length() {
        let mut out = Vec::new();
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";
        let parsed = response(input, false, true, b"abc", &mut out);
        assert_eq!(
            parsed,
            Ok(Some(Response {
                head_len: input.len() - 5,
                body_len: 5
            }))
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-request-id: abc\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn responses_without_a_length_are_refused() {
        let mut out = Vec::new();
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            response(chunked, false, false, b"a", &mut out),
            Err(Refused(502))
        );
        let until_close = b"HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(
            response(until_close, false, false, b"a", &mut out),
            Err(Refused(502))
        );
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let mut ids = RequestIds::new(1);
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(a.iter().all(u8::is_ascii_hexdigit));
    }
}
