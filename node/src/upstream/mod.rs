//! Talking to the configured upstream registries, and to nothing else.
//!
//! One [`Upstream`] per configured registry. It speaks the pull side of the distribution API,
//! authenticates the way registries do (a `401` with `WWW-Authenticate: Bearer realm=..,service=..,
//! scope=..` leads to an anonymous or credentialed token request; `Basic` challenges get the
//! configured credentials), follows redirects (blobs are often served from a CDN; credentials are
//! not forwarded to another host), times out connects and stalled reads, and retries idempotent
//! requests with exponential backoff on transport errors, `429` and `5xx`.
//!
//! **Invariant:** requests go only to a configured upstream's base URL, to the token realm it names
//! in its own challenge, and to the redirect targets it answers with. Nothing here builds a URL
//! from a request string that has not passed the `proto::oci` grammar.

mod auth;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use shoal_proto::{BlobDigest, Reference, RepoName};

use crate::metrics::Metrics;

/// How to reach one upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The registry host name containerd sends as `ns` (e.g. `docker.io`).
    pub name: String,
    /// Base URL, `http` or `https`, e.g. `https://registry-1.docker.io`.
    pub url: Url,
    /// Optional basic credentials (used for token requests and `Basic` challenges).
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
}

/// Timeouts and retries shared by every upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Connecting (TCP and TLS).
    pub connect: Duration,
    /// Longest wait for the next bytes of a response.
    pub read: Duration,
    /// Whole-request limit for manifests and tokens (blobs have none; their reads are bounded).
    pub request: Duration,
    /// Attempts per request (first try included).
    pub attempts: u32,
    /// Backoff before the second attempt; doubled after each further one.
    pub backoff: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
            request: Duration::from_secs(60),
            attempts: 3,
            backoff: Duration::from_millis(200),
        }
    }
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream says the thing does not exist.
    #[error("not found at the upstream")]
    NotFound,
    /// The upstream refused us, even after authenticating.
    #[error("the upstream denied access ({0})")]
    Denied(StatusCode),
    /// Any other unexpected status.
    #[error("the upstream answered {0}")]
    Status(StatusCode),
    /// A response larger than allowed.
    #[error("the upstream's response exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Connecting, sending or reading failed (includes timeouts).
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The authentication exchange failed.
    #[error("authentication: {0}")]
    Auth(String),
}

impl UpstreamError {
    /// Whether the upstream is unreachable or failing (as opposed to answering "no"): a stale
    /// cached answer may then be served, and clients should fall back to another host.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status(status) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// A manifest as the upstream served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub body: Bytes,
    /// Its `Content-Type`.
    pub media_type: Option<String>,
}

/// A blob response whose body is still to be read.
#[derive(Debug)]
pub struct BlobResponse {
    response: reqwest::Response,
    /// `Content-Length`, if the upstream sent one.
    pub content_length: Option<u64>,
    /// Whether the upstream honoured a Range request (206).
    pub partial: bool,
}

impl BlobResponse {
    /// The next piece of the body; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        Ok(self.response.chunk().await?)
    }
}

#[derive(Debug)]
struct CachedToken {
    value: String,
    expires: Instant,
}

#[derive(Debug)]
struct UpstreamInner {
    config: UpstreamConfig,
    timeouts: UpstreamTimeouts,
    http: reqwest::Client,
    tokens: Mutex<HashMap<String, CachedToken>>,
    metrics: Arc<Metrics>,
}

/// A client for one configured upstream registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

/// Most bytes accepted from a token endpoint.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

impl Upstream {
    /// A client for `config`.
    pub fn new(
        config: UpstreamConfig,
        timeouts: UpstreamTimeouts,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .redirect(reqwest::redirect::Policy::limited(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self {
            inner: Arc::new(UpstreamInner {
                config,
                timeouts,
                http,
                tokens: Mutex::new(HashMap::new()),
                metrics,
            }),
        })
    }

    /// The name containerd knows this registry by.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn url(&self, repo: &RepoName, kind: &str, reference: &str) -> Url {
        let mut url = self.inner.config.url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/v2/{repo}/{kind}/{reference}"));
        url.set_query(None);
        url
    }

