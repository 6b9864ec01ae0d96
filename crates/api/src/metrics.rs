//! `GET /metrics`: Prometheus text (format 0.0.4, `prometheus-client`).
//!
//! Two sources, both read at scrape time:
//! - the data plane's counters (`cutover_proxy_*`, see
//!   `cutover_proxy::metrics`);
//! - the control plane, from the engine's status and the stored history
//!   (`cutover_*`): deployments by outcome and their durations, the
//!   deployment running or queued, each app's live slot and release, the
//!   live release's health, and health transitions seen since start.
//!
//! Nothing here is on the request path of the proxy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cutover_config::Slot;
use cutover_engine::{AppStatus, Engine, LiveHealth};
use cutover_store::{is_terminal_state, DeploymentRecord};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Deployments read per app for the counters (newest first).
const HISTORY_LIMIT: usize = 100_000;
/// Bounds of the deployment duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 10] = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// Health transitions of live releases (`healthy` → `unhealthy` and back),
/// counted from the engine's app events since the API started.
#[derive(Debug, Default)]
pub(crate) struct HealthTransitions {
    counts: Mutex<BTreeMap<(String, String), u64>>,
    /// Events the subscription missed (lagged).
    missed: AtomicU64,
}

impl HealthTransitions {
    /// Subscribes to every app's events (needs a tokio runtime; without
    /// one, nothing is counted).
    pub(crate) fn start(engine: &Engine) -> Arc<HealthTransitions> {
        let counts = Arc::new(HealthTransitions::default());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return counts;
        };
        let Some(first) = engine.config().apps.first() else {
            return counts;
        };
        // One subscription carries every app's events.
        let Ok(mut events) = engine.app_events(&first.name) else {
            return counts;
        };
        let weak = Arc::downgrade(&counts);
        runtime.spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(counts) = weak.upgrade() else { return };
                match event {
                    // Supervision events (restarting, restarted, …) are
                    // counted from the status (`cutover_live_restarts_total`).
                    Ok(event) if !matches!(event.kind.as_str(), "healthy" | "unhealthy") => {}
                    Ok(event) => {
                        let mut map = counts.counts.lock().unwrap_or_else(PoisonError::into_inner);
                        *map.entry((event.app, event.kind)).or_default() += 1;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        counts.missed.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        counts
    }
}

/// Answers a scrape.
pub(crate) async fn render(
    engine: &Engine,
    transitions: &HealthTransitions,
    certs: Option<Vec<cutover_acme::CertStatus>>,
) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(cutover_proxy::metrics::collector()));
    if let Some(certs) = certs {
        registry.register_collector(Box::new(crate::certs::CertMetrics(certs)));
    }
    match EngineSnapshot::take(engine, transitions).await {
        Ok(snapshot) => registry.register_collector(Box::new(snapshot)),
        Err(error) => {
            tracing::warn!(%error, "/metrics: reading the engine's state failed; serving the proxy's metrics only");
        }
    }
    let mut text = String::with_capacity(16 * 1024);
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {error}\n"),
        )
            .into_response();
    }
    (
        [(
            CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// The control plane's state at one scrape.
#[derive(Debug)]
struct EngineSnapshot {
    apps: Vec<AppStatus>,
    /// Finished deployments per app.
    history: Vec<(String, Vec<DeploymentRecord>)>,
    transitions: Vec<((String, String), u64)>,
    missed: u64,
}

impl EngineSnapshot {
    async fn take(
        engine: &Engine,
        transitions: &HealthTransitions,
    ) -> Result<EngineSnapshot, cutover_engine::EngineError> {
        let apps = engine.status().await?;
        let mut history = Vec::with_capacity(apps.len());
        for app in &apps {
            let finished = engine
                .history(&app.name, HISTORY_LIMIT)
                .await?
                .into_iter()
                .filter(|d| is_terminal_state(&d.state))
                .collect();
            history.push((app.name.clone(), finished));
        }
        let counts = transitions
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, n)| (key.clone(), *n))
            .collect();
        Ok(EngineSnapshot {
            apps,
            history,
            transitions: counts,
            missed: transitions.missed.load(Ordering::Relaxed),
        })
    }
}

/// Seconds from a deployment's start (or creation) to its end.
fn duration_seconds(d: &DeploymentRecord) -> Option<f64> {
    let end = d.finished_at?;
    let start = d.started_at.unwrap_or(d.created_at);
    Some((end - start).max(0) as f64 / 1000.0)
}

impl Collector for EngineSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_finished(&mut encoder)?;
        self.encode_queue(&mut encoder)?;
        self.encode_live(&mut encoder)?;
        self.encode_health(&mut encoder)?;
        self.encode_restarts(&mut encoder)
    }
}

