//! The choke point the design rests on: a workload in a network namespace of the test's own,
//! whose only link is a veth to the host and which has no route anywhere else, cannot reach an
//! upstream directly; the same request through the gateway (listening on the veth's host side) is
//! decided by egressd: allowed to the upstream, or denied. The workload is a Python client run
//! inside the namespace (`ip netns exec`), with its SVID over mTLS.

mod support {
    pub mod client;
    pub mod dns;
    pub mod envoy;
    pub mod eventually;
    pub mod lab;
    pub mod pki;
    pub mod process;
    pub mod server;
    pub mod upstream;
}

use std::net::Ipv4Addr;
use std::process::Command;

use support::lab::{GATEWAY_NAME, Lab};

/// A network namespace joined to the host by one veth pair (host side `host_ip`/30), removed
/// (with its veth) when dropped.
struct Namespace {
    name: String,
    host_link: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2) is installed");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Namespace {
    fn create(tag: &str, host_ip: Ipv4Addr, ns_ip: Ipv4Addr) -> Namespace {
        let name = format!("egw-{tag}");
        let (host_link, ns_link) = (format!("vh{tag}"), format!("vn{tag}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_link]).output();
        ip(&["netns", "add", &name]);
        let ns = Namespace { name: name.clone(), host_link: host_link.clone() };
        ip(&["link", "add", &host_link, "type", "veth", "peer", "name", &ns_link]);
        ip(&["link", "set", &ns_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_link]);
        ip(&["-n", &name, "link", "set", &ns_link, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs the Python `program` inside the namespace; its stdout.
    async fn python(&self, program: String) -> String {
        let name = self.name.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("ip").args(["netns", "exec", &name, "python3", "-c", &program]).output().expect("python3 runs")
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).output();
    }
}

/// Python: `connect` to each address, printing `ok` or the error's name.
fn direct_connects(targets: &[(String, u16)]) -> String {
    let list: Vec<String> = targets.iter().map(|(h, p)| format!("({h:?}, {p})")).collect();
    format!(
        "import socket\nfor t in [{}]:\n    try:\n        socket.create_connection(t, timeout=2).close(); print('ok')\n    except OSError as e:\n        print(type(e).__name__)\n",
        list.join(", ")
    )
}

/// Python: a proxy GET of `url` through the gateway at `gateway`, over mTLS with the SVID files;
/// prints the status line and the body.
fn through_gateway(gateway: std::net::SocketAddr, url: &str, ca: &str, cert: &str, key: &str) -> String {
    format!(
        r#"import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.load_cert_chain({cert:?}, {key:?})
raw = socket.create_connection(({host:?}, {port}), timeout=5)
s = ctx.wrap_socket(raw, server_hostname={name:?})
host = {url:?}.split("/")[2]
s.sendall(("GET " + {url:?} + " HTTP/1.1\r\nhost: " + host + "\r\nconnection: close\r\n\r\n").encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace"))
"#,
        host = gateway.ip().to_string(),
        port = gateway.port(),
        name = GATEWAY_NAME,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_whose_only_route_is_the_gateway_reaches_nothing_else_and_is_decided_there() {
    let tag = format!("{}", std::process::id() % 100_000);
    let (host_ip, ns_ip) = (Ipv4Addr::new(10, 203, 0, 1), Ipv4Addr::new(10, 203, 0, 2));
    let ns = Namespace::create(&tag, host_ip, ns_ip);
    let lab = Lab::builder().listen_on(host_ip).start().await;
    let upstream = lab.http_upstream.port();

    // Direct: the upstream's own address, the host's side of the link, and anywhere else.
    let direct = ns
        .python(direct_connects(&[
            ("127.0.0.1".into(), upstream),
            (host_ip.to_string(), upstream),
            ("192.0.2.10".into(), 80),
        ]))
        .await;
    let results: Vec<&str> = direct.lines().collect();
    assert_eq!(results, ["ConnectionRefusedError", "ConnectionRefusedError", "OSError"], "{direct}");

    // Through the gateway, with checkout's SVID.
    let files = lab.dir.path();
    std::fs::write(files.join("ca.pem"), &lab.ca.pem).unwrap();
    std::fs::write(files.join("checkout.pem"), &lab.checkout.cert_pem).unwrap();
    std::fs::write(files.join("checkout.key"), &lab.checkout.key_pem).unwrap();
    let path = |n: &str| files.join(n).display().to_string();
    let get = |host: &str| {
        through_gateway(
            lab.gateway,
            &format!("http://{host}:{upstream}/v1/prices"),
            &path("ca.pem"),
            &path("checkout.pem"),
            &path("checkout.key"),
        )
    };
    let allowed = ns.python(get("api.partner.test")).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(allowed.contains("upstream http host api.partner.test"), "{allowed}");
    let denied = ns.python(get("admin.partner.test")).await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.to_ascii_lowercase().contains("x-egressd-reason: service-deny"), "{denied}");
    assert!(!denied.contains("upstream http host"), "{denied}");
}
