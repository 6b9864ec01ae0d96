//! Request and response heads: parsing (httparse) into `http` types whose
//! header values share the read buffer — a response head's fields stay
//! where they are in its bytes until someone asks for a map (the io_uring
//! loop rewrites them without one) — and the framing rules of RFC 9112
//! section 6 that decide how the body after a head is delimited and whether
//! the connection may carry another message.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};

use crate::headers::lists;

/// Largest head accepted, request or response.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Headers a request head may have (more: 431).
pub(crate) const MAX_REQUEST_HEADERS: usize = 100;
/// Headers a response head may have.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;
/// Headers up to which a head's value positions are kept on the stack.
const STACK_HEADERS: usize = 32;

/// Why a head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("head too large: {0}")]
    TooLarge(&'static str),
    #[error("invalid message framing: {0}")]
    BadFraming(&'static str),
    /// A well-formed version other than HTTP/1.0 and HTTP/1.1.
    #[error("HTTP version not supported: {0}")]
    Version(&'static str),
    /// A transfer coding the proxy does not implement (only `chunked`).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// A method the proxy never serves (CONNECT: it is no forward proxy).
    #[error("method not allowed: {0}")]
    Method(&'static str),
}

impl HeadError {
    /// The status a server answers a request head it could not read with.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            HeadError::Malformed(_) | HeadError::BadFraming(_) => StatusCode::BAD_REQUEST,
            HeadError::TooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Version(_) => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            HeadError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    Empty,
    Exact(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A parsed request head and what the connection needs to know about it.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) request: Request<()>,
    /// The head as it came (its header values point into it).
    pub(crate) raw: Bytes,
    pub(crate) body: BodyLength,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header, over HTTP/1.1.
    pub(crate) upgrade: bool,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) fields: Fields,
    pub(crate) body: BodyLength,
    /// Whether the connection may carry another exchange after this body.
    pub(crate) reusable: bool,
    /// The head has hop-by-hop headers to strip.
    pub(crate) hop_by_hop: bool,
}

impl ResponseHead {
    /// The head as an `http` response whose header values share its bytes,
    /// with room for the headers the proxy adds (X-Request-Id, a cookie).
    pub(crate) fn into_response(self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.fields.into_map(4);
        response
    }
}

/// What a response head at the front of the buffer turned out to be.
#[derive(Debug)]
pub(crate) enum ParsedResponse {
    /// A 1xx other than 101: skipped, the final head follows.
    Informational,
    /// `101 Switching Protocols`: what follows is the new protocol.
    Switching(ResponseHead),
    Final(ResponseHead),
}

/// What the header names of a head say, noted while parsing so that framing
/// and hop-by-hop stripping need no map lookups when the headers concerned
/// are absent (the usual case).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    connection: bool,
    transfer_encoding: bool,
    upgrade: bool,
    expect: bool,
    /// `Host` headers seen (a request must have exactly one, RFC 9112 3.2).
    hosts: u8,
    /// A `Host` value that is not a `uri-host [ ":" port ]` (RFC 9110 7.2).
    bad_host: bool,
    /// `Content-Length` headers seen, and the value of the single one.
    content_lengths: u8,
    content_length: Option<u64>,
    /// Any hop-by-hop header.
    hop_by_hop: bool,
}

impl Facts {
    fn note(&mut self, name: &str, value: &[u8]) {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        match name.len() {
            14 if is("content-length") => {
                self.content_lengths = self.content_lengths.saturating_add(1);
                self.content_length = decimal(value);
            }
            4 if is("host") => {
                self.hosts = self.hosts.saturating_add(1);
                self.bad_host |= !is_host_value(value);
            }
            17 if is("transfer-encoding") => {
                self.transfer_encoding = true;
                self.hop_by_hop = true;
            }
            10 if is("connection") => {
                self.connection = true;
                self.hop_by_hop = true;
            }
            7 if is("upgrade") => {
                self.upgrade = true;
                self.hop_by_hop = true;
            }
            6 if is("expect") => self.expect = true,
            2 if is("te") => self.hop_by_hop = true,
            7 if is("trailer") => self.hop_by_hop = true,
            10 if is("keep-alive") => self.hop_by_hop = true,
            16 if is("proxy-connection") => self.hop_by_hop = true,
            19 if is("proxy-authorization") => self.hop_by_hop = true,
            _ => {}
        }
    }
}

/// Where each header's name and value sit in the head's bytes.
#[derive(Debug)]
struct Spans {
    on_stack: [(u32, u32, u32, u32); STACK_HEADERS],
    on_heap: Vec<(u32, u32, u32, u32)>,
    count: usize,
    facts: Facts,
}

impl Spans {
    fn note(headers: &[httparse::Header<'_>], base: usize) -> Spans {
        let mut spans = Spans {
            on_stack: [(0, 0, 0, 0); STACK_HEADERS],
            on_heap: Vec::new(),
            count: headers.len(),
            facts: Facts::default(),
        };
        for (i, header) in headers.iter().enumerate() {
            spans.facts.note(header.name, header.value);
            let span = (
                offset(header.name.as_ptr(), base),
                header.name.len() as u32,
                offset(header.value.as_ptr(), base),
                header.value.len() as u32,
            );
            match spans.on_stack.get_mut(i) {
                Some(slot) => *slot = span,
                None => spans.on_heap.push(span),
            }
        }
        spans
    }

    fn all(&self) -> impl Iterator<Item = &(u32, u32, u32, u32)> {
        self.on_stack[..self.count.min(STACK_HEADERS)]
            .iter()
            .chain(self.on_heap.iter())
    }
}

/// A head's header fields in its own bytes, in the order they came: read
/// in place, made into a map only by whoever needs one.
#[derive(Debug)]
pub(crate) struct Fields {
    head: Bytes,
    spans: Spans,
}

impl Fields {
    /// Takes the spans of a head whose every value is checked as the map
    /// would check it, so that [`Fields::into_map`] takes every field.
    /// (Names need no check: httparse takes a name only if it is a token,
    /// the rule `HeaderName` has.)
    fn checked(head: Bytes, spans: Spans) -> Result<Fields, HeadError> {
        let fields = Fields { head, spans };
        let valid = |value: &[u8]| {
            value
                .iter()
                .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
        };
        if fields.iter().all(|(_, value)| valid(value)) {
            Ok(fields)
        } else {
            Err(HeadError::Malformed("invalid header value"))
        }
    }

    /// Name and value of each field, in the order they came (names as sent).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .all()
            .map(|&(name_at, name_len, value_at, value_len)| {
                let (name_at, value_at) = (name_at as usize, value_at as usize);
                (
                    &self.head[name_at..name_at + name_len as usize],
                    &self.head[value_at..value_at + value_len as usize],
                )
            })
    }

    /// The values of the fields called `name` (any case), in order.
    pub(crate) fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// The fields as a map whose values share the head's bytes; `room` for
    /// headers added later.
    fn into_map(self, room: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.spans.count + room);
        for &(name_at, name_len, value_at, value_len) in self.spans.all() {
            let (name_at, value_at) = (name_at as usize, value_at as usize);
            let name = HeaderName::from_bytes(&self.head[name_at..name_at + name_len as usize]);
            let value = HeaderValue::from_maybe_shared(
                self.head.slice(value_at..value_at + value_len as usize),
            );
            // Both hold for every field (see `Fields::checked`).
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
        map
    }
}

/// The values of the fields with a name: from a map, or read in place.
pub(crate) trait FieldValues {
    fn values_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl FieldValues for HeaderMap {
    fn values_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }
}

impl FieldValues for Fields {
    fn values_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values(name)
    }
}

