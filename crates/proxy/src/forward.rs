//! The per-request path: route by Host, start the request on the app's live
//! upstream, rewrite headers, forward, and stream the response back.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{
    CONNECTION, CONTENT_TYPE, COOKIE, EXPECT, HOST, REFERER, SET_COOKIE, TE, UPGRADE, USER_AGENT,
};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Body;

use crate::access_log::{AccessLog, Entry};
use crate::body::{ClientBody, Exchange, RequestBody, ResponseBody};
use crate::conn_io::{ConnActivity, ConnGuard};
use crate::error::ForwardError;
use crate::headers::ProxiedHead;
use crate::headers::{self, X_REQUEST_ID};
use crate::http1::io::{Prefixed, Upgraded};
use crate::http1::server::NativeUpgrade;
use crate::metrics;
use crate::router::{AppRoute, Router, UpstreamProtocol, PREVIEW_COOKIE, STICKY_COOKIE};
use crate::settings::ProxySettings;
use crate::tunnel::Tunnel;
use crate::upstream::{InFlightGuard, Outgoing, Received, Then, Upstream};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How often a request re-reads the route table when the upstream it picked
/// was retired meanwhile. One re-read suffices when the engine retires only
/// upstreams it has already switched away from.
const MAX_ROUTE_ATTEMPTS: usize = 4;

/// Longest Host echoed in a 404 message.
const MAX_ECHOED_HOST: usize = 100;

/// State shared by every connection of one [`crate::serve`] call.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) settings: ProxySettings,
    pub(crate) access_log: Option<AccessLog>,
    /// Redirect cleartext requests to HTTPS on this port.
    pub(crate) redirect_https: Option<u16>,
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub(crate) proto: HeaderValue,
    /// ACME http-01 tokens answered before routing (plain listeners).
    pub(crate) acme_http01: Option<crate::challenge::Http01Answers>,
}

/// State of one client connection.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: std::net::IpAddr,
    /// The client's IP address, formatted once.
    pub(crate) client_ip: HeaderValue,
    pub(crate) activity: Arc<ConnActivity>,
}

impl ConnCtx {
    pub(crate) fn new(shared: Arc<Shared>, peer: std::net::IpAddr) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            shared,
            peer,
            client_ip: crate::headers::client_ip_value(peer),
            activity: Arc::new(ConnActivity::default()),
        })
    }
}

/// Answers one client request; never fails (errors become responses).
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    active: ConnGuard,
    req: Request<ClientBody>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let request_id = headers::request_id(req.headers());
    let log = ctx
        .shared
        .access_log
        .as_ref()
        .map(|log| (log_entry(&ctx, &req, &request_id), log.clone()));
    let mut active = Some(active);
    // The upstream of a response the proxy made itself after routing.
    let mut served = None;
    let redirect = ctx
        .shared
        .redirect_https
        .filter(|_| !req.uri().path().starts_with(ACME_CHALLENGE));
    let acme_answer = crate::challenge::http01_answer(&ctx.shared, &req);
    let forwarded = match (acme_answer, redirect) {
        (Some(answer), _) => Ok(answer),
        (None, Some(port)) => Ok(redirect_to_https(&req, port)),
        (None, None) => forward(&ctx, req, &request_id, &mut active, &mut served).await,
    };
    let (mut response, metrics) = match forwarded {
        Ok(response) => {
            let metrics = match (served, redirect) {
                (Some(upstream), _) => Some(Arc::clone(upstream.metrics())),
                (None, Some(_)) => Some(metrics::global().slot("-", metrics::NO_SLOT)),
                (None, None) => None,
            };
            (response, metrics)
        }
        Err(e) => {
            tracing::debug!(error = %e, status = %e.status(), "request not proxied");
            let metrics = match served {
                Some(upstream) => Arc::clone(upstream.metrics()),
                None => metrics::global().slot(e.app().unwrap_or("-"), metrics::NO_SLOT),
            };
            (error_response(&e), Some(metrics))
        }
    };
    response.headers_mut().insert(&X_REQUEST_ID, request_id);
    let status = response.status().as_u16();
    let body = response.body_mut();
    body.record(Exchange {
        start,
        status,
        bytes: 0,
        metrics,
        log,
    });
    // An upgraded connection's tunnel took the mark instead.
    if let Some(active) = active {
        body.hold(active);
    }
    response
}

