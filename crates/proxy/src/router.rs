//! The route table: which app serves a Host, and which upstream is live for
//! each app. Readers (every request) load it lock-free; the engine publishes
//! a whole new table for every change.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderName;

use crate::upstream::Upstream;

/// An immutable snapshot of the routes.
#[derive(Debug)]
pub(crate) struct RouteTable {
    hosts: Arc<HostIndex>,
    apps: Box<[AppRoute]>,
    /// A path prefix cutover serves itself on every host, ahead of the apps.
    reserved: Option<Arc<ReservedPath>>,
}

/// Requests under `prefix` (the prefix itself, or it followed by `/`) go
/// to `upstream` whatever their Host: the webhook receiver under
/// `[webhook] path_prefix`.
#[derive(Debug)]
pub(crate) struct ReservedPath {
    prefix: Box<str>,
    upstream: Arc<Upstream>,
}

/// Host → app index; fixed at [`Router::new`], shared by every snapshot.
#[derive(Debug, Default)]
struct HostIndex {
    /// Lowercase host names without port.
    exact: HashMap<Box<str>, usize>,
    /// The app with the `"*"` pattern.
    default: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct AppRoute {
    pub(crate) name: Arc<str>,
    pub(crate) live: Option<Arc<Upstream>>,
    /// A release being previewed: requests that ask for it reach it.
    pub(crate) preview: Option<Arc<Preview>>,
    /// A release receiving a share of new clients (gradual shifting).
    pub(crate) canary: Option<Canary>,
    /// How requests reach this app's releases.
    pub(crate) protocol: UpstreamProtocol,
}

/// The protocol spoken to an app's releases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with pooled keep-alive connections (the default).
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (e.g. gRPC servers): one
    /// multiplexed connection per release; `TE: trailers` is passed on.
    H2c,
}

/// Cookie that asks for the release being previewed (`cutover-preview=1`).
pub const PREVIEW_COOKIE: &str = "cutover-preview";
/// Cookie that keeps a client on one release while traffic shifts.
pub const STICKY_COOKIE: &str = "cutover-release";

/// A release reachable, before the switch, by requests carrying
/// `<header>: 1` or the cookie [`PREVIEW_COOKIE`]`=1`.
#[derive(Debug)]
pub struct Preview {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) header: HeaderName,
}

