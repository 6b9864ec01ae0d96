//! The route table: which app serves a Host and path, and which upstream is
//! live for each app. Readers (every request) load it lock-free; the engine
//! publishes a whole new table for every change — several apps' changes in
//! one table when they must switch together ([`Router::set_live_many`]).

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

/// Host → (path prefix → app) index; fixed at [`Router::new`], shared by
/// every snapshot. The Host picks a set of prefixes (its exact entry, else
/// the `"*"` one); the longest prefix of the path in that set picks the app.
#[derive(Debug, Default)]
struct HostIndex {
    /// Lowercase host names without port.
    exact: HashMap<Box<str>, PathRoutes>,
    /// The apps with the `"*"` pattern.
    default: Option<PathRoutes>,
}

/// Path prefixes of one host, longest first, each with its app's index.
#[derive(Debug, Default)]
struct PathRoutes(Vec<(Box<str>, usize)>);

impl PathRoutes {
    /// Adds `prefix` for app `index`; false if the prefix is taken.
    fn insert(&mut self, prefix: &str, index: usize) -> bool {
        if self.0.iter().any(|(p, _)| &**p == prefix) {
            return false;
        }
        self.0.push((Box::from(prefix), index));
        // Longest first, so the first match is the longest one.
        self.0.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        true
    }

    /// The app of the longest prefix `path` falls under.
    fn find(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(prefix, _)| path_has_prefix(path, prefix))
            .map(|(_, index)| *index)
    }
}

/// Whether `path` is `prefix` or below it, on a segment boundary: `/api`
/// covers `/api` and `/api/x`, not `/apix`; `/` covers every path (also
/// `*` of `OPTIONS *`).
pub(crate) fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// One app as the router routes to it: its Host patterns and path prefixes.
#[derive(Debug, Clone)]
pub struct AppRoutes {
    pub name: String,
    /// Exact hosts (case-insensitive, port ignored) or `"*"`.
    pub hosts: Vec<String>,
    /// Path prefixes (`"/"`: every path); empty means `["/"]`.
    pub paths: Vec<String>,
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
    /// The app serving `path` on `host` (a Host header value or URI
    /// authority; the port is ignored, case too). No host, or an unknown one:
    /// the `"*"` apps. Within the host's apps the longest matching path
    /// prefix wins; none matches: no route.
    pub(crate) fn route(&self, host: Option<&str>, path: &str) -> Option<&AppRoute> {
        let routes = match host.map(host_without_port) {
            Some(host) if !host.is_empty() => self.lookup(host).or(self.hosts.default.as_ref()),
            _ => self.hosts.default.as_ref(),
        }?;
        self.apps.get(routes.find(path)?)
    }

    /// Whether some app serves `host` (on some path).
    pub(crate) fn has_host(&self, host: Option<&str>) -> bool {
        match host.map(host_without_port) {
            Some(host) if !host.is_empty() => {
                self.lookup(host).is_some() || self.hosts.default.is_some()
            }
            _ => self.hosts.default.is_some(),
        }
    }