    /// Fetches a manifest (GET), refusing bodies over `limit` bytes before reading them.
    pub async fn fetch_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
        limit: u64,
    ) -> Result<FetchedManifest, UpstreamError> {
        let url = self.url(repo, "manifests", &reference.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(accept).map_err(|_| UpstreamError::Auth("bad Accept".into()))?,
        );
        let response = self
            .send(Method::GET, url, headers, repo, "manifest")
            .await?;
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let body = read_limited(response, limit).await?;
        Ok(FetchedManifest { body, media_type })
    }

    /// Asks for a blob's length without fetching it.
    pub async fn blob_length(
        &self,
        repo: &RepoName,
        digest: &BlobDigest,
    ) -> Result<Option<u64>, UpstreamError> {
        let url = self.url(repo, "blobs", &digest.to_string());
        let response = self
            .send(Method::HEAD, url, HeaderMap::new(), repo, "head")
            .await?;
        // The header itself: for a HEAD response the body (and so `content_length()`) is empty.
        Ok(response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Starts fetching a blob, or the bytes `range` of it.
    pub async fn fetch_blob(
        &self,
        repo: &RepoName,
        digest: &BlobDigest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobResponse, UpstreamError> {
        let url = self.url(repo, "blobs", &digest.to_string());
        let mut headers = HeaderMap::new();
        let kind = match &range {
            Some(range) => {
                let value = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
                headers.insert(
                    RANGE,
                    HeaderValue::from_str(&value).expect("digits and dashes"),
                );
                "blob_range"
            }
            None => "blob",
        };
        let response = self.send(Method::GET, url, headers, repo, kind).await?;
        let partial = response.status() == StatusCode::PARTIAL_CONTENT;
        Ok(BlobResponse {
            content_length: response.content_length(),
            partial,
            response,
        })
    }

    /// Fetches exactly the bytes `range` of a blob (for healing one shard).
    pub async fn fetch_blob_range(
        &self,
        repo: &RepoName,
        digest: &BlobDigest,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, UpstreamError> {
        let wanted = range.end - range.start;
        let mut response = self.fetch_blob(repo, digest, Some(range.clone())).await?;
        // An upstream that ignores Range sends the whole blob: skip to the start.
        let mut skip = if response.partial { 0 } else { range.start };
        let mut out = BytesMut::with_capacity(wanted as usize);
        while (out.len() as u64) < wanted {
            let Some(mut chunk) = response.chunk().await? else {
                break;
            };
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(n as usize);
                skip -= n;
            }
            let take = (wanted - out.len() as u64).min(chunk.len() as u64) as usize;
            out.extend_from_slice(&chunk[..take]);
        }
        Ok(out.freeze())
    }

    /// Sends a request with authentication and retries, and maps error statuses.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        repo: &RepoName,
        kind: &'static str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let scope = format!("repository:{repo}:pull");
        let timeouts = self.inner.timeouts;
        let mut authenticated_once = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if kind != "blob" && kind != "blob_range" {
                request = request.timeout(timeouts.request);
            }
            if let Some(authorization) = self.authorization(&scope) {
                request = request.header(AUTHORIZATION, authorization);
            }
            self.inner
                .metrics
                .record_upstream_request(self.name(), kind);
            let result = request.send().await;
            let retry_after = match result {
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED && !authenticated_once =>
                {
                    authenticated_once = true;
                    let challenge = response
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let Some(challenge) = challenge else {
                        return Err(UpstreamError::Denied(StatusCode::UNAUTHORIZED));
                    };
                    self.authenticate(&challenge, &scope).await?;
                    attempt -= 1;
                    continue;
                }
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(response);
                    }
                    let retryable =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    if !retryable || attempt >= timeouts.attempts {
                        if retryable {
                            self.inner.metrics.record_upstream_failure(self.name());
                        }
                        return Err(match status {
                            StatusCode::NOT_FOUND => UpstreamError::NotFound,
                            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                                UpstreamError::Denied(status)
                            }
                            other => UpstreamError::Status(other),
                        });
                    }
                    status.to_string()
                }
                Err(error) => {
                    if attempt >= timeouts.attempts
                        || !(error.is_connect() || error.is_timeout() || error.is_request())
                    {
                        self.inner.metrics.record_upstream_failure(self.name());
                        return Err(UpstreamError::Transport(error));
                    }
                    error.to_string()
                }
            };
            let delay = timeouts.backoff * 2u32.saturating_pow(attempt - 1);
            tracing::debug!(upstream = self.name(), %url, attempt, reason = %retry_after, ?delay, "retrying upstream request");
            tokio::time::sleep(delay).await;
        }
    }

    fn authorization(&self, scope: &str) -> Option<HeaderValue> {
        let tokens = self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = tokens.get(scope).filter(|t| t.expires > Instant::now()) {
            return HeaderValue::from_str(&token.value).ok();
        }
        None
    }

    /// Answers a `WWW-Authenticate` challenge: fetches a bearer token or prepares basic auth.
    async fn authenticate(
        &self,
        challenge: &str,
        default_scope: &str,
    ) -> Result<(), UpstreamError> {
        let config = &self.inner.config;
        let challenge = auth::Challenge::parse(challenge).map_err(UpstreamError::Auth)?;
        let credentials = config
            .username
            .as_deref()
            .map(|user| (user, config.password.as_deref().unwrap_or("")));
        let (value, lifetime) = match challenge {
            auth::Challenge::Basic => {
                let Some((user, password)) = credentials else {
                    return Err(UpstreamError::Denied(StatusCode::UNAUTHORIZED));
                };
                (
                    auth::basic_header(user, password),
                    Duration::from_secs(24 * 3600),
                )
            }
            auth::Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let mut url = Url::parse(&realm)
                    .map_err(|e| UpstreamError::Auth(format!("token realm {realm:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(UpstreamError::Auth(format!(
                        "token realm {realm:?} is not http(s)"
                    )));
                }
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = &service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", scope.as_deref().unwrap_or(default_scope));
                }
                let mut request = self
                    .inner
                    .http
                    .get(url)
                    .timeout(self.inner.timeouts.request);
                if let Some((user, password)) = credentials {
                    request = request.basic_auth(user, Some(password));
                }
                self.inner
                    .metrics
                    .record_upstream_request(self.name(), "token");
                let response = request.send().await?;
                if !response.status().is_success() {
                    return Err(UpstreamError::Auth(format!(
                        "token endpoint answered {}",
                        response.status()
                    )));
                }
                let body = read_limited(response, MAX_TOKEN_RESPONSE).await?;
                let token = auth::TokenResponse::parse(&body).map_err(UpstreamError::Auth)?;
                (format!("Bearer {}", token.token), token.lifetime)
            }
        };
        // Renew a little early so a token never expires in flight.
        let expires = Instant::now()
            + lifetime
                .saturating_sub(Duration::from_secs(10))
                .max(Duration::from_secs(5));
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(default_scope.to_owned(), CachedToken { value, expires });
        Ok(())
    }
}