impl Preview {
    /// `None` when `header` is not a valid header name.
    pub fn new(upstream: Arc<Upstream>, header: &str) -> Option<Preview> {
        let header = HeaderName::from_bytes(header.as_bytes()).ok()?;
        Some(Preview { upstream, header })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Canary {
    pub(crate) upstream: Arc<Upstream>,
    /// Share of new clients sent to it, 0-100.
    pub(crate) percent: u8,
}

impl RouteTable {
    /// The app serving `host` (a Host header value or URI authority; the port
    /// is ignored, case too). No host, or an unknown one: the `"*"` app.
    pub(crate) fn route(&self, host: Option<&str>) -> Option<&AppRoute> {
        let index = match host.map(host_without_port) {
            Some(host) if !host.is_empty() => self.lookup(host).or(self.hosts.default),
            _ => self.hosts.default,
        }?;
        self.apps.get(index)
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts
                .exact
                .get(host.to_ascii_lowercase().as_str())
                .copied()
        } else {
            self.hosts.exact.get(host).copied()
        }
    }

    fn app(&self, name: &str) -> Option<&AppRoute> {
        self.apps.iter().find(|a| &*a.name == name)
    }

    /// The upstream of the reserved prefix, when `path` is under it
    /// (`/_cutover/hooks` and `/_cutover/hooks/…`, not `/_cutover/hooksx`).
    pub(crate) fn reserved_for(&self, path: &str) -> Option<&Arc<Upstream>> {
        let reserved = self.reserved.as_ref()?;
        let rest = path.strip_prefix(&*reserved.prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(&reserved.upstream)
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub(crate) fn host_without_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The route-table handle, shared by the engine (writer) and every
/// connection (readers). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    table: Arc<ArcSwap<RouteTable>>,
}

impl Router {
    /// `apps`: each app's name and host patterns. A pattern is an exact host
    /// (`"example.com"`, matched case-insensitively, port ignored) or `"*"`:
    /// the app for requests no exact host matches. No app is live yet.
    ///
    /// A host (or `"*"`) claimed by two apps goes to the first; validating
    /// the configuration is the caller's job.
    pub fn new(apps: Vec<(String, Vec<String>)>) -> Router {
        let mut hosts = HostIndex::default();
        let mut routes = Vec::with_capacity(apps.len());
        for (index, (name, patterns)) in apps.into_iter().enumerate() {
            for pattern in patterns {
                let pattern = pattern.trim();
                if pattern == "*" {
                    if hosts.default.is_none() {
                        hosts.default = Some(index);
                    } else {
                        tracing::warn!(app = %name, "another app already has the \"*\" host; ignored");
                    }
                    continue;
                }
                let host = host_without_port(pattern);
                let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                if hosts.exact.contains_key(host.as_str()) {
                    tracing::warn!(app = %name, %host, "another app already has this host; ignored");
                    continue;
                }
                hosts.exact.insert(host.into_boxed_str(), index);
            }
            routes.push(AppRoute {
                name: Arc::from(name),
                live: None,
                preview: None,
                canary: None,
                protocol: UpstreamProtocol::Http1,
            });
        }
        let table = RouteTable {
            hosts: Arc::new(hosts),
            apps: routes.into_boxed_slice(),
            reserved: None,
        };
        Router {
            table: Arc::new(ArcSwap::from_pointee(table)),
        }
    }

    /// Atomically publishes a table in which `app`'s live upstream is
    /// `upstream`, and returns the previous one. Once this returns, every new
    /// request for the app (also on existing keep-alive connections) goes to
    /// `upstream`. Safe to call concurrently for different apps: no update is
    /// lost. An unknown app changes nothing and returns `None`.
    pub fn set_live(&self, app: &str, upstream: Option<Arc<Upstream>>) -> Option<Arc<Upstream>> {
        // A gradual shift ends with the switch.
        self.update(app, |route| {
            route.canary = None;
            std::mem::replace(&mut route.live, upstream.clone())
        })
        .flatten()
    }

    /// Publishes (or, with `None`, withdraws) the release being previewed.
    pub fn set_preview(&self, app: &str, preview: Option<Preview>) {
        let preview = preview.map(Arc::new);
        self.update(app, |route| route.preview = preview.clone());
    }

    /// Sends `percent`% of new clients to `upstream`, keeping each client on
    /// the release it got (cookie [`STICKY_COOKIE`]); `None` ends the shift.
    pub fn set_canary(&self, app: &str, canary: Option<(Arc<Upstream>, u8)>) {
        let canary = canary.map(|(upstream, percent)| Canary {
            upstream,
            percent: percent.min(100),
        });
        self.update(app, |route| route.canary = canary.clone());
    }

    /// Sets the protocol spoken to `app`'s releases (HTTP/1.1 by default).
    pub fn set_upstream_protocol(&self, app: &str, protocol: UpstreamProtocol) {
        self.update(app, |route| route.protocol = protocol);
    }

    /// Sends every request whose path is `prefix` or under `prefix/` to
    /// `upstream`, on every host and ahead of the apps (the webhook
    /// receiver); `None` gives the paths back to the apps.
    pub fn set_reserved_path(&self, prefix: &str, upstream: Option<Arc<Upstream>>) {
        let reserved = upstream.map(|upstream| {
            Arc::new(ReservedPath {
                prefix: prefix.trim_end_matches('/').into(),
                upstream,
            })
        });
        self.table.rcu(|current| RouteTable {
            hosts: Arc::clone(&current.hosts),
            apps: current.apps.clone(),
            reserved: reserved.clone(),
        });
    }

    /// Publishes a table in which `change` was applied to `app`'s route;
    /// returns what `change` returned for the table that was replaced.
    fn update<T>(&self, app: &str, mut change: impl FnMut(&mut AppRoute) -> T) -> Option<T> {
        let mut result = None;
        self.table.rcu(|current| {
            let mut apps = current.apps.to_vec();
            result = apps.iter_mut().find(|a| &*a.name == app).map(&mut change);
            RouteTable {
                hosts: Arc::clone(&current.hosts),
                apps: apps.into_boxed_slice(),
                reserved: current.reserved.clone(),
            }
        });
        if result.is_none() {
            tracing::warn!(%app, "route update for an app the router does not know; ignored");
        }
        result
    }

    /// The live upstream of `app`, if any.
    pub fn live(&self, app: &str) -> Option<Arc<Upstream>> {
        self.table
            .load()
            .app(app)
            .and_then(|route| route.live.clone())
    }

    /// The current snapshot (lock-free).
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.table.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(vec![
            ("web".into(), vec!["*".into()]),
            (
                "api".into(),
                vec!["API.example.com".into(), "api.local:8080".into()],
            ),
        ])
    }

    fn routed(router: &Router, host: Option<&str>) -> Option<String> {
        router.load().route(host).map(|a| a.name.to_string())
    }

    #[test]
    fn exact_host_matches_case_insensitively_ignoring_port_and_trailing_dot() {
        let r = router();
        assert_eq!(routed(&r, Some("api.example.com")).as_deref(), Some("api"));
        assert_eq!(
            routed(&r, Some("Api.Example.COM:443")).as_deref(),
            Some("api")
        );
        assert_eq!(routed(&r, Some("api.example.com.")).as_deref(), Some("api"));
        assert_eq!(routed(&r, Some("api.local")).as_deref(), Some("api"));
    }

    #[test]
    fn unknown_or_missing_host_goes_to_the_star_app() {
        let r = router();
        assert_eq!(
            routed(&r, Some("other.example.com")).as_deref(),
            Some("web")
        );
        assert_eq!(routed(&r, None).as_deref(), Some("web"));
        assert_eq!(routed(&r, Some("[::1]:8080")).as_deref(), Some("web"));
    }

    #[test]
    fn without_star_app_unknown_host_has_no_route() {
        let r = Router::new(vec![("api".into(), vec!["api.example.com".into()])]);
        assert_eq!(routed(&r, Some("other")), None);
        assert_eq!(routed(&r, None), None);
    }

    #[test]
    fn host_port_is_stripped_for_names_and_ipv6_literals() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("[::1"), "[::1");
    }

