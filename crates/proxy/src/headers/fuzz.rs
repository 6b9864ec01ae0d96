//! Bounded fuzzing of header rewriting: generated client requests (framing
//! headers from the codec's generator, plus hop-by-hop headers, headers a
//! `Connection` field names, forwarding headers with hostile values and
//! request ids) are parsed by the codec, rewritten for an HTTP/1.1
//! upstream by [`ProxiedHead`], and the bytes that would go upstream are
//! checked:
//!
//! - they are one complete request head, nothing after it, for this codec
//!   and for httparse alike, with exactly one Host and the framing given;
//! - no hop-by-hop header and no header the client's `Connection` named
//!   goes upstream (only the proxy's own `connection: upgrade`);
//! - `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` are the proxy's
//!   unless the peer is trusted (then the chain ends with the peer);
//!   exactly one sane `X-Request-Id`;
//! - the same headers reach an h2c upstream, whose request is rewritten
//!   in a `HeaderMap` by [`strip_hop_by_hop`] and [`add_forwarded`]: the
//!   two paths agree.
//!
//! `CUTOVER_FUZZ_CASES` / `CUTOVER_FUZZ_SEED` as for the codec's harness.

use std::net::IpAddr;

use bytes::BytesMut;
use cutover_test_support::fuzz::{cases, rng};
use http::header::{EXPECT, HOST, UPGRADE};
use http::{HeaderMap, HeaderValue};

use super::*;
use crate::http1::encode::RequestFraming;
use crate::http1::head::{self, BodyLength, RequestHead};

/// Fields a client may send, hostile ones included.
const FIELDS: &[(&str, &[&str])] = &[
    (
        "Connection",
        &[
            "close",
            "keep-alive",
            "upgrade",
            "x-a",
            "x-forwarded-for",
            "x-request-id, x-a",
            "te",
            ", ,",
            "keep-alive, x-b",
            "x-real-ip",
            "X-Forwarded-Proto, x-forwarded-host",
        ],
    ),
    ("Keep-Alive", &["timeout=5"]),
    ("Proxy-Connection", &["keep-alive"]),
    ("TE", &["trailers", "gzip"]),
    ("Trailer", &["x-t"]),
    ("Upgrade", &["websocket", "h2c"]),
    ("Proxy-Authorization", &["Basic c2VjcmV0"]),
    ("Expect", &["100-continue"]),
    (
        "X-Forwarded-For",
        &["1.2.3.4", "", " ", "evil, 5.6.7.8", "::1"],
    ),
    ("X-Real-IP", &["6.6.6.6"]),
    ("X-Forwarded-Proto", &["https", "javascript"]),
    ("X-Forwarded-Host", &["evil.example"]),
    ("X-Request-Id", &["abc-123", "", "bad id", "a\tb", "ünï"]),
    ("X-A", &["a"]),
    ("X-B", &["b", "b2"]),
    ("Cookie", &["a=1", "b=2"]),
];

/// One generated request: a head the codec accepts, or `None`.
fn generated_request(rng: &mut fastrand::Rng) -> Option<(RequestHead, String)> {
    let target = ["/p?q=1", "http://example.com:8080/abs", "/"][rng.usize(..3)];
    let version = if rng.u8(..6) == 0 { "1.0" } else { "1.1" };
    let mut text = format!("POST {target} HTTP/{version}\r\nHost: example.com\r\n");
    match rng.u8(..3) {
        0 => text.push_str("Content-Length: 5\r\n"),
        1 if version == "1.1" => text.push_str("Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    for _ in 0..rng.usize(..8) {
        let (name, values) = FIELDS[rng.usize(..FIELDS.len())];
        let value = values[rng.usize(..values.len())];
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut buf = BytesMut::from(text.as_bytes());
    match head::parse_request(&mut buf) {
        Ok(Some(head)) => Some((head, text)),
        _ => None,
    }
}

fn client_ip(rng: &mut fastrand::Rng) -> IpAddr {
    match rng.u8(..3) {
        0 => IpAddr::from([10, 0, rng.u8(..), rng.u8(..)]),
        1 => IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]),
        _ => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, rng.u16(..)]),
    }
}

fn framing_of(head: &RequestHead) -> RequestFraming {
    match head.body {
        BodyLength::Empty | BodyLength::UntilClose => RequestFraming::None,
        BodyLength::Exact(n) => RequestFraming::Length(n),
        BodyLength::Chunked => RequestFraming::Chunked,
    }
}

/// The fields of an encoded head as (lowercase name, value) pairs.
fn fields_of(encoded: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(encoded) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, encoded.len(), "bytes after the head"),
        other => panic!(
            "httparse cannot read {:?}: {other:?}",
            String::from_utf8_lossy(encoded)
        ),
    }
    request
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

