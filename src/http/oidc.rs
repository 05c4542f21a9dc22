//! OpenID Connect bearer tokens: verifies a JWT access or ID token against the
//! signing keys an OIDC provider publishes (its JWKS), and turns its claims
//! into an [`Identity`] (subject, tenant, roles).
//!
//! What is checked, in order:
//! 1. size (at most 8 KiB) and shape (three base64url parts);
//! 2. the header: `alg` must be one of RS256, RS384, RS512, PS256, ES256,
//!    ES384 (`none` and HMAC are refused), `kid` is required (at most 128
//!    bytes), a `crit` header is refused; `jku`, `x5u` and `jwk` headers are
//!    ignored, keys only ever come from the configured provider;
//! 3. the key: looked up by `kid` in the cached JWKS; an unknown `kid` causes
//!    one refetch (key rotation), at most one per 10 s, concurrent misses
//!    share one fetch; the key set is also refetched once it is an hour old;
//! 4. the algorithm: it comes from the key (its `alg`, or its curve for EC
//!    keys); a token whose header `alg` differs is refused;
//! 5. the signature (jsonwebtoken / ring);
//! 6. the claims: `exp` (required) and `nbf` (when present) with the leeway,
//!    `iss` exactly equal to the configured issuer, the audience in `aud`
//!    (string or array), `sub` (non-empty, at most 255 bytes), the tenant
//!    claim and the roles claim.
//!
//! Fetches from the provider (discovery and JWKS) time out after 5 s and read
//! at most 64 KiB; only `https` URLs are accepted, or `http` to a loopback
//! host. A response that was redirected is refused: build the
//! [`reqwest::Client`] with `redirect::Policy::none()` so that no request
//! leaves for another host in the first place.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `kid` accepted, in a token header or in a JWKS.
const MAX_KID_BYTES: usize = 128;
/// Longest `sub` accepted.
const MAX_SUBJECT_BYTES: usize = 255;
/// At most this much of a discovery or JWKS answer is read.
const MAX_PROVIDER_BODY_BYTES: usize = 64 * 1024;
/// At most this many usable keys are kept from a JWKS.
const MAX_KEYS: usize = 32;
/// At most this many roles are kept from the roles claim.
const MAX_ROLES: usize = 32;
/// Roles longer than this are dropped.
const MAX_ROLE_BYTES: usize = 128;
/// Longest claim path accepted in the settings.
const MAX_CLAIM_PATH_BYTES: usize = 128;
/// Largest leeway accepted in the settings.
const MAX_LEEWAY_SECONDS: u64 = 300;
/// One fetch from the provider (discovery or JWKS), connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default: not more than one fetch from the provider per this interval.
const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Default: a key set older than this is refetched (keys still in use while
/// the refetch fails).
const DEFAULT_MAX_KEY_AGE: Duration = Duration::from_secs(3600);

/// How to reach and trust an OIDC provider.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The provider's issuer identifier; a token's `iss` must equal it exactly.
    pub issuer: String,
    /// This service's identifier; it must be in a token's `aud`.
    pub audience: String,
    /// The JWKS URL; when absent it is discovered from
    /// `{issuer}/.well-known/openid-configuration` (`jwks_uri`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Dotted path to the tenant claim (a string); a top-level claim whose
    /// name is exactly this string (dots included) takes precedence.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Dotted path to the roles claim (a string or an array of strings);
    /// Keycloak: `realm_access.roles`.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, at most 300.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// Least time between two fetches of the key set (a token naming an
    /// unknown key fetches it again, at most this often), at most 3600.
    #[serde(default = "default_refresh_min_seconds")]
    pub refresh_min_seconds: u64,
    /// The provider's role that makes a person the operator (`platform`);
    /// none: no token does. The tenant roles (`viewer`, `editor`, `admin`)
    /// are taken by name, `platform` never.
    #[serde(default)]
    pub platform_role: Option<String>,
}

fn default_refresh_min_seconds() -> u64 {
    DEFAULT_MIN_REFRESH_INTERVAL.as_secs()
}

fn default_tenant_claim() -> String {
    "tenant".to_owned()
}

fn default_role_claim() -> String {
    "roles".to_owned()
}

fn default_leeway_seconds() -> u64 {
    30
}

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub subject: String,
    /// The tenant claim, matching `^[a-z0-9][a-z0-9-]{0,62}$`.
    pub tenant: String,
    /// The provider's role names (at most 32), unmapped.
    pub roles: Vec<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// `iss`.
    pub issuer: String,
}

