//! The transactional outbox (`outbox_events`) and the claims on deliveries.
//!
//! An agent's state write and the events it raised go in one transaction
//! (see `batch`), so an event exists exactly when its change does. A node
//! then dispatches undispatched events (each turned into one notification
//! per subscription that wants it, and marked dispatched, in one
//! transaction) and claims due notifications to deliver. A claim names the
//! node and its lease token: it holds while that lease is live in
//! `cluster_leases` and may be taken over once it is not.

use std::collections::HashSet;

use super::notifications::Notification;
use super::{OutboxEvent, Pool, Store, StoreError, with_pool};

/// The insert of one event (a macro: the query type differs per database).
macro_rules! insert_event {
    ($event:expr) => {
        sqlx::query(
            "INSERT INTO outbox_events (id, event_type, occurred_at_ms, payload, tenant, \
             trace_context) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind($event.id.as_str())
        .bind($event.event_type.as_str())
        .bind($event.occurred_at_ms)
        .bind($event.payload.as_str())
        .bind($event.tenant.as_str())
        .bind($event.trace_context.as_deref())
    };
}
pub(super) use insert_event;

/// The insert of one audit entry (a macro: the query type differs per
/// database).
macro_rules! insert_audit {
    ($entry:expr) => {
        sqlx::query(
            "INSERT INTO audit_log (id, tenant, actor, action, target, correlation_id, \
             outcome, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind($entry.id.as_str())
        .bind($entry.tenant.as_str())
        .bind($entry.actor.as_str())
        .bind($entry.action.as_str())
        .bind($entry.target.as_str())
        .bind($entry.correlation_id.as_deref())
        .bind($entry.outcome.as_str())
        .bind($entry.at_ms)
    };
}
pub(super) use insert_audit;

/// Writes a change's events in its transaction: audit entries to the audit
/// log, the rest to the outbox.
macro_rules! write_events {
    ($tx:expr, $events:expr) => {
        for event in $events {
            match valueverse_runtime::AuditEntry::of_event(event) {
                Some(entry) => {
                    $crate::outbox::insert_audit!(entry)
                        .execute(&mut *$tx)
                        .await?;
                }
                None => {
                    $crate::outbox::insert_event!(event)
                        .execute(&mut *$tx)
                        .await?;
                }
            }
        }
    };
}
pub(super) use write_events;

/// The node and lease token a claim is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant<'a> {
    pub node: &'a str,
    pub token: i64,
}

/// What one dispatch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dispatched {
    pub events: usize,
    pub notifications: usize,
}

/// A claimed delivery; `taken_from` names the node whose lapsed claim
/// this one replaced (none for a claim of an unclaimed notification).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClaimedDelivery {
    #[sqlx(flatten)]
    pub notification: Notification,
    pub taken_from: Option<String>,
}

/// Depth and age of what waits in the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxStats {
    pub undispatched_events: i64,
    pub pending_deliveries: i64,
    /// When the oldest event not dispatched, or the oldest notification not
    /// delivered, was raised (ms since the epoch).
    pub oldest_undelivered_ms: Option<i64>,
}

/// True where `{alias}.{node}`/`{alias}.{token}` name no live lease at
/// `now` (bound as `$now`): the SQL of "this claim has lapsed".
fn lapsed(alias: &str, node: &str, token: &str, now: &str) -> String {
    format!(
        "({alias}.{node} IS NULL OR NOT EXISTS (SELECT 1 FROM cluster_leases l \
         WHERE l.node = {alias}.{node} AND l.token = {alias}.{token} AND l.expires_at_ms > {now}))"
    )
}

const ACTIVE_SUBSCRIPTIONS: &str = "SELECT body FROM subscriptions WHERE status = 'active'";
/// `(key, body)` of the active subscriptions: the key names the tenant.
const ACTIVE_SUBSCRIPTION_ROWS: &str = "SELECT id, body FROM subscriptions WHERE status = 'active'";

/// The columns of a [`Notification`].
const NOTIFICATION_COLUMNS: &str = "id, subscription_id, event_id, event_type, payload, status, \
     attempts, created_at_ms, updated_at_ms, due_at_ms, attempt_limit, takeovers, claimed_by, \
     claim_token, trace_context";

/// An event taken out of the outbox: id, type, payload, tenant, trace.
type Taken = (String, String, String, String, Option<String>);

/// The SQL of "the claimant's own lease is live": a node whose lease
/// ended claims nothing.
const CLAIMANT_LIVE: &str = "EXISTS (SELECT 1 FROM cluster_leases l \
     WHERE l.node = $1 AND l.token = $2 AND l.expires_at_ms > $3)";

