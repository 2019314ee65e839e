//! An immutable set of resources for one gateway profile. Each resource's version is a hash of its
//! encoded bytes, so an unchanged resource keeps its version and is not re-sent; a type's version
//! is a hash of its resources' names and versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Name;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::resources::{self, Resource};
use crate::policy::GatewaySpec;

/// Resource types in the order a change is pushed: clusters and secrets before the listeners that
/// use them, listeners before the routes they name (Envoy's make-before-break order).
pub fn type_order() -> [String; 4] {
    [Cluster::type_url(), Secret::type_url(), Listener::type_url(), RouteConfiguration::type_url()]
}

/// Types Envoy subscribes to with a wildcard (all resources of the type).
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == Cluster::type_url() || type_url == Listener::type_url()
}

/// Short name of a type URL for logs and the admin API (`Cluster`, `Listener`, ...).
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

#[derive(Debug, Clone)]
pub struct VersionedResource {
    pub name: String,
    pub version: String,
    pub any: Any,
}

#[derive(Debug, Clone, Default)]
pub struct TypeSnapshot {
    pub version: String,
    pub resources: BTreeMap<String, VersionedResource>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Hash of every type's version.
    pub version: String,
    /// The policy version this snapshot was built from.
    pub policy_version: String,
    pub profile: String,
    types: BTreeMap<String, TypeSnapshot>,
}

impl Snapshot {
    pub fn from_resources(profile: &str, policy_version: &str, resources: Vec<(String, Resource)>) -> Self {
        let mut types: BTreeMap<String, TypeSnapshot> = BTreeMap::new();
        for (type_url, r) in resources {
            let version = format!("{:016x}", xxh3_64(&r.any.value));
            types
                .entry(type_url)
                .or_default()
                .resources
                .insert(r.name.clone(), VersionedResource { name: r.name, version, any: r.any });
        }
        let mut all = Xxh3::new();
        for (type_url, t) in types.iter_mut() {
            let mut h = Xxh3::new();
            for r in t.resources.values() {
                h.update(r.name.as_bytes());
                h.update(&[0]);
                h.update(r.version.as_bytes());
            }
            t.version = format!("{:016x}", h.digest());
            all.update(type_url.as_bytes());
            all.update(t.version.as_bytes());
        }
        Snapshot {
            version: format!("{:016x}", all.digest()),
            policy_version: policy_version.to_string(),
            profile: profile.to_string(),
            types,
        }
    }

    /// The gateway's resources for `spec`.
    pub fn for_gateway(spec: &GatewaySpec, policy_version: &str) -> Self {
        let cluster = Cluster::type_url();
        let listener = Listener::type_url();
        let route = RouteConfiguration::type_url();
        let mut list = vec![
            (cluster.clone(), resources::authz_cluster(spec)),
            (cluster.clone(), resources::dfp_cluster(spec)),
            (listener.clone(), resources::http_listener(spec)),
            (route, resources::http_route(spec)),
        ];
        if let Some(tls) = spec.tls_listen {
            list.push((listener, resources::tls_listener(spec, tls)));
        }
        if let Some(tls) = resources::dfp_tls_cluster(spec) {
            list.push((cluster.clone(), tls));
        }
        if let Some(otel) = resources::otel_cluster(spec) {
            list.push((cluster, otel));
        }
        list.extend(resources::tls_secrets(spec).into_iter().map(|s| (Secret::type_url(), s)));
        Snapshot::from_resources(&spec.name, policy_version, list)
    }

    /// Every type's resources, by type URL.
    pub fn types(&self) -> impl Iterator<Item = (&String, &TypeSnapshot)> {
        self.types.iter()
    }

    pub fn get(&self, type_url: &str) -> Option<&TypeSnapshot> {
        self.types.get(type_url)
    }

    /// Version of one type; an empty string for a type with no resources.
    pub fn type_version(&self, type_url: &str) -> &str {
        self.types.get(type_url).map(|t| t.version.as_str()).unwrap_or("")
    }
}

pub type SharedSnapshot = Arc<Snapshot>;

/// Every gateway profile's snapshot for one policy version; each ADS stream picks its node's.
#[derive(Debug, Clone)]
pub struct SnapshotSet {
    pub default: SharedSnapshot,
    /// Node `cluster` or `id` -> snapshot of the Gateway that names it.
    pub by_node: std::collections::HashMap<String, SharedSnapshot>,
}

impl SnapshotSet {
    pub fn single(snapshot: Snapshot) -> Self {
        SnapshotSet { default: Arc::new(snapshot), by_node: Default::default() }
    }

    /// Snapshots for the policy's `kind: Gateway` documents. `fallback` is the default gateway when
    /// no Gateway document omits `nodes`; its authz address also fills Gateways that name none.
    pub fn build(policy: &crate::policy::CompiledPolicy, fallback: &GatewaySpec) -> Self {
        let mut default = None;
        let mut by_node = std::collections::HashMap::new();
        for cfg in &policy.gateways {
            // A Gateway that names no authz address reaches egressd where the fallback does.
            let spec = GatewaySpec {
                authz_address: cfg.authz_address.clone().or_else(|| fallback.authz_address.clone()),
                dns_firewall_address: cfg.dns_firewall_address.or(fallback.dns_firewall_address),
                ..cfg.clone()
            }
            .with_dns_firewall(policy.dns.as_ref());
            let snap = Arc::new(Snapshot::for_gateway(&spec, &policy.version));
            if cfg.nodes.is_empty() {
                default = Some(snap.clone());
            }
            for node in &cfg.nodes {
                by_node.insert(node.clone(), snap.clone());
            }
        }
        let default = default.unwrap_or_else(|| {
            let spec =
                GatewaySpec { trust_forwarded_client_cert: policy.trust_forwarded_client_cert, ..fallback.clone() }
                    .with_dns_firewall(policy.dns.as_ref());
            Arc::new(Snapshot::for_gateway(&spec, &policy.version))
        });
        SnapshotSet { default, by_node }
    }

    /// A node's snapshot: by its cluster, else its id, else the default gateway's.
    pub fn select(&self, node: &envoy_types::pb::envoy::config::core::v3::Node) -> SharedSnapshot {
        self.by_node.get(&node.cluster).or_else(|| self.by_node.get(&node.id)).unwrap_or(&self.default).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GatewaySpec {
        GatewaySpec::local("127.0.0.1:18000".parse().unwrap())
    }

    #[test]
    fn unchanged_resources_keep_their_versions() {
        let a = Snapshot::for_gateway(&spec(), "p1");
        let b = Snapshot::for_gateway(&spec(), "p2");
        assert_eq!(a.version, b.version, "same resources, same snapshot version");
        let mut other = spec();
        other.authz_timeout_ms = 250;
        let c = Snapshot::for_gateway(&other, "p1");
        let cl = Cluster::type_url();
        assert_eq!(a.type_version(&cl), c.type_version(&cl), "clusters did not change");
        assert_ne!(a.type_version(&Listener::type_url()), c.type_version(&Listener::type_url()));
        assert_ne!(a.version, c.version);
    }

    #[test]
    fn types_and_names() {
        let s = Snapshot::for_gateway(&spec(), "p");
        let names = |t: &str| s.get(t).unwrap().resources.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&Cluster::type_url()), ["egress_dfp", "egressd_authz"]);
        assert_eq!(names(&Listener::type_url()), ["egress_http", "egress_tls"]);
        assert_eq!(names(&RouteConfiguration::type_url()), ["egress_http"]);
        assert_eq!(short_type(&Cluster::type_url()), "Cluster");
    }
}
