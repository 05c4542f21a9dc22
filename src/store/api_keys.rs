//! API keys: hashed, with a role, revocable.

use serde::Serialize;

use super::{Store, StoreError, unix_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    /// The tenant the key acts for (a `platform` key's tenant is where it
    /// was made; it reads no tenant's data).
    pub tenant: String,
    pub name: String,
    pub role: String,
    #[serde(skip)]
    pub hash: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl Store {
    /// Inserts a key, and the audit entry of its making in the same
    /// transaction.
    pub async fn insert_api_key(
        &self,
        key: &ApiKeyRow,
        audit: &valueverse_runtime::AuditEntry,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO api_keys (id, name, role, hash, created_at_ms, tenant) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.role)
            .bind(&key.hash)
            .bind(key.created_at_ms)
            .bind(&key.tenant)
            .execute(&mut *tx)
            .await?;
            super::outbox::insert_audit!(audit).execute(&mut *tx).await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// The live (not revoked) key with this hash.
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM api_keys WHERE hash = $1 AND revoked_at_ms IS NULL")
                .bind(hash)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// The keys of one tenant, revoked ones included.
    pub async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM api_keys WHERE tenant = $1 ORDER BY created_at_ms, id")
                .bind(tenant)
                .fetch_all(pool)
                .await
        })?)
    }

    /// The ids of every tenant's live keys.
    pub async fn live_api_key_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM api_keys WHERE revoked_at_ms IS NULL")
                .fetch_all(pool)
                .await
        })?)
    }

    /// Revokes a key of `tenant`, with the audit entry of its revocation in
    /// the same transaction; false when it has no live key with that id
    /// (and nothing is written).
    pub async fn revoke_api_key(
        &self,
        tenant: &str,
        id: &str,
        audit: &valueverse_runtime::AuditEntry,
    ) -> Result<bool, StoreError> {
        let revoked = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(
                "UPDATE api_keys SET revoked_at_ms = $1 \
                 WHERE id = $2 AND tenant = $3 AND revoked_at_ms IS NULL",
            )
            .bind(unix_millis())
            .bind(id)
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if rows == 1 {
                super::outbox::insert_audit!(audit).execute(&mut *tx).await?;
            }
            tx.commit().await.map(|()| rows == 1)
        })?;
        Ok(revoked)
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TenantRow {
    pub name: String,
    pub display_name: String,
    pub created_at_ms: i64,
}

impl Store {
    /// Makes a tenant; false when one of that name exists.
    pub async fn insert_tenant(&self, name: &str, display_name: &str) -> Result<bool, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO tenants (name, display_name, created_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(display_name)
            .bind(unix_millis())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(rows == 1)
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT name, display_name, created_at_ms FROM tenants WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(pool)
            .await
        })?)
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT name, display_name, created_at_ms FROM tenants ORDER BY name")
                .fetch_all(pool)
                .await
        })?)
    }
}

/// A tenant's own quotas (`None`: the node's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantQuotaRow {
    pub max_active_instances: Option<i64>,
    pub max_simulation_paths_hour: Option<i64>,
    pub max_models: Option<i64>,
}

impl Store {
    /// Every tenant's own quotas.
    pub async fn tenant_quotas(&self) -> Result<Vec<(String, TenantQuotaRow)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            name: String,
            #[sqlx(flatten)]
            quotas: TenantQuotaRow,
        }
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT name, max_active_instances, max_simulation_paths_hour, max_models \
                 FROM tenants",
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(|row| (row.name, row.quotas)).collect())
    }

    /// Sets a tenant's own quotas; false when there is no such tenant.
    pub async fn set_tenant_quotas(
        &self,
        name: &str,
        quotas: TenantQuotaRow,
    ) -> Result<bool, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE tenants SET max_active_instances = $2, max_simulation_paths_hour = $3, \
                 max_models = $4 WHERE name = $1",
            )
            .bind(name)
            .bind(quotas.max_active_instances)
            .bind(quotas.max_simulation_paths_hour)
            .bind(quotas.max_models)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(rows == 1)
    }

    /// The value models a tenant keeps (archived ones are not counted).
    pub async fn count_models(&self, tenant: &str) -> Result<i64, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM value_models WHERE tenant = $1 AND status <> 'archived'",
            )
            .bind(tenant)
            .fetch_one(pool)
            .await
        })?)
    }

    /// The simulation paths a tenant's jobs asked for since `since_ms`.
    pub async fn paths_since(&self, tenant: &str, since_ms: i64) -> Result<i64, StoreError> {
        let sum: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT CAST(SUM(paths) AS BIGINT) FROM simulations \
                 WHERE tenant = $1 AND created_at_ms >= $2",
            )
            .bind(tenant)
            .bind(since_ms)
            .fetch_one(pool)
            .await
        })?;
        Ok(sum.unwrap_or(0))
    }
}
