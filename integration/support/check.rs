#![allow(dead_code)] // each test binary uses a subset of these helpers
//! Calling the Check service and reading its answers: a client, a call that expects an answer,
//! and `CheckResponseExt` for the parts of a `CheckResponse` the tests look at.

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::transport::Channel;

/// A Check client connected to egressd's gRPC port.
pub async fn client(addr: SocketAddr) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{addr}")).await.expect("connect to the Check service")
}

/// One Check call; the answer, whatever the decision. `req` is a `CheckRequest`, or a
/// `tonic::Request` of one when the call needs gRPC metadata.
pub async fn check(
    client: &mut AuthorizationClient<Channel>,
    req: impl tonic::IntoRequest<CheckRequest>,
) -> CheckResponse {
    client.check(req).await.expect("Check never fails at the RPC level").into_inner()
}

/// What the tests read from a Check answer.
pub trait CheckResponseExt {
    /// The gRPC status code of the decision (`status.code`): 0 lets the request through, 7 denies.
    fn code(&self) -> i32;
    /// A string value of `dynamic_metadata`, or "" if there is none under `key`.
    fn meta(&self, key: &str) -> String;
    /// The `decision` metadata: allow, deny, would-deny.
    fn decision(&self) -> String {
        self.meta("decision")
    }
    /// The `reason` metadata: allowed, no-matching-allow, mesh-deny, ...
    fn reason(&self) -> String {
        self.meta("reason")
    }
    /// A header a permitted HTTP answer sets (None on a denied or network answer).
    fn set_header(&self, key: &str) -> Option<String>;
    /// The headers a permitted HTTP answer removes (none on a denied or network answer).
    fn removed_headers(&self) -> Vec<String>;
    /// The tunnel filter's order a permitted CONNECT answer sets (`x-egress-tunnel`), at most one.
    fn tunnel_order(&self) -> Option<String>;
}

fn ok_response(resp: &CheckResponse) -> Option<&OkHttpResponse> {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => Some(ok),
        _ => None,
    }
}

fn set_headers<'a>(resp: &'a CheckResponse, key: &'a str) -> impl Iterator<Item = String> + 'a {
    ok_response(resp)
        .into_iter()
        .flat_map(|ok| &ok.headers)
        .filter_map(|h| h.header.as_ref())
        .filter(move |h| h.key == key)
        .map(|h| h.value.clone())
}

impl CheckResponseExt for CheckResponse {
    fn code(&self) -> i32 {
        self.status.as_ref().expect("a Check answer has a status").code
    }

    fn meta(&self, key: &str) -> String {
        match self.dynamic_metadata.as_ref().and_then(|m| m.fields.get(key)).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => s.clone(),
            _ => String::new(),
        }
    }

    fn set_header(&self, key: &str) -> Option<String> {
        set_headers(self, key).next()
    }

    fn removed_headers(&self) -> Vec<String> {
        ok_response(self).map(|ok| ok.headers_to_remove.clone()).unwrap_or_default()
    }

    fn tunnel_order(&self) -> Option<String> {
        let values: Vec<String> = set_headers(self, "x-egress-tunnel").collect();
        assert!(values.len() <= 1, "one order at most: {values:?}");
        values.into_iter().next()
    }
}
