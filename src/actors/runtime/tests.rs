//! The runtime on its own (the in-memory state store, no cluster, no
//! business agent): the registry's admission and passivation, the host's
//! restart path and escalation, write-through and its version check, and
//! time by the node's clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::state::{MemoryState, Place, StateError, StateStore, StateWrite};
use crate::{
    Agent, AgentError, AgentMessage, HandlerError, Handling, HandlingError, InstanceStatus,
    LifecycleChange, OperatorError, RestartStrategy, RuntimeConfig, SendError, SupervisionEvent,
    System,
};

const ASK: Duration = Duration::from_secs(5);

/// Adds, reads, sleeps or panics, as told.
struct Tally;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum TallyMsg {
    Add(i64),
    Get,
    Sleep(u64),
    Panic,
}

impl AgentMessage for TallyMsg {
    fn name(&self) -> &'static str {
        match self {
            TallyMsg::Add(_) => "add",
            TallyMsg::Get => "get",
            TallyMsg::Sleep(_) => "sleep",
            TallyMsg::Panic => "panic",
        }
    }
}

impl Agent for Tally {
    const KIND: &'static str = "tally";
    const MESSAGE_ID: u32 = 0x7a11;
    type State = i64;
    type Msg = TallyMsg;
    type Reply = i64;

    fn init(_key: &str) -> i64 {
        0
    }

    fn handle(state: &mut i64, msg: TallyMsg, ctx: &mut Handling<'_>) -> Result<i64, HandlerError> {
        match msg {
            TallyMsg::Add(amount) => {
                *state += amount;
                ctx.persist();
                // A notified type: the outbox keeps only those.
                ctx.emit("model.updated", amount);
            }
            TallyMsg::Get => {}
            TallyMsg::Sleep(millis) => std::thread::sleep(Duration::from_millis(millis)),
            TallyMsg::Panic => {
                // Changed in memory, never saved: the restart drops it.
                *state += 1_000;
                panic!("told to panic");
            }
        }
        Ok(*state)
    }

    fn strategy() -> RestartStrategy {
        RestartStrategy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            backoff_factor: 2.0,
            jitter: 0.0,
            max_restarts: 2,
            restart_window: Duration::from_secs(30),
        }
    }
}

/// Another kind that took `Tally`'s message id by mistake.
struct Impostor;

impl Agent for Impostor {
    const KIND: &'static str = "impostor";
    const MESSAGE_ID: u32 = Tally::MESSAGE_ID;
    type State = i64;
    type Msg = TallyMsg;
    type Reply = i64;

    fn init(_key: &str) -> i64 {
        0
    }

    fn handle(state: &mut i64, _: TallyMsg, _: &mut Handling<'_>) -> Result<i64, HandlerError> {
        Ok(*state)
    }
}

async fn system(config: RuntimeConfig) -> System {
    System::start(
        "unit",
        RuntimeConfig {
            workers: 1,
            ..config
        },
        MemoryState::new(),
    )
    .unwrap()
}

fn status(system: &System, key: &str) -> Option<InstanceStatus> {
    system
        .supervision_tree()
        .supervisors
        .into_iter()
        .find(|supervisor| supervisor.kind == Tally::KIND)?
        .instances
        .into_iter()
        .find(|instance| instance.key == key)
        .map(|instance| instance.status)
}

