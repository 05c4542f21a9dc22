//! The `Agent` trait: what a kind of business agent declares (kind name,
//! state, messages, replies, persistence, restart strategy). The runtime does
//! the rest: activation, mailbox, supervision, passivation.

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::{
    Column, OutboxEvent, Place, StateError, StateStore, StateWrite, VersionedState, encode_state,
};

use super::envelope::{CorrelationId, Header, MessageId};
use super::error::HandlerError;
use super::supervisor::RestartStrategy;

/// A message an agent accepts. Its name labels tracing spans.
pub trait AgentMessage: Serialize + DeserializeOwned + Send + Unpin + 'static {
    /// A short, stable name of the message variant (`"create_model"`).
    fn name(&self) -> &'static str;
}

/// A kind of business agent. One instance exists per key; the runtime
/// activates it on its first message with its state loaded from the store.
///
/// Handlers are synchronous and must not block: they change `state` and
/// return a reply. A handler that changed durable state calls
/// [`Handling::persist`]; the runtime then writes the state through to the
/// store (version-checked) before the caller sees the reply.
pub trait Agent: Sized + Send + 'static {
    /// The kind name that addresses this agent (`"architect"`).
    const KIND: &'static str;
    /// State of one instance.
    type State: Serialize + DeserializeOwned + Send + Unpin + 'static;
    type Msg: AgentMessage;
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// The id of this kind's messages on the wire: explicit and stable
    /// across releases (a renamed kind keeps it; a new kind takes a new one).
    const MESSAGE_ID: u32;
    /// The version of `Msg` and `Reply` on the wire. A release that changes
    /// either bumps it; a node takes version N and N - 1 (see
    /// [`Agent::decode_message`]) and sends N - 1 to a peer that speaks only
    /// that (see [`Agent::encode_previous`]).
    const MESSAGE_VERSION: u16 = 1;

    /// Decodes a message from another node sent at `version`, which is
    /// [`Agent::MESSAGE_VERSION`] or the one before. The default reads both
    /// the same way: right for a change that only adds fields with
    /// defaults (the payload names its fields; unknown ones are skipped).
    /// A kind whose change is not additive reads version N - 1 into its
    /// own shape here.
    fn decode_message(version: u16, bytes: &[u8]) -> Result<Self::Msg, String> {
        let _ = version;
        super::remote::decode_payload(bytes)
    }

    /// Encodes `msg` for a node that speaks version N - 1 of this kind's
    /// messages. The default sends it as it is (an additive change: the
    /// older node skips the fields it does not know).
    fn encode_previous(msg: &Self::Msg) -> Result<Vec<u8>, String> {
        super::remote::encode_payload(msg)
    }

    /// Decodes a reply from another node to an ask sent at `version` (N, or
    /// N - 1 to a node of the release before). The default reads both the
    /// same way, as [`Agent::decode_message`] does.
    fn decode_reply(version: u16, bytes: &[u8]) -> Result<Self::Reply, String> {
        let _ = version;
        super::remote::decode_payload(bytes)
    }

    /// Encodes `reply` for an ask that came at version N - 1.
    fn encode_previous_reply(reply: &Self::Reply) -> Result<Vec<u8>, String> {
        super::remote::encode_payload(reply)
    }

    /// State of an instance that has nothing in the store yet.
    fn init(key: &str) -> Self::State;

    /// Handles one message. A panic or [`HandlerError::Fatal`] restarts the
    /// instance; [`HandlerError::Rejected`] only refuses this message.
    fn handle(
        state: &mut Self::State,
        msg: Self::Msg,
        ctx: &mut Handling<'_>,
    ) -> Result<Self::Reply, HandlerError>;

    /// Restart strategy of this kind unless configuration overrides it.
    fn strategy() -> RestartStrategy {
        RestartStrategy::default()
    }

    /// Loads an instance's state. The default reads the generic
    /// `agent_state` row; agents with tables of their own override it.
    fn load(
        store: &dyn StateStore,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<VersionedState<Self::State>>, StateError>> {
        let load = store.load(Place::Shared { kind: Self::KIND }, key);
        let key = key.to_owned();
        Box::pin(async move {
            let Some((version, body)) = load.await? else {
                return Ok(None);
            };
            let state = decode_state(Self::KIND, &key, &body)?;
            Ok(Some(VersionedState { version, state }))
        })
    }

    /// Saves an instance's state if the store still holds `expected_version`
    /// (0: never saved), with the events the change raised in the same
    /// transaction (the outbox); returns the new version.
    fn save(
        store: &dyn StateStore,
        key: &str,
        state: &Self::State,
        expected_version: i64,
        events: Vec<OutboxEvent>,
    ) -> BoxFuture<'static, Result<i64, StateError>> {
        match encode_state(Self::KIND, key, state) {
            Ok(body) => store.save(StateWrite {
                place: Place::Shared { kind: Self::KIND },
                key: key.to_owned(),
                body,
                columns: Vec::new(),
                expected_version,
                events,
            }),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

/// What a handler knows about the message it handles.
pub struct Handling<'a> {
    header: &'a Header,
    key: &'a str,
    persist: bool,
    /// `(type, data)` to publish once the handler succeeded and its state
    /// is saved.
    events: Vec<(&'static str, serde_json::Value)>,
}

impl<'a> Handling<'a> {
    pub(crate) fn new(header: &'a Header, key: &'a str) -> Handling<'a> {
        Handling {
            header,
            key,
            persist: false,
            events: Vec::new(),
        }
    }

    /// The context of a handler called outside any message (message id
    /// 0, no correlation id, no deadline): for unit tests of handlers.
    pub fn detached(key: &'a str) -> Handling<'a> {
        static DETACHED: Header = Header {
            message_id: MessageId(0),
            correlation_id: None,
            actor: None,
            deadline: None,
            trace: None,
        };
        Handling::new(&DETACHED, key)
    }

    /// The instance's id within its tenant (what the API calls its id).
    pub fn key(&self) -> &str {
        super::tenant::split_key(self.key).1
    }

    /// The tenant the instance belongs to.
    pub fn tenant(&self) -> &str {
        super::tenant::split_key(self.key).0
    }

    /// The instance's key: its tenant and id ([`crate::Tenant::key`]).
    pub fn instance_key(&self) -> &str {
        self.key
    }

    pub fn message_id(&self) -> MessageId {
        self.header.message_id
    }

    pub fn correlation_id(&self) -> Option<&CorrelationId> {
        self.header.correlation_id.as_ref()
    }

    /// Who the message acts for, if its sender said.
    pub fn actor(&self) -> Option<&str> {
        self.header.actor.as_deref()
    }

    /// Marks the state as changed: it is saved before the reply is sent.
    pub fn persist(&mut self) {
        self.persist = true;
    }

    pub(crate) fn wants_persist(&self) -> bool {
        self.persist
    }

    /// Announces a domain event (`model.created`...). It is published only
    /// if the handler returns `Ok` and, when it persists, once the state is
    /// written; a failed or refused message announces nothing.
    pub fn emit(&mut self, event_type: &'static str, data: impl Serialize) {
        let data = serde_json::to_value(data)
            .unwrap_or_else(|error| serde_json::json!({ "encoding_error": error.to_string() }));
        self.events.push((event_type, data));
    }

    /// The types of the events emitted so far (for unit tests of
    /// handlers).
    pub fn emitted(&self) -> Vec<&'static str> {
        self.events
            .iter()
            .map(|(event_type, _)| *event_type)
            .collect()
    }

    /// The emitted events as published, stamped with their source.
    pub(crate) fn take_events(&mut self, kind: &str) -> Vec<super::events::DomainEvent> {
        // Most messages emit nothing: no source string for them.
        if self.events.is_empty() {
            return Vec::new();
        }
        let (tenant, id) = super::tenant::split_key(self.key);
        let source = format!("{kind}/{id}");
        let tenant = tenant.to_owned();
        let correlation_id = self
            .header
            .correlation_id
            .as_ref()
            .map(|id| id.as_str().to_owned());
        self.events
            .drain(..)
            .map(|(event_type, data)| super::events::DomainEvent {
                id: uuid::Uuid::now_v7().to_string(),
                event_type: event_type.to_owned(),
                occurred_at: chrono::Utc::now(),
                source: source.clone(),
                tenant: tenant.clone(),
                correlation_id: correlation_id.clone(),
                data,
            })
            .collect()
    }
}

fn decode_state<S: DeserializeOwned>(kind: &str, key: &str, body: &str) -> Result<S, StateError> {
    serde_json::from_str(body).map_err(|error| StateError::Codec {
        kind: kind.into(),
        key: key.to_owned(),
        reason: error.to_string(),
    })
}

/// `Agent::load` for kinds with a table of their own: the row's `body` is
/// the state's JSON; no row is `Ok(None)` (an optional state's `None`).
pub fn load_json_record<S: DeserializeOwned + Send + 'static>(
    store: &dyn StateStore,
    kind: &'static str,
    table: &'static str,
    key: &str,
) -> BoxFuture<'static, Result<Option<VersionedState<Option<S>>>, StateError>> {
    let load = store.load(Place::Table(table), key);
    let key = key.to_owned();
    Box::pin(async move {
        let Some((version, body)) = load.await? else {
            return Ok(None);
        };
        Ok(Some(VersionedState {
            version,
            state: Some(decode_state(kind, &key, &body)?),
        }))
    })
}