/// Reads a whole body, refusing one over `limit` bytes (by `Content-Length` first, then while
/// reading), so an upstream cannot make us allocate more.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Bytes, UpstreamError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(UpstreamError::TooLarge { limit });
    }
    let mut body =
        BytesMut::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    //! The client against a small in-process registry front that does what real registries do
    //! at their edges: bearer challenges, a token endpoint that checks basic credentials, a
    //! redirect to another path for blob bytes, and a transient 503.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::get;
    use axum::Router;

    use super::*;

    #[derive(Clone, Default)]
    struct Front {
        base: Arc<Mutex<String>>,
        blob_attempts: Arc<AtomicUsize>,
        token_requests: Arc<AtomicUsize>,
    }

    const TOKEN: &str = "token-for-r";

    fn authorized(headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"))
    }

    fn challenge(front: &Front) -> Response {
        let realm = format!("{}/token", front.base.lock().unwrap());
        let value = format!(r#"Bearer realm="{realm}",service="front",scope="repository:r:pull""#);
        (StatusCode::UNAUTHORIZED, [("www-authenticate", value)]).into_response()
    }

    async fn manifest(State(front): State<Front>, headers: HeaderMap) -> Response {
        if !authorized(&headers) {
            return challenge(&front);
        }
        (
            [("content-type", "application/vnd.oci.image.manifest.v1+json")],
            "{\"schemaVersion\":2}",
        )
            .into_response()
    }

    async fn blob(State(front): State<Front>, headers: HeaderMap) -> Response {
        if !authorized(&headers) {
            return challenge(&front);
        }
        // The first authorised attempt fails the way an overloaded registry does.
        if front.blob_attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Redirect::temporary("/cdn/blob-bytes").into_response()
    }

    async fn token(
        State(front): State<Front>,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        front.token_requests.fetch_add(1, Ordering::SeqCst);
        let basic = headers.get("authorization").and_then(|v| v.to_str().ok());
        if basic != Some(auth::basic_header("user", "secret").as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        if query.get("service").map(String::as_str) != Some("front")
            || query.get("scope").map(String::as_str) != Some("repository:r:pull")
        {
            return StatusCode::BAD_REQUEST.into_response();
        }
        format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).into_response()
    }

    async fn start_front() -> (Front, Url) {
        let front = Front::default();
        let router = Router::new()
            .route("/v2/r/manifests/{reference}", get(manifest))
            .route("/v2/r/blobs/{digest}", get(blob))
            .route("/cdn/blob-bytes", get(|| async { "blob bytes" }))
            .route("/token", get(token))
            .with_state(front.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        *front.base.lock().unwrap() = base.clone();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (front, Url::parse(&base).unwrap())
    }

    fn client(url: Url, credentials: bool) -> Upstream {
        let config = UpstreamConfig {
            name: "front".into(),
            url,
            username: credentials.then(|| "user".into()),
            password: credentials.then(|| "secret".into()),
        };
        let timeouts = UpstreamTimeouts {
            backoff: Duration::from_millis(10),
            ..UpstreamTimeouts::default()
        };
        Upstream::new(config, timeouts, Arc::new(Metrics::default())).unwrap()
    }

    #[tokio::test]
    async fn bearer_challenge_then_token_then_retry_and_redirect() {
        let (front, url) = start_front().await;
        let upstream = client(url, true);
        let repo: RepoName = "r".parse().unwrap();
        let reference = Reference::Tag("latest".into());
        let manifest = upstream
            .fetch_manifest(&repo, &reference, "*/*", 1024)
            .await
            .unwrap();
        assert_eq!(&manifest.body[..], b"{\"schemaVersion\":2}");
        assert_eq!(
            manifest.media_type.as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        // The token is cached: the blob request needs no second token request.
        let digest = BlobDigest::from_bytes([1; 32]);
        let range = upstream
            .fetch_blob_range(&repo, &digest, 5..10)
            .await
            .unwrap();
        assert_eq!(
            &range[..],
            b"bytes",
            "an upstream that ignores Range is skipped into"
        );
        assert_eq!(front.token_requests.load(Ordering::SeqCst), 1);
        assert_eq!(
            front.blob_attempts.load(Ordering::SeqCst),
            2,
            "the 503 was retried"
        );
    }

    #[tokio::test]
    async fn refused_credentials_and_oversized_bodies_are_errors() {
        let (_front, url) = start_front().await;
        let repo: RepoName = "r".parse().unwrap();
        let reference = Reference::Tag("latest".into());
        let anonymous = client(url.clone(), false);
        let error = anonymous
            .fetch_manifest(&repo, &reference, "*/*", 1024)
            .await
            .unwrap_err();
        assert!(matches!(error, UpstreamError::Auth(_)), "{error}");
        let upstream = client(url, true);
        let error = upstream
            .fetch_manifest(&repo, &reference, "*/*", 4)
            .await
            .unwrap_err();
        assert!(
            matches!(error, UpstreamError::TooLarge { limit: 4 }),
            "{error}"
        );
    }
}
