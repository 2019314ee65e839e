//! `egressd init [DIR]`: a starter policy directory a team can commit and grow.
//!
//! What it writes is meant to be safe to deploy on day one: everything in dry-run and unclaimed
//! callers observed (nothing breaks), under a justified mesh-wide deny floor that holds anyway
//! (remote administration, databases, cloud metadata, paste sites). The common destination groups
//! are written commented out, so a team enables only what its services use. The texts are
//! templates in `src/init/`, embedded at build time, so they are reviewed as YAML, not as Rust
//! strings, and their tests here keep them valid.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::policy::{PolicySource, SourceError};

/// Where the trust domain goes in the templates.
const TRUST_DOMAIN: &str = "{{trust_domain}}";

/// (path under DIR, template), in the order they are written.
const FILES: [(&str, &str); 3] = [
    ("mesh.yaml", include_str!("init/mesh.yaml")),
    ("groups.yaml", include_str!("init/groups.yaml")),
    // Not `*.yaml`, so the loader skips it: `services/` exists from the start, with its how-to.
    ("services/README.md", include_str!("init/services-README.md")),
];

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A file the policy loader would read (or one `init` would write) is already there.
    #[error(
        "{0}: already exists; `egressd init` writes only into a directory without policy files, so nothing was written"
    )]
    Exists(PathBuf),
    #[error("invalid trust domain `{domain}`: {reason}")]
    TrustDomain { domain: String, reason: String },
    #[error("{path}: cannot read the directory")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot write")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes the starter policy into `dir` (created if missing) for SPIFFE trust domain
