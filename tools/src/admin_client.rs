//! The one client for a node's admin API (`/status`, `/metrics`, `/preheat`, rebuilds, the
//! lifecycle, threat intake, placement) that every `shoal` command uses: bounded answers, a
//! timeout, and the bearer token on every request when one is given.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_node::admin::status::NodeStatus;
use shoal_node::preheat::job::JobView;
use shoal_node::preheat::{PreheatBody, Started};
use shoal_node::rebuild::job::RebuildView;

/// Largest admin answer read, in bytes (the largest is `/graph` of a big catalog).
const MAX_ANSWER_BYTES: usize = 32 << 20;
/// Longest an admin request may take unless the command says otherwise.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Largest token file read.
const MAX_TOKEN_BYTES: u64 = 4096;

/// The admin bearer token in `path` (the node's `admin_token_file`), trimmed; bounded in size.
pub fn read_token_file(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading --token-file {}", path.display()))?
        .len();
    if len > MAX_TOKEN_BYTES {
        bail!(
            "--token-file {} is larger than {MAX_TOKEN_BYTES} bytes",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --token-file {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// A node's admin API at one base URL.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: reqwest::Url,
    http: reqwest::Client,
    token: Option<String>,
}

impl AdminClient {
    /// A client for the admin API at `base`: a URL such as `http://127.0.0.1:5051`, or an
    /// address such as `127.0.0.1:5051` (plain HTTP then).
    pub fn new(base: &str) -> Result<AdminClient> {
        AdminClient::with_timeout(base, TIMEOUT)
    }

    /// [`AdminClient::new`] with requests allowed to take up to `timeout` (a large report, a
    /// retention run).
    pub fn with_timeout(base: &str, timeout: Duration) -> Result<AdminClient> {
        let url = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        let base = reqwest::Url::parse(&url).with_context(|| {
            format!("--admin {base:?} is not a URL such as http://127.0.0.1:5051")
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("--admin {base} must be an http:// or https:// URL");
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building the HTTP client")?;
        Ok(AdminClient {
            base,
            http,
            token: None,
        })
    }

    /// Sends the token read from `path` (the node's `admin_token_file`), if any, on every
    /// request.
    pub fn with_token_file(self, path: Option<&Path>) -> Result<AdminClient> {
        let token = path.map(read_token_file).transpose()?;
        Ok(self.with_token(token))
    }

    /// Sends `token` as the bearer token on requests that change state (needed when the node
    /// has `admin_token_file`).
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token;
        self
    }

    /// `path` with `pairs` as its query, each name and value encoded.
    pub fn path_with_query(&self, path: &str, pairs: &[(&str, &str)]) -> Result<String> {
        let mut url = self.url(path)?;
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        Ok(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url> {
        self.base.join(path).context("joining the admin URL")
    }

    async fn get(&self, path: &str) -> Result<String> {
        let (status, text) = self.request(reqwest::Method::GET, path, None).await?;
        if !status.is_success() {
            bail!(
                "GET {}: {status}: {}",
                self.url(path)?,
                error_message(&text)
            );
        }
        Ok(text)
    }

    /// Sends `method` to `path` (with the token, and `body` as JSON if any) and reads the answer,
    /// bounded, whatever its status. The error names the method and URL.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(reqwest::StatusCode, String)> {
        let url = self.url(path)?;
        let what = format!("{method} {url}");
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        self.exchange(request, &what).await
    }

    /// Sends a request and reads its answer (bounded), whatever its status.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(reqwest::StatusCode, String)> {
        let mut response = request.send().await.with_context(|| what.to_owned())?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.with_context(|| what.to_owned())? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                bail!("{what}: answer larger than {MAX_ANSWER_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).with_context(|| format!("{what}: not UTF-8"))?;
        Ok((status, text))
    }

    /// Sends `method` to `path` with `body` as JSON, if any, and returns the node's JSON answer;
    /// an unsuccessful answer is an error naming the node's reason.
    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let body = body.map(|value| value.to_string().into_bytes());
        let (_, value) = self.call(method, path, body).await?;
        Ok(value)
    }

    /// Sends `method` to `path` and decodes a successful JSON answer as `T`; an unsuccessful
    /// one is an error naming the node's reason.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(reqwest::StatusCode, T)> {
        let what = format!("{method} {}", self.url(path)?);
        let (status, text) = self.request(method, path, body).await?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", error_message(&text));
        }
        let value = serde_json::from_str(&text)
            .with_context(|| format!("{what}: unexpected answer {text:?}"))?;
        Ok((status, value))
    }

    /// `POST /preheat`: starts a preheat job.
    pub async fn preheat_start(&self, request: &PreheatBody) -> Result<Started> {
        let body = serde_json::to_vec(request).context("encoding the preheat request")?;
        let (_, started) = self
            .call(reqwest::Method::POST, "/preheat", Some(body))
            .await?;
        Ok(started)
    }

    /// `GET /preheat/{id}`: a preheat job's progress.
    pub async fn preheat_job(&self, id: &str) -> Result<JobView> {
        let (_, job) = self
            .call(reqwest::Method::GET, &format!("/preheat/{id}"), None)
            .await?;
        Ok(job)
    }

    /// `POST /images/{image}/rebuild`: re-resolves the tag upstream and starts a rebuild on a
    /// new digest. The view, and whether a rebuild runs.
    pub async fn rebuild_start(&self, image: &str) -> Result<(RebuildView, bool)> {
        let path = rebuild_path(image)?;
        let (status, view) = self.call(reqwest::Method::POST, &path, None).await?;
        Ok((view, status == reqwest::StatusCode::ACCEPTED))
    }

    /// `GET /images/{image}/rebuild`: a rebuild's progress.
    pub async fn rebuild_view(&self, image: &str) -> Result<RebuildView> {
        let (_, view) = self
            .call(reqwest::Method::GET, &rebuild_path(image)?, None)
            .await?;
        Ok(view)
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<NodeStatus> {
        let text = self.get("/status").await?;
        serde_json::from_str(&text).context("the node's /status answer is not a status")
    }

    /// Registry requests the node has answered so far (the sum of `shoal_http_requests_total`).
    pub async fn registry_requests(&self) -> Result<u64> {
        let text = self.get("/metrics").await?;
        Ok(sum_samples(&text, "shoal_http_requests_total") as u64)
    }
}

/// `/images/{image}/rebuild`, for an image reference with nothing a URL would read as more.
fn rebuild_path(image: &str) -> Result<String> {
    let plain = !image.is_empty()
        && image.len() <= 512
        && image
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"?#%".contains(&b));
    if !plain {
        bail!("{image:?} is not an image reference such as registry/repository:tag");
    }
    Ok(format!("/images/{image}/rebuild"))
}

/// The `error` of a JSON error answer, else the answer itself (cut short).
pub fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// The sum of every sample of `name` in a Prometheus or OpenMetrics text exposition.
pub fn sum_samples(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_is_plain_http_and_other_schemes_are_refused() {
        let client = AdminClient::new("127.0.0.1:5051").unwrap();
        assert_eq!(
            client.url("/status").unwrap().as_str(),
            "http://127.0.0.1:5051/status"
        );
        let client = AdminClient::new("https://node.example:5051/").unwrap();
        assert_eq!(
            client.url("/status").unwrap().as_str(),
            "https://node.example:5051/status"
        );
        assert!(AdminClient::new("ftp://127.0.0.1:5051").is_err());
        assert!(AdminClient::new("http://").is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        let client = AdminClient::new("http://127.0.0.1:5051").unwrap();
        assert_eq!(client.path_with_query("/graph", &[]).unwrap(), "/graph");
        assert_eq!(
            client
                .path_with_query("/graph", &[("image", "a/b:c&d=e f")])
                .unwrap(),
            "/graph?image=a%2Fb%3Ac%26d%3De+f"
        );
    }

    #[test]
    fn a_token_file_is_trimmed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");
        std::fs::write(&path, vec![b'x'; MAX_TOKEN_BYTES as usize + 1]).unwrap();
        let error = read_token_file(&path).unwrap_err().to_string();
        assert!(error.contains("larger than"), "{error}");
        assert!(read_token_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn sums_every_series_of_one_name_only() {
        let text = "# TYPE a counter\na_total{x=\"1\"} 2\na_total{x=\"2\"} 3\na_total_other 9\nb_total 1\n";
        assert_eq!(sum_samples(text, "a_total"), 5.0);
        assert_eq!(sum_samples(text, "b_total"), 1.0);
        assert_eq!(sum_samples(text, "c_total"), 0.0);
    }
}