/// RFC 9112 3.2: an HTTP/1.1 request without `Host`, or any request with
/// more than one, or with an invalid one, MUST be answered 400 — two
/// proxies that pick different ones would route the same request to
/// different apps.
fn check_host(version: Version, facts: &Facts) -> Result<(), HeadError> {
    match (facts.hosts, version) {
        (0, Version::HTTP_11) => Err(HeadError::Malformed("HTTP/1.1 request without Host")),
        (0, _) => Ok(()),
        (1, _) if facts.bad_host => Err(HeadError::Malformed("invalid Host header")),
        (1, _) => Ok(()),
        _ => Err(HeadError::Malformed("more than one Host header")),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): a reg-name or IPv4 address, or an
/// IP-literal in brackets, then at most one `:` and digits. Empty is allowed
/// (RFC 9112 3.2: a target without authority gets an empty Host). No
/// userinfo (`@`), no path, no whitespace.
fn is_host_value(value: &[u8]) -> bool {
    let (host_ok, port) = match value.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => (
                end > 0
                    && rest[..end]
                        .iter()
                        .all(|&b| b == b':' || is_reg_name_byte(b)),
                &rest[end + 1..],
            ),
            None => return false,
        },
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (
                value[..end].iter().all(|&b| is_reg_name_byte(b)),
                &value[end..],
            )
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

/// unreserved, sub-delims and `%` of pct-encoded (RFC 3986 reg-name).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
        )
}

