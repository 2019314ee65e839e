//! Placeholder: filled in by the dev_pki work.
