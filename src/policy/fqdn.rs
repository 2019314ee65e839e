//! Host normalization: the one place that decides what a destination name *is*.
//!
//! Policy hosts and request hosts go through the same functions, so "does this rule match" is always
//! a comparison of two canonical forms: lowercase, ASCII (IDNA/punycode), no trailing dot, no port.
//! The common case on the Check hot path (an ASCII, already-lowercase authority) borrows from the
//! input and allocates nothing.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name we accept, in its ASCII form without the trailing dot (RFC 1035: 255 octets on
/// the wire, which is 253 characters of presentation format).
pub const MAX_NAME_LEN: usize = 253;
/// Longest single label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a host or authority was rejected. Each message is shown to operators as-is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("host contains userinfo ('@'), which a destination must not carry")]
    Userinfo,
    #[error("host contains whitespace or a control character")]
    Whitespace,
    #[error("host is longer than 253 characters")]
    TooLong,
    #[error("host has a label longer than 63 characters")]
    LabelTooLong,
    #[error("host has an empty label")]
    EmptyLabel,
    #[error("host contains a character that is not allowed in a DNS name")]
    BadCharacter,
    #[error("host is not a valid internationalized domain name")]
    BadIdna,
    #[error("host ends in a numeric label: not a DNS name and not a valid IP address")]
    NumericTld,
    #[error("port is not a number in 1..=65535")]
    BadPort,
    #[error("malformed IPv6 literal")]
    BadIpv6,
    #[error("a TLS server name must be ASCII (internationalized names travel as xn-- A-labels)")]
    NonAsciiServerName,
}

/// A destination as named by a request: a DNS name in canonical form, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host<'a> {
    Name(Cow<'a, str>),
    Ip(IpAddr),
}

impl Host<'_> {
    pub fn into_owned(self) -> Host<'static> {
        match self {
            Host::Name(n) => Host::Name(Cow::Owned(n.into_owned())),
            Host::Ip(ip) => Host::Ip(ip),
        }
    }
}

impl std::fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Splits `host[:port]` / `[v6]:port` / a bare IPv6 address, and normalizes the host.
///
/// The port is `None` when the authority carries none; the caller picks the default (scheme,
/// socket). Userinfo, whitespace, empty names, over-long names and out-of-range ports are errors.
pub fn parse_authority(authority: &str) -> Result<(Host<'_>, Option<u16>), HostError> {
    if authority.is_empty() {
        return Err(HostError::Empty);
    }
    if authority.contains('@') {
        return Err(HostError::Userinfo);
    }
    if authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(HostError::Whitespace);
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(HostError::BadIpv6)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| HostError::BadIpv6)?;
        let port = match after {
            "" => None,
            _ => Some(parse_port(after.strip_prefix(':').ok_or(HostError::BadIpv6)?)?),
        };
        return Ok((ipv6_host(ip), port));
    }
    match authority.rfind(':') {
        // More than one colon and no brackets: only a bare IPv6 address is acceptable.
        Some(i) if authority[..i].contains(':') => {
            authority.parse::<Ipv6Addr>().map(|ip| (ipv6_host(ip), None)).map_err(|_| HostError::BadIpv6)
        }
        Some(i) => Ok((normalize_host(&authority[..i])?, Some(parse_port(&authority[i + 1..])?))),
        None => Ok((normalize_host(authority)?, None)),
    }
}

/// An IPv6 literal as a destination: an embedded IPv4 address (`::ffff:a.b.c.d`) is that IPv4
/// address (see `addr`).
fn ipv6_host(ip: Ipv6Addr) -> Host<'static> {
    Host::Ip(super::addr::canonical(IpAddr::V6(ip)))
}

/// A port in 1..=65535, digits only (no sign, no spaces).
pub fn parse_port(s: &str) -> Result<u16, HostError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(HostError::BadPort),
    }
}

/// Normalizes a host without a port: an IPv4 literal, or a DNS name (case folded, one trailing dot
/// dropped, internationalized labels converted to punycode).
pub fn normalize_host(host: &str) -> Result<Host<'_>, HostError> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    normalize_name(name).map(Host::Name)
}

