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

/// Serves zone `test.` with an A record 127.0.0.1 for each of `names`.
pub async fn start_dns(names: &[&str]) -> TestDns {
    let names: Vec<(String, Ipv4Addr)> = names.iter().map(|n| (n.to_string(), Ipv4Addr::LOCALHOST)).collect();
    start_dns_at(&names).await
}

/// Serves zone `test.` with an A record for each (name, address).
pub async fn start_dns_at(names: &[(String, Ipv4Addr)]) -> TestDns {
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
