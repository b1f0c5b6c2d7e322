//! The error type of Errand's server functions: what a person may be shown. Storage details stay
//! in the server log.

use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    /// The input does not make a valid job; `field` names the form field at fault.
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// No such job for this browser.
    #[error("not found")]
    NotFound,
    /// A limit on requests or on unfinished jobs was reached; the message says which and when
    /// to try again.
    #[error("{0}")]
    Limited(String),
    /// The operator's role may not do this (a console viewer acting).
    #[error("{0}")]
    Forbidden(String),
    /// Something failed on the server; details are in its log.
    #[error("something went wrong on the server; please try again")]
    Internal,
    /// The request did not reach the server function or its answer did not come back.
    #[error("could not reach the server: {0}")]
    Transport(String),
}

impl AppError {
    /// The message for `field`, if this error is about that form field.
    pub fn for_field(&self, name: &str) -> Option<String> {
        match self {
            AppError::Invalid {
                field: Some(field),
                message,
            } if field == name => Some(message.clone()),
            _ => None,
        }
    }

    /// The message when this error is not about a single known form field.
    pub fn general(&self, known_fields: &[&str]) -> Option<String> {
        match self {
            AppError::Invalid {
                field: Some(field), ..
            } if known_fields.contains(&field.as_str()) => None,
            other => Some(other.to_string()),
        }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        // On the server, a body the function cannot read is the client's mistake: 400, not 500.
        #[cfg(feature = "ssr")]
        if matches!(
            value,
            ServerFnErrorErr::Args(_)
                | ServerFnErrorErr::MissingArg(_)
                | ServerFnErrorErr::Deserialization(_)
                | ServerFnErrorErr::Request(_)
        ) {
            crate::server::set_error_status(axum::http::StatusCode::BAD_REQUEST);
            return AppError::Invalid {
                field: None,
                message: format!("the request could not be read: {value}"),
            };
        }
        AppError::Transport(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_are_routed_to_their_field() {
        let err = AppError::Invalid {
            field: Some("ms".into()),
            message: "must be between 0 and 600000".into(),
        };
        assert_eq!(
            err.for_field("ms").as_deref(),
            Some("must be between 0 and 600000")
        );
        assert_eq!(err.for_field("steps"), None);
        assert_eq!(err.general(&["ms", "steps"]), None);
        assert_eq!(
            AppError::Internal.general(&["ms"]).as_deref(),
            Some("something went wrong on the server; please try again")
        );
    }
}