    fn lookup(&self, host: &str) -> Option<&PathRoutes> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.exact.get(host.to_ascii_lowercase().as_str())
        } else {
            self.hosts.exact.get(host)
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
    /// the app for requests no exact host matches. Every path of a host goes
    /// to its app. No app is live yet.
    ///
    /// A host (or `"*"`) claimed by two apps goes to the first; validating
    /// the configuration is the caller's job.
    pub fn new(apps: Vec<(String, Vec<String>)>) -> Router {
        let apps = apps
            .into_iter()
            .map(|(name, hosts)| AppRoutes {
                name,
                hosts,
                paths: Vec::new(),
            })
            .collect();
        Router::with_paths(apps)
    }

    /// [`Router::new`] with path prefixes: a request goes to the app of its
    /// Host (exact, else `"*"`) whose prefix is the longest one of the
    /// request's path (on a segment boundary); the path is passed on
    /// unchanged. A (host, prefix) pair claimed twice goes to the first.
    pub fn with_paths(apps: Vec<AppRoutes>) -> Router {
        let mut hosts = HostIndex::default();
        let mut routes = Vec::with_capacity(apps.len());
        for (index, app) in apps.into_iter().enumerate() {
            let root = ["/".to_string()];
            let paths = match app.paths.is_empty() {
                true => &root[..],
                false => &app.paths[..],
            };
            for pattern in &app.hosts {
                let pattern = pattern.trim();
                let routes = match pattern {
                    "*" => hosts.default.get_or_insert_with(PathRoutes::default),
                    _ => {
                        let host = host_without_port(pattern);
                        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                        hosts.exact.entry(host.into_boxed_str()).or_default()
                    }
                };
                for path in paths {
                    if !routes.insert(path, index) {
                        tracing::warn!(app = %app.name, host = %pattern, %path, "another app already has this host and path; ignored");
                    }
                }
            }
            routes.push(AppRoute {
                name: Arc::from(app.name),
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

    /// [`Router::set_live`] for several apps in ONE published table: no
    /// request ever sees some of them switched and others not. Returns each
    /// app's previous live upstream, in the order of `changes` (`None` for
    /// an unknown app, which changes nothing).
    pub fn set_live_many(
        &self,
        changes: &[(&str, Option<Arc<Upstream>>)],
    ) -> Vec<Option<Arc<Upstream>>> {
        let mut previous = Vec::new();
        self.table.rcu(|current| {
            let mut apps = current.apps.to_vec();
            previous = changes
                .iter()
                .map(|(app, upstream)| {
                    let route = apps.iter_mut().find(|a| &*a.name == *app)?;
                    route.canary = None;
                    std::mem::replace(&mut route.live, upstream.clone())
                })
                .collect();
            RouteTable {
                hosts: Arc::clone(&current.hosts),
                apps: apps.into_boxed_slice(),
                reserved: current.reserved.clone(),
            }
        });
        previous
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
        router.load().route(host, "/").map(|a| a.name.to_string())
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

    fn paths_router() -> Router {
        let app = |name: &str, hosts: &[&str], paths: &[&str]| AppRoutes {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        };
        Router::with_paths(vec![
            app("web", &["*"], &[]),
            app("api", &["*"], &["/api"]),
            app("api-admin", &["*"], &["/api/admin"]),
            app("shop", &["shop.test"], &["/", "/cart/"]),
            app("shop-api", &["shop.test"], &["/api"]),
            app("docs", &["docs.test"], &["/docs"]),
        ])
    }

    fn routed_path(router: &Router, host: Option<&str>, path: &str) -> Option<String> {
        router.load().route(host, path).map(|a| a.name.to_string())
    }

    #[test]
    fn longest_path_prefix_wins_on_segment_boundaries() {
        let r = paths_router();
        let at = |path| routed_path(&r, Some("example.com"), path);
        assert_eq!(at("/").as_deref(), Some("web"));
        assert_eq!(at("/api").as_deref(), Some("api"));
        assert_eq!(at("/api/").as_deref(), Some("api"));
        assert_eq!(at("/api/v1/items").as_deref(), Some("api"));
        assert_eq!(at("/apix").as_deref(), Some("web"));
        assert_eq!(at("/api/admin/users").as_deref(), Some("api-admin"));
        assert_eq!(at("/api/administrator").as_deref(), Some("api"));
        assert_eq!(at("*").as_deref(), Some("web"));
    }

    #[test]
    fn host_picks_its_own_prefixes_before_the_star_apps() {
        let r = paths_router();
        assert_eq!(
            routed_path(&r, Some("SHOP.test:80"), "/api/x").as_deref(),
            Some("shop-api")
        );
        assert_eq!(
            routed_path(&r, Some("shop.test"), "/apix").as_deref(),
            Some("shop")
        );
        assert_eq!(
            routed_path(&r, Some("shop.test"), "/cart/1").as_deref(),
            Some("shop")
        );
        assert_eq!(routed_path(&r, None, "/api").as_deref(), Some("api"));
        assert_eq!(
            routed_path(&r, Some("docs.test"), "/docs/intro").as_deref(),
            Some("docs")
        );
    }

    #[test]
    fn a_path_no_prefix_of_its_host_covers_has_no_route() {
        let r = paths_router();
        assert_eq!(routed_path(&r, Some("docs.test"), "/"), None);
        assert_eq!(routed_path(&r, Some("docs.test"), "/docsx"), None);
        assert!(r.load().has_host(Some("docs.test")));
        let only_api = Router::with_paths(vec![AppRoutes {
            name: "api".into(),
            hosts: vec!["api.test".into()],
            paths: vec!["/api".into()],
        }]);
        assert_eq!(routed_path(&only_api, Some("api.test"), "/other"), None);
        assert!(!only_api.load().has_host(Some("other.test")));
    }

    #[test]
    fn set_live_many_switches_every_app_in_one_table() {
        let r = paths_router();
        let addr = "127.0.0.1:1".parse().expect("addr");
        r.set_live("web", Some(Upstream::new("web", "blue", "v1", addr)));
        r.set_live("api", Some(Upstream::new("api", "blue", "v1", addr)));
        let before = r.load();
        let web2 = Upstream::new("web", "green", "v2", addr);
        let api2 = Upstream::new("api", "green", "v2", addr);
        let previous = r.set_live_many(&[("web", Some(web2)), ("api", Some(api2)), ("nope", None)]);
        let versions: Vec<Option<String>> = previous
            .iter()
            .map(|p| p.as_ref().map(|u| u.release().to_string()))
            .collect();
        assert_eq!(versions, vec![Some("v1".into()), Some("v1".into()), None]);
        // The table read before still has both old; the new one both new.
        let old_pair = ["web", "api"].map(|a| before.app(a).and_then(|r| r.live.clone()));
        assert!(old_pair
            .iter()
            .all(|u| u.as_ref().is_some_and(|u| u.release() == "v1")));
        let new_pair = ["web", "api"].map(|a| r.live(a).map(|u| u.release().to_string()));
        assert_eq!(new_pair, [Some("v2".to_string()), Some("v2".to_string())]);
    }
}
