//! Break-glass grants: time-boxed, audited exceptions an operator grants through the admin API.
//!
//! A grant lets one service reach one destination (`HOST[:PORT]`) or anything, until it expires or
//! is revoked. It overrides the service's own denies and the default deny, never a mesh-wide deny
//! (the floor holds) nor an identity failure. Grants are persisted to a state file (written to a
//! temporary file, fsynced, renamed over the old one) so they survive a restart; expired and
//! revoked grants stay listed for a day, then are dropped.
//!
//! The Check path reads the active grants through `arc-swap` and only looks when a request would
//! be denied and some grant is active; admin calls (rare) take a mutex and publish a new set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::policy::fqdn::{Host, parse_authority};
use crate::policy::{Decision, Destination, GrantRef, Outcome, Reason};

/// How long an inactive grant stays listed.
const KEEP_INACTIVE_SECONDS: i64 = 86_400;

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
    #[error("break-glass state file {path}: {source}")]
    State { path: String, source: std::io::Error },
    #[error("break-glass state file {path} is not valid: {message}")]
    Corrupt { path: String, message: String },
}

/// What an operator asks for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub service: String,
    pub to: Option<String>,
    pub duration_seconds: u64,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    grants: Vec<Grant>,
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
    path: Option<PathBuf>,
    max_seconds: u64,
    salt: u64,
    seq: std::sync::atomic::AtomicU64,
    all: Mutex<Vec<Arc<Grant>>>,
    active: ArcSwap<ActiveGrants>,
}

impl std::fmt::Debug for GrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantStore").field("path", &self.path).field("max_seconds", &self.max_seconds).finish()
    }
}

impl GrantStore {
    /// A store kept only in memory (tests, tools).
    pub fn in_memory(max_seconds: u64) -> Self {
        GrantStore {
            path: None,
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
        let store = GrantStore { path: Some(path.to_path_buf()), ..GrantStore::in_memory(max_seconds) };
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
        self.update(now, |all| all.push(grant.clone()))?;
        tracing::warn!(
            id = %grant.id, service = %grant.service, target = %grant.target(), grantor = %grant.grantor,
            expires_unix = grant.expires_unix, reason = %grant.reason, "BREAK-GLASS grant issued"
        );
        Ok(grant)
    }

    pub fn revoke(&self, id: &str, revoker: &str, now: i64) -> Result<Arc<Grant>, GrantError> {
        let mut revoked = None;
        let mut failure = None;
        self.update(now, |all| match all.iter_mut().find(|g| g.id == id) {
            None => failure = Some(GrantError::UnknownGrant(id.to_string())),
            Some(g) if !g.is_active(now) => failure = Some(GrantError::Inactive(id.to_string())),
            Some(g) => {
                let mut updated = (**g).clone();
                updated.revoked_unix = Some(now);
                updated.revoker = Some(revoker.to_string());
                *g = Arc::new(updated);
                revoked = Some(g.clone());
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

    /// Changes the grant list, drops long-inactive grants, persists, and publishes the active set.
    fn update(&self, now: i64, change: impl FnOnce(&mut Vec<Arc<Grant>>)) -> Result<(), GrantError> {
        let mut all = self.all.lock().expect("grants lock");
        let mut next = all.clone();
        change(&mut next);
        next.retain(|g| g.is_active(now) || now - g.revoked_unix.unwrap_or(g.expires_unix) < KEEP_INACTIVE_SECONDS);
        if let Some(path) = &self.path {
            persist(path, &next)?;
        }
        *all = next;
        drop(all);
        self.publish(now);
        Ok(())
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

/// The grants of a state file, as written (a missing file has none); nothing is pruned or
/// rewritten (`report stale` reads a running server's file).
pub fn read_state(path: &Path) -> Result<Vec<Grant>, GrantError> {
    let shown = || path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<StateFile>(&text)
            .map(|state| state.grants)
            .map_err(|e| GrantError::Corrupt { path: shown(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(GrantError::State { path: shown(), source }),
    }
}

/// Writes the state atomically: a temporary file in the same directory, fsynced, renamed over
/// the old one, then the directory fsynced, so a crash leaves the old or the new file, whole.
fn persist(path: &Path, grants: &[Arc<Grant>]) -> Result<(), GrantError> {
    use std::io::Write;
    let err = |source| GrantError::State { path: path.display().to_string(), source };
    let state = StateFile { grants: grants.iter().map(|g| (**g).clone()).collect() };
    let text = serde_json::to_vec_pretty(&state).expect("grants serialize");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(&text).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
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
}
