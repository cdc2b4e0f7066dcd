//! The registry endpoint containerd pulls through: the read side of the OCI Distribution API.
//!
//! Owns request parsing and validation, the `ns` to upstream mapping, status codes, headers and
//! OCI error bodies. It decides nothing about caching (that is `pullthrough`) and never touches the
//! disk. Every path is validated against the distribution grammar before anything else happens;
//! a request naming an unknown `ns` is refused before any upstream is chosen.
//!
//! Routes: `GET /v2/`; `GET`/`HEAD` `/v2/<name>/manifests/<tag|digest>`; `GET`/`HEAD`
//! `/v2/<name>/blobs/<digest>` (single `Range`). Anything else is `404`/`405` with an OCI error.

mod errors;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;
use shoal_proto::{BlobDigest, Reference, RepoName};

use crate::metrics::Metrics;
use crate::pullthrough::range::RangeSpec;
use crate::pullthrough::{PullError, PullThrough};
use crate::upstream::Upstream;
pub use errors::ErrorCode;

const API_VERSION: &str = "registry/2.0";

/// What the endpoint needs to answer requests.
#[derive(Debug)]
pub struct RegistryState {
    /// The cache.
    pub pull: PullThrough,
    /// Configured upstreams by the name containerd sends as `ns`.
    pub upstreams: BTreeMap<String, Upstream>,
    /// The upstream for requests without `ns`, if any.
    pub default_upstream: Option<String>,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Predictive placement, told of every manifest and blob request (`None` when off).
    pub placement: Option<crate::placement::Placement>,
}

/// The router of the registry endpoint.
pub fn router(state: Arc<RegistryState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Manifest(RepoName, Reference),
    Blob(RepoName, BlobDigest),
}

impl Route {
    fn label(&self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Manifest(..) => "manifest",
            Self::Blob(..) => "blob",
        }
    }
}

/// Parses a raw request path (never percent-decoded: `%` fails the grammar).
fn parse_route(path: &str) -> Result<Route, (StatusCode, ErrorCode, String)> {
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            "unknown route".to_owned(),
        )
    };
    let rest = path.strip_prefix("/v2/").ok_or_else(not_found)?;
    if rest.len() > 512 {
        return Err((
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            "path too long".into(),
        ));
    }
    let mut segments: Vec<&str> = rest.split('/').collect();
    if segments.len() < 3 {
        return Err(not_found());
    }
    let reference = segments.pop().unwrap_or_default();
    let kind = segments.pop().unwrap_or_default();
    let name = segments.join("/");
    let repo: RepoName = name.parse().map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            format!("invalid repository name: {e}"),
        )
    })?;
    match kind {
        "manifests" => {
            let reference: Reference = reference.parse().map_err(|e: shoal_proto::NameError| {
                let code = if reference.contains(':') {
                    ErrorCode::DigestInvalid
                } else {
                    ErrorCode::TagInvalid
                };
                (StatusCode::BAD_REQUEST, code, e.to_string())
            })?;
            Ok(Route::Manifest(repo, reference))
        }
        "blobs" => {
            let digest: BlobDigest = reference.parse().map_err(|e: shoal_proto::DigestError| {
                (
                    StatusCode::BAD_REQUEST,
                    ErrorCode::DigestInvalid,
                    e.to_string(),
                )
            })?;
            Ok(Route::Blob(repo, digest))
        }
        _ => Err(not_found()),
    }
}

