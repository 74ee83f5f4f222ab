//! The store's errors, each with the status and body Swift answers it with.

use super::*;

/// Why a storage request failed; turned into a Swift-style reply in [`SwiftError::into_response`].
#[derive(Debug, thiserror::Error)]
pub(super) enum SwiftError {
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("conflict")]
    Conflict,
    #[error("length required")]
    LengthRequired,
    #[error("precondition failed: {0}")]
    PreconditionFailed(&'static str),
    #[error("request entity too large")]
    TooLarge,
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable(u64),
    #[error("etag mismatch")]
    EtagMismatch,
    #[error("client disconnected")]
    ClientDisconnect,
    #[error("storage i/o failed: {0}")]
    Io(#[from] io::Error),
}

impl SwiftError {
    /// The one place errors become HTTP: status, Swift's stock body, and the extra header some
    /// statuses need.
    pub(super) fn into_response(self) -> Response<Body> {
        match self {
            SwiftError::NotFound => body::html(
                StatusCode::NOT_FOUND,
                "<html><h1>Not Found</h1><p>The resource could not be found.</p></html>",
            ),
            SwiftError::BadRequest(msg) => body::text(StatusCode::BAD_REQUEST, msg),
            SwiftError::Forbidden => body::html(
                StatusCode::FORBIDDEN,
                "<html><h1>Forbidden</h1><p>Access was denied to this resource.</p></html>",
            ),
            SwiftError::MethodNotAllowed(allow) => {
                let mut resp = body::html(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "<html><h1>Method Not Allowed</h1><p>The method is not allowed for this resource.</p></html>",
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                resp
            }
            SwiftError::Conflict => body::html(
                StatusCode::CONFLICT,
                "<html><h1>Conflict</h1><p>There was a conflict when trying to complete your request.</p></html>",
            ),
            SwiftError::LengthRequired => body::html(
                StatusCode::LENGTH_REQUIRED,
                "<html><h1>Length Required</h1><p>Length Required</p></html>",
            ),
            SwiftError::PreconditionFailed(msg) => body::text(StatusCode::PRECONDITION_FAILED, msg),
            SwiftError::TooLarge => body::html(
                StatusCode::PAYLOAD_TOO_LARGE,
                "<html><h1>Request Entity Too Large</h1><p>The body of your request was too large for this server.</p></html>",
            ),
            SwiftError::RangeNotSatisfiable(size) => {
                let mut resp = body::html(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "<html><h1>Requested Range Not Satisfiable</h1><p>The Range requested is not available.</p></html>",
                );
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                resp
            }
            SwiftError::EtagMismatch => body::html(
                StatusCode::UNPROCESSABLE_ENTITY,
                "<html><h1>Unprocessable Entity</h1><p>Unable to process the contained instructions</p></html>",
            ),
            SwiftError::ClientDisconnect => body::html(
                // 499 is Swift's own code for a client that went away mid-upload.
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "<html><h1>Client Disconnect</h1><p>The client was disconnected during request.</p></html>",
            ),
            SwiftError::Io(err) => {
                tracing::warn!(cause = %err, "emulated object store i/o failed");
                if err.kind() == io::ErrorKind::StorageFull {
                    body::html(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "<html><h1>Insufficient Storage</h1><p>There was not enough space to save the resource.</p></html>",
                    )
                } else {
                    body::html(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "<html><h1>Internal Error</h1><p>The server has either erred or is incapable of performing the requested operation.</p></html>",
                    )
                }
            }
        }
    }
}