/// Paths never redirected to HTTPS, so that a certificate can be obtained
/// over plain HTTP (ACME HTTP-01).
pub(crate) const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// `308 Permanent Redirect` to the same host and target over HTTPS.
fn redirect_to_https(req: &Request<ClientBody>, port: u16) -> Response<ResponseBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let host = req.headers().get(HOST)?.to_str().ok()?;
            Some(crate::router::host_without_port(host).to_owned())
        });
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        let mut response = Response::new(ResponseBody::full(
            "cutover: HTTPS required; send a Host header\n",
        ));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let mut response = Response::new(ResponseBody::full(format!(
        "cutover: moved to {location}\n"
    )));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// The request's facts for its access log line (the rest is filled in when
/// the response ends).
pub(crate) fn log_entry<B>(
    ctx: &ConnCtx,
    req: &Request<B>,
    request_id: &HeaderValue,
) -> Box<Entry> {
    let headers = req.headers();
    Box::new(Entry {
        time: SystemTime::now(),
        client_ip: ctx.client_ip.clone(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        host: headers.get(HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
        referer: headers.get(REFERER).cloned(),
        user_agent: headers.get(USER_AGENT).cloned(),
        request_id: request_id.clone(),
        status: 0,
        bytes: 0,
        duration: Duration::ZERO,
        app: None,
        upstream: None,
    })
}

/// What a client's upgrade request asked for.
struct UpgradeRequest {
    on_upgrade: oneshot::Receiver<Upgraded>,
    protocol: HeaderValue,
}

/// An HTTP/1.1 request with `Connection: upgrade` and an `Upgrade` header
/// (the HTTP/1.1 server marked it): takes its upgrade handle (then the
/// protocol is switched once a 101 response has been sent).
fn take_upgrade(req: &mut Request<ClientBody>) -> Option<UpgradeRequest> {
    let handle = req.extensions_mut().remove::<NativeUpgrade>()?;
    let protocol = req.headers().get(UPGRADE)?.clone();
    Some(UpgradeRequest {
        on_upgrade: handle.take()?,
        protocol,
    })
}

async fn forward(
    ctx: &ConnCtx,
    mut req: Request<ClientBody>,
    request_id: &HeaderValue,
    active: &mut Option<ConnGuard>,
    served: &mut Option<Arc<Upstream>>,
) -> Result<Response<ResponseBody>, ForwardError> {
    let settings = &ctx.shared.settings;
    refuse_early(&req, settings)?;
    let upgrade = take_upgrade(&mut req);
    let (parts, body) = req.into_parts();
    let host = requested_host(&parts.uri, &parts.headers);
    let (in_flight, sticky, protocol) = match start_on_reserved(ctx, parts.uri.path()) {
        Some(started) => (started?, None, UpstreamProtocol::Http1),
        None => start_on_live(
            ctx,
            host.as_ref().and_then(|h| h.to_str().ok()),
            parts.uri.path(),
            &parts.headers,
        )?,
    };
    let upstream = Arc::clone(in_flight.upstream());
    let body = RequestBody::new(body, settings.max_body);
    let sent = match protocol {
        UpstreamProtocol::H2c => {
            let req = h2_request(ctx, parts, body, host.as_ref(), request_id, &upstream);
            upstream.send(Outgoing::Http2(req), settings).await
        }
        UpstreamProtocol::Http1 => {
            let head = proxied_head(ctx, &parts, host.as_ref(), request_id, &upstream);
            let head = ProxiedHead {
                upgrade: upgrade.as_ref().map(|u| &u.protocol),
                ..head
            };
            let body = Some(body);
            upstream
                .send(Outgoing::Http1 { head: &head, body }, settings)
                .await
        }
    };
    *served = Some(Arc::clone(&upstream));
    match sent {
        Ok(received) => respond(received, in_flight, sticky, upgrade, active),
        Err(e) => {
            if e.is_upstream_fault() {
                upstream.count_5xx();
            }
            Err(e)
        }
    }
}

/// Requests refused before routing: CONNECT, and a body whose declared
/// length is over the limit.
fn refuse_early(req: &Request<ClientBody>, settings: &ProxySettings) -> Result<(), ForwardError> {
    if req.method() == Method::CONNECT {
        return Err(ForwardError::MethodNotSupported {
            method: Method::CONNECT,
        });
    }
    // A declared Content-Length is the body's exact size hint.
    if req.body().size_hint().lower() > settings.max_body {
        return Err(ForwardError::BodyTooLarge {
            limit: settings.max_body,
        });
    }
    Ok(())
}

/// The host the client asked for: the authority of an absolute-form
/// target overrides the Host header.
pub(crate) fn requested_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    match uri.authority() {
        Some(authority) => {
            let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
            HeaderValue::from_str(host_port).ok()
        }
        None => headers.get(HOST).cloned(),
    }
}

/// Whether the connection's peer is in `trusted_proxies`. Free when the
/// list is empty (the default); else the peer's address is read back from
/// its header value (made once per connection from the socket's address).
fn peer_is_trusted(ctx: &ConnCtx) -> bool {
    let trusted = &ctx.shared.settings.trusted_proxies;
    !trusted.is_empty()
        && ctx
            .client_ip
            .to_str()
            .ok()
            .and_then(|ip| ip.parse().ok())
            .is_some_and(|ip| trusted.trusts(ip))
}

/// The request as it goes to an HTTP/1.1 upstream (forwarding headers
/// applied while encoding; an absolute-form target is written in origin
/// form).
pub(crate) fn proxied_head<'a>(
    ctx: &'a ConnCtx,
    parts: &'a http::request::Parts,
    host: Option<&'a HeaderValue>,
    request_id: &'a HeaderValue,
    upstream: &'a Upstream,
) -> ProxiedHead<'a> {
    ProxiedHead {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        host: host.or(upstream.fallback_host()),
        forwarded_host: host,
        client_ip: &ctx.client_ip,
        trusted: peer_is_trusted(ctx),
        proto: &ctx.shared.proto,
        request_id,
        upgrade: None,
    }
}

