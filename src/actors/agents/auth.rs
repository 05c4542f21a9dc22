//! API keys, tenants and roles. A key is `vv_` and 43 random base62
//! characters (about 256 bits); only its SHA-256 is stored, so a stolen
//! database yields no usable key. A key acts for one tenant. The tenant
//! roles are ordered: viewer (read) < editor (write) < admin (the tenant's
//! keys). `platform` is the operator's: the supervision tree, the cluster
//! and resets across tenants, and no tenant's business data.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use valueverse_runtime::{AuditEntry, StateError, Tenant};
/// A key as stored (its hash, never the key), as [`ApiKeys::list`] hands
/// it out.
pub use valueverse_store::ApiKeyRow;
use valueverse_store::{Store, StoreError, unix_millis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
    Platform,
}

impl Role {
    /// Every role, the tenant roles least first, then the operator's.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Editor, Role::Admin, Role::Platform];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Platform => "platform",
        }
    }

    /// The role of a name (`as_str`'s), if it is one.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            "platform" => Some(Role::Platform),
            _ => None,
        }
    }

    /// A role within a tenant (not the operator's).
    pub fn is_tenant_role(self) -> bool {
        self != Role::Platform
    }
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The SHA-256 of a presented credential (an API key or a token), as the
/// caches hold it.
pub fn digest(credential: &str) -> String {
    hash(credential)
}

/// Makes a key; answers its stored row and the key itself (shown once).
pub async fn create_key(
    store: &Store,
    tenant: &Tenant,
    role: Role,
    name: &str,
) -> Result<(ApiKeyRow, String), StoreError> {
    create_key_by(store, tenant, role, name, "cli", None).await
}

/// [`create_key`] by `actor`, recorded in the audit log in the key's
/// transaction.
pub async fn create_key_by(
    store: &Store,
    tenant: &Tenant,
    role: Role,
    name: &str,
    actor: &str,
    correlation_id: Option<&str>,
) -> Result<(ApiKeyRow, String), StoreError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let secret: String = (0..43)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let key = format!("vv_{secret}");
    let row = ApiKeyRow {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.as_str().to_owned(),
        name: name.to_owned(),
        role: role.as_str().to_owned(),
        hash: hash(&key),
        created_at_ms: unix_millis(),
        revoked_at_ms: None,
    };
    let audit = AuditEntry::now(
        tenant.as_str(),
        actor,
        &format!("create {} key", role.as_str()),
        &format!("api-key/{}", row.id),
        correlation_id,
        "ok",
    );
    store.insert_api_key(&row, &audit).await?;
    Ok((row, key))
}

/// The API keys in the store: the one way the API makes, lists, revokes
/// and looks them up.
#[derive(Clone)]
pub struct ApiKeys {
    store: Store,
}

impl ApiKeys {
    pub fn new(store: Store) -> ApiKeys {
        ApiKeys { store }
    }

    /// Makes a key; answers its stored row and the key itself (shown once).
    pub async fn create(
        &self,
        tenant: &Tenant,
        role: Role,
        name: &str,
        actor: &str,
        correlation_id: Option<&str>,
    ) -> Result<(ApiKeyRow, String), StateError> {
        Ok(create_key_by(&self.store, tenant, role, name, actor, correlation_id).await?)
    }

    /// Every key of `tenant`, revoked ones included; not the operator's
    /// (`platform`) keys: those are the command line's to list.
    pub async fn list(&self, tenant: &Tenant) -> Result<Vec<ApiKeyRow>, StateError> {
        let mut keys = self.store.api_keys(tenant.as_str()).await?;
        keys.retain(|key| key.role != Role::Platform.as_str());
        Ok(keys)
    }

    /// Revokes a live key of `tenant`; `false` when it has no live key `id`
    /// (an operator's key is not the tenant's to revoke).
    pub async fn revoke(
        &self,
        tenant: &Tenant,
        id: &str,
        actor: &str,
        correlation_id: Option<&str>,
    ) -> Result<bool, StateError> {
        let theirs = self.list(tenant).await?.iter().any(|key| key.id == id);
        if !theirs {
            return Ok(false);
        }
        let audit = AuditEntry::now(
            tenant.as_str(),
            actor,
            "revoke key",
            &format!("api-key/{id}"),
            correlation_id,
            "ok",
        );
        Ok(self
            .store
            .revoke_api_key(tenant.as_str(), id, &audit)
            .await?)
    }

    /// A tenant's audit log, newest first.
    pub async fn audit(
        &self,
        tenant: &Tenant,
        query: AuditFilter<'_>,
    ) -> Result<Vec<AuditEntry>, StateError> {
        Ok(self.store.audit(tenant.as_str(), query).await?)
    }

    /// Appends an entry on its own (an operator's action, a refused write).
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StateError> {
        Ok(self.store.append_audit(entry).await?)
    }

    /// The ids of every tenant's live keys (the sweep that closes the
    /// WebSockets of revoked keys).
    pub async fn live_ids(&self) -> Result<std::collections::HashSet<String>, StateError> {
        Ok(self.store.live_api_key_ids().await?.into_iter().collect())
    }

    /// Whether a tenant of this name exists.
    pub async fn tenant_exists(&self, tenant: &Tenant) -> Result<bool, StateError> {
        Ok(self.store.tenant(tenant.as_str()).await?.is_some())
    }