async fn until(
    events: &mut broadcast::Receiver<SupervisionEvent>,
    key: &str,
    wanted: impl Fn(&LifecycleChange) -> bool,
) {
    let waited = tokio::time::timeout(ASK, async {
        loop {
            let event = events.recv().await.unwrap();
            if *event.key == *key && wanted(&event.change) {
                return;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "no such event for {key} within {ASK:?}");
}

/// Admission: a mailbox at its bound refuses at once (no wait, no loss of
/// what it holds), and takes messages again once drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_at_once_and_admits_again_once_drained() {
    let system = system(RuntimeConfig {
        mailbox_capacity: 2,
        ..RuntimeConfig::default()
    })
    .await;
    let tally = system.agent_by_key::<Tally>("a");
    tally.ask(TallyMsg::Add(1), ASK).await.unwrap();
    tally.tell(TallyMsg::Sleep(300)).unwrap();
    let mut refused = None;
    for _ in 0..4 {
        if let Err(error) = tally.tell(TallyMsg::Add(10)) {
            refused = Some(error);
            break;
        }
    }
    assert!(
        matches!(
            refused,
            Some(AgentError::Send(SendError::MailboxFull { capacity: 2, .. }))
        ),
        "{refused:?}"
    );
    // The asker is refused as well while the mailbox is full; once the
    // sleeper is done every admitted message has been handled: 1 and the
    // tens admitted.
    let total = tokio::time::timeout(ASK, async {
        loop {
            match tally.ask(TallyMsg::Get, ASK).await {
                Err(AgentError::Send(SendError::MailboxFull { .. })) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other.unwrap(),
            }
        }
    })
    .await
    .expect("the mailbox drains");
    assert!(total > 1 && (total - 1) % 10 == 0, "{total}");
}

/// Passivation: an idle instance goes, its state stays in the store, and
/// the next message brings it back with that state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_passivates_and_comes_back_with_its_state() {
    let system = system(RuntimeConfig {
        passivate_after: Duration::from_millis(50),
        ..RuntimeConfig::default()
    })
    .await;
    let mut events = system.subscribe();
    let tally = system.agent_by_key::<Tally>("b");
    tally.ask(TallyMsg::Add(7), ASK).await.unwrap();
    until(&mut events, "b", |change| {
        *change == LifecycleChange::Passivated
    })
    .await;
    assert_eq!(status(&system, "b"), Some(InstanceStatus::Passivated));
    assert_eq!(tally.ask(TallyMsg::Get, ASK).await.unwrap(), 7);
    assert_eq!(status(&system, "b"), Some(InstanceStatus::Active));
}

/// The host's restart path: a panic answers the asker, the instance
/// restarts with the state it last saved; past its budget it escalates to
/// failed, refuses until an operator resets it, and comes back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_restarts_from_the_saved_state_and_too_many_escalate_until_reset() {
    let system = system(RuntimeConfig::default()).await;
    let mut events = system.subscribe();
    let tally = system.agent_by_key::<Tally>("c");
    tally.ask(TallyMsg::Add(5), ASK).await.unwrap();
    let panicked = tally.ask(TallyMsg::Panic, ASK).await.unwrap_err();
    assert!(
        matches!(
            panicked,
            AgentError::Handling(HandlingError::Panicked { .. })
        ),
        "{panicked}"
    );
    until(&mut events, "c", |change| {
        matches!(change, LifecycleChange::Restarted { attempt: 1 })
    })
    .await;
    assert_eq!(tally.ask(TallyMsg::Get, ASK).await.unwrap(), 5);
    // Two restarts allowed in the window: the third failure escalates.
    for _ in 0..2 {
        tally.ask(TallyMsg::Panic, ASK).await.unwrap_err();
    }
    until(&mut events, "c", |change| {
        matches!(change, LifecycleChange::Escalated { .. })
    })
    .await;
    assert_eq!(status(&system, "c"), Some(InstanceStatus::Failed));
    let refused = tally.ask(TallyMsg::Get, ASK).await.unwrap_err();
    assert!(
        matches!(refused, AgentError::Handling(HandlingError::Failed { .. })),
        "{refused}"
    );
    system.reset(Tally::KIND, "c", None).await.unwrap();
    assert_eq!(tally.ask(TallyMsg::Get, ASK).await.unwrap(), 5);
    let again = system.reset(Tally::KIND, "c", None).await.unwrap_err();
    assert!(
        matches!(again, AgentError::Operator(OperatorError::NotFailed { .. })),
        "{again}"
    );
}

