//! The one place where domain errors become gRPC statuses: only the error's kind is matched,
//! never its message.

use imagestore::{ErrorKind, ImageError};
use tonic::{Code, Status};

/// The gRPC code for each error kind.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    }
}

/// Renders an error and its whole source chain into a status of the error's kind.
pub fn to_status(kind: ErrorKind, error: &(dyn std::error::Error + 'static)) -> Status {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    if kind == ErrorKind::Internal {
        tracing::error!(error = %message, "internal error");
    }
    Status::new(code(kind), message)
}

impl From<ImageError> for crate::cri::error::Failure {
    fn from(e: ImageError) -> Self {
        Failure(to_status(e.kind(), &e))
    }
}

impl From<sandbox::SandboxError> for crate::cri::error::Failure {
    fn from(e: sandbox::SandboxError) -> Self {
        Failure(to_status(e.kind(), &e))
    }
}

/// A domain error already rendered as a status; lets handlers use `?` on any domain result.
pub struct Failure(pub Status);

impl From<Failure> for Status {
    fn from(f: Failure) -> Status {
        f.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_code() {
        let table = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::Unimplemented, Code::Unimplemented),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded),
            (ErrorKind::Cancelled, Code::Cancelled),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, expected) in table {
            assert_eq!(code(kind), expected, "{kind:?}");
        }
    }

    #[test]
    fn message_carries_the_source_chain() {
        let e = ImageError::Io {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let status = to_status(e.kind(), &e);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("/x"), "{}", status.message());
        assert!(
            status.message().contains("No space"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_plugin_refusal_is_a_failed_precondition_naming_the_plugin_and_its_reason() {
        let refusal = nri::NriError::Plugin {
            plugin: "10-policy".into(),
            reason: "CreateContainer: not here (code 2)".into(),
        };
        let e = sandbox::SandboxError::Hook {
            event: "CreateContainer",
            source: sandbox::hooks::HookError::new(refusal),
        };
        let status = to_status(e.kind(), &e);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "CreateContainer refused by a node plugin: NRI plugin 10-policy: \
             CreateContainer: not here (code 2)"
        );
    }
}
