//! IP addresses in one canonical form, for requests and for policy CIDRs alike.
//!
//! An IPv6 address can carry an IPv4 address inside it; reaching it reaches that IPv4 host (a
//! dual-stack socket connects `::ffff:a.b.c.d` to `a.b.c.d`, a NAT64 gateway translates
//! `64:ff9b::a.b.c.d`). Were those matched as IPv6, `[::ffff:169.254.169.254]` would slip past a deny
//! of `169.254.169.254/32`. So an embedded IPv4 address *is* that IPv4 address here:
//!
//! * IPv4-mapped `::ffff:0:0/96` (RFC 4291 2.5.5.2),
//! * the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052),
//! * IPv4-compatible `::/96` (RFC 4291 2.5.5.1, deprecated), except `::` and `::1`, which are IPv6's
//!   own unspecified and loopback addresses.
//!
//! Requests are canonicalized with `canonical`; a policy CIDR matches the canonical forms of its
//! addresses (`ipv4_images`): `::ffff:10.0.0.0/104` is `10.0.0.0/8`, and a CIDR that covers a whole
//! embedding prefix (`::/0`) covers all of IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The IPv6 prefixes (all /96) whose low 32 bits are an IPv4 address.
const EMBEDDING_PREFIXES: [u128; 3] = [
    0x0000_0000_0000_0000_0000_ffff_0000_0000, // ::ffff:0:0/96, mapped
    0x0064_ff9b_0000_0000_0000_0000_0000_0000, // 64:ff9b::/96, NAT64 well-known prefix
    0,                                         // ::/96, compatible
];

/// `ip` with any embedded IPv4 address taken out of its IPv6 wrapping.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address stands for, if it is one of the embedding forms.
pub fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    let prefix = bits & !0xffff_ffff;
    if prefix == 0 && bits <= 1 {
        return None; // `::` and `::1` are IPv6 addresses in their own right
    }
    EMBEDDING_PREFIXES.contains(&prefix).then(|| Ipv4Addr::from(bits as u32))
}

/// The IPv4 networks whose addresses a CIDR also matches, because it contains their embedded
/// IPv6 forms: `::ffff:10.0.0.0/104` -> `10.0.0.0/8`; `::/0` or `::ffff:0:0/96` -> `0.0.0.0/0`.
/// Empty for IPv4 CIDRs and for IPv6 CIDRs that hold no embedded addresses.
pub fn ipv4_images(net: IpNet) -> Vec<Ipv4Net> {
    let IpNet::V6(net) = net else { return Vec::new() };
    let mut images = Vec::new();
    for prefix in EMBEDDING_PREFIXES {
        let image = image_in(net, prefix);
        if let Some(image) = image
            && !images.contains(&image)
        {
            images.push(image);
        }
    }
    images
}

/// The part of `net` inside the /96 `prefix`, as an IPv4 network.
fn image_in(net: Ipv6Net, prefix: u128) -> Option<Ipv4Net> {
    let len = net.prefix_len();
    let bits = u128::from(net.network());
    let embedding = Ipv6Net::new(Ipv6Addr::from(prefix), 96).expect("a /96 is a valid prefix");
    if len <= 96 {
        // `net` is at least as wide as the embedding prefix: it holds all of it, or none.
        return net.contains(&embedding).then(|| Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"));
    }
    (bits & !0xffff_ffff == prefix).then(|| Ipv4Net::new(Ipv4Addr::from(bits as u32), len - 96).expect("len <= 32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn embedded_ipv4_is_ipv4() {
        assert_eq!(canonical(ip("::ffff:169.254.169.254")), ip("169.254.169.254"));
        assert_eq!(canonical(ip("::ffff:a9fe:a9fe")), ip("169.254.169.254"));
        assert_eq!(canonical(ip("64:ff9b::10.30.0.5")), ip("10.30.0.5"));
        assert_eq!(canonical(ip("::10.30.0.5")), ip("10.30.0.5"));
        assert_eq!(canonical(ip("10.30.0.5")), ip("10.30.0.5"));
    }

    #[test]
    fn ipv6_addresses_stay_ipv6() {
        for s in ["::", "::1", "fd00::1", "2001:db8::10.30.0.5", "64:ff9b:1::a00:5", "::fffe:a00:5"] {
            assert_eq!(canonical(ip(s)), ip(s), "{s}");
        }
    }

    #[test]
    fn cidr_images() {
        let images = |s: &str| ipv4_images(s.parse().unwrap()).iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(images("::ffff:10.0.0.0/104"), ["10.0.0.0/8"]);
        assert_eq!(images("::ffff:169.254.169.254/128"), ["169.254.169.254/32"]);
        assert_eq!(images("::ffff:0:0/96"), ["0.0.0.0/0"]);
        assert_eq!(images("64:ff9b::/96"), ["0.0.0.0/0"]);
        assert_eq!(images("::/0"), ["0.0.0.0/0"]);
        assert!(images("fd00::/8").is_empty());
        assert!(images("2001:db8::/32").is_empty());
        assert!(images("10.0.0.0/8").is_empty());
        assert!(images("::ffff:0:0/95").len() == 1, "a /95 around the mapped prefix holds all of it");
    }
}
