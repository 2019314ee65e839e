#![allow(dead_code)] // each test binary uses a subset of these helpers
//! Generated Envoy resources as reviewable text, for golden files: prost's `Debug` form with every
//! `google.protobuf.Any` decoded as the message it holds (recursively), indented one field per
//! line, and fields at their default value left out. A type egressd starts to generate must be
//! added to `decoders`, or rendering fails loudly.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{FilterConfig as RouteFilterConfig, RouteConfiguration};
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::HttpGrpcAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::ClusterConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::FilterConfig as HttpDfp;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz as HttpExtAuthz;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::set_filter_state::v3::Config as SetFilterState;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::sni_dynamic_forward_proxy::v3::FilterConfig as SniDfp;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

type Decoder = fn(&[u8]) -> String;

fn debug<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> String {
    format!("{:?}", M::decode(bytes).expect("a valid message"))
}

fn decoders() -> HashMap<String, Decoder> {
    let mut d: HashMap<String, Decoder> = HashMap::new();
    macro_rules! register {
        ($($t:ty),* $(,)?) => { $( d.insert(<$t>::type_url(), debug::<$t>); )* };
    }
    register!(
        Cluster,
        Listener,
        RouteConfiguration,
        OpenTelemetryConfig,
        StdoutAccessLog,
        HttpGrpcAccessLogConfig,
        ClusterConfig,
        HttpDfp,
        HttpExtAuthz,
        Router,
        SetFilterState,
        OriginalDst,
        TlsInspector,
        NetworkExtAuthz,
        HttpConnectionManager,
        SniDfp,
        TcpProxy,
        CaresDnsResolverConfig,
        RawBuffer,
        DownstreamTlsContext,
        UpstreamTlsContext,
        HttpProtocolOptions,
        RouteFilterConfig,
    );
    d.insert(Wasm::type_url(), wasm);
    d
}

/// A wasm filter with its inline module named, not dumped (150 KiB of bytes that change with the
/// toolchain; `integration/envoy_*` run the module itself).
fn wasm(bytes: &[u8]) -> String {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let mut filter = Wasm::decode(bytes).expect("a valid message");
    let code = filter.config.as_mut().and_then(|c| match c.vm.as_mut()? {
        envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm::VmConfig(vm) => vm.code.as_mut(),
    });
    let inline = code.and_then(|c| match c.specifier.as_mut()? {
        envoy_types::pb::envoy::config::core::v3::async_data_source::Specifier::Local(d) => d.specifier.as_mut(),
        _ => None,
    });
    if let Some(Specifier::InlineBytes(module)) = inline {
        assert!(module.starts_with(b"\0asm"), "the inline code is a wasm module");
        module.clear();
    }
    format!("{filter:?}").replace("InlineBytes([])", "InlineBytes(<wasm module>)")
}

/// One resource, as text.
pub fn any(resource: &Any) -> String {
    let decoders = decoders();
    let one_line = expand(&format!("{resource:?}"), &decoders);
    indent(&one_line)
}

/// Replaces each `Any { type_url: "...", value: [..] }` with the decoded message.
fn expand(debug: &str, decoders: &HashMap<String, Decoder>) -> String {
    const OPEN: &str = "Any { type_url: \"";
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let (url, after) = after.split_once("\", value: [").expect("Any's Debug form");
        let (bytes, after) = after.split_once("] }").expect("Any's Debug form");
        let bytes: Vec<u8> = bytes.split(", ").filter(|b| !b.is_empty()).map(|b| b.parse().unwrap()).collect();
        let decode = decoders.get(url).unwrap_or_else(|| panic!("render: add {url} to decoders()"));
        // The Debug form starts with the message's name, which says what the Any held.
        out.push_str(&expand(&decode(&bytes), decoders));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// One field per line; fields at their default value (None, [], {}, false, 0, "") dropped.
fn indent(one_line: &str) -> String {
    let mut lines = vec![String::new()];
    let mut depth = 0usize;
    let (mut in_str, mut escaped) = (false, false);
    let chars: Vec<char> = one_line.chars().collect();
    let mut i = 0;
    let newline = |lines: &mut Vec<String>, depth: usize| lines.push("  ".repeat(depth));
    while i < chars.len() {
        let c = chars[i];
        let cur = lines.last_mut().unwrap();
        if in_str {
            cur.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                '"' => {
                    in_str = true;
                    cur.push(c);
                }
                '{' | '[' | '(' if chars.get(i + 1).is_some_and(|n| matches!(n, '}' | ']' | ')')) => {
                    cur.push(c);
                    cur.push(chars[i + 1]);
                    i += 1;
                }
                '{' | '[' | '(' => {
                    cur.push(c);
                    depth += 1;
                    newline(&mut lines, depth);
                    if chars.get(i + 1) == Some(&' ') {
                        i += 1;
                    }
                }
                '}' | ']' | ')' => {
                    depth = depth.saturating_sub(1);
                    newline(&mut lines, depth);
                    lines.last_mut().unwrap().push(c);
                }
                ',' => {
                    newline(&mut lines, depth);
                    if chars.get(i + 1) == Some(&' ') {
                        i += 1;
                    }
                }
                _ => cur.push(c),
            }
        }
        i += 1;
    }
    let defaults = [": None", ": []", ": {}", ": false", ": 0", ": \"\"", ": 0.0"];
    lines
        .into_iter()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !defaults.iter().any(|d| l.trim_end().ends_with(d) && !l.trim_start().starts_with(d)))
        .collect::<Vec<_>>()
        .join("\n")
}
