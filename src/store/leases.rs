//! Node leases (`cluster_leases`): each node holds a row it renews while it
//! runs. Expiry is what takes a silent node out of placement; the token,
//! larger at every acquisition, fences an older run of the same node.

use serde::Serialize;

use super::{Store, StoreError, unix_millis, with_pool};

/// A node's lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Lease {
    pub node: String,
    pub token: i64,
    pub transport_addr: String,
    pub http_addr: String,
    #[serde(skip)]
    pub proof: String,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
    /// The agent kinds the node hosts, comma-separated and sorted.
    pub kinds: String,
    pub gpus: i64,
}

/// What a node claims when it takes its lease; `proof` signs the rest.
#[derive(Debug, Clone, Copy)]
pub struct LeaseClaim<'a> {
    pub node: &'a str,
    pub transport_addr: &'a str,
    pub http_addr: &'a str,
    pub kinds: &'a str,
    pub gpus: i64,
    pub proof: &'a str,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The lease expired before the renewal: the node takes a new one.
    Lapsed,
    /// Another run of the node holds it (or the row is gone).
    TakenOver,
}

impl Lease {
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

impl Store {
    /// Takes (or takes over) `node`'s lease with a token larger than any
    /// before it; answers the token.
    pub async fn acquire_lease(
        &self,
        claim: LeaseClaim<'_>,
        ttl_ms: i64,
    ) -> Result<i64, StoreError> {
        // Tokens are unique (an index): an acquisition that raced another
        // to the same token fails and computes the next one.
        let mut attempt = 0;
        loop {
            let now = unix_millis();
            let token: Result<i64, sqlx::Error> = with_pool!(self, pool => {
                sqlx::query_scalar(
                    "INSERT INTO cluster_leases (node, token, transport_addr, http_addr, proof, \
                     acquired_at_ms, expires_at_ms, kinds, gpus) \
                     VALUES ($1, (SELECT COALESCE(MAX(token), 0) + 1 FROM cluster_leases), \
                     $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (node) DO UPDATE SET \
                     token = (SELECT COALESCE(MAX(token), 0) + 1 FROM cluster_leases), \
                     transport_addr = excluded.transport_addr, http_addr = excluded.http_addr, \
                     proof = excluded.proof, kinds = excluded.kinds, gpus = excluded.gpus, \
                     acquired_at_ms = excluded.acquired_at_ms, expires_at_ms = excluded.expires_at_ms \
                     RETURNING token",
                )
                .bind(claim.node)
                .bind(claim.transport_addr)
                .bind(claim.http_addr)
                .bind(claim.proof)
                .bind(now)
                .bind(now + ttl_ms)
                .bind(claim.kinds)
                .bind(claim.gpus)
                .fetch_one(pool)
                .await
            });
            match token {
                Err(sqlx::Error::Database(_)) if attempt < 5 => attempt += 1,
                outcome => return Ok(outcome?),
            }
        }
    }

    /// Extends `node`'s lease if it still holds `token` and the lease is
    /// live. A lapsed lease is not brought back under the same token:
    /// others may have taken over what was claimed under it, and the node
    /// takes a new lease instead.
    pub async fn renew_lease(
        &self,
        node: &str,
        token: i64,
        ttl_ms: i64,
    ) -> Result<Renewal, StoreError> {
        let now = unix_millis();
        let renewed = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE cluster_leases SET expires_at_ms = $3 \
                 WHERE node = $1 AND token = $2 AND expires_at_ms > $4",
            )
            .bind(node)
            .bind(token)
            .bind(now + ttl_ms)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if renewed == 1 {
            return Ok(Renewal::Renewed);
        }
        let held: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT token FROM cluster_leases WHERE node = $1")
                .bind(node)
                .fetch_optional(pool)
                .await
        })?;
        Ok(if held == Some(token) {
            Renewal::Lapsed
        } else {
            Renewal::TakenOver
        })
    }

    /// Gives the lease up at a clean stop, so placement moves at once.
    pub async fn release_lease(&self, node: &str, token: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE cluster_leases SET expires_at_ms = 0 WHERE node = $1 AND token = $2",
            )
            .bind(node)
            .bind(token)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Every lease, expired ones included, by node name.
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM cluster_leases ORDER BY node")
                .fetch_all(pool)
                .await
        })?)
    }
}