/// Normalizes a DNS name whose trailing dot (if any) is already removed: a second one is an error.
fn normalize_name(name: &str) -> Result<Cow<'_, str>, HostError> {
    let canonical: Cow<'_, str> = if name.is_ascii() {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        }
    } else {
        // UTS #46 processing (mapping, case folding, punycode). Only reached for non-ASCII input.
        Cow::Owned(idna::domain_to_ascii(name).map_err(|_| HostError::BadIdna)?)
    };
    check_dns_shape(&canonical)?;
    Ok(canonical)
}

/// Length, label and character rules for a canonical (lowercase ASCII) name.
fn check_dns_shape(name: &str) -> Result<(), HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong);
        }
        // Letters, digits, hyphen; underscore too, because real internal names carry it.
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err(HostError::BadCharacter);
        }
        last = label;
    }
    // A numeric last label ("10.1", "0x7f.1") is an IP address in a form resolvers accept but
    // CIDR rules would never see: refuse it rather than let it slip past both kinds of rule.
    let hex = last.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if last.bytes().all(|b| b.is_ascii_digit()) || hex {
        return Err(HostError::NumericTld);
    }
    Ok(())
}

/// A TLS server name (SNI) as a destination. RFC 6066 carries it as ASCII A-labels; a client
/// that sends Unicode bytes there is not speaking TLS as any server would read it, so it is
/// malformed rather than mapped (a name the check would map is not the name the server sees).
pub fn normalize_sni(sni: &str) -> Result<Host<'_>, HostError> {
    if !sni.is_ascii() {
        return Err(HostError::NonAsciiServerName);
    }
    normalize_host(sni)
}

/// A host pattern from policy: an exact name, or `*.suffix` (one or more labels before `suffix`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    Wildcard(String),
}

/// Why a policy host pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a bare '*' would allow every destination: name the domains")]
    BareWildcard,
    #[error("'*' may only stand as the whole leftmost label, as in '*.example.com'")]
    MisplacedWildcard,
    #[error("'*.{0}' is a wildcard directly over the public suffix '{0}'")]
    PublicSuffix(String),
    #[error("'{0}' is an IP address: use a 'cidr' rule for IP destinations")]
    IpAddress(String),
    #[error("a host must not carry a port: put it in 'ports'")]
    HasPort,
    #[error("invalid host: {0}")]
    Host(#[from] HostError),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<HostPattern, PatternError> {
        let raw = raw.trim();
        if raw == "*" || raw == "*." {
            return Err(PatternError::BareWildcard);
        }
        if raw.contains(':') || raw.starts_with('[') {
            return match raw.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                Ok(_) => Err(PatternError::IpAddress(raw.to_string())),
                Err(_) => Err(PatternError::HasPort),
            };
        }
        if raw.contains('@') {
            return Err(HostError::Userinfo.into());
        }
        let (wildcard, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if rest.contains('*') {
            return Err(PatternError::MisplacedWildcard);
        }
        match normalize_host(rest)? {
            Host::Ip(_) => Err(PatternError::IpAddress(raw.to_string())),
            Host::Name(name) if wildcard => {
                if is_public_suffix(&name) {
                    return Err(PatternError::PublicSuffix(name.into_owned()));
                }
                Ok(HostPattern::Wildcard(name.into_owned()))
            }
            Host::Name(name) => Ok(HostPattern::Exact(name.into_owned())),
        }
    }

    /// The name the pattern is anchored at (the suffix, for a wildcard).
    pub fn anchor(&self) -> &str {
        match self {
            HostPattern::Exact(n) | HostPattern::Wildcard(n) => n,
        }
    }

    /// Reference semantics, used by tests and tools (the hot path uses the suffix trie).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(n) => n == name,
            HostPattern::Wildcard(suffix) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(n) => write!(f, "*.{n}"),
        }
    }
}

