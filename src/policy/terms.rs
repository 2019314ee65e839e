//! The policy's vocabulary: how a service's rules apply (`Mode`), what kind of traffic a rule
//! names (`Protocol`), what a CONNECT tunnel must carry (`TunnelTls`), what happens to a caller no
//! service claims (`UnclaimedIdentities`). Plain domain types: YAML
//! reads them through serde, the CLI and the admin API through `FromStr`, output through `Display`.

use serde::Deserialize;

/// How a service's own rules are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Denies are enforced.
    Enforce,
    /// Everything is allowed; a deny is recorded as `would-deny`.
    DryRun,
    /// `canaryPercent`% of requests (by a stable hash of the request id) are enforced, the rest dry-run.
    Canary,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
            Mode::Canary => "canary",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of traffic a rule may restrict itself to (see the README for how each is recognized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A plaintext HTTP request proxied by the gateway.
    Http,
    /// HTTPS: a CONNECT tunnel to port 443, or a request with the `https` scheme.
    Https,
    /// TLS passed through by SNI.
    Tls,
    /// An opaque TCP stream: a CONNECT tunnel to another port, or a network check with no SNI.
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tls => "tls",
            Protocol::Tcp => "tcp",
        }
    }

    /// Bit for a compact protocol set.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    /// `http`, `https`, `tls` or `tcp`, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        [Protocol::Http, Protocol::Https, Protocol::Tls, Protocol::Tcp]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown protocol `{s}`: expected http, https, tls or tcp"))
    }
}

/// What a CONNECT tunnel must carry (checked on the tunnel's first bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TunnelTls {
    /// A TLS ClientHello whose SNI is the CONNECT host (case-insensitive, normalized).
    #[default]
    RequireMatchingSni,
    /// TLS, any SNI.
    AllowAnyTls,
    /// Opaque tunnels (SSH, database protocols): nothing checked.
    Off,
}

impl TunnelTls {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelTls::RequireMatchingSni => "require-matching-sni",
            TunnelTls::AllowAnyTls => "allow-any-tls",
            TunnelTls::Off => "off",
        }
    }
}

/// What happens to a caller that authenticates (its SPIFFE ID is in the mesh's trust domain) but
/// that no ServicePolicy claims. `observe` lets a mesh adopt egressd before every workload has a
/// policy: such callers are let through and recorded, as if they were a service in dry-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnclaimedIdentities {
    /// Denied (`unknown-service`): only callers a service claims get out.
    #[default]
    Deny,
    /// Allowed and recorded as `would-deny` (`unknown-service`); mesh-wide denies still hold.
    Observe,
}

impl UnclaimedIdentities {
    pub fn as_str(self) -> &'static str {
        match self {
            UnclaimedIdentities::Deny => "deny",
            UnclaimedIdentities::Observe => "observe",
        }
    }
}

impl std::fmt::Display for UnclaimedIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UnclaimedIdentities {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = [UnclaimedIdentities::Deny, UnclaimedIdentities::Observe];
        parse_named("unclaimedIdentities", s, &all, UnclaimedIdentities::as_str)
    }
}

/// Parses one of `values`' names, in any case; the error lists what is accepted.
fn parse_named<T: Copy>(what: &str, s: &str, values: &[T], name: impl Fn(T) -> &'static str) -> Result<T, String> {
    values.iter().copied().find(|v| name(*v).eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
        let names: Vec<&str> = values.iter().map(|v| name(*v)).collect();
        format!("unknown {what} `{s}`: expected {}", names.join(", "))
    })
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_named("mode", s, &[Mode::Enforce, Mode::DryRun, Mode::Canary], Mode::as_str)
    }
}

impl std::str::FromStr for TunnelTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = [TunnelTls::RequireMatchingSni, TunnelTls::AllowAnyTls, TunnelTls::Off];
        parse_named("tunnelTls", s, &all, TunnelTls::as_str)
    }
}

impl std::fmt::Display for TunnelTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in [Mode::Enforce, Mode::DryRun, Mode::Canary] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        for p in [Protocol::Http, Protocol::Https, Protocol::Tls, Protocol::Tcp] {
            assert_eq!(p.to_string().to_uppercase().parse::<Protocol>(), Ok(p));
        }
        for t in [TunnelTls::RequireMatchingSni, TunnelTls::AllowAnyTls, TunnelTls::Off] {
            assert_eq!(t.to_string().parse::<TunnelTls>(), Ok(t));
        }
        for u in [UnclaimedIdentities::Deny, UnclaimedIdentities::Observe] {
            assert_eq!(u.to_string().parse::<UnclaimedIdentities>(), Ok(u));
        }
        assert_eq!(
            "allow".parse::<UnclaimedIdentities>(),
            Err("unknown unclaimedIdentities `allow`: expected deny, observe".into())
        );
        assert_eq!("udp".parse::<Protocol>(), Err("unknown protocol `udp`: expected http, https, tls or tcp".into()));
        assert!("sometimes".parse::<Mode>().unwrap_err().contains("enforce, dry-run, canary"));
    }
}
