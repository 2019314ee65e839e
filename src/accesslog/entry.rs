//! One `HttpAccessLogEntry` -> `StreamTotals`. The only place that knows how Envoy lays out an
//! HTTP access log entry; everything it cannot read is a counted skip, never a panic.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{Address, RequestMethod, address, socket_address};
use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::subject_alt_name::San;
use envoy_types::pb::envoy::data::accesslog::v3::{AccessLogCommon, AccessLogType, HttpAccessLogEntry};
use envoy_types::pb::google::protobuf::{Struct, value};

use crate::authz::tunnel::{MAX_REPORT_BYTES, Report, ReportError};
use crate::contract::{DECISION_METADATA_NAMESPACE, TUNNEL_REPORT_STATE};
use crate::telemetry::totals::{StreamDecision, StreamPhase, StreamTotals};

/// Why an entry did not become totals (label values of `egressd_access_log_entries_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Missing what every record needs (common properties, start time, request), or a value out
    /// of range.
    Malformed,
    /// An entry for a moment other than the stream's end or a periodic report (e.g. a tunnel
    /// just established): nothing to total.
    NotFinal,
    /// A TCP entry: the gateway logs only HTTP streams to egressd.
    Tcp,
    /// Past the per-message limit (see `service::MAX_ENTRIES_PER_MESSAGE`).
    OverLimit,
    /// A message that did not decode: the stream is ended.
    Undecodable,
    /// A tunnel filter report that did not read (the entry's totals still count).
    TunnelReport,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Malformed => "malformed",
            Skip::NotFinal => "not-final",
            Skip::Tcp => "tcp",
            Skip::OverLimit => "over-limit",
            Skip::Undecodable => "undecodable",
            Skip::TunnelReport => "tunnel-report",
        }
    }
}

/// Longest authority read: a DNS name is at most 253 bytes, plus a port; anything longer is not a
/// destination egressd could have allowed.
const MAX_AUTHORITY: usize = 300;

/// The totals of one entry.
pub fn totals(entry: &HttpAccessLogEntry) -> Result<StreamTotals, Skip> {
    let common = entry.common_properties.as_ref().ok_or(Skip::Malformed)?;
    let request = entry.request.as_ref().ok_or(Skip::Malformed)?;
    let phase = phase(common)?;
    let start = start_time(common)?;
    let (host, port) = authority(&request.authority)?;
    Ok(StreamTotals {
        phase,
        start,
        duration: common.duration.as_ref().and_then(|d| {
            let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
            Some(Duration::new(u64::try_from(d.seconds).ok()?, nanos))
        }),
        method: method(request.request_method),
        host,
        port,
        spiffe_id: peer_uri(common).map(str::to_string),
        client: common.downstream_remote_address.as_ref().and_then(socket),
        request_id: non_empty(&request.request_id).map(str::to_string),
        bytes_sent: request.request_body_bytes,
        bytes_received: entry.response.as_ref().map_or(0, |r| r.response_body_bytes),
        response_code: entry
            .response
            .as_ref()
            .and_then(|r| r.response_code)
            .and_then(|c| u16::try_from(c.value).ok())
            .filter(|c| *c <= 999),
        decision: common
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get(DECISION_METADATA_NAMESPACE))
            .map(decision)
            .unwrap_or_default(),
    })
}

/// End or progress; other entry types are skipped. Envoy sets the type on every entry it logs
/// from the HTTP connection manager; an entry without one is read as a stream's end.
fn phase(common: &AccessLogCommon) -> Result<StreamPhase, Skip> {
    match AccessLogType::try_from(common.access_log_type) {
        Ok(AccessLogType::DownstreamEnd | AccessLogType::NotSet) => Ok(StreamPhase::End),
        Ok(AccessLogType::DownstreamPeriodic) => Ok(StreamPhase::Progress),
        Ok(_) => Err(Skip::NotFinal),
        Err(_) => Err(Skip::Malformed),
    }
}

fn start_time(common: &AccessLogCommon) -> Result<SystemTime, Skip> {
    let t = common.start_time.as_ref().ok_or(Skip::Malformed)?;
    let secs = u64::try_from(t.seconds).map_err(|_| Skip::Malformed)?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000).ok_or(Skip::Malformed)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos)).ok_or(Skip::Malformed)
}