    /// The caller of the live key with this digest.
    async fn by_digest(&self, digest: &str) -> Result<Option<Caller>, StoreError> {
        Ok(self.store.api_key_by_hash(digest).await?.and_then(|row| {
            let role = Role::parse(&row.role)?;
            let tenant = Tenant::parse(&row.tenant).ok()?;
            Some(Caller {
                key_id: row.id,
                role,
                tenant,
                subject: None,
            })
        }))
    }
}

/// What a read of the audit log keeps.
pub use valueverse_store::AuditQuery as AuditFilter;

/// Who made a request: the API key's id or the signed-in person's
/// (the unit of per-caller limits), the role, and the tenant it acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `key_id` of an API key; `oidc:<subject>` of a person.
    pub key_id: String,
    pub role: Role,
    pub tenant: Tenant,
    /// The identity provider's subject, for a person.
    pub subject: Option<String>,
}

impl Caller {
    /// How the caller is named where its share is counted (the simulation
    /// queue's lanes and quotas) and in the audit log: `key:<id>` of an API
    /// key, `oidc:<subject>` of a person.
    pub fn lane(&self) -> String {
        if self.subject.is_some() {
            self.key_id.clone()
        } else {
            format!("key:{}", self.key_id)
        }
    }
}

/// What the cache knows of a presented key.
pub enum Cached {
    Known(Caller),
    /// Looked up lately and not found (or revoked).
    Unknown,
    /// A live key whose answer is too old: ask the store again.
    Stale,
    /// Never seen (or forgotten): ask the store.
    Miss,
}

/// Checks keys against the store, remembering recent answers. Live keys and
/// unknown ones are kept apart, so that a flood of made-up keys evicts only
/// other made-up keys.
pub struct KeyCache {
    keys: ApiKeys,
    /// How long an answer is trusted (a revocation takes effect within
    /// this time on every node).
    ttl: Duration,
    known: DashMap<String, (Caller, Instant)>,
    unknown: DashMap<String, Instant>,
    unknown_cap: usize,
}

/// Live keys remembered at most (more than any deployment has keys).
const KNOWN_CAP: usize = 100_000;

impl KeyCache {
    pub fn new(keys: ApiKeys, ttl: Duration, unknown_cap: usize) -> KeyCache {
        KeyCache {
            keys,
            ttl,
            known: DashMap::new(),
            unknown: DashMap::new(),
            unknown_cap,
        }
    }

    /// The keys behind the cache.
    pub fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// The key's digest and what the cache knows of it, without the store.
    pub fn cached(&self, key: &str) -> (String, Cached) {
        let digest = hash(key);
        if let Some(entry) = self.known.get(&digest) {
            if entry.1.elapsed() < self.ttl {
                let caller = entry.0.clone();
                return (digest, Cached::Known(caller));
            }
            return (digest, Cached::Stale);
        }
        if let Some(at) = self.unknown.get(&digest)
            && at.elapsed() < self.ttl
        {
            return (digest, Cached::Unknown);
        }
        (digest, Cached::Miss)
    }

    /// Asks the store about a digest from [`KeyCache::cached`] and remembers
    /// the answer: the caller of a live key, `None` for an unknown or
    /// revoked one.
    pub async fn look_up(&self, digest: String) -> Result<Option<Caller>, StateError> {
        let caller = self.keys.by_digest(&digest).await?;
        match &caller {
            Some(caller) => {
                if self.known.len() >= KNOWN_CAP {
                    self.known.clear();
                }
                self.unknown.remove(&digest);
                self.known.insert(digest, (caller.clone(), Instant::now()));
            }
            None => {
                if self.unknown.len() >= self.unknown_cap {
                    self.unknown.clear();
                }
                self.known.remove(&digest);
                self.unknown.insert(digest, Instant::now());
            }
        }
        Ok(caller)
    }

    /// The caller of a live key, `None` for an unknown or revoked one.
    pub async fn role_of(&self, key: &str) -> Result<Option<Caller>, StateError> {
        match self.cached(key) {
            (_, Cached::Known(caller)) => Ok(Some(caller)),
            (_, Cached::Unknown) => Ok(None),
            (digest, Cached::Miss | Cached::Stale) => self.look_up(digest).await,
        }
    }

    /// Makes every live key's answer stale: a key revoked here is refused
    /// at once (the others are asked about again, as keys already seen).
    pub fn forget_known(&self) {
        let long_ago = Instant::now()
            .checked_sub(self.ttl)
            .unwrap_or_else(Instant::now);
        for mut entry in self.known.iter_mut() {
            entry.1 = long_ago;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn made_up_keys_evict_no_live_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("keys.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let keys = ApiKeys::new(store);
        let (row, key) = keys
            .create(&Tenant::default_tenant(), Role::Editor, "ci", "test", None)
            .await
            .unwrap();
        let cache = KeyCache::new(keys, Duration::from_secs(60), 8);
        let caller = cache.role_of(&key).await.unwrap().unwrap();
        assert_eq!(
            (caller.key_id.as_str(), caller.role),
            (row.id.as_str(), Role::Editor)
        );
        for n in 0..100 {
            assert!(
                cache
                    .role_of(&format!("vv_made_up_{n}"))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert!(cache.unknown.len() <= 8, "the unknown keys are bounded");
        assert!(
            matches!(cache.cached(&key).1, Cached::Known(_)),
            "the live key is still cached"
        );
        assert!(matches!(cache.cached("vv_made_up_99").1, Cached::Unknown));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        assert!(!Role::Platform.is_tenant_role() && Role::Admin.is_tenant_role());
        assert_eq!(Role::parse("editor"), Some(Role::Editor));
        assert_eq!(Role::parse("root"), None);
    }
}
