//! Break-glass grants: time-boxed, audited exceptions an operator grants through the admin API.
//!
//! A grant lets one service reach one destination (`HOST[:PORT]`) or anything, until it expires or
//! is revoked. It overrides the service's own denies and the default deny, never a mesh-wide deny
//! (the floor holds) nor an identity failure. Grants are saved through a `StateStore` before
//! they apply (the state file by default, so they survive a restart; etcd to share them between
//! replicas); expired and revoked grants stay listed for a day, then are dropped.
//!
//! The Check path reads the active grants through `arc-swap` and only looks when a request would
//! be denied and some grant is active; admin calls and replication (rare) take a mutex and
//! publish a new set. A grant ends by its own expiry time, whatever the store is doing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::store::file::FileStore;
use super::store::{MemoryStore, StateStore, StoreError};
use crate::policy::fqdn::{Host, parse_authority};
use crate::policy::{Decision, Destination, GrantRef, Outcome, Reason};

pub use super::store::file::read_state;

/// How long an inactive grant stays listed.
pub(crate) const KEEP_INACTIVE_SECONDS: i64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub id: String,
    pub service: String,
    /// Normalized host; `None`: any destination.
    pub host: Option<String>,
    /// `None`: any port.
    pub port: Option<u16>,
    pub created_unix: i64,
    pub expires_unix: i64,
    pub reason: String,
    pub grantor: String,
    #[serde(default)]
    pub revoked_unix: Option<i64>,
    #[serde(default)]
    pub revoker: Option<String>,
}