/// Why a request's registry is refused, and the key that would configure it, in one line. The
/// `ns` shown is cut to 100 characters and kept only when it is a registry host name.
fn unconfigured_registry<'a>(
    ns: Option<&str>,
    configured: impl Iterator<Item = &'a String>,
) -> String {
    let configured: Vec<&str> = configured.map(String::as_str).collect();
    let configured = configured.join(", ");
    match ns {
        Some(ns) if ns.len() <= 100 && shoal_proto::oci::is_valid_registry_host(ns) => format!(
            "registry {ns} is not configured on this mirror (configured: {configured}); to mirror it, add [upstreams.\"{ns}\"] with url = \"https://{ns}\" to the node's config"
        ),
        Some(_) => format!(
            "the ns parameter is not a registry host name; configured registries: {configured}"
        ),
        None => format!(
            "the request names no registry (no ns parameter) and no default_upstream is set; configured: {configured}; set default_upstream in the node's config"
        ),
    }
}

/// The `ns` query parameter, if present.
fn namespace(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    let pairs = url_pairs(query);
    pairs.into_iter().find(|(k, _)| k == "ns").map(|(_, v)| v)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    let parsed = reqwest::Url::parse(&format!("http://query.invalid/?{query}"));
    parsed
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

async fn handle(
    State(state): State<Arc<RegistryState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let started = Instant::now();
    let (label, response) = answer(&state, &method, &uri, &headers).await;
    state.metrics.record_request(
        label,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn answer(
    state: &RegistryState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> (&'static str, Response<Body>) {
    let route = match parse_route(uri.path()) {
        Ok(route) => route,
        Err((status, code, message)) => {
            return ("invalid", errors::response(status, code, &message))
        }
    };
    let label = route.label();
    if method != Method::GET && method != Method::HEAD {
        return (
            label,
            errors::response(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                "this mirror is read-only",
            ),
        );
    }
    if route == Route::Base {
        return (label, base_response(method));
    }
    let ns = namespace(uri);
    let upstream_name = match ns.as_deref() {
        Some(ns) => Some(ns),
        None => state.default_upstream.as_deref(),
    };
    let Some(upstream) = upstream_name.and_then(|name| state.upstreams.get(name)) else {
        let message = unconfigured_registry(ns.as_deref(), state.upstreams.keys());
        tracing::debug!("{message}");
        return (
            label,
            errors::response(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, &message),
        );
    };
    let response = match route {
        Route::Manifest(repo, reference) => {
            manifest(state, upstream, &repo, &reference, method, headers).await
        }
        Route::Blob(repo, digest) => blob(state, upstream, &repo, digest, method, headers).await,
        Route::Base => unreachable!("answered above"),
    };
    (label, response)
}

/// The body of a `HEAD` response: no bytes, but the length a `GET` would send, so the HTTP stack
/// keeps `Content-Length` as the spec requires instead of writing 0.
struct HeadBody(u64);

impl http_body::Body for HeadBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(None)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0)
    }
}

/// An empty body for `HEAD`, or `full` for `GET`.
fn body_for(method: &Method, full: impl Into<Body>, len: u64) -> Body {
    if method == Method::HEAD {
        Body::new(HeadBody(len))
    } else {
        full.into()
    }
}

fn base_response(method: &Method) -> Response<Body> {
    let body = body_for(method, "{}", 2);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, 2)
        .header("Docker-Distribution-API-Version", API_VERSION)
        .body(body)
        .expect("static headers are valid")
}

async fn manifest(
    state: &RegistryState,
    upstream: &Upstream,
    repo: &RepoName,
    reference: &Reference,
    method: &Method,
    headers: &HeaderMap,
) -> Response<Body> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let accept = (!accept.is_empty()).then_some(accept);
    match state
        .pull
        .manifest(upstream, repo, reference, accept.as_deref())
        .await
    {
        Ok(reply) => {
            if let Some(placement) = &state.placement {
                placement.manifest_served(upstream.name(), repo, reference, &reply);
            }
            if let Reference::Tag(tag) = reference {
                tracing::info!(ns = upstream.name(), %repo, %tag, digest = %reply.digest, cached = reply.from_cache, "pull");
            }
            let body = body_for(method, reply.body.clone(), reply.body.len() as u64);
            Response::builder()
                .status(StatusCode::OK)
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_str(&reply.media_type)
                        .unwrap_or(HeaderValue::from_static("application/json")),
                )
                .header(header::CONTENT_LENGTH, reply.body.len())
                .header("Docker-Content-Digest", reply.digest.to_string())
                .header("Docker-Distribution-API-Version", API_VERSION)
                .body(body)
                .expect("headers are valid")
        }
        Err(error) => pull_error(
            error,
            ErrorCode::ManifestUnknown,
            upstream,
            repo,
            &reference.to_string(),
        ),
    }
}