/// The request as it goes to an HTTP/2 (h2c) upstream: the headers
/// rewritten in place, the authority as `:authority`.
fn h2_request(
    ctx: &ConnCtx,
    mut parts: http::request::Parts,
    body: RequestBody,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
    upstream: &Upstream,
) -> Request<RequestBody> {
    // gRPC needs `TE: trailers` to reach the server.
    let trailers = parts
        .headers
        .get_all(TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("trailers")));
    headers::strip_hop_by_hop(&mut parts.headers);
    // The HTTP/1.1 server already answered `Expect: 100-continue`.
    parts.headers.remove(EXPECT);
    // The authority travels as `:authority`, not as a Host header.
    parts.headers.remove(HOST);
    headers::add_forwarded(
        &mut parts.headers,
        &ctx.client_ip,
        host,
        &ctx.shared.proto,
        peer_is_trusted(ctx),
    );
    parts.headers.insert(&X_REQUEST_ID, request_id.clone());
    parts.uri = h2_target(
        &parts.uri,
        host.or(upstream.fallback_host()),
        upstream.addr(),
    );
    parts.version = Version::HTTP_2;
    if trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    Request::from_parts(parts, body)
}

/// The one response path: the upstream's head with hop-by-hop headers
/// stripped and the sticky cookie added, and its body streamed (holding
/// the request's in-flight count); or, after a 101, the tunnel.
fn respond(
    received: Received,
    mut in_flight: InFlightGuard,
    sticky: Option<HeaderValue>,
    upgrade: Option<UpgradeRequest>,
    active: &mut Option<ConnGuard>,
) -> Result<Response<ResponseBody>, ForwardError> {
    in_flight.answered_by(received.endpoint);
    let (mut parts, ()) = received.head.into_parts();
    let source = match received.then {
        Then::Body(source) => source,
        Then::Switched(io) => {
            return match upgrade {
                Some(upgrade) => Ok(switch_protocols(parts, io, upgrade, in_flight, active)),
                None => Err(ForwardError::UnexpectedSwitch {
                    app: in_flight.upstream().app_name(),
                }),
            }
        }
    };
    if received.hop_by_hop {
        headers::strip_hop_by_hop(&mut parts.headers);
    }
    if let Some(cookie) = sticky {
        parts.headers.append(SET_COOKIE, cookie);
    }
    if parts.status.is_server_error() {
        in_flight.upstream().count_5xx();
    }
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(source, in_flight),
    ))
}

