//! Tables owned by one agent kind: one row per instance, with the instance
//! as JSON in `body`, a row `version` checked on every write, and the
//! indexed columns the kind's queries filter on.

use super::{Column, Store, StoreError, unix_millis, with_pool};

/// One row to write: `table` has `id`, `version`, `updated_at_ms`, `body`
/// and the named columns.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub table: &'static str,
    pub id: &'a str,
    pub columns: Vec<(&'static str, Column)>,
    pub body: String,
    /// Events the change raised: written in its transaction, only if the
    /// row write applies.
    pub events: Vec<super::OutboxEvent>,
}

impl Store {
    /// `(version, body)` of a row.
    pub async fn load_record(
        &self,
        table: &'static str,
        id: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        if let Some(reader) = &self.reader
            && let Some(outcome) = reader.submit((table, id.to_owned())).await
        {
            return outcome;
        }
        let sql = format!("SELECT version, body FROM {table} WHERE id = $1");
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await
        })?)
    }

    /// Writes a row if the store still holds `expected_version` (0: new);
    /// concurrent writes share a transaction (see `batch`).
    pub async fn save_record(
        &self,
        record: &Record<'_>,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        let owned = || OwnedRecord {
            table: record.table,
            id: record.id.to_owned(),
            columns: record.columns.clone(),
            body: record.body.clone(),
            events: record.events.clone(),
        };
        let now = unix_millis();
        let batched = match &self.writer {
            Some(writer) => {
                let pending = super::batch::Pending {
                    record: owned(),
                    expected_version,
                    now,
                };
                writer.submit(pending).await
            }
            None => None,
        };
        let applied = match batched {
            Some(outcome) => outcome?,
            // No batcher (its runtime ended): write alone.
            None => self.write_record(&owned(), expected_version, now).await?,
        };
        if applied {
            return Ok(expected_version + 1);
        }
        let sql = format!("SELECT version FROM {} WHERE id = $1", record.table);
        let actual: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar(&sql).bind(record.id).fetch_optional(pool).await
        })?;
        Err(StoreError::conflict(
            record.table,
            record.id,
            expected_version,
            actual,
        ))
    }

    /// One row write on its own; `Ok(false)`: not at `expected_version`.
    pub(super) async fn write_record(
        &self,
        record: &OwnedRecord,
        expected_version: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = single_row_sql(record, expected_version);
        let applied = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let applied = bind_row!(sqlx::query(&sql), record, expected_version, now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if applied {
                super::outbox::write_events!(tx, &record.events);
            }
            tx.commit().await.map(|()| applied)
        })?;
        Ok(applied)
    }
}

/// A [`Record`] that owns its id, for a write that waits in a batch.
#[derive(Debug, Clone)]
pub(super) struct OwnedRecord {
    pub table: &'static str,
    pub id: String,
    pub columns: Vec<(&'static str, Column)>,
    pub body: String,
    pub events: Vec<super::OutboxEvent>,
}

/// The statement of one row write: binds id, now, body, the columns, and
/// for an update the expected version (see [`bind_row`]).
pub(super) fn single_row_sql(record: &OwnedRecord, expected_version: i64) -> String {
    let names: Vec<&str> = record.columns.iter().map(|(name, _)| *name).collect();
    if expected_version == 0 {
        let placeholders: Vec<String> = (0..names.len())
            .map(|index| format!("${}", index + 4))
            .collect();
        format!(
            "INSERT INTO {} (id, version, updated_at_ms, body{}{}) VALUES ($1, 1, $2, $3{}{}) \
             ON CONFLICT (id) DO NOTHING",
            record.table,
            if names.is_empty() { "" } else { ", " },
            names.join(", "),
            if names.is_empty() { "" } else { ", " },
            placeholders.join(", "),
        )
    } else {
        let sets: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(index, name)| format!(", {name} = ${}", index + 4))
            .collect();
        format!(
            "UPDATE {} SET version = version + 1, updated_at_ms = $2, body = $3{} \
             WHERE id = $1 AND version = ${}",
            record.table,
            sets.concat(),
            names.len() + 4,
        )
    }
}

/// Binds what [`single_row_sql`] expects (a macro: the query type differs
/// per database).
macro_rules! bind_row {
    ($query:expr, $record:expr, $expected_version:expr, $now:expr) => {{
        let mut query = $query
            .bind($record.id.as_str())
            .bind($now)
            .bind($record.body.as_str());
        for (_, value) in &$record.columns {
            query = match value {
                $crate::Column::Text(text) => query.bind(text.clone()),
                $crate::Column::Int(number) => query.bind(*number),
            };
        }
        if $expected_version != 0 {
            query = query.bind($expected_version);
        }
        query
    }};
}
pub(super) use bind_row;