#[tokio::test]
async fn two_kinds_with_one_message_id_are_refused_at_registration() {
    let system = system(RuntimeConfig::default()).await;
    system.register::<Tally>();
    // Registering the same kind again is fine.
    system.register::<Tally>();
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        system.register::<Impostor>();
    }))
    .expect_err("a second kind with Tally's message id");
    let message = refused
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("`tally`") && message.contains("`impostor`") && message.contains("0x7a11"),
        "{message}"
    );
    // The registry is still usable: the lock was released before the panic.
    assert_eq!(system.message_versions().len(), 1);
    system.shutdown();
}

/// Write-through over the state port: each change is saved before the
/// reply with the events it raised (same write); a write that expects a
/// version the store no longer holds is refused, never applied, and the
/// instance reloads what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_version_checked_with_their_events() {
    let store = MemoryState::new();
    let system = System::start(
        "unit",
        RuntimeConfig {
            workers: 1,
            ..RuntimeConfig::default()
        },
        store.clone(),
    )
    .unwrap();
    system.wanted_events().keep_all();
    let place = Place::Shared { kind: Tally::KIND };
    let tally = system.agent_by_key::<Tally>("w");
    assert_eq!(tally.ask(TallyMsg::Add(2), ASK).await.unwrap(), 2);
    assert_eq!(store.row(place, "w"), Some((1, "2".into())));
    let outbox = store.outbox();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].event_type, "model.updated");
    // Who changed it, with the change.
    let audit = store.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].actor.as_str(),
            audit[0].action.as_str(),
            audit[0].target.as_str()
        ),
        ("system", "add", "tally/w")
    );

    // A read changes nothing and writes nothing.
    assert_eq!(tally.ask(TallyMsg::Get, ASK).await.unwrap(), 2);
    assert_eq!(store.row(place, "w"), Some((1, "2".into())));
    // Another writer moves the row on behind the instance's back.
    let moved = store.save(StateWrite {
        place,
        key: "w".into(),
        body: "100".into(),
        columns: Vec::new(),
        expected_version: 1,
        events: Vec::new(),
    });
    assert_eq!(moved.await.unwrap(), 2);
    let error = tally.ask(TallyMsg::Add(1), ASK).await.unwrap_err();
    assert!(
        matches!(&error, AgentError::Store { cause, .. }
            if matches!(**cause, StateError::Conflict { expected: 1, actual: Some(2), .. })),
        "{error}"
    );
    // Nothing of the refused write landed: neither its state nor its event.
    assert_eq!(store.row(place, "w"), Some((2, "100".into())));
    assert_eq!(store.outbox().len(), 1);
    // The instance restarts from what the store holds.
    let mut events = system.subscribe();
    until(&mut events, "w", |change| {
        matches!(change, LifecycleChange::Restarted { .. })
    })
    .await;
    assert_eq!(tally.ask(TallyMsg::Get, ASK).await.unwrap(), 100);
}

