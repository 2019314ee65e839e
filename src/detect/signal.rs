//! A detector's finding: what it saw, about whom, with the evidence in words and numbers.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalKind {
    Beaconing,
    DnsTunnel,
    FirstSeen,
    Rare,
    LargeUpload,
    DenyBurst,
}

impl SignalKind {
    pub const ALL: [SignalKind; 6] = [
        SignalKind::Beaconing,
        SignalKind::DnsTunnel,
        SignalKind::FirstSeen,
        SignalKind::Rare,
        SignalKind::LargeUpload,
        SignalKind::DenyBurst,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Beaconing => "beaconing",
            SignalKind::DnsTunnel => "dns-tunnel",
            SignalKind::FirstSeen => "first-seen",
            SignalKind::Rare => "rare",
            SignalKind::LargeUpload => "large-upload",
            SignalKind::DenyBurst => "deny-burst",
        }
    }
}

impl std::str::FromStr for SignalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SignalKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let kinds: Vec<_> = SignalKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown signal kind `{s}` (one of {})", kinds.join(", "))
        })
    }
}

/// One number of a signal's evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Evidence {
    Count(u64),
    Number(f64),
    Text(String),
}

impl From<u64> for Evidence {
    fn from(n: u64) -> Self {
        Evidence::Count(n)
    }
}

impl From<usize> for Evidence {
    fn from(n: usize) -> Self {
        Evidence::Count(n as u64)
    }
}

impl From<f64> for Evidence {
    fn from(x: f64) -> Self {
        // Three decimals: evidence is read by people; more digits are noise.
        Evidence::Number((x * 1000.0).round() / 1000.0)
    }
}

impl From<String> for Evidence {
    fn from(s: String) -> Self {
        Evidence::Text(s)
    }
}

impl From<&str> for Evidence {
    fn from(s: &str) -> Self {
        Evidence::Text(s.to_string())
    }
}

/// A signal, as written to the audit log (`"egress.signal": {...}`), `GET /signals` and
/// `egressd detect`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub kind: SignalKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Who asked, when no service or identity is known (an unmapped DNS client's address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A host, an IP address, or a registrable domain (`dns-tunnel`, `first-seen`, `rare`).
    pub destination: String,
    /// 0..1; the detector's threshold was met.
    pub score: f64,
    /// The first and last observation the evidence covers (unix milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub first: i64,
    #[serde(serialize_with = "rfc3339")]
    pub last: i64,
    /// The evidence in words.
    pub summary: String,
    /// The evidence in numbers, by name.
    pub evidence: Vec<(&'static str, Evidence)>,
    /// Whether the destination is allowed and how, in words (`allowed by exact rule`, `denied`).
    pub context: String,
}

fn rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*ms))
}

/// `2026-11-21T20:10:33.028Z`.
pub fn format_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => ms.to_string(),
    }
}

impl Signal {
    /// `evidence` as a JSON object (the serialized form keeps the detector's order).
    pub fn evidence_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.evidence
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null)))
            .collect()
    }

    /// The signal as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("evidence".into(), serde_json::Value::Object(self.evidence_json()));
        }
        v
    }

    /// One line for people: `beaconing payments -> c2.example (0.91): 212 requests every ~60 s ...`.
    pub fn text(&self) -> String {
        let who =
            self.service.as_deref().or(self.spiffe_id.as_deref()).or(self.source.as_deref()).unwrap_or("(unknown)");
        format!(
            "{} {} {who} -> {} score {:.2}: {} [{}]",
            format_time(self.last),
            self.kind.as_str(),
            self.destination,
            self.score,
            self.summary,
            self.context
        )
    }
}
