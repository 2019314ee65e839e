//! `egressd dev-pki` and the quick start's gateway it enables. The PKI as a client sees it: every
//! file parses, each SVID has exactly one URI SAN (its service's SPIFFE ID) and chains to the CA,
//! the gateway's certificate verifies for 127.0.0.1 and localhost, keys match their certificates
//! and are 0600, and nothing is overwritten without `--force`. Then the whole quick start with
//! the real Envoy: `examples/run-gateway.sh --check` runs the three curl commands the script
//! prints (an allow, a deny with its reason, a dry-run would-deny) against its local upstream.

mod support {
    pub mod envoy;
}

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

const EGRESSD: &str = env!("CARGO_BIN_EXE_egressd");

/// The example policy's SVIDs: file stem under svid/, SPIFFE ID.
const EXAMPLE_SVIDS: [(&str, &str); 5] = [
    ("checkout", "spiffe://corp.example/ns/checkout/sa/web"),
    // ci-runners claims spiffe://corp.example/ns/ci/*: one identity is minted below it.
    ("ci-runners", "spiffe://corp.example/ns/ci/sa/dev"),
    ("payments", "spiffe://corp.example/ns/payments/sa/api"),
    ("payments-worker", "spiffe://corp.example/ns/payments/sa/worker"),
    ("search", "spiffe://corp.example/ns/search/sa/indexer"),
];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn dev_pki(args: &[&str]) -> Output {
    Command::new(EGRESSD)
        .arg("dev-pki")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run egressd dev-pki")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn cert(path: &Path) -> CertificateDer<'static> {
    let all: Vec<_> = CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(all.len(), 1, "{}: one certificate", path.display());
    all.into_iter().next().unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The private key is the certificate's (same public key).
fn assert_pair(cert_path: &Path, key_path: &Path) {
    let key = provider().key_provider.load_private_key(key(key_path)).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert(cert_path)], key);
    certified.keys_match().unwrap_or_else(|e| panic!("{} / {}: {e}", cert_path.display(), key_path.display()));
    assert_eq!(mode(key_path), 0o600, "{}", key_path.display());
}

fn roots(ca: &CertificateDer<'static>) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(roots)
}

/// A SubjectAltName entry.
#[derive(Debug, PartialEq, Eq)]
enum San {
    Dns(String),
    Uri(String),
    Ip(Vec<u8>),
    Other(u8),
}

/// One DER TLV: tag, contents, what follows.
fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, header) = match b[1] {
        n if n < 0x80 => (n as usize, 2),
        n => {
            let k = (n & 0x7f) as usize;
            (b[2..2 + k].iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)), 2 + k)
        }
    };
    (b[0], &b[header..header + len], &b[header + len..])
}

/// The certificate's SubjectAltName entries (RFC 5280 4.2.1.6), read from its DER.
fn sans(der: &[u8]) -> Vec<San> {
    let (_, certificate, _) = tlv(der);
    let (_, mut tbs, _) = tlv(certificate);
    let mut out = Vec::new();
    while !tbs.is_empty() {
        let (tag, body, rest) = tlv(tbs);
        tbs = rest;
        if tag != 0xA3 {
            continue; // [3] extensions
        }
        let (_, mut extensions, _) = tlv(body);
        while !extensions.is_empty() {
            let (_, extension, rest) = tlv(extensions);
            extensions = rest;
            let (_, oid, fields) = tlv(extension);
            if oid != [0x55, 0x1d, 0x11] {
                continue; // 2.5.29.17 subjectAltName
            }
            let (mut tag, mut value, rest) = tlv(fields);
            if tag == 0x01 {
                (tag, value, _) = tlv(rest); // critical
            }
            assert_eq!(tag, 0x04, "extnValue is an OCTET STRING");
            let (_, mut names, _) = tlv(value);
            while !names.is_empty() {
                let (tag, v, rest) = tlv(names);
                names = rest;
                let s = || String::from_utf8(v.to_vec()).unwrap();
                out.push(match tag {
                    0x82 => San::Dns(s()),
                    0x86 => San::Uri(s()),
                    0x87 => San::Ip(v.to_vec()),
                    other => San::Other(other),
                });
            }
        }
    }
    out
}

#[test]
fn dev_pki_writes_a_ca_a_gateway_certificate_and_an_svid_per_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let out = dev_pki(&[dir.to_str().unwrap(), "--policy", "mesh-config"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);

    let ca = cert(&dir.join("ca.pem"));
    assert_pair(&dir.join("ca.pem"), &dir.join("ca-key.pem"));
    assert_eq!(mode(&dir.join("ca.pem")), 0o644);
    let now = UnixTime::now();

    // The gateway: a server certificate for 127.0.0.1 and localhost, chained to the CA.
    let gateway = cert(&dir.join("gateway.pem"));
    assert_pair(&dir.join("gateway.pem"), &dir.join("gateway-key.pem"));
    assert_eq!(sans(&gateway), [San::Dns("localhost".into()), San::Ip(vec![127, 0, 0, 1])]);
    let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&ca), provider()).build().unwrap();
    for name in
        [ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()), ServerName::try_from("localhost").unwrap()]
    {
        servers
            .verify_server_cert(&gateway, &[], &name, &[], now)
            .unwrap_or_else(|e| panic!("gateway as {name:?}: {e}"));
    }
    let wrong = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)).into());
    assert!(servers.verify_server_cert(&gateway, &[], &wrong, &[], now).is_err(), "only 127.0.0.1");

    // Each SVID: exactly one URI SAN, the SPIFFE ID, nothing else; a client certificate of the CA.
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&ca), provider()).build().unwrap();
    let other_ca = {
        let other = tmp.path().join("other");
        assert!(dev_pki(&[other.to_str().unwrap()]).status.success());
        cert(&other.join("ca.pem"))
    };
    let foreign =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&other_ca), provider()).build().unwrap();
    let mut files: Vec<String> =
        std::fs::read_dir(dir.join("svid")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let mut expected: Vec<String> =
        EXAMPLE_SVIDS.iter().flat_map(|(stem, _)| [format!("{stem}-key.pem"), format!("{stem}.pem")]).collect();
    expected.sort();
    assert_eq!(files, expected);
    for (stem, id) in EXAMPLE_SVIDS {
        let path = dir.join("svid").join(format!("{stem}.pem"));
        let svid = cert(&path);
        assert_eq!(sans(&svid), [San::Uri(id.to_string())], "{}", path.display());
        assert_pair(&path, &dir.join("svid").join(format!("{stem}-key.pem")));
        clients.verify_client_cert(&svid, &[], now).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(foreign.verify_client_cert(&svid, &[], now).is_err(), "{} chains to its own CA only", path.display());
        assert!(printed.contains(&format!("{} ", path.display())) && printed.contains(id), "{printed}");
    }
    assert!(printed.contains("minted below spiffe://corp.example/ns/ci/*"), "{printed}");
}