fn values<'a>(fields: &'a [(String, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// Headers an HTTP/1.1 request carries only for its own connection.
const NEVER_UPSTREAM: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authorization",
    "expect",
];

struct Case<'a> {
    headers: &'a HeaderMap,
    trusted: bool,
    ip: &'a HeaderValue,
    upgrade: bool,
}

fn check_encoded(case: &Case, fields: &[(String, Vec<u8>)]) {
    assert_eq!(values(fields, "host").count(), 1, "one Host");
    for name in NEVER_UPSTREAM {
        assert_eq!(values(fields, name).count(), 0, "{name} went upstream");
    }
    let connection: Vec<&[u8]> = values(fields, "connection").collect();
    assert!(
        connection.iter().all(|v| *v == b"upgrade"),
        "{connection:?}"
    );
    assert_eq!(values(fields, "upgrade").count(), usize::from(case.upgrade));
    for named in connection_options(case.headers) {
        // The proxy's own values of these go up (checked against h2c).
        let allowed = set_by_proxy(&named, false);
        let count = values(fields, named.as_str()).count();
        assert!(allowed || count == 0, "{named} was named by Connection");
    }
    let xff: Vec<&[u8]> = values(fields, "x-forwarded-for").collect();
    assert_eq!(xff.len(), 1, "one X-Forwarded-For");
    if case.trusted {
        assert!(xff[0].ends_with(case.ip.as_bytes()));
    } else {
        assert_eq!(
            xff[0],
            case.ip.as_bytes(),
            "a client posed as another address"
        );
        assert_eq!(
            values(fields, "x-real-ip").collect::<Vec<_>>(),
            [case.ip.as_bytes()]
        );
        assert_eq!(
            values(fields, "x-forwarded-proto").collect::<Vec<_>>(),
            [b"http".as_slice()]
        );
    }
    let ids: Vec<&[u8]> = values(fields, "x-request-id").collect();
    assert!(
        ids.len() == 1 && is_sane_request_id(ids[0]),
        "request ids {ids:?}"
    );
}

/// The end-to-end fields both paths send, sorted: what an h2c upstream
/// gets must be what an HTTP/1.1 one gets.
fn end_to_end(fields: impl Iterator<Item = (String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let framing = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
    ];
    let mut kept: Vec<_> = fields
        .filter(|(n, _)| !framing.contains(&n.as_str()))
        .collect();
    kept.sort();
    kept
}

fn h2_path(
    case: &Case,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) -> Vec<(String, Vec<u8>)> {
    let mut headers = case.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(EXPECT);
    headers.remove(HOST);
    add_forwarded(&mut headers, case.ip, host, &HTTP, case.trusted);
    headers.insert(&X_REQUEST_ID, request_id.clone());
    end_to_end(
        headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())),
    )
}

#[test]
fn rewritten_heads_are_well_formed_carry_no_hop_by_hop_and_match_the_h2_path() {
    let mut rng = rng(5);
    let (mut checked, mut disagreements) = (0usize, Vec::new());
    for _ in 0..cases() {
        let Some((head, text)) = generated_request(&mut rng) else {
            continue;
        };
        let framing = framing_of(&head);
        let (parts, ()) = head.request.into_parts();
        let ip = client_ip_value(client_ip(&mut rng));
        let host = parts.headers.get(HOST);
        let request_id = request_id(&parts.headers);
        let upgrade = head.upgrade.then(|| parts.headers.get(UPGRADE)).flatten();
        let case = Case {
            headers: &parts.headers,
            trusted: rng.bool(),
            ip: &ip,
            upgrade: upgrade.is_some(),
        };
        let proxied = ProxiedHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            host,
            forwarded_host: host,
            client_ip: &ip,
            trusted: case.trusted,
            proto: &HTTP,
            request_id: &request_id,
            upgrade,
        };
        let mut encoded = Vec::new();
        proxied.encode(&mut encoded, framing);
        let mut reparsed = BytesMut::from(&encoded[..]);
        let again = head::parse_request(&mut reparsed)
            .unwrap_or_else(|e| panic!("{e} for {:?}", String::from_utf8_lossy(&encoded)))
            .expect("a complete head");
        assert!(reparsed.is_empty(), "bytes after the head");
        assert_eq!(
            again.body, head.body,
            "{text:?} framed differently upstream"
        );
        let fields = fields_of(&encoded);
        check_encoded(&case, &fields);
        let http1 = end_to_end(fields.into_iter());
        let h2 = h2_path(&case, host, &request_id);
        if http1 != h2 && disagreements.len() < 5 {
            disagreements.push(format!(
                "{text:?} (trusted: {}):\n  http1 {http1:?}\n  h2    {h2:?}",
                case.trusted
            ));
        }
        checked += 1;
    }
    assert!(
        checked > cases() / 2,
        "only {checked} generated heads were accepted"
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
