//! API keys and roles. A key is `vv_` and 43 random base62 characters
//! (about 256 bits); only its SHA-256 is stored, so a stolen database
//! yields no usable key. Roles are ordered: viewer (read) < editor (write)
//! < admin (keys, actors, operations).

use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{ApiKeyRow, Store, StoreError, unix_millis};

/// How long a verified key is trusted without asking the store again (a
/// revocation takes effect within this time on every node).
const CACHE_FOR: Duration = Duration::from_secs(10);

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Makes a key; answers its stored row and the key itself (shown once).
pub async fn create_key(
    store: &Store,
    role: Role,
    name: &str,
) -> Result<(ApiKeyRow, String), StoreError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let secret: String = (0..43)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let key = format!("vv_{secret}");
    let row = ApiKeyRow {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_owned(),
        role: role.as_str().to_owned(),
        hash: hash(&key),
        created_at_ms: unix_millis(),
        revoked_at_ms: None,
    };
    store.insert_api_key(&row).await?;
    Ok((row, key))
}

/// Checks keys against the store, remembering recent answers.
#[derive(Default)]
pub struct KeyCache {
    verified: DashMap<String, (Option<Role>, Instant)>,
}

impl KeyCache {
    /// The role of a live key, `None` for an unknown or revoked one.
    pub async fn role_of(&self, store: &Store, key: &str) -> Result<Option<Role>, StoreError> {
        let digest = hash(key);
        if let Some(entry) = self.verified.get(&digest)
            && entry.1.elapsed() < CACHE_FOR
        {
            return Ok(entry.0);
        }
        let role = store
            .api_key_by_hash(&digest)
            .await?
            .and_then(|row| Role::parse(&row.role));
        // Bounded: unknown keys are cached too, so evict when it grows.
        if self.verified.len() > 10_000 {
            self.verified.clear();
        }
        self.verified.insert(digest, (role, Instant::now()));
        Ok(role)
    }

    /// Forgets everything: a key revoked here is refused at once.
    pub fn clear(&self) {
        self.verified.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        assert_eq!(Role::parse("editor"), Some(Role::Editor));
        assert_eq!(Role::parse("root"), None);
    }
}