/// Why a token was refused, or why the provider could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("invalid OIDC settings: {0}")]
    InvalidSettings(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("token algorithm {header} does not match its key's {key}")]
    AlgorithmMismatch { header: String, key: String },
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer is not the configured issuer")]
    WrongIssuer,
    #[error("token audience does not include this service")]
    WrongAudience,
    #[error("token claim `{claim}` {reason}")]
    Claim { claim: String, reason: String },
    #[error("OIDC provider unreachable: {0}")]
    ProviderUnreachable(String),
    #[error("OIDC provider answer invalid: {0}")]
    ProviderInvalid(String),
}

impl OidcError {
    /// True when the provider (not the token) is at fault: answer 503 rather
    /// than 401.
    #[must_use]
    pub fn is_provider_failure(&self) -> bool {
        matches!(
            self,
            OidcError::ProviderUnreachable(_) | OidcError::ProviderInvalid(_)
        )
    }
}

/// Verifies bearer tokens from one provider. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OidcSettings,
    /// `Some` when configured; else discovered into `RefreshState::jwks_url`.
    jwks_url: Option<Url>,
    discovery_url: Url,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Completed fetch attempts, so that waiters can tell one happened.
    attempts: AtomicU64,
    refresh: tokio::sync::Mutex<RefreshState>,
    min_refresh_interval_ms: AtomicU64,
    max_key_age_ms: AtomicU64,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<VerifyKey>>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<OidcError>,
    discovered_jwks_url: Option<Url>,
}

struct VerifyKey {
    key: DecodingKey,
    alg: KeyAlg,
}

