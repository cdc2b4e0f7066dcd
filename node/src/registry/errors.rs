//! OCI error bodies: `{"errors":[{"code":"BLOB_UNKNOWN","message":"..."}]}`.

use axum::body::Body;
use axum::http::{header, Response, StatusCode};

/// The error codes this endpoint answers with (the distribution spec's, plus `UNAVAILABLE` and
/// `RANGE_INVALID` as the distribution registry uses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`
    BlobUnknown,
    /// `MANIFEST_UNKNOWN`
    ManifestUnknown,
    /// `NAME_INVALID`
    NameInvalid,
    /// `NAME_UNKNOWN`
    NameUnknown,
    /// `DIGEST_INVALID`
    DigestInvalid,
    /// `TAG_INVALID`
    TagInvalid,
    /// `DENIED`
    Denied,
    /// `UNSUPPORTED`
    Unsupported,
    /// `RANGE_INVALID`
    RangeInvalid,
    /// `UNAVAILABLE`
    Unavailable,
    /// `UNKNOWN`
    Unknown,
}

impl ErrorCode {
    /// The code as it appears in the body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::TagInvalid => "TAG_INVALID",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::RangeInvalid => "RANGE_INVALID",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// An error response with an OCI error body.
pub fn response(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "errors": [{ "code": code.as_str(), "message": message }] })
        .to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header("Docker-Distribution-API-Version", super::API_VERSION)
        .body(Body::from(body))
        .expect("static headers are valid")
}