/// `trust_domain`, and returns the files written. Refuses, writing nothing, when `dir` already
/// holds a file the policy loader would read (`*.yaml`/`*.yml` at any depth, as
/// `PolicySource::from_dir` finds them) or one of the files it would write.
pub fn init(dir: &Path, trust_domain: &str) -> Result<Vec<PathBuf>, InitError> {
    // The value is pasted into YAML: only a valid trust domain can neither break the document nor
    // inject keys, and the same check as `compile`'s keeps the result loadable.
    let td = spiffe::TrustDomain::new(trust_domain.trim())
        .map_err(|e| InitError::TrustDomain { domain: trust_domain.to_string(), reason: e.to_string() })?;

    if dir.exists() {
        let mut existing = PolicySource::paths(dir).map_err(|e| match e {
            SourceError::Io { path, source } => InitError::Read { path, source },
            SourceError::Empty(path) => InitError::Read { path, source: std::io::ErrorKind::NotFound.into() },
        })?;
        existing.sort(); // name the same file whatever the directory order
        if let Some(first) = existing.into_iter().next() {
            return Err(InitError::Exists(first));
        }
        if let Some(path) = FILES.iter().map(|(name, _)| dir.join(name)).find(|p| p.exists()) {
            return Err(InitError::Exists(path));
        }
    }

    let mut written = Vec::with_capacity(FILES.len());
    for (name, template) in FILES {
        let path = dir.join(name);
        let fail = |source| InitError::Write { path: path.clone(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        // `create_new`: even a file that appeared since the check above is never overwritten.
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(fail)?;
        file.write_all(render(template, td.as_str()).as_bytes()).map_err(fail)?;
        written.push(path);
    }
    Ok(written)
}

fn render(template: &str, trust_domain: &str) -> String {
    template.replace(TRUST_DOMAIN, trust_domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, CompiledPolicy, Destination, Mode, Outcome, Protocol, UnclaimedIdentities, compile};

    const TD: &str = "acme.test";

    fn decide(p: &CompiledPolicy, from: &str, to: &str) -> (Outcome, &'static str) {
        let dest: Destination<'static> = crate::explain::cli_destination(to, None).unwrap();
        let d = p.decide(Some(from), Ok(&dest), None, 0);
        (d.outcome, d.reason.code())
    }

    #[test]
    fn the_starter_policy_validates_and_holds_its_floor() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mesh-config"); // missing: created
        let written = init(&dir, TD).unwrap();
        let names: Vec<_> = written.iter().map(|p| p.strip_prefix(&dir).unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["mesh.yaml", "groups.yaml", "services/README.md"]);
        assert!(written.iter().all(|p| p.is_file()));

        // `egressd validate`, even `--strict`: no errors, no warnings.
        let p = policy::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.warnings.is_empty(), "{}", policy::format_diagnostics(&p.warnings));
        assert_eq!((p.trust_domain.as_str(), p.default_mode), (TD, Mode::DryRun));
        assert_eq!(p.unclaimed_identities, UnclaimedIdentities::Observe);
        assert!(p.services.is_empty() && p.groups.is_empty(), "services and groups start empty");
        assert!(p.rules.iter().all(|r| r.justification.is_some()), "every floor rule says why");

        // An unclaimed workload gets out, recorded; the floor denies it all the same.
        let from = "spiffe://acme.test/ns/shop/sa/web";
        assert_eq!(decide(&p, from, "api.stripe.com:443"), (Outcome::WouldDeny, "unknown-service"));
        for to in [
            "bastion.example.com:22",
            "example.com:3389",
            "db.example.com:5432",
            "cache.example.com:6379",
            "169.254.169.254:80",
            "169.254.170.2:80",
            "[fd00:ec2::254]:80",
            "metadata.google.internal:80",
            "pastebin.com:443",
            "www.pastebin.com:443",
            "paste.ee:443",
            "hastebin.com:443",
            "ghostbin.com:443",
        ] {
            assert_eq!(decide(&p, from, to), (Outcome::Deny, "mesh-deny"), "{to}");
        }
        // Other trust domains are not observed.
        assert_eq!(decide(&p, "spiffe://other.test/ns/shop/sa/web", "api.stripe.com:443").1, "unauthenticated");
    }

    #[test]
    fn a_directory_with_policy_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Hidden entries are not policy (the loader skips them), so they do not stop init...
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join(".git/config.yaml"), "x").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        assert_eq!(init(dir, TD).unwrap().len(), FILES.len());

        // ...but a policy file at any depth does, and nothing is written.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("teams/payments")).unwrap();
        std::fs::write(dir.join("teams/payments/policy.yml"), "kind: ServicePolicy\n").unwrap();
        match init(dir, TD) {
            Err(InitError::Exists(path)) => assert_eq!(path, dir.join("teams/payments/policy.yml")),
            other => panic!("{other:?}"),
        }
        assert!(!dir.join("mesh.yaml").exists() && !dir.join("groups.yaml").exists());

        // So does a file init would write, even one the loader does not read.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("services")).unwrap();
        std::fs::write(dir.join("services/README.md"), "ours").unwrap();
        let err = init(dir, TD).unwrap_err();
        assert!(matches!(&err, InitError::Exists(p) if p.ends_with("services/README.md")), "{err:?}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert!(!dir.join("mesh.yaml").exists());
        assert_eq!(std::fs::read_to_string(dir.join("services/README.md")).unwrap(), "ours");
    }

    #[test]
    fn an_invalid_trust_domain_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let err = init(tmp.path(), "acme.test\nmode: enforce").unwrap_err();
        assert!(matches!(err, InitError::TrustDomain { .. }), "{err:?}");
        assert!(err.to_string().starts_with("invalid trust domain"), "{err}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    /// The groups, uncommented as the file says (drop the leading "# ", keep "##" notes), are
    /// valid, and a service can allow each; so is the README's example service.
    #[test]
    fn the_commented_groups_and_the_example_service_are_valid() {
        let groups: String = render(FILES[1].1, TD)
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        let readme = render(FILES[2].1, TD);
        let example = readme
            .split_once("```yaml\n")
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(yaml, _)| yaml)
            .expect("the README shows a ServicePolicy");
        let user = "kind: ServicePolicy\nservice: builds\nidentities: [spiffe://acme.test/ns/ci/*]\nallow:\n  - group: language-packages\n  - group: container-registries\n  - group: os-packages\n";
        let mut source = PolicySource::from_text("mesh.yaml", &render(FILES[0].1, TD));
        for (name, text) in [("groups.yaml", groups.as_str()), ("services/payments.yaml", example), ("b.yaml", user)] {
            source.files.push(PolicySource::from_text(name, text).files.remove(0));
        }
        let p = compile(&source, 0).unwrap_or_else(|d| panic!("{}", policy::format_diagnostics(&d)));
        assert!(p.warnings.is_empty(), "{}", policy::format_diagnostics(&p.warnings));
        let names: Vec<_> = p.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["container-registries", "language-packages", "os-packages"]);

        let ci = "spiffe://acme.test/ns/ci/sa/runner";
        assert_eq!(decide(&p, ci, "files.pythonhosted.org:443").0, Outcome::Allow);
        assert_eq!(decide(&p, ci, "westus.data.mcr.microsoft.com:443").0, Outcome::Allow);
        // Plain HTTP for the signed OS mirrors only.
        let http = |to| crate::explain::cli_destination(to, Some(Protocol::Http)).unwrap();
        assert_eq!(p.decide(Some(ci), Ok(&http("deb.debian.org:80")), None, 0).outcome, Outcome::Allow);
        assert_eq!(p.decide(Some(ci), Ok(&http("pypi.org:80")), None, 0).outcome, Outcome::WouldDeny);
        let pay = "spiffe://acme.test/ns/payments/sa/api";
        assert_eq!(decide(&p, pay, "api.stripe.com:443").0, Outcome::Allow);
    }
}
