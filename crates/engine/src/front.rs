//! Where client traffic enters: the built-in proxy's route table, or an
//! nginx that cutover drives (`[proxy] mode = "nginx"`). The deployment
//! code moves traffic only through [`Front`]:
//!
//! - [`Front::set_live`]: every new request of an app goes to this release.
//!   Built-in: one atomic swap of the route table, never fails. nginx:
//!   upstream include, `nginx -t`, reload; on failure nothing changed and
//!   the error says why (with nginx's output).
//! - [`Front::drain`]: waits until the old release has nothing left to
//!   answer. Built-in: its in-flight requests and upgraded connections
//!   ([`Upstream::drain`]). nginx: the workers that served before the last
//!   reload of the app have exited.
//! - [`Front::set_preview`] / [`Front::set_canary`]: built-in only (nginx
//!   offers no preview; `shift` is refused by the configuration in nginx
//!   mode).

use cutover_config::Slot;
use cutover_nginx::{Nginx, OldWorkers, WorkersExit};
use cutover_proxy::{DrainOutcome, Preview, Router, Upstream};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub(crate) enum Front {
    /// The built-in proxy.
    Builtin(Router),
    Nginx(Arc<NginxFront>),
}

/// nginx as the front, plus what the engine needs to know about it.
pub(crate) struct NginxFront {
    nginx: Nginx,
    /// The live upstream of each app (nobody routes through it: it keeps
    /// `set_live`'s "previous" and status the same in both modes).
    routes: Router,
    /// Per app, the workers that served before its last reload.
    old_workers: Mutex<HashMap<String, OldWorkers>>,
    /// Per app, `advertise`: what a loopback endpoint is written as in the
    /// include (nginx runs on another host).
    advertise: HashMap<String, IpAddr>,
}

impl NginxFront {
    /// What the include lists for `upstream`: its endpoints in rotation
    /// (all of them if none is, rather than none), a loopback address
    /// written as the app's `advertise` address.
    fn servers(&self, app: &str, upstream: Option<&Upstream>) -> Vec<SocketAddr> {
        let Some(upstream) = upstream else {
            return Vec::new();
        };
        let endpoints = upstream.endpoints();
        let healthy: Vec<SocketAddr> = endpoints
            .iter()
            .filter(|e| e.healthy)
            .map(|e| e.addr)
            .collect();
        let chosen = match healthy.is_empty() {
            true => endpoints.iter().map(|e| e.addr).collect(),
            false => healthy,
        };
        let advertise = self.advertise.get(app);
        chosen
            .into_iter()
            .map(|addr| match advertise {
                Some(ip) if addr.ip().is_loopback() => SocketAddr::new(*ip, addr.port()),
                _ => addr,
            })
            .collect()
    }
}

/// How a drain ended, in the terms of the front.
pub(crate) enum Drained {
    Requests(DrainOutcome),
    Workers(WorkersExit),
}

impl Drained {
    pub(crate) fn message(&self, slot: Slot, timeout: Duration) -> String {
        match self {
            Drained::Requests(DrainOutcome::Drained { waited }) => {
                format!("{slot} drained after {:.3}s", waited.as_secs_f64())
            }
            Drained::Requests(DrainOutcome::TimedOut { still_in_flight }) => format!(
                "{slot} still had {still_in_flight} request(s) in flight at drain_timeout ({timeout:?}); stopping it anyway"
            ),
            Drained::Workers(WorkersExit::Exited { waited, workers }) => format!(
                "{slot} drained after {:.3}s: the {workers} nginx worker(s) that served before the reload have exited",
                waited.as_secs_f64()
            ),
            Drained::Workers(WorkersExit::TimedOut { remaining, workers }) => format!(
                "{remaining} of the {workers} nginx worker(s) that served before the reload were still running at drain_timeout ({timeout:?}); stopping {slot} anyway"
            ),
        }
    }
}

impl Front {
    pub(crate) fn nginx(nginx: Nginx, routes: Router, advertise: HashMap<String, IpAddr>) -> Front {
        Front::Nginx(Arc::new(NginxFront {
            nginx,
            routes,
            old_workers: Mutex::new(HashMap::new()),
            advertise,
        }))
    }

