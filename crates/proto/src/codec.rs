//! The protobuf codec of the generated stubs: tonic-prost's, except for the status of a message
//! that does not decode (a `string` field that is not UTF-8, a truncated field, a wrong wire
//! type). tonic-prost reports every such failure as `INTERNAL`; here the status depends on who
//! sent the message. A request that does not decode is the caller's error: the server answers
//! `INVALID_ARGUMENT` and says which field failed. A response that does not decode stays
//! `INTERNAL` on the client, as the gRPC status-code table has it
//! (<https://github.com/grpc/grpc/blob/master/doc/statuscodes.md>).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;

use crate::v1;

/// The status a receiver answers when a message of this type does not decode.
pub trait DecodeFailure {
    /// `INVALID_ARGUMENT` for requests (decoded by the server), `INTERNAL` for responses.
    const CODE: Code;
    /// What the message is, for the status message.
    const WHAT: &'static str;
}

macro_rules! decode_failure {
    ($code:ident: $($message:ident),+) => {$(
        impl DecodeFailure for v1::$message {
            const CODE: Code = Code::$code;
            const WHAT: &'static str = concat!("rewarddance.v1.", stringify!($message));
        }
    )+};
}

decode_failure!(InvalidArgument: ScoreRequest, RankRequest, InfoRequest, ScoreGradRequest);
decode_failure!(Internal: ScoreResponse, RankResponse, InfoResponse, ScoreGradResponse);

/// tonic [`Codec`](tonic::codec::Codec) over prost: encodes `T`, decodes `U`.
#[derive(Debug, Clone, Copy)]
pub struct ProtoCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeFailure + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

/// Decodes `U`; a failure gets `U`'s [`DecodeFailure`] status.
#[derive(Debug, Clone, Copy)]
pub struct ProtoDecoder<U>(PhantomData<U>);

impl<U: Message + Default + DecodeFailure> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::new(U::CODE, format!("malformed {}: {e}", U::WHAT)))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
