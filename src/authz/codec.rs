//! A gRPC codec for Check whose responses may be bytes encoded ahead of time.
//!
//! Most answers are allows, and an allow's CheckResponse depends only on the rule, its service and
//! the policy version, but for where the request goes, so its core is encoded once (see `cache`)
//! and written as-is, followed by the forwarding headers in wire format (`forward`). tonic's stock
//! codec would rebuild and re-encode the message (a metadata Struct of six strings) every time.

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::forward::Forward;

/// An answer to Check: a cached, encoded core plus where the request goes (permitted HTTP
/// checks, see `forward`), or a message to encode now.
#[derive(Debug, Clone)]
pub enum CheckAnswer {
    Forwarded {
        core: Bytes,
        forward: Forward,
    },
    /// An answer encoded ahead of time, whole (a permitted network check's core).
    Encoded(Bytes),
    Message(Box<CheckResponse>),
}

impl CheckAnswer {
    /// The answer as a message (tests, tools); decodes the encoded pieces.
    pub fn to_message(&self) -> CheckResponse {
        match self {
            CheckAnswer::Forwarded { .. } | CheckAnswer::Encoded(_) => {
                CheckResponse::decode(self.encode_to_vec().as_slice())
                    .expect("encoded answers are valid CheckResponses")
            }
            CheckAnswer::Message(m) => (**m).clone(),
        }
    }

    /// The answer's wire form.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            CheckAnswer::Forwarded { core, forward } => {
                let mut out = Vec::with_capacity(core.len() + forward.encoded_len());
                out.extend_from_slice(core);
                forward.encode_after_core(&mut out);
                out
            }
            CheckAnswer::Encoded(bytes) => bytes.to_vec(),
            CheckAnswer::Message(m) => m.encode_to_vec(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CheckCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct AnswerEncoder;

#[derive(Debug, Default, Clone, Copy)]
pub struct RequestDecoder;

impl Codec for CheckCodec {
    type Encode = CheckAnswer;
    type Decode = CheckRequest;
    type Encoder = AnswerEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        AnswerEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

impl Encoder for AnswerEncoder {
    type Item = CheckAnswer;
    type Error = Status;

    fn encode(&mut self, item: CheckAnswer, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            CheckAnswer::Forwarded { core, forward } => {
                buf.put_slice(&core);
                forward.encode_after_core(buf);
                Ok(())
            }
            CheckAnswer::Encoded(bytes) => {
                buf.put_slice(&bytes);
                Ok(())
            }
            CheckAnswer::Message(msg) => {
                msg.encode(buf).map_err(|e| Status::internal(format!("encoding CheckResponse: {e}")))
            }
        }
    }
}

impl Decoder for RequestDecoder {
    type Item = CheckRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<CheckRequest>, Status> {
        CheckRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed CheckRequest: {e}")))
    }
}