#[test]
fn dev_pki_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let arg = dir.to_str().unwrap();
    assert!(dev_pki(&[arg]).status.success());
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
    let key_before = std::fs::read(dir.join("svid/search-key.pem")).unwrap();

    let again = dev_pki(&[arg]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    let said = text(&again);
    assert!(said.contains("nothing was written") && said.contains("--force") && said.contains("ca.pem"), "{said}");
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    assert_eq!(std::fs::read(dir.join("svid/search-key.pem")).unwrap(), key_before);

    // One file of the set is enough to refuse.
    let partial = tmp.path().join("partial");
    std::fs::create_dir_all(partial.join("svid")).unwrap();
    std::fs::write(partial.join("svid/checkout.pem"), "mine").unwrap();
    let out = dev_pki(&[partial.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!partial.join("ca.pem").exists());
    assert_eq!(std::fs::read_to_string(partial.join("svid/checkout.pem")).unwrap(), "mine");

    let forced = dev_pki(&[arg, "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before, "a new CA");
    assert_eq!(mode(&dir.join("svid/search-key.pem")), 0o600);
}

/// A loopback port free for both TCP and UDP (the script's DNS server is UDP).
fn free_port_tcp_udp() -> u16 {
    loop {
        let port = support::envoy::free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Runs `cmd` in its own process group, killing the whole group after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("run the script");
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn the_quick_start_gateway_allows_denies_and_records_a_would_deny() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("examples/run-gateway.sh")).arg("--check").current_dir(&root);
    cmd.env("ENVOY_BIN", support::envoy::envoy_bin()).env("EGRESSD_BIN", EGRESSD).env("DEV_GW_DIR", state.path());
    let mut ports = Vec::new();
    for name in ["GRPC", "ADMIN", "HTTP", "TLS", "ENVOY_ADMIN", "UPSTREAM", "DNS"] {
        let port = free_port_tcp_udp();
        cmd.env(format!("DEV_GW_{name}_PORT"), port.to_string());
        ports.push(port);
    }
    let (code, out) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "run-gateway.sh --check:\n{out}");

    let pki = state.path().join("dev-pki");
    let (http, upstream) = (ports[2], ports[5]);
    let curl = |svid: &str, url: &str| {
        format!(
            "curl -si --proxy https://127.0.0.1:{http} --proxy-cacert {pki}/ca.pem --proxy-cert {pki}/svid/{svid}.pem \
             --proxy-key {pki}/svid/{svid}-key.pem {url}",
            pki = pki.display()
        )
    };
    // The commands run are those the interactive script prints, with what each got.
    let lines: Vec<&str> = out.lines().collect();
    let outcome = |verdict_label: &str, command: &str| -> String {
        let i = lines
            .iter()
            .position(|l| l.starts_with(verdict_label))
            .unwrap_or_else(|| panic!("no `{verdict_label}` line:\n{out}"));
        assert!(lines[i].ends_with(command), "ran `{}`, expected `{command}`", lines[i]);
        lines[i + 1].to_string()
    };
    let allow = outcome("ok   allow ", &curl("checkout", &format!("http://api.partner.test:{upstream}/")));
    assert!(allow.contains("200 from the upstream: upstream dev-gateway: GET host api.partner.test"), "{allow}");
    let deny = outcome("ok   deny ", &curl("checkout", &format!("http://admin.partner.test:{upstream}/")));
    assert!(deny.contains("403, x-egressd-reason: service-deny"), "{deny}");
    let would_deny = outcome("ok   would-deny ", &curl("search", &format!("http://api.partner.test:{upstream}/")));
    assert!(
        would_deny.contains("200 from the upstream")
            && would_deny.contains("peer=spiffe://corp.example/ns/search/sa/indexer decision=would-deny")
            && would_deny.contains("service=search mode=dry-run"),
        "{would_deny}"
    );
    // The policy the gateway ran on: mesh-config's services, and a Gateway with mTLS.
    let gateway = std::fs::read_to_string(state.path().join("dev-policy/gateway.yaml")).unwrap();
    assert!(gateway.contains(&format!("trustBundle: {}/ca.pem", pki.display())), "{gateway}");
    for service in ["checkout", "ci", "payments", "search"] {
        let copied = std::fs::read(state.path().join(format!("dev-policy/services/{service}.yaml"))).unwrap();
        assert_eq!(copied, std::fs::read(root.join(format!("mesh-config/services/{service}.yaml"))).unwrap());
    }
}
