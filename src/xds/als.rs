//! The gateway's access log to egressd: Envoy's gRPC access log service (`envoy.access_loggers.
//! http_grpc`) on the HTTP listener, to egressd's gRPC port through the cluster ext_authz already
//! uses (`egressd_authz`), so every request's and every CONNECT tunnel's byte totals reach egressd
//! (`accesslog`) as they end, with the tunnel filter's verdict on each CONNECT's tunnel (the
//! tunnel decision egressd records: without this log, tunnels are still checked, not recorded).
//!
//! * On by default; a Gateway's `accessLog.grpc: false` leaves the stdout log alone.
//! * Only what totals need: the stream's end (`DownstreamEnd`) and periodic reports
//!   (`DownstreamPeriodic`); a log-type filter keeps any other entry off the wire.
//! * Periodic reports: the connection manager's `access_log_flush_interval` makes Envoy log every
//!   open stream every `accessLog.progressSeconds` (default 300; cumulative bytes so far), so a tunnel open for hours
//!   is seen while it is open, not only when it closes. Short requests end before the first
//!   report and cost nothing more. The stdout log filters periodic entries out: it stays one line
//!   per request.
//! * Batching: Envoy flushes each worker's batch every `BUFFER_FLUSH_MS` (or at 16 KiB). Delivery
//!   is at most once (no acknowledgement in the protocol); a stream that cannot be opened is
//!   retried a few times, so a restart of egressd loses little.

use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, AccessLogFilter, LogTypeFilter, access_log};
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, BackoffStrategy, GrpcService, RetryPolicy, grpc_service};
use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::HcmAccessLogOptions;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::resources::{AUTHZ_CLUSTER, millis};
use crate::policy::GatewaySpec;

/// The `log_name` of the gateway's streams (the first message of each stream names it).
pub const LOG_NAME: &str = "egressd";
/// How long an entry may wait in Envoy's batch.
pub const BUFFER_FLUSH_MS: u64 = 250;

fn log_types(types: &[AccessLogType], exclude: bool) -> AccessLogFilter {
    AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::LogTypeFilter(LogTypeFilter {
            types: types.iter().map(|t| *t as i32).collect(),
            exclude,
        })),
    }
}

/// The gRPC access log to egressd: ends and periodic reports only.
pub fn grpc_access_log() -> AccessLog {
    let config = HttpGrpcAccessLogConfig {
        common_config: Some(CommonGrpcAccessLogConfig {
            log_name: LOG_NAME.to_string(),
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                    cluster_name: AUTHZ_CLUSTER.to_string(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            transport_api_version: ApiVersion::V3 as i32,
            // The tunnel filter's verdict on a CONNECT (`xds::tunnel`): egressd records the
            // tunnel decision from the first entry that carries it.
            filter_state_objects_to_log: vec![crate::contract::TUNNEL_REPORT_STATE.to_string()],
            buffer_flush_interval: Some(millis(BUFFER_FLUSH_MS)),
            grpc_stream_retry_policy: Some(RetryPolicy {
                retry_back_off: Some(BackoffStrategy {
                    base_interval: Some(millis(100)),
                    max_interval: Some(millis(2000)),
                }),
                num_retries: Some(UInt32Value { value: 5 }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    AccessLog {
        name: "envoy.access_loggers.http_grpc".to_string(),
        filter: Some(log_types(&[AccessLogType::DownstreamEnd, AccessLogType::DownstreamPeriodic], false)),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(config))),
    }
}

/// The HTTP listener's access logs: `stdout` (one line per request: periodic entries filtered
/// out) and, unless the Gateway turned it off, the gRPC log to egressd.
pub fn http_access_logs(spec: &GatewaySpec, mut stdout: Vec<AccessLog>) -> Vec<AccessLog> {
    if hcm_log_options(spec).is_some() {
        for log in &mut stdout {
            log.filter = Some(log_types(&[AccessLogType::DownstreamPeriodic], true));
        }
    }
    if spec.access_log.grpc {
        stdout.push(grpc_access_log());
    }
    stdout
}

/// The connection manager's periodic flush (see the module comment): only for the gRPC log, and
/// only when the Gateway asks for progress reports.
pub fn hcm_log_options(spec: &GatewaySpec) -> Option<HcmAccessLogOptions> {
    let every = spec.access_log.progress_interval_ms;
    (spec.access_log.grpc && every > 0)
        .then(|| HcmAccessLogOptions { access_log_flush_interval: Some(millis(every)), ..Default::default() })
}
