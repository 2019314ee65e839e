//! Domains under which unrelated parties get names: a wildcard there is an allow to strangers.

/// Hosting, storage and tunnel domains whose subdomains belong to different customers, beyond
/// what the Public Suffix List's private section says (several of these are listed there too;
/// several, such as `amazonaws.com` or `googleapis.com`, are not, or only in part).
const CURATED: &[&str] = &[
    "amazonaws.com",
    "amazonaws.com.cn",
    "cloudfront.net",
    "googleapis.com",
    "appspot.com",
    "run.app",
    "azurewebsites.net",
    "blob.core.windows.net",
    "herokuapp.com",
    "github.io",
    "githubusercontent.com",
    "netlify.app",
    "vercel.app",
    "pages.dev",
    "workers.dev",
    "r2.dev",
    "firebaseapp.com",
    "web.app",
    "ngrok.io",
    "ngrok-free.app",
    "trycloudflare.com",
    "s3.amazonaws.com",
];

/// Whether `name` (canonical: lowercase ASCII, no trailing dot) is, or is under, a suffix whose
/// names are handed out to different tenants: a curated hosting/storage/tunnel domain (above), a
/// regional S3 endpoint (`bucket.s3.us-west-2.amazonaws.com`, `s3-eu-west-1.amazonaws.com`), or a
/// suffix of the Public Suffix List's private section (`github.io`, `herokuapp.com`).
///
/// Why it matters: an allow of `*.s3.amazonaws.com` is not "our bucket" but every bucket, so any
/// tenant of such a suffix could receive the data, including an attacker's. Names under these
/// suffixes are therefore only ever learned one by one. Being "under" one counts too, because the
/// labels further left are not necessarily one tenant's (S3 bucket names may contain dots:
/// `*.logs.s3.amazonaws.com` also matches a stranger's bucket `x.logs`).
pub fn is_multi_tenant(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    CURATED.iter().any(|suffix| is_at_or_under(name, suffix)) || is_regional_s3(name) || under_private_suffix(name)
}

/// `name == suffix` or `name` ends with `.suffix`.
fn is_at_or_under(name: &str, suffix: &str) -> bool {
    name == suffix || name.strip_suffix(suffix).is_some_and(|head| head.ends_with('.'))
}

/// `s3.<region>.amazonaws.com`, `s3-<region>.amazonaws.com`, `s3.dualstack.<region>…`,
/// `s3-website…` and any name under them, on any AWS partition's domain. Kept apart from the
/// `amazonaws.com` entry so that S3 stays covered should that entry ever be narrowed.
fn is_regional_s3(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    let Some(aws) = labels.iter().rposition(|l| *l == "amazonaws") else { return false };
    labels[..aws].iter().any(|l| *l == "s3" || l.starts_with("s3-"))
}

/// Whether the public suffix of `name` comes from the PSL's private section, where the list's
/// maintainers record exactly this: domains whose subdomains different parties control.
fn under_private_suffix(name: &str) -> bool {
    psl::suffix(name.as_bytes()).is_some_and(|s| s.typ() == Some(psl::Type::Private))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curated_psl_private_and_regional_s3_names_are_multi_tenant() {
        for name in [
            "s3.amazonaws.com",
            "logs.s3.amazonaws.com",
            "amazonaws.com",
            "execute-api.us-east-1.amazonaws.com",
            "s3.us-west-2.amazonaws.com",
            "bucket.s3.eu-central-1.amazonaws.com",
            "s3-eu-west-1.amazonaws.com",
            "s3.dualstack.us-east-1.amazonaws.com",
            "github.io",
            "team.github.io",
            "raw.githubusercontent.com",
            "herokuapp.com",
            "blob.core.windows.net",
            "acct.blob.core.windows.net",
            "storage.googleapis.com",
            "myapp.appspot.com",
            "x.ngrok-free.app",
            "blogspot.com", // PSL private section, not curated
        ] {
            assert!(is_multi_tenant(name), "{name}");
        }
    }

    #[test]
    fn ordinary_and_icann_names_are_not() {
        for name in
            ["api.vendor.test", "vendor.test", "example.com", "co.uk", "com", "api.stripe.com", "s3.example.com"]
        {
            assert!(!is_multi_tenant(name), "{name}");
        }
        // A lookalike is not under the suffix.
        assert!(!is_multi_tenant("notgithub.io.example.com"));
        assert!(!is_multi_tenant("evilamazonaws.com"));
    }
}