/// The upstream agreed to switch protocols: answers the client with the
/// 101 and starts the tunnel that joins both connections once switched.
fn switch_protocols(
    mut parts: http::response::Parts,
    upstream_io: Prefixed<TcpStream>,
    upgrade: UpgradeRequest,
    in_flight: InFlightGuard,
    active: &mut Option<ConnGuard>,
) -> Response<ResponseBody> {
    let protocol = parts
        .headers
        .get(UPGRADE)
        .cloned()
        .unwrap_or(upgrade.protocol);
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
    parts.headers.insert(UPGRADE, protocol);
    let tunnel = Tunnel {
        client: upgrade.on_upgrade,
        upstream: upstream_io,
        websocket,
        registration: in_flight.upstream().open_tunnel(),
        in_flight,
        conn: active.take(),
    };
    tokio::spawn(tunnel.run());
    Response::from_parts(parts, ResponseBody::empty())
}

/// Pre-routing: a path cutover serves itself ahead of every app (the
/// webhook receiver under `[webhook] path_prefix`) starts on that upstream,
/// like a request to an app's release; `None` for every other path. The
/// receiver answers on the control plane's runtime: nothing here waits on
/// it beyond the forwarded request.
pub(crate) fn start_on_reserved(
    ctx: &ConnCtx,
    path: &str,
) -> Option<Result<InFlightGuard, ForwardError>> {
    let table = ctx.shared.router.load();
    let upstream = table.reserved_for(path)?;
    Some(
        upstream
            .try_begin()
            .ok_or_else(|| ForwardError::NoLiveRelease {
                app: upstream.app_name(),
            }),
    )
}

