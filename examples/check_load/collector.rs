//! The OTLP/gRPC trace collector stand-in of `--serve-collector`: it decodes every export, as a
//! collector must, and counts spans and attributes. Two decoders, chosen with `--collector-decode`:
//!
//! - `wire` (default): walks the protobuf wire format of the whole request without building
//!   messages: every field's wire type is checked against the OTLP schema, every string is checked
//!   to be UTF-8, trace and span ids for their length, every span and attribute is counted. A
//!   malformed export is answered INVALID_ARGUMENT. It is what a collector's receiver must do at
//!   the least, without the allocation of one String per attribute.
//! - `messages`: decodes into the generated `opentelemetry_proto` messages with prost (one
//!   allocation per string, freed after): the cost of a naive Rust collector, ~6 us per span here.
//!
//! The collector runs on the same two cores as egressd and the load, so its cost is in every ratio
//! measured with span export on; the bench reports which decoder it used.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Buf;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How the collector decodes exports.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CollectorDecode {
    Wire,
    Messages,
}

/// What one export carried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub spans: u64,
    pub attributes: u64,
}

/// Spans and attributes received so far, reported every 100,000 spans.
#[derive(Default)]
struct Totals {
    spans: AtomicU64,
    attributes: AtomicU64,
}

impl Totals {
    fn add(&self, c: &Counted) {
        self.attributes.fetch_add(c.attributes, Ordering::Relaxed);
        let total = self.spans.fetch_add(c.spans, Ordering::Relaxed) + c.spans;
        if total / 100_000 != (total - c.spans) / 100_000 {
            let attrs = self.attributes.load(Ordering::Relaxed);
            eprintln!("collector: {total} spans received ({attrs} attributes)");
        }
    }
}

/// Serves the collector on `addr` until the process ends.
pub async fn serve(addr: std::net::SocketAddr, decode: CollectorDecode) {
    let service = ExportService { decode, totals: Arc::default() };
    tonic::transport::Server::builder().add_service(service).serve(addr).await.unwrap();
}

#[derive(Clone)]
struct ExportService {
    decode: CollectorDecode,
    totals: Arc<Totals>,
}

impl tonic::server::NamedService for ExportService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for ExportService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("traces only").into_http()) });
        }
        let this = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ExportCodec(this.decode)).max_decoding_message_size(64 << 20);
            Ok(grpc.unary(Export(this.totals), req).await)
        })
    }
}

struct Export(Arc<Totals>);

impl tonic::server::UnaryService<Counted> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Counted>) -> Self::Future {
        self.0.add(request.get_ref());
        std::future::ready(Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None })))
    }
}

#[derive(Clone, Copy)]
struct ExportCodec(CollectorDecode);

impl Codec for ExportCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Counted;
    type Encoder = ResponseEncoder;
    type Decoder = ExportCodec;
    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }
    fn decoder(&mut self) -> ExportCodec {
        *self
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for ExportCodec {
    type Item = Counted;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Counted>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        let counted = match self.0 {
            CollectorDecode::Wire => count_wire(&bytes),
            CollectorDecode::Messages => count_messages(&bytes),
        };
        counted.map(Some).map_err(|e| tonic::Status::invalid_argument(format!("malformed export: {e}")))
    }
}

fn count_messages(bytes: &[u8]) -> Result<Counted, String> {
    let request = ExportTraceServiceRequest::decode(bytes).map_err(|e| e.to_string())?;
    let spans = request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans);
    let mut counted = Counted::default();
    for span in spans {
        counted.spans += 1;
        counted.attributes += span.attributes.len() as u64;
    }
    Ok(counted)
}

/// One field's value, borrowed from the message.
enum Value<'a> {
    Varint,
    Fixed64,
    Fixed32,
    Bytes(&'a [u8]),
}

/// Calls `f` with every field of the message in `buf`; stops at the first malformed field.
fn fields<'a>(mut buf: &'a [u8], mut f: impl FnMut(u32, Value<'a>) -> Result<(), String>) -> Result<(), String> {
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        let value = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| e.to_string())?;
                Value::Varint
            }
            WireType::SixtyFourBit => Value::Fixed64.taking(&mut buf, 8)?,
            WireType::ThirtyTwoBit => Value::Fixed32.taking(&mut buf, 4)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
                let len = usize::try_from(len).ok().filter(|l| *l <= buf.len()).ok_or("length past the end")?;
                let (value, rest) = buf.split_at(len);
                buf = rest;
                Value::Bytes(value)
            }
            other => return Err(format!("field {tag}: unsupported wire type {other:?}")),
        };
        f(tag, value)?;
    }
    Ok(())
}

impl Value<'_> {
    fn taking(self, buf: &mut &[u8], n: usize) -> Result<Self, String> {
        if buf.len() < n {
            return Err("fixed field past the end".into());
        }
        buf.advance(n);
        Ok(self)
    }
}

fn message<'a>(tag: u32, v: Value<'a>) -> Result<&'a [u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("field {tag}: expected a length-delimited field")),
    }
}

fn string(tag: u32, v: Value<'_>) -> Result<(), String> {
    std::str::from_utf8(message(tag, v)?).map(drop).map_err(|_| format!("field {tag}: string is not UTF-8"))
}

