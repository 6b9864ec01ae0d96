//! `cutover-testapp`: a tiny HTTP/1.1 keep-alive server used by cutover's
//! tests, the README example and the benchmarks. See `--help` (args.rs).

mod args;
mod body;

use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use args::{Args, ParseOutcome};
use body::Body;

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Everything a request handler reads; leaked once at startup so handlers
/// share it by `&'static` (no refcount traffic between worker threads).
struct State {
    args: Args,
    /// `version=<V>\n`, built once.
    root_body: Bytes,
    /// `version=<V> error=injected\n`, for `--fail-ratio`.
    fail_body: Bytes,
    health_body: Bytes,
    /// 64 KiB of `x`, sliced for `/bytes`.
    chunk: Bytes,
    root_count: AtomicU64,
    listening_since: Instant,
}

fn main() -> ExitCode {
    let argv: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let parsed = match argv {
        Ok(argv) => args::parse(argv, std::env::var("PORT").ok()),
        Err(bad) => Err(args::ArgError(format!(
            "argument {bad:?} is not valid UTF-8"
        ))),
    };
    let args = match parsed {
        Ok(ParseOutcome::Run(a)) => *a,
        Ok(ParseOutcome::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cutover-testapp: {e}");
            eprintln!("usage: cutover-testapp --port N [options] (see --help)");
            return ExitCode::from(2);
        }
    };

    if let Some(code) = args.exit_at_start {
        eprintln!("testapp: exiting at start as asked (code {code})");
        return ExitCode::from(code as u8);
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testapp: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Run the server as a task so that it, too, lives on the worker threads
    // (the main thread only waits).
    match rt.block_on(rt.spawn(run(args))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testapp: server task failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// 127.0.0.1 unless env LISTEN_HOST says otherwise: in a container
/// (cutover-bench's swarm mode) a published port reaches only a listener
/// on the container's own addresses, e.g. 0.0.0.0.
fn listen_host() -> Result<IpAddr, String> {
    match std::env::var("LISTEN_HOST") {
        Err(_) => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Ok(text) => text.parse().map_err(|_| text),
    }
}

async fn run(args: Args) -> ExitCode {
    // Signals are hooked before anything else so that a SIGTERM during the
    // start delay or right after the "listening" line is handled.
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("testapp: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let ignore_term = args.ignore_sigterm;

    if let Some(ms) = args.start_delay_ms {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = next_signal(&mut sigterm, &mut sigint, ignore_term) => {
                eprintln!("testapp: shutting down (before listening)");
                return ExitCode::SUCCESS;
            }
        }
    }

    let addr = match listen_host() {
        Ok(host) => SocketAddr::new(host, args.port),
        Err(bad) => {
            eprintln!("testapp: LISTEN_HOST is not an IP address: {bad:?}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testapp: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(args.port);
    let state = State::leak(args);
    announce(state, port);

    // Every connection task holds a receiver; shutdown flips the value and
    // waits until all receivers are gone (i.e. all connections finished).
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    serve_until_signal(
        &listener,
        state,
        &shutdown_rx,
        next_signal(&mut sigterm, &mut sigint, ignore_term),
    )
    .await;

    eprintln!("testapp: shutting down");
    drop(listener);
    drop(shutdown_rx);
    shutdown_tx.send_replace(true);
    tokio::select! {
        _ = shutdown_tx.closed() => ExitCode::SUCCESS,
        _ = next_signal(&mut sigterm, &mut sigint, ignore_term) => {
            eprintln!("testapp: second signal, exiting now");
            ExitCode::from(1)
        }
    }
}

impl State {
    /// The state of a server that listens now, shared for the rest of the
    /// process.
    fn leak(args: Args) -> &'static State {
        Box::leak(Box::new(State {
            root_body: Bytes::from(format!("version={}\n", args.version)),
            fail_body: Bytes::from(format!("version={} error=injected\n", args.version)),
            health_body: Bytes::from(args.health_body.clone()),
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            root_count: AtomicU64::new(0),
            listening_since: Instant::now(),
            args,
        }))
    }
}

/// The "listening" line tests wait for, then the `--exit-after` timer.
fn announce(state: &'static State, port: u16) {
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "cutover-testapp {} listening on 127.0.0.1:{port}",
            state.args.version
        );
        let _ = out.flush();
    }
    if let Some(ms) = state.args.exit_after_ms {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("testapp: exiting after {ms} ms as asked (code 1)");
            std::process::exit(1);
        });
    }
}

/// Accepts connections, each served on its own task, until `stop` resolves.
async fn serve_until_signal(
    listener: &TcpListener,
    state: &'static State,
    shutdown: &watch::Receiver<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    let http: &'static http1::Builder = Box::leak(Box::new({
        let mut b = http1::Builder::new();
        b.keep_alive(true);
        b
    }));
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    tokio::spawn(serve_conn(stream, state, http, shutdown.clone()));
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    eprintln!("testapp: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// The next SIGTERM or SIGINT (only SIGINT with `--ignore-sigterm`).
async fn next_signal(term: &mut Signal, int: &mut Signal, ignore_term: bool) {
    loop {
        tokio::select! {
            _ = term.recv() => if !ignore_term { return },
            _ = int.recv() => return,
        }
    }
}

async fn serve_conn(
    stream: TcpStream,
    state: &'static State,
    http: &'static http1::Builder,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| async move { Ok::<_, Infallible>(handle(state, req).await) });
    let mut conn = pin!(http
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades());
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
            // Idle keep-alive connections close now; one with a request in
            // flight finishes it (with `Connection: close`) and then closes.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn text(status: StatusCode, body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, TEXT);
    res
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// An integer query parameter, or the 400 response to answer instead
/// (boxed: the error path is rare and a `Response` is large).
fn num_param(query: Option<&str>, name: &str) -> Result<u64, Box<Response<Body>>> {
    query_param(query, name)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            Box::new(text(
                StatusCode::BAD_REQUEST,
                Body::Full(Some(Bytes::from(format!(
                    "bad or missing query parameter {name} (an integer)\n"
                )))),
            ))
        })
}

