//! Header rewriting between client and upstream: hop-by-hop stripping, the
//! `X-Forwarded-*` family, and request ids.

use std::net::IpAddr;

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, HOST,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Uri};

use crate::http1::client::OutgoingHead;
use crate::http1::encode::{self, header_line, RequestFraming};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
#[cfg(test)]
static HTTP: HeaderValue = HeaderValue::from_static("http");

/// Headers that describe one connection, never forwarded in either direction
/// (plus `Proxy-Authorization`, meant for the proxy itself).
static HOP_BY_HOP: [&HeaderName; 8] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &PROXY_AUTHORIZATION,
];

/// Longest client-supplied request id that is kept as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes hop-by-hop headers, including those named by `Connection`.
/// One pass over the names first: most messages carry none of them.
/// Returns whether anything may have been removed.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    if !headers.keys().any(is_hop_by_hop) {
        return false;
    }
    if headers.contains_key(&CONNECTION) {
        remove_connection_options(headers);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    true
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Removes the headers a `Connection` header names. Allocates only when it
/// names something other than the usual `keep-alive` / `close` / `upgrade`.
fn remove_connection_options(headers: &mut HeaderMap) {
    for name in connection_options(headers) {
        headers.remove(name);
    }
}

/// Whether a `Connection` header lists `token` (case-insensitively).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    lists(
        headers
            .get_all(&CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
        token.as_bytes(),
    )
}

/// Whether comma-separated field values list `token` (case-insensitively).
pub(crate) fn lists<'a>(values: impl Iterator<Item = &'a [u8]>, token: &[u8]) -> bool {
    options(values).any(|option| option.eq_ignore_ascii_case(token))
}

/// The options of comma-separated field values, trimmed. A value with
/// bytes outside visible ASCII has none (as hyper and
/// `HeaderValue::to_str` read it: a peer that disagrees on keep-alive
/// desyncs from us).
fn options<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    values
        .filter(|value| {
            value
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        })
        .flat_map(|value| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// A `Connection` option that names no field to remove: empty, `close`,
/// or one ([`KEEP_ALIVE`], [`UPGRADE`]) that is hop-by-hop anyway.
fn is_usual_option(option: &[u8]) -> bool {
    option.is_empty()
        || option.eq_ignore_ascii_case(b"keep-alive")
        || option.eq_ignore_ascii_case(b"close")
        || option.eq_ignore_ascii_case(b"upgrade")
}

/// Whether a field name (any case) is one of [`HOP_BY_HOP`].
pub(crate) fn is_hop_by_hop_name(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_str().as_bytes()))
}

/// Whether `Connection` values (`connection`) name fields to remove, other
/// than the usual options: once per head, so that
/// [`is_named_by_connection`] is asked per field only when it can say yes.
pub(crate) fn connection_names_fields<'a>(connection: impl Iterator<Item = &'a [u8]>) -> bool {
    options(connection).any(|option| !is_usual_option(option))
}

/// Whether a field name (any case) is named by `Connection` values — as
/// [`strip_hop_by_hop`] reads a map.
pub(crate) fn is_named_by_connection<'a>(
    name: &[u8],
    connection: impl Iterator<Item = &'a [u8]>,
) -> bool {
    !is_usual_option(name) && lists(connection, name)
}

/// The client's address as a header value, made once per connection.
pub(crate) fn client_ip_value(ip: IpAddr) -> HeaderValue {
    let ip = ip.to_canonical();
    // An IP address is always a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Adds the `X-Forwarded-*` and `X-Real-IP` headers to a request going
/// upstream. From a `trusted` peer (a proxy in `trusted_proxies`) the
/// `X-Forwarded-For` chain is extended with the peer and its other
/// forwarding headers are kept (set here only when absent); from anyone
/// else all of them are replaced: a client cannot pose as another address.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    host: Option<&HeaderValue>,
    proto: &HeaderValue,
    trusted: bool,
) {
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut entry) if trusted => {
            let joined = join_forwarded_for(entry.iter(), client_ip);
            entry.insert(joined);
        }
        Entry::Occupied(mut entry) => {
            entry.insert(client_ip.clone());
        }
        Entry::Vacant(entry) => {
            entry.insert(client_ip.clone());
        }
    }
    let set = |headers: &mut HeaderMap, name: &HeaderName, value: Option<&HeaderValue>| {
        if trusted && headers.contains_key(name) {
            return;
        }
        match value {
            Some(value) => headers.insert(name, value.clone()),
            None => headers.remove(name),
        };
    };
    set(headers, &X_REAL_IP, Some(client_ip));
    set(headers, &X_FORWARDED_PROTO, Some(proto));
    set(headers, &X_FORWARDED_HOST, host);
}