impl Grant {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_unix.is_none() && now < self.expires_unix
    }

    fn covers(&self, dest: &Destination<'_>) -> bool {
        let host_ok = match (&self.host, &dest.host) {
            (None, _) => true,
            (Some(h), Host::Name(n)) => h == n.as_ref(),
            (Some(h), Host::Ip(ip)) => h.parse::<std::net::IpAddr>().is_ok_and(|g| g == *ip),
        };
        host_ok && self.port.is_none_or(|p| p == dest.port)
    }

    /// What a decision this grant makes says about it.
    pub fn as_ref_for_decisions(&self) -> GrantRef {
        GrantRef {
            id: self.id.clone(),
            grantor: self.grantor.clone(),
            reason: self.reason.clone(),
            target: self.target(),
            expires_unix: self.expires_unix,
        }
    }

    /// `api.partner.test:443`, `api.partner.test (any port)` or `any destination`.
    pub fn target(&self) -> String {
        match (&self.host, self.port) {
            (None, _) => "any destination".to_string(),
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => format!("{h} (any port)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("a grant needs a reason")]
    NoReason,
    #[error("a grant needs a destination (--to HOST[:PORT]) or --all, not both")]
    Target,
    #[error("destination `{0}`: {1}")]
    BadDestination(String, String),
    #[error("duration must be between 1 second and {max} seconds (got {got})")]
    Duration { got: u64, max: u64 },
    #[error("no service `{0}` in the live policy")]
    UnknownService(String),
    #[error("no grant `{0}`")]
    UnknownGrant(String),
    #[error("grant `{0}` is already inactive")]
    Inactive(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operator asks for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub service: String,
    pub to: Option<String>,
    pub duration_seconds: u64,
    pub reason: String,
}

/// Active grants by service name, for the Check path, each with the reference its decisions
/// carry (made once, so a decision a grant makes clones an `Arc`, no strings).
#[derive(Debug, Default)]
pub struct ActiveGrants {
    by_service: HashMap<String, Vec<ActiveGrant>>,
}

/// A grant and the reference its decisions carry.
type ActiveGrant = (Arc<Grant>, Arc<GrantRef>);

pub struct GrantStore {
    store: Arc<dyn StateStore>,
    max_seconds: u64,
    salt: u64,
    seq: std::sync::atomic::AtomicU64,
    all: Mutex<Vec<Arc<Grant>>>,
    active: ArcSwap<ActiveGrants>,
}

impl std::fmt::Debug for GrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantStore").field("store", &self.store).field("max_seconds", &self.max_seconds).finish()
    }
}

impl GrantStore {
    /// A store kept only in memory (tests, tools).
    pub fn in_memory(max_seconds: u64) -> Self {
        GrantStore::with_store(Arc::new(MemoryStore), max_seconds)
    }

    /// An empty store saving through `store` (etcd: its replication fills it).
    pub fn with_store(store: Arc<dyn StateStore>, max_seconds: u64) -> Self {
        GrantStore {
            store,
            max_seconds,
            salt: random_salt(),
            seq: Default::default(),
            all: Mutex::new(Vec::new()),
            active: ArcSwap::from_pointee(ActiveGrants::default()),
        }
    }

    /// Loads (or starts) the state file at `path`.
    pub fn open(path: &Path, max_seconds: u64, now: i64) -> Result<Self, GrantError> {
        let shown = path.display().to_string();
        let grants = read_state(path)?;
        let store = GrantStore::with_store(Arc::new(FileStore::new(path)), max_seconds);
        *store.all.lock().expect("grants lock") = grants.into_iter().map(Arc::new).collect();
        store.publish(now);
        let active = store.list(false, now).len();
        if active > 0 {
            tracing::warn!(active, path = %shown, "break-glass grants restored from the state file");
        }
        Ok(store)
    }

    /// Grants `req` on behalf of `grantor`. `known_service` says whether the live policy has it.
    pub fn grant(
        &self,
        req: &GrantRequest,
        grantor: &str,
        known_service: impl Fn(&str) -> bool,
        now: i64,
    ) -> Result<Arc<Grant>, GrantError> {
        let reason = req.reason.trim();
        if reason.is_empty() {
            return Err(GrantError::NoReason);
        }
        if !known_service(&req.service) {
            return Err(GrantError::UnknownService(req.service.clone()));
        }
        if req.duration_seconds == 0 || req.duration_seconds > self.max_seconds {
            return Err(GrantError::Duration { got: req.duration_seconds, max: self.max_seconds });
        }
        let (host, port) = match req.to.as_deref().map(str::trim) {
            None => (None, None),
            Some("") => return Err(GrantError::Target),
            Some(to) => {
                let (host, port) =
                    parse_authority(to).map_err(|e| GrantError::BadDestination(to.to_string(), e.to_string()))?;
                let host = match host {
                    Host::Name(n) => n.into_owned(),
                    Host::Ip(ip) => ip.to_string(),
                };
                (Some(host), port)
            }
        };
        let grant = Arc::new(Grant {
            id: new_id(now, self.salt, self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            service: req.service.clone(),
            host,
            port,
            created_unix: now,
            expires_unix: now + req.duration_seconds as i64,
            reason: reason.to_string(),
            grantor: grantor.to_string(),
            revoked_unix: None,
            revoker: None,
        });
        self.update(now, |all| {
            all.push(grant.clone());
            Some(grant.clone())
        })?;
        tracing::warn!(
            id = %grant.id, service = %grant.service, target = %grant.target(), grantor = %grant.grantor,
            expires_unix = grant.expires_unix, reason = %grant.reason, "BREAK-GLASS grant issued"
        );
        Ok(grant)
    }

    pub fn revoke(&self, id: &str, revoker: &str, now: i64) -> Result<Arc<Grant>, GrantError> {
        let mut failure = None;
        let revoked = self.update(now, |all| match all.iter_mut().find(|g| g.id == id) {
            None => {
                failure = Some(GrantError::UnknownGrant(id.to_string()));
                None
            }
            Some(g) if !g.is_active(now) => {
                failure = Some(GrantError::Inactive(id.to_string()));
                None
            }
            Some(g) => {
                let mut updated = (**g).clone();
                updated.revoked_unix = Some(now);
                updated.revoker = Some(revoker.to_string());
                *g = Arc::new(updated);
                Some(g.clone())
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let g = revoked.expect("set when no failure");
        tracing::warn!(id = %g.id, service = %g.service, revoker, "BREAK-GLASS grant revoked");
        Ok(g)
    }

    /// Grants, newest first; inactive ones only with `include_inactive`.
    pub fn list(&self, include_inactive: bool, now: i64) -> Vec<Arc<Grant>> {
        let all = self.all.lock().expect("grants lock");
        let mut out: Vec<_> = all.iter().filter(|g| include_inactive || g.is_active(now)).cloned().collect();
        out.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then_with(|| b.id.cmp(&a.id)));
        out
    }

    /// Applies an active grant to a decision that would not let the request through as allowed:
    /// a deny or would-deny by the service's own rules or the default deny becomes an allow that
    /// says which grant made it.
    pub fn apply<'p>(&self, decision: Decision<'p>, dest: Option<&Destination<'_>>, now: i64) -> Decision<'p> {
        if decision.outcome == Outcome::Allow
            || !matches!(decision.reason, Reason::ServiceDeny | Reason::NoMatchingAllow)
        {
            return decision;
        }
        let (Some(service), Some(dest)) = (decision.service, dest) else { return decision };
        let active = self.active.load();
        if active.by_service.is_empty() {
            return decision;
        }
        let Some(grants) = active.by_service.get(&service.name) else { return decision };
        match grants.iter().find(|(g, _)| g.is_active(now) && g.covers(dest)) {
            Some((_, grant_ref)) => Decision {
                outcome: Outcome::Allow,
                reason: Reason::BreakGlass(grant_ref.clone()),
                rule: None,
                near_miss: None,
                ..decision
            },
            None => decision,
        }
    }

    /// Changes the grant list, drops long-inactive grants, saves the changed grant (the one
    /// `change` returns; none: nothing changed, nothing saved), and publishes the active set.
    /// The lock is held while saving so that the file store writes the sets in order.
    fn update(
        &self,
        now: i64,
        change: impl FnOnce(&mut Vec<Arc<Grant>>) -> Option<Arc<Grant>>,
    ) -> Result<Option<Arc<Grant>>, GrantError> {
        let mut all = self.all.lock().expect("grants lock");
        let mut next = all.clone();
        let Some(changed) = change(&mut next) else { return Ok(None) };
        next.retain(|g| g.is_active(now) || now - g.revoked_unix.unwrap_or(g.expires_unix) < KEEP_INACTIVE_SECONDS);
        self.store.save_grant(&changed, &next)?;
        *all = next;
        drop(all);
        self.publish(now);
        Ok(Some(changed))
    }

    /// Applies a grant another replica saved (or this one's own, echoed back). A grant only ever
    /// changes by being revoked, so a revoked copy is never replaced by an older unrevoked one.
    pub fn replicate_put(&self, grant: Grant, now: i64) {
        {
            let mut all = self.all.lock().expect("grants lock");
            match all.iter_mut().find(|g| g.id == grant.id) {
                Some(g) if g.revoked_unix.is_some() || **g == grant => return,
                Some(g) => *g = Arc::new(grant),
                None => all.push(Arc::new(grant)),
            }
        }
        self.publish(now);
    }

    /// Forgets a grant that is gone from the shared store (its lease ran out a day after it ended).
    pub fn replicate_delete(&self, id: &str, now: i64) {
        let removed = {
            let mut all = self.all.lock().expect("grants lock");
            let before = all.len();
            all.retain(|g| g.id != id);
            all.len() != before
        };
        if removed {
            self.publish(now);
        }
    }

    /// Replaces every grant with the shared store's full set (after a re-list).
    pub fn replicate_all(&self, grants: Vec<Grant>, now: i64) {
        *self.all.lock().expect("grants lock") = grants.into_iter().map(Arc::new).collect();
        self.publish(now);
    }

    /// The store grants are saved through.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    fn publish(&self, now: i64) {
        let mut by_service: HashMap<String, Vec<ActiveGrant>> = HashMap::new();
        for g in self.all.lock().expect("grants lock").iter().filter(|g| g.is_active(now)) {
            by_service.entry(g.service.clone()).or_default().push((g.clone(), Arc::new(g.as_ref_for_decisions())));
        }
        self.active.store(Arc::new(ActiveGrants { by_service }));
    }
}

/// `bg-` + the grant time + a part from this store's random salt and a sequence number: unique
/// within a store, unpredictable across them, short enough to type.
fn new_id(now: i64, salt: u64, seq: u64) -> String {
    let random = xxhash_rust::xxh3::xxh3_64_with_seed(&seq.to_le_bytes(), salt);
    format!("bg-{now:x}-{:06x}", random & 0xff_ffff)
}

/// A random salt from the standard library's per-process hash keys (no clock involved).
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fqdn::parse_authority;
    use crate::policy::{CompiledPolicy, PolicySource, Protocol, compile};

    const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
    const T0: i64 = 1_800_000_000;

    fn policy() -> CompiledPolicy {
        let text = "kind: MeshDefaults\ntrustDomain: corp.example\ndeny:\n  - host: pastebin.com\n    justification: paste\n---\nkind: ServicePolicy\nservice: payments\nidentities: [spiffe://corp.example/ns/payments/sa/api]\nallow:\n  - host: api.stripe.com\n    justification: cards\n";
        compile(&PolicySource::from_text("p.yaml", text), T0).unwrap()
    }

    fn dest(to: &str) -> Destination<'static> {
        let (host, port) = parse_authority(to).unwrap();
        Destination { host: host.into_owned(), port: port.unwrap_or(443), protocol: Protocol::Https }
    }

    fn request(to: Option<&str>, seconds: u64) -> GrantRequest {
        GrantRequest {
            service: "payments".into(),
            to: to.map(str::to_string),
            duration_seconds: seconds,
            reason: "INC-1".into(),
        }
    }

    /// What the policy, then the store, decide for PAY -> `to` at `now`.
    fn decided(store: &GrantStore, policy: &CompiledPolicy, to: &str, now: i64) -> (Outcome, &'static str) {
        let d = dest(to);
        let decision = store.apply(policy.decide(Some(PAY), Ok(&d), None, now), Some(&d), now);
        (decision.outcome, decision.reason.code())
    }

    #[test]
    fn a_grant_lets_the_service_through_its_own_denies_until_it_expires() {
        let (store, p) = (GrantStore::in_memory(3600), policy());
        let known = |s: &str| s == "payments";
        assert_eq!(decided(&store, &p, "vendor.test:443", T0), (Outcome::Deny, "no-matching-allow"));
        let g = store.grant(&request(Some("vendor.test:443"), 600), "alice", known, T0).unwrap();
        assert_eq!(decided(&store, &p, "vendor.test:443", T0), (Outcome::Allow, "break-glass"));
        assert_eq!(decided(&store, &p, "vendor.test:8443", T0), (Outcome::Deny, "no-matching-allow"), "its port only");
        assert_eq!(decided(&store, &p, "other.test:443", T0), (Outcome::Deny, "no-matching-allow"));
        assert_eq!(decided(&store, &p, "vendor.test:443", T0 + 599), (Outcome::Allow, "break-glass"));
        assert_eq!(decided(&store, &p, "vendor.test:443", T0 + 600), (Outcome::Deny, "no-matching-allow"), "expired");
        // The decision names the grant.
        let d = dest("vendor.test:443");
        let decision = store.apply(p.decide(Some(PAY), Ok(&d), None, T0), Some(&d), T0);
        let Reason::BreakGlass(r) = &decision.reason else { panic!("{:?}", decision.reason) };
        assert_eq!((r.id.as_str(), r.grantor.as_str(), r.target.as_str()), (g.id.as_str(), "alice", "vendor.test:443"));
    }

    #[test]
    fn never_past_a_mesh_deny_or_an_unidentified_caller() {
        let (store, p) = (GrantStore::in_memory(3600), policy());
        store.grant(&request(None, 600), "alice", |_| true, T0).unwrap();
        assert_eq!(decided(&store, &p, "anything.test:443", T0), (Outcome::Allow, "break-glass"), "--all");
        assert_eq!(decided(&store, &p, "pastebin.com:443", T0), (Outcome::Deny, "mesh-deny"));
        let d = dest("anything.test:443");
        let unknown = p.decide(Some("spiffe://corp.example/ns/other/sa/x"), Ok(&d), None, T0);
        assert_eq!(store.apply(unknown, Some(&d), T0).reason.code(), "unknown-service");
    }

    #[test]
    fn revoking_ends_a_grant_and_bad_requests_are_refused() {
        let store = GrantStore::in_memory(3600);
        let known = |s: &str| s == "payments";
        let g = store.grant(&request(Some("vendor.test"), 60), "alice", known, T0).unwrap();
        assert_eq!(store.list(false, T0).len(), 1);
        assert_eq!(store.revoke(&g.id, "bob", T0 + 1).unwrap().revoker.as_deref(), Some("bob"));
        assert!(store.list(false, T0 + 1).is_empty());
        assert_eq!(store.list(true, T0 + 1).len(), 1, "listed a day after it ended");
        assert!(matches!(store.revoke(&g.id, "bob", T0 + 2), Err(GrantError::Inactive(_))));
        assert!(matches!(store.revoke("bg-nope", "bob", T0), Err(GrantError::UnknownGrant(_))));
        let bad = |r: GrantRequest| store.grant(&r, "alice", known, T0).unwrap_err().to_string();
        assert!(bad(GrantRequest { reason: " ".into(), ..request(None, 60) }).contains("reason"));
        assert!(bad(GrantRequest { service: "nope".into(), ..request(None, 60) }).contains("no service `nope`"));
        assert!(bad(request(None, 0)).contains("between 1 second and 3600"));
        assert!(bad(request(None, 3601)).contains("between 1 second and 3600"));
        assert!(bad(request(Some("a b"), 60)).contains("destination `a b`"));
        assert!(bad(request(Some(""), 60)).contains("--to HOST[:PORT]) or --all"));
    }

    #[test]
    fn grants_survive_a_restart_and_a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let store = GrantStore::open(&path, 3600, T0).unwrap();
        let a = store.grant(&request(Some("vendor.test"), 600), "alice", |_| true, T0).unwrap();
        let b = store.grant(&request(None, 600), "alice", |_| true, T0).unwrap();
        assert_ne!(a.id, b.id, "ids are unique");
        drop(store);
        let reopened = GrantStore::open(&path, 3600, T0 + 1).unwrap();
        let ids: Vec<String> = reopened.list(false, T0 + 1).iter().map(|g| g.id.clone()).collect();
        assert!(ids.contains(&a.id) && ids.contains(&b.id), "{ids:?}");
        // A day after they ended, grants are dropped at the next change.
        let later = T0 + 600 + KEEP_INACTIVE_SECONDS;
        reopened.grant(&request(None, 60), "carol", |_| true, later).unwrap();
        assert_eq!(reopened.list(true, later).len(), 1);
        std::fs::write(&path, "{ not json").unwrap();
        let err = GrantStore::open(&path, 3600, T0).unwrap_err().to_string();
        assert!(err.contains("grants.json") && err.contains("not valid"), "{err}");
    }

    /// A shared store that is away: etcd's refusal, without etcd.
    #[derive(Debug)]
    struct Away;

    impl StateStore for Away {
        fn save_grant(&self, _: &Grant, _: &[Arc<Grant>]) -> Result<(), StoreError> {
            Err(StoreError::Unavailable { endpoints: "http://etcd:2379".into(), message: "connection refused".into() })
        }
    }

    #[test]
    fn a_grant_the_store_refuses_applies_nowhere_and_says_why() {
        let (store, p) = (GrantStore::with_store(Arc::new(Away), 3600), policy());
        let err = store.grant(&request(Some("vendor.test"), 600), "alice", |_| true, T0).unwrap_err();
        assert!(matches!(err, GrantError::Store(StoreError::Unavailable { .. })), "{err:?}");
        assert!(err.to_string().contains("etcd (http://etcd:2379) is unavailable"), "{err}");
        assert!(store.list(true, T0).is_empty());
        assert_eq!(decided(&store, &p, "vendor.test:443", T0), (Outcome::Deny, "no-matching-allow"));
    }

    #[test]
    fn replicated_grants_apply_and_a_revocation_is_never_undone_by_an_older_copy() {
        let (ours, theirs, p) = (GrantStore::in_memory(3600), GrantStore::in_memory(3600), policy());
        let g = theirs.grant(&request(Some("vendor.test"), 600), "alice", |_| true, T0).unwrap();
        ours.replicate_put((*g).clone(), T0);
        assert_eq!(decided(&ours, &p, "vendor.test:443", T0), (Outcome::Allow, "break-glass"));
        let revoked = theirs.revoke(&g.id, "bob", T0 + 1).unwrap();
        ours.replicate_put((*revoked).clone(), T0 + 1);
        assert_eq!(decided(&ours, &p, "vendor.test:443", T0 + 1), (Outcome::Deny, "no-matching-allow"));
        ours.replicate_put((*g).clone(), T0 + 2);
        assert_eq!(decided(&ours, &p, "vendor.test:443", T0 + 2), (Outcome::Deny, "no-matching-allow"), "stale echo");
        ours.replicate_delete(&g.id, T0 + 3);
        assert!(ours.list(true, T0 + 3).is_empty());
        ours.replicate_all(vec![(*g).clone()], T0 + 4);
        assert_eq!(ours.list(false, T0 + 4).len(), 1, "a re-list is the whole truth");
    }
}
