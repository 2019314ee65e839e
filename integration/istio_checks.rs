//! Placeholder: filled in by the istio_checks work.