/// True when `name` is itself a public suffix (`com`, `co.uk`, `github.io`), per the Public Suffix
/// List compiled into the `psl` crate. Unlisted single labels count too (the list's implicit `*`
/// rule), so `*.internal` is refused as well.
pub fn is_public_suffix(name: &str) -> bool {
    psl::suffix_str(name) == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Host<'static> {
        Host::Name(Cow::Owned(s.to_string()))
    }

    #[test]
    fn case_trailing_dot_and_port() {
        assert_eq!(parse_authority("API.Stripe.COM.:8443").unwrap(), (name("api.stripe.com"), Some(8443)));
        assert_eq!(parse_authority("api.stripe.com").unwrap(), (name("api.stripe.com"), None));
        assert!(matches!(parse_authority("api.stripe.com").unwrap().0, Host::Name(Cow::Borrowed(_))));
    }

    #[test]
    fn idna_names_compare_in_punycode() {
        assert_eq!(parse_authority("bücher.example").unwrap().0, name("xn--bcher-kva.example"));
        assert_eq!(parse_authority("BÜCHER.example:443").unwrap(), (name("xn--bcher-kva.example"), Some(443)));
    }

    #[test]
    fn ip_literals() {
        assert_eq!(parse_authority("10.20.1.5:5432").unwrap(), (Host::Ip("10.20.1.5".parse().unwrap()), Some(5432)));
        assert_eq!(parse_authority("[::1]:443").unwrap(), (Host::Ip("::1".parse().unwrap()), Some(443)));
        assert_eq!(parse_authority("fd00::1").unwrap(), (Host::Ip("fd00::1".parse().unwrap()), None));
        assert_eq!(parse_authority("[fd00::1]x"), Err(HostError::BadIpv6));
        // IPv4 inside IPv6 is IPv4: the same deny applies to both spellings.
        assert_eq!(
            parse_authority("[::ffff:169.254.169.254]:443").unwrap().0,
            Host::Ip("169.254.169.254".parse().unwrap())
        );
        assert_eq!(parse_authority("::ffff:a9fe:a9fe").unwrap().0, Host::Ip("169.254.169.254".parse().unwrap()));
        assert_eq!(parse_authority("[64:ff9b::10.30.0.5]").unwrap().0, Host::Ip("10.30.0.5".parse().unwrap()));
        assert_eq!(parse_authority("[::1]:443").unwrap().0, Host::Ip("::1".parse().unwrap()));
    }

    #[test]
    fn malformed_authorities() {
        assert_eq!(parse_authority(""), Err(HostError::Empty));
        assert_eq!(parse_authority("user@evil.test"), Err(HostError::Userinfo));
        assert_eq!(parse_authority("a b.test"), Err(HostError::Whitespace));
        assert_eq!(parse_authority("a.test:0"), Err(HostError::BadPort));
        assert_eq!(parse_authority("a.test:65536"), Err(HostError::BadPort));
        assert_eq!(parse_authority("a.test:"), Err(HostError::BadPort));
        assert_eq!(parse_authority("a.test:+80"), Err(HostError::BadPort));
        assert_eq!(parse_authority("a..test"), Err(HostError::EmptyLabel));
        assert_eq!(parse_authority("a.test.."), Err(HostError::EmptyLabel));
        assert_eq!(parse_authority(&format!("{}.test", "a".repeat(64))), Err(HostError::LabelTooLong));
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(parse_authority(&long), Err(HostError::TooLong));
        assert_eq!(parse_authority("a/b.test"), Err(HostError::BadCharacter));
        assert_eq!(parse_authority("127.1"), Err(HostError::NumericTld));
        assert_eq!(parse_authority("0x7f.1"), Err(HostError::NumericTld));
        assert_eq!(parse_authority("."), Err(HostError::Empty));
    }

    #[test]
    fn patterns() {
        assert_eq!(
            HostPattern::parse("*.PythonHosted.org.").unwrap(),
            HostPattern::Wildcard("pythonhosted.org".into())
        );
        assert_eq!(HostPattern::parse("*"), Err(PatternError::BareWildcard));
        assert_eq!(HostPattern::parse("*.com"), Err(PatternError::PublicSuffix("com".into())));
        assert_eq!(HostPattern::parse("*.co.uk"), Err(PatternError::PublicSuffix("co.uk".into())));
        assert_eq!(HostPattern::parse("api.*.com"), Err(PatternError::MisplacedWildcard));
        assert_eq!(HostPattern::parse("*api.example.com"), Err(PatternError::MisplacedWildcard));
        assert!(matches!(HostPattern::parse("10.0.0.1"), Err(PatternError::IpAddress(_))));
        assert_eq!(HostPattern::parse("api.example.com:443"), Err(PatternError::HasPort));
        assert!(HostPattern::parse("*.svc.cluster.local").is_ok());
    }

    #[test]
    fn wildcard_needs_at_least_one_label() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches(".example.com"));
    }
}