/// `Agent::save` for kinds with a table of their own: `state` as the row's
/// body, `columns` beside it for the kind's queries.
pub fn save_json_record<S: Serialize>(
    store: &dyn StateStore,
    kind: &'static str,
    key: &str,
    state: &S,
    (table, columns): (&'static str, Vec<(&'static str, Column)>),
    expected_version: i64,
    events: Vec<OutboxEvent>,
) -> BoxFuture<'static, Result<i64, StateError>> {
    match encode_state(kind, key, state) {
        Ok(body) => store.save(StateWrite {
            place: Place::Table(table),
            key: key.to_owned(),
            body,
            columns,
            expected_version,
            events,
        }),
        Err(error) => Box::pin(std::future::ready(Err(error))),
    }
}

/// What `save` answers for an optional state that is `None` (handlers
/// only persist a state they created).
pub fn nothing_to_save(
    kind: &'static str,
    key: &str,
) -> BoxFuture<'static, Result<i64, StateError>> {
    let error = StateError::Codec {
        kind: kind.into(),
        key: key.to_owned(),
        reason: "no state to save".into(),
    };
    Box::pin(async move { Err(error) })
}

/// `Agent::load` and `Agent::save` for a kind whose state is
/// `Option<Record>` kept in a table of its own: the record as the row's
/// JSON body, and beside it the columns `|record| [...]` names for the
/// kind's queries.
#[macro_export]
macro_rules! table_persistence {
    ($table:expr, |$record:ident| $columns:expr) => {
        fn load(
            store: &dyn $crate::StateStore,
            key: &str,
        ) -> $crate::__agent::BoxFuture<
            'static,
            Result<Option<$crate::VersionedState<Self::State>>, $crate::StateError>,
        > {
            $crate::__agent::load_json_record(store, Self::KIND, $table, key)
        }

        fn save(
            store: &dyn $crate::StateStore,
            key: &str,
            state: &Self::State,
            expected_version: i64,
            events: Vec<$crate::OutboxEvent>,
        ) -> $crate::__agent::BoxFuture<'static, Result<i64, $crate::StateError>> {
            let Some($record) = state else {
                return $crate::__agent::nothing_to_save(Self::KIND, key);
            };
            let columns = $columns;
            $crate::__agent::save_json_record(
                store,
                Self::KIND,
                key,
                $record,
                ($table, columns),
                expected_version,
                events,
            )
        }
    };
}
