//! `egressd dev-pki DIR`: a development trust domain for the quick start's gateway. One CA signs
//! the gateway's server certificate (for `localhost` and `127.0.0.1`, so a client on the machine
//! can verify the gateway it proxies through) and an X.509-SVID per identity of each service of
//! the policy: a client certificate whose one URI SAN is the workload's SPIFFE ID, so the
//! gateway's mTLS hands egressd an identity and requests are allowed or denied by service.
//!
//! An identity pattern (`spiffe://td/ns/ci/*`) names no workload, so one concrete identity below
//! it is minted (`spiffe://td/ns/ci/sa/dev`), and checked to be one the policy places in that
//! service. Not for production: the keys are written unencrypted (mode 0600) next to the CA's.
//!
//! Files, under DIR: `ca.pem` + `ca-key.pem`, `gateway.pem` + `gateway-key.pem`,
//! `svid/<service>.pem` + `svid/<service>-key.pem` for a service's first identity and
//! `svid/<service>-<last path segment>.pem` (+ `-key.pem`) for each further one.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::identity::IdentityPattern;
use crate::policy::CompiledPolicy;

/// File names under DIR.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const GATEWAY_CERT: &str = "gateway.pem";
pub const GATEWAY_KEY: &str = "gateway-key.pem";
/// The SVIDs' subdirectory.
pub const SVID_DIR: &str = "svid";
/// How long the certificates are good for, from the day before `now` (clock skew).
pub const VALID_DAYS: i32 = 365;
/// The gateway certificate's DNS and IP SANs: the quick start's gateway listens on loopback.
pub const GATEWAY_DNS_NAME: &str = "localhost";
pub const GATEWAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How to write.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Overwrite files already there (else nothing is written when one exists).
    pub force: bool,
    /// The wall clock in unix seconds: validity starts the day before it.
    pub now_unix: i64,
}

/// A certificate file and its private key's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One workload's X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// The service whose identity it is.
    pub service: String,
    /// The certificate's one URI SAN.
    pub spiffe_id: String,
    /// The identity pattern (`.../*`) the ID was minted below; `None` when the policy names it.
    pub minted_from: Option<String>,
    pub files: CertFiles,
}

/// What `write` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    pub trust_domain: String,
    /// The CA: `cert` is the trust bundle of the gateway (which verifies SVIDs) and of clients
    /// (which verify the gateway).
    pub ca: CertFiles,
    pub gateway: CertFiles,
    /// The gateway certificate's SANs as text: `DNS:localhost`, `IP:127.0.0.1`.
    pub gateway_sans: Vec<String>,
    /// In the policy's service order, each service's identities in its order.
    pub svids: Vec<Svid>,
    /// Validity of every certificate, inclusive (UTC days).
    pub not_before: jiff::civil::Date,
    pub not_after: jiff::civil::Date,
}

impl DevPki {
    /// Every file written, in the order written.
    pub fn files(&self) -> Vec<&Path> {
        let mut out = vec![self.ca.cert.as_path(), self.ca.key.as_path(), &self.gateway.cert, &self.gateway.key];
        for s in &self.svids {
            out.push(&s.files.cert);
            out.push(&s.files.key);
        }
        out
    }

    /// The SVID of `spiffe_id`.
    pub fn svid(&self, spiffe_id: &str) -> Option<&Svid> {
        self.svids.iter().find(|s| s.spiffe_id == spiffe_id)
    }

    /// The SVID in `svid/<service>.pem`: the service's first identity.
    pub fn service_svid(&self, service: &str) -> Option<&Svid> {
        self.svids.iter().find(|s| s.service == service)
    }
}

