//! hexmirror's own upstream credential as a short-lived OAuth token.
//!
//! When a repository sets `oauth_token_url`, its `auth_key` is never sent to the repository
//! itself: it is exchanged at the token endpoint for an access token, as the Hex client does it
//! for hex.pm (RFC 6749 §4.4, client credentials, form-encoded:
//! `grant_type=client_credentials&client_id=ID&client_secret=KEY&scope=SCOPE`). hex.pm refuses
//! an exchange without a registered client that may use this grant (`invalid_client`,
//! `unauthorized_client`) and grants only the scopes the key has (`invalid_scope`), so the
//! repository names both: `oauth_client_id` (default: the Hex client's public id) and
//! `oauth_scope` (default: `repositories`, every repository the key may read).
//!
//! The token is sent as `Authorization: Bearer TOKEN` and replaced before it expires (at 80 %
//! of its `expires_in`, or a minute before the end, whichever is sooner), or when the repository
//! answers 401 to it ([`TokenSource::renew`]). A `refresh_token` in the answer is not used: a
//! new exchange with the key does the same. The endpoint's own `error` and
//! `error_description` are kept in [`OAuthError`] for the log and the client's 502. Neither the
//! key nor a token is ever logged, nor held by an [`OAuthError`].

use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{StatusCode, Uri};
use tokio::sync::Mutex;

use crate::config::{is_loopback, RepoConfig, Secret};
use crate::upstream::{Upstream, UpstreamError};

/// Why no token could be had from the token endpoint. Never holds the key or a token.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("oauth_token_url must be https")]
    NotHttps,
    #[error("token exchange failed: {0}")]
    Exchange(UpstreamError),
    #[error("the token endpoint refused hexmirror's key ({0})")]
    Refused(Refusal),
    #[error("the token endpoint answered something that is not a token")]
    NotAToken,
    #[error("the token endpoint issued a token of type {0:?}, not a bearer token")]
    NotBearer(String),
    #[error(
        "the token endpoint granted none of the scope asked for ({0:?}); check oauth_scope and the key's permissions"
    )]
    NoScope(String),
    #[error("the token endpoint returned a token that is not a header value")]
    NotAHeaderValue,
    /// An exchange failed moments ago: the endpoint is not asked again until the back-off ends.
    #[error("{last} (not asked again for {}s)", retry_in.as_millis().div_ceil(1000).max(1))]
    BackingOff { last: String, retry_in: Duration },
}

/// The wait after the first failed exchange; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two exchanges while they fail.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait after `failures` failed exchanges in a row.
pub fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// The last failed exchange: its reason, how many failed in a row, and when to try again.
#[derive(Debug)]
struct Failed {
    last: String,
    failures: u32,
    until: Instant,
}

/// The token endpoint's error answer (RFC 6749 §5.2): its status, and its `error` and
/// `error_description` when the body has them, made printable and cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: Option<String>,
    pub description: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status.as_u16())?;
        match (&self.error, &self.description) {
            (Some(error), Some(description)) => write!(f, ": {error}: {description}"),
            (Some(error), None) => write!(f, ": {error}"),
            (None, Some(description)) => write!(f, ": {description}"),
            (None, None) => Ok(()),
        }
    }
}

/// Exchanges one repository's key for tokens and holds the current one.
#[derive(Debug)]
pub struct TokenSource {
    repo: String,
    url: Uri,
    key: Secret,
    client_id: String,
    scope: String,
    allow_http: bool,
    /// The token and the last failed exchange, behind one lock: exchanges never overlap.
    held: Mutex<Held>,
}

/// What a [`TokenSource`] holds between requests.
#[derive(Debug, Default)]
struct Held {
    /// The current token, and when to replace it.
    token: Option<(Secret, Instant)>,
    failed: Option<Failed>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// When a token obtained now with a lifetime of `lifetime` should be replaced.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let early = lifetime.saturating_sub(Duration::from_secs(60));
    let fraction = lifetime.mul_f64(0.8);
    early.min(fraction)
}

impl TokenSource {
    /// The token source of a repository that exchanges its key (`oauth_token_url` and a key).
    pub fn for_repo(repo: &RepoConfig) -> Option<TokenSource> {
        let (url, key) = (repo.oauth_token_url.clone()?, repo.auth_key.clone()?);
        Some(TokenSource {
            repo: repo.name.clone(),
            url,
            key,
            client_id: repo.oauth_client_id.clone(),
            scope: repo.oauth_scope.clone(),
            allow_http: repo.allow_http,
            held: Mutex::new(Held::default()),
        })
    }

    /// The `Authorization` value to send now, exchanging the key when needed.
    pub async fn authorization(&self, upstream: &Upstream) -> Result<HeaderValue, OAuthError> {
        let mut held = self.held.lock().await;
        if let Some((token, refresh_at)) = held.token.as_ref() {
            if Instant::now() < *refresh_at {
                return bearer(token);
            }
        }
        self.exchange(upstream, &mut held).await
    }

    /// The `Authorization` value to retry with after the repository answered 401 to `rejected`:
    /// that token is dropped and the key exchanged again, unless another request has already
    /// replaced it (then the replacement, with no exchange of its own).
    pub async fn renew(&self, upstream: &Upstream, rejected: &HeaderValue) -> Result<HeaderValue, OAuthError> {
        let mut held = self.held.lock().await;
        if let Some((token, refresh_at)) = held.token.as_ref() {
            let value = bearer(token)?;
            if value != *rejected && Instant::now() < *refresh_at {
                return Ok(value);
            }
        }
        held.token = None;
        tracing::info!(repo = %self.repo, "the repository refused hexmirror's token; exchanging the key again");
        self.exchange(upstream, &mut held).await
    }

