//! Who may read what: the credentials a client presented, which credential goes upstream for
//! it (the repository's trust policy), and the authorization of private content and of closed
//! repositories. Nothing here does I/O but the OAuth exchange in `authorization`.

use http::header::HeaderValue;
use sha2::{Digest, Sha256};

use super::{Mirror, MirrorError, Target};
use crate::config::HEXPM;
use crate::oauth::OAuthError;
use crate::upstream::UpstreamError;

/// The credentials a client presented.
#[derive(Clone, Default)]
pub struct ClientCredentials {
    authorization: Option<HeaderValue>,
    /// hexmirror's own work (sync, verify): authorized for every repository it is configured
    /// for. Never built from a request.
    internal: bool,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.authorization.is_some() {
            "ClientCredentials(<redacted>)"
        } else {
            "ClientCredentials(none)"
        })
    }
}

impl ClientCredentials {
    /// What a client sent in `Authorization`.
    pub fn from_header(authorization: Option<HeaderValue>) -> Self {
        ClientCredentials { authorization, internal: false }
    }

    /// hexmirror's own requests (sync, verify, repair); they use the repository's own
    /// credential, never a client's.
    pub(crate) fn internal() -> Self {
        ClientCredentials { authorization: None, internal: true }
    }

    /// The token a client presents to hexmirror: `Bearer TOKEN`, a raw key, or the password of
    /// HTTP Basic (what `~/.netrc` gives Hex).
    pub fn token(&self) -> Option<String> {
        let value = self.authorization.as_ref()?.to_str().ok()?.trim();
        if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
            return Some(token.trim().to_string());
        }
        if let Some(encoded) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            return text.split_once(':').map(|(_, password)| password.to_string());
        }
        Some(value.to_string())
    }
}

/// The credential an upstream request carries, decided by the repository's trust policy.
#[derive(Clone)]
pub(super) enum Credential {
    None,
    /// The client's own `Authorization`, to a trusted upstream.
    Client(HeaderValue),
    /// hexmirror's own key (or the OAuth token obtained with it).
    Own,
}

impl Credential {
    /// Identifies the credential within the in-flight map only (never stored, never logged),
    /// so that one client's credentials never answer another's request.
    pub(super) fn fingerprint(&self) -> String {
        match self {
            Credential::None => "anonymous".into(),
            Credential::Own => "own".into(),
            Credential::Client(value) => hex::encode(&Sha256::digest(value.as_bytes())[..12]),
        }
    }
}

impl Mirror {
    /// Which credential goes upstream for this client: hexmirror's own for the repository if
    /// it has one; the client's own only to a trusted upstream; nothing otherwise.
    pub(super) fn credential_for(&self, target: &Target, client: &ClientCredentials) -> Credential {
        let repo = &target.repo;
        if repo.strip_headers.contains(&http::header::AUTHORIZATION) {
            return Credential::None;
        }
        if repo.auth_key.is_some() {
            return Credential::Own;
        }
        match (&client.authorization, repo.trusted) {
            (Some(value), true) => Credential::Client(value.clone()),
            _ => Credential::None,
        }
    }

