//! A small client for a node's admin API (`/status`, `/metrics`, `/preheat`, rebuilds), with bounded
//! answers and timeouts.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_node::admin::status::NodeStatus;
use shoal_node::preheat::job::JobView;
use shoal_node::preheat::{PreheatBody, Started};
use shoal_node::rebuild::job::RebuildView;

/// Largest admin answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// Longest an admin request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// A node's admin API at one base URL.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: reqwest::Url,
    http: reqwest::Client,
    token: Option<String>,
}

impl AdminClient {
    /// A client for the admin API at `base`, e.g. `http://127.0.0.1:5051`.
    pub fn new(base: &str) -> Result<AdminClient> {
        let base = reqwest::Url::parse(base).with_context(|| {
            format!("--admin {base:?} is not a URL such as http://127.0.0.1:5051")
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("--admin {base} must be an http:// or https:// URL");
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(AdminClient {
            base,
            http,
            token: None,
        })
    }

    /// Sends `token` as the bearer token on requests that change state (needed when the node
    /// has `admin_token_file`).
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token;
        self
    }

    async fn get(&self, path: &str) -> Result<String> {
        let url = self.base.join(path).context("joining the admin URL")?;
        let mut response = self
            .http
            .get(url.clone())
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !response.status().is_success() {
            bail!("GET {url}: {}", response.status());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("GET {url}"))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                bail!("GET {url}: answer larger than {MAX_ANSWER_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).with_context(|| format!("GET {url}: not UTF-8"))
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

    /// `POST /preheat`: starts a preheat job.
    pub async fn preheat_start(&self, request: &PreheatBody) -> Result<Started> {
        let url = self
            .base
            .join("/preheat")
            .context("joining the admin URL")?;
        let what = format!("POST {url}");
        let body = serde_json::to_vec(request).context("encoding the preheat request")?;
        let mut post = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            post = post.bearer_auth(token);
        }
        let (status, text) = self.exchange(post, &what).await?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", error_message(&text));
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: unexpected answer {text:?}"))
    }

    /// `GET /preheat/{id}`: a preheat job's progress.
    pub async fn preheat_job(&self, id: &str) -> Result<JobView> {
        let url = self
            .base
            .join(&format!("/preheat/{id}"))
            .context("joining the admin URL")?;
        let what = format!("GET {url}");
        let (status, text) = self.exchange(self.http.get(url), &what).await?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", error_message(&text));
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: not a preheat job"))
    }

    /// `POST /images/{image}/rebuild`: re-resolves the tag upstream and starts a rebuild on a
    /// new digest. The view, and whether a rebuild runs.
    pub async fn rebuild_start(&self, image: &str) -> Result<(RebuildView, bool)> {
        let url = self.rebuild_url(image)?;
        let what = format!("POST {url}");
        let mut post = self.http.post(url);
        if let Some(token) = &self.token {
            post = post.bearer_auth(token);
        }
        let (status, text) = self.exchange(post, &what).await?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", error_message(&text));
        }
        let view = serde_json::from_str(&text)
            .with_context(|| format!("{what}: unexpected answer {text:?}"))?;
        Ok((view, status == reqwest::StatusCode::ACCEPTED))
    }

    /// `GET /images/{image}/rebuild`: a rebuild's progress.
    pub async fn rebuild_view(&self, image: &str) -> Result<RebuildView> {
        let url = self.rebuild_url(image)?;
        let what = format!("GET {url}");
        let (status, text) = self.exchange(self.http.get(url), &what).await?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", error_message(&text));
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: not a rebuild"))
    }

    fn rebuild_url(&self, image: &str) -> Result<reqwest::Url> {
        let plain = !image.is_empty()
            && image.len() <= 512
            && image
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"?#%".contains(&b));
        if !plain {
            bail!("{image:?} is not an image reference such as registry/repository:tag");
        }
        self.base
            .join(&format!("/images/{image}/rebuild"))
            .context("joining the admin URL")
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

/// The `error` of a JSON error answer, else the answer itself (cut short).
fn error_message(text: &str) -> String {
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
    fn sums_every_series_of_one_name_only() {
        let text = "# TYPE a counter\na_total{x=\"1\"} 2\na_total{x=\"2\"} 3\na_total_other 9\nb_total 1\n";
        assert_eq!(sum_samples(text, "a_total"), 5.0);
        assert_eq!(sum_samples(text, "b_total"), 1.0);
        assert_eq!(sum_samples(text, "c_total"), 0.0);
    }
}
