//! The runtime's port to durable state: what it asks of a store (load an
//! instance's state, write it version-checked with the events the change
//! raised, append events alone) and the types of those calls. The store
//! crate implements it over SQLite and PostgreSQL; [`MemoryState`] is its
//! in-memory twin for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::Serialize;

/// State as stored, with the version its next write must expect.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedState<S> {
    pub version: i64,
    pub state: S,
}

/// A domain event as the outbox keeps it: `payload` is the event's JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub id: String,
    /// The tenant of the instance that raised it.
    pub tenant: String,
    pub event_type: String,
    pub occurred_at_ms: i64,
    pub payload: String,
    /// The raising span's [`crate::TraceContext::encode`], while spans are
    /// exported: the webhooks it causes continue that trace.
    pub trace_context: Option<String>,
}

/// The event type of an audit entry riding with a change's events: the
/// store writes it to the audit log, never to the outbox.
pub const AUDIT_EVENT: &str = "audit.entry";

/// One row of the audit log: who did what to which target, and how it
/// ended. An agent's change carries its own as an [`OutboxEvent`]
/// ([`AuditEntry::into_event`]), written in the change's transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub correlation_id: Option<String>,
    pub outcome: String,
    pub at_ms: i64,
}

impl AuditEntry {
    /// An entry made now.
    pub fn now(
        tenant: &str,
        actor: &str,
        action: &str,
        target: &str,
        correlation_id: Option<&str>,
        outcome: &str,
    ) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.to_owned(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            correlation_id: correlation_id.map(str::to_owned),
            outcome: outcome.to_owned(),
            at_ms: unix_millis(),
        }
    }

    /// The entry as an event of the change it records.
    pub fn into_event(self) -> OutboxEvent {
        OutboxEvent {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            event_type: AUDIT_EVENT.to_owned(),
            occurred_at_ms: self.at_ms,
            payload: serde_json::to_string(&self).unwrap_or_default(),
            trace_context: None,
        }
    }

    /// The entry an event of [`AUDIT_EVENT`] carries.
    pub fn of_event(event: &OutboxEvent) -> Option<AuditEntry> {
        (event.event_type == AUDIT_EVENT)
            .then(|| serde_json::from_str(&event.payload).ok())
            .flatten()
    }
}

/// A value of an indexed column of a kind's own table.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Text(Option<String>),
    Int(Option<i64>),
}

/// Where a kind keeps its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// The generic `agent_state` rows, keyed by kind and key.
    Shared { kind: &'static str },
    /// A table of the kind's own: one row per key, its state as JSON in
    /// `body`, indexed columns beside it.
    Table(&'static str),
}

/// One version-checked write of an instance's state.
#[derive(Debug, Clone)]
pub struct StateWrite {
    pub place: Place,
    pub key: String,
    /// The state's JSON ([`encode_state`]).
    pub body: String,
    /// Indexed columns (a [`Place::Table`] only).
    pub columns: Vec<(&'static str, Column)>,
    /// The version the store must still hold (0: none yet).
    pub expected_version: i64,
    /// Events the change raised: written in its transaction, only if it
    /// applies.
    pub events: Vec<OutboxEvent>,
}

/// Why the state store did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "version conflict on {kind}/{key}: write expected version {expected}, store has {actual:?}"
    )]
    Conflict {
        kind: String,
        key: String,
        expected: i64,
        actual: Option<i64>,
    },
    #[error("state of {kind}/{key} could not be encoded or decoded: {reason}")]
    Codec {
        kind: String,
        key: String,
        reason: String,
    },
    /// The store could not be reached (connection refused or lost, no
    /// connection free in time): a retry later may succeed.
    #[error("the store is unreachable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the store failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StateError {
    /// A retry later may succeed (the store, not the request, is at fault).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StateError::Unavailable(_))
    }
}

/// What the runtime asks of a store. Futures own what they need: the
/// runtime spawns them.
pub trait StateStore: Send + Sync + 'static {
    /// `(version, body)` of an instance's state, if it has any.
    fn load(
        &self,
        place: Place,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<(i64, String)>, StateError>>;

    /// Writes `write` if the store still holds its expected version;
    /// returns the new version, or [`StateError::Conflict`].
    fn save(&self, write: StateWrite) -> BoxFuture<'static, Result<i64, StateError>>;

    /// Appends events raised by a change that wrote no state.
    fn append_events(&self, events: Vec<OutboxEvent>)
    -> BoxFuture<'static, Result<(), StateError>>;

    /// The store is reachable and ready for writes (the readiness probe).
    fn check_ready(&self) -> BoxFuture<'static, Result<(), String>>;

    /// The engine's name (`sqlite`, `postgres`, `memory`).
    fn backend(&self) -> &'static str;
}

/// Encodes state the way the store keeps it (JSON text), so a handler's
/// state is encoded synchronously and written later.
pub fn encode_state<S: Serialize + ?Sized>(
    kind: &str,
    key: &str,
    state: &S,
) -> Result<String, StateError> {
    serde_json::to_string(state).map_err(|error| StateError::Codec {
        kind: kind.to_owned(),
        key: key.to_owned(),
        reason: error.to_string(),
    })
}

/// Milliseconds since the Unix epoch by the system's clock.
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// The in-memory twin of the store: the same version checks and outbox,
/// no database. For tests of the runtime and of handlers.
#[derive(Clone, Default)]
pub struct MemoryState {
    inner: Arc<Mutex<Memory>>,
}