/// A page of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Rows matching the filters, all pages together.
    pub total: i64,
    /// Bodies of this page's rows.
    pub bodies: Vec<String>,
}

/// The periodic ticks' due columns.
#[derive(Debug, Clone, Copy)]
enum Due {
    Plans,
    Statements,
    Snapshots,
}

/// What a list reads: one agent's table, filtered on the columns its
/// migrations index (`None`: that column filters nothing). Typed, so that
/// no caller writes a table's or a column's name: they are written here
/// and in the migrations only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing<'a> {
    ValueModels {
        customer: Option<&'a str>,
        industry: Option<&'a str>,
        status: Option<&'a str>,
    },
    Commitments {
        model_id: Option<&'a str>,
        status: Option<&'a str>,
    },
    Plans {
        commitment_id: Option<&'a str>,
        model_id: Option<&'a str>,
        status: Option<&'a str>,
    },
    Sagas {
        status: Option<&'a str>,
        definition: Option<&'a str>,
    },
    Subscriptions {
        status: Option<&'a str>,
    },
    Simulations,
}

impl<'a> Listing<'a> {
    /// The table, as the skipped-rows metric labels it.
    pub fn table(&self) -> &'static str {
        match self {
            Listing::ValueModels { .. } => "value_models",
            Listing::Commitments { .. } => "commitments",
            Listing::Plans { .. } => "plans",
            Listing::Sagas { .. } => "sagas",
            Listing::Subscriptions { .. } => "subscriptions",
            Listing::Simulations => "simulations",
        }
    }

    fn filters(&self) -> Vec<(&'static str, Option<&'a str>)> {
        match *self {
            Listing::ValueModels {
                customer,
                industry,
                status,
            } => vec![
                ("customer", customer),
                ("industry", industry),
                ("status", status),
            ],
            Listing::Commitments { model_id, status } => {
                vec![("model_id", model_id), ("status", status)]
            }
            Listing::Plans {
                commitment_id,
                model_id,
                status,
            } => vec![
                ("commitment_id", commitment_id),
                ("model_id", model_id),
                ("status", status),
            ],
            Listing::Sagas { status, definition } => {
                vec![("status", status), ("definition", definition)]
            }
            Listing::Subscriptions { status } => vec![("status", status)],
            Listing::Simulations => Vec::new(),
        }
    }
}

impl Store {
    /// A page of the bodies `listing` matches, newest first, with the
    /// count of all of them.
    pub async fn list(
        &self,
        tenant: &str,
        listing: Listing<'_>,
        limit: i64,
        offset: i64,
    ) -> Result<Page, StoreError> {
        let (total, bodies) = self
            .select_records(
                tenant,
                listing.table(),
                &listing.filters(),
                limit,
                offset,
                true,
            )
            .await?;
        Ok(Page {
            total: total.unwrap_or_default(),
            bodies,
        })
    }

    /// The newest `limit` bodies only: no count of all the matching rows
    /// (which a caller polling the latest rows of a large table pays for).
    pub async fn latest(
        &self,
        tenant: &str,
        listing: Listing<'_>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let (_, bodies) = self
            .select_records(tenant, listing.table(), &listing.filters(), limit, 0, false)
            .await?;
        Ok(bodies)
    }