fn id(tag: u32, v: Value<'_>, len: usize) -> Result<(), String> {
    let b = message(tag, v)?;
    if b.len() == len || b.is_empty() { Ok(()) } else { Err(format!("field {tag}: id of {} bytes", b.len())) }
}

fn varint(tag: u32, v: Value<'_>) -> Result<(), String> {
    match v {
        Value::Varint => Ok(()),
        _ => Err(format!("field {tag}: expected a varint")),
    }
}

fn fixed64(tag: u32, v: Value<'_>) -> Result<(), String> {
    match v {
        Value::Fixed64 => Ok(()),
        _ => Err(format!("field {tag}: expected a fixed64")),
    }
}

/// Decodes an `ExportTraceServiceRequest` from its wire format (opentelemetry/proto/trace/v1 and
/// common/v1 field numbers), checking every field it knows and skipping unknown ones (proto3).
pub fn count_wire(bytes: &[u8]) -> Result<Counted, String> {
    let mut counted = Counted::default();
    fields(bytes, |tag, v| match tag {
        1 => resource_spans(message(tag, v)?, &mut counted),
        _ => Ok(()),
    })?;
    Ok(counted)
}

fn resource_spans(buf: &[u8], counted: &mut Counted) -> Result<(), String> {
    fields(buf, |tag, v| match tag {
        1 => fields(message(tag, v)?, |t, v| if t == 1 { key_value(message(t, v)?) } else { Ok(()) }),
        2 => scope_spans(message(tag, v)?, counted),
        3 => string(tag, v),
        _ => Ok(()),
    })
}

fn scope_spans(buf: &[u8], counted: &mut Counted) -> Result<(), String> {
    fields(buf, |tag, v| match tag {
        1 => fields(message(tag, v)?, |t, v| match t {
            1 | 2 => string(t, v),
            3 => key_value(message(t, v)?),
            _ => Ok(()),
        }),
        2 => span(message(tag, v)?, counted),
        3 => string(tag, v),
        _ => Ok(()),
    })
}

fn span(buf: &[u8], counted: &mut Counted) -> Result<(), String> {
    counted.spans += 1;
    fields(buf, |tag, v| match tag {
        1 => id(tag, v, 16),
        2 | 4 => id(tag, v, 8),
        3 | 5 => string(tag, v),
        6 | 10 | 12 | 14 => varint(tag, v),
        7 | 8 => fixed64(tag, v),
        9 => {
            counted.attributes += 1;
            key_value(message(tag, v)?)
        }
        15 => fields(message(tag, v)?, |t, v| match t {
            2 => string(t, v),
            3 => varint(t, v),
            _ => Ok(()),
        }),
        16 => match v {
            Value::Fixed32 => Ok(()),
            _ => Err("field 16: expected a fixed32".into()),
        },
        _ => Ok(()),
    })
}

fn key_value(buf: &[u8]) -> Result<(), String> {
    fields(buf, |tag, v| match tag {
        1 => string(tag, v),
        2 => any_value(message(tag, v)?),
        _ => Ok(()),
    })
}

fn any_value(buf: &[u8]) -> Result<(), String> {
    fields(buf, |tag, v| match tag {
        1 => string(tag, v),
        2 | 3 => varint(tag, v),
        4 => fixed64(tag, v),
        5 => fields(message(tag, v)?, |t, v| if t == 1 { any_value(message(t, v)?) } else { Ok(()) }),
        6 => fields(message(tag, v)?, |t, v| if t == 1 { key_value(message(t, v)?) } else { Ok(()) }),
        7 => message(tag, v).map(drop),
        _ => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(spans: usize) -> ExportTraceServiceRequest {
        let kv =
            |k: &str, v| KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() };
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "egress check".into(),
            attributes: vec![
                kv("a", any_value::Value::StringValue("x".into())),
                kv("b", any_value::Value::IntValue(3)),
            ],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span; spans], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn both_decoders_count_the_same() {
        let bytes = request(3).encode_to_vec();
        let expected = Counted { spans: 3, attributes: 6 };
        assert_eq!(count_wire(&bytes), Ok(expected));
        assert_eq!(count_messages(&bytes), Ok(Counted { spans: 3, attributes: 6 }));
    }

    #[test]
    fn the_wire_decoder_rejects_what_prost_rejects() {
        let mut bad_utf8 = request(1);
        bad_utf8.resource_spans[0].scope_spans[0].spans[0].name = "\u{fffd}".into();
        let mut bytes = bad_utf8.encode_to_vec();
        let at = bytes.windows(3).position(|w| w == "\u{fffd}".as_bytes()).unwrap();
        bytes[at] = 0xff;
        assert!(count_wire(&bytes).is_err() && count_messages(&bytes).is_err());
        let good = request(2).encode_to_vec();
        assert!(count_wire(&good[..good.len() - 3]).is_err(), "truncated");
        let mut wrong_id = request(1);
        wrong_id.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1; 5];
        assert!(count_wire(&wrong_id.encode_to_vec()).is_err(), "a 5-byte trace id");
    }
}
