//! The detectors through `Detector::observe`: which events reach which detector, and the bounds.

use super::*;

const ID: &str = "spiffe://corp.example/ns/etl/sa/job";

fn request(t: i64, host: &str, admission: Admission, body: Option<u64>) -> Observation<'_> {
    Observation {
        time_ms: t,
        service: Some("etl"),
        spiffe_id: Some(ID),
        source: None,
        host,
        port: 443,
        event: Event::Request { admission, body_bytes: body },
    }
}

fn kinds(signals: &[Signal]) -> Vec<SignalKind> {
    let mut k: Vec<_> = signals.iter().map(|s| s.kind).collect();
    k.dedup();
    k
}

#[test]
fn a_regular_series_to_a_denied_host_is_beaconing_with_the_identity_named() {
    let mut d = Detector::new(DetectionConfig::default());
    let mut out = Vec::new();
    for i in 0..200 {
        d.observe(&request(i * 60_000, "c2.example", Admission::Denied, None), &mut out);
    }
    let beacon = out.iter().find(|s| s.kind == SignalKind::Beaconing).expect("beaconing");
    assert_eq!(beacon.spiffe_id.as_deref(), Some(ID));
    assert_eq!(beacon.service.as_deref(), Some("etl"));
    assert_eq!(beacon.destination, "c2.example");
    assert_eq!(d.stats().observations, 200);
}

#[test]
fn dns_queries_feed_the_tunnel_detector_and_stream_totals_the_upload_detector() {
    let mut d = Detector::new(DetectionConfig::default());
    let mut out = Vec::new();
    for i in 0..120i64 {
        let name = format!("{:x}.t.exfil.example", xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
        let o = Observation {
            event: Event::DnsQuery {
                admission: Admission::Denied,
                facts: DnsFacts { txt_null: false, answer_bytes: 40 },
            },
            ..request(i * 1000, &name, Admission::Denied, None)
        };
        d.observe(&o, &mut out);
    }
    assert_eq!(kinds(&out), vec![SignalKind::DnsTunnel]);
    assert_eq!(out[0].destination, "exfil.example");
    out.clear();
    for i in 0..3 {
        let o = Observation {
            event: Event::StreamTotals { bytes_sent: 400 << 20 },
            ..request(i * 60_000, "drop.example", Admission::Exact, None)
        };
        d.observe(&o, &mut out);
    }
    assert_eq!(kinds(&out), vec![SignalKind::LargeUpload]);
}

#[test]
fn probing_many_denied_destinations_is_a_deny_burst() {
    let mut d = Detector::new(DetectionConfig::default());
    let mut out = Vec::new();
    let hosts: Vec<String> = (0..25).map(|i| format!("10.0.0.{i}")).collect();
    for (i, h) in hosts.iter().enumerate() {
        d.observe(&request(i as i64 * 1000, h, Admission::Denied, None), &mut out);
    }
    assert!(kinds(&out).contains(&SignalKind::DenyBurst), "{out:?}");
}

#[test]
fn identities_beyond_the_limit_are_evicted_and_counted() {
    let config = DetectionConfig { max_identities: 10, ..DetectionConfig::default() };
    let mut d = Detector::new(config);
    let ids: Vec<String> = (0..25).map(|i| format!("spiffe://corp.example/w/{i}")).collect();
    let mut out = Vec::new();
    for id in &ids {
        let o = Observation { spiffe_id: Some(id), service: None, ..request(0, "a.example", Admission::Exact, None) };
        d.observe(&o, &mut out);
    }
    assert_eq!(d.identities(), 10);
    assert!(d.stats().evicted_identities >= 15, "{:?}", d.stats());
}

#[test]
fn a_disabled_detector_observes_nothing() {
    let mut d = Detector::new(DetectionConfig { enabled: false, ..DetectionConfig::default() });
    let mut out = Vec::new();
    for i in 0..200 {
        d.observe(&request(i * 60_000, "c2.example", Admission::Denied, None), &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(d.stats().observations, 0);
}

#[test]
fn registrable_domains_follow_the_public_suffix_list() {
    assert_eq!(registrable("a.b.evil.example"), "evil.example");
    assert_eq!(registrable("x.s3.amazonaws.com"), "x.s3.amazonaws.com");
    assert_eq!(registrable("10.1.2.3"), "10.1.2.3");
    assert_eq!(registrable("localhost"), "localhost");
}

#[test]
fn repeats_within_a_second_are_counted_and_change_no_verdict_but_their_bodies_count() {
    // Each beacon request five times in its second: the same signal as once, five times the count.
    let (mut once, mut five) = (Detector::new(DetectionConfig::default()), Detector::new(DetectionConfig::default()));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..200 {
        once.observe(&request(i * 60_000, "c2.example", Admission::Denied, None), &mut a);
        for r in 0..5 {
            five.observe(&request(i * 60_000 + r * 100, "c2.example", Admission::Denied, None), &mut b);
        }
    }
    assert_eq!(kinds(&a), kinds(&b));
    assert!(kinds(&b).contains(&SignalKind::Beaconing), "{b:?}");
    assert_eq!(five.stats().observations, 1000);

    // Bodies of repeated requests still leave: 24 x 50 MiB in three seconds is a large upload.
    let mut d = Detector::new(DetectionConfig::default());
    let mut out = Vec::new();
    for i in 0..24 {
        d.observe(&request(i / 8 * 1000, "drop.example", Admission::Exact, Some(50 << 20)), &mut out);
    }
    assert_eq!(kinds(&out), vec![SignalKind::LargeUpload], "{out:?}");

    // Another port is another destination, even in the same second: probing ports is a deny burst.
    let mut d = Detector::new(DetectionConfig::default());
    let mut out = Vec::new();
    for port in 0..25 {
        d.observe(&Observation { port: 8000 + port, ..request(0, "10.0.0.1", Admission::Denied, None) }, &mut out);
    }
    assert!(kinds(&out).contains(&SignalKind::DenyBurst), "{out:?}");
}

#[test]
fn an_observation_of_many_requests_counts_them_all() {
    let mut d = Detector::new(DetectionConfig::default());
    let mut out = Vec::new();
    for i in 0..200 {
        d.observe_requests(&request(i * 60_000, "c2.example", Admission::Denied, None), 3, &mut out);
    }
    assert!(kinds(&out).contains(&SignalKind::Beaconing), "{out:?}");
    assert_eq!(d.stats().observations, 600);
    let beacon = out.iter().find(|s| s.kind == SignalKind::Beaconing).unwrap();
    assert!(beacon.to_json().to_string().contains("\"requests\":"), "{}", beacon.to_json());
}