    async fn exchange(&self, upstream: &Upstream, held: &mut Held) -> Result<HeaderValue, OAuthError> {
        // A failing endpoint is asked at most once per back-off, however many requests wait.
        if let Some(failed) = held.failed.as_ref() {
            let now = Instant::now();
            if now < failed.until {
                return Err(OAuthError::BackingOff { last: failed.last.clone(), retry_in: failed.until - now });
            }
        }
        let result = self.request(upstream).await;
        match &result {
            Ok(_) => held.failed = None,
            Err(e) => {
                let failures = held.failed.as_ref().map_or(0, |f| f.failures) + 1;
                held.failed = Some(Failed { last: e.to_string(), failures, until: Instant::now() + backoff(failures) });
            }
        }
        match result {
            Ok((token, lifetime, scope)) => {
                let value = bearer(&token)?;
                tracing::debug!(repo = %self.repo, lifetime_seconds = lifetime.as_secs(), scope = %scope, "upstream token obtained");
                held.token = Some((token, Instant::now() + refresh_after(lifetime)));
                Ok(value)
            }
            Err(e) => {
                let (status, error, description) = match &e {
                    OAuthError::Refused(r) => (Some(r.status.as_u16()), r.error.as_deref(), r.description.as_deref()),
                    _ => (None, None, None),
                };
                tracing::warn!(
                    repo = %self.repo,
                    token_url = %self.url,
                    status,
                    error,
                    error_description = description,
                    reason = %e,
                    "token exchange failed"
                );
                Err(e)
            }
        }
    }

    /// One exchange: the token, its lifetime and the scope granted.
    async fn request(&self, upstream: &Upstream) -> Result<(Secret, Duration, String), OAuthError> {
        if self.url.scheme_str() != Some("https") && !(self.allow_http && is_loopback(&self.url)) {
            return Err(OAuthError::NotHttps);
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.key.expose()),
            ("scope", self.scope.as_str()),
        ]
        .iter()
        .map(|(name, value)| format!("{name}={}", form_encode(value)))
        .collect::<Vec<_>>()
        .join("&");
        let (status, body) = upstream.post_form(&self.url, form, 64 << 10).await.map_err(OAuthError::Exchange)?;
        if !status.is_success() {
            let answer: Option<ErrorResponse> = serde_json::from_slice(&body).ok();
            let (error, description) = answer.map(|a| (a.error, a.error_description)).unwrap_or_default();
            let printable = |text: Option<String>| text.map(|t| self.printable(&t)).filter(|t| !t.is_empty());
            return Err(OAuthError::Refused(Refusal {
                status,
                error: printable(error),
                description: printable(description),
            }));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| OAuthError::NotAToken)?;
        if parsed.access_token.is_empty() {
            return Err(OAuthError::NotAToken);
        }
        if let Some(kind) = parsed.token_type.filter(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(OAuthError::NotBearer(self.printable(&kind)));
        }
        // hex.pm grants what the key may of what was asked; nothing at all makes a token that
        // every repository refuses.
        let scope = parsed.scope.unwrap_or_else(|| self.scope.clone());
        if scope.trim().is_empty() {
            return Err(OAuthError::NoScope(self.scope.clone()));
        }
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600).max(1));
        Ok((Secret::new(parsed.access_token), lifetime, self.printable(&scope)))
    }

    /// Text from the token endpoint as it may appear in a log line or an error answer: one
    /// line, at most 200 characters, and never the key (an endpoint could echo it back).
    fn printable(&self, text: &str) -> String {
        let mut text: String =
            text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect::<String>().trim().to_string();
        let key = self.key.expose();
        if !key.is_empty() {
            text = text.replace(key, "<redacted>");
        }
        text
    }
}

fn bearer(token: &Secret) -> Result<HeaderValue, OAuthError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| OAuthError::NotAHeaderValue)?;
    value.set_sensitive(true);
    Ok(value)
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(key: &str) -> TokenSource {
        TokenSource {
            repo: "corp".into(),
            url: "https://x/t".parse().unwrap(),
            key: Secret::new(key),
            client_id: crate::config::HEX_CLIENT_ID.into(),
            scope: "repositories".into(),
            allow_http: false,
            held: Mutex::new(Held::default()),
        }
    }

    #[test]
    fn refresh_happens_before_expiry() {
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(2880));
        assert_eq!(refresh_after(Duration::from_secs(120)), Duration::from_secs(60));
        assert_eq!(refresh_after(Duration::from_secs(30)), Duration::ZERO);
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/=&"), "a+b%2Bc%2F%3D%26");
        assert_eq!(form_encode("Az09-_.~"), "Az09-_.~");
        assert_eq!(form_encode("repository:acme"), "repository%3Aacme");
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert!(!format!("{:?}", source("supersecret")).contains("supersecret"));
    }

    #[test]
    fn the_endpoints_text_is_one_short_line_without_the_key() {
        let source = source("k3y-77");
        assert_eq!(source.printable("Invalid API key\r\nk3y-77 was\tgiven"), "Invalid API key  <redacted> was given");
        assert_eq!(source.printable(&"x".repeat(500)).len(), 200);
        let refusal = Refusal {
            status: StatusCode::UNAUTHORIZED,
            error: Some("invalid_client".into()),
            description: Some("Invalid API key".into()),
        };
        assert_eq!(
            OAuthError::Refused(refusal).to_string(),
            "the token endpoint refused hexmirror's key (HTTP 401: invalid_client: Invalid API key)"
        );
        let bare = Refusal { status: StatusCode::BAD_GATEWAY, error: None, description: None };
        assert_eq!(bare.to_string(), "HTTP 502");
    }

    #[test]
    fn the_backoff_doubles_from_one_second_up_to_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