    /// Instance keys (all tenants) of the rows of `table` whose `column`
    /// (a due time, Unix milliseconds) has come by `now_ms`, a page at a
    /// time in key order: what the periodic ticks wake.
    async fn due_keys(
        &self,
        table: Due,
        now_ms: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<String>, StoreError> {
        let (table, column) = match table {
            Due::Plans => ("plans", "next_due_ms"),
            Due::Statements => ("commitments", "next_statement_ms"),
            Due::Snapshots => ("amplifications", "snapshot_due_ms"),
        };
        let sql =
            format!("SELECT id FROM {table} WHERE {column} <= $1 ORDER BY id LIMIT $2 OFFSET $3");
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(&sql)
                .bind(now_ms)
                .bind(limit)
                .bind(offset)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Plans with a milestone come due: the executor's tick.
    pub async fn due_plan_keys(
        &self,
        now_ms: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.due_keys(Due::Plans, now_ms, limit, offset).await
    }

    /// Commitments with a statement due: the committer's tick.
    pub async fn due_statement_keys(
        &self,
        now_ms: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.due_keys(Due::Statements, now_ms, limit, offset).await
    }

    /// Models whose daily snapshot is due: the amplifier's tick.
    pub async fn due_snapshot_keys(
        &self,
        now_ms: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.due_keys(Due::Snapshots, now_ms, limit, offset).await
    }

    async fn select_records(
        &self,
        tenant: &str,
        table: &'static str,
        filters: &[(&'static str, Option<&str>)],
        limit: i64,
        offset: i64,
        counted: bool,
    ) -> Result<(Option<i64>, Vec<String>), StoreError> {
        // A list is one tenant's rows, always.
        let active: Vec<(&str, &str)> = std::iter::once(("tenant", tenant))
            .chain(
                filters
                    .iter()
                    .filter_map(|(name, value)| value.map(|value| (*name, value))),
            )
            .collect();
        let clause: String = active
            .iter()
            .enumerate()
            .map(|(index, (name, _))| {
                format!(
                    "{} {name} = ${}",
                    if index == 0 { " WHERE" } else { " AND" },
                    index + 1
                )
            })
            .collect();
        let count_sql = format!("SELECT COUNT(*) FROM {table}{clause}");
        let page_sql = format!(
            "SELECT body FROM {table}{clause} ORDER BY created_at_ms DESC, id DESC \
             LIMIT ${} OFFSET ${}",
            active.len() + 1,
            active.len() + 2
        );
        Ok(with_pool!(self, pool => {
            let mut page = sqlx::query_scalar::<_, String>(&page_sql);
            for (_, value) in &active {
                page = page.bind(*value);
            }
            let bodies = page.bind(limit).bind(offset).fetch_all(pool).await?;
            let total = if counted {
                let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
                for (_, value) in &active {
                    count = count.bind(*value);
                }
                Some(count.fetch_one(pool).await?)
            } else {
                None
            };
            Ok::<_, sqlx::Error>((total, bodies))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::{Column, Listing, Record};
    use crate::Store;

    /// Every listing names a table and columns the migrations made: each
    /// runs, with every filter set, and finds the row written to it.
    #[tokio::test]
    async fn every_listing_reads_its_table_with_every_filter() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let x = Some("x");
        let listings = [
            Listing::ValueModels {
                customer: x,
                industry: x,
                status: x,
            },
            Listing::Commitments {
                model_id: x,
                status: x,
            },
            Listing::Plans {
                commitment_id: x,
                model_id: x,
                status: x,
            },
            Listing::Sagas {
                status: x,
                definition: x,
            },
            Listing::Subscriptions { status: x },
            Listing::Simulations,
        ];
        for listing in listings {
            let page = store.list("default", listing, 10, 0).await.unwrap();
            assert_eq!((page.total, page.bodies.len()), (0, 0), "{listing:?}");
            assert!(
                store
                    .latest("default", listing, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        // A row whose filtered columns hold `x` is found by its listing.
        let record = Record {
            table: "commitments",
            id: "c1",
            columns: vec![
                ("model_id", Column::Text(Some("x".into()))),
                ("status", Column::Text(Some("x".into()))),
                ("created_at_ms", Column::Int(Some(1))),
            ],
            body: "{}".into(),
            events: Vec::new(),
        };
        store.save_record(&record, 0).await.unwrap();
        let found = store.list("default", listings[1], 10, 0).await.unwrap();
        assert_eq!((found.total, found.bodies), (1, vec!["{}".to_owned()]));
        let other = Listing::Commitments {
            model_id: Some("y"),
            status: None,
        };
        assert_eq!(store.list("default", other, 10, 0).await.unwrap().total, 0);
        // Another tenant's row is not in this tenant's list, nor the other way.
        let theirs = Record {
            table: "commitments",
            id: "acme/c1",
            columns: vec![
                ("model_id", Column::Text(Some("x".into()))),
                ("status", Column::Text(Some("x".into()))),
                ("created_at_ms", Column::Int(Some(2))),
                ("tenant", Column::Text(Some("acme".into()))),
            ],
            body: "{\"theirs\":1}".into(),
            events: Vec::new(),
        };
        store.save_record(&theirs, 0).await.unwrap();
        let ours = store.list("default", listings[1], 10, 0).await.unwrap();
        assert_eq!((ours.total, ours.bodies), (1, vec!["{}".to_owned()]));
        let acme = store.list("acme", listings[1], 10, 0).await.unwrap();
        assert_eq!(acme.bodies, vec!["{\"theirs\":1}".to_owned()]);
    }
}