#[derive(Clone, Copy, Debug)]
enum KeyAlg {
    /// The JWK names its algorithm, or its curve fixes it.
    Exact(Algorithm),
    /// An RSA JWK without `alg`: any of the accepted RSA algorithms.
    AnyRsa,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.inner.settings.issuer)
            .field("audience", &self.inner.settings.audience)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// Checks the settings; fetches nothing (keys are fetched on first use).
    ///
    /// # Errors
    /// [`OidcError::InvalidSettings`]: an issuer or JWKS URL that is not
    /// `https` (or `http` to a loopback host), an empty audience, an empty
    /// claim path, a leeway over 300 s.
    pub fn new(settings: OidcSettings, client: reqwest::Client) -> Result<OidcVerifier, OidcError> {
        let issuer_url = provider_url(&settings.issuer, "issuer")?;
        let jwks_url = match &settings.jwks_url {
            Some(url) => Some(provider_url(url, "jwks_url")?),
            None => None,
        };
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer_url.as_str().trim_end_matches('/')
        );
        let discovery_url = Url::parse(&discovery_url)
            .map_err(|e| OidcError::InvalidSettings(format!("issuer: {e}")))?;
        if settings.audience.is_empty() || settings.audience.len() > 255 {
            return Err(OidcError::InvalidSettings(
                "audience must be 1 to 255 bytes".to_owned(),
            ));
        }
        check_claim_path(&settings.tenant_claim, "tenant_claim")?;
        check_claim_path(&settings.role_claim, "role_claim")?;
        if settings.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(OidcError::InvalidSettings(format!(
                "leeway_seconds must be at most {MAX_LEEWAY_SECONDS}"
            )));
        }
        if settings.refresh_min_seconds > 3600 {
            return Err(OidcError::InvalidSettings(
                "refresh_min_seconds must be at most 3600".to_owned(),
            ));
        }
        let min_refresh = millis(Duration::from_secs(settings.refresh_min_seconds));
        Ok(OidcVerifier {
            inner: Arc::new(Inner {
                settings,
                jwks_url,
                discovery_url,
                client,
                keys: RwLock::new(Arc::new(KeySet::default())),
                attempts: AtomicU64::new(0),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
                min_refresh_interval_ms: AtomicU64::new(min_refresh),
                max_key_age_ms: AtomicU64::new(millis(DEFAULT_MAX_KEY_AGE)),
            }),
        })
    }

    /// For tests: the least time between two fetches from the provider
    /// (default 10 s). Never set it to zero in production: every token with an
    /// unknown `kid` would then cost a fetch.
    #[doc(hidden)]
    pub fn set_min_refresh_interval(&self, interval: Duration) {
        self.inner
            .min_refresh_interval_ms
            .store(millis(interval), Ordering::Relaxed);
    }

    /// For tests: the age after which the key set is refetched (default 1 h).
    #[doc(hidden)]
    pub fn set_max_key_age(&self, age: Duration) {
        self.inner
            .max_key_age_ms
            .store(millis(age), Ordering::Relaxed);
    }

    /// Verifies `token` (the bearer string, without `Bearer `) and returns
    /// who it speaks for. The only network access is to the provider.
    ///
    /// # Errors
    /// Why the token is refused; [`OidcError::is_provider_failure`] tells
    /// when the provider, not the token, is at fault.
    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let result = self.verify_inner(token).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "OIDC token refused");
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<Identity, OidcError> {
        let header = parse_token(token)?;
        let key = self.key_for(&header.kid).await?;
        let alg_ok = match key.alg {
            KeyAlg::Exact(alg) => alg == header.alg,
            KeyAlg::AnyRsa => matches!(
                header.alg,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256
            ),
        };
        if !alg_ok {
            return Err(OidcError::AlgorithmMismatch {
                header: format!("{:?}", header.alg),
                key: match key.alg {
                    KeyAlg::Exact(alg) => format!("{alg:?}"),
                    KeyAlg::AnyRsa => "RSA".to_owned(),
                },
            });
        }
        // Signature only: the claims are checked below, in one place.
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data =
            jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(map_jwt_error)?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Value) -> Result<Identity, OidcError> {
        let settings = &self.inner.settings;
        if !claims.is_object() {
            return Err(OidcError::Malformed(
                "claims are not a JSON object".to_owned(),
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let leeway = settings.leeway_seconds;

        let expires_at = match claims.get("exp") {
            Some(v) => numeric_date(v).ok_or_else(|| claim_error("exp", "is not a NumericDate"))?,
            None => return Err(claim_error("exp", "is missing")),
        };
        if now >= expires_at.saturating_add(leeway) {
            return Err(OidcError::Expired);
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v).ok_or_else(|| claim_error("nbf", "is not a NumericDate"))?;
            if nbf > now.saturating_add(leeway) {
                return Err(OidcError::NotYetValid);
            }
        }

        let issuer = match claims.get("iss") {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(claim_error("iss", "is not a string")),
            None => return Err(claim_error("iss", "is missing")),
        };
        if *issuer != settings.issuer {
            return Err(OidcError::WrongIssuer);
        }

        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == settings.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&settings.audience)),
            Some(_) => return Err(claim_error("aud", "is not a string or an array")),
            None => return Err(claim_error("aud", "is missing")),
        };
        if !audience_ok {
            return Err(OidcError::WrongAudience);
        }

        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if sub.is_empty() => {
                return Err(claim_error("sub", "is empty"));
            }
            Some(Value::String(sub)) if sub.len() > MAX_SUBJECT_BYTES => {
                return Err(claim_error("sub", "is longer than 255 bytes"));
            }
            Some(Value::String(sub)) => sub.clone(),
            Some(_) => return Err(claim_error("sub", "is not a string")),
            None => return Err(claim_error("sub", "is missing")),
        };

        let tenant = match claim_at(claims, &settings.tenant_claim) {
            Some(Value::String(tenant)) if valid_tenant(tenant) => tenant.clone(),
            Some(Value::String(_)) => {
                return Err(claim_error(
                    &settings.tenant_claim,
                    "is not a valid tenant (^[a-z0-9][a-z0-9-]{0,62}$)",
                ));
            }
            Some(_) => return Err(claim_error(&settings.tenant_claim, "is not a string")),
            None => return Err(claim_error(&settings.tenant_claim, "is missing")),
        };

        let roles = match claim_at(claims, &settings.role_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(role)) => usable_role(role).into_iter().collect(),
            Some(Value::Array(items)) => {
                let roles: Vec<String> = items
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(usable_role)
                    .take(MAX_ROLES)
                    .collect();
                if roles.len() == MAX_ROLES && items.len() > MAX_ROLES {
                    tracing::debug!(claim = %settings.role_claim, "OIDC roles claim truncated to {MAX_ROLES}");
                }
                roles
            }
            Some(_) => {
                return Err(claim_error(
                    &settings.role_claim,
                    "is not a string or an array of strings",
                ));
            }
        };

        Ok(Identity {
            subject,
            tenant,
            roles,
            expires_at,
            issuer: issuer.clone(),
        })
    }

    fn current_keys(&self) -> Arc<KeySet> {
        match self.inner.keys.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn store_keys(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.inner.keys.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The key for `kid`, fetching the JWKS when it is unknown or stale.
    async fn key_for(&self, kid: &str) -> Result<Arc<VerifyKey>, OidcError> {
        // Read the attempt counter before the cache: a fetch that completes
        // after the cache read is then seen as a change of the counter.
        let attempts_seen = self.inner.attempts.load(Ordering::Acquire);
        let set = self.current_keys();
        let max_age = Duration::from_millis(self.inner.max_key_age_ms.load(Ordering::Relaxed));
        let stale = set.fetched_at.is_none_or(|at| at.elapsed() >= max_age);
        if let Some(key) = set.keys.get(kid) {
            if !stale {
                return Ok(Arc::clone(key));
            }
            // Known but old: refresh if nobody else is, without waiting, and
            // keep using the key if the provider cannot be reached.
            if let Ok(state) = self.inner.refresh.try_lock()
                && let Err(e) = self.refresh(state, attempts_seen).await
            {
                tracing::warn!(error = %e, "OIDC key set refresh failed; using the cached keys");
            }
            let now_set = self.current_keys();
            if Arc::ptr_eq(&now_set, &set) {
                // Nothing newer (refresh skipped, failed or in progress).
                return Ok(Arc::clone(key));
            }
            // A newer key set decides: a key dropped from it is refused.
            return now_set
                .keys
                .get(kid)
                .cloned()
                .ok_or_else(|| OidcError::UnknownKey(kid.to_owned()));
        }
        // Unknown: wait for (or make) one fetch, then look again.
        let state = self.inner.refresh.lock().await;
        self.refresh(state, attempts_seen).await?;
        self.current_keys()
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| OidcError::UnknownKey(kid.to_owned()))
    }

    /// Fetches the JWKS unless a fetch completed since `attempts_seen` or the
    /// last one is too recent; then answers that fetch's error, if any.
    async fn refresh(
        &self,
        mut state: tokio::sync::MutexGuard<'_, RefreshState>,
        attempts_seen: u64,
    ) -> Result<(), OidcError> {
        let last_result = |state: &RefreshState| match &state.last_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        };
        if self.inner.attempts.load(Ordering::Acquire) != attempts_seen {
            return last_result(&state);
        }
        let min_interval =
            Duration::from_millis(self.inner.min_refresh_interval_ms.load(Ordering::Relaxed));
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < min_interval)
        {
            return last_result(&state);
        }
        state.last_attempt = Some(Instant::now());
        let result = self.fetch_key_set(&mut state).await;
        let outcome = match result {
            Ok(set) => {
                tracing::info!(keys = set.keys.len(), issuer = %self.inner.settings.issuer, "OIDC key set loaded");
                self.store_keys(set);
                state.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, issuer = %self.inner.settings.issuer, "OIDC key set fetch failed");
                // Discover again next time: the provider may have moved it.
                state.discovered_jwks_url = None;
                state.last_error = Some(e.clone());
                Err(e)
            }
        };
        self.inner.attempts.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    async fn fetch_key_set(&self, state: &mut RefreshState) -> Result<KeySet, OidcError> {
        let jwks_url = match (&self.inner.jwks_url, &state.discovered_jwks_url) {
            (Some(url), _) | (None, Some(url)) => url.clone(),
            (None, None) => {
                let url = self.discover().await?;
                state.discovered_jwks_url = Some(url.clone());
                url
            }
        };
        let jwks: JwksDocument = self.fetch_json(&jwks_url, "JWKS").await?;
        parse_jwks(jwks)
    }

    async fn discover(&self) -> Result<Url, OidcError> {
        let doc: DiscoveryDocument = self
            .fetch_json(&self.inner.discovery_url, "discovery")
            .await?;
        if doc.issuer != self.inner.settings.issuer {
            return Err(OidcError::ProviderInvalid(
                "discovery document names another issuer".to_owned(),
            ));
        }
        provider_url(&doc.jwks_uri, "jwks_uri").map_err(|e| match e {
            OidcError::InvalidSettings(reason) => {
                OidcError::ProviderInvalid(format!("discovery document: {reason}"))
            }
            other => other,
        })
    }

    async fn fetch_json<T: DeserializeOwned>(&self, url: &Url, what: &str) -> Result<T, OidcError> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_body(url, what))
            .await
            .map_err(|_| {
                OidcError::ProviderUnreachable(format!(
                    "{what} fetch timed out after {FETCH_TIMEOUT:?}"
                ))
            })??;
        serde_json::from_slice(&body)
            .map_err(|e| OidcError::ProviderInvalid(format!("{what} answer is not valid: {e}")))
    }

    async fn fetch_body(&self, url: &Url, what: &str) -> Result<Vec<u8>, OidcError> {
        let mut response = self
            .inner
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| OidcError::ProviderUnreachable(format!("{what} fetch: {e}")))?;
        if response.url() != url {
            return Err(OidcError::ProviderInvalid(format!(
                "{what} fetch was redirected"
            )));
        }
        let status = response.status();
        if status.is_server_error() {
            return Err(OidcError::ProviderUnreachable(format!(
                "{what} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(OidcError::ProviderInvalid(format!(
                "{what} answered {status}"
            )));
        }
        let too_large = || {
            OidcError::ProviderInvalid(format!(
                "{what} answer exceeds {MAX_PROVIDER_BODY_BYTES} bytes"
            ))
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_PROVIDER_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OidcError::ProviderUnreachable(format!("{what} read: {e}")))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_PROVIDER_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

