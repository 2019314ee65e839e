//! The hard limits of a Check: what egressd reads of a request before it refuses to. A gateway
//! never comes near them (Envoy sends at most 100 headers by default, and 60 KiB of them); a
//! request past them was built to make checks expensive, and gets a deny or a gRPC error, which a
//! fail-closed gateway (`failure_mode_allow: false`) also turns into a deny.

/// The largest CheckRequest decoded; larger messages are refused before they are parsed, with
/// OUT_OF_RANGE ("decoded message length too large", tonic's wording).
pub const MAX_CHECK_REQUEST_BYTES: usize = 1 << 20;

/// Headers read per request (`headers` and `header_map` together); more is a malformed request.
pub const MAX_HEADERS: usize = 256;
