//! Exact HTTP/1.1 requests over a plain TCP stream, for hostile inputs that
//! HTTP clients would normalise or refuse (`..` segments, `%2F`, malformed
//! headers). Every request sends `Connection: close` and is bounded by a
//! timeout.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one raw exchange.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was sent chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `code` of every entry of an OCI error body
    /// (`{"errors":[{"code":...}]}`); empty if the body is not one.
    pub fn oci_error_codes(&self) -> Vec<String> {
        self.json()
            .and_then(|v| {
                v.get("errors")?.as_array().map(|errors| {
                    errors
                        .iter()
                        .filter_map(|e| e.get("code")?.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

/// Sends `<method> <target> HTTP/1.1` with `Host`, `Connection: close` and
/// `extra_headers` (full lines without CRLF), then reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    extra_headers: &[&str],
) -> Result<RawResponse> {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in extra_headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.write_all(text.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(RAW_TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!("{method} {target}: no complete response within {RAW_TIMEOUT:?}")
        })??;
    parse_response(&raw, method == "HEAD").with_context(|| format!("{method} {target}"))
}

/// Parses one HTTP/1.1 response held in full.
pub fn parse_response(raw: &[u8], head: bool) -> Result<RawResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response without end of headers")?;
    let head_text = std::str::from_utf8(&raw[..end]).context("non-UTF-8 response head")?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if head {
        body.clear();
    } else if chunked {
        body = dechunk(&body)?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */100\r\nContent-Length: 2\r\n\r\n{}";
        let r = parse_response(plain, false).unwrap();
        assert_eq!(r.status, 416);
        assert_eq!(r.header("content-range"), Some("bytes */100"));
        assert_eq!(r.body, b"{}");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false).unwrap().body, b"abcde");
        let err = b"HTTP/1.1 400 Bad Request\r\n\r\n{\"errors\":[{\"code\":\"DIGEST_INVALID\"}]}";
        assert_eq!(
            parse_response(err, false).unwrap().oci_error_codes(),
            vec!["DIGEST_INVALID".to_string()]
        );
    }
}