    /// The `Authorization` value for a credential (exchanging hexmirror's key for a token
    /// where the repository uses OAuth).
    pub(super) async fn authorization(
        &self,
        target: &Target,
        credential: &Credential,
    ) -> Result<Option<HeaderValue>, MirrorError> {
        match credential {
            Credential::None => Ok(None),
            Credential::Client(value) => Ok(Some(value.clone())),
            Credential::Own => {
                if let Some(source) = self.inner.tokens.get(&target.repo.name) {
                    return source.authorization(&self.inner.upstream).await.map(Some).map_err(no_token);
                }
                let key = target.repo.auth_key.as_ref().map(|k| k.expose()).unwrap_or_default();
                let mut value = HeaderValue::from_str(key)
                    .map_err(|_| MirrorError::Internal("auth_key is not a valid header value".into()))?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
        }
    }

    /// After the repository answered 401 to `sent`, hexmirror's OAuth token: the value to retry
    /// with once, from a new exchange (or from another request's). `None` when there is nothing
    /// to renew (no exchange for this repository, or another credential was sent).
    pub(super) async fn renewed_authorization(
        &self,
        target: &Target,
        credential: &Credential,
        sent: Option<&HeaderValue>,
    ) -> Option<Result<HeaderValue, MirrorError>> {
        let source = self.inner.tokens.get(&target.repo.name).filter(|_| matches!(credential, Credential::Own))?;
        Some(source.renew(&self.inner.upstream, sent?).await.map_err(no_token))
    }

    /// True when hexmirror decides who may read this target (it fetches with its own key, or an
    /// access list guards it): every path under it but `/public_key` needs an authorized client,
    /// and all its content is private. hex.pm's public repository (the root paths) is never
    /// closed, whatever `[repos.hexpm]` says; its organizations are.
    pub(super) fn is_closed(&self, target: &Target) -> bool {
        let repo = &target.repo;
        let guarded = repo.auth_key.is_some() || !repo.access.tokens.is_empty() || repo.access.allow_all_clients;
        guarded && target.namespace != HEXPM
    }

    /// True when a bundle may not bring this target's content in as public: a closed target, or
    /// a hex.pm organization (private on hex.pm by definition).
    pub(super) fn is_private_by_nature(&self, target: &Target) -> bool {
        self.is_closed(target) || !target.prefix.is_empty()
    }

    /// True when the upstream can be asked with this client's own credential (a trusted
    /// upstream and no key of hexmirror's), so that its answer proves the client's access.
    pub(super) fn can_recheck(&self, target: &Target, client: &ClientCredentials) -> bool {
        !self.inner.config.offline && matches!(self.credential_for(target, client), Credential::Client(_))
    }

    /// Whether a request may go any further than `/public_key`: always for an open target; for
    /// a closed one only with the access list, the opt-in, or a credential to re-check upstream.
    /// Decided before anything is looked up, so a stranger learns nothing (same 401 for a
    /// package that exists and one that does not).
    pub(super) fn may_enter(&self, target: &Target, client: &ClientCredentials) -> bool {
        !self.is_closed(target) || self.access_allows(target, client) || self.can_recheck(target, client)
    }

    /// hexmirror's own access list, or the explicit all-clients opt-in.
    pub(super) fn access_allows(&self, target: &Target, client: &ClientCredentials) -> bool {
        let access = &target.repo.access;
        if access.allow_all_clients || client.internal {
            return true;
        }
        let Some(token) = client.token() else { return false };
        let mut allowed = subtle::Choice::from(0);
        for candidate in &access.tokens {
            allowed |= constant_time_eq(candidate.expose().as_bytes(), token.as_bytes());
        }
        allowed.into()
    }
}

/// A failed token exchange as the client sees it: a 502 whose reason is the endpoint's own
/// (never the key or a token: [`OAuthError`] holds neither).
fn no_token(e: OAuthError) -> MirrorError {
    MirrorError::Upstream(UpstreamError::NoToken(e.to_string()))
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    // Lengths are not secret enough to hide; contents are compared in constant time.
    if a.len() != b.len() {
        return subtle::Choice::from(0);
    }
    a.ct_eq(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_from_bearer_basic_and_raw() {
        let creds = |v: &str| ClientCredentials::from_header(Some(HeaderValue::from_str(v).unwrap()));
        assert_eq!(creds("Bearer abc").token().as_deref(), Some("abc"));
        // "user:s3cret" in base64
        assert_eq!(creds("Basic dXNlcjpzM2NyZXQ=").token().as_deref(), Some("s3cret"));
        assert_eq!(creds("rawkey").token().as_deref(), Some("rawkey"));
        assert_eq!(ClientCredentials::default().token(), None);
        assert!(!format!("{:?}", creds("Bearer abc")).contains("abc"));
    }
}
