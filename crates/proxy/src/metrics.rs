//! The data plane's counters, for Prometheus.
//!
//! Requests update plain atomics (no lock, no allocation) kept per app and
//! slot in a [`SlotMetrics`], so counters survive the releases that come and
//! go in a slot. Gauges (in-flight requests, upgraded connections) are not
//! kept at all: they are summed over the slot's live [`Upstream`]s when
//! scraped. [`collector`] encodes everything with `prometheus-client` on
//! each scrape.
//!
//! Per endpoint (an address of a release), counters are kept per slot and
//! address in an [`EndpointCounters`] that each endpoint increments
//! directly; the in-flight gauge is summed over the current endpoints.
//!
//! The counters are process-wide (one proxy per process in practice; tests
//! that run several compare differences).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::upstream::Upstream;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// The same bounds in microseconds, for the hot path.
const BUCKETS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000, 60_000_000,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Slot label of requests that reached no release (unknown host, no live
/// release).
pub(crate) const NO_SLOT: &str = "none";

/// Counters of one app's slot, across the releases that ran in it.
#[derive(Debug)]
pub(crate) struct SlotMetrics {
    app: Box<str>,
    slot: Box<str>,
    by_class: [AtomicU64; 5],
    /// Per bucket (not cumulative), plus one for above the last bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    connect_errors: AtomicU64,
    upstreams: Mutex<Vec<Weak<Upstream>>>,
    /// Per endpoint address, across the releases of the slot that had it.
    endpoints: Mutex<BTreeMap<SocketAddr, Arc<EndpointCounters>>>,
}

/// Counters of one endpoint address in one slot.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
}

impl SlotMetrics {
    fn new(app: &str, slot: &str) -> SlotMetrics {
        SlotMetrics {
            app: Box::from(app),
            slot: Box::from(slot),
            by_class: Default::default(),
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            upstreams: Mutex::new(Vec::new()),
            endpoints: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counters of the endpoint at `addr`, created on first use.
    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointCounters> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(endpoints.entry(addr).or_default())
    }

    /// One finished request: its status and the time until its response ended.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BUCKETS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn lock_upstreams(&self) -> MutexGuard<'_, Vec<Weak<Upstream>>> {
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers an upstream of this slot, for the gauges.
    pub(crate) fn track(&self, upstream: &Arc<Upstream>) {
        let mut upstreams = self.lock_upstreams();
        upstreams.retain(|u| u.strong_count() > 0);
        upstreams.push(Arc::downgrade(upstream));
    }

    /// Requests in flight per endpoint address, over the current endpoints
    /// of the slot's upstreams.
    fn endpoint_in_flight(&self) -> BTreeMap<SocketAddr, i64> {
        let upstreams = self.lock_upstreams();
        let mut in_flight = BTreeMap::new();
        for upstream in upstreams.iter().filter_map(Weak::upgrade) {
            for (addr, count) in upstream.endpoint_in_flight() {
                *in_flight.entry(addr).or_insert(0) += count as i64;
            }
        }
        in_flight
    }

    /// Every endpoint address of the slot with its counters, in address order.
    fn endpoint_counters(&self) -> Vec<(SocketAddr, Arc<EndpointCounters>)> {
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        endpoints.iter().map(|(a, c)| (*a, Arc::clone(c))).collect()
    }

    /// (in-flight requests, upgraded connections) of the slot's upstreams.
    fn gauges(&self) -> (i64, i64) {
        let upstreams = self.lock_upstreams();
        let (mut requests, mut upgraded) = (0i64, 0i64);
        for upstream in upstreams.iter().filter_map(Weak::upgrade) {
            let tunnels = upstream.upgraded();
            requests += upstream.in_flight().saturating_sub(tunnels) as i64;
            upgraded += tunnels as i64;
        }
        (requests, upgraded)
    }
}

/// (app, slot)
type SlotKey = (Box<str>, Box<str>);

/// The process-wide counters of the data plane.
#[derive(Debug, Default)]
pub(crate) struct ProxyMetrics {
    slots: Mutex<BTreeMap<SlotKey, Arc<SlotMetrics>>>,
    pub(crate) access_log_lines: AtomicU64,
    pub(crate) access_log_dropped: AtomicU64,
    pub(crate) client_connections: AtomicI64,
    /// Of those, idle ones waiting outside any task (`http1::park`).
    pub(crate) parked_connections: AtomicI64,
}

static GLOBAL: OnceLock<ProxyMetrics> = OnceLock::new();

pub(crate) fn global() -> &'static ProxyMetrics {
    GLOBAL.get_or_init(ProxyMetrics::default)
}

