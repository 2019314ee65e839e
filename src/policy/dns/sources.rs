//! Which service a DNS client is, by its source address: the DnsFirewall's `sources` CIDRs,
//! longest prefix first. Keyed like the matcher's CIDR rules (prefix length, masked address), so a
//! lookup costs one hash probe per distinct prefix length, not one per source.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::policy::ServiceIdx;
use crate::policy::addr::canonical;

#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    v4: Family,
    v6: Family,
    len: usize,
}

#[derive(Debug, Clone, Default)]
struct Family {
    /// Distinct prefix lengths, longest first.
    lens: Vec<u8>,
    by_prefix: FxHashMap<(u8, u128), ServiceIdx>,
}

impl SourceMap {
    /// Adds `net` for `service`; `Err` with the service already mapped at exactly that CIDR.
    pub fn insert(&mut self, net: IpNet, service: ServiceIdx) -> Result<(), ServiceIdx> {
        let (family, bits, width) = match net {
            IpNet::V4(n) => (&mut self.v4, u32::from(n.network()) as u128, 32),
            IpNet::V6(n) => (&mut self.v6, u128::from(n.network()), 128),
        };
        let len = net.prefix_len();
        let key = (len, mask(bits, len, width));
        if let Some(&owner) = family.by_prefix.get(&key) {
            return Err(owner);
        }
        family.by_prefix.insert(key, service);
        if !family.lens.contains(&len) {
            family.lens.push(len);
            family.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.len += 1;
        Ok(())
    }

    /// The service of the most specific source CIDR holding `client` (IPv4-mapped IPv6 clients, as
    /// a dual-stack socket reports IPv4 peers, are their IPv4 address).
    pub fn lookup(&self, client: IpAddr) -> Option<ServiceIdx> {
        let (family, bits, width) = match canonical(client) {
            IpAddr::V4(v4) => (&self.v4, u32::from(v4) as u128, 32),
            IpAddr::V6(v6) => (&self.v6, u128::from(v6), 128),
        };
        family.lens.iter().find_map(|&len| family.by_prefix.get(&(len, mask(bits, len, width))).copied())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn mask(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - len);
    let keep = if width == 32 { keep & 0xffff_ffff } else { keep };
    bits & keep
}
