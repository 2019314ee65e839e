//! `egressd lint`: opinions about a policy that compiles. Each finding names an anti-pattern (a
//! stable id, `EGR001`...), where it is written, and how to fix it.
//!
//! Lint never decides whether a policy loads: `compile` does, and `validate` is its verdict. Lint
//! reads the compiled policy (rules keep their source locations and destinations) and only ever
//! adds findings. `now` is passed in (unix seconds), so expiry and `since:` ages are testable.

mod checks;
mod output;
#[cfg(test)]
mod tests;

use crate::policy::{CompiledPolicy, SourceLoc};

pub use output::{json, sarif, text};

/// How serious a finding is. `--fail-on` picks the lowest level that fails the run; a note never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    Note,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "note",
        }
    }

    /// Whether a finding of this level fails a run with `--fail-on threshold`.
    pub fn fails(self, threshold: Level) -> bool {
        self <= threshold
    }
}

/// One check: its id and the texts `--format sarif` publishes as the rule's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub id: &'static str,
    /// kebab-case name (SARIF `name`).
    pub name: &'static str,
    /// One line: what is wrong.
    pub short: &'static str,
    /// Why it matters.
    pub full: &'static str,
    /// How to fix it.
    pub help: &'static str,
    /// The level most of its findings have (some checks also report at another level).
    pub level: Level,
}