    #[test]
    fn a_reserved_prefix_takes_its_paths_only_and_survives_route_updates() {
        let r = router();
        let addr = "127.0.0.1:1".parse().expect("addr");
        r.set_reserved_path(
            "/_cutover/hooks",
            Some(Upstream::new("_cutover", "webhook", "receiver", addr)),
        );
        r.set_live("web", Some(Upstream::new("web", "blue", "v1", addr)));
        let table = r.load();
        assert!(table.reserved_for("/_cutover/hooks/github").is_some());
        assert!(table.reserved_for("/_cutover/hooks").is_some());
        assert!(table.reserved_for("/_cutover/hooksx").is_none());
        assert!(table.reserved_for("/_cutover/hook").is_none());
        assert!(table.reserved_for("/").is_none());
        r.set_reserved_path("/_cutover/hooks", None);
        assert!(r.load().reserved_for("/_cutover/hooks/github").is_none());
        assert!(r.live("web").is_some());
    }

    #[test]
    fn set_live_returns_previous_and_concurrent_updates_are_not_lost() {
        let r = Router::new(
            (0..8)
                .map(|i| (format!("app{i}"), vec![format!("app{i}.test")]))
                .collect(),
        );
        let addr = "127.0.0.1:1".parse().expect("addr");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let app = format!("app{i}");
                    let mut previous = None;
                    for n in 0..200 {
                        let up = Upstream::new(&app, "blue", &n.to_string(), addr);
                        let prev = r.set_live(&app, Some(up.clone()));
                        assert_eq!(prev.map(|p| p.release().to_string()), previous);
                        previous = Some(n.to_string());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        for i in 0..8 {
            let live = r.live(&format!("app{i}")).expect("live");
            assert_eq!(live.release(), "199");
        }
        assert!(r.set_live("nope", None).is_none());
    }
}