/// RFC 9112 3.2: the four forms of request-target, each only where it
/// belongs. Origin-form (`/path`) for every method; absolute-form
/// (`http://host/path`, its authority then wins over `Host`); asterisk-form
/// only with OPTIONS; authority-form only with CONNECT, which is refused
/// before this.
fn check_target(method: &Method, raw: &str, uri: &Uri) -> Result<(), HeadError> {
    if raw == "*" {
        return match *method {
            Method::OPTIONS => Ok(()),
            _ => Err(HeadError::Malformed(
                "asterisk-form target is only for OPTIONS",
            )),
        };
    }
    if raw.starts_with('/') {
        return Ok(());
    }
    let Some(scheme) = uri.scheme_str() else {
        return Err(HeadError::Malformed(
            "authority-form target is only for CONNECT",
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(HeadError::Malformed("absolute-form target is not http(s)"));
    }
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            Err(HeadError::Malformed("userinfo in the request target"))
        }
        Some(authority) if !authority.host().is_empty() => Ok(()),
        _ => Err(HeadError::Malformed("absolute-form target without a host")),
    }
}

/// A request line whose version httparse refused: `HTTP/<digit>.<digit>`
/// other than 1.0 and 1.1 is 505, anything else 400; `None`: the version
/// is cut off by the end of the buffer and may still turn out either way
/// (the answer must not depend on how the bytes arrived).
fn version_error(buf: &[u8]) -> Option<HeadError> {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let version = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
    let token_end = version.iter().position(|&b| b == b' ');
    let token = &version[..token_end.unwrap_or(version.len())];
    let terminated = token_end.is_some() || line_end.is_some();
    let shaped = token.iter().enumerate().all(|(i, &b)| match i {
        0..=4 => b == b"HTTP/"[i],
        5 | 7 => b.is_ascii_digit(),
        6 => b == b'.',
        _ => false,
    });
    match (shaped, terminated) {
        (true, true) if token.len() == 8 => {
            Some(HeadError::Version("only HTTP/1.0 and HTTP/1.1 are served"))
        }
        (true, false) => None,
        _ => Some(HeadError::Malformed("invalid HTTP version")),
    }
}

fn offset(at: *const u8, base: usize) -> u32 {
    (at as usize - base) as u32
}

