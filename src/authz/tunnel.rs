//! A CONNECT tunnel's check (domain fronting): the CONNECT decision orders it, the gateway's
//! tunnel filter carries it out, the gateway's access log reports it, egressd records it.
//!
//! ```text
//! CONNECT api.stripe.com:443 ─▶ ext_authz ─▶ egressd: allow, x-egress-host: api.stripe.com,
//!                                             x-egress-tunnel: require-matching-sni enforce
//! tunnel's first bytes ───────▶ tunnel filter (src/tunnel_filter, in the same HTTP listener):
//!                               ClientHello whole? SNI == x-egress-host? else reset (enforce)
//!                               filter state wasm.egressd_tunnel: "sni-mismatch enforce <ms> <host> <sni>"
//! access log (ALS) ───────────▶ egressd: `Report::parse`, `decide` -> the tunnel decision's
//!                               span (child of the CONNECT's), audit record, metrics
//! ```
//! The order is a pure function of the service and the CONNECT's enforcement, so the answer
//! needs no per-tunnel state: no registry, no correlation, no second Check call.

use crate::policy::{CompiledPolicy, Decision, Outcome, Reason, TunnelTls};

/// The tunnel filter's own logic (`src/tunnel_filter/src/verdict.rs`), compiled into egressd as
/// well: the verdicts egressd reads back are the filter's, from one definition, and the tests run
/// the filter's ClientHello reading on the host.
#[path = "../tunnel_filter/src/verdict.rs"]
pub mod filter;

pub use filter::Verdict;

/// The order egressd's answer gives the tunnel filter for a permitted CONNECT (the value of
/// `contract::TUNNEL_HEADER`): `off`, or what to check and whether a violation is enforced.
pub fn order(tunnel_tls: TunnelTls, enforced: bool) -> &'static str {
    match (tunnel_tls, enforced) {
        (TunnelTls::Off, _) => "off",
        (TunnelTls::RequireMatchingSni, true) => "require-matching-sni enforce",
        (TunnelTls::RequireMatchingSni, false) => "require-matching-sni observe",
        (TunnelTls::AllowAnyTls, true) => "allow-any-tls enforce",
        (TunnelTls::AllowAnyTls, false) => "allow-any-tls observe",
    }
}

/// The tunnel filter's report (`contract::TUNNEL_REPORT_STATE`), read back from the gateway's
/// access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub verdict: Verdict,
    /// Whether the filter enforced a violation (closed the tunnel).
    pub enforced: bool,
    /// When the filter judged the tunnel (Unix milliseconds).
    pub unix_ms: u64,
    /// The host egressd authorized (`x-egress-host`: IPv6 in brackets).
    pub host: String,
    /// The ClientHello's server name, percent-decoded bytes read as text (lossy); `None` without one.
    pub sni: Option<String>,
}

/// Why a report did not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("tunnel report is not UTF-8 text of at most {MAX_REPORT_BYTES} bytes")]
    Unreadable,
    #[error("tunnel report has {0} fields, not 5")]
    Fields(usize),
    #[error("tunnel report: unknown verdict `{0}`")]
    Verdict(String),
    #[error("tunnel report: unknown action `{0}`")]
    Action(String),
    #[error("tunnel report: time `{0}` is not Unix milliseconds")]
    Time(String),
    #[error("tunnel report: empty host")]
    Host,
}

/// The longest report read: the filter writes at most a 255-byte SNI, percent-encoded (x3), plus
/// a host of at most 255 bytes and the rest.
pub const MAX_REPORT_BYTES: usize = 1200;

impl Report {
    /// `<reason> <enforce|observe> <unix ms> <host> <sni>` (the filter's `verdict::report`).
    pub fn parse(text: &str) -> Result<Report, ReportError> {
        let fields: Vec<&str> = text.splitn(5, ' ').collect();
        let [verdict, action, time, host, sni] = fields[..] else { return Err(ReportError::Fields(fields.len())) };
        let Some(verdict) = Verdict::ALL.into_iter().find(|v| v.code() == verdict) else {
            return Err(ReportError::Verdict(verdict.to_string()));
        };
        let enforced = match action {
            "enforce" => true,
            "observe" => false,
            other => return Err(ReportError::Action(other.to_string())),
        };
        let unix_ms = time.parse().map_err(|_| ReportError::Time(time.to_string()))?;
        if host.is_empty() {
            return Err(ReportError::Host);
        }
        let sni = (!sni.is_empty()).then(|| percent_decode(sni));
        Ok(Report { verdict, enforced, unix_ms, host: host.to_string(), sni })
    }

