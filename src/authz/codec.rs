//! A gRPC codec for Check whose responses may be bytes encoded ahead of time.
//!
//! Most answers are allows, and an allow's CheckResponse depends only on the rule, its service and
//! the policy version, so it is encoded once (see `cache`) and written as-is. tonic's stock codec
//! would rebuild and re-encode the message (a metadata Struct of six strings) on every request.

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// An answer to Check: already-encoded bytes of a CheckResponse, or a message to encode now.
#[derive(Debug, Clone)]
pub enum CheckAnswer {
    Encoded(Bytes),
    Message(Box<CheckResponse>),
}

impl CheckAnswer {
    /// The answer as a message (tests, tools); decodes cached bytes.
    pub fn to_message(&self) -> CheckResponse {
        match self {
            CheckAnswer::Encoded(b) => {
                CheckResponse::decode(b.as_ref()).expect("cached answers are valid CheckResponses")
            }
            CheckAnswer::Message(m) => (**m).clone(),
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