/// An unreachable store is not the instance's fault: its load is retried
/// with a backoff, and once the store is back the message is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_from_an_unreachable_store_is_retried_until_it_answers() {
    let store = MemoryState::new();
    let system = System::start("unit", RuntimeConfig::default(), store.clone()).unwrap();
    store.set_unavailable(true);
    let tally = system.agent_by_key::<Tally>("u");
    let asked = {
        let tally = tally.clone();
        tokio::spawn(async move { tally.ask(TallyMsg::Add(5), Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !asked.is_finished(),
        "answered while the store was unreachable"
    );
    assert_eq!(status(&system, "u"), Some(InstanceStatus::Restarting));
    store.set_unavailable(false);
    assert_eq!(asked.await.unwrap().unwrap(), 5);
    assert_eq!(status(&system, "u"), Some(InstanceStatus::Active));
}

/// Deadlines are read on the node's clock: an ask whose deadline passed
/// (the clock moved on while it waited behind a busy handler) is never
/// handled, and its caller is told it ran out of time. The clock is a mock
/// moved by the test, so two hours pass in no time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_past_its_deadline_on_the_nodes_clock_expires_unhandled() {
    let (clock, mock) = quanta::Clock::mock();
    let system = System::start_with_clock(
        "unit",
        RuntimeConfig {
            workers: 1,
            ..RuntimeConfig::default()
        },
        MemoryState::new(),
        clock,
    )
    .unwrap();
    let tally = system.agent_by_key::<Tally>("t");
    assert_eq!(tally.ask(TallyMsg::Add(1), ASK).await.unwrap(), 1);
    let busy = {
        let tally = tally.clone();
        tokio::spawn(async move { tally.ask(TallyMsg::Sleep(400), ASK).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = {
        let tally = tally.clone();
        tokio::spawn(async move {
            tally
                .ask(TallyMsg::Add(10), Duration::from_secs(3600))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Two hours pass on the node's clock while the handler sleeps.
    mock.increment(Duration::from_secs(7200));
    assert_eq!(busy.await.unwrap().unwrap(), 1);
    let error = late.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            AgentError::Send(SendError::Expired { .. } | SendError::Timeout { .. })
        ),
        "{error}"
    );
    assert_eq!(tally.ask(TallyMsg::Get, ASK).await.unwrap(), 1);
}

/// A tenant past its quota of live instances gets no new one (its refusal
/// names the quota); its live ones answer, other tenants activate, and an
/// instance that passivates frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_activates_no_more_instances_than_its_quota() {
    let system = system(RuntimeConfig {
        passivate_after: Duration::from_millis(100),
        ..RuntimeConfig::default()
    })
    .await;
    system.set_instance_quota(std::sync::Arc::new(|tenant: &str| {
        (tenant == "acme").then_some(2)
    }));
    let acme = crate::Tenant::parse("acme").unwrap();
    let globex = crate::Tenant::parse("globex").unwrap();
    for id in ["a", "b"] {
        let agent = system.agent::<Tally>(&acme, id);
        assert_eq!(agent.ask(TallyMsg::Add(1), ASK).await.unwrap(), 1);
    }
    let refused = system
        .agent::<Tally>(&acme, "c")
        .ask(TallyMsg::Add(1), ASK)
        .await
        .unwrap_err();
    match &refused {
        AgentError::Handling(HandlingError::Rejected { rejection, .. }) => {
            assert_eq!(rejection.code, crate::RejectionCode::QuotaExceeded);
            assert_eq!(rejection.field.as_deref(), Some("max_active_instances"));
        }
        other => panic!("{other}"),
    }
    // The live ones answer; another tenant has no quota here.
    assert_eq!(
        system
            .agent::<Tally>(&acme, "a")
            .ask(TallyMsg::Get, ASK)
            .await
            .unwrap(),
        1
    );
    for id in ["a", "b", "c"] {
        let agent = system.agent::<Tally>(&globex, id);
        assert_eq!(agent.ask(TallyMsg::Add(5), ASK).await.unwrap(), 5);
    }
    // Once acme's instances passivate, "c" may activate.
    let mut events = system.subscribe();
    let mut passivated = 0;
    while passivated < 2 {
        let event = events.recv().await.unwrap();
        if event.key.starts_with("acme/") && event.change == LifecycleChange::Passivated {
            passivated += 1;
        }
    }
    let agent = system.agent::<Tally>(&acme, "c");
    assert_eq!(agent.ask(TallyMsg::Add(1), ASK).await.unwrap(), 1);
}

/// A changed state's audit entry names who the message acted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_records_who_made_it() {
    let store = MemoryState::new();
    let system = System::start("unit", RuntimeConfig::default(), store.clone()).unwrap();
    let acme = crate::Tenant::parse("acme").unwrap();
    let acting = system.agent::<Tally>(&acme, "w").with_actor("key:k-1");
    acting.ask(TallyMsg::Add(1), ASK).await.unwrap();
    acting.ask(TallyMsg::Get, ASK).await.unwrap();
    let audit = store.audit();
    assert_eq!(audit.len(), 1, "a read records nothing: {audit:?}");
    assert_eq!(
        (
            audit[0].tenant.as_str(),
            audit[0].actor.as_str(),
            audit[0].action.as_str(),
            audit[0].target.as_str(),
            audit[0].outcome.as_str()
        ),
        ("acme", "key:k-1", "add", "tally/w", "ok")
    );
}