async fn blob(
    state: &RegistryState,
    upstream: &Upstream,
    repo: &RepoName,
    digest: BlobDigest,
    method: &Method,
    headers: &HeaderMap,
) -> Response<Body> {
    let common = |builder: axum::http::response::Builder| {
        builder
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("Docker-Content-Digest", digest.to_string())
            .header("Docker-Distribution-API-Version", API_VERSION)
            .header(header::ACCEPT_RANGES, "bytes")
    };
    if method == Method::HEAD {
        return match state.pull.blob_length(upstream, repo, &digest).await {
            Ok(len) => common(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_LENGTH, len),
            )
            .body(Body::new(HeadBody(len)))
            .expect("headers are valid"),
            Err(error) => pull_error(
                error,
                ErrorCode::BlobUnknown,
                upstream,
                repo,
                &digest.to_string(),
            ),
        };
    }
    let range = match headers
        .get(header::RANGE)
        .map(|v| v.to_str().map(RangeSpec::parse))
    {
        None => None,
        Some(Ok(Ok(spec))) => Some(spec),
        Some(_) => {
            // Malformed or multi-range: tell the client the length if we know it cheaply.
            let len = state
                .pull
                .store()
                .shard_map(&digest)
                .ok()
                .flatten()
                .map(|m| m.blob_len);
            return range_not_satisfiable(len);
        }
    };
    if let Some(placement) = &state.placement {
        placement.blob_requested(upstream.name(), repo, digest);
    }
    match state.pull.open_blob(upstream, repo, digest, range).await {
        Ok(reply) => {
            if let Some(placement) = &state.placement {
                placement.blob_answered(&digest, reply.total_len, reply.from_cache);
            }
            let builder = match (&reply.range, reply.total_len) {
                (Some(range), Some(total)) => Response::builder()
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(
                        header::CONTENT_RANGE,
                        format!("bytes {}-{}/{total}", range.start, range.end - 1),
                    )
                    .header(header::CONTENT_LENGTH, range.end - range.start),
                (_, Some(total)) => Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_LENGTH, total),
                (_, None) => Response::builder().status(StatusCode::OK),
            };
            common(builder)
                .body(Body::from_stream(reply.body))
                .expect("headers are valid")
        }
        Err(PullError::RangeNotSatisfiable(len)) => range_not_satisfiable(Some(len)),
        Err(error) => pull_error(
            error,
            ErrorCode::BlobUnknown,
            upstream,
            repo,
            &digest.to_string(),
        ),
    }
}