/// One JWK, as far as it is read.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// The usable signing keys of a JWKS; keys that cannot be used (encryption
/// keys, symmetric keys, unknown types or curves, malformed) are skipped.
fn parse_jwks(doc: JwksDocument) -> Result<KeySet, OidcError> {
    let mut keys = HashMap::new();
    for raw in doc.keys {
        let Ok(jwk) = serde_json::from_value::<RawJwk>(raw) else {
            tracing::debug!("OIDC JWKS: skipping a malformed key");
            continue;
        };
        let Some(kid) = jwk
            .kid
            .clone()
            .filter(|k| !k.is_empty() && k.len() <= MAX_KID_BYTES)
        else {
            tracing::debug!("OIDC JWKS: skipping a key without a usable kid");
            continue;
        };
        let Some(key) = usable_key(&jwk) else {
            tracing::debug!(kid = %kid, kty = %jwk.kty, "OIDC JWKS: skipping a key it cannot use");
            continue;
        };
        if keys.contains_key(&kid) {
            tracing::warn!(kid = %kid, "OIDC JWKS: duplicate kid, keeping the first");
            continue;
        }
        if keys.len() == MAX_KEYS {
            tracing::warn!("OIDC JWKS: more than {MAX_KEYS} usable keys, ignoring the rest");
            break;
        }
        keys.insert(kid, Arc::new(key));
    }
    if keys.is_empty() {
        return Err(OidcError::ProviderInvalid(
            "JWKS has no usable signing key".to_owned(),
        ));
    }
    Ok(KeySet {
        keys,
        fetched_at: Some(Instant::now()),
    })
}

