//! The gateway's xDS control plane: generated Envoy resources (`resources`, from the policy's
//! `GatewaySpec`; its certificates as SDS secrets that rotate, `secrets`), grouped into per-node
//! snapshots (`snapshot`) and served over ADS (`ads`), with the
//! protocol state of every stream visible to the admin API (`registry`); the gateway's gRPC access
//! log to egressd is configured in `als`.

pub mod ads;
pub mod als;
pub mod registry;
pub mod resources;
pub mod secrets;
pub mod snapshot;
pub mod tunnel;
