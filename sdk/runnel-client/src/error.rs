//! The client's one error type.

/// What went wrong, in one readable line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server could not be reached.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// The server answered with an error status.
    #[error("{}: {message}", code_name(*code))]
    Status { code: tonic::Code, message: String },
    /// The producer stopped (its background task ended) before answering.
    #[error("the producer is closed")]
    Closed,
}

impl Error {
    /// The gRPC status code (`Unavailable` for a connection failure).
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Connect(_) | Error::Closed => tonic::Code::Unavailable,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        let message = if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        Error::Status {
            code: status.code(),
            message,
        }
    }
}

/// The status code as gRPC names it (NOT_FOUND, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error with its causes, joined with ": " (transport errors hide the useful part in
/// their sources).
pub(crate) fn sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}
