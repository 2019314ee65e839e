//! The shared store: grants and guard trips in etcd, under one key prefix, so every replica of
//! egressd applies what an operator did through any of them.
//!
//! Writes: a grant or revocation is put before it applies locally, so one that etcd did not take
//! is refused (`StoreError::Unavailable`, UNAVAILABLE on the admin API) and no replica applies it.
//! Trips and resets are shared without waiting: the sampler must not block on etcd.
//! Reads: one background task lists the prefix, applies it to the in-memory sets, then watches
//! from the listed revision; when the watch breaks (etcd gone, compaction) it lists and watches
//! again, so replicas converge when etcd returns. Meanwhile they serve the last known state, and
//! grants still end by their own expiry time. A value that does not parse is logged and skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};

use super::{StateStore, StoreError};
use crate::runtime::RuntimeOverrides;
use crate::runtime::breakglass::{Grant, KEEP_INACTIVE_SECONDS};
use crate::runtime::guard::Tripped;

/// How long a grant or revocation waits for etcd before it is refused.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to list and watch again while etcd is away.
const RETRY: Duration = Duration::from_millis(250);

const GRANTS: &str = "grants/";
const TRIPS: &str = "guard-trips/";

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` (or `HOST:PORT`), one per etcd member.
    pub endpoints: Vec<String>,
    /// Every key egressd writes starts with it; replicas that share state share the prefix.
    pub prefix: String,
}

impl EtcdConfig {
    /// A prefix always ends with `/`, so `/egressd` and `/egressd-test` cannot see each other.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        EtcdConfig { endpoints, prefix }
    }
}

/// One entry under the prefix.
#[derive(Debug, PartialEq)]
enum Entry {
    Grant(Grant),
    Trip(String, Tripped),
}

pub struct EtcdStore {
    config: EtcdConfig,
    /// Made at first use, inside the async runtime (the client spawns its own tasks), and made
    /// anew after a failure: a fresh client connects as soon as etcd is back, where the old one's
    /// channel would wait out its reconnect backoff (seconds). Connecting is lazy, so a client is
    /// made while etcd is down.
    client: std::sync::Mutex<Option<Client>>,
    /// Set once the prefix was first listed into the runtime.
    synced: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("config", &self.config).finish()
    }
}

impl EtcdStore {
    pub fn new(config: EtcdConfig) -> Self {
        EtcdStore { config, client: Default::default(), synced: tokio::sync::watch::Sender::new(false) }
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { endpoints: self.config.endpoints.join(","), message: message.to_string() }
    }

    async fn client(&self) -> Result<Client, etcd_client::Error> {
        if let Some(client) = self.current_client() {
            return Ok(client);
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            // Pings find a silently dead connection, so the watch breaks and is re-made.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(self.config.endpoints.clone(), Some(options)).await?;
        *self.client.lock().expect("client lock") = Some(client.clone());
        Ok(client)
    }

    fn current_client(&self) -> Option<Client> {
        self.client.lock().expect("client lock").clone()
    }

    /// After a failure: the next call connects afresh.
    fn forget_client(&self) {
        *self.client.lock().expect("client lock") = None;
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}{name}", self.config.prefix)
    }

    /// Puts a grant on a lease that ends a day after the grant does: etcd forgets it as the
    /// file store would.
    async fn put_grant(&self, grant: &Grant) -> Result<(), etcd_client::Error> {
        let mut client = self.client().await?;
        let ended = grant.revoked_unix.unwrap_or(grant.expires_unix);
        let ttl = (ended + KEEP_INACTIVE_SECONDS - crate::clock::unix_now()).max(1);
        let lease = client.lease_grant(ttl, None).await?.id();
        let value = serde_json::to_vec(grant).expect("grants serialize");
        client.put(self.key(GRANTS, &grant.id), value, Some(PutOptions::new().with_lease(lease))).await?;
        Ok(())
    }

    /// What a key and value under the prefix hold; `None` (logged) for bad data or foreign keys.
    fn parse(&self, key: &[u8], value: &[u8]) -> Option<Entry> {
        let key = String::from_utf8_lossy(key);
        let rest = key.strip_prefix(&self.config.prefix)?;
        let parsed = if rest.starts_with(GRANTS) {
            serde_json::from_slice::<Grant>(value).map(Entry::Grant)
        } else if let Some(service) = rest.strip_prefix(TRIPS) {
            serde_json::from_slice::<Tripped>(value).map(|t| Entry::Trip(service.to_string(), t))
        } else {
            tracing::debug!(%key, "etcd: not an egressd key; ignored");
            return None;
        };
        parsed.map_err(|e| tracing::warn!(%key, error = %e, "etcd: value does not parse; skipped")).ok()
    }

    /// Lists the prefix into `runtime`, then applies watched changes until the watch ends.
    async fn sync_and_watch(&self, runtime: &RuntimeOverrides, reachable: &mut bool) -> Result<(), etcd_client::Error> {
        let mut client = self.client().await?;
        let listed = client.get(self.config.prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
        let revision = listed.header().map(|h| h.revision()).unwrap_or(0);
        let (mut grants, mut trips) = (Vec::new(), HashMap::new());
        for entry in listed.kvs().iter().filter_map(|kv| self.parse(kv.key(), kv.value())) {
            match entry {
                Entry::Grant(g) => grants.push(g),
                Entry::Trip(service, t) => drop(trips.insert(service, t)),
            }
        }
        let now = crate::clock::unix_now();
        tracing::info!(grants = grants.len(), trips = trips.len(), revision, "etcd: state listed");
        runtime.grants.replicate_all(grants, now);
        // A trip wins: one that happened here while etcd was away is shared now.
        for (service, trip) in runtime.tripped().iter().filter(|(s, _)| !trips.contains_key(*s)) {
            self.share_trip(service, trip);
        }
        for (service, trip) in trips {
            runtime.adopt_trip(&service, trip);
        }
        self.synced.send_replace(true);
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = client.watch(self.config.prefix.as_str(), Some(options)).await?;
        if !*reachable {
            tracing::info!("etcd: reachable again; watching for changes");
            *reachable = true;
        }
        while let Some(response) = stream.message().await? {
            if response.canceled() {
                tracing::warn!(reason = response.cancel_reason(), "etcd: watch canceled; listing again");
                return Ok(());
            }
            let now = crate::clock::unix_now();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => match self.parse(kv.key(), kv.value()) {
                        Some(Entry::Grant(g)) => runtime.grants.replicate_put(g, now),
                        Some(Entry::Trip(service, t)) => runtime.adopt_trip(&service, t),
                        None => {}
                    },
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        let Some(rest) = key.strip_prefix(&self.config.prefix) else { continue };
                        if let Some(id) = rest.strip_prefix(GRANTS) {
                            runtime.grants.replicate_delete(id, now);
                        } else if let Some(service) = rest.strip_prefix(TRIPS) {
                            runtime.adopt_reset(service, now);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn replicate(self: Arc<Self>, runtime: Arc<RuntimeOverrides>) {
        let mut reachable = true;
        loop {
            let outcome = self.sync_and_watch(&runtime, &mut reachable).await;
            if outcome.is_err() {
                self.forget_client();
            }
            match outcome {
                Ok(()) => tracing::warn!("etcd: watch ended; listing again"),
                // Once per outage at warn: retries every RETRY would flood the log.
                Err(e) if reachable => {
                    tracing::warn!(
                        endpoints = %self.config.endpoints.join(","), error = %e,
                        "etcd: unreachable; serving the last known grants and trips, refusing new grants"
                    );
                    reachable = false;
                }
                Err(e) => tracing::debug!(error = %e, "etcd: still unreachable"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

impl StateStore for EtcdStore {
    fn save_grant(&self, grant: &Grant, _all: &[Arc<Grant>]) -> Result<(), StoreError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| self.unavailable(e))?;
        let failure = match handle.block_on(tokio::time::timeout(WRITE_TIMEOUT, self.put_grant(grant))) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => self.unavailable(e),
            Err(_) => self.unavailable(format_args!("no answer within {WRITE_TIMEOUT:?}")),
        };
        self.forget_client();
        Err(failure)
    }

    fn share_trip(&self, service: &str, trip: &Tripped) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let (key, value) = (self.key(TRIPS, service), serde_json::to_vec(trip).expect("trips serialize"));
        let client = self.current_client();
        let service = service.to_string();
        handle.spawn(async move {
            let put = async move { client?.put(key, value, None).await.ok() };
            if tokio::time::timeout(WRITE_TIMEOUT, put).await.ok().flatten().is_none() {
                tracing::warn!(service, "etcd: trip not shared yet; it is shared when etcd is reachable again");
            }
        });
    }

    fn share_reset(&self, service: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let key = self.key(TRIPS, service);
        let client = self.current_client();
        let service = service.to_string();
        handle.spawn(async move {
            let delete = async move { client?.delete(key, None).await.ok() };
            if tokio::time::timeout(WRITE_TIMEOUT, delete).await.ok().flatten().is_none() {
                tracing::error!(
                    service,
                    "etcd: guard reset not shared (etcd unreachable); the trip returns when etcd does: reset again then"
                );
            }
        });
    }

    fn synced(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.synced.subscribe())
    }

    fn spawn_replication(self: Arc<Self>, runtime: Arc<RuntimeOverrides>) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(self.replicate(runtime)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(store: &EtcdStore, key: &str, value: &str) -> Option<Entry> {
        store.parse(key.as_bytes(), value.as_bytes())
    }

    #[test]
    fn keys_parse_by_kind_and_bad_values_are_skipped() {
        let store = EtcdStore::new(EtcdConfig::new(vec!["http://127.0.0.1:1".into()], "/egressd"));
        let grant = r#"{"id":"bg-1","service":"payments","host":null,"port":null,"createdUnix":1,"expiresUnix":2,"reason":"r","grantor":"a"}"#;
        let Some(Entry::Grant(g)) = parse(&store, "/egressd/grants/bg-1", grant) else { panic!("a grant") };
        assert_eq!((g.id.as_str(), g.service.as_str()), ("bg-1", "payments"));
        let trip = r#"{"atUnix":5,"denyRate":0.5,"checks":40,"windowSeconds":60}"#;
        let Some(Entry::Trip(service, t)) = parse(&store, "/egressd/guard-trips/c", trip) else { panic!("a trip") };
        assert_eq!((service.as_str(), t.checks), ("c", 40));
        assert_eq!(parse(&store, "/egressd/grants/bg-2", "{ not json"), None, "bad data is skipped");
        assert_eq!(parse(&store, "/egressd/guard-trips/c", "[]"), None);
        assert_eq!(parse(&store, "/egressd/other/x", "{}"), None, "foreign keys are ignored");
        assert_eq!(parse(&store, "/egressd-test/grants/bg-1", grant), None, "another prefix");
    }
}
