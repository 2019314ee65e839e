//! Answers egressd writes itself (blocked names, failures, rate-limited clients) and the encoding
//! of every answer to a client: EDNS0 as the client spoke it, truncation to its UDP size.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;

/// The UDP payload size egressd advertises (RFC 9715's recommendation: no IP fragmentation).
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;
/// Without EDNS a UDP answer is at most 512 bytes (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: usize = 512;
/// What a client may ask for beyond 512: egressd's own receive buffer is no larger.
const MAX_UDP_PAYLOAD: usize = 4096;

/// RFC 8914 Extended DNS Error option code.
const EDE_OPTION: u16 = 15;
/// EDE info code 15, Blocked: an operator's explicit deny.
pub const EDE_BLOCKED: u16 = 15;
/// EDE info code 18, Prohibited: the client is not authorized for the name (default deny).
pub const EDE_PROHIBITED: u16 = 18;

/// How the client asked: what a response must echo and how large it may be.
#[derive(Debug, Clone, Copy)]
pub struct ClientShape {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The client sent an OPT record (then the answer carries one too).
    pub edns: bool,
    pub dnssec_ok: bool,
    /// Largest answer the transport takes: the client's UDP payload size, or 65535 over TCP.
    pub max_size: usize,
}

impl ClientShape {
    /// Reads the shape of a parsed query; `tcp` lifts the size limit.
    pub fn of(query: &Message, tcp: bool) -> Self {
        let edns = query.edns.as_ref();
        let udp = edns.map_or(CLASSIC_UDP_PAYLOAD, |e| usize::from(e.max_payload()).clamp(512, MAX_UDP_PAYLOAD));
        ClientShape {
            id: query.metadata.id,
            recursion_desired: query.metadata.recursion_desired,
            checking_disabled: query.metadata.checking_disabled,
            edns: edns.is_some(),
            dnssec_ok: edns.is_some_and(|e| e.flags().dnssec_ok),
            max_size: if tcp { usize::from(u16::MAX) } else { udp },
        }
    }
}

/// An empty response to `query` with `rcode`, header bits echoed, OPT if the client used EDNS.
pub fn response(query: &Message, shape: &ClientShape, rcode: ResponseCode) -> Message {
    let mut msg = Message::new(shape.id, MessageType::Response, OpCode::Query);
    msg.metadata.response_code = rcode;
    msg.metadata.recursion_desired = shape.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.metadata.checking_disabled = shape.checking_disabled;
    msg.add_queries(query.queries.iter().cloned());
    if shape.edns {
        msg.set_edns(own_edns(shape.dnssec_ok));
    }
    msg
}

fn own_edns(dnssec_ok: bool) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(ADVERTISED_UDP_PAYLOAD);
    edns.set_dnssec_ok(dnssec_ok);
    edns
}

/// A blocked name: `rcode` (NXDOMAIN or REFUSED) with an Extended DNS Error naming why. The EDE
/// needs an OPT record, so it is sent only to clients that spoke EDNS (RFC 8914 section 3).
pub fn blocked(query: &Message, shape: &ClientShape, rcode: ResponseCode, ede_code: u16, text: &str) -> Message {
    let mut msg = response(query, shape, rcode);
    if let Some(edns) = msg.edns.as_mut() {
        let mut data = ede_code.to_be_bytes().to_vec();
        data.extend_from_slice(text.as_bytes());
        edns.options_mut().insert(EdnsOption::Unknown(EDE_OPTION, data));
    }
    msg
}

/// The bytes sent to the client: the whole message when it fits `shape.max_size`, else the header
/// and question with the TC bit (and OPT), so the client asks again over TCP. `None` only when
/// the message cannot be encoded at all (then the caller answers SERVFAIL).
pub fn encode(msg: &Message, shape: &ClientShape) -> Option<Vec<u8>> {
    let bytes = msg.to_vec().ok()?;
    if bytes.len() <= shape.max_size {
        return Some(bytes);
    }
    let mut cut = msg.truncate();
    cut.metadata.id = shape.id;
    cut.metadata.message_type = MessageType::Response;
    cut.to_vec().ok()
}
