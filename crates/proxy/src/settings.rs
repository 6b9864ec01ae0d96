//! Tunables of the data plane, and [`TrustedProxies`]: the peers whose
//! `X-Forwarded-*` headers are believed.

use std::net::IpAddr;
use std::time::Duration;

/// Limits and timeouts of the proxy. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// Largest accepted request body, in bytes (default 100 MiB). A bigger declared
    /// `Content-Length` is answered with 413 at once; a streamed body that
    /// grows past it is cut off (413 if no response has started yet).
    pub max_body: u64,
    /// Time a client has to send a complete request head, counted from the
    /// connection's start or from the first byte of a later request.
    /// Slow senders (slowloris) are disconnected.
    pub header_read_timeout: Duration,
    /// Time a keep-alive client connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Time to establish a TCP connection to an upstream; beyond it: 504.
    pub upstream_connect_timeout: Duration,
    /// Time from sending a request upstream to its response head; beyond it: 504.
    pub upstream_response_timeout: Duration,
    /// Peers (load balancers, CDNs) whose `X-Forwarded-For` is extended and
    /// whose `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP` are
    /// kept. From anyone else those headers are replaced (default: nobody
    /// is trusted).
    pub trusted_proxies: TrustedProxies,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            max_body: 100 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// `now + timeout` on tokio's clock, saturating far in the future (a
/// configured timeout may be huge).
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// An address block: `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of `prefix` leading bits of `addr` (host bits are
    /// ignored); `None` if `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix <= bits).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block. An IPv4-mapped IPv6 address (a v4
    /// client on a dual-stack socket) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(net.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(net.to_bits(), ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `bits` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let host_bits = u32::from(bits - prefix);
    a.checked_shr(host_bits).unwrap_or(0) == b.checked_shr(host_bits).unwrap_or(0)
}

/// The peers whose forwarding headers are believed (`[proxy]
/// trusted_proxies`). Empty by default: nobody.
///
/// `Copy`, like the rest of [`ProxySettings`] (copied per connection): the
/// list lives for the rest of the process. It is made once per
/// configuration load (a few bytes per block), so nothing grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrustedProxies(&'static [Cidr]);

impl TrustedProxies {
    pub fn new(blocks: impl IntoIterator<Item = Cidr>) -> TrustedProxies {
        let blocks: Vec<Cidr> = blocks.into_iter().collect();
        if blocks.is_empty() {
            return TrustedProxies::default();
        }
        TrustedProxies(Box::leak(blocks.into_boxed_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a peer at `ip` is trusted.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(text: &str, prefix: u8) -> Cidr {
        Cidr::new(text.parse().expect("ip"), prefix).expect("prefix")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_block_contains_exactly_the_addresses_under_its_prefix() {
        let ten = block("10.0.0.0", 8);
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!ten.contains(ip("::1")));
        let host = block("127.0.0.1", 32);
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        assert!(block("0.0.0.0", 0).contains(ip("203.0.113.9")));
        let v6 = block("fd00::", 8);
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(block("::1", 128).contains(ip("::1")));
        assert!(
            block("10.1.2.3", 8).contains(ip("10.9.9.9")),
            "host bits ignored"
        );
        assert_eq!(Cidr::new(ip("10.0.0.0"), 33), None);
        assert_eq!(Cidr::new(ip("::"), 129), None);
    }

    #[test]
    fn nobody_is_trusted_by_default() {
        let none = TrustedProxies::default();
        assert!(none.is_empty());
        assert!(!none.trusts(ip("127.0.0.1")));
        let some = TrustedProxies::new([block("10.0.0.0", 8), block("127.0.0.1", 32)]);
        assert!(some.trusts(ip("127.0.0.1")) && some.trusts(ip("10.3.2.1")));
        assert!(!some.trusts(ip("127.0.0.2")));
    }
}
