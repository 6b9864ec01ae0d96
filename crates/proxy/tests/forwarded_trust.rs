//! `[proxy] trusted_proxies`: a client's `X-Forwarded-*` and `X-Real-IP`
//! headers are replaced unless the peer is in a trusted block; then the
//! `X-Forwarded-For` chain is extended with the peer and the others are
//! kept. Real sockets: the client binds 127.0.0.1 or 127.0.0.2 before
//! connecting.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{fast_settings, single_app, text, Backend, Proxy};
use cutover_proxy::{Cidr, ProxySettings, TrustedProxies};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A backend answering with the forwarding headers it got, one per line.
async fn forwarding_headers_backend() -> Backend {
    Backend::start(|req| async move {
        let mut out = String::new();
        for name in [
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            for value in req.headers().get_all(name) {
                out.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
        }
        text(StatusCode::OK, out)
    })
    .await
}

/// Sends a request with spoofable forwarding headers from `from`; the
/// backend's view of them.
async fn forwarded_from(proxy: SocketAddr, from: &str) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    let local: IpAddr = from.parse().expect("ip");
    socket.bind(SocketAddr::new(local, 0)).expect("bind client");
    let mut stream = socket.connect(proxy).await.expect("connect");
    let request = "GET / HTTP/1.1\r\nHost: app.example\r\n\
        X-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\n\
        Connection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("answered within 5 s")
        .expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.to_owned()
}

fn trusting(blocks: &[(&str, u8)]) -> ProxySettings {
    let blocks = blocks
        .iter()
        .map(|(ip, prefix)| Cidr::new(ip.parse().expect("ip"), *prefix).expect("block"));
    ProxySettings {
        trusted_proxies: TrustedProxies::new(blocks),
        ..fast_settings()
    }
}

#[tokio::test]
async fn forwarding_headers_from_clients_are_replaced_when_nobody_is_trusted() {
    let backend = forwarding_headers_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let seen = forwarded_from(proxy.addr, "127.0.0.1").await;
    assert_eq!(
        seen,
        "x-forwarded-for: 127.0.0.1\nx-real-ip: 127.0.0.1\n\
         x-forwarded-proto: http\nx-forwarded-host: app.example\n"
    );
}

#[tokio::test]
async fn a_trusted_peer_extends_the_chain_and_keeps_its_headers_and_others_are_replaced() {
    let backend = forwarding_headers_backend().await;
    let (router, _) = single_app(backend.addr);
    let settings = trusting(&[("10.0.0.0", 8), ("127.0.0.1", 32)]);
    let proxy = Proxy::start(router, settings).await;
    let trusted = forwarded_from(proxy.addr, "127.0.0.1").await;
    assert_eq!(
        trusted,
        "x-forwarded-for: 203.0.113.7, 127.0.0.1\nx-real-ip: 203.0.113.7\n\
         x-forwarded-proto: https\nx-forwarded-host: public.example\n"
    );
    let untrusted = forwarded_from(proxy.addr, "127.0.0.2").await;
    assert_eq!(
        untrusted,
        "x-forwarded-for: 127.0.0.2\nx-real-ip: 127.0.0.2\n\
         x-forwarded-proto: http\nx-forwarded-host: app.example\n"
    );
}

#[tokio::test]
async fn a_trusted_peer_without_forwarding_headers_gets_the_proxys_own() {
    let backend = forwarding_headers_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, trusting(&[("127.0.0.0", 8)])).await;
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.3:0".parse().expect("addr"))
        .expect("bind client");
    let mut stream = socket.connect(proxy.addr).await.expect("connect");
    let request = "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.ends_with(
            "\r\n\r\nx-forwarded-for: 127.0.0.3\nx-real-ip: 127.0.0.3\n\
             x-forwarded-proto: http\nx-forwarded-host: app.example\n"
        ),
        "{response}"
    );
}