struct Row {
    version: i64,
    body: String,
    /// Kept as a table would keep them, for tests that read them.
    columns: Vec<(&'static str, Column)>,
}

#[derive(Default)]
struct Memory {
    rows: HashMap<(Place, String), Row>,
    outbox: Vec<OutboxEvent>,
    audit: Vec<AuditEntry>,
    /// Set by a test: every call fails as an unreachable store does.
    unavailable: bool,
}

impl Memory {
    /// A change's events: audit entries to the audit log, the rest to the
    /// outbox (as the store does).
    fn keep(&mut self, events: Vec<OutboxEvent>) {
        for event in events {
            match AuditEntry::of_event(&event) {
                Some(entry) => self.audit.push(entry),
                None => self.outbox.push(event),
            }
        }
    }
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    /// The events written so far, oldest first.
    /// The audit entries written, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.lock().audit.clone()
    }

    pub fn outbox(&self) -> Vec<OutboxEvent> {
        self.lock().outbox.clone()
    }

    /// The stored `(version, body)` of a key.
    pub fn row(&self, place: Place, key: &str) -> Option<(i64, String)> {
        self.lock()
            .rows
            .get(&(place, key.to_owned()))
            .map(|row| (row.version, row.body.clone()))
    }

    /// The indexed columns last written with a key.
    pub fn columns(&self, place: Place, key: &str) -> Vec<(&'static str, Column)> {
        self.lock()
            .rows
            .get(&(place, key.to_owned()))
            .map(|row| row.columns.clone())
            .unwrap_or_default()
    }

    /// Makes every later call fail as an unreachable store does (or work
    /// again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A panicking test thread must not hide the state from the others.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reachable(memory: &Memory) -> Result<(), StateError> {
        if memory.unavailable {
            return Err(StateError::Unavailable(
                "the memory store is set unreachable".into(),
            ));
        }
        Ok(())
    }
}

fn place_kind(place: Place) -> &'static str {
    match place {
        Place::Shared { kind } => kind,
        Place::Table(table) => table,
    }
}

impl StateStore for MemoryState {
    // Each call does its work when awaited, as the store's do: a future
    // dropped unpolled changes nothing.
    fn load(
        &self,
        place: Place,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<(i64, String)>, StateError>> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            let memory = this.lock();
            MemoryState::reachable(&memory)?;
            Ok(memory
                .rows
                .get(&(place, key))
                .map(|row| (row.version, row.body.clone())))
        })
    }

    fn save(&self, write: StateWrite) -> BoxFuture<'static, Result<i64, StateError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut memory = this.lock();
            MemoryState::reachable(&memory)?;
            let row = (write.place, write.key.clone());
            let actual = memory.rows.get(&row).map(|stored| stored.version);
            if actual.unwrap_or(0) != write.expected_version {
                return Err(StateError::Conflict {
                    kind: place_kind(write.place).to_owned(),
                    key: write.key,
                    expected: write.expected_version,
                    actual,
                });
            }
            let version = write.expected_version + 1;
            memory.rows.insert(
                row,
                Row {
                    version,
                    body: write.body,
                    columns: write.columns,
                },
            );
            memory.keep(write.events);
            Ok(version)
        })
    }

    fn append_events(
        &self,
        events: Vec<OutboxEvent>,
    ) -> BoxFuture<'static, Result<(), StateError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut memory = this.lock();
            MemoryState::reachable(&memory)?;
            memory.keep(events);
            Ok(())
        })
    }

    fn check_ready(&self) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(
            async move { MemoryState::reachable(&this.lock()).map_err(|error| error.to_string()) },
        )
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, body: &str, expected_version: i64) -> StateWrite {
        StateWrite {
            place: Place::Table("things"),
            key: key.into(),
            body: body.into(),
            columns: vec![("name", Column::Text(Some(body.into())))],
            expected_version,
            events: vec![OutboxEvent {
                id: format!("{key}-{expected_version}"),
                tenant: "default".into(),
                event_type: "model.updated".into(),
                occurred_at_ms: 0,
                payload: "{}".into(),
                trace_context: None,
            }],
        }
    }

    /// The twin keeps the store's rules: 0 is "no row yet", a write that
    /// expects another version is a conflict naming the one held, events
    /// land only with a write that applies, and a future dropped unpolled
    /// changes nothing.
    #[tokio::test]
    async fn the_twin_checks_versions_as_the_store_does() {
        let store = MemoryState::new();
        let place = Place::Table("things");
        assert_eq!(store.load(place, "a").await.unwrap(), None);
        drop(store.save(write("a", "never", 0)));
        assert_eq!(store.row(place, "a"), None);
        assert_eq!(store.save(write("a", "one", 0)).await.unwrap(), 1);
        let stale = store.save(write("a", "two", 0)).await.unwrap_err();
        assert!(
            matches!(stale, StateError::Conflict { expected: 0, actual: Some(1), ref kind, .. } if kind == "things"),
            "{stale}"
        );
        let missing = store.save(write("b", "two", 3)).await.unwrap_err();
        assert!(
            matches!(missing, StateError::Conflict { actual: None, .. }),
            "{missing}"
        );
        assert_eq!(store.save(write("a", "two", 1)).await.unwrap(), 2);
        assert_eq!(
            store.load(place, "a").await.unwrap(),
            Some((2, "two".into()))
        );
        assert_eq!(
            store.columns(place, "a"),
            vec![("name", Column::Text(Some("two".into())))]
        );
        let ids: Vec<_> = store.outbox().into_iter().map(|event| event.id).collect();
        assert_eq!(ids, ["a-0", "a-1"]);
        // The shared rows of a kind are another place.
        assert_eq!(
            store
                .load(Place::Shared { kind: "things" }, "a")
                .await
                .unwrap(),
            None
        );
        store.set_unavailable(true);
        assert!(store.load(place, "a").await.unwrap_err().is_unavailable());
        assert!(store.check_ready().await.is_err());
        store.set_unavailable(false);
        assert_eq!(store.check_ready().await, Ok(()));
    }
}
