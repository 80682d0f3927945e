//! hexmirror's own upstream credential as a short-lived OAuth token.
//!
//! When a repository sets `oauth_token_url`, its `auth_key` is never sent to the repository
//! itself: it is exchanged at the token endpoint (RFC 6749 §4.4, client credentials:
//! `grant_type=client_credentials&client_secret=KEY`, form-encoded) for an access token, which
//! is sent as `Authorization: Bearer TOKEN` and refreshed before it expires (at 80 % of its
//! lifetime, or a minute before the end, whichever is sooner). Neither the key nor the token is
//! ever logged, nor held by an [`OAuthError`].

use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::Uri;
use tokio::sync::Mutex;

use crate::config::{is_loopback, Secret};
use crate::upstream::{Upstream, UpstreamError};

/// Why no token could be had from the token endpoint. Never holds the key or a token.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("oauth_token_url must be https")]
    NotHttps,
    #[error("token exchange failed: {0}")]
    Exchange(UpstreamError),
    #[error("token exchange answered {0}")]
    Status(http::StatusCode),
    #[error("token exchange answered something that is not a token")]
    NotAToken,
    #[error("the token endpoint returned a token that is not a header value")]
    NotAHeaderValue,
}

#[derive(Debug)]
pub struct TokenSource {
    url: Uri,
    key: Secret,
    allow_http: bool,
    current: Mutex<Option<(Secret, Instant)>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// When a token obtained now with a lifetime of `lifetime` should be replaced.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let early = lifetime.saturating_sub(Duration::from_secs(60));
    let fraction = lifetime.mul_f64(0.8);
    early.min(fraction)
}

impl TokenSource {
    pub fn new(url: Uri, key: Secret, allow_http: bool) -> TokenSource {
        TokenSource { url, key, allow_http, current: Mutex::new(None) }
    }

    /// The `Authorization` value to send now, exchanging the key when needed.
    pub async fn authorization(&self, upstream: &Upstream) -> Result<HeaderValue, OAuthError> {
        let mut current = self.current.lock().await;
        if let Some((token, refresh_at)) = current.as_ref() {
            if Instant::now() < *refresh_at {
                return bearer(token);
            }
        }
        if self.url.scheme_str() != Some("https") && !(self.allow_http && is_loopback(&self.url)) {
            return Err(OAuthError::NotHttps);
        }
        let form = format!("grant_type=client_credentials&client_secret={}", form_encode(self.key.expose()));
        let (status, body) = upstream.post_form(&self.url, form, 64 << 10).await.map_err(OAuthError::Exchange)?;
        if !status.is_success() {
            return Err(OAuthError::Status(status));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| OAuthError::NotAToken)?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600).max(1));
        let token = Secret::new(parsed.access_token);
        let value = bearer(&token)?;
        tracing::debug!(lifetime_seconds = lifetime.as_secs(), "upstream token obtained");
        *current = Some((token, Instant::now() + refresh_after(lifetime)));
        Ok(value)
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
    }

    #[test]
    fn debug_never_shows_the_key() {
        let source = TokenSource::new("https://x/t".parse().unwrap(), Secret::new("supersecret"), false);
        assert!(!format!("{source:?}").contains("supersecret"));
    }
}