/// Starts the request on the upstream of the app serving `path` on `host`:
/// the live one, or the previewed or shifted-to release when the request asks for it
/// or falls in its share. Also returns the sticky cookie to set, if any.
pub(crate) fn start_on_live(
    ctx: &ConnCtx,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Result<(InFlightGuard, Option<HeaderValue>, UpstreamProtocol), ForwardError> {
    let mut app = None;
    for _ in 0..MAX_ROUTE_ATTEMPTS {
        let table = ctx.shared.router.load();
        let Some(route) = table.route(host, path) else {
            return Err(no_route(&table, host, path));
        };
        let (chosen, sticky) = choose(route, headers);
        let Some(upstream) = chosen else {
            return Err(ForwardError::NoLiveRelease {
                app: route.name.clone(),
            });
        };
        if let Some(guard) = upstream.try_begin() {
            return Ok((guard, sticky, route.protocol));
        }
        // Retired after we loaded the table: the engine has switched; reload.
        app = Some(route.name.clone());
    }
    let app = app.unwrap_or_else(|| Arc::from(""));
    tracing::warn!(%app, "the live upstream is retired; publish a new Upstream instead");
    Err(ForwardError::NoLiveRelease { app })
}

/// [`start_on_live`] for a request the io_uring loop may serve itself
/// (see `ring`): `None` when it goes elsewhere than to an app spoken to
/// over HTTP/1.1 (a reserved path, an h2c app); the full path serves those.
pub(crate) fn start_on_http1_app(
    ctx: &ConnCtx,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Option<Result<(InFlightGuard, Option<HeaderValue>), ForwardError>> {
    {
        let table = ctx.shared.router.load();
        if table.reserved_for(path).is_some()
            || table
                .route(host, path)
                .is_some_and(|route| route.protocol != UpstreamProtocol::Http1)
        {
            return None;
        }
    }
    Some(start_on_live(ctx, host, path, headers).map(|(guard, sticky, _)| (guard, sticky)))
}

/// Picks the upstream for one request. The common case (no preview, no
/// shift) looks at no header at all.
fn choose<'a>(
    route: &'a AppRoute,
    headers: &HeaderMap,
) -> (Option<&'a Arc<Upstream>>, Option<HeaderValue>) {
    if let Some(preview) = &route.preview {
        let asked = headers
            .get(&preview.header)
            .is_some_and(|v| v.as_bytes() == b"1")
            || cookie(headers, PREVIEW_COOKIE).is_some_and(|v| v == "1");
        if asked {
            return (Some(&preview.upstream), None);
        }
    }
    let Some(canary) = &route.canary else {
        return (route.live.as_ref(), None);
    };
    let Some(live) = &route.live else {
        return (Some(&canary.upstream), None);
    };
    match cookie(headers, STICKY_COOKIE) {
        Some(slot) if slot == canary.upstream.slot() => return (Some(&canary.upstream), None),
        Some(slot) if slot == live.slot() => return (Some(live), None),
        _ => {}
    }
    let chosen = if fastrand::u8(0..100) < canary.percent {
        &canary.upstream
    } else {
        live
    };
    let cookie = HeaderValue::from_str(&format!(
        "{STICKY_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
        chosen.slot()
    ))
    .ok();
    (Some(chosen), cookie)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value.trim())
        })
}

/// 404: no app has the host, or none of its apps has a prefix of the path.
fn no_route(table: &crate::router::RouteTable, host: Option<&str>, path: &str) -> ForwardError {
    match table.has_host(host) {
        false => ForwardError::NoApp {
            host: echoed_host(host),
        },
        true => ForwardError::NoPath {
            host: echoed_host(host),
            // A URI's path is ASCII: any byte is a boundary.
            path: path[..path.len().min(MAX_ECHOED_HOST)].to_owned(),
        },
    }
}

fn echoed_host(host: Option<&str>) -> String {
    let host = host.unwrap_or("");
    // Header values that passed `to_str` are ASCII: any byte is a boundary.
    host[..host.len().min(MAX_ECHOED_HOST)].to_owned()
}

/// The absolute target of a request sent over HTTP/2: `http://` + the
/// client's host (else the upstream's address) + path and query.
fn h2_target(uri: &Uri, host: Option<&HeaderValue>, addr: std::net::SocketAddr) -> Uri {
    let path = match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        _ => PathAndQuery::from_static("/"),
    };
    let authority = uri
        .authority()
        .cloned()
        .or_else(|| host.and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok()))
        .or_else(|| http::uri::Authority::try_from(addr.to_string().as_str()).ok());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = authority;
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

pub(crate) fn error_response(e: &ForwardError) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(format!("cutover: {e}\n")));
    *response.status_mut() = e.status();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if matches!(
        e,
        ForwardError::BodyTooLarge { .. } | ForwardError::ClientBody
    ) {
        // The rest of the body is not read: do not reuse the connection.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_host_is_bounded() {
        let long = "a".repeat(500);
        assert_eq!(echoed_host(Some(&long)).len(), MAX_ECHOED_HOST);
        assert_eq!(echoed_host(None), "");
    }
}