impl EngineSnapshot {
    /// Deployments by outcome, and how long they took.
    fn encode_finished(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut outcomes: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
        for (app, deployments) in &self.history {
            for d in deployments {
                outcomes
                    .entry((app.as_str(), d.state.as_str()))
                    .or_default()
                    .push(duration_seconds(d).unwrap_or(0.0));
            }
        }
        let mut family = encoder.encode_descriptor(
            "cutover_deployments",
            "Finished deployments, by app and outcome (succeeded, failed, aborted, rolled_back).",
            None,
            MetricType::Counter,
        )?;
        for ((app, outcome), durations) in &outcomes {
            let labels = [("app", *app), ("outcome", *outcome)];
            ConstCounter::new(durations.len() as u64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "cutover_deployment_duration_seconds",
            "Duration of finished deployments, by app and outcome.",
            None,
            MetricType::Histogram,
        )?;
        for ((app, outcome), durations) in &outcomes {
            let labels = [("app", *app), ("outcome", *outcome)];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    durations.iter().sum(),
                    durations.len() as u64,
                    &duration_buckets(durations),
                    None,
                )?;
        }
        Ok(())
    }

    /// The deployment running and those waiting, per app.
    fn encode_queue(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "cutover_deployment_running",
            "1 while a deployment of the app runs.",
            None,
            MetricType::Gauge,
        )?;
        for app in &self.apps {
            let running = i64::from(app.current_deployment.is_some());
            ConstGauge::new(running)
                .encode(family.encode_family(&[("app", app.name.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "cutover_deployments_queued",
            "Deployments waiting behind the running one.",
            None,
            MetricType::Gauge,
        )?;
        for app in &self.apps {
            ConstGauge::new(app.queued.len() as i64)
                .encode(family.encode_family(&[("app", app.name.as_str())])?)?;
        }
        Ok(())
    }

    /// Each app's live slot and release.
    fn encode_live(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "cutover_live_slot",
            "1 for the slot that serves the app's traffic, 0 for the other.",
            None,
            MetricType::Gauge,
        )?;
        for app in &self.apps {
            for slot in Slot::ALL.map(Slot::as_str) {
                let live = i64::from(app.live_slot.as_deref() == Some(slot));
                ConstGauge::new(live)
                    .encode(family.encode_family(&[("app", app.name.as_str()), ("slot", slot)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "cutover_live_release",
            "The live release of each app (value 1; slot and version as labels).",
            None,
            MetricType::Gauge,
        )?;
        for app in &self.apps {
            if let (Some(slot), Some(version)) = (&app.live_slot, &app.live_version) {
                let labels = [
                    ("app", app.name.as_str()),
                    ("slot", slot.as_str()),
                    ("version", version.as_str()),
                ];
                ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// Restarts of dead live releases by cutover's supervision, and
    /// whether it gave up on one.
    fn encode_restarts(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "cutover_live_restarts",
            "Restarts of the live release that brought it back, since the daemon started.",
            None,
            MetricType::Counter,
        )?;
        for app in &self.apps {
            ConstCounter::new(app.supervision.restarts)
                .encode(family.encode_family(&[("app", app.name.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "cutover_live_restart_gave_up",
            "1 when restart_limit restarts within restart_window did not keep the live release up.",
            None,
            MetricType::Gauge,
        )?;
        for app in &self.apps {
            let gave_up = i64::from(app.supervision.state == "gave_up");
            ConstGauge::new(gave_up)
                .encode(family.encode_family(&[("app", app.name.as_str())])?)?;
        }
        Ok(())
    }

    /// The live release's health, and its transitions since start.
    fn encode_health(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "cutover_live_health",
            "Last health-check result of the live release: 1 for the current state.",
            None,
            MetricType::Gauge,
        )?;
        for app in &self.apps {
            for (state, value) in [
                ("healthy", LiveHealth::Healthy),
                ("unhealthy", LiveHealth::Unhealthy),
                ("unknown", LiveHealth::Unknown),
            ] {
                let on = i64::from(app.health == value);
                ConstGauge::new(on).encode(
                    family.encode_family(&[("app", app.name.as_str()), ("state", state)])?,
                )?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "cutover_health_transitions",
            "Live releases turning unhealthy or healthy again, since the daemon started.",
            None,
            MetricType::Counter,
        )?;
        for ((app, to), n) in &self.transitions {
            ConstCounter::new(*n)
                .encode(family.encode_family(&[("app", app.as_str()), ("to", to.as_str())])?)?;
        }
        let missed = ConstCounter::new(self.missed);
        missed.encode(encoder.encode_descriptor(
            "cutover_health_transitions_missed",
            "Health transition events not counted because the counter fell behind.",
            None,
            missed.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Each bucket's own count: prometheus-client adds them up.
fn duration_buckets(durations: &[f64]) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
        .iter()
        .chain([&f64::INFINITY])
        .map(|bound| (*bound, 0))
        .collect();
    for duration in durations {
        if let Some(bucket) = buckets.iter_mut().find(|(bound, _)| duration <= bound) {
            bucket.1 += 1;
        }
    }
    buckets
}
