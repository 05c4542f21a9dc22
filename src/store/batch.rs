//! Batching for the agents' tables. Row writes that arrive while a
//! transaction commits go together in the next one (group commit), so that
//! many agents writing through at once pay for one commit (one WAL flush)
//! instead of one each. On PostgreSQL a write batch is one statement per
//! table and kind of write (`UNNEST` of arrays), and the state loads of
//! instances activating together are one `= ANY($1)` query per table; on
//! SQLite, where the database is in-process, a write batch is the usual
//! statements in one transaction and loads are not batched.
//!
//! Each caller still waits for its own outcome: batching changes what a
//! commit costs, not what a reply promises.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::Column;
use super::records::OwnedRecord;
use super::{Pool, Store, StoreError};

/// Most items in one batch.
const MAX_BATCH: usize = 512;
/// Items waiting for a batch; a full queue makes callers wait (backpressure).
const QUEUE: usize = 4096;
/// Batches under way at once: while one waits for the database, the next fills.
const WORKERS: usize = 2;

struct Job<T, O> {
    item: T,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// Hands items to workers that run them in batches.
pub(super) struct Batcher<T, O> {
    sender: mpsc::Sender<Job<T, O>>,
}

impl<T, O> Clone for Batcher<T, O> {
    fn clone(&self) -> Self {
        Batcher {
            sender: self.sender.clone(),
        }
    }
}

impl<T, O> std::fmt::Debug for Batcher<T, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, O: Send + 'static> Batcher<T, O> {
    /// Starts the workers on the current tokio runtime; `run` answers one
    /// outcome per item, in order.
    fn start<F, Fut>(run: F) -> Batcher<T, O>
    where
        F: Fn(Vec<T>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Vec<Result<O, StoreError>>> + Send,
    {
        let (sender, receiver) = mpsc::channel::<Job<T, O>>(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WORKERS {
            let (receiver, run) = (receiver.clone(), run.clone());
            tokio::spawn(async move {
                loop {
                    let mut jobs = Vec::new();
                    if receiver.lock().await.recv_many(&mut jobs, MAX_BATCH).await == 0 {
                        return;
                    }
                    let (items, replies): (Vec<T>, Vec<_>) =
                        jobs.into_iter().map(|job| (job.item, job.reply)).unzip();
                    for (reply, outcome) in replies.into_iter().zip(run(items).await) {
                        let _ = reply.send(outcome);
                    }
                }
            });
        }
        Batcher { sender }
    }

    /// Runs `item` in the next batch; `None` when the workers are gone
    /// (their runtime ended): the caller then does it alone.
    pub(super) async fn submit(&self, item: T) -> Option<Result<O, StoreError>> {
        let (reply, outcome) = oneshot::channel();
        self.sender.send(Job { item, reply }).await.ok()?;
        outcome.await.ok()
    }
}

/// One row write: `Ok(true)` applied, `Ok(false)` the row was not at the
/// expected version.
pub(super) struct Pending {
    pub record: OwnedRecord,
    pub expected_version: i64,
    pub now: i64,
}

pub(super) type Writer = Batcher<Pending, bool>;

/// One row read: `(version, body)` of `table`'s row `id`.
pub(super) type Reader = Batcher<(&'static str, String), Option<(i64, String)>>;

/// The batchers of `store` (a store without them: they work directly).
pub(super) fn start(store: &Store) -> (Writer, Option<Reader>) {
    let writes = store.clone();
    let writer = Batcher::start(move |batch: Vec<Pending>| {
        let store = writes.clone();
        async move { write_batch(&store, batch).await }
    });
    let reader = match &store.pool {
        Pool::Postgres(pool) => {
            let pool = pool.clone();
            Some(Batcher::start(move |batch: Vec<(&'static str, String)>| {
                let pool = pool.clone();
                async move { read_batch(&pool, batch).await }
            }))
        }
        Pool::Sqlite(_) => None,
    };
    (writer, reader)
}

async fn write_batch(store: &Store, batch: Vec<Pending>) -> Vec<Result<bool, StoreError>> {
    match commit(store, &batch).await {
        Ok(applied) => applied.into_iter().map(Ok).collect(),
        Err(error) => {
            // One bad row must not fail the others: write each alone.
            tracing::debug!(%error, writes = batch.len(), "store: batch failed, writing one by one");
            let mut outcomes = Vec::with_capacity(batch.len());
            for pending in &batch {
                outcomes.push(
                    store
                        .write_record(&pending.record, pending.expected_version, pending.now)
                        .await,
                );
            }
            outcomes
        }
    }
}

async fn read_batch(
    pool: &sqlx::PgPool,
    batch: Vec<(&'static str, String)>,
) -> Vec<Result<Option<(i64, String)>, StoreError>> {
    let mut by_table: HashMap<&'static str, Vec<&str>> = HashMap::new();
    for (table, id) in &batch {
        by_table.entry(table).or_default().push(id);
    }
    let mut found: HashMap<(&str, String), (i64, String)> = HashMap::new();
    let mut failed: HashSet<&str> = HashSet::new();
    for (table, ids) in by_table {
        let sql = format!("SELECT id, version, body FROM {table} WHERE id = ANY($1)");
        match sqlx::query_as::<_, (String, i64, String)>(&sql)
            .bind(ids)
            .fetch_all(pool)
            .await
        {
            Ok(rows) => found.extend(
                rows.into_iter()
                    .map(|(id, version, body)| ((table, id), (version, body))),
            ),
            Err(error) => {
                tracing::debug!(%error, table, "store: batched read failed, reading one by one");
                failed.insert(table);
            }
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (table, id) in batch {
        outcomes.push(if failed.contains(table) {
            let sql = format!("SELECT version, body FROM {table} WHERE id = $1");
            sqlx::query_as(&sql)
                .bind(&id)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::from)
        } else {
            Ok(found.remove(&(table, id)))
        });
    }
    outcomes
}

/// Writes `batch` in one transaction; answers, per write, whether it
/// applied.
async fn commit(store: &Store, batch: &[Pending]) -> Result<Vec<bool>, StoreError> {
    let mut applied = vec![false; batch.len()];
    match &store.pool {
        Pool::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            for group in groups(batch) {
                let rows: Vec<&Pending> = group.iter().map(|&at| &batch[at]).collect();
                let sql = postgres_sql(&rows);
                let ids: HashSet<String> = bind_postgres(sqlx::query(&sql), &rows)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|row| sqlx::Row::get::<String, _>(&row, 0))
                    .collect();
                // A group holds each row once, so its id says which write.
                for at in group {
                    applied[at] = ids.contains(&batch[at].record.id);
                }
            }
            insert_postgres_events(&mut tx, batch, &applied).await?;
            tx.commit().await?;
        }
        Pool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for (at, pending) in batch.iter().enumerate() {
                let sql = super::records::single_row_sql(&pending.record, pending.expected_version);
                let query = super::records::bind_row!(
                    sqlx::query(&sql),
                    pending.record,
                    pending.expected_version,
                    pending.now
                );
                applied[at] = query.execute(&mut *tx).await?.rows_affected() == 1;
                if applied[at] {
                    super::outbox::write_events!(tx, &pending.record.events);
                }
            }
            tx.commit().await?;
        }
    }
    Ok(applied)
}

/// The events of the writes that applied, in one statement.
async fn insert_postgres_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Pending],
    applied: &[bool],
) -> Result<(), StoreError> {
    let (audit, events): (Vec<&super::OutboxEvent>, Vec<&super::OutboxEvent>) = batch
        .iter()
        .zip(applied)
        .filter(|(_, applied)| **applied)
        .flat_map(|(pending, _)| &pending.record.events)
        .partition(|event| event.event_type == valueverse_runtime::AUDIT_EVENT);
    // Audit entries to the audit log, in the same transaction.
    for event in audit {
        if let Some(entry) = valueverse_runtime::AuditEntry::of_event(event) {
            super::outbox::insert_audit!(entry)
                .execute(&mut **tx)
                .await?;
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox_events (id, event_type, occurred_at_ms, payload, tenant, trace_context) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])",
    )
    .bind(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.occurred_at_ms).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.payload.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.tenant.as_str()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.trace_context.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The batch, by index, in groups that one statement writes: same table,
