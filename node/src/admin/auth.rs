//! Who may change things through the admin listener. Applied to the whole admin router, so every
//! mutating route (any method but GET, HEAD and OPTIONS), present or added later, is covered.
//!
//! With `admin_token_file` configured, a mutating request needs `Authorization: Bearer <token>`,
//! compared in constant time ([`AdminToken::matches`]); without it, mutating requests are
//! accepted only when the admin listener is bound to loopback (and `shoald` refuses to start
//! with the listener beyond loopback and no token, see `config`). Refusals are JSON
//! `{"error": "…"}`: 401 for a missing or wrong token, 403 when no token is configured on a
//! listener beyond loopback. Read-only requests are never refused here.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::AdminToken;

/// What the check needs to know.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// The configured token, if any.
    pub token: Option<AdminToken>,
    /// The admin listener is bound to a loopback address.
    pub loopback: bool,
}

/// What the check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// No or a wrong bearer token.
    BadToken,
    /// No token configured and the listener is beyond loopback.
    NoTokenConfigured,
}

impl AdminAuth {
    /// Judges a request by its method and `Authorization` header. Pure.
    pub fn judge(&self, method: &Method, authorization: Option<&[u8]>) -> Verdict {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Verdict::Allow;
        }
        match &self.token {
            Some(token) => {
                let presented = authorization
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| h.strip_prefix("Bearer "));
                match presented {
                    Some(presented) if token.matches(presented.trim()) => Verdict::Allow,
                    _ => Verdict::BadToken,
                }
            }
            None if self.loopback => Verdict::Allow,
            None => Verdict::NoTokenConfigured,
        }
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::WWW_AUTHENTICATE, "Bearer"),
        ],
        body,
    )
        .into_response()
}

/// The middleware (`axum::middleware::from_fn_with_state(auth, require_token)`).
pub async fn require_token(
    State(auth): State<AdminAuth>,
    request: Request,
    next: Next,
) -> Response {
    let verdict = auth.judge(
        request.method(),
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    );
    match verdict {
        Verdict::Allow => next.run(request).await,
        Verdict::BadToken => {
            tracing::warn!(method = %request.method(), path = request.uri().path(), "admin request refused: missing or wrong bearer token");
            refuse(
                StatusCode::UNAUTHORIZED,
                "this admin request changes the node: send Authorization: Bearer <the token in admin_token_file>",
            )
        }
        Verdict::NoTokenConfigured => refuse(
            StatusCode::FORBIDDEN,
            "this admin request changes the node, and no admin_token_file is configured on a listener beyond loopback",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_need_the_token_or_loopback_and_reads_never_do() {
        let token = crate::config::AdminToken::for_tests("s3cret-s3cret-s3cret");
        let with = AdminAuth {
            token: Some(token),
            loopback: true,
        };
        assert_eq!(with.judge(&Method::GET, None), Verdict::Allow);
        assert_eq!(with.judge(&Method::POST, None), Verdict::BadToken);
        assert_eq!(
            with.judge(&Method::POST, Some(b"Bearer wrong")),
            Verdict::BadToken
        );
        assert_eq!(
            with.judge(&Method::DELETE, Some(b"Basic s3cret-s3cret-s3cret")),
            Verdict::BadToken
        );
        assert_eq!(
            with.judge(&Method::POST, Some(b"Bearer s3cret-s3cret-s3cret")),
            Verdict::Allow
        );
        let loopback = AdminAuth {
            token: None,
            loopback: true,
        };
        assert_eq!(loopback.judge(&Method::POST, None), Verdict::Allow);
        let open = AdminAuth {
            token: None,
            loopback: false,
        };
        assert_eq!(open.judge(&Method::PUT, None), Verdict::NoTokenConfigured);
        assert_eq!(open.judge(&Method::HEAD, None), Verdict::Allow);
    }
}
