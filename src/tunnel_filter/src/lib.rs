//! egressd's tunnel check, inside the egress gateway's HTTP listener: an Envoy HTTP filter
//! (proxy-wasm, V8) placed after ext_authz. On a CONNECT egressd allowed, its answer says what the
//! tunnel must carry (`x-egress-tunnel`) and where it may go (`x-egress-host`); the filter holds
//! the tunnel's first bytes until the TLS ClientHello is whole, judges it (`verdict`), writes the
//! verdict to the stream's filter state (`wasm.egressd_tunnel`, which the access log carries to
//! egressd) and, on a violation it must enforce, resets the stream before a byte reaches the
//! destination. Later chunks pass straight through: one check per tunnel, no second Check call.
//!
//! A CONNECT without an order from egressd (an answer that lost it, or another authorizer) is
//! refused: the filter fails closed.

pub mod verdict;

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    use crate::verdict::{self, HOST_HEADER, MAX_HELLO_BYTES, ORDER_HEADER, Order, REPORT_PROPERTY, Start};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;
    impl Context for Root {}
    impl RootContext for Root {
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Tunnel::Unchecked))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    enum Tunnel {
        /// Not a CONNECT, an opaque tunnel (`off`), or judged already: bytes pass.
        Unchecked,
        /// Waiting for the ClientHello.
        Waiting { order: Order, host: String },
    }

    impl Context for Tunnel {}

    impl HttpContext for Tunnel {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if self.get_http_request_header(":method").as_deref() != Some("CONNECT") {
                return Action::Continue;
            }
            let order = self.get_http_request_header(ORDER_HEADER).map(|v| verdict::parse_order(&v));
            match (order, self.get_http_request_header(HOST_HEADER)) {
                (Some(Ok(None)), _) => Action::Continue,
                (Some(Ok(Some(order))), Some(host)) => {
                    *self = Tunnel::Waiting { order, host };
                    Action::Continue
                }
                _ => {
                    let reason = ("x-egressd-reason", "tunnel-unchecked");
                    self.send_http_response(403, vec![reason], Some(b"egressd: no tunnel order for this CONNECT\n"));
                    Action::Pause
                }
            }
        }

        fn on_http_request_body(&mut self, size: usize, end: bool) -> Action {
            let Tunnel::Waiting { order, host } = &*self else { return Action::Continue };
            let order = *order;
            if size == 0 && end {
                return Action::Continue; // closed before sending anything: nothing to judge
            }
            let bytes = self.get_http_request_body(0, size.min(MAX_HELLO_BYTES)).unwrap_or_default();
            let start = verdict::read_start(&bytes);
            if start == Start::Incomplete && !end {
                return Action::Pause; // Envoy buffers until the next chunk
            }
            let judged = verdict::judge(order.check, host, &start);
            let sni = match &start {
                Start::Tls { sni } => sni.as_deref(),
                _ => None,
            };
            let now = self.get_current_time();
            let unix_ms = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let report = verdict::report(judged, order.enforce, unix_ms, host, sni);
            self.set_property(vec![REPORT_PROPERTY], Some(report.as_bytes()));
            *self = Tunnel::Unchecked;
            if judged != verdict::Verdict::Verified && order.enforce {
                self.reset_http_request();
                return Action::Pause;
            }
            Action::Continue
        }
    }
}
