//! The store as the runtime's state port: instances' state in the generic
//! `agent_state` rows or in their kind's own table, version-checked, with
//! the outbox written in the same transaction.

use futures_util::future::BoxFuture;
use valueverse_runtime::{Column, OutboxEvent, Place, StateError, StateStore, StateWrite};

use super::{Backend, Record, Store, StoreError};

impl From<StoreError> for StateError {
    fn from(error: StoreError) -> StateError {
        match error {
            StoreError::VersionConflict {
                kind,
                key,
                expected,
                actual,
            } => StateError::Conflict {
                kind,
                key,
                expected,
                actual,
            },
            StoreError::Codec { kind, key, reason } => StateError::Codec { kind, key, reason },
            error if error.is_unavailable() => StateError::Unavailable(Box::new(error)),
            error => StateError::Failed(Box::new(error)),
        }
    }
}

impl StateStore for Store {
    fn load(
        &self,
        place: Place,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<(i64, String)>, StateError>> {
        let store = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            Ok(match place {
                Place::Shared { kind } => store.load_state_text(kind, &key).await?,
                Place::Table(table) => store.load_record(table, &key).await?,
            })
        })
    }

    fn save(&self, write: StateWrite) -> BoxFuture<'static, Result<i64, StateError>> {
        let store = self.clone();
        Box::pin(async move {
            let StateWrite {
                place,
                key,
                body,
                columns,
                expected_version,
                events,
            } = write;
            Ok(match place {
                Place::Shared { kind } => {
                    store
                        .save_state_text(kind, &key, body, expected_version, &events)
                        .await?
                }
                Place::Table(table) => {
                    let mut columns = columns;
                    let tenant = valueverse_runtime::split_key(&key).0.to_owned();
                    columns.push(("tenant", Column::Text(Some(tenant))));
                    let record = Record {
                        table,
                        id: &key,
                        columns,
                        body,
                        events,
                    };
                    store.save_record(&record, expected_version).await?
                }
            })
        })
    }

    fn append_events(
        &self,
        events: Vec<OutboxEvent>,
    ) -> BoxFuture<'static, Result<(), StateError>> {
        let store = self.clone();
        Box::pin(async move { Ok(Store::append_events(&store, &events).await?) })
    }

    fn check_ready(&self) -> BoxFuture<'static, Result<(), String>> {
        let store = self.clone();
        Box::pin(async move { Store::check_ready(&store).await })
    }

    fn backend(&self) -> &'static str {
        match Store::backend(self) {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[cfg(test)]
mod tests {
    use valueverse_runtime::{Column, OutboxEvent, Place, StateError, StateStore, StateWrite};

    use crate::{Store, StoreError};

    /// The classification the runtime retries on and the API answers by.
    #[test]
    fn store_errors_map_to_the_ports_classes() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let io = StateError::from(StoreError::Database(sqlx::Error::Io(io)));
        assert!(matches!(io, StateError::Unavailable(_)), "{io}");
        let timed_out = StateError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert!(timed_out.is_unavailable(), "{timed_out}");
        let missing = StateError::from(StoreError::Database(sqlx::Error::RowNotFound));
        assert!(matches!(missing, StateError::Failed(_)), "{missing}");
        let conflict = StateError::from(StoreError::conflict("k", "key", 1, Some(2)));
        assert!(
            matches!(
                conflict,
                StateError::Conflict {
                    expected: 1,
                    actual: Some(2),
                    ..
                }
            ),
            "{conflict}"
        );
        let codec = StateError::from(StoreError::Codec {
            kind: "k".into(),
            key: "key".into(),
            reason: "bad".into(),
        });
        assert!(matches!(codec, StateError::Codec { .. }), "{codec}");
    }

    fn commitment(body: &str, expected_version: i64, event: &str) -> StateWrite {
        StateWrite {
            place: Place::Table("commitments"),
            key: "c-1".into(),
            body: body.into(),
            columns: vec![
                ("status", Column::Text(Some("active".into()))),
                ("model_id", Column::Text(Some("m-1".into()))),
                ("created_at_ms", Column::Int(Some(1))),
            ],
            expected_version,
            events: vec![OutboxEvent {
                id: event.into(),
                tenant: "default".into(),
                event_type: "commitment.created".into(),
                occurred_at_ms: 1,
                payload: "{}".into(),
                trace_context: None,
            }],
        }
    }

    /// Through the port, a kind's own table is written version-checked with
    /// its events: a stale write is a `Conflict`, and neither its row nor
    /// its event lands.
    #[tokio::test]
    async fn a_tables_writes_through_the_port_are_version_checked() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let port: &dyn StateStore = &store;
        let place = Place::Table("commitments");
        assert_eq!(port.load(place, "c-1").await.unwrap(), None);
        assert_eq!(
            port.save(commitment("{\"a\":1}", 0, "e-1")).await.unwrap(),
            1
        );
        let stale = port
            .save(commitment("{\"a\":2}", 0, "e-2"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                stale,
                StateError::Conflict {
                    expected: 0,
                    actual: Some(1),
                    ..
                }
            ),
            "{stale}"
        );
        assert_eq!(
            port.save(commitment("{\"a\":3}", 1, "e-3")).await.unwrap(),
            2
        );
        assert_eq!(
            port.load(place, "c-1").await.unwrap(),
            Some((2, "{\"a\":3}".into()))
        );
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!(
            stats.undispatched_events, 2,
            "e-1 and e-3, not the stale e-2"
        );
        assert_eq!(port.check_ready().await, Ok(()));
        assert_eq!(port.backend(), "sqlite");
    }
}
