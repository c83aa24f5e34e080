//! The one place where engine and request failures become gRPC statuses and codes.

use rewarddance_engine::{FailureKind, ItemError, SubmitError};
use rewarddance_proto::v1;
use tonic::{Code, Status};

/// The gRPC code of an item-level failure kind.
pub fn code_of(kind: FailureKind) -> Code {
    match kind {
        FailureKind::InvalidArgument => Code::InvalidArgument,
        FailureKind::DeadlineExceeded => Code::DeadlineExceeded,
        FailureKind::Cancelled => Code::Cancelled,
        FailureKind::QueueFull => Code::ResourceExhausted,
        FailureKind::ShuttingDown => Code::Unavailable,
        FailureKind::Internal => Code::Internal,
    }
}

/// gRPC's canonical name of a status code (`OK`, `RESOURCE_EXHAUSTED`, ...), as the gRPC spec
/// and other servers' metrics spell it: the `code` label of the request counter.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An item error as it goes on the wire.
pub fn item_error(err: &ItemError) -> v1::ItemError {
    v1::ItemError {
        code: code_of(err.kind) as i32,
        message: err.message.clone(),
        reason: err.reason.to_string(),
    }
}

/// Call-level status for a refused submission.
pub fn submit_status(err: &SubmitError) -> Status {
    match err {
        SubmitError::QueueFull { .. } => Status::resource_exhausted(err.to_string()),
        SubmitError::ShuttingDown => Status::unavailable(err.to_string()),
    }
}

/// The item error for a refused submission (streams answer per item instead of failing).
pub fn submit_item_error(err: &SubmitError) -> ItemError {
    match err {
        SubmitError::QueueFull { .. } => ItemError::new(FailureKind::QueueFull, err.to_string()),
        SubmitError::ShuttingDown => ItemError::new(FailureKind::ShuttingDown, err.to_string()),
    }
}

/// Status returned while the server drains.
pub fn draining() -> Status {
    Status::unavailable("server is shutting down")
}
