//! Tenants: the organization every agent instance belongs to. An instance
//! is named by `(tenant, kind, id)`; the runtime keeps the tenant inside
//! the instance's key so that every map, mailbox, placement hash, wire
//! target and stored row keyed by it is per tenant without a second field.
//!
//! The key of `(tenant, id)` is `id` for the `default` tenant when `id` has
//! no `/`, else `tenant/id`. Tenant names have no `/`, so a key splits at
//! its first `/` and the encoding is one-to-one; the default tenant's keys
//! are the keys of the release before tenants (its rows, its frames).

use std::fmt;
use std::sync::Arc;

/// The tenant whose keys are bare ids: every instance made before tenants.
pub const DEFAULT_TENANT: &str = "default";
/// Longest tenant name.
pub const MAX_TENANT_LEN: usize = 63;

/// A validated tenant name: 1 to 63 of `a-z`, `0-9` and `-`, starting with a
/// letter or digit. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

/// Why a text is not a tenant name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a tenant name: 1 to 63 characters of a-z, 0-9 and -, starting with a letter or digit"
)]
pub struct InvalidTenant(pub String);

impl Tenant {
    pub fn parse(text: &str) -> Result<Tenant, InvalidTenant> {
        let valid = !text.is_empty()
            && text.len() <= MAX_TENANT_LEN
            && text
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
            && !text.starts_with('-');
        if valid {
            Ok(Tenant(text.into()))
        } else {
            let shown: String = text.chars().take(80).collect();
            Err(InvalidTenant(shown))
        }
    }

    /// The `default` tenant.
    pub fn default_tenant() -> Tenant {
        Tenant(DEFAULT_TENANT.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        &*self.0 == DEFAULT_TENANT
    }

    /// The instance key of `(self, id)`.
    pub fn key(&self, id: &str) -> Arc<str> {
        join_key(&self.0, id)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Tenant({})", self.0)
    }
}

impl serde::Serialize for Tenant {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Tenant {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Tenant, D::Error> {
        let text = String::deserialize(deserializer)?;
        Tenant::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The instance key of `(tenant, id)` for a tenant name read back from a
/// key ([`split_key`]): keys derived from another key stay in its tenant.
pub fn join_key(tenant: &str, id: &str) -> Arc<str> {
    if tenant == DEFAULT_TENANT && !id.contains('/') {
        id.into()
    } else {
        format!("{tenant}/{id}").into()
    }
}

/// `(tenant name, id)` of an instance key ([`Tenant::key`]'s inverse). The
/// tenant part of a key that did not come from [`Tenant::key`] may not be a
/// valid name: it then names no tenant anybody belongs to.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((DEFAULT_TENANT, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["default", "acme", "a", "acme-2", "9lives"] {
            assert!(Tenant::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "-acme",
            "Acme",
            "ac me",
            "a/b",
            "a_b",
            "é",
            long.as_str(),
        ] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Keys are one-to-one: no id of one tenant gives a key of another.
    #[test]
    fn keys_split_back_to_their_tenant_and_id() {
        let default = Tenant::default_tenant();
        let acme = Tenant::parse("acme").unwrap();
        assert_eq!(&*default.key("m-1"), "m-1");
        assert_eq!(&*acme.key("m-1"), "acme/m-1");
        for tenant in [&default, &acme] {
            for id in ["m-1", "acme/m-1", "default/x", "a/b/c", "", "/"] {
                let key = tenant.key(id);
                assert_eq!(split_key(&key), (tenant.as_str(), id), "{tenant} {id:?}");
            }
        }
        assert_ne!(default.key("acme/m-1"), acme.key("m-1"));
    }
}