/// `<existing X-Forwarded-For values>, <client ip>`.
fn join_forwarded_for<'a>(
    existing: impl Iterator<Item = &'a HeaderValue>,
    client_ip: &HeaderValue,
) -> HeaderValue {
    let mut joined: Vec<u8> = Vec::with_capacity(64);
    for value in existing {
        let value = value.as_bytes().trim_ascii();
        if value.is_empty() {
            continue;
        }
        joined.extend_from_slice(value);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client_ip.as_bytes());
    // Made of valid header values and ", ": valid too.
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
}

/// A client's request as it goes upstream over HTTP/1.1, written out
/// without rewriting its `HeaderMap`: the same rules as
/// [`strip_hop_by_hop`] and [`add_forwarded`] applied while encoding.
pub(crate) struct ProxiedHead<'a> {
    pub(crate) method: &'a Method,
    /// Origin-form target.
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    /// The Host to send: the client's (from the target or its Host header)
    /// or the upstream's address when the client gave none.
    pub(crate) host: Option<&'a HeaderValue>,
    /// The host the client asked for (`X-Forwarded-Host`), if any.
    pub(crate) forwarded_host: Option<&'a HeaderValue>,
    pub(crate) client_ip: &'a HeaderValue,
    /// The peer is a trusted proxy: its forwarding headers are kept and
    /// its `X-Forwarded-For` extended (see [`add_forwarded`]).
    pub(crate) trusted: bool,
    pub(crate) proto: &'a HeaderValue,
    pub(crate) request_id: &'a HeaderValue,
    /// The protocol asked for, when the request asks to switch.
    pub(crate) upgrade: Option<&'a HeaderValue>,
}

/// Headers the proxy sets itself (the client's values are replaced); the
/// forwarding headers of a trusted peer are kept.
fn set_by_proxy(name: &HeaderName, trusted: bool) -> bool {
    *name == HOST
        || *name == EXPECT
        || *name == X_REQUEST_ID
        || *name == X_FORWARDED_FOR
        || (!trusted && is_forwarding(name))
}

/// The forwarding headers a trusted peer's values are kept of.
fn is_forwarding(name: &HeaderName) -> bool {
    *name == X_REAL_IP || *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST
}

impl OutgoingHead for ProxiedHead<'_> {
    fn method(&self) -> &Method {
        self.method
    }

    fn upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    fn encode(&self, out: &mut Vec<u8>, framing: RequestFraming) {
        encode::request_line(out, self.method, self.uri);
        if let Some(host) = self.host {
            header_line(out, b"host", host.as_bytes());
        }
        // Headers a `Connection` header names are hop-by-hop too.
        let named: Vec<HeaderName> = if self.headers.contains_key(&CONNECTION) {
            connection_options(self.headers)
        } else {
            Vec::new()
        };
        // A body is framed by the encoder, from what will be sent.
        let body = framing != RequestFraming::None;
        let mut has_length = false;
        for (name, value) in self.headers {
            if is_hop_by_hop(name) || set_by_proxy(name, self.trusted) || named.contains(name) {
                continue;
            }
            if *name == CONTENT_LENGTH {
                if body {
                    continue;
                }
                has_length = true;
            }
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        self.encode_forwarded(out, &named);
        if let Some(protocol) = self.upgrade {
            out.extend_from_slice(b"connection: upgrade\r\n");
            header_line(out, b"upgrade", protocol.as_bytes());
        }
        encode::end_request_head(out, self.method, framing, has_length);
    }
}

impl ProxiedHead<'_> {
    /// `X-Forwarded-*`, `X-Real-IP` and `X-Request-Id`. A trusted peer's
    /// values are kept unless its `Connection` header `named` them: then
    /// they were meant for this hop only (as [`strip_hop_by_hop`] drops
    /// them on the h2c path).
    fn encode_forwarded(&self, out: &mut Vec<u8>, named: &[HeaderName]) {
        let kept = |name: &HeaderName| {
            self.trusted && self.headers.contains_key(name) && !named.contains(name)
        };
        // X-Forwarded-For: a trusted peer's chain, then the peer.
        out.extend_from_slice(b"x-forwarded-for: ");
        let chain = self.headers.get_all(&X_FORWARDED_FOR);
        for value in chain.iter().filter(|_| kept(&X_FORWARDED_FOR)) {
            let value = value.as_bytes().trim_ascii();
            if !value.is_empty() {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.client_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        // A trusted peer's own values went out with the other headers.
        if !kept(&X_REAL_IP) {
            header_line(out, b"x-real-ip", self.client_ip.as_bytes());
        }
        if !kept(&X_FORWARDED_PROTO) {
            header_line(out, b"x-forwarded-proto", self.proto.as_bytes());
        }
        if let Some(host) = self.forwarded_host.filter(|_| !kept(&X_FORWARDED_HOST)) {
            header_line(out, b"x-forwarded-host", host.as_bytes());
        }
        header_line(out, b"x-request-id", self.request_id.as_bytes());
    }
}

/// The header names a `Connection` header lists, other than the usual
/// `keep-alive` / `close` / `upgrade`.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    let values = headers
        .get_all(&CONNECTION)
        .iter()
        .map(HeaderValue::as_bytes);
    options(values)
        .filter(|option| !is_usual_option(option))
        .filter_map(|option| HeaderName::from_bytes(option).ok())
        .collect()
}