fn usable_key(jwk: &RawJwk) -> Option<VerifyKey> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return None;
    }
    match jwk.kty.as_str() {
        "EC" => {
            let (alg, coordinate_len) = match jwk.crv.as_deref()? {
                "P-256" => (Algorithm::ES256, 32),
                "P-384" => (Algorithm::ES384, 48),
                _ => return None,
            };
            if jwk.alg.as_deref().is_some_and(|a| a != format!("{alg:?}")) {
                return None;
            }
            let x = URL_SAFE_NO_PAD.decode(jwk.x.as_deref()?).ok()?;
            let y = URL_SAFE_NO_PAD.decode(jwk.y.as_deref()?).ok()?;
            if x.len() != coordinate_len || y.len() != coordinate_len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Some(VerifyKey {
                key: DecodingKey::from_ec_der(&point),
                alg: KeyAlg::Exact(alg),
            })
        }
        "RSA" => {
            let alg = match jwk.alg.as_deref() {
                None => KeyAlg::AnyRsa,
                Some("RS256") => KeyAlg::Exact(Algorithm::RS256),
                Some("RS384") => KeyAlg::Exact(Algorithm::RS384),
                Some("RS512") => KeyAlg::Exact(Algorithm::RS512),
                Some("PS256") => KeyAlg::Exact(Algorithm::PS256),
                Some(_) => return None,
            };
            let n = URL_SAFE_NO_PAD.decode(jwk.n.as_deref()?).ok()?;
            let e = URL_SAFE_NO_PAD.decode(jwk.e.as_deref()?).ok()?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            // ring verifies 2048- to 8192-bit moduli; e fits in 32 bits.
            if !(256..=1024).contains(&n.len()) || e.is_empty() || e.len() > 4 {
                return None;
            }
            Some(VerifyKey {
                key: DecodingKey::from_rsa_raw_components(n, e),
                alg,
            })
        }
        _ => None,
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

struct TokenHeader {
    alg: Algorithm,
    kid: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// Size, shape and header checks; nothing is fetched before these pass.
fn parse_token(token: &str) -> Result<TokenHeader, OidcError> {
    let malformed = |reason: &str| OidcError::Malformed(reason.to_owned());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(OidcError::Malformed(format!(
            "token is {} bytes, more than {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(malformed("token has characters outside base64url"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("token is not three dot-separated parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: RawHeader = serde_json::from_slice(&header)
        .map_err(|_| malformed("header is not a JSON object with a string `alg`"))?;
    let alg = match header.alg.as_str() {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        other => {
            return Err(OidcError::UnsupportedAlgorithm(
                other.chars().take(32).collect(),
            ));
        }
    };
    if header.crit.is_some() {
        return Err(malformed("header has `crit` extensions"));
    }
    let kid = match header.kid {
        Some(kid) if kid.is_empty() => return Err(malformed("header `kid` is empty")),
        Some(kid) if kid.len() > MAX_KID_BYTES => {
            return Err(malformed("header `kid` is longer than 128 bytes"));
        }
        Some(kid) => kid,
        None => return Err(malformed("header has no `kid`")),
    };
    if payload.is_empty() || signature.is_empty() {
        return Err(malformed("token has an empty payload or signature"));
    }
    Ok(TokenHeader { alg, kid })
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> OidcError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => OidcError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            OidcError::UnsupportedAlgorithm("rejected by jsonwebtoken".to_owned())
        }
        ErrorKind::Base64(_) => OidcError::Malformed("a part is not base64url".to_owned()),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            OidcError::Malformed("header or claims are not JSON".to_owned())
        }
        _ => OidcError::Malformed(format!("{e}")),
    }
}

/// `https`, or `http` to a loopback host; no credentials, query or fragment.
fn provider_url(raw: &str, field: &str) -> Result<Url, OidcError> {
    let invalid = |reason: &str| OidcError::InvalidSettings(format!("{field}: {reason}"));
    let url = Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    let host = url.host_str().ok_or_else(|| invalid("has no host"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => return Err(invalid("must be https (http only for a loopback host)")),
        _ => return Err(invalid("must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(url)
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<Ipv6Addr>().ok())
            .is_some_and(|ip| ip.is_loopback())
}

fn check_claim_path(path: &str, field: &str) -> Result<(), OidcError> {
    if path.is_empty() || path.len() > MAX_CLAIM_PATH_BYTES || path.split('.').any(str::is_empty) {
        return Err(OidcError::InvalidSettings(format!(
            "{field} must be a dotted claim path of at most {MAX_CLAIM_PATH_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The claim named exactly `path`, else the one at the dotted `path`.
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, segment| value.get(segment))
}

fn numeric_date(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    value
        .as_f64()
        .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
        .map(|f| f.floor() as u64)
}

fn valid_tenant(tenant: &str) -> bool {
    let Some((first, rest)) = tenant.as_bytes().split_first() else {
        return false;
    };
    tenant.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn usable_role(role: &str) -> Option<String> {
    (!role.is_empty() && role.len() <= MAX_ROLE_BYTES).then(|| role.to_owned())
}

fn claim_error(claim: &str, reason: &str) -> OidcError {
    OidcError::Claim {
        claim: claim.to_owned(),
        reason: reason.to_owned(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl OidcVerifier {
    /// The provider's role that makes a person the operator, if any.
    pub fn platform_role(&self) -> Option<&str> {
        self.inner.settings.platform_role.as_deref()
    }
}

impl OidcSettings {
    /// Checks the settings as [`OidcVerifier::new`] does (a node refuses to
    /// start on bad ones, naming the field).
    pub fn check(&self) -> Result<(), OidcError> {
        OidcVerifier::new(self.clone(), reqwest::Client::new()).map(|_| ())
    }
}
