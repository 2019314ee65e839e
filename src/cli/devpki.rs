//! `egressd dev-pki DIR [--policy DIR] [--force]`: a development CA, the gateway's certificate
//! and an SVID per service identity (`egressd::devpki`), and what was written.

use std::process::ExitCode;

use egressd::devpki::{self, DevPkiError, Options};

use super::DevPkiArgs;

pub fn dev_pki(args: DevPkiArgs) -> anyhow::Result<ExitCode> {
    let policy = super::local::load_policy(args.policy)?;
    let options = Options { force: args.force, now_unix: egressd::clock::unix_now() };
    let pki = devpki::write(&policy, &args.dir, options).map_err(|e| match e {
        DevPkiError::Exists(paths) => anyhow::anyhow!(
            "dev-pki: {} file(s) already there, nothing was written (pass --force to overwrite): {}",
            paths.len(),
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
        other => anyhow::Error::new(other).context("dev-pki"),
    })?;

    let width = pki.files().iter().map(|p| p.display().to_string().len()).max().unwrap_or(0);
    let line = |path: &std::path::Path, what: &str| {
        outln!("wrote {:width$}  {what}", path.display().to_string());
    };
    line(&pki.ca.cert, &format!("CA of trust domain {} (the trust bundle)", pki.trust_domain));
    line(&pki.ca.key, "CA private key (0600)");
    line(&pki.gateway.cert, &format!("gateway server certificate: {}", pki.gateway_sans.join(", ")));
    line(&pki.gateway.key, "gateway private key (0600)");
    for s in &pki.svids {
        let minted = match &s.minted_from {
            Some(pattern) => format!("; minted below {pattern}"),
            None => String::new(),
        };
        line(&s.files.cert, &format!("SVID of {} (service {}{minted})", s.spiffe_id, s.service));
        line(&s.files.key, "its private key (0600)");
    }
    outln!("valid {} through {} (UTC). Development only: the keys are not encrypted.", pki.not_before, pki.not_after);
    outln!(
        "gateway: mtls: {{ certificateChain: {}, privateKey: {}, trustBundle: {} }}",
        pki.gateway.cert.display(),
        pki.gateway.key.display(),
        pki.ca.cert.display()
    );
    Ok(ExitCode::SUCCESS)
}
