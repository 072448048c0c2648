//! IP ranges as flags take them (`10.0.0.0/8`, `2001:db8::/32`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address range: the addresses whose first `prefix` bits equal `addr`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not ADDRESS/PREFIX")]
    Shape(String),
    #[error("{0:?}: bad address")]
    Address(String),
    #[error("{0:?}: prefix must be 0..={1}")]
    Prefix(String, u8),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| CidrError::Shape(s.into()))?;
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|&p| p <= max)
            .ok_or(CidrError::Prefix(s.into(), max))?;
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    /// The range in the maps' 16-byte address form: (address, prefix bits), an IPv4 /n
    /// being the IPv4-mapped address with 96 + n bits.
    pub fn map_form(&self) -> ([u8; 16], u8) {
        match self.addr {
            std::net::IpAddr::V4(a) => (lb_common::v4_mapped(a.octets()), 96 + self.prefix),
            std::net::IpAddr::V6(a) => (a.octets(), self.prefix),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let p = u32::from(self.prefix);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
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

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_by_prefix_and_family() {
        assert!(c("198.51.100.0/24").contains("198.51.100.7".parse().unwrap()));
        assert!(!c("198.51.100.0/24").contains("198.51.101.7".parse().unwrap()));
        assert!(c("10.0.0.0/8").contains("10.255.0.1".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(!c("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(c("203.0.113.9/32").contains("203.0.113.9".parse().unwrap()));
        assert!(!c("203.0.113.9/32").contains("203.0.113.8".parse().unwrap()));
        assert!(c("2001:db8::/32").contains("2001:db8:1::5".parse().unwrap()));
        assert!(!c("2001:db8::/32").contains("2001:db9::5".parse().unwrap()));
        assert!(c("::/0").contains("fd00::1".parse().unwrap()));
    }

    #[test]
    fn bad_ranges_are_errors() {
        assert!(matches!(
            "10.0.0.0".parse::<Cidr>(),
            Err(CidrError::Shape(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(_, 32))
        ));
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }
}
