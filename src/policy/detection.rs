//! The `detection:` block of MeshDefaults: thresholds of the exfiltration and C2 detectors
//! (`crate::detect`), as written (`DetectionDoc`) and as the detectors use them (`DetectionConfig`).
//!
//! Every field is optional; the defaults are those of the tools the detectors follow (RITA for
//! beaconing, the DNS-tunnel heuristics of Zeek and Elastic's rules) and are listed in the README.

use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostics, SourceLoc};

/// `detection:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectionDoc {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub beaconing: Option<BeaconingDoc>,
    #[serde(default)]
    pub tunnel_names: Option<TunnelNamesDoc>,
    #[serde(default)]
    pub first_seen: Option<FirstSeenDoc>,
    #[serde(default)]
    pub rare: Option<RareDoc>,
    #[serde(default)]
    pub large_upload: Option<LargeUploadDoc>,
    #[serde(default)]
    pub deny_burst: Option<DenyBurstDoc>,
    #[serde(default)]
    pub limits: Option<LimitsDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BeaconingDoc {
    pub window: Option<Spanned<String>>,
    pub min_timestamps: Option<Spanned<i64>>,
    pub min_span: Option<Spanned<String>>,
    pub threshold: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelNamesDoc {
    pub window: Option<Spanned<String>>,
    pub distinct_names: Option<Spanned<i64>>,
    pub long_label: Option<Spanned<i64>>,
    pub long_names: Option<Spanned<i64>>,
    pub long_window: Option<Spanned<String>>,
    pub txt_null_queries: Option<Spanned<i64>>,
    pub txt_null_share: Option<Spanned<f64>>,
    pub large_answer: Option<Spanned<String>>,
    pub large_answers: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FirstSeenDoc {
    pub learning: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RareDoc {
    pub max_service_percent: Option<Spanned<f64>>,
    pub min_services: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LargeUploadDoc {
    pub bytes: Option<Spanned<String>>,
    pub window: Option<Spanned<String>>,
    pub baseline_factor: Option<Spanned<f64>>,
    pub baseline_min_bytes: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenyBurstDoc {
    pub destinations: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsDoc {
    pub identities: Option<Spanned<i64>>,
    pub destinations_per_identity: Option<Spanned<i64>>,
    pub timestamps_per_destination: Option<Spanned<i64>>,
    pub beacon_series: Option<Spanned<i64>>,
    pub recent_signals: Option<Spanned<i64>>,
}

/// The detectors' thresholds. Durations in milliseconds (the detectors work in event time).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectionConfig {
    pub enabled: bool,
    pub beacon_window_ms: i64,
    pub beacon_min_timestamps: usize,
    /// A series is scored once its first and last request are this far apart.
    pub beacon_min_span_ms: i64,
    pub beacon_threshold: f64,
    pub names_window_ms: i64,
    pub names_distinct: u64,
    pub names_long_label: usize,
    pub names_long: usize,
    pub names_long_window_ms: i64,
    /// DNS queries of type TXT or NULL (what tunnels carry data in) under one registrable domain
    /// in the names window, when they also make `names_txt_null_share` of its queries there.
    pub names_txt_null: u64,
    pub names_txt_null_share: f64,
    /// A DNS answer of at least this many bytes is large (tunnels' downstream).
    pub names_large_answer_bytes: u64,
    /// Large answers under one registrable domain in the names window.
    pub names_large_answers: u64,
    pub first_seen_learning_ms: i64,
    pub rare_max_service_percent: f64,
    /// Fewer services than this seen: too few to call anything rare.
    pub rare_min_services: usize,
    pub upload_bytes: u64,
    pub upload_window_ms: i64,
    pub upload_baseline_factor: f64,
    /// A baseline multiple below this many bytes is not an upload worth a signal.
    pub upload_baseline_min_bytes: u64,
    pub deny_burst_destinations: usize,
    pub deny_burst_window_ms: i64,
    /// Identities tracked at once (least recently seen evicted, counted).
    pub max_identities: usize,
    /// Destinations tracked per identity by each detector.
    pub max_destinations_per_identity: usize,
    /// Request timestamps kept per (identity, destination) for beaconing.
    pub max_timestamps: usize,
    /// (identity, destination) beacon series kept for the whole mesh.
    pub max_beacon_series: usize,
    /// Signals kept for `GET /signals`.
    pub recent_signals: usize,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            enabled: true,
            beacon_window_ms: 24 * HOUR,
            beacon_min_timestamps: 4,
            beacon_min_span_ms: HOUR,
            beacon_threshold: 0.7,
            names_window_ms: 24 * HOUR,
            names_distinct: 100,
            names_long_label: 50,
            names_long: 15,
            names_long_window_ms: 5 * MINUTE,
            names_txt_null: 50,
            names_txt_null_share: 0.5,
            names_large_answer_bytes: 1024,
            names_large_answers: 20,
            first_seen_learning_ms: 24 * HOUR,
            rare_max_service_percent: 2.0,
            rare_min_services: 20,
            upload_bytes: 1 << 30,
            upload_window_ms: 8 * HOUR,
            upload_baseline_factor: 10.0,
            upload_baseline_min_bytes: 100 << 20,
            deny_burst_destinations: 20,
            deny_burst_window_ms: 10 * MINUTE,
            max_identities: 10_000,
            max_destinations_per_identity: 64,
            max_timestamps: 512,
            max_beacon_series: 50_000,
            recent_signals: 1000,
        }
    }
}

/// Turns the written block into thresholds, reporting bad values where they are written.
pub(super) fn compile(doc: Option<&DetectionDoc>, file: &Arc<str>, diags: &mut Diagnostics) -> DetectionConfig {
    let mut c = DetectionConfig::default();
    let Some(doc) = doc else { return c };
    let mut v = Values { file, diags };
    if let Some(enabled) = doc.enabled {
        c.enabled = enabled;
    }
    if let Some(b) = &doc.beaconing {
        v.duration(&b.window, &mut c.beacon_window_ms);
        v.count(&b.min_timestamps, 3, &mut c.beacon_min_timestamps);
        v.duration(&b.min_span, &mut c.beacon_min_span_ms);
        v.fraction(&b.threshold, &mut c.beacon_threshold);
    }
    if let Some(n) = &doc.tunnel_names {
        v.duration(&n.window, &mut c.names_window_ms);
        v.count(&n.distinct_names, 1, &mut c.names_distinct);
        v.count(&n.long_label, 1, &mut c.names_long_label);
        v.count(&n.long_names, 1, &mut c.names_long);
        v.duration(&n.long_window, &mut c.names_long_window_ms);
        v.count(&n.txt_null_queries, 1, &mut c.names_txt_null);
        if let Some(share) = &n.txt_null_share {
            match share.value {
                x if x > 0.0 && x <= 1.0 => c.names_txt_null_share = x,
                x => v.error(share, &format!("txtNullShare is a fraction above 0 and at most 1, not {x}")),
            }
        }
        v.bytes(&n.large_answer, &mut c.names_large_answer_bytes);
        v.count(&n.large_answers, 1, &mut c.names_large_answers);
    }
    if let Some(f) = &doc.first_seen {
        v.duration(&f.learning, &mut c.first_seen_learning_ms);
    }
    if let Some(r) = &doc.rare {
        if let Some(p) = &r.max_service_percent {
            match p.value {
                x if (0.0..=100.0).contains(&x) => c.rare_max_service_percent = x,
                _ => v.error(p, "maxServicePercent must be between 0 and 100"),
            }
        }
        v.count(&r.min_services, 1, &mut c.rare_min_services);
    }
    if let Some(u) = &doc.large_upload {
        v.bytes(&u.bytes, &mut c.upload_bytes);
        v.duration(&u.window, &mut c.upload_window_ms);
        if let Some(f) = &u.baseline_factor {
            match f.value {
                x if x >= 1.0 => c.upload_baseline_factor = x,
                _ => v.error(f, "baselineFactor must be at least 1"),
            }
        }
        v.bytes(&u.baseline_min_bytes, &mut c.upload_baseline_min_bytes);
    }
    if let Some(d) = &doc.deny_burst {
        v.count(&d.destinations, 2, &mut c.deny_burst_destinations);
        v.duration(&d.window, &mut c.deny_burst_window_ms);
    }
    if let Some(l) = &doc.limits {
        v.count(&l.identities, 1, &mut c.max_identities);
        v.count(&l.destinations_per_identity, 1, &mut c.max_destinations_per_identity);
        v.count(&l.timestamps_per_destination, 8, &mut c.max_timestamps);
        v.count(&l.beacon_series, 1, &mut c.max_beacon_series);
        v.count(&l.recent_signals, 1, &mut c.recent_signals);
    }
    c
}

struct Values<'a> {
    file: &'a Arc<str>,
    diags: &'a mut Diagnostics,
}

impl Values<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, message: &str) {
        self.diags.error(SourceLoc::of(self.file, at), format!("detection: {message}"));
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, out: &mut i64) {
        let Some(v) = value else { return };
        match parse_age(&v.value) {
            Ok(s) if s > 0 => *out = s * 1000,
            Ok(_) => self.error(v, "a window must be longer than zero"),
            Err(e) => self.error(v, &e),
        }
    }

    fn count<T: TryFrom<i64>>(&mut self, value: &Option<Spanned<i64>>, min: i64, out: &mut T) {
        let Some(v) = value else { return };
        match T::try_from(v.value) {
            Ok(n) if v.value >= min => *out = n,
            _ => self.error(v, &format!("expected a whole number of at least {min}, not {}", v.value)),
        }
    }

    fn fraction(&mut self, value: &Option<Spanned<f64>>, out: &mut f64) {
        let Some(v) = value else { return };
        match v.value {
            x if (0.0..=1.0).contains(&x) => *out = x,
            x => self.error(v, &format!("a score threshold is between 0 and 1, not {x}")),
        }
    }

    fn bytes(&mut self, value: &Option<Spanned<String>>, out: &mut u64) {
        let Some(v) = value else { return };
        match parse_bytes(&v.value) {
            Ok(n) if n > 0 => *out = n,
            Ok(_) => self.error(v, "a size must be more than zero bytes"),
            Err(e) => self.error(v, &e),
        }
    }
}

/// Parses an age such as `7d`, `12h`, `30m`, `90s` or `2w` into seconds.
pub fn parse_age(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: i64 = digits.parse().map_err(|_| format!("`{s}` is not an age such as 7d, 12h, 30m"))?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h, d or w (as in 7d)")),
    };
    n.checked_mul(unit_seconds).ok_or_else(|| format!("`{s}` is too long an age"))
}

/// `1GiB`, `500 MiB`, `2GB`, `1048576`: a size in bytes (binary units as IEC, decimal as SI).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("`{text}` is not a size such as 1GiB, 500MiB or 1048576"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_binary_and_decimal_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("500 MiB"), Ok(500 << 20));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("lots").is_err());
    }
}