fn version(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// A complete head's length from httparse's answer; `None`: more bytes needed.
fn complete(
    status: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
) -> Result<Option<usize>, HeadError> {
    match status {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            Err(HeadError::TooLarge("head over 64 KiB"))
        }
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered > MAX_HEAD => {
            Err(HeadError::TooLarge("head over 64 KiB"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge("too many headers")),
        Err(_) => Err(HeadError::Malformed("not an HTTP/1 head")),
    }
}

/// Parses a complete request head at the front of `buf` (consuming it), or
/// `None` if more bytes are needed.
pub(crate) fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_REQUEST_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let status = parsed.parse_with_uninit_headers(buf, &mut slots);
    if let Err(httparse::Error::Version) = status {
        return match version_error(buf) {
            Some(error) => Err(error),
            None => Ok(None),
        };
    }
    let Some(len) = complete(status, buf.len())? else {
        return Ok(None);
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    if method == Method::CONNECT {
        return Err(HeadError::Method(
            "CONNECT: cutover is a reverse proxy and opens no tunnels",
        ));
    }
    let version = version(parsed.version);
    let base = buf.as_ptr() as usize;
    let path = parsed.path.unwrap_or("");
    let path_at = offset(path.as_ptr(), base) as usize;
    let path_span = path_at..path_at + path.len();
    let spans = Spans::note(parsed.headers, base);
    let facts = spans.facts;
    check_host(version, &facts)?;
    let head = buf.split_to(len).freeze();
    let target = head.slice(path_span);
    let uri = Uri::from_maybe_shared(target.clone())
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    check_target(&method, std::str::from_utf8(&target).unwrap_or(""), &uri)?;
    let headers = Fields::checked(head.clone(), spans)?.into_map(2);
    let body = request_body(version, &facts, &headers)?;
    // A request with both framings is a smuggling attempt or a broken
    // client: its body is read as chunked, and the connection closes after.
    let keep_alive = keep_alive(version, &facts, &headers)
        && !(facts.transfer_encoding && facts.content_lengths > 0);
    let expect_continue = facts.expect
        && body != BodyLength::Empty
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = facts.upgrade
        && version == Version::HTTP_11
        && facts.connection
        && lists(headers.values_of("connection"), b"upgrade");
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        raw: head,
        body,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// Parses a complete response head at the front of `buf` (consuming it),
/// or `None` if more bytes are needed. `to_head`: the request was a HEAD.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    to_head: bool,
) -> Result<Option<ParsedResponse>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    );
    let Some(len) = complete(status, buf.len())? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
        .map_err(|_| HeadError::Malformed("invalid status code"))?;
    let version = version(parsed.version);
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(ParsedResponse::Informational));
    }
    let spans = Spans::note(parsed.headers, buf.as_ptr() as usize);
    let facts = spans.facts;
    let fields = Fields::checked(buf.split_to(len).freeze(), spans)?;
    let body = response_body(status, to_head, &facts, &fields)?;
    let reusable = keep_alive(version, &facts, &fields) && body != BodyLength::UntilClose;
    let head = ResponseHead {
        status,
        version,
        fields,
        body,
        reusable,
        hop_by_hop: facts.hop_by_hop,
    };
    Ok(Some(if status == StatusCode::SWITCHING_PROTOCOLS {
        ParsedResponse::Switching(head)
    } else {
        ParsedResponse::Final(head)
    }))
}

/// RFC 9112 6.3 for requests: chunked if the transfer codings are just
/// `chunked` (once, last); a last coding other than chunked is refused
/// (the length would be unknowable), other codings before it are not
/// implemented (RFC 9112 6.1: 501); else `Content-Length`, else no body.
fn request_body(
    version: Version,
    facts: &Facts,
    headers: &HeaderMap,
) -> Result<BodyLength, HeadError> {
    match (facts.transfer_encoding, version) {
        (true, Version::HTTP_10) => Err(HeadError::BadFraming("transfer-encoding in HTTP/1.0")),
        (true, _) => {
            let codings = Codings::of(headers)?;
            if !codings.last_chunked {
                return Err(HeadError::BadFraming("last transfer-coding is not chunked"));
            }
            if codings.others {
                return Err(HeadError::NotImplemented(
                    "transfer-codings other than chunked",
                ));
            }
            Ok(BodyLength::Chunked)
        }
        (false, _) => Ok(match content_length(facts, headers)? {
            None | Some(0) => BodyLength::Empty,
            Some(n) => BodyLength::Exact(n),
        }),
    }
}

/// RFC 9112 6.3 for responses: none to HEAD and for 1xx, 204 and 304;
/// chunked if the last transfer coding is chunked, until the close for any
/// other; `Content-Length`; else until the close. Both `Transfer-Encoding`
/// and `Content-Length` is refused (RFC 9112 6.3 says to handle it as an
/// error): the upstream frames its messages ambiguously.
fn response_body(
    status: StatusCode,
    to_head: bool,
    facts: &Facts,
    headers: &impl FieldValues,
) -> Result<BodyLength, HeadError> {
    if facts.transfer_encoding && facts.content_lengths > 0 {
        return Err(HeadError::BadFraming(
            "both transfer-encoding and content-length",
        ));
    }
    match status {
        _ if to_head => Ok(BodyLength::Empty),
        _ if status.is_informational() => Ok(BodyLength::Empty),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED => Ok(BodyLength::Empty),
        _ if facts.transfer_encoding && Codings::of(headers)?.last_chunked => {
            Ok(BodyLength::Chunked)
        }
        _ if facts.transfer_encoding => Ok(BodyLength::UntilClose),
        _ => Ok(match content_length(facts, headers)? {
            Some(0) => BodyLength::Empty,
            Some(n) => BodyLength::Exact(n),
            None => BodyLength::UntilClose,
        }),
    }
}

