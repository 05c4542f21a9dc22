//! Quotas per tenant, on top of the per-key limits: live agent instances
//! (per node), simulation paths per hour and stored value models. The
//! node's defaults come from its config; a tenant's own (set with
//! `valueverse tenant quotas`) override them field by field.

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use valueverse_runtime::{StateError, Tenant, unix_millis};
use valueverse_store::{Store, TenantQuotaRow};

/// A tenant's quotas; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Live agent instances of the tenant on one node.
    pub max_active_instances: Option<u64>,
    /// Simulation paths the tenant's jobs may ask for in any hour.
    pub max_simulation_paths_per_hour: Option<u64>,
    /// Value models the tenant keeps (archived ones do not count).
    pub max_models: Option<u64>,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            max_active_instances: Some(100_000),
            max_simulation_paths_per_hour: Some(1_000_000_000_000),
            max_models: Some(10_000),
        }
    }
}

impl Quotas {
    /// `self` with a tenant's own values where it has them.
    fn overridden_by(self, own: &TenantQuotaRow) -> Quotas {
        let own_value = |value: Option<i64>| value.and_then(|value| u64::try_from(value).ok());
        Quotas {
            max_active_instances: own_value(own.max_active_instances).or(self.max_active_instances),
            max_simulation_paths_per_hour: own_value(own.max_simulation_paths_hour)
                .or(self.max_simulation_paths_per_hour),
            max_models: own_value(own.max_models).or(self.max_models),
        }
    }
}

/// Why a tenant may not do what it asked.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("tenant `{tenant}` {used}; its quota `{quota}` is {limit}")]
    Exceeded {
        tenant: String,
        /// The quota's name (the API's `field`).
        quota: &'static str,
        /// What the tenant holds or used, in words.
        used: String,
        limit: u64,
    },
    #[error(transparent)]
    Store(#[from] StateError),
}

/// The quotas of every tenant, as the node last read them from the store
/// (at start, then every few seconds). Cheap to clone.
#[derive(Clone)]
pub struct TenantQuotas {
    store: Store,
    defaults: Quotas,
    own: Arc<DashMap<String, TenantQuotaRow>>,
}

impl TenantQuotas {
    pub fn new(store: Store, defaults: Quotas) -> TenantQuotas {
        TenantQuotas {
            store,
            defaults,
            own: Arc::default(),
        }
    }

    /// Reads every tenant's own quotas again.
    pub async fn refresh(&self) -> Result<(), StateError> {
        let rows = self.store.tenant_quotas().await?;
        self.own
            .retain(|name, _| rows.iter().any(|(row, _)| row == name));
        for (name, quotas) in rows {
            self.own.insert(name, quotas);
        }
        Ok(())
    }

    /// A tenant's quotas as last read (the defaults before the first read).
    pub fn cached(&self, tenant: &str) -> Quotas {
        match self.own.get(tenant) {
            Some(own) => self.defaults.overridden_by(&own),
            None => self.defaults,
        }
    }

    /// A tenant's quotas as the node's refresher last read them (every
    /// few seconds): no store read on the request's path.
    pub fn of(&self, tenant: &Tenant) -> Quotas {
        self.cached(tenant.as_str())
    }

    /// Whether the tenant may keep one more value model. Models made at
    /// the same moment may pass the limit by their number.
    pub async fn check_models(&self, tenant: &Tenant, adding: u64) -> Result<(), QuotaError> {
        let Some(limit) = self.of(tenant).max_models else {
            return Ok(());
        };
        let held = u64::try_from(
            self.store
                .count_models(tenant.as_str())
                .await
                .map_err(StateError::from)?,
        )
        .unwrap_or(0);
        if held.saturating_add(adding) > limit {
            return Err(QuotaError::Exceeded {
                tenant: tenant.as_str().to_owned(),
                quota: "max_models",
                used: format!("keeps {held} value models"),
                limit,
            });
        }
        Ok(())
    }

    /// Whether the tenant may ask for `paths` more simulation paths in the
    /// hour up to now.
    pub async fn check_paths(&self, tenant: &Tenant, paths: u64) -> Result<(), QuotaError> {
        let Some(limit) = self.of(tenant).max_simulation_paths_per_hour else {
            return Ok(());
        };
        let since = unix_millis() - 3_600_000;
        let used = self
            .store
            .paths_since(tenant.as_str(), since)
            .await
            .map_err(StateError::from)?;
        let used = u64::try_from(used).unwrap_or(0);
        if used.saturating_add(paths) > limit {
            return Err(QuotaError::Exceeded {
                tenant: tenant.as_str().to_owned(),
                quota: "max_simulation_paths_per_hour",
                used: format!(
                    "asked for {used} simulation paths in the last hour, and {paths} more now"
                ),
                limit,
            });
        }
        Ok(())
    }

    /// The runtime's check before an activation: the tenant's live
    /// instances on this node at most (as last read).
    pub fn instance_quota(&self) -> valueverse_runtime::InstanceQuota {
        let quotas = self.clone();
        Arc::new(move |tenant: &str| {
            quotas
                .cached(tenant)
                .max_active_instances
                .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX))
        })
    }
}
