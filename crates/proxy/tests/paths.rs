//! Routing by Host and path prefix on a real proxy socket, and several apps
//! switched in one published table (release groups).

mod common;

use common::{fast_settings, text, Backend, Client, Proxy};
use cutover_proxy::{AppRoutes, Router, Upstream};
use http::StatusCode;

/// A backend answering `<name> <path and query as received>`.
async fn echoing(name: &'static str) -> Backend {
    Backend::start(
        move |req: http::Request<hyper::body::Incoming>| async move {
            let target = req
                .uri()
                .path_and_query()
                .map_or_else(|| "?".to_string(), ToString::to_string);
            text(StatusCode::OK, format!("{name} {target}"))
        },
    )
    .await
}

fn routes(name: &str, hosts: &[&str], paths: &[&str]) -> AppRoutes {
    AppRoutes {
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
    }
}

#[tokio::test]
async fn the_longest_prefix_of_the_hosts_apps_wins_and_the_path_is_passed_on_unchanged() {
    let names = ["web", "api", "admin", "shop", "docs"];
    let mut backends = Vec::new();
    for name in names {
        backends.push(echoing(name).await);
    }
    let router = Router::with_paths(vec![
        routes("web", &["*"], &[]),
        routes("api", &["*"], &["/api"]),
        routes("admin", &["*"], &["/api/admin"]),
        routes("shop", &["shop.test"], &["/"]),
        routes("docs", &["docs.test"], &["/docs"]),
    ]);
    for (name, backend) in names.iter().zip(&backends) {
        router.set_live(name, Some(Upstream::new(name, "blue", "v1", backend.addr)));
    }
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    let cases = [
        ("example.com", "/", "web /"),
        ("example.com", "/api", "api /api"),
        ("example.com", "/api/", "api /api/"),
        ("example.com", "/api/items?x=1", "api /api/items?x=1"),
        ("example.com", "/apix", "web /apix"),
        ("example.com", "/api/admin/users", "admin /api/admin/users"),
        (
            "example.com",
            "/api/administrator",
            "api /api/administrator",
        ),
        ("shop.test", "/api/items", "shop /api/items"),
        ("SHOP.test:8080", "/", "shop /"),
        ("docs.test", "/docs/intro", "docs /docs/intro"),
    ];
    for (host, path, expected) in cases {
        let reply = client.get(host, path).await.expect("reply");
        assert_eq!(reply.status, StatusCode::OK, "{host}{path}");
        assert_eq!(reply.body, expected, "{host}{path}");
    }
    for (host, path) in [("docs.test", "/"), ("docs.test", "/docsx")] {
        let reply = client.get(host, path).await.expect("reply");
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{host}{path}");
        assert!(reply.body.contains("no app serves path"), "{}", reply.body);
    }
}

#[tokio::test]
async fn a_host_no_app_serves_gets_404() {
    let api = echoing("api").await;
    let router = Router::with_paths(vec![routes("api", &["api.test"], &["/api"])]);
    router.set_live("api", Some(Upstream::new("api", "blue", "v1", api.addr)));
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    let unknown = client.get("other.test", "/api").await.expect("reply");
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(
        unknown.body.contains("no app serves host"),
        "{}",
        unknown.body
    );
    let outside = client.get("api.test", "/other").await.expect("reply");
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    let inside = client.get("api.test", "/api/x").await.expect("reply");
    assert_eq!(inside.body, "api /api/x");
}

#[tokio::test]
async fn apps_switched_in_one_table_are_never_seen_half_switched_by_a_client() {
    let (web1, api1) = (Backend::named("v1").await, Backend::named("v1").await);
    let (web2, api2) = (Backend::named("v2").await, Backend::named("v2").await);
    let router = Router::with_paths(vec![
        routes("web", &["*"], &[]),
        routes("api", &["*"], &["/api"]),
    ]);
    router.set_live("web", Some(Upstream::new("web", "blue", "v1", web1.addr)));
    router.set_live("api", Some(Upstream::new("api", "blue", "v1", api1.addr)));
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut pairs = Vec::new();
            for _ in 0..400 {
                let web = client.get("example.com", "/").await.expect("web").body;
                let api = client.get("example.com", "/api").await.expect("api").body;
                pairs.push((web, api));
            }
            pairs
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let previous = router.set_live_many(&[
        ("web", Some(Upstream::new("web", "green", "v2", web2.addr))),
        ("api", Some(Upstream::new("api", "green", "v2", api2.addr))),
    ]);
    assert_eq!(previous.len(), 2);
    for client in clients {
        let pairs = client.await.expect("client");
        let new = ("v2".to_string(), "v2".to_string());
        let first_new = pairs.iter().position(|p| *p == new).expect("switched");
        assert!(
            pairs[first_new..].iter().all(|p| *p == new),
            "mixed after the switch"
        );
        let half = pairs
            .iter()
            .filter(|(web, api)| web == "v2" && api == "v1")
            .count();
        assert_eq!(half, 0, "new web with old api");
    }
}