impl Store {
    /// Writes events on their own (a handler that emitted without changing
    /// its state).
    pub async fn append_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            write_events!(tx, events);
            tx.commit().await
        })?;
        Ok(())
    }

    /// The bodies of the active subscriptions.
    pub async fn active_subscriptions(&self) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(ACTIVE_SUBSCRIPTIONS).fetch_all(pool).await
        })?)
    }

    /// Whether any event waits to be dispatched (a read: no write
    /// transaction while the outbox is empty).
    pub async fn has_undispatched_events(&self) -> Result<bool, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox_events)")
            .fetch_one(pool)
            .await
        })?)
    }

    /// Takes up to `limit` events out of the outbox, reads the active
    /// subscriptions (their bodies, handed to `wanting`, which answers who
    /// wants an event type), and writes one pending notification per
    /// wanting subscription (none twice: a unique index), all in one
    /// transaction: the subscriptions are those committed before the
    /// events were taken. On PostgreSQL other nodes skip the events this one
    /// holds (`SKIP LOCKED`). The first `claim.1` notifications are written
    /// claimed by `claim.0` and answered, for it to attempt at once.
    pub async fn dispatch_events<W: Fn(&str, &str) -> Vec<String>>(
        &self,
        limit: i64,
        now: i64,
        attempt_limit: i64,
        wanting: impl FnOnce(Vec<(String, String)>) -> W,
        claim: Option<(Claimant<'_>, usize)>,
    ) -> Result<(Dispatched, Vec<Notification>), StoreError> {
        let lock = match self.pool {
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Pool::Sqlite(_) => "",
        };
        let take = format!(
            "DELETE FROM outbox_events WHERE id IN \
             (SELECT id FROM outbox_events ORDER BY id LIMIT $1{lock}) \
             RETURNING id, event_type, payload, tenant, trace_context"
        );
        let (claimant, claimable) = match claim {
            Some((claimant, count)) => (Some(claimant), count),
            None => (None, 0),
        };
        let mut done = Dispatched::default();
        let mut rows: Vec<Notification> = Vec::new();
        let inserted = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let events: Vec<Taken> = sqlx::query_as(&take)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            done.events = events.len();
            // Read after the events were taken (the first statement wrote:
            // no lock upgrade on SQLite).
            let bodies: Vec<(String, String)> = if events.is_empty() {
                Vec::new()
            } else {
                sqlx::query_as(ACTIVE_SUBSCRIPTION_ROWS)
                    .fetch_all(&mut *tx)
                    .await?
            };
            let wanting = wanting(bodies);
            for (event_id, event_type, payload, tenant, trace_context) in events {
                // Only the event's tenant's subscriptions hear of it.
                for subscription_id in wanting(&event_type, &tenant) {
                    let claimed = rows.len() < claimable;
                    rows.push(Notification {
                        id: uuid::Uuid::now_v7().to_string(),
                        subscription_id,
                        event_id: event_id.clone(),
                        event_type: event_type.clone(),
                        payload: payload.clone(),
                        status: "pending".into(),
                        attempts: 0,
                        created_at_ms: now,
                        updated_at_ms: now,
                        due_at_ms: now,
                        attempt_limit,
                        takeovers: 0,
                        claimed_by: claimant.filter(|_| claimed).map(|c| c.node.to_owned()),
                        claim_token: claimant.filter(|_| claimed).map(|c| c.token),
                        trace_context: trace_context.clone(),
                    });
                }
            }
            let inserted = tx.insert_all(&rows).await?;
            tx.commit().await.map(|()| inserted)
        })?;
        done.notifications = inserted.len();
        rows.retain(|row| row.claimed_by.is_some() && inserted.contains(&row.id));
        Ok((done, rows))
    }

    /// Claims up to `limit` due pending notifications for `claimant`:
    /// unclaimed ones, those whose claimant's lease is no longer live, and
    /// those claimed before `stale_before_ms` (longer ago than an attempt
    /// can take: the node lost track of them). Nothing while the claimant's
    /// own lease is not live.
    pub async fn claim_deliveries(
        &self,
        claimant: Claimant<'_>,
        limit: i64,
        now: i64,
        stale_before_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let lock = match self.pool {
            Pool::Postgres(_) => " FOR UPDATE OF n SKIP LOCKED",
            Pool::Sqlite(_) => "",
        };
        // SQLite's RETURNING sees only the updated table: the previous
        // claimant is copied into `taken_from` to come back.
        let sql = format!(
            "UPDATE notifications SET claimed_by = $1, claim_token = $2, claimed_at_ms = $3, \
             takeovers = takeovers + CASE WHEN picked.previous IS NULL THEN 0 ELSE 1 END, \
             taken_from = picked.previous \
             FROM (SELECT n.id AS picked_id, n.claimed_by AS previous FROM notifications n \
                   WHERE n.status = 'pending' AND n.due_at_ms <= $3 \
                   AND ({lapsed} OR n.claimed_at_ms < $5) \
                   ORDER BY n.due_at_ms LIMIT $4{lock}) AS picked \
             WHERE id = picked.picked_id AND {CLAIMANT_LIVE} \
             RETURNING {NOTIFICATION_COLUMNS}, taken_from",
            lapsed = lapsed("n", "claimed_by", "claim_token", "$3"),
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(claimant.node)
                .bind(claimant.token)
                .bind(now)
                .bind(limit)
                .bind(stale_before_ms)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Depth and age of the outbox, over the whole store.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let (undispatched_events, pending_deliveries, oldest_event, oldest_delivery): (
            i64,
            i64,
            Option<i64>,
            Option<i64>,
        ) = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM outbox_events), \
                 (SELECT COUNT(*) FROM notifications WHERE status = 'pending'), \
                 (SELECT MIN(occurred_at_ms) FROM outbox_events), \
                 (SELECT MIN(created_at_ms) FROM notifications WHERE status = 'pending')",
            )
            .fetch_one(pool)
            .await
        })?;
        Ok(OutboxStats {
            undispatched_events,
            pending_deliveries,
            oldest_undelivered_ms: match (oldest_event, oldest_delivery) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        })
    }

    /// Queued or running simulation jobs whose runner holds no live lease
    /// (the node died, or restarted under a new token), and those recorded
    /// as `mine` (the caller then keeps the ones it still holds), oldest
    /// first: id, runner node and token.
    pub async fn orphaned_simulations(
        &self,
        now: i64,
        mine: Option<Claimant<'_>>,
    ) -> Result<Vec<(String, Option<String>, Option<i64>)>, StoreError> {
        let sql = format!(
            "SELECT s.id, s.runner_node, s.runner_token FROM simulations s \
             WHERE s.status IN ('queued', 'running') \
             AND ({} OR (s.runner_node = $2 AND s.runner_token = $3)) \
             ORDER BY s.created_at_ms, s.id",
            lapsed("s", "runner_node", "runner_token", "$1")
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(now)
                .bind(mine.map(|me| me.node))
                .bind(mine.map(|me| me.token))
                .fetch_all(pool)
                .await
        })?)
    }
}

