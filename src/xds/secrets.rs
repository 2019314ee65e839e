//! The gateway's certificates as SDS secrets over the same ADS stream, so they rotate.
//!
//! A certificate inlined in a listener or cluster (a file `DataSource`) is read once, when Envoy
//! builds that listener: an SVID that expires every hour (cert-manager, csi-driver-spiffe, a
//! SPIFFE helper) would need the listener pushed again. A `Secret` egressd serves instead names
//! the same files plus a `watched_directory`: Envoy watches that directory and reads the files
//! again whenever an entry is moved into it, which is how every rotating writer replaces them
//! (the kubelet swaps a Secret volume's `..data` link; helpers rename a finished file in). The
//! directory watched is the one that holds the certificate (or bundle) path as written, not the
//! link's target: that is where the swap happens. Envoy reads a certificate and its key together
//! and keeps the old pair if they do not match (a half-finished rotation).

use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, WatchedDirectory, config_source, data_source,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, Secret, TlsCertificate, secret,
};

use super::resources::{Resource, resource};

/// A certificate chain with its key.
pub fn certificate(name: &str, chain: &str, key: &str) -> Resource {
    let tls = TlsCertificate {
        certificate_chain: file(chain),
        private_key: file(key),
        watched_directory: watched(chain),
        ..Default::default()
    };
    resource(name, Secret { name: name.to_string(), r#type: Some(secret::Type::TlsCertificate(tls)) })
}

/// A CA bundle that verifies peers.
pub fn trust_bundle(name: &str, bundle: &str) -> Resource {
    let ctx = CertificateValidationContext {
        trusted_ca: file(bundle),
        watched_directory: watched(bundle),
        ..Default::default()
    };
    resource(name, Secret { name: name.to_string(), r#type: Some(secret::Type::ValidationContext(ctx)) })
}

/// A reference to a secret egressd serves over ADS.
pub fn over_ads(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource { specifier: Some(data_source::Specifier::Filename(path.to_string())), ..Default::default() })
}

/// The directory of `path` as written (a relative file: the working directory's).
fn watched(path: &str) -> Option<WatchedDirectory> {
    let dir = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Moves only (`watch_modify` off): a file written in place may be read half-written.
    Some(WatchedDirectory { path: dir.display().to_string(), ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn decoded(r: &Resource) -> Secret {
        Secret::decode(r.any.value.as_slice()).unwrap()
    }

    #[test]
    fn a_certificate_watches_the_directory_its_path_names() {
        let s = decoded(&certificate("svid", "/etc/egressd/svid/tls.crt", "/etc/egressd/svid/tls.key"));
        let Some(secret::Type::TlsCertificate(tls)) = s.r#type else { panic!("{s:?}") };
        assert_eq!(tls.watched_directory.unwrap().path, "/etc/egressd/svid");
        let path = |d: Option<DataSource>| match d.and_then(|d| d.specifier) {
            Some(data_source::Specifier::Filename(f)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(path(tls.certificate_chain), "/etc/egressd/svid/tls.crt");
        assert_eq!(path(tls.private_key), "/etc/egressd/svid/tls.key");
        assert_eq!(s.name, "svid");
    }

    #[test]
    fn a_bundle_is_a_validation_context_and_a_bare_file_watches_the_working_directory() {
        let s = decoded(&trust_bundle("bundle", "ca.crt"));
        let Some(secret::Type::ValidationContext(ctx)) = s.r#type else { panic!("{s:?}") };
        assert_eq!(ctx.watched_directory.unwrap().path, ".");
    }
}
