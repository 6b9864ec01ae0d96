//! Which endpoint of a release a request goes to.
//!
//! - [`Balance::LeastRequests`] (default): power of two choices — two
//!   random endpoints in rotation, the one with fewer requests in flight.
//!   Close to "least outstanding requests" without scanning the set, and
//!   without herding every proxy thread onto the same momentarily idle
//!   endpoint.
//! - [`Balance::RoundRobin`]: each in turn.
//!
//! An endpoint out of rotation (unhealthy, ejected) is skipped; when every
//! endpoint is out, the least recently ejected one is tried anyway rather
//! than failing without trying. A retry excludes the endpoints the request
//! already tried.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::endpoint::{Endpoint, Now};

/// How an upstream spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Balance {
    /// Power of two choices on requests in flight.
    #[default]
    LeastRequests,
    /// Each endpoint in turn.
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastRequests => "least_requests",
            Balance::RoundRobin => "round_robin",
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A balancing name other than `least_requests` and `round_robin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balancing '{0}' (expected least_requests or round_robin)")]
pub struct UnknownBalance(pub String);

impl FromStr for Balance {
    type Err = UnknownBalance;

    fn from_str(s: &str) -> Result<Balance, UnknownBalance> {
        match s {
            "least_requests" => Ok(Balance::LeastRequests),
            "round_robin" => Ok(Balance::RoundRobin),
            other => Err(UnknownBalance(other.to_owned())),
        }
    }
}

/// Most endpoints one request is sent to (the first and its retries).
pub(crate) const MAX_ENDPOINT_ATTEMPTS: usize = 3;

/// The endpoints one request has tried.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    addrs: [Option<SocketAddr>; MAX_ENDPOINT_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub(crate) fn push(&mut self, addr: SocketAddr) {
        if let Some(slot) = self.addrs.get_mut(self.len) {
            *slot = Some(addr);
            self.len += 1;
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == MAX_ENDPOINT_ATTEMPTS
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        self.addrs[..self.len].contains(&Some(addr))
    }
}

/// The endpoint for a request's next attempt, or `None` when every
/// endpoint has been tried.
pub(crate) fn pick<'a>(
    balance: Balance,
    set: &'a [Arc<Endpoint>],
    next: &AtomicUsize,
    tried: &Tried,
) -> Option<&'a Arc<Endpoint>> {
    if let [only] = set {
        // One endpoint: always tried once, in rotation or not (as a
        // single-address upstream always was).
        return (!tried.contains(only.addr())).then_some(only);
    }
    let mut now = Now::default();
    let chosen = match balance {
        Balance::LeastRequests => two_choices(set, tried, &mut now),
        Balance::RoundRobin => round_robin(set, next, tried, &mut now),
    };
    chosen.or_else(|| least_recently_ejected(set, tried))
}

/// Power of two choices; when neither sample can be picked, the least
/// loaded of those that can.
fn two_choices<'a>(
    set: &'a [Arc<Endpoint>],
    tried: &Tried,
    now: &mut Now,
) -> Option<&'a Arc<Endpoint>> {
    let first = fastrand::usize(..set.len());
    // A second index distinct from the first.
    let second = (first + 1 + fastrand::usize(..set.len() - 1)) % set.len();
    let mut usable = |e: &Arc<Endpoint>| !tried.contains(e.addr()) && e.pickable(now);
    let (a, b) = (&set[first], &set[second]);
    match (usable(a), usable(b)) {
        (true, true) => Some(if b.in_flight() < a.in_flight() { b } else { a }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => set
            .iter()
            .filter(|e| usable(e))
            .min_by_key(|e| e.in_flight()),
    }
}

/// The next endpoint in turn that can be picked.
fn round_robin<'a>(
    set: &'a [Arc<Endpoint>],
    next: &AtomicUsize,
    tried: &Tried,
    now: &mut Now,
) -> Option<&'a Arc<Endpoint>> {
    let start = next.fetch_add(1, Ordering::Relaxed);
    (0..set.len())
        .map(|offset| &set[start.wrapping_add(offset) % set.len()])
        .find(|e| !tried.contains(e.addr()) && e.pickable(now))
}

/// Every endpoint is out of rotation: the one ejected longest ago (most
/// likely back by now) rather than none.
fn least_recently_ejected<'a>(
    set: &'a [Arc<Endpoint>],
    tried: &Tried,
) -> Option<&'a Arc<Endpoint>> {
    set.iter()
        .filter(|e| !tried.contains(e.addr()))
        .min_by_key(|e| e.ejected_at())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointSpec;

    fn set(count: u16) -> Vec<Arc<Endpoint>> {
        (0..count)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i));
                Arc::new(Endpoint::new(EndpointSpec::local(addr), Arc::default()))
            })
            .collect()
    }

    #[test]
    fn balance_names_round_trip() {
        for balance in [Balance::LeastRequests, Balance::RoundRobin] {
            assert_eq!(balance.to_string().parse::<Balance>(), Ok(balance));
        }
        assert_eq!(Balance::default(), Balance::LeastRequests);
        assert!("random".parse::<Balance>().is_err());
    }

    #[test]
    fn least_requests_prefers_the_endpoint_with_fewer_in_flight() {
        let set = set(2);
        let _busy: Vec<_> = (0..5).map(|_| set[0].begin()).collect();
        let next = AtomicUsize::new(0);
        for _ in 0..100 {
            let chosen = pick(Balance::LeastRequests, &set, &next, &Tried::default());
            assert_eq!(chosen.map(|e| e.addr()), Some(set[1].addr()));
        }
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_skips_those_out_of_rotation() {
        let set = set(3);
        let next = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .filter_map(|_| pick(Balance::RoundRobin, &set, &next, &Tried::default()))
            .map(|e| e.addr().port())
            .collect();
        assert_eq!(picks, [1000, 1001, 1002, 1000, 1001, 1002]);
        set[1].set_healthy(false);
        for _ in 0..6 {
            let chosen = pick(Balance::RoundRobin, &set, &next, &Tried::default());
            assert_ne!(chosen.map(|e| e.addr().port()), Some(1001));
        }
    }

    #[test]
    fn a_retry_excludes_tried_endpoints_and_stops_when_all_were_tried() {
        let set = set(2);
        let next = AtomicUsize::new(0);
        let mut tried = Tried::default();
        tried.push(set[0].addr());
        for balance in [Balance::LeastRequests, Balance::RoundRobin] {
            let chosen = pick(balance, &set, &next, &tried);
            assert_eq!(chosen.map(|e| e.addr()), Some(set[1].addr()));
        }
        tried.push(set[1].addr());
        assert!(pick(Balance::LeastRequests, &set, &next, &tried).is_none());
    }

    #[test]
    fn when_every_endpoint_is_out_the_least_recently_ejected_is_tried() {
        let set = set(3);
        set[2].eject();
        std::thread::sleep(std::time::Duration::from_millis(3));
        set[0].eject();
        set[1].eject();
        for balance in [Balance::LeastRequests, Balance::RoundRobin] {
            let chosen = pick(balance, &set, &AtomicUsize::new(0), &Tried::default());
            assert_eq!(chosen.map(|e| e.addr()), Some(set[2].addr()));
        }
    }
}