    pub(crate) fn is_nginx(&self) -> bool {
        matches!(self, Front::Nginx(_))
    }

    /// Whether requests can be sent to a release before the switch.
    pub(crate) fn offers_preview(&self) -> bool {
        matches!(self, Front::Builtin(_))
    }

    pub(crate) fn set_preview(&self, app: &str, preview: Option<Preview>) {
        if let Front::Builtin(router) = self {
            router.set_preview(app, preview);
        }
    }

    pub(crate) fn set_canary(&self, app: &str, canary: Option<(Arc<Upstream>, u8)>) {
        if let Front::Builtin(router) = self {
            router.set_canary(app, canary);
        }
    }

    /// Routes every new request of `app` to `upstream` (None: nothing).
    /// Returns the upstream that was live; on Err nothing changed.
    pub(crate) async fn set_live(
        &self,
        app: &str,
        upstream: Option<Arc<Upstream>>,
    ) -> Result<Option<Arc<Upstream>>, String> {
        match self {
            Front::Builtin(router) => Ok(router.set_live(app, upstream)),
            Front::Nginx(front) => {
                let servers = front.servers(app, upstream.as_deref());
                let switched = front
                    .nginx
                    .switch_to(app, &servers)
                    .await
                    .map_err(|e| e.to_string())?;
                if switched.reloaded {
                    tracing::info!(app, workers = ?switched.old_workers.pids, "nginx reloaded; its previous workers drain");
                }
                if let Ok(mut old) = front.old_workers.lock() {
                    old.insert(app.to_string(), switched.old_workers);
                }
                Ok(front.routes.set_live(app, upstream))
            }
        }
    }

    /// [`Front::set_live`] for several apps at once (a release group): one
    /// swap of the route table, so no request sees some switched and others
    /// not. Returns each app's previous upstream, in order. nginx fronts are
    /// refused with groups by the configuration.
    pub(crate) async fn set_live_many(
        &self,
        changes: &[(&str, Option<Arc<Upstream>>)],
    ) -> Result<Vec<Option<Arc<Upstream>>>, String> {
        match self {
            Front::Builtin(router) => Ok(router.set_live_many(changes)),
            Front::Nginx(_) => Err(
                "release groups need the built-in proxy: nginx switches one app per reload"
                    .to_string(),
            ),
        }
    }

    /// The live release's endpoints changed or went in or out of rotation:
    /// nginx's include follows (rewritten and reloaded only when its content
    /// changes). The built-in proxy reads the upstream itself: nothing to do.
    pub(crate) async fn refresh(&self, app: &str) -> Result<(), String> {
        let Front::Nginx(front) = self else {
            return Ok(());
        };
        let Some(live) = front.routes.live(app) else {
            return Ok(());
        };
        let servers = front.servers(app, Some(&live));
        front
            .nginx
            .switch_to(app, &servers)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Waits until the release behind `upstream` (the one traffic just left)
    /// has nothing left to answer, or `timeout`.
    pub(crate) async fn drain(
        &self,
        app: &str,
        upstream: Option<&Upstream>,
        timeout: Duration,
    ) -> Drained {
        match self {
            Front::Builtin(_) => Drained::Requests(match upstream {
                Some(upstream) => upstream.drain(timeout).await,
                None => DrainOutcome::Drained {
                    waited: Duration::ZERO,
                },
            }),
            Front::Nginx(front) => {
                let old = front
                    .old_workers
                    .lock()
                    .ok()
                    .and_then(|mut old| old.remove(app))
                    .unwrap_or_default();
                Drained::Workers(front.nginx.wait_exited(&old, timeout).await)
            }
        }
    }

    /// The app's live upstream (for status).
    pub(crate) fn live(&self, app: &str) -> Option<Arc<Upstream>> {
        match self {
            Front::Builtin(router) => router.live(app),
            Front::Nginx(front) => front.routes.live(app),
        }
    }
}