/// The transfer codings of a message, over all its `Transfer-Encoding`
/// fields (empty list elements skipped, RFC 9110 5.6.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Codings {
    last_chunked: bool,
    /// A coding other than chunked.
    others: bool,
}

impl Codings {
    fn of(headers: &impl FieldValues) -> Result<Codings, HeadError> {
        let mut codings = Codings::default();
        let mut chunked = 0u32;
        for value in headers.values_of(TRANSFER_ENCODING.as_str()) {
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                chunked += u32::from(is_chunked);
                codings.others |= !is_chunked;
                codings.last_chunked = is_chunked;
            }
        }
        // RFC 9112 6.1: chunked MUST NOT be applied more than once.
        if chunked > 1 {
            return Err(HeadError::BadFraming("chunked applied more than once"));
        }
        Ok(codings)
    }
}

/// `1*DIGIT` (RFC 9110 8.6) as a number: no sign, no inner whitespace, no
/// other characters, no overflow. `u64::from_str` would take a leading `+`.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The `Content-Length`, if any. Several headers, or a list, must agree.
fn content_length(facts: &Facts, headers: &impl FieldValues) -> Result<Option<u64>, HeadError> {
    match (facts.content_lengths, facts.content_length) {
        (0, _) => return Ok(None),
        (1, Some(n)) => return Ok(Some(n)),
        _ => {}
    }
    let mut length = None;
    for value in headers.values_of(CONTENT_LENGTH.as_str()) {
        for part in value.split(|&b| b == b',') {
            let n = decimal(part.trim_ascii())
                .ok_or(HeadError::BadFraming("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::BadFraming("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Persistence (RFC 9112 9.3): never with `Connection: close`, whatever
/// else the field says; otherwise HTTP/1.1 always and HTTP/1.0 only with
/// `Connection: keep-alive`.
fn keep_alive(version: Version, facts: &Facts, headers: &impl FieldValues) -> bool {
    let connection_has = |token: &str| lists(headers.values_of("connection"), token.as_bytes());
    if facts.connection && connection_has("close") {
        return false;
    }
    match version {
        Version::HTTP_10 => facts.connection && connection_has("keep-alive"),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(text.as_bytes()))
    }

    fn complete_request(text: &str) -> RequestHead {
        request(text).expect("valid").expect("complete")
    }

    fn response(text: &str, to_head: bool) -> Result<ResponseHead, HeadError> {
        match parse_response(&mut BytesMut::from(text.as_bytes()), to_head)? {
            Some(ParsedResponse::Final(head) | ParsedResponse::Switching(head)) => Ok(head),
            other => panic!("not a final head: {other:?}"),
        }
    }

    fn length(text: &str, to_head: bool) -> BodyLength {
        response(text, to_head).expect("valid").body
    }

    #[test]
    fn request_heads_parse_with_their_body_framing_and_keep_alive() {
        let head = complete_request("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.request.uri(), "/a?b");
        assert_eq!(head.body, BodyLength::Empty);
        assert!(head.keep_alive);
        let head = complete_request(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
        );
        assert_eq!(head.body, BodyLength::Exact(5));
        assert!(!head.keep_alive);
        let head = complete_request(
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n",
        );
        assert_eq!(head.body, BodyLength::Chunked);
        assert!(head.expect_continue);
        assert!(!complete_request("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete_request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        // Found by the differential harness: close wins over keep-alive.
        assert!(
            !complete_request("GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n").keep_alive
        );
        let head = complete_request(
            "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        );
        assert!(head.upgrade);
        assert!(request("GET / HTTP/1.1\r\nHost: x\r\n")
            .expect("valid")
            .is_none());
    }

    #[test]
    fn a_request_with_both_framings_reads_chunked_and_closes_after() {
        let head = complete_request(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!(head.body, BodyLength::Chunked);
        assert!(!head.keep_alive);
    }

    #[test]
    fn a_request_without_length_has_no_body_but_a_response_reads_until_close() {
        assert_eq!(
            complete_request("POST / HTTP/1.1\r\nhost: x\r\n\r\n").body,
            BodyLength::Empty
        );
        let head = response("HTTP/1.1 200 OK\r\n\r\n", false).expect("valid");
        assert_eq!(head.body, BodyLength::UntilClose);
        assert!(!head.reusable);
    }

    #[test]
    fn bad_request_heads_are_refused_with_the_fitting_status() {
        let status = |text: &str| request(text).err().map(HeadError::status);
        assert_eq!(
            status("NOT A REQUEST\r\n\r\n"),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n"),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            Some(StatusCode::BAD_REQUEST)
        );
        let too_large = Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let huge = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx: {}\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(status(&huge), too_large);
        assert_eq!(status(&format!("{huge}\r\n")), too_large);
        let many: String = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n")),
            too_large
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let cl5 = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(length(cl5, false), BodyLength::Exact(5));
        assert_eq!(length(cl5, true), BodyLength::Empty);
        assert_eq!(
            length("HTTP/1.1 204 No Content\r\n\r\n", false),
            BodyLength::Empty
        );
        assert_eq!(
            length(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            ),
            BodyLength::Empty
        );
        // Both framings: ambiguous, refused (RFC 9112 6.3: handle as an error).
        assert!(response(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
            false,
        )
        .is_err());
        let chunked = response(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .expect("valid");
        assert_eq!(
            (chunked.body, chunked.reusable),
            (BodyLength::Chunked, true)
        );
        assert_eq!(
            length("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false),
            BodyLength::UntilClose
        );
        let reusable = |text: &str| response(text, false).expect("valid").reusable;
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(!reusable("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(reusable(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(response(
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert_eq!(
            length("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", false),
            BodyLength::Exact(3)
        );
        assert!(response("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
    }

    #[test]
    fn informational_heads_are_skipped_partial_heads_wait_and_101_switches() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"[..],
        );
        assert!(matches!(
            parse_response(&mut buf, false),
            Ok(Some(ParsedResponse::Informational))
        ));
        assert!(matches!(parse_response(&mut buf, false), Ok(None)));
        buf.extend_from_slice(b"content-length: 0\r\n\r\n");
        assert!(matches!(
            parse_response(&mut buf, false),
            Ok(Some(ParsedResponse::Final(_)))
        ));
        assert!(buf.is_empty());
        let mut switching = BytesMut::from(
            &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nframes"[..],
        );
        match parse_response(&mut switching, false) {
            Ok(Some(ParsedResponse::Switching(head))) => {
                assert!(head.hop_by_hop);
                assert_eq!(head.body, BodyLength::Empty);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(&switching[..], b"frames");
        let mut garbage = BytesMut::from(&b"NOT HTTP\r\n\r\n"[..]);
        assert!(parse_response(&mut garbage, false).is_err());
    }

    #[test]
    fn many_headers_keep_their_order_and_values() {
        let lines: String = (0..50).map(|i| format!("x-{i}: v{i}\r\n")).collect();
        let head = response(
            &format!("HTTP/1.1 200 OK\r\n{lines}content-length: 0\r\n\r\n"),
            false,
        )
        .expect("valid");
        let in_place: Vec<(&[u8], &[u8])> = head.fields.iter().collect();
        assert_eq!(in_place.len(), 51);
        assert_eq!(in_place[40], (&b"x-40"[..], &b"v40"[..]));
        let headers = head.into_response().headers().clone();
        assert_eq!(headers.len(), 51);
        assert_eq!(headers.get("x-40").map(|v| v.as_bytes()), Some(&b"v40"[..]));
    }

    #[test]
    fn response_fields_read_in_place_keep_case_and_order_and_find_values_by_any_case() {
        let head = response(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Thing: x\r\nset-cookie: b=2\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .expect("valid");
        let names: Vec<&[u8]> = head.fields.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                &b"Set-Cookie"[..],
                b"X-Thing",
                b"set-cookie",
                b"content-length"
            ]
        );
        let cookies: Vec<&[u8]> = head.fields.values("SET-COOKIE").collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        let map = head.into_response();
        let cookies: Vec<&[u8]> = map
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
    }

    #[test]
    fn a_response_field_value_with_a_control_character_is_refused_as_the_map_would() {
        for value in ["a\x01b", "a\x7fb"] {
            let text = format!("HTTP/1.1 200 OK\r\nx-bad: {value}\r\ncontent-length: 0\r\n\r\n");
            let parsed = response(&text, false).map(|_| ());
            // httparse refuses these itself; if it ever took one, the check
            // that keeps `into_map` total must.
            assert!(parsed.is_err(), "{value:?}: {parsed:?}");
            assert!(HeaderValue::from_bytes(value.as_bytes()).is_err());
        }
        assert!(response(
            "HTTP/1.1 200 OK\r\nx-ok: a\tb é\r\ncontent-length: 0\r\n\r\n",
            false
        )
        .is_ok());
    }

    #[test]
    fn host_must_be_present_once_in_http_1_1_and_at_most_once_in_1_0() {
        let status = |text: &str| request(text).map(|_| ()).map_err(HeadError::status);
        let bad = Err(StatusCode::BAD_REQUEST);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), bad);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), bad);
        assert_eq!(status("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"), bad);
        assert!(status("GET / HTTP/1.0\r\n\r\n").is_ok());
        assert!(status("GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn content_length_must_be_digits_only() {
        let status = |text: &str| request(text).map(|_| ()).map_err(HeadError::status);
        let bad = Err(StatusCode::BAD_REQUEST);
        for value in ["+5", "-5", "5x", "0x5", "5 5", "", "18446744073709551616"] {
            let text = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {value}\r\n\r\n");
            assert_eq!(status(&text), bad, "content-length {value:?}");
        }
        let text = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5, 5\r\n\r\n";
        assert_eq!(complete_request(text).body, BodyLength::Exact(5));
        assert_eq!(
            length("HTTP/1.1 200 OK\r\ncontent-length: 007\r\n\r\n", false),
            BodyLength::Exact(7)
        );
        assert!(response("HTTP/1.1 200 OK\r\ncontent-length: +7\r\n\r\n", false).is_err());
    }

    /// RFC 9112 / 9110 MUSTs on request heads: each case and its status.
    #[test]
    fn request_heads_breaking_rfc_9112_are_refused_with_the_fitting_status() {
        use StatusCode as S;
        let cases: &[(&str, Option<S>)] = &[
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x\r\nX\x01A: 1\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: tab\tok\r\n\r\n", None),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: u@x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", None),
            ("GET / HTTP/1.1\r\nHost: x:\r\n\r\n", None),
            ("GET / HTTP/1.1\r\nHost: a:b:c\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: x:80x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: []:80\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / HTTP/1.0\r\nHost:\r\n\r\n", None),
            ("GET / HTTP/1.2\r\nHost: x\r\n\r\n", Some(S::HTTP_VERSION_NOT_SUPPORTED)),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", Some(S::HTTP_VERSION_NOT_SUPPORTED)),
            ("GET / HTTP/x\r\nHost: x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET / FTP/1.1\r\nHost: x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", Some(S::METHOD_NOT_ALLOWED)),
            ("GET x:443 HTTP/1.1\r\nHost: x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", None),
            ("GET http://x/a HTTP/1.1\r\nHost: y\r\n\r\n", None),
            ("GET ftp://x/a HTTP/1.1\r\nHost: x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("GET http://u@x/a HTTP/1.1\r\nHost: x\r\n\r\n", Some(S::BAD_REQUEST)),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Some(S::BAD_REQUEST)),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Some(S::BAD_REQUEST)),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Some(S::BAD_REQUEST)),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Some(S::NOT_IMPLEMENTED)),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n", None),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", Some(S::BAD_REQUEST)),
        ];
        for (text, expected) in cases {
            let got = request(text)
                .map(|head| head.is_some())
                .map_err(HeadError::status);
            match expected {
                Some(status) => assert_eq!(got, Err(*status), "{text:?}"),
                None => assert_eq!(got, Ok(true), "{text:?}"),
            }
        }
    }

    #[test]
    fn an_absolute_form_target_keeps_its_authority_for_routing() {
        let head = complete_request("GET http://a.example:81/p?q HTTP/1.1\r\nHost: b\r\n\r\n");
        let uri = head.request.uri();
        assert_eq!(uri.authority().map(|a| a.as_str()), Some("a.example:81"));
        assert_eq!(uri.path_and_query().map(|p| p.as_str()), Some("/p?q"));
    }
}
