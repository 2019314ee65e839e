//! What the admin port shows under `/xds`: connected nodes, per type what was sent and ACKed, and
//! the last NACK with Envoy's error. Written by stream tasks on protocol events (not the Check hot
//! path), read by the admin API.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// The version Envoy rejected.
    pub rejected_version: String,
    /// Envoy's error_detail message.
    pub message: String,
    pub at_unix: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    pub sent_version: String,
    pub acked_version: String,
    pub last_nack: Option<Nack>,
    pub nacks: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    pub node_id: String,
    pub node_cluster: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    pub profile: String,
    pub connected_at_unix: u64,
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    streams: Mutex<BTreeMap<u64, StreamStatus>>,
    pub pushes: AtomicU64,
    pub nacks: AtomicU64,
}

impl Registry {
    pub fn connect(&self, node_id: &str, node_cluster: &str, protocol: &'static str, profile: &str) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let status = StreamStatus {
            node_id: node_id.to_string(),
            node_cluster: node_cluster.to_string(),
            protocol,
            profile: profile.to_string(),
            connected_at_unix: crate::clock::unix_now() as u64,
            types: BTreeMap::new(),
        };
        self.streams.lock().expect("registry lock").insert(id, status);
        id
    }

    pub fn disconnect(&self, id: u64) {
        self.streams.lock().expect("registry lock").remove(&id);
    }

    fn with_type(&self, id: u64, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(s) = self.streams.lock().expect("registry lock").get_mut(&id) {
            f(s.types.entry(super::snapshot::short_type(type_url).to_string()).or_default());
        }
    }

    pub fn sent(&self, id: u64, type_url: &str, version: &str) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        self.with_type(id, type_url, |t| t.sent_version = version.to_string());
    }

    pub fn acked(&self, id: u64, type_url: &str, version: &str) {
        self.with_type(id, type_url, |t| t.acked_version = version.to_string());
    }

    pub fn nacked(&self, id: u64, type_url: &str, rejected_version: &str, message: &str) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
        self.with_type(id, type_url, |t| {
            t.nacks += 1;
            t.last_nack = Some(Nack {
                rejected_version: rejected_version.to_string(),
                message: message.to_string(),
                at_unix: crate::clock::unix_now() as u64,
            });
        });
    }

    /// Streams currently open.
    pub fn connected(&self) -> usize {
        self.streams.lock().expect("registry lock").len()
    }

    pub fn snapshot(&self) -> Vec<StreamStatus> {
        self.streams.lock().expect("registry lock").values().cloned().collect()
    }
}