/// `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6 address (more than one `:`, no port);
/// an empty authority is no destination (allowed:
/// a request Envoy answered itself may have none). A port that is not a port is malformed.
fn authority(text: &str) -> Result<(Option<String>, Option<u16>), Skip> {
    if text.is_empty() {
        return Ok((None, None));
    }
    if text.len() > MAX_AUTHORITY {
        return Err(Skip::Malformed);
    }
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']').ok_or(Skip::Malformed)?;
            match after {
                "" => (v6, None),
                _ => (v6, Some(after.strip_prefix(':').ok_or(Skip::Malformed)?)),
            }
        }
        None if text.bytes().filter(|b| *b == b':').count() > 1 => (text, None),
        None => match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        },
    };
    let port = port.map(|p| p.parse::<u16>().map_err(|_| Skip::Malformed)).transpose()?;
    if host.is_empty() {
        return Err(Skip::Malformed);
    }
    Ok((Some(host.to_ascii_lowercase()), port))
}

fn method(m: i32) -> Option<&'static str> {
    Some(match RequestMethod::try_from(m).ok()? {
        RequestMethod::MethodUnspecified => return None,
        RequestMethod::Get => "GET",
        RequestMethod::Head => "HEAD",
        RequestMethod::Post => "POST",
        RequestMethod::Put => "PUT",
        RequestMethod::Delete => "DELETE",
        RequestMethod::Connect => "CONNECT",
        RequestMethod::Options => "OPTIONS",
        RequestMethod::Trace => "TRACE",
        RequestMethod::Patch => "PATCH",
    })
}

/// The peer certificate's URI SAN (an SVID has exactly one; a `spiffe://` one wins if several).
fn peer_uri(common: &AccessLogCommon) -> Option<&str> {
    let peer = common.tls_properties.as_ref()?.peer_certificate_properties.as_ref()?;
    let uris = peer.subject_alt_name.iter().filter_map(|s| match &s.san {
        Some(San::Uri(u)) if !u.is_empty() => Some(u.as_str()),
        _ => None,
    });
    let mut first = None;
    for uri in uris {
        if uri.starts_with("spiffe://") {
            return Some(uri);
        }
        first = first.or(Some(uri));
    }
    first
}

fn socket(addr: &Address) -> Option<SocketAddr> {
    let Some(address::Address::SocketAddress(s)) = &addr.address else { return None };
    let ip: IpAddr = s.address.parse().ok()?;
    let port = match s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok()?,
        _ => 0,
    };
    Some(SocketAddr::new(ip, port))
}

/// The tunnel filter's report on this stream (`contract::TUNNEL_REPORT_STATE`), when it wrote one.
/// Envoy serializes the filter's state as a `google.protobuf.BytesValue` (or `StringValue`).
pub fn tunnel_report(entry: &HttpAccessLogEntry) -> Option<Result<Report, ReportError>> {
    use envoy_types::pb::google::protobuf::{BytesValue, StringValue};
    use prost::Message;
    let any = entry.common_properties.as_ref()?.filter_state_objects.get(TUNNEL_REPORT_STATE)?;
    let bytes = match any.type_url.rsplit('/').next() {
        Some("google.protobuf.StringValue") => {
            StringValue::decode(any.value.as_slice()).ok().map(|v| v.value.into_bytes())
        }
        Some("google.protobuf.BytesValue") => BytesValue::decode(any.value.as_slice()).ok().map(|v| v.value),
        _ => None,
    };
    let text = bytes
        .filter(|b| b.len() <= MAX_REPORT_BYTES)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(ReportError::Unreadable);
    Some(text.and_then(|t| Report::parse(&t)))
}

