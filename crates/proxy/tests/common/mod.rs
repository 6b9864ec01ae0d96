//! Real servers and clients on loopback for the proxy's integration tests.
#![allow(dead_code)] // each test file uses a different part

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cutover_proxy::{ProxyError, ProxySettings, Router};
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

pub type TestBody = BoxBody<Bytes, Infallible>;
type Handler =
    Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<TestBody>> + Send + Sync>;

/// A real HTTP/1.1 server on 127.0.0.1 answering with `handler`.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests received so far.
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Backend::serve(listener, handler)
    }

    /// A backend listening at `addr` (e.g. a stopped one coming back).
    pub async fn start_at<F, Fut>(addr: SocketAddr, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind backend again");
        Backend::serve(listener, handler)
    }

    fn serve<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let addr = listener.local_addr().expect("backend addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborting it closes every connection.
            let mut tasks = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let reqs = reqs.clone();
                tasks.spawn(async move {
                    let service = service_fn(move |req| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while tasks.try_join_next().is_some() {}
            }
        });
        Backend {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// A backend answering every request with 200 and `name` as the body.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(move |_req| async move { text(StatusCode::OK, name) }).await
    }

    /// Stops accepting and closes every connection, like a stopped process.
    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw TCP server on 127.0.0.1: `serve` is called for each accepted
/// connection, as it is accepted, and its future runs as a task of its own.
/// Aborting the returned task stops accepting.
pub async fn tcp_server<F, Fut>(serve: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream));
        }
    });
    (addr, task)
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response
}

/// A body that yields each chunk sent on the channel and ends when it closes.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// What the proxy tests run on: io_uring (the data plane with the most to
/// prove) where this kernel allows it, else epoll.
pub fn test_io() -> cutover_proxy::Io {
    if cutover_proxy::workers::uring_available() {
        cutover_proxy::Io::Uring
    } else {
        cutover_proxy::Io::Epoll
    }
}

/// A running `cutover_proxy::serve`.
pub struct Proxy {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), ProxyError>>,
}

impl Proxy {
    pub async fn start(router: Router, settings: ProxySettings) -> Proxy {
        Proxy::start_with(router, settings, cutover_proxy::ServeOptions::default()).await
    }

    /// Serving on `count` worker threads of its own, as `cutover serve` does,
    /// on io_uring where the kernel allows it.
    pub async fn start_on_workers(router: Router, settings: ProxySettings, count: usize) -> Proxy {
        Proxy::start_on_workers_with_io(router, settings, count, test_io()).await
    }

    /// Serving on the caller's runtime (no worker threads).
    pub async fn start_on_callers_runtime(router: Router, settings: ProxySettings) -> Proxy {
        Proxy::start_with_options(router, settings, cutover_proxy::ServeOptions::default()).await
    }

    /// Like [`Proxy::start_on_workers`] with the workers on `io`.
    pub async fn start_on_workers_with_io(
        router: Router,
        settings: ProxySettings,
        count: usize,
        io: cutover_proxy::Io,
    ) -> Proxy {
        let workers = cutover_proxy::Workers::start_with(
            std::num::NonZeroUsize::new(count).expect("at least one worker"),
            io,
        )
        .expect("start workers");
        assert_eq!(workers.io(), io, "the workers run on what was asked");
        let options = cutover_proxy::ServeOptions {
            workers: Some(workers),
            ..Default::default()
        };
        Proxy::start_with(router, settings, options).await
    }

    /// Serving with `options`; without workers in them, on one worker
    /// thread on io_uring where the kernel allows it.
    pub async fn start_with(
        router: Router,
        settings: ProxySettings,
        mut options: cutover_proxy::ServeOptions,
    ) -> Proxy {
        if options.workers.is_none() {
            options.workers = Some(
                cutover_proxy::Workers::start_with(std::num::NonZeroUsize::MIN, test_io())
                    .expect("start a worker"),
            );
        }
        Proxy::start_with_options(router, settings, options).await
    }

    async fn start_with_options(
        router: Router,
        settings: ProxySettings,
        options: cutover_proxy::ServeOptions,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cutover_proxy::serve_with(
            listener,
            router,
            settings,
            options,
            async move {
                let _ = rx.await;
            },
        ));
        Proxy {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    /// Signals shutdown; `task` then resolves once in-flight requests end.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Settings with short timeouts so failure tests stay fast.
pub fn fast_settings() -> ProxySettings {
    ProxySettings {
        upstream_connect_timeout: Duration::from_secs(2),
        upstream_response_timeout: Duration::from_secs(10),
        ..ProxySettings::default()
    }
}

/// A router with one app `web` on `"*"`, live on `backend`.
pub fn single_app(addr: SocketAddr) -> (Router, Arc<cutover_proxy::Upstream>) {
    let router = Router::new(vec![("web".into(), vec!["*".into()])]);
    let upstream = cutover_proxy::Upstream::new("web", "blue", "v1", addr);
    router.set_live("web", Some(upstream.clone()));
    (router, upstream)
}

/// One keep-alive client connection to the proxy.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to proxy");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        Client { sender }
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `req` and returns the response head (body not read).
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(req).await
    }

    /// Sends `req` and reads the whole response.
    pub async fn request(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let response = self.send(req).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, hyper::Error> {
        self.request(get(host, path)).await
    }
}

pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// The value of a sample line of this process's proxy metrics starting
/// with `series`.
pub fn metric(series: &str) -> Option<f64> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(cutover_proxy::metrics::collector()));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Reads once more off a raw connection, at most `at_most` bytes, onto
/// `data`, bounded in time; fails if the peer closed first.
pub async fn read_more(stream: &mut TcpStream, data: &mut Vec<u8>, at_most: usize) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; at_most];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("bytes in time")
        .expect("read");
    assert!(n > 0, "closed early: {}", String::from_utf8_lossy(data));
    data.extend_from_slice(&buf[..n]);
}

/// What a raw upstream of [`tcp_server`] reads: one request head (and any
/// bytes that came with it); `None` when the connection ended first.
pub async fn read_request_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head)
}

/// Reads one response whose body is `ok` (from [`Backend::named`]) off a
/// raw connection, bounded in time; returns it whole.
pub async fn read_ok_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    while !data.ends_with(b"\r\n\r\nok") {
        read_more(stream, &mut data, 4096).await;
    }
    let text = String::from_utf8_lossy(&data).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}
