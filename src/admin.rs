//! egressd's administrative surfaces: the HTTP admin port (`http`: health, readiness, policy, xDS
//! state, metrics), the admin gRPC API (`grpc`: break-glass, Explain, rollout status; the only
//! place protobuf meets the runtime layer's domain types) and its credentials (`tokens`, `auth`: tokens or a client certificate's SPIFFE ID).

pub mod auth;
pub mod grpc;
pub mod http;
pub mod tokens;