async fn handle(st: &'static State, req: Request<Incoming>) -> Response<Body> {
    let path = unmounted(req.uri().path(), st.args.mount.as_deref());
    if path == st.args.health_path {
        return health(st);
    }
    let query = req.uri().query();
    match path {
        "/" => root(st),
        "/slow" => slow(st, query).await,
        "/echo" => echo(req),
        "/count" => count(st, req).await,
        "/headers" => headers(&req),
        "/bytes" => bytes(st, query),
        "/status" => status(query),
        "/sse" => sse(st, query),
        "/upgrade" => upgrade(req),
        "/ws" => websocket(st, req),
        _ => text(StatusCode::NOT_FOUND, Body::from_static("not found\n")),
    }
}

/// The route of `path` under `--mount` (`/api` → `/`, `/api/x` → `/x`).
fn unmounted<'p>(path: &'p str, mount: Option<&str>) -> &'p str {
    match mount.and_then(|mount| path.strip_prefix(mount)) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// `version=<V>`, or a 500 for the requests `--fail-ratio` picks.
fn root(st: &'static State) -> Response<Body> {
    let n = st.root_count.fetch_add(1, Ordering::Relaxed) + 1;
    if args::should_fail(n, st.args.fail_ratio) {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            Body::Full(Some(st.fail_body.clone())),
        )
    } else {
        text(StatusCode::OK, Body::Full(Some(st.root_body.clone())))
    }
}

async fn slow(st: &'static State, query: Option<&str>) -> Response<Body> {
    let ms = match num_param(query, "ms") {
        Ok(ms) => ms,
        Err(res) => return *res,
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let body = format!("version={} slept={ms}\n", st.args.version);
    text(StatusCode::OK, Body::Full(Some(Bytes::from(body))))
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let ct = req.headers().get(CONTENT_TYPE).cloned();
    let mut res = Response::new(Body::Echo(req.into_body()));
    res.headers_mut().insert(
        CONTENT_TYPE,
        ct.unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    res
}

/// Reads the body frame by frame, keeping nothing.
async fn count(st: &'static State, req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut total = 0u64;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        match frame {
            Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    Body::Full(Some(Bytes::from(format!("reading the body failed: {e}\n")))),
                )
            }
        }
    }
    let body = format!("version={} bytes={total}\n", st.args.version);
    text(StatusCode::OK, Body::Full(Some(Bytes::from(body))))
}

