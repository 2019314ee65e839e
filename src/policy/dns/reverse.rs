//! Reverse-lookup names (`4.3.2.1.in-addr.arpa`, nibbles under `ip6.arpa`): which address a PTR
//! query asks about, and whether it is one of the private ranges whose names the upstream
//! (the fleet's own resolver) answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address a full reverse name stands for; `None` for other names and partial ones.
pub fn reverse_address(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 4 {
            return None;
        }
        for (i, label) in labels.iter().rev().enumerate() {
            if label.is_empty() || label.len() > 3 || (label.len() > 1 && label.starts_with('0')) {
                return None;
            }
            octets[i] = label.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let mut bits: u128 = 0;
    let mut count = 0;
    for label in rest.split('.').rev() {
        let [nibble] = label.as_bytes() else { return None };
        bits = (bits << 4) | u128::from((*nibble as char).to_digit(16)?);
        count += 1;
    }
    (count == 32).then(|| IpAddr::V6(Ipv6Addr::from(bits)))
}

/// Loopback, RFC 1918, link-local, shared address space (RFC 6598), unique-local IPv6.
pub fn is_private(ip: IpAddr) -> bool {
    match crate::policy::addr::canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_loopback() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}