/// The client's `X-Request-Id` if it is sane, else a new random one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        if is_sane_request_id(id.as_bytes()) {
            return id.clone();
        }
    }
    new_request_id()
}

fn is_sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

/// 32 random lowercase hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for byte in id.iter_mut().rev() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_fixed_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret , close"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(
            h.get("x-kept").map(HeaderValue::as_bytes),
            Some(&b"yes"[..])
        );
    }

    #[test]
    fn forwarded_for_appends_client_ip_to_every_existing_value() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static(" 10.0.0.2 "));
        let ip = client_ip_value("127.0.0.1".parse().expect("ip"));
        add_forwarded(
            &mut h,
            &ip,
            Some(&HeaderValue::from_static("example.com")),
            &HTTP,
            true,
        );
        let all: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(
            all,
            vec![&HeaderValue::from_static("10.0.0.1, 10.0.0.2, 127.0.0.1")]
        );
        assert_eq!(h.get(&X_REAL_IP), Some(&ip));
        assert_eq!(h.get(&X_FORWARDED_PROTO), Some(&HTTP));
        assert_eq!(
            h.get(&X_FORWARDED_HOST),
            Some(&HeaderValue::from_static("example.com"))
        );
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_replaced_and_a_trusted_ones_kept() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(&X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        let ip = client_ip_value("127.0.0.2".parse().expect("ip"));
        let mut untrusted = h.clone();
        add_forwarded(&mut untrusted, &ip, None, &HTTP, false);
        assert_eq!(untrusted.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(untrusted.get(&X_FORWARDED_FOR), Some(&ip));
        assert_eq!(untrusted.get(&X_REAL_IP), Some(&ip));
        assert_eq!(untrusted.get(&X_FORWARDED_PROTO), Some(&HTTP));
        assert_eq!(untrusted.get(&X_FORWARDED_HOST), None);
        let mut trusted = h.clone();
        add_forwarded(&mut trusted, &ip, None, &HTTP, true);
        assert_eq!(
            trusted.get(&X_FORWARDED_FOR),
            Some(&HeaderValue::from_static("6.6.6.6, 127.0.0.2"))
        );
        assert_eq!(trusted.get(&X_REAL_IP), h.get(&X_REAL_IP));
        assert_eq!(trusted.get(&X_FORWARDED_PROTO), h.get(&X_FORWARDED_PROTO));
        assert_eq!(trusted.get(&X_FORWARDED_HOST), h.get(&X_FORWARDED_HOST));
    }

    /// Found by the header fuzzer: the HTTP/1.1 path kept a trusted
    /// peer's forwarding headers that its `Connection` named, and then
    /// sent no `X-Real-IP` at all.
    #[test]
    fn a_trusted_peers_forwarding_headers_named_by_connection_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("x-real-ip, x-forwarded-for"),
        );
        h.insert(&X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        let ip = client_ip_value("127.0.0.2".parse().expect("ip"));
        let (method, uri, id) = (
            Method::GET,
            Uri::from_static("/"),
            HeaderValue::from_static("i"),
        );
        let head = ProxiedHead {
            method: &method,
            uri: &uri,
            headers: &h,
            host: None,
            forwarded_host: None,
            client_ip: &ip,
            trusted: true,
            proto: &HTTP,
            request_id: &id,
            upgrade: None,
        };
        let mut out = Vec::new();
        head.encode(&mut out, RequestFraming::None);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("x-real-ip: 127.0.0.2\r\n"), "{text}");
        assert!(text.contains("x-forwarded-for: 127.0.0.2\r\n"), "{text}");
        assert!(!text.contains("6.6.6.6"), "{text}");
    }

    #[test]
    fn ipv4_mapped_client_address_is_shown_as_ipv4() {
        let ip: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client_ip_value(ip), HeaderValue::from_static("192.0.2.7"));
    }

    #[test]
    fn sane_request_id_is_kept_and_insane_one_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), HeaderValue::from_static("abc-123"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has spaces"));
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(200)).expect("value"),
        );
        assert_eq!(request_id(&h).len(), 32);
    }
}
