#![allow(dead_code)] // each test binary uses a subset of these helpers
//! A real DNS server (hickory-server, in-process, UDP on loopback) answering the test FQDNs with
//! loopback addresses, so Envoy's c-ares resolver looks them up the way it would in production.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

pub struct TestDns {
    pub addr: SocketAddr,
    _server: Server<Catalog>,
}

/// A UDP socket and a TCP listener on one loopback port the OS picks: UDP's port may be taken on
/// TCP by someone else, so pick again until both are free.
async fn udp_and_tcp() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
}

/// The zone `test.` with its SOA and nothing else.
fn test_zone() -> (Name, InMemoryZoneHandler<TokioRuntimeProvider>) {
    let origin = Name::from_ascii("test.").unwrap();
    let mut zone =
        InMemoryZoneHandler::<TokioRuntimeProvider>::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("admin.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        5,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 5, RData::SOA(soa)), 1);
    (origin, zone)
}

/// Serves zone `test.` with an A record 127.0.0.1 for each of `names`.
pub async fn start_dns(names: &[&str]) -> TestDns {
    let names: Vec<(String, Ipv4Addr)> = names.iter().map(|n| (n.to_string(), Ipv4Addr::LOCALHOST)).collect();
    start_dns_at(&names).await
}

/// Serves zone `test.` with an A record for each (name, address).
pub async fn start_dns_at(names: &[(String, Ipv4Addr)]) -> TestDns {
    let (origin, mut zone) = test_zone();
    for (name, ip) in names {
        let fqdn = Name::from_ascii(format!("{name}.")).unwrap();
        zone.upsert_mut(Record::from_rdata(fqdn, 5, RData::A(A(*ip))), 1);
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(&origin), vec![Arc::new(zone)]);
    let mut server = Server::new(catalog);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    server.register_socket(socket);
    TestDns { addr, _server: server }
}

/// An authoritative server (zone `test.`, UDP and TCP on one loopback port) that counts the queries
/// it receives, so a test can tell whether egressd forwarded a name.
pub struct CountingDns {
    pub addr: SocketAddr,
    queries: Arc<std::sync::atomic::AtomicUsize>,
    _server: Server<Counting>,
}

impl CountingDns {
    pub fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub struct Counting {
    catalog: Catalog,
    queries: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl hickory_server::server::RequestHandler for Counting {
    async fn handle_request<R: hickory_server::server::ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &hickory_server::server::Request,
        response_handle: R,
    ) -> hickory_server::server::ResponseInfo {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.catalog.handle_request::<R, T>(request, response_handle).await
    }
}

/// A record of zone `test.` for `CountingDns`.
pub enum TestRecord {
    A(&'static str, Ipv4Addr),
    /// `count` TXT records of about 100 bytes each under one name (an answer too large for UDP).
    ManyTxt(&'static str, usize),
}

/// Serves zone `test.` with `records` over UDP and TCP on `127.0.0.1:0`.
pub async fn start_counting_dns(records: &[TestRecord]) -> CountingDns {
    use hickory_server::proto::rr::rdata::TXT;
    let (origin, mut zone) = test_zone();
    for record in records {
        match record {
            TestRecord::A(name, ip) => {
                zone.upsert_mut(
                    Record::from_rdata(Name::from_ascii(format!("{name}.")).unwrap(), 30, RData::A(A(*ip))),
                    1,
                );
            }
            TestRecord::ManyTxt(name, count) => {
                for i in 0..*count {
                    let text = format!("record {i:03} {}", "x".repeat(90));
                    let rdata = RData::TXT(TXT::new(vec![text]));
                    zone.upsert_mut(Record::from_rdata(Name::from_ascii(format!("{name}.")).unwrap(), 30, rdata), 1);
                }
            }
        }
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(&origin), vec![Arc::new(zone)]);
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut server = Server::new(Counting { catalog, queries: queries.clone() });
    let (socket, tcp) = udp_and_tcp().await;
    let addr = socket.local_addr().unwrap();
    server.register_socket(socket);
    server.register_listener(tcp, std::time::Duration::from_secs(5), 64 * 1024);
    CountingDns { addr, queries, _server: server }
}