impl ProxyMetrics {
    /// The counters of `app`'s `slot`, created on first use.
    pub(crate) fn slot(&self, app: &str, slot: &str) -> Arc<SlotMetrics> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (Box::from(app), Box::from(slot));
        Arc::clone(
            slots
                .entry(key)
                .or_insert_with(|| Arc::new(SlotMetrics::new(app, slot))),
        )
    }

    fn all_slots(&self) -> Vec<Arc<SlotMetrics>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.values().cloned().collect()
    }
}

/// Encodes the data plane's metrics on each scrape; register it with
/// `Registry::register_collector`.
pub fn collector() -> ProxyCollector {
    ProxyCollector
}

/// See [`collector`].
#[derive(Debug, Clone, Copy)]
pub struct ProxyCollector;

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = global();
        let slots = metrics.all_slots();
        encode_requests(&mut encoder, &slots)?;
        encode_durations(&mut encoder, &slots)?;
        encode_open(&mut encoder, &slots)?;
        encode_connect_errors(&mut encoder, &slots)?;
        encode_endpoints(&mut encoder, &slots)?;
        encode_process_wide(&mut encoder, metrics)
    }
}

type EncodeResult = Result<(), std::fmt::Error>;

fn encode_requests(encoder: &mut DescriptorEncoder, slots: &[Arc<SlotMetrics>]) -> EncodeResult {
    let mut family = encoder.encode_descriptor(
        "cutover_proxy_requests",
        "Requests answered by the proxy, by app, slot and status class.",
        None,
        MetricType::Counter,
    )?;
    for slot in slots {
        for (class, count) in CLASSES.iter().zip(&slot.by_class) {
            let labels = [("app", &*slot.app), ("slot", &*slot.slot), ("class", class)];
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn encode_durations(encoder: &mut DescriptorEncoder, slots: &[Arc<SlotMetrics>]) -> EncodeResult {
    let mut family = encoder.encode_descriptor(
        "cutover_proxy_request_duration_seconds",
        "Time from a request's arrival until its response was sent, by app and slot.",
        None,
        MetricType::Histogram,
    )?;
    for slot in slots {
        let labels = [("app", &*slot.app), ("slot", &*slot.slot)];
        // prometheus-client wants each bucket's own count (it adds them up).
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .chain([&f64::INFINITY])
            .zip(&slot.buckets)
            .map(|(bound, count)| (*bound, count.load(Ordering::Relaxed)))
            .collect();
        let total = buckets.iter().map(|(_, count)| count).sum();
        let sum = slot.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        family
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, total, &buckets, None,
            )?;
    }
    Ok(())
}

/// The gauges of what is open now: requests in flight, upgraded connections.
fn encode_open(encoder: &mut DescriptorEncoder, slots: &[Arc<SlotMetrics>]) -> EncodeResult {
    let gauges: Vec<(i64, i64)> = slots.iter().map(|slot| slot.gauges()).collect();
    let mut family = encoder.encode_descriptor(
        "cutover_proxy_in_flight_requests",
        "Requests in progress (response not sent completely yet), by app and slot.",
        None,
        MetricType::Gauge,
    )?;
    for (slot, (requests, _)) in slots.iter().zip(&gauges) {
        let labels = [("app", &*slot.app), ("slot", &*slot.slot)];
        ConstGauge::new(*requests).encode(family.encode_family(&labels)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "cutover_proxy_upgraded_connections",
        "Open upgraded connections (WebSockets and other upgrades), by app and slot.",
        None,
        MetricType::Gauge,
    )?;
    for (slot, (_, upgraded)) in slots.iter().zip(&gauges) {
        let labels = [("app", &*slot.app), ("slot", &*slot.slot)];
        ConstGauge::new(*upgraded).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_connect_errors(
    encoder: &mut DescriptorEncoder,
    slots: &[Arc<SlotMetrics>],
) -> EncodeResult {
    let mut family = encoder.encode_descriptor(
        "cutover_proxy_upstream_connect_errors",
        "Failed attempts to connect to a release, by app and slot.",
        None,
        MetricType::Counter,
    )?;
    for slot in slots {
        let labels = [("app", &*slot.app), ("slot", &*slot.slot)];
        ConstCounter::new(slot.connect_errors.load(Ordering::Relaxed))
            .encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Which counter of an endpoint a family shows.
type CounterField = fn(&EndpointCounters) -> &AtomicU64;

/// Per endpoint: requests sent and failed attempts (counters kept per slot
/// and address across releases, like the per-slot families), and requests
/// in flight on the current endpoints.
fn encode_endpoints(encoder: &mut DescriptorEncoder, slots: &[Arc<SlotMetrics>]) -> EncodeResult {
    let counters: Vec<_> = slots.iter().map(|slot| slot.endpoint_counters()).collect();
    let families: [(&str, &str, CounterField); 2] = [
        (
            "cutover_proxy_endpoint_requests",
            "Requests sent to an endpoint (each attempt, retries included), by app, slot and endpoint.",
            |c| &c.requests,
        ),
        (
            "cutover_proxy_endpoint_failures",
            "Failed attempts on an endpoint (refused connections, failed exchanges), by app, slot and endpoint.",
            |c| &c.failures,
        ),
    ];
    for (name, help, field) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (slot, endpoints) in slots.iter().zip(&counters) {
            for (addr, counters) in endpoints {
                let endpoint = addr.to_string();
                let labels = [
                    ("app", &*slot.app),
                    ("slot", &*slot.slot),
                    ("endpoint", &*endpoint),
                ];
                ConstCounter::new(field(counters).load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "cutover_proxy_endpoint_in_flight_requests",
        "Requests in progress on an endpoint of a current release, by app, slot and endpoint.",
        None,
        MetricType::Gauge,
    )?;
    for slot in slots {
        for (addr, in_flight) in slot.endpoint_in_flight() {
            let endpoint = addr.to_string();
            let labels = [
                ("app", &*slot.app),
                ("slot", &*slot.slot),
                ("endpoint", &*endpoint),
            ];
            ConstGauge::new(in_flight).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Metrics of the whole proxy: client connections, access log lines.
fn encode_process_wide(encoder: &mut DescriptorEncoder, metrics: &ProxyMetrics) -> EncodeResult {
    let client = ConstGauge::new(metrics.client_connections.load(Ordering::Relaxed));
    client.encode(encoder.encode_descriptor(
        "cutover_proxy_client_connections",
        "Open client connections.",
        None,
        client.metric_type(),
    )?)?;
    let parked = ConstGauge::new(metrics.parked_connections.load(Ordering::Relaxed));
    parked.encode(encoder.encode_descriptor(
        "cutover_proxy_parked_connections",
        "Idle keep-alive client connections parked between requests (no task, no buffer).",
        None,
        parked.metric_type(),
    )?)?;
    let lines = ConstCounter::new(metrics.access_log_lines.load(Ordering::Relaxed));
    lines.encode(encoder.encode_descriptor(
        "cutover_proxy_access_log_lines",
        "Access log lines written.",
        None,
        lines.metric_type(),
    )?)?;
    let dropped = ConstCounter::new(metrics.access_log_dropped.load(Ordering::Relaxed));
    dropped.encode(encoder.encode_descriptor(
        "cutover_proxy_access_log_dropped",
        "Access log lines dropped because the writer fell behind (requests are never slowed).",
        None,
        dropped.metric_type(),
    )?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it_and_status_in_its_class() {
        let slot = SlotMetrics::new("web", "blue");
        slot.record(200, Duration::from_micros(400));
        slot.record(204, Duration::from_micros(500));
        slot.record(502, Duration::from_millis(3));
        slot.record(99, Duration::from_secs(120));
        assert_eq!(slot.buckets[0].load(Ordering::Relaxed), 2);
        assert_eq!(slot.buckets[3].load(Ordering::Relaxed), 1);
        assert_eq!(slot.buckets[BUCKETS.len()].load(Ordering::Relaxed), 1);
        assert_eq!(slot.by_class[1].load(Ordering::Relaxed), 2);
        assert_eq!(slot.by_class[4].load(Ordering::Relaxed), 1);
        assert_eq!(slot.by_class[0].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn encoded_metrics_are_prometheus_text() {
        global()
            .slot("metrics-unit", "blue")
            .record(200, Duration::from_millis(1));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(collector()));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                "cutover_proxy_requests_total{app=\"metrics-unit\",slot=\"blue\",class=\"2xx\"} 1"
            ),
            "{text}"
        );
        for (le, count) in [("0.0005", 0), ("0.001", 1), ("60", 1), ("+Inf", 1)] {
            let line = format!(
                "cutover_proxy_request_duration_seconds_bucket{{app=\"metrics-unit\",slot=\"blue\",le=\"{le}\"}} {count}\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
