//! The store as the runtime's state port: instances' state in the generic
//! `agent_state` rows or in their kind's own table, version-checked, with
//! the outbox written in the same transaction.

use futures_util::future::BoxFuture;
use valueverse_runtime::{OutboxEvent, Place, StateError, StateStore, StateWrite};

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
