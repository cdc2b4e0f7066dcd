//! Parsing registry authentication: `WWW-Authenticate` challenges and token responses.

use std::time::Duration;

/// What a `401` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP basic authentication.
    Basic,
    /// A token from `realm`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter to pass on.
        service: Option<String>,
        /// `scope` parameter to pass on.
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Bearer realm="..",service="..",scope=".."` or `Basic realm=".."`.
    pub fn parse(header: &str) -> Result<Self, String> {
        if header.len() > 4096 {
            return Err("WWW-Authenticate header too long".into());
        }
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!("unsupported authentication scheme {scheme:?}"));
        }
        let params = parse_params(rest)?;
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        let realm = get("realm").ok_or("bearer challenge without realm")?;
        Ok(Self::Bearer {
            realm,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// Parses `key="value", key=value` lists; quoted values may contain commas.
fn parse_params(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut params = Vec::new();
    let mut rest = input.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or("malformed challenge parameter")?;
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').ok_or("unterminated quoted value")?;
            (quoted[..end].to_owned(), &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Ok(params)
}

/// A token endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The bearer token.
    pub token: String,
    /// How long it is valid.
    pub lifetime: Duration,
}

impl TokenResponse {
    /// Parses `{"token": .., "access_token": .., "expires_in": ..}`.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Raw {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("token response: {e}"))?;
        let token = raw
            .token
            .or(raw.access_token)
            .filter(|t| !t.is_empty())
            .ok_or("token response without a token")?;
        if token.len() > 64 * 1024 || token.bytes().any(|b| b.is_ascii_control()) {
            return Err("token is too long or has control characters".into());
        }
        // The distribution spec's default lifetime is 60 seconds.
        let lifetime = Duration::from_secs(raw.expires_in.unwrap_or(60).clamp(10, 3600));
        Ok(Self { token, lifetime })
    }
}

/// The `Authorization` value for basic credentials.
pub fn basic_header(user: &str, password: &str) -> String {
    use std::fmt::Write as _;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = write!(
                    out,
                    "{}",
                    ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char
                );
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#;
        assert_eq!(
            Challenge::parse(header).unwrap(),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse("Basic realm=\"x\"").unwrap(),
            Challenge::Basic
        );
        assert!(Challenge::parse("Bearer service=\"x\"").is_err());
        assert!(Challenge::parse("Negotiate abc").is_err());
        assert!(Challenge::parse("Bearer realm=\"unterminated").is_err());
    }

    #[test]
    fn parses_tokens() {
        let token = TokenResponse::parse(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(
            token,
            TokenResponse {
                token: "abc".into(),
                lifetime: Duration::from_secs(300)
            }
        );
        let token = TokenResponse::parse(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(token.lifetime, Duration::from_secs(60));
        assert!(TokenResponse::parse(br#"{"token":""}"#).is_err());
        assert!(TokenResponse::parse(b"not json").is_err());
    }

    #[test]
    fn encodes_basic_credentials() {
        assert_eq!(
            basic_header("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_header("a", "b"), "Basic YTpi");
    }
}
