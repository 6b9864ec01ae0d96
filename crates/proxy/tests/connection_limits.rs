//! `max_connections` and `max_connections_per_client` against a real proxy
//! on loopback, with clients on several loopback addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{fast_settings, single_app, Backend, Proxy};
use cutover_proxy::{Admission, ServeOptions, TrustedProxies};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MAX_CONNECTIONS: usize = 50;
const PER_CLIENT: usize = 30;
/// Generous bound on anything the proxy does in response.
const PATIENCE: Duration = Duration::from_secs(10);

/// A TCP connection to `proxy` from the loopback address `from`.
async fn connect_from(from: &str, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    let from: IpAddr = from.parse().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(proxy).await.unwrap()
}

/// Sends one keep-alive GET and reads its whole response: the status code,
/// or `None` if the connection closed without one.
async fn get(conn: &mut TcpStream) -> Option<u16> {
    let sent = conn
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    if sent.is_err() {
        return None;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(status) = complete_response(&buf) {
                return Some(status);
            }
            let mut chunk = [0u8; 1024];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.expect("the proxy answered or closed in time")
}

/// The status of a complete response with a `content-length` in `buf`.
fn complete_response(buf: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length).then(|| head[9..12].parse().ok())?
}

/// Whether the proxy closed `conn` (EOF or reset) within the patience.
async fn closed_by_proxy(conn: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(PATIENCE, conn.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whether `conn` is still served.
async fn still_served(conn: &mut TcpStream) -> bool {
    get(conn).await == Some(200)
}

async fn limited_proxy() -> (Backend, Proxy, Admission) {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let admission = Admission::new(MAX_CONNECTIONS, PER_CLIENT, TrustedProxies::default());
    let options = ServeOptions {
        admission: Some(admission.clone()),
        ..ServeOptions::default()
    };
    let proxy = Proxy::start_with(router, fast_settings(), options).await;
    (backend, proxy, admission)
}

/// Opens `count` connections from `from`, one after another, each idle
/// after one request.
async fn open_idle(from: &str, count: usize, proxy: SocketAddr) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut conn = connect_from(from, proxy).await;
        assert_eq!(get(&mut conn).await, Some(200), "from {from}");
        conns.push(conn);
    }
    conns
}

#[tokio::test]
async fn at_max_connections_the_oldest_idle_connections_close_so_a_fresh_client_is_served() {
    let (_backend, proxy, _admission) = limited_proxy().await;
    // 60 idle keep-alive connections for 50 slots: the last ten made room
    // by closing the ten oldest.
    let mut second = open_idle("127.0.0.2", PER_CLIENT, proxy.addr).await;
    let mut third = open_idle("127.0.0.3", PER_CLIENT, proxy.addr).await;
    for (n, conn) in second.iter_mut().take(10).enumerate() {
        assert!(closed_by_proxy(conn).await, "oldest connection {n} closed");
    }

    let mut fresh = connect_from("127.0.0.1", proxy.addr).await;
    assert_eq!(get(&mut fresh).await, Some(200), "a fresh client is served");
    assert!(
        closed_by_proxy(&mut second[10]).await,
        "the oldest idle connection made room for it"
    );
    for conn in second[11..].iter_mut().chain(third.iter_mut()) {
        assert!(still_served(conn).await, "younger connections stay open");
    }
}

#[tokio::test]
async fn a_client_over_its_per_address_limit_is_refused_while_others_are_served() {
    let (_backend, proxy, _admission) = limited_proxy().await;
    let mut third = open_idle("127.0.0.3", PER_CLIENT, proxy.addr).await;

    let mut over = connect_from("127.0.0.3", proxy.addr).await;
    assert_eq!(get(&mut over).await, None, "the 31st from one address");
    let mut other = connect_from("127.0.0.2", proxy.addr).await;
    assert_eq!(get(&mut other).await, Some(200), "another address");
    for conn in &mut third {
        assert!(
            still_served(conn).await,
            "refusing one closed none of its others"
        );
    }

    // Once one of its connections is gone, the address has a slot again.
    drop(third.pop());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut again = connect_from("127.0.0.3", proxy.addr).await;
        if get(&mut again).await == Some(200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn busy_connections_are_never_closed_to_make_room_the_new_one_is_refused() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let admission = Admission::new(3, 0, TrustedProxies::default());
    let options = ServeOptions {
        admission: Some(admission),
        ..ServeOptions::default()
    };
    let proxy = Proxy::start_with(router, fast_settings(), options).await;
    // Connected, first request not sent yet: not idle.
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(connect_from("127.0.0.2", proxy.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = connect_from("127.0.0.1", proxy.addr).await;
    assert_eq!(get(&mut refused).await, None, "no idle connection to close");
    for conn in &mut busy {
        assert!(still_served(conn).await);
    }
}