fn decision(fields: &Struct) -> StreamDecision {
    let text = |key: &str| match fields.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(value::Kind::StringValue(s)) => non_empty(s).map(str::to_string),
        _ => None,
    };
    StreamDecision { decision: text("decision"), service: text("service"), rule: text("rule"), reason: text("reason") }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Metadata, SocketAddress};
    use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::CertificateProperties;
    use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::SubjectAltName;
    use envoy_types::pb::envoy::data::accesslog::v3::{HttpRequestProperties, HttpResponseProperties, TlsProperties};
    use envoy_types::pb::google::protobuf::{self as pb, Timestamp, UInt32Value, Value};
    use prost::Message;

    const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        let fields = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value { kind: Some(value::Kind::StringValue(v.to_string())) }))
            .collect();
        Metadata {
            filter_metadata: [(DECISION_METADATA_NAMESPACE.to_string(), Struct { fields })].into_iter().collect(),
            ..Default::default()
        }
    }

    /// What the gateway sends when a CONNECT tunnel closes.
    fn connect_entry() -> HttpAccessLogEntry {
        let san = |san| SubjectAltName { san: Some(san) };
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                start_time: Some(Timestamp { seconds: 1_800_000_000, nanos: 5_000_000 }),
                duration: Some(pb::Duration { seconds: 2, nanos: 500_000_000 }),
                downstream_remote_address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.1.2.3".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                        ..Default::default()
                    })),
                }),
                tls_properties: Some(TlsProperties {
                    peer_certificate_properties: Some(CertificateProperties {
                        subject_alt_name: vec![san(San::Dns("web.local".into())), san(San::Uri(PAY.into()))],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                metadata: Some(meta(&[("decision", "allow"), ("service", "payments"), ("rule", "payments/allow/0")])),
                access_log_type: AccessLogType::DownstreamEnd as i32,
                upstream_wire_bytes_sent: 3_200_000,
                ..Default::default()
            }),
            request: Some(HttpRequestProperties {
                request_method: RequestMethod::Connect as i32,
                authority: "API.Stripe.com:443".into(),
                request_id: "r-1".into(),
                request_body_bytes: 3 << 20,
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: 200 }),
                response_body_bytes: 4096,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_tunnel_report_reads_from_either_wrapper_and_bad_ones_are_errors() {
        let with = |any: Option<pb::Any>| {
            let mut e = connect_entry();
            let common = e.common_properties.as_mut().unwrap();
            common.filter_state_objects = any.map(|a| (TUNNEL_REPORT_STATE.to_string(), a)).into_iter().collect();
            tunnel_report(&e)
        };
        let text = "sni-mismatch enforce 1700000000000 api.stripe.com evil.test";
        let string = envoy_types::util::pack_any(pb::StringValue { value: text.into() });
        let bytes = envoy_types::util::pack_any(pb::BytesValue { value: text.as_bytes().to_vec() });
        for any in [string, bytes] {
            let r = with(Some(any)).expect("a report").expect("it reads");
            assert_eq!((r.host(), r.sni.as_deref()), ("api.stripe.com", Some("evil.test")));
        }
        assert_eq!(with(None), None, "a stream the filter wrote nothing for");
        let other = envoy_types::util::pack_any(pb::UInt32Value { value: 7 });
        assert_eq!(with(Some(other)), Some(Err(ReportError::Unreadable)));
        let huge = envoy_types::util::pack_any(pb::StringValue { value: "x".repeat(MAX_REPORT_BYTES + 1) });
        assert_eq!(with(Some(huge)), Some(Err(ReportError::Unreadable)));
        let not_utf8 = envoy_types::util::pack_any(pb::BytesValue { value: vec![0xff, 0xfe] });
        assert_eq!(with(Some(not_utf8)), Some(Err(ReportError::Unreadable)));
    }

    #[test]
    fn a_closed_connect_tunnel_becomes_its_totals() {
        let t = totals(&connect_entry()).unwrap();
        assert_eq!(t.phase, StreamPhase::End);
        assert!(t.is_connect());
        assert_eq!(t.start, SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 5_000_000));
        assert_eq!(t.duration, Some(Duration::from_millis(2500)));
        assert_eq!((t.host.as_deref(), t.port), (Some("api.stripe.com"), Some(443)));
        assert_eq!(t.spiffe_id.as_deref(), Some(PAY), "the URI SAN, not the DNS one");
        assert_eq!(t.client, Some("10.1.2.3:40000".parse().unwrap()));
        assert_eq!(t.request_id.as_deref(), Some("r-1"));
        assert_eq!((t.bytes_sent, t.bytes_received), (3 << 20, 4096), "body bytes, not wire bytes");
        assert_eq!(t.response_code, Some(200));
        assert_eq!(t.decision.decision.as_deref(), Some("allow"));
        assert_eq!(t.decision.service.as_deref(), Some("payments"));
        assert_eq!(t.decision.rule.as_deref(), Some("payments/allow/0"));
        assert_eq!(t.decision.reason, None);
    }

    #[test]
    fn periodic_entries_are_progress_and_other_moments_are_skipped() {
        let mut e = connect_entry();
        let common = e.common_properties.as_mut().unwrap();
        common.access_log_type = AccessLogType::DownstreamPeriodic as i32;
        assert_eq!(totals(&e).unwrap().phase, StreamPhase::Progress);
        let common = e.common_properties.as_mut().unwrap();
        common.access_log_type = AccessLogType::DownstreamTunnelSuccessfullyEstablished as i32;
        assert_eq!(totals(&e), Err(Skip::NotFinal));
        e.common_properties.as_mut().unwrap().access_log_type = 999;
        assert_eq!(totals(&e), Err(Skip::Malformed));
    }

    #[test]
    fn an_entry_missing_optional_fields_still_counts_its_bytes() {
        let entry = HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                start_time: Some(Timestamp { seconds: 1, nanos: 0 }),
                ..Default::default()
            }),
            request: Some(HttpRequestProperties {
                request_method: RequestMethod::Post as i32,
                authority: "[2001:DB8::1]:8443".into(),
                request_body_bytes: 12,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = totals(&entry).unwrap();
        assert_eq!((t.method, t.host.as_deref(), t.port), (Some("POST"), Some("2001:db8::1"), Some(8443)));
        assert_eq!((t.bytes_sent, t.bytes_received), (12, 0));
        assert_eq!((t.spiffe_id, t.client, t.request_id, t.response_code, t.duration), (None, None, None, None, None));
        assert_eq!(t.decision, StreamDecision::default(), "no ext_authz metadata: egressd never checked it");
        let bare = HttpRequestProperties { authority: "example.test".into(), ..Default::default() };
        let t = totals(&HttpAccessLogEntry { request: Some(bare), ..entry.clone() }).unwrap();
        assert_eq!((t.method, t.host.as_deref(), t.port), (None, Some("example.test"), None));
        let v6 = HttpRequestProperties { authority: "2001:db8::2".into(), ..Default::default() };
        let t = totals(&HttpAccessLogEntry { request: Some(v6), ..entry }).unwrap();
        assert_eq!((t.host.as_deref(), t.port), (Some("2001:db8::2"), None), "a bare IPv6 address has no port");
    }

    #[test]
    fn entries_without_what_every_record_needs_are_malformed() {
        let missing = [
            HttpAccessLogEntry { common_properties: None, ..connect_entry() },
            HttpAccessLogEntry { request: None, ..connect_entry() },
            {
                let mut e = connect_entry();
                e.common_properties.as_mut().unwrap().start_time = None;
                e
            },
            {
                let mut e = connect_entry();
                e.common_properties.as_mut().unwrap().start_time = Some(Timestamp { seconds: -5, nanos: 0 });
                e
            },
            {
                let mut e = connect_entry();
                e.common_properties.as_mut().unwrap().start_time = Some(Timestamp { seconds: 0, nanos: -1 });
                e
            },
        ];
        for e in &missing {
            assert_eq!(totals(e), Err(Skip::Malformed), "{e:?}");
        }
        for bad in ["host:port", "host:70000", "[::1", "[::1]x", ":443", &"a".repeat(400)] {
            let mut e = connect_entry();
            e.request.as_mut().unwrap().authority = bad.to_string();
            assert_eq!(totals(&e), Err(Skip::Malformed), "{bad}");
        }
    }

    /// Arbitrary bytes either do not decode or decode into something `totals` answers for.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let valid = connect_entry().encode_to_vec();
        for round in 0..2000 {
            let mut bytes = valid.clone();
            for _ in 0..=(round % 8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % bytes.len();
                bytes[i] = (seed >> 32) as u8;
            }
            if round % 3 == 0 {
                bytes.truncate((seed as usize) % bytes.len());
            }
            if let Ok(entry) = HttpAccessLogEntry::decode(bytes.as_slice()) {
                let _ = totals(&entry);
            }
        }
        assert!(HttpAccessLogEntry::decode(&b"\xff\xff\xff\xff"[..]).is_err());
    }
}