    /// The host without IPv6 brackets (as decisions name it).
    pub fn host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// `%XX` back to its byte; anything else as it is. Bytes that are not UTF-8 are replaced.
fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tunnel decision the report stands for, for the CONNECT's `service`: the filter's verdict,
/// enforced as the filter did (`Deny`) or only reported (`WouldDeny`).
pub fn decide<'p>(policy: &'p CompiledPolicy, service: Option<&str>, report: &Report) -> Decision<'p> {
    let violation = match report.verdict {
        Verdict::Verified => None,
        Verdict::SniMismatch => Some(Reason::SniMismatch {
            connect: report.host().to_string(),
            sni: report.sni.clone().unwrap_or_default(),
        }),
        Verdict::SniMissing => Some(Reason::SniMissing),
        Verdict::NotTls => Some(Reason::NotTls),
    };
    let (outcome, reason) = match violation {
        None => (Outcome::Allow, Reason::TunnelVerified),
        Some(r) if report.enforced => (Outcome::Deny, r),
        Some(r) => (Outcome::WouldDeny, r),
    };
    let service = service.and_then(|s| policy.service(s));
    Decision {
        outcome,
        reason,
        rule: None,
        mode: service.map(|s| s.mode),
        service,
        enforced: report.enforced,
        near_miss: None,
        rolled_back: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_is_one_the_filter_reads() {
        for tls in [TunnelTls::RequireMatchingSni, TunnelTls::AllowAnyTls, TunnelTls::Off] {
            for enforced in [true, false] {
                let value = order(tls, enforced);
                let words: Vec<&str> = value.split(' ').collect();
                assert_eq!(words[0], tls.as_str(), "{value}");
                if tls != TunnelTls::Off {
                    assert_eq!(words[1], if enforced { "enforce" } else { "observe" });
                }
            }
        }
    }

    #[test]
    fn reports_read_back_and_bad_ones_are_errors() {
        let r = Report::parse("sni-mismatch enforce 1700000000123 api.stripe.com evil.test").unwrap();
        assert_eq!(
            r,
            Report {
                verdict: Verdict::SniMismatch,
                enforced: true,
                unix_ms: 1_700_000_000_123,
                host: "api.stripe.com".into(),
                sni: Some("evil.test".into())
            }
        );
        let none = Report::parse("sni-missing observe 1 [fd00::1] ").unwrap();
        assert_eq!((none.sni, none.host.as_str()), (None, "[fd00::1]"));
        let odd = Report::parse("sni-mismatch enforce 1 a.test %C3%A9.evil%20x%25%0A%zz").unwrap();
        assert_eq!(odd.sni.as_deref(), Some("é.evil x%\n%zz"), "percent-decoded, a stray % kept");
        for (bad, why) in [
            ("", ReportError::Fields(1)),
            ("tunnel-verified enforce 1 a.test", ReportError::Fields(4)),
            ("maybe enforce 1 a.test x", ReportError::Verdict("maybe".into())),
            ("not-tls always 1 a.test ", ReportError::Action("always".into())),
            ("not-tls enforce -1 a.test ", ReportError::Time("-1".into())),
            ("not-tls enforce 1  x", ReportError::Host),
        ] {
            assert_eq!(Report::parse(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn tunnel_decisions_by_verdict_and_enforcement() {
        let policy = crate::policy::compile(&crate::policy::PolicySource::embedded(), 0).unwrap();
        let service = policy.services.first().map(|s| s.name.clone());
        let code = |text: &str| {
            let d = decide(&policy, service.as_deref(), &Report::parse(text).unwrap());
            (d.outcome, d.reason.code(), d.service.map(|s| s.name.clone()), d.mode.is_some())
        };
        let named = |o, c| (o, c, service.clone(), service.is_some());
        assert_eq!(code("tunnel-verified enforce 1 a.test a.test"), named(Outcome::Allow, "tunnel-verified"));
        assert_eq!(code("sni-mismatch enforce 1 a.test b.test"), named(Outcome::Deny, "sni-mismatch"));
        assert_eq!(code("sni-mismatch observe 1 a.test b.test"), named(Outcome::WouldDeny, "sni-mismatch"));
        assert_eq!(code("sni-missing enforce 1 a.test "), named(Outcome::Deny, "sni-missing"));
        assert_eq!(code("not-tls observe 1 a.test "), named(Outcome::WouldDeny, "not-tls"));
        let d = decide(&policy, None, &Report::parse("sni-mismatch enforce 1 [::1] x.test").unwrap());
        assert_eq!(d.reason, Reason::SniMismatch { connect: "::1".into(), sni: "x.test".into() });
        assert!(d.service.is_none());
    }
}