/// same columns, all inserts or all updates, no row twice (a second write
/// of a row goes in a later group, after the first).
fn groups(batch: &[Pending]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<(&str, bool, Vec<&str>, usize), usize> = HashMap::new();
    let mut rounds: HashMap<(&str, &str), usize> = HashMap::new();
    for (at, pending) in batch.iter().enumerate() {
        let record = &pending.record;
        let round = rounds
            .entry((record.table, record.id.as_str()))
            .or_insert(0);
        let key = (
            record.table,
            pending.expected_version == 0,
            record.columns.iter().map(|(name, _)| *name).collect(),
            *round,
        );
        *round += 1;
        let group = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(at);
    }
    groups
}

/// One `INSERT ... SELECT FROM UNNEST` or `UPDATE ... FROM UNNEST` for a
/// group, returning the ids it wrote; binds as [`bind_postgres`] does.
fn postgres_sql(group: &[&Pending]) -> String {
    let first = &group[0].record;
    let insert = group[0].expected_version == 0;
    let names: Vec<&str> = first.columns.iter().map(|(name, _)| *name).collect();
    let types: Vec<&str> = first
        .columns
        .iter()
        .map(|(_, column)| match column {
            Column::Text(_) => "text[]",
            Column::Int(_) => "bigint[]",
        })
        .collect();
    // $1 ids, $2 now, $3 bodies, $4 expected versions, $5.. the columns.
    let arrays: String = types
        .iter()
        .enumerate()
        .map(|(index, kind)| format!(", ${}::{kind}", index + 5))
        .collect();
    let column_list: String = names.iter().map(|name| format!(", {name}")).collect();
    if insert {
        format!(
            "INSERT INTO {table} (id, version, updated_at_ms, body{column_list}) \
             SELECT u.id, 1, $2, u.body{selected} \
             FROM UNNEST($1::text[], $3::text[], $4::bigint[]{arrays}) AS u(id, body, expected{column_list}) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            table = first.table,
            selected = names
                .iter()
                .map(|name| format!(", u.{name}"))
                .collect::<String>(),
        )
    } else {
        format!(
            "UPDATE {table} AS t SET version = t.version + 1, updated_at_ms = $2, body = u.body{sets} \
             FROM UNNEST($1::text[], $3::text[], $4::bigint[]{arrays}) AS u(id, body, expected{column_list}) \
             WHERE t.id = u.id AND t.version = u.expected RETURNING t.id",
            table = first.table,
            sets = names
                .iter()
                .map(|name| format!(", {name} = u.{name}"))
                .collect::<String>(),
        )
    }
}

fn bind_postgres<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    group: &[&'q Pending],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let first = &group[0].record;
    let ids: Vec<&str> = group.iter().map(|p| p.record.id.as_str()).collect();
    let bodies: Vec<&str> = group.iter().map(|p| p.record.body.as_str()).collect();
    let expected: Vec<i64> = group.iter().map(|p| p.expected_version).collect();
    let now = group.iter().map(|p| p.now).max().unwrap_or_default();
    let mut query = query.bind(ids).bind(now).bind(bodies).bind(expected);
    for (position, (_, column)) in first.columns.iter().enumerate() {
        query = match column {
            Column::Text(_) => query.bind(
                group
                    .iter()
                    .map(|p| match &p.record.columns[position].1 {
                        Column::Text(text) => text.clone(),
                        Column::Int(_) => None,
                    })
                    .collect::<Vec<Option<String>>>(),
            ),
            Column::Int(_) => query.bind(
                group
                    .iter()
                    .map(|p| match &p.record.columns[position].1 {
                        Column::Int(number) => *number,
                        Column::Text(_) => None,
                    })
                    .collect::<Vec<Option<i64>>>(),
            ),
        };
    }
    query
}