/// Why nothing (or, for `Write`, not everything) was written.
#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    /// Files `write` would replace; without `force` it writes none.
    #[error("{} already exist{}; nothing was written (force overwrites)", list(.0), plural(.0))]
    Exists(Vec<PathBuf>),
    /// An identity pattern below which no identity the policy gives that service could be minted.
    #[error("service `{service}`: no identity below `{pattern}` is placed in this service by the policy")]
    NoIdentity { service: String, pattern: String },
    /// An `identities:` entry that is not a SPIFFE ID or pattern (a compiled policy has none).
    #[error("service `{service}`: identity `{identity}`: {reason}")]
    Identity { service: String, identity: String, reason: String },
    #[error("generating the certificate of {what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the clock ({0} unix seconds) is outside the dates a certificate can carry")]
    Clock(i64),
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn plural(paths: &[PathBuf]) -> &'static str {
    if paths.len() == 1 { "s" } else { "" }
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// The SVIDs `write` issues for `policy` into `dir` (no keys made, nothing written).
pub fn planned_svids(policy: &CompiledPolicy, dir: &Path) -> Result<Vec<Svid>, DevPkiError> {
    struct Planned {
        service: String,
        spiffe_id: String,
        minted_from: Option<String>,
        last_segment: String,
        first: bool,
    }
    let mut planned = Vec::new();
    for service in &policy.services {
        for (i, raw) in service.identities.iter().enumerate() {
            let fail =
                |reason: String| DevPkiError::Identity { service: service.name.clone(), identity: raw.clone(), reason };
            let pattern = IdentityPattern::parse(raw).map_err(fail)?;
            let (spiffe_id, minted_from) = match &pattern {
                IdentityPattern::Exact { .. } => (pattern.to_string(), None),
                IdentityPattern::Prefix { trust_domain, path } => {
                    (mint_below(policy, service.index, trust_domain, path, raw)?, Some(pattern.to_string()))
                }
            };
            // The ID must be one egressd places in this service (another service's longer claim
            // or an exact claim would take it).
            match policy.identify(Some(&spiffe_id)) {
                Ok((idx, _)) if idx == service.index => {}
                _ if minted_from.is_some() => {
                    return Err(DevPkiError::NoIdentity {
                        service: service.name.clone(),
                        pattern: pattern.to_string(),
                    });
                }
                _ => return Err(fail(format!("the policy does not place `{spiffe_id}` in this service"))),
            }
            let last_segment = spiffe_id.rsplit('/').next().unwrap_or_default().to_string();
            planned.push(Planned {
                service: service.name.clone(),
                spiffe_id,
                minted_from,
                last_segment,
                first: i == 0,
            });
        }
    }
    // File stems: `<service>` for every service's first identity before any further identity's
    // `<service>-<segment>`, so `svid/<service>.pem` is always a service's own first SVID.
    let mut stems: Vec<Option<String>> = vec![None; planned.len()];
    let mut taken = std::collections::HashSet::new();
    for pass_first in [true, false] {
        for (i, p) in planned.iter().enumerate() {
            if p.first != pass_first {
                continue;
            }
            let base = if p.first {
                file_stem(&p.service)
            } else {
                format!("{}-{}", file_stem(&p.service), file_stem(&p.last_segment))
            };
            let mut stem = base.clone();
            let mut n = 2;
            // `-key` is the key files' suffix: a stem ending in it could meet another's key file.
            while !taken.insert(stem.clone()) || stem.ends_with("-key") {
                stem = format!("{base}-{n}");
                n += 1;
            }
            stems[i] = Some(stem);
        }
    }
    let svid_dir = dir.join(SVID_DIR);
    Ok(planned
        .into_iter()
        .zip(stems)
        .map(|(p, stem)| {
            let stem = stem.unwrap_or_default();
            Svid {
                service: p.service,
                spiffe_id: p.spiffe_id,
                minted_from: p.minted_from,
                files: CertFiles {
                    cert: svid_dir.join(format!("{stem}.pem")),
                    key: svid_dir.join(format!("{stem}-key.pem")),
                },
            }
        })
        .collect())
}