fn headers(req: &Request<Incoming>) -> Response<Body> {
    let mut out = String::with_capacity(512);
    for (name, value) in req.headers() {
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        out.push('\n');
    }
    text(StatusCode::OK, Body::Full(Some(Bytes::from(out))))
}

fn bytes(st: &'static State, query: Option<&str>) -> Response<Body> {
    match num_param(query, "n") {
        Ok(n) => {
            let mut res = Response::new(Body::Repeat {
                chunk: st.chunk.clone(),
                remaining: n,
            });
            res.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        Err(res) => *res,
    }
}

fn status(query: Option<&str>) -> Response<Body> {
    match num_param(query, "code")
        .ok()
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(code) if code.as_u16() >= 200 => text(
            code,
            Body::Full(Some(Bytes::from(format!("status={}\n", code.as_u16())))),
        ),
        _ => text(
            StatusCode::BAD_REQUEST,
            Body::from_static("bad or missing query parameter code (200-999)\n"),
        ),
    }
}

fn health(st: &'static State) -> Response<Body> {
    if let Some(ms) = st.args.healthy_after_ms {
        if st.listening_since.elapsed() < Duration::from_millis(ms) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                Body::from_static("starting\n"),
            );
        }
    }
    let status = StatusCode::from_u16(st.args.health_status).unwrap_or(StatusCode::OK);
    text(status, Body::Full(Some(st.health_body.clone())))
}

fn sse(st: &'static State, query: Option<&str>) -> Response<Body> {
    let (n, ms) = match (num_param(query, "n"), num_param(query, "ms")) {
        (Ok(n), Ok(ms)) => (n, ms),
        (Err(res), _) | (_, Err(res)) => return *res,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let version = st.args.version.clone();
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let event = format!("id: {i}\ndata: version={version} event={i}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                return; // client went away
            }
        }
    });
    let mut res = Response::new(Body::Stream(rx));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    res
}

/// Whether the request's `Connection` header lists `upgrade`.
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A WebSocket echo server (RFC 6455, via tungstenite): text and binary
/// messages come back unchanged, pings are answered. The 101 response
/// carries `x-testapp-version`; a close frame from the peer is reported on
/// stderr with its code (`websocket closed by peer: 1001 going away`).
fn websocket(st: &'static State, mut req: Request<Incoming>) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::{Message, Role};

    let is_websocket = wants_upgrade(&req)
        && req
            .headers()
            .get(UPGRADE)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get("sec-websocket-key").cloned();
    let (true, Some(key)) = (is_websocket, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            Body::from_static(
                "/ws needs a WebSocket handshake (Upgrade: websocket, Sec-WebSocket-Key)\n",
            ),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(message) = ws.next().await {
            match message {
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(frame)) => match frame {
                    // tungstenite answers the close frame by itself.
                    Some(frame) => eprintln!(
                        "testapp: websocket closed by peer: {} {}",
                        u16::from(frame.code),
                        frame.reason
                    ),
                    None => eprintln!("testapp: websocket closed by peer without a code"),
                },
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", accept);
    }
    if let Ok(version) = HeaderValue::from_str(&st.args.version) {
        h.insert("x-testapp-version", version);
    }
    res
}

/// `Connection: upgrade` + `Upgrade: <anything>` → 101, then the raw bytes
/// sent by the client are echoed back until it closes. Good enough to test
/// that a proxy tunnels upgraded connections (and drains them) without a
/// WebSocket implementation.
fn upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let proto = match req.headers().get(UPGRADE) {
        Some(p) if wants_upgrade(&req) => p.clone(),
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                Body::from_static("/upgrade needs `Connection: upgrade` and an `Upgrade` header\n"),
            )
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    res.headers_mut().insert(UPGRADE, proto);
    res
}