/// Writes new notifications (one statement on PostgreSQL); a second one
/// for the same event and subscription is skipped. Answers the ids written.
trait InsertNotifications {
    async fn insert_all(&mut self, rows: &[Notification]) -> Result<HashSet<String>, sqlx::Error>;
}

const INSERT_NOTIFICATION: &str = "INSERT INTO notifications (id, subscription_id, event_id, \
     event_type, payload, status, attempts, created_at_ms, updated_at_ms, due_at_ms, \
     attempt_limit, claimed_by, claim_token, claimed_at_ms, tenant, trace_context) ";

/// The tenant of a notification: its subscription's.
fn tenant_of(row: &Notification) -> &str {
    valueverse_runtime::split_key(&row.subscription_id).0
}

impl InsertNotifications for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn insert_all(&mut self, rows: &[Notification]) -> Result<HashSet<String>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let column = |get: fn(&Notification) -> &str| rows.iter().map(get).collect::<Vec<_>>();
        let sql = format!(
            "{INSERT_NOTIFICATION} SELECT u.id, u.subscription_id, u.event_id, u.event_type, \
             u.payload, 'pending', 0, $7, $7, $7, $8, u.claimed_by, u.claim_token, \
             CASE WHEN u.claimed_by IS NULL THEN NULL ELSE $7 END, u.tenant, u.trace_context \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $9::bigint[], $10::text[], $11::text[]) \
             AS u(id, subscription_id, event_id, event_type, payload, claimed_by, claim_token, tenant, trace_context) \
             ON CONFLICT (event_id, subscription_id) DO NOTHING RETURNING id"
        );
        let ids: Vec<String> = sqlx::query_scalar(&sql)
            .bind(column(|row| &row.id))
            .bind(column(|row| &row.subscription_id))
            .bind(column(|row| &row.event_id))
            .bind(column(|row| &row.event_type))
            .bind(column(|row| &row.payload))
            .bind(
                rows.iter()
                    .map(|row| row.claimed_by.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(rows[0].created_at_ms)
            .bind(rows[0].attempt_limit)
            .bind(rows.iter().map(|row| row.claim_token).collect::<Vec<_>>())
            .bind(rows.iter().map(tenant_of).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|row| row.trace_context.as_deref())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut **self)
            .await?;
        Ok(ids.into_iter().collect())
    }
}

impl InsertNotifications for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn insert_all(&mut self, rows: &[Notification]) -> Result<HashSet<String>, sqlx::Error> {
        let sql = format!(
            "{INSERT_NOTIFICATION} VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6, $7, $8, $9, \
             CASE WHEN $8 IS NULL THEN NULL ELSE $6 END, $10, $11) \
             ON CONFLICT (event_id, subscription_id) DO NOTHING"
        );
        let mut written = HashSet::new();
        for row in rows {
            let done = sqlx::query(&sql)
                .bind(&row.id)
                .bind(&row.subscription_id)
                .bind(&row.event_id)
                .bind(&row.event_type)
                .bind(&row.payload)
                .bind(row.created_at_ms)
                .bind(row.attempt_limit)
                .bind(&row.claimed_by)
                .bind(row.claim_token)
                .bind(tenant_of(row))
                .bind(row.trace_context.as_deref())
                .execute(&mut **self)
                .await?;
            if done.rows_affected() == 1 {
                written.insert(row.id.clone());
            }
        }
        Ok(written)
    }
}