fn range_not_satisfiable(len: Option<u64>) -> Response<Body> {
    let mut response = errors::response(
        StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::RangeInvalid,
        "range not satisfiable",
    );
    let value = match len {
        Some(len) => format!("bytes */{len}"),
        None => "bytes */*".to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// Maps a pull failure to a status containerd understands: `404` when the thing does not exist,
/// `502` when the upstream failed or refused (containerd then tries its next host), `500` for our
/// own failures.
fn pull_error(
    error: PullError,
    unknown: ErrorCode,
    upstream: &Upstream,
    repo: &RepoName,
    what: &str,
) -> Response<Body> {
    let (status, code) = match &error {
        PullError::NotFound => (StatusCode::NOT_FOUND, unknown),
        PullError::UpstreamUnavailable(_)
        | PullError::UpstreamInvalid(_)
        | PullError::PeerInvalid(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
        PullError::UpstreamDenied(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Denied),
        PullError::RangeNotSatisfiable(_) => {
            (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
        }
        PullError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unknown),
    };
    if status != StatusCode::NOT_FOUND {
        tracing::warn!(ns = upstream.name(), %repo, what, %error, "request failed");
    }
    errors::response(status, code, &error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn an_unconfigured_registry_is_named_with_the_key_to_add() {
        let configured = ["docker.io".to_owned(), "quay.io".to_owned()];
        let line = unconfigured_registry(Some("ghcr.io"), configured.iter());
        assert!(
            line.contains("registry ghcr.io is not configured"),
            "{line}"
        );
        assert!(line.contains("docker.io, quay.io"), "{line}");
        assert!(line.contains("[upstreams.\"ghcr.io\"]"), "{line}");
        assert!(!line.contains('\n'));
        let hostile = unconfigured_registry(Some("<script>\n"), configured.iter());
        assert!(!hostile.contains("<script>"), "{hostile}");
        let none = unconfigured_registry(None, configured.iter());
        assert!(none.contains("default_upstream"), "{none}");
    }

    #[test]
    fn routes_parse() {
        assert_eq!(parse_route("/v2/").unwrap(), Route::Base);
        assert!(matches!(
            parse_route("/v2/library/alpine/manifests/latest").unwrap(),
            Route::Manifest(..)
        ));
        assert!(
            matches!(parse_route(&format!("/v2/a/blobs/blobs/{DIGEST}")).unwrap(), Route::Blob(name, _) if name.as_str() == "a/blobs")
        );
        assert!(matches!(
            parse_route(&format!("/v2/a/manifests/{DIGEST}")).unwrap(),
            Route::Manifest(_, Reference::Digest(_))
        ));
    }

    #[test]
    fn bad_paths_are_refused() {
        let code = |path: &str| parse_route(path).unwrap_err().1;
        assert_eq!(
            code("/v2/../../etc/passwd/manifests/latest"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(&format!("/v2/a/..%2F..%2Fx/blobs/{DIGEST}")),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code("/v2/alpine/blobs/sha256:xyz"),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code("/v2/alpine/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code(&format!(
                "/v2/alpine/blobs/{}",
                DIGEST.to_uppercase().replace("SHA256", "sha256")
            )),
            ErrorCode::DigestInvalid
        );
        assert_eq!(code("/v2/alpine/manifests/..latest"), ErrorCode::TagInvalid);
        assert_eq!(code("/v2/alpine/tags/list"), ErrorCode::NameUnknown);
        assert_eq!(code("/etc/passwd"), ErrorCode::NameUnknown);
    }

    proptest::proptest! {
        #[test]
        fn any_path_parses_or_is_refused_without_panicking(path in "(/v2/)?[ -~]{0,300}") {
            let _ = parse_route(&path);
        }

        #[test]
        fn valid_names_and_digests_route(name in "[a-z0-9]{1,10}(/[a-z0-9]{1,10}){0,3}", hex in "[0-9a-f]{64}") {
            let route = parse_route(&format!("/v2/{name}/blobs/sha256:{hex}")).unwrap();
            proptest::prop_assert!(matches!(route, Route::Blob(repo, _) if repo.as_str() == name));
        }
    }

    #[test]
    fn namespace_is_read_from_the_query() {
        let uri: Uri = "/v2/a/manifests/latest?ns=docker.io".parse().unwrap();
        assert_eq!(namespace(&uri).as_deref(), Some("docker.io"));
        let uri: Uri = "/v2/a/manifests/latest?ns=reg.example%3A5000"
            .parse()
            .unwrap();
        assert_eq!(namespace(&uri).as_deref(), Some("reg.example:5000"));
        let uri: Uri = "/v2/a/manifests/latest".parse().unwrap();
        assert_eq!(namespace(&uri), None);
    }
}
