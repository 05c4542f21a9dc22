//! The audit log: read by tenant with filters, appended to on its own by
//! what writes no agent state (operator actions, refused requests). There
//! is no update or delete of its rows anywhere (a test checks the source).

use valueverse_runtime::AuditEntry;

use super::{Store, StoreError, with_pool};

/// What a read of the audit log keeps, newest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditQuery<'a> {
    pub actor: Option<&'a str>,
    pub target: Option<&'a str>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<i64>,
    pub limit: i64,
}

type AuditRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
);

impl Store {
    /// Appends one entry on its own.
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            super::outbox::insert_audit!(entry).execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    /// A tenant's entries matching `query`, newest first.
    pub async fn audit(
        &self,
        tenant: &str,
        query: AuditQuery<'_>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut sql = String::from(
            "SELECT id, tenant, actor, action, target, correlation_id, outcome, at_ms \
             FROM audit_log WHERE tenant = $1",
        );
        let mut texts: Vec<&str> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        let mut next = 2;
        for (column, value) in [("actor", query.actor), ("target", query.target)] {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ${next}"));
                texts.push(value);
                next += 1;
            }
        }
        for (condition, value) in [("at_ms >=", query.since_ms), ("at_ms <", query.until_ms)] {
            if let Some(value) = value {
                numbers.push(value);
                sql.push_str(&format!(" AND {condition} ${}", next + numbers.len() - 1));
            }
        }
        let limit_at = next + numbers.len();
        sql.push_str(&format!(" ORDER BY at_ms DESC, id DESC LIMIT ${limit_at}"));
        let rows: Vec<AuditRow> = with_pool!(self, pool => {
            let mut select = sqlx::query_as(&sql).bind(tenant);
            for text in &texts {
                select = select.bind(*text);
            }
            for number in &numbers {
                select = select.bind(*number);
            }
            select.bind(query.limit).fetch_all(pool).await
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(id, tenant, actor, action, target, correlation_id, outcome, at_ms)| AuditEntry {
                    id,
                    tenant,
                    actor,
                    action,
                    target,
                    correlation_id,
                    outcome,
                    at_ms,
                },
            )
            .collect())
    }
}
