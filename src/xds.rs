//! The gateway's xDS control plane: generated Envoy resources (`resources`, from a `gateway`
//! spec), grouped into per-node snapshots and served over ADS.

pub mod gateway;
pub mod resources;
