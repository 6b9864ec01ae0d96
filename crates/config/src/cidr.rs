//! `[proxy] trusted_proxies`: address blocks written `addr/prefix` (or a
//! lone address, a block of one), parsed with std types.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    /// Leading bits that must match: at most 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

/// Why a block could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address")]
    Address(String),
    #[error("prefix `{0}` is not a number from 0 to {1}")]
    Prefix(String, u8),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::Address(addr_text.to_owned()))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => bits,
            // Digits only: `u8::from_str` would take a leading `+`.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= bits)
                .ok_or_else(|| CidrError::Prefix(p.to_owned(), bits))?,
            Some(p) => return Err(CidrError::Prefix(p.to_owned(), bits)),
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_lone_addresses_parse() {
        let block: Cidr = "10.0.0.0/8".parse().expect("block");
        assert_eq!(block.to_string(), "10.0.0.0/8");
        assert_eq!("127.0.0.1".parse::<Cidr>().map(|c| c.prefix), Ok(32));
        assert_eq!("::1".parse::<Cidr>().map(|c| c.prefix), Ok(128));
        assert_eq!("fd00::/8".parse::<Cidr>().map(|c| c.prefix), Ok(8));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().map(|c| c.prefix), Ok(0));
    }

    #[test]
    fn malformed_blocks_say_what_is_wrong() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/x",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Prefix(..))),
                "{bad}"
            );
        }
        for bad in ["10.0.0/8", "localhost", "", "10.0.0.0.0/8"] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Address(_))),
                "{bad}"
            );
        }
    }
}