/// Every check, in id order.
pub const CHECKS: &[Check] = &[
    Check {
        id: "EGR001",
        name: "allow-all-cidr",
        short: "A CIDR allow of 0.0.0.0/0, ::/0, or public address space wider than a /16",
        full: "An allow of the whole Internet by address (or of a public block wider than a /16, which spans many unrelated parties) is allow-all by another name: it defeats default-deny for every destination reached by IP.",
        help: "Allow the destinations by name (host:), or narrow the CIDR to the addresses the service really reaches.",
        level: Level::Error,
    },
    Check {
        id: "EGR002",
        name: "portless-host-among-ported",
        short: "A host allow without ports on a service whose other allows name ports",
        full: "The service's other allows show that it knows its ports; an allow without `ports` lets any port through to that host (SSH, databases, anything it listens on).",
        help: "Add the ports the service uses, e.g. `ports: [443]`.",
        level: Level::Warning,
    },
    Check {
        id: "EGR003",
        name: "multi-tenant-wildcard",
        short: "A wildcard over a multi-tenant or user-content domain",
        full: "Names under hosting, storage and tunnel domains (`*.s3.amazonaws.com`, `*.cloudfront.net`, `*.herokuapp.com`, `*.github.io`, the Public Suffix List's private section) belong to different customers: a wildcard there allows every tenant, an attacker's bucket or app included, to receive data.",
        help: "Name the exact hosts (your bucket, your app), one allow each.",
        level: Level::Error,
    },
    Check {
        id: "EGR004",
        name: "public-ip-allow",
        short: "An IP or CIDR allow of public addresses",
        full: "Public addresses of a SaaS or CDN move and are shared with other customers; an allow by address outlives the service it was written for and lets through whoever holds the address next.",
        help: "Allow the SaaS by host name instead.",
        level: Level::Warning,
    },
    Check {
        id: "EGR005",
        name: "admin-or-database-port",
        short: "Outbound admin or database ports allowed beyond private ranges",
        full: "Remote-admin and database protocols (22, 23, 445, 1433, 1521, 3306, 3389, 5432, 5900, 6379, 9200, 11211, 27017) to the Internet are a classic exfiltration and lateral-movement path. An allow that names them for a host, a public CIDR or any destination is an error; an allow without `ports` to a host or a public CIDR reaches them too (a warning), unless a port-only deny (service or mesh-wide) already blocks them.",
        help: "Reach databases and admin endpoints over private CIDRs only; give every other allow the ports it needs, or add a mesh-wide port deny.",
        level: Level::Error,
    },
    Check {
        id: "EGR006",
        name: "no-mesh-deny-floor",
        short: "MeshDefaults has no `deny`: no mesh-wide floor",
        full: "Mesh-wide denies are the floor no service allow, canary or break-glass grant can go below (instance metadata, remote-admin ports, paste sites). Without one every exception is only as safe as each service's own policy.",
        help: "Add `deny:` to MeshDefaults, e.g. `- cidr: 169.254.169.254/32` and `- ports: [22, 3389]`.",
        level: Level::Warning,
    },
    Check {
        id: "EGR007",
        name: "no-owner",
        short: "A service with no `owner`",
        full: "Nobody to ask when one of its allows is questioned, expires or starts denying.",
        help: "Add `owner: TEAM`.",
        level: Level::Warning,
    },
    Check {
        id: "EGR008",
        name: "allow-expiring",
        short: "An allow that expires within 14 days, or has expired",
        full: "An expired allow no longer matches (its traffic is denied); one about to expire will start denying soon. Either the exception is over (remove it) or it needs a decision (renew it).",
        help: "Renew `expires:` after review, or remove the allow.",
        level: Level::Warning,
    },
    Check {
        id: "EGR009",
        name: "shadowed-allow",
        short: "An allow that a deny of the same or a broader destination and ports always overrides",
        full: "Denies win over allows. When a service or mesh-wide deny covers the allow's destination, ports and protocols, the allow can never decide anything: it misleads reviewers about what the service may reach.",
        help: "Remove the allow, or narrow the deny.",
        level: Level::Warning,
    },
    Check {
        id: "EGR010",
        name: "duplicate-rule",
        short: "The same destination, ports and protocols twice in one service",
        full: "A rule repeated in one service (written twice, or once directly and once through a group) adds nothing but a second place to forget when it changes.",
        help: "Keep one of them.",
        level: Level::Warning,
    },
    Check {
        id: "EGR011",
        name: "trusts-forwarded-client-cert",
        short: "`trustForwardedClientCert: true`",
        full: "egressd then takes the caller's identity from x-forwarded-client-cert: any hop that can set that header ahead of the gateway (a sidecar, a proxy, a workload reaching the gateway directly if the network allows it) can claim to be any service.",
        help: "Keep it false unless only mTLS-terminating sidecars can reach the gateway, and make the network enforce that.",
        level: Level::Warning,
    },
    Check {
        id: "EGR012",
        name: "observe-forever",
        short: "An observe phase that does not end",
        full: "`unclaimedIdentities: observe`, and a service in dry-run or canary, let through what enforce would deny. Meant as a phase; left on, it is allow-all. A dry-run or canary `since:` date older than 30 days is a warning; without `since:` nobody can tell how long it has lasted (a note).",
        help: "Move on to enforce (`egressd report impact` says when it is safe), and write `since: YYYY-MM-DD` when a service enters dry-run or canary.",
        level: Level::Warning,
    },
];

/// The check with this id.
pub fn check(id: &str) -> Option<&'static Check> {
    CHECKS.iter().find(|c| c.id == id)
}

/// One lint finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `EGR001`...
    pub id: &'static str,
    pub severity: Level,
    pub loc: SourceLoc,
    pub message: String,
    /// One line: how to fix it.
    pub hint: String,
}

/// Every finding about `policy`, sorted by file, line, column, then id. `now` is unix seconds.
pub fn lint(policy: &CompiledPolicy, now: i64) -> Vec<Finding> {
    let mut findings = checks::run(policy, now);
    findings.sort_by(|a, b| a.loc.cmp(&b.loc).then(a.id.cmp(b.id)).then(a.message.cmp(&b.message)));
    findings.dedup();
    findings
}

/// Whether any finding is at or above `threshold`.
pub fn fails(findings: &[Finding], threshold: Level) -> bool {
    findings.iter().any(|f| f.severity.fails(threshold))
}
