//! Placeholder: filled in by the deployment work.
