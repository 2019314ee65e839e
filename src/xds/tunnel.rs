//! The tunnel half of the generated gateway's HTTP listener: after ext_authz, `set_filter_state`
//! hands the authorized destination to the forward proxy, and the tunnel filter (`src/tunnel_filter`,
//! a proxy-wasm module built with egressd and sent inline) checks a CONNECT tunnel's first bytes.
//!
//! ```text
//! egress_http (CONNECT)   ext_authz: egressd allows, answers x-egress-host/-port and
//!                         x-egress-tunnel: off | <tunnelTls> <enforce|observe>
//!   set_filter_state      dynamic host/port (what egressd authorized, never the SNI)
//!   tunnel filter         holds the tunnel's bytes until the ClientHello is whole; SNI == host?
//!                         verdict -> filter state wasm.egressd_tunnel (-> access logs, egressd);
//!                         a violation it must enforce resets the stream before any byte leaves
//!   dynamic_forward_proxy, router -> egress_dfp
//! ```
//! One listener, one Check per CONNECT: no internal listener, no second (network) Check.

use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, SubstitutionFormatString, async_data_source, data_source, substitution_format_string,
};
use std::collections::HashMap;

use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3::{FilterStateValue, filter_state_value};
use envoy_types::pb::envoy::extensions::filters::http::set_filter_state::v3::Config as SetFilterState;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::wasm::v3::{FailurePolicy, PluginConfig, VmConfig, plugin_config};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use super::resources::http_filter;
use crate::contract::{HOST_HEADER, PORT_HEADER, TLS_NAME_HEADER};

/// The tunnel filter's module (wasm32-wasip1), built from `src/tunnel_filter` by build.rs.
pub static TUNNEL_FILTER_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tunnel_filter.wasm"));

/// The filter's name in the listener and its VM's id: Envoy shares one VM per worker among
/// listeners whose filters name the same VM id and code.
pub const TUNNEL_FILTER: &str = "egressd.tunnel";

/// A format string whose missing values are empty (not the access log's `-`), so `skip_if_empty`
/// skips them: a request egressd answered without these headers sets no filter state.
fn format(text: &str) -> SubstitutionFormatString {
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(text.to_string())),
            ..Default::default()
        })),
        omit_empty_values: true,
        ..Default::default()
    }
}

/// After ext_authz in the HTTP listener: hands the authorized destination to the forward proxy
/// (every permitted request) and the TLS name to an originated upstream TLS connection (ONCE:
/// that connection only).
pub fn set_filter_state_filter() -> HttpFilter {
    let value = |key: &str, text: &str| FilterStateValue {
        key: Some(filter_state_value::Key::ObjectKey(key.to_string())),
        value: Some(filter_state_value::Value::FormatString(format(text))),
        shared_with_upstream: filter_state_value::SharedWithUpstream::Once as i32,
        skip_if_empty: true,
        ..Default::default()
    };
    let config = SetFilterState {
        on_request_headers: vec![
            value("envoy.upstream.dynamic_host", &format!("%REQ({HOST_HEADER})%")),
            value("envoy.upstream.dynamic_port", &format!("%REQ({PORT_HEADER})%")),
            // TLS origination (`https://` proxy requests): SNI and the certificate name to verify.
            value("envoy.network.upstream_server_name", &format!("%REQ({TLS_NAME_HEADER})%")),
            value("envoy.network.upstream_subject_alt_names", &format!("%REQ({TLS_NAME_HEADER})%")),
        ],
        ..Default::default()
    };
    http_filter("envoy.filters.http.set_filter_state", config)
}

/// The tunnel filter, its module inline (about 150 KiB in the listener; Envoy keys its VMs by
/// the code's hash, so an unchanged module is not reloaded when the listener is updated).
/// On by default, off on the plain proxy routes (`disabled_on_route`): a proxy request never
/// enters the VM, and a CONNECT, on whatever route, always does (fails closed).
pub fn tunnel_filter() -> HttpFilter {
    let wasm = Wasm {
        config: Some(PluginConfig {
            name: TUNNEL_FILTER.to_string(),
            vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                vm_id: TUNNEL_FILTER.to_string(),
                runtime: "envoy.wasm.runtime.v8".to_string(),
                code: Some(AsyncDataSource {
                    specifier: Some(async_data_source::Specifier::Local(DataSource {
                        specifier: Some(data_source::Specifier::InlineBytes(TUNNEL_FILTER_WASM.to_vec())),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            // A VM that fails at run time is replaced for the next request; any other failure
            // answers 503: never a tunnel unchecked.
            failure_policy: FailurePolicy::FailReload as i32,
            ..Default::default()
        }),
    };
    http_filter(TUNNEL_FILTER, wasm)
}

/// A plain proxy route's `typed_per_filter_config`: the tunnel filter left out of the request's
/// filter chain (Envoy builds the chain from the request's first route; a CONNECT's is the
/// CONNECT route, which keeps the filter).
pub fn disabled_on_route() -> HashMap<String, Any> {
    let disabled = FilterConfig { disabled: true, ..Default::default() };
    [(TUNNEL_FILTER.to_string(), pack_any(disabled))].into_iter().collect()
}