/// A concrete identity below `pattern` that the policy places in `service`: `.../sa/dev` below a
/// namespace (`/ns/NAME/*`, the Kubernetes shape), else `.../dev`; `dev-2`, ... when taken.
fn mint_below(
    policy: &CompiledPolicy,
    service: crate::policy::ServiceIdx,
    trust_domain: &str,
    path: &str,
    pattern: &str,
) -> Result<String, DevPkiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let below_namespace = segments.len() >= 2 && segments[segments.len() - 2] == "ns";
    let base = if below_namespace { "sa/dev" } else { "dev" };
    for n in 1..=20 {
        let leaf = if n == 1 { base.to_string() } else { format!("{base}-{n}") };
        let id = format!("spiffe://{trust_domain}{path}/{leaf}");
        if matches!(policy.identify(Some(&id)), Ok((idx, _)) if idx == service) {
            return Ok(id);
        }
    }
    Err(DevPkiError::NoIdentity { service: policy.services[service.get()].name.clone(), pattern: pattern.to_string() })
}

/// A service name (no spaces, no '/') or path segment as a file name.
fn file_stem(name: &str) -> String {
    let stem: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if stem.starts_with('.') { format!("_{stem}") } else { stem }
}

/// Writes the development PKI for `policy` into `dir` (created if missing) and returns what it
/// wrote. Without `options.force`, refuses, writing nothing, when any of the files exists.
pub fn write(policy: &CompiledPolicy, dir: &Path, options: Options) -> Result<DevPki, DevPkiError> {
    let svids = planned_svids(policy, dir)?;
    let ca_files = CertFiles { cert: dir.join(CA_CERT), key: dir.join(CA_KEY) };
    let gateway_files = CertFiles { cert: dir.join(GATEWAY_CERT), key: dir.join(GATEWAY_KEY) };

    let targets: Vec<&Path> = [&ca_files, &gateway_files]
        .into_iter()
        .chain(svids.iter().map(|s| &s.files))
        .flat_map(|f| [f.cert.as_path(), f.key.as_path()])
        .collect();
    if !options.force {
        let existing: Vec<PathBuf> =
            targets.iter().filter(|p| p.symlink_metadata().is_ok()).map(|p| p.to_path_buf()).collect();
        if !existing.is_empty() {
            return Err(DevPkiError::Exists(existing));
        }
    }

    let (not_before, not_after) = validity(options.now_unix)?;
    let rcgen_date = |d: jiff::civil::Date| rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8);
    let cert_err = |what: &str| {
        let what = what.to_string();
        move |source| DevPkiError::Certificate { what, source }
    };
    let td = policy.trust_domain.as_str();

    // Everything is made in memory first: a failure here writes nothing.
    let ca_key = KeyPair::generate().map_err(cert_err("the CA"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name(&format!("egressd development CA ({td})"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = rcgen_date(not_before);
    ca_params.not_after = rcgen_date(not_after);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err("the CA"))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let leaf =
        |cn: &str, sans: Vec<SanType>, eku: Vec<ExtendedKeyUsagePurpose>| -> Result<(String, String), DevPkiError> {
            let key = KeyPair::generate().map_err(cert_err(cn))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name(cn);
            params.subject_alt_names = sans;
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = eku;
            params.use_authority_key_identifier_extension = true;
            params.not_before = rcgen_date(not_before);
            params.not_after = rcgen_date(not_after);
            let cert = params.signed_by(&key, &issuer).map_err(cert_err(cn))?;
            Ok((cert.pem(), key.serialize_pem()))
        };

    let dns = GATEWAY_DNS_NAME.to_string().try_into().map_err(cert_err("the gateway"))?;
    let gateway_sans = vec![format!("DNS:{GATEWAY_DNS_NAME}"), format!("IP:{GATEWAY_IP}")];
    let gateway = leaf(
        "egressd development gateway",
        vec![SanType::DnsName(dns), SanType::IpAddress(GATEWAY_IP)],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let mut issued = Vec::with_capacity(svids.len());
    for s in &svids {
        let uri = s.spiffe_id.clone().try_into().map_err(cert_err(&s.spiffe_id))?;
        // An X.509-SVID: exactly one URI SAN, the SPIFFE ID; a leaf that signs nothing.
        issued.push(leaf(
            &s.service,
            vec![SanType::URI(uri)],
            vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth],
        )?);
    }

    std::fs::create_dir_all(dir.join(SVID_DIR))
        .map_err(|source| DevPkiError::Write { path: dir.join(SVID_DIR), source })?;
    write_file(&ca_files.cert, &ca_cert.pem(), false)?;
    write_file(&ca_files.key, &ca_key.serialize_pem(), true)?;
    write_file(&gateway_files.cert, &gateway.0, false)?;
    write_file(&gateway_files.key, &gateway.1, true)?;
    for (s, (cert, key)) in svids.iter().zip(&issued) {
        write_file(&s.files.cert, cert, false)?;
        write_file(&s.files.key, key, true)?;
    }
    Ok(DevPki {
        trust_domain: td.to_string(),
        ca: ca_files,
        gateway: gateway_files,
        gateway_sans,
        svids,
        not_before,
        not_after,
    })
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "egressd development PKI");
    dn.push(DnType::CommonName, cn);
    dn
}

/// The day before `now_unix` through `VALID_DAYS` after it (UTC).
fn validity(now_unix: i64) -> Result<(jiff::civil::Date, jiff::civil::Date), DevPkiError> {
    let today = jiff::Timestamp::from_second(now_unix)
        .map_err(|_| DevPkiError::Clock(now_unix))?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let from = today.checked_sub(jiff::Span::new().days(1)).map_err(|_| DevPkiError::Clock(now_unix))?;
    let to = today.checked_add(jiff::Span::new().days(VALID_DAYS)).map_err(|_| DevPkiError::Clock(now_unix))?;
    // X.509 dates: rcgen writes UTCTime or GeneralizedTime, years 1950..=9999 are safe.
    if from.year() < 1950 {
        return Err(DevPkiError::Clock(now_unix));
    }
    Ok((from, to))
}

/// Writes `text` to `path`, replacing it; a private key is readable by its owner only (0600),
/// set before any byte is written, also on a file that was there.
fn write_file(path: &Path, text: &str, private: bool) -> Result<(), DevPkiError> {
    use std::io::Write;
    let fail = |source| DevPkiError::Write { path: path.to_path_buf(), source };
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    let mode = if private { 0o600 } else { 0o644 };
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, mode);
    #[cfg(not(unix))]
    let _ = private;
    let mut file = open.open(path).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    }
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySource;

    /// 2026-01-15T00:00:00Z
    const NOW: i64 = 1_768_435_200;

    fn compiled(yaml: &[(&str, &str)]) -> CompiledPolicy {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in yaml {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        crate::policy::compile(&PolicySource::from_dir(dir.path()).unwrap(), NOW).unwrap()
    }

    fn example() -> CompiledPolicy {
        crate::policy::compile(&PolicySource::embedded(), NOW).unwrap()
    }

    #[test]
    fn the_example_policy_gets_one_svid_per_identity_and_a_minted_one_below_a_pattern() {
        let dir = Path::new("/pki");
        let svids = planned_svids(&example(), dir).unwrap();
        let mut got: Vec<(&str, &str, Option<&str>, String)> = svids
            .iter()
            .map(|s| {
                let file = s.files.cert.strip_prefix(dir).unwrap().display().to_string();
                (s.service.as_str(), s.spiffe_id.as_str(), s.minted_from.as_deref(), file)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("checkout", "spiffe://corp.example/ns/checkout/sa/web", None, "svid/checkout.pem".to_string()),
                (
                    "ci-runners",
                    "spiffe://corp.example/ns/ci/sa/dev",
                    Some("spiffe://corp.example/ns/ci/*"),
                    "svid/ci-runners.pem".to_string()
                ),
                ("payments", "spiffe://corp.example/ns/payments/sa/api", None, "svid/payments.pem".to_string()),
                (
                    "payments",
                    "spiffe://corp.example/ns/payments/sa/worker",
                    None,
                    "svid/payments-worker.pem".to_string()
                ),
                ("search", "spiffe://corp.example/ns/search/sa/indexer", None, "svid/search.pem".to_string()),
            ]
        );
        let key = &svids.iter().find(|s| s.service == "search").unwrap().files.key;
        assert_eq!(key, Path::new("/pki/svid/search-key.pem"));
    }

    #[test]
    fn a_minted_identity_is_never_one_another_service_claims() {
        let mesh = "kind: MeshDefaults\ntrustDomain: td.example\n";
        let services = "kind: ServicePolicy\nservice: wide\nidentities: [\"spiffe://td.example/team/*\"]\n---\n\
                        kind: ServicePolicy\nservice: narrow\nidentities: [spiffe://td.example/team/dev]\n---\n\
                        kind: ServicePolicy\nservice: all\nidentities: [\"spiffe://td.example/*\"]\n";
        let policy = compiled(&[("mesh.yaml", mesh), ("s.yaml", services)]);
        let svids = planned_svids(&policy, Path::new("d")).unwrap();
        let id = |svc: &str| svids.iter().find(|s| s.service == svc).unwrap().spiffe_id.clone();
        assert_eq!(id("wide"), "spiffe://td.example/team/dev-2");
        assert_eq!(id("narrow"), "spiffe://td.example/team/dev");
        assert_eq!(id("all"), "spiffe://td.example/dev");
    }

    #[test]
    fn file_names_never_collide() {
        let mesh = "kind: MeshDefaults\ntrustDomain: td.example\n";
        let services = "kind: ServicePolicy\nservice: a\n\
                        identities: [spiffe://td.example/x/b, spiffe://td.example/y/b, spiffe://td.example/w/b]\n\
                        ---\nkind: ServicePolicy\nservice: a-b\nidentities: [spiffe://td.example/z]\n";
        let policy = compiled(&[("mesh.yaml", mesh), ("s.yaml", services)]);
        let svids = planned_svids(&policy, Path::new("d")).unwrap();
        let mut files: Vec<String> = svids.iter().map(|s| s.files.cert.display().to_string()).collect();
        files.sort();
        assert_eq!(files, ["d/svid/a-b-2.pem", "d/svid/a-b-3.pem", "d/svid/a-b.pem", "d/svid/a.pem"]);
        assert_eq!(svids.iter().find(|s| s.service == "a-b").unwrap().files.cert, Path::new("d/svid/a-b.pem"));
    }

    #[test]
    fn writes_every_file_keys_0600_and_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let policy = example();
        let written = write(&policy, &out, Options { force: false, now_unix: NOW }).unwrap();
        assert_eq!(written.files().len(), 4 + 2 * 5);
        assert_eq!(written.not_before.to_string(), "2026-01-14");
        assert_eq!(written.not_after.to_string(), "2027-01-15");
        assert_eq!(written.gateway_sans, ["DNS:localhost", "IP:127.0.0.1"]);
        for f in written.files() {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", f.display());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
                let private = f.display().to_string().ends_with("-key.pem");
                assert_eq!(mode, if private { 0o600 } else { 0o644 }, "{}", f.display());
            }
        }
        let before = std::fs::read_to_string(&written.ca.cert).unwrap();
        let err = write(&policy, &out, Options { force: false, now_unix: NOW }).unwrap_err();
        match &err {
            DevPkiError::Exists(paths) => assert_eq!(paths.len(), 14),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert_eq!(std::fs::read_to_string(&written.ca.cert).unwrap(), before);
        let again = write(&policy, &out, Options { force: true, now_unix: NOW }).unwrap();
        assert_ne!(std::fs::read_to_string(&again.ca.cert).unwrap(), before, "a new CA");
    }

    #[test]
    fn one_existing_file_is_enough_to_refuse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("svid")).unwrap();
        std::fs::write(dir.path().join("svid/search-key.pem"), "mine").unwrap();
        let err = write(&example(), dir.path(), Options { force: false, now_unix: NOW }).unwrap_err();
        assert!(matches!(&err, DevPkiError::Exists(p) if p == &[dir.path().join("svid/search-key.pem")]), "{err}");
        assert!(!dir.path().join(CA_CERT).exists());
        assert_eq!(std::fs::read_to_string(dir.path().join("svid/search-key.pem")).unwrap(), "mine");
    }
}
