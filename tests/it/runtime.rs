//! The agent runtime against real stores: supervision, backoff, escalation,
//! passivation, bounded mailboxes, version-checked writes.

use std::time::{Duration, Instant};

use valueverse::actors::{ExitStatus, HandlingError, OperatorError, SendError};
use valueverse::actors::{InstanceStatus, LifecycleChange, SupervisorSnapshot};
use valueverse::{AgentError, CorrelationId, RestartStrategy, RuntimeConfig, System};

use crate::support::{
    BACKENDS, Backend, Counter, CounterMsg, CounterReply, TestDb, wait_for_event,
};

const ASK: Duration = Duration::from_secs(5);

fn runtime() -> RuntimeConfig {
    RuntimeConfig {
        workers: 2,
        ..RuntimeConfig::default()
    }
}

async fn start(db: &TestDb, runtime: RuntimeConfig) -> System {
    System::start("test-node", runtime, db.store().await).expect("start system")
}

fn counter_supervisor(system: &System) -> SupervisorSnapshot {
    system
        .supervision_tree()
        .supervisors
        .into_iter()
        .find(|supervisor| supervisor.kind == "counter")
        .expect("counter supervisor in the tree")
}

fn instance_status(system: &System, key: &str) -> (InstanceStatus, u32) {
    let supervisor = counter_supervisor(system);
    let instance = supervisor
        .instances
        .iter()
        .find(|instance| instance.key == key)
        .unwrap_or_else(|| panic!("{key} in the tree"));
    (instance.status, instance.restarts)
}

async fn total(system: &System, key: &str) -> i64 {
    match system
        .agent_by_key::<Counter>(key)
        .ask(CounterMsg::Get, ASK)
        .await
    {
        Ok(CounterReply::Total(total)) => total,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_restarts_with_state_from_the_store() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let system = start(&db, runtime()).await;
        let mut events = system.subscribe();
        let counter = system.agent_by_key::<Counter>("a");
        counter.ask(CounterMsg::Add(5), ASK).await.unwrap();

        let error = counter.ask(CounterMsg::Panic, ASK).await.unwrap_err();
        assert!(
            matches!(error, AgentError::Handling(HandlingError::Panicked { .. })),
            "{backend:?}: {error}"
        );
        // The next message waits for the restart and sees the stored state,
        // not the change the panicking handler made in memory.
        assert_eq!(total(&system, "a").await, 5, "{backend:?}");
        wait_for_event(&mut events, "a", ASK, |change| {
            matches!(change, LifecycleChange::Restarted { attempt: 1 })
        })
        .await;
        let (status, restarts) = instance_status(&system, "a");
        assert_eq!(
            (status, restarts),
            (InstanceStatus::Active, 1),
            "{backend:?}"
        );
        let failure = counter_supervisor(&system).instances[0]
            .last_failure
            .clone()
            .unwrap();
        assert_eq!(
            failure.status,
            ExitStatus::Panicked {
                message: "counter told to panic".into()
            },
            "{failure:?}"
        );
        let metrics = system.render_metrics();
        assert!(
            metrics.contains("valueverse_agent_restarts_total{kind=\"counter\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "valueverse_agent_messages_total{kind=\"counter\",outcome=\"panicked\"} 1"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_error_restarts_and_rejection_does_not() {
    let db = TestDb::new(Backend::Sqlite).await;
    let system = start(&db, runtime()).await;
    let counter = system.agent_by_key::<Counter>("b");
    counter.ask(CounterMsg::Add(2), ASK).await.unwrap();
    let rejected = counter.ask(CounterMsg::Reject, ASK).await.unwrap_err();
    match rejected {
        AgentError::Handling(HandlingError::Rejected { rejection, .. }) => {
            assert_eq!(rejection.field.as_deref(), Some("amount"));
        }
        other => panic!("expected a rejection, got {other}"),
    }
    assert_eq!(
        instance_status(&system, "b").1,
        0,
        "a rejection is no failure"
    );
    let fatal = counter.ask(CounterMsg::Fatal, ASK).await.unwrap_err();
    assert!(
        matches!(fatal, AgentError::Handling(HandlingError::Fatal { .. })),
        "{fatal}"
    );
    assert_eq!(total(&system, "b").await, 2);
    assert_eq!(instance_status(&system, "b").1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_wait_an_exponential_backoff() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = runtime();
    config.supervision.insert(
        "counter".into(),
        RestartStrategy {
            initial_backoff: Duration::from_millis(150),
            backoff_factor: 2.0,
            jitter: 0.0,
            max_backoff: Duration::from_secs(5),
            max_restarts: 10,
            restart_window: Duration::from_secs(60),
        },
    );
    let system = start(&db, config).await;
    let mut events = system.subscribe();
    let counter = system.agent_by_key::<Counter>("c");
    let mut gaps = Vec::new();
    for attempt in 1..=2u32 {
        counter.ask(CounterMsg::Panic, ASK).await.unwrap_err();
        let failed = wait_for_event(&mut events, "c", ASK, |change| {
            matches!(change, LifecycleChange::Failed { .. })
        })
        .await;
        let restarted = wait_for_event(&mut events, "c", ASK, |change| {
            *change == LifecycleChange::Restarted { attempt }
        })
        .await;
        gaps.push(restarted.at.duration_since(failed.at));
    }
    assert!(gaps[0] >= Duration::from_millis(150), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(300), "{gaps:?}");
    assert!(gaps[1] > gaps[0], "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_restarts_escalate_until_reset() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let system = start(&db, runtime()).await;
        let mut events = system.subscribe();
        let counter = system.agent_by_key::<Counter>("d");
        counter.ask(CounterMsg::Add(9), ASK).await.unwrap();
        // The strategy allows 3 restarts; the 4th failure escalates.
        for _ in 0..4 {
            counter.ask(CounterMsg::Panic, ASK).await.unwrap_err();
        }
        wait_for_event(&mut events, "d", ASK, |change| {
            matches!(
                change,
                LifecycleChange::Escalated {
                    restarts_in_window: 3
                }
            )
        })
        .await;
        assert_eq!(instance_status(&system, "d").0, InstanceStatus::Failed);
        let refused = counter.ask(CounterMsg::Get, ASK).await.unwrap_err();
        assert!(
            matches!(&refused, AgentError::Handling(HandlingError::Failed { last_failure, .. }) if matches!(**last_failure, ExitStatus::Panicked { .. })),
            "{refused}"
        );
        assert!(
            counter.tell(CounterMsg::Add(1)).is_ok(),
            "tell is accepted, then refused"
        );
        assert_eq!(counter_supervisor(&system).num_failed, 1);

        let snapshot = system.reset("counter", "d", None).await.unwrap();
        assert_eq!(snapshot.key, "d");
        wait_for_event(&mut events, "d", ASK, |change| {
            *change == LifecycleChange::Activated
        })
        .await;
        assert_eq!(
            total(&system, "d").await,
            9,
            "{backend:?}: state intact after reset"
        );
        assert_eq!(instance_status(&system, "d").0, InstanceStatus::Active);
        let not_failed = system.reset("counter", "d", None).await.unwrap_err();
        assert!(
            matches!(
                not_failed,
                AgentError::Operator(OperatorError::NotFailed { .. })
            ),
            "{not_failed}"
        );
        let metrics = system.render_metrics();
        assert!(metrics.contains("valueverse_agent_escalations_total{kind=\"counter\"} 1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_passivate_and_reactivate_with_their_state() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let system = start(
            &db,
            RuntimeConfig {
                passivate_after: Duration::from_millis(150),
                ..runtime()
            },
        )
        .await;
        let mut events = system.subscribe();
        let counter = system.agent_by_key::<Counter>("e");
        counter.ask(CounterMsg::Add(7), ASK).await.unwrap();
        wait_for_event(&mut events, "e", ASK, |change| {
            *change == LifecycleChange::Passivated
        })
        .await;
        assert_eq!(instance_status(&system, "e").0, InstanceStatus::Passivated);
        assert_eq!(counter_supervisor(&system).num_active, 0);

        assert_eq!(total(&system, "e").await, 7, "{backend:?}");
        wait_for_event(&mut events, "e", ASK, |change| {
            *change == LifecycleChange::Activated
        })
        .await;
        assert_eq!(instance_status(&system, "e").0, InstanceStatus::Active);
        let metrics = system.render_metrics();
        assert!(
            metrics.contains("valueverse_agent_activations_total{kind=\"counter\"} 2"),
            "{metrics}"
        );
        assert!(metrics.contains("valueverse_agent_passivations_total{kind=\"counter\"} 1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_never_strands_a_message() {
    // Instances passivate constantly while messages keep arriving: every
    // admitted message must be handled, whatever the interleaving.
    let db = TestDb::new(Backend::Sqlite).await;
    let system = start(
        &db,
        RuntimeConfig {
            passivate_after: Duration::from_millis(1),
            ..runtime()
        },
    )
    .await;
    let counter = system.agent_by_key::<Counter>("f");
    let mut sent: i64 = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        if counter.ask(CounterMsg::Add(1), ASK).await.is_ok() {
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis((sent % 4) as u64)).await;
    }
    assert!(sent > 10);
    assert_eq!(total(&system, "f").await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_mailbox_answers_mailbox_full_at_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let system = start(
        &db,
        RuntimeConfig {
            mailbox_capacity: 4,
            ..runtime()
        },
    )
    .await;
    let counter = system.agent_by_key::<Counter>("g");
    counter.tell(CounterMsg::Sleep(400)).unwrap();
    let flood_started = Instant::now();
    let mut accepted = 0;
    let mut full = 0;
    for _ in 0..50 {
        match counter.tell(CounterMsg::Add(1)) {
            Ok(()) => accepted += 1,
            Err(AgentError::Send(SendError::MailboxFull { capacity: 4, .. })) => full += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(
        flood_started.elapsed() < Duration::from_millis(200),
        "never waits for room"
    );
    assert!((3..=4).contains(&accepted), "accepted {accepted}");
    assert_eq!(full, 50 - accepted);
    let asked = counter.ask(CounterMsg::Get, ASK).await;
    assert!(matches!(
        asked,
        Err(AgentError::Send(SendError::MailboxFull { .. })) | Ok(_)
    ));
    // Nothing admitted is lost once the mailbox drains.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total(&system, "g").await, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_times_out_instead_of_hanging() {
    let db = TestDb::new(Backend::Sqlite).await;
    let system = start(&db, runtime()).await;
    let counter = system.agent_by_key::<Counter>("h");
    counter.tell(CounterMsg::Sleep(500)).unwrap();
    let started = Instant::now();
    let error = counter
        .ask(CounterMsg::Get, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AgentError::Send(SendError::Timeout { .. })),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_millis(400));
    // The expired message is dropped unhandled, then the instance carries on.
    assert_eq!(total(&system, "h").await, 0);
    let metrics = system.render_metrics();
    assert!(metrics.contains("outcome=\"expired\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_correlation_id_travels_in_the_envelope() {
    let db = TestDb::new(Backend::Sqlite).await;
    let system = start(&db, runtime()).await;
    let id = CorrelationId::parse("req-42").unwrap();
    let reply = system
        .agent_by_key::<Counter>("i")
        .with_correlation_id(id)
        .ask(CounterMsg::EchoCorrelation, ASK)
        .await
        .unwrap();
    assert_eq!(reply, CounterReply::Correlation(Some("req-42".into())));
    let reply = system
        .agent_by_key::<Counter>("i")
        .ask(CounterMsg::EchoCorrelation, ASK)
        .await
        .unwrap();
    assert_eq!(reply, CounterReply::Correlation(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_version_never_overwrites_the_store() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let system = start(&db, runtime()).await;
        let counter = system.agent_by_key::<Counter>("j");
        counter.ask(CounterMsg::Add(1), ASK).await.unwrap();
        // Another writer (a second owner, say) moves the row on.
        let store = db.store().await;
        let version = store.state_version("counter", "j").await.unwrap().unwrap();
        store
            .save_state(
                "counter",
                "j",
                &crate::support::CounterState { total: 100 },
                version,
            )
            .await
            .unwrap();
        // The instance still holds the old version: its write is refused...
        let error = counter.ask(CounterMsg::Add(1), ASK).await.unwrap_err();
        assert!(
            matches!(&error, AgentError::Store { cause, .. }
                if matches!(**cause, valueverse::actors::StateError::Conflict { .. })),
            "{backend:?}: {error}"
        );
        // ...and its restart reloads what the store holds.
        assert_eq!(total(&system, "j").await, 100, "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_lists_registered_kinds_and_instance_details() {
    let db = TestDb::new(Backend::Sqlite).await;
    let system = start(&db, runtime()).await;
    system.register::<Counter>();
    let supervisor = counter_supervisor(&system);
    assert!(supervisor.instances.is_empty());
    assert_eq!(supervisor.strategy.max_restarts, 3);
    for _ in 0..3 {
        system
            .agent_by_key::<Counter>("k")
            .ask(CounterMsg::Add(1), ASK)
            .await
            .unwrap();
    }
    let instance = counter_supervisor(&system).instances.remove(0);
    assert_eq!(instance.key, "k");
    assert_eq!(instance.status, InstanceStatus::Active);
    assert_eq!(instance.messages_handled, 3);
    assert_eq!(instance.mailbox_depth, 0);
    assert!(instance.activated_at <= chrono::Utc::now());
}

fn slow_restarts() -> RuntimeConfig {
    let mut config = RuntimeConfig {
        workers: 1,
        ..RuntimeConfig::default()
    };
    config.supervision.insert(
        "counter".into(),
        RestartStrategy {
            initial_backoff: Duration::from_secs(3),
            jitter: 0.0,
            max_backoff: Duration::from_secs(3),
            ..RestartStrategy::default()
        },
    );
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_time_out_at_their_deadline_while_the_instance_waits_out_a_backoff() {
    let db = TestDb::new(Backend::Sqlite).await;
    let system = start(&db, slow_restarts()).await;
    let counter = system.agent_by_key::<Counter>("l");
    counter.ask(CounterMsg::Panic, ASK).await.unwrap_err();

    // From another thread: the caller's own timer answers.
    let started = Instant::now();
    let error = counter
        .ask(CounterMsg::Get, Duration::from_millis(150))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AgentError::Send(SendError::Timeout { .. })),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );

    // From the instance's own thread (one worker): no caller timer; the host
    // answers the stashed ask at its deadline although it is still in backoff.
    let (done, outcome) = tokio::sync::oneshot::channel();
    let same_thread = counter.clone();
    assert!(system.spawn(async move {
        let started = Instant::now();
        let result = same_thread
            .ask(CounterMsg::Get, Duration::from_millis(150))
            .await;
        let _ = done.send((result, started.elapsed()));
    }));
    let (result, elapsed) = outcome.await.unwrap();
    assert!(
        matches!(result, Err(AgentError::Send(SendError::Timeout { .. }))),
        "{result:?}"
    );
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1000),
        "answered at the deadline: {elapsed:?}"
    );
    assert_eq!(instance_status(&system, "l").0, InstanceStatus::Restarting);
    // After the backoff the instance serves again, and asks that outlived
    // their deadline were never handled.
    assert_eq!(total(&system, "l").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arriving_during_a_write_are_handled_in_order() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let system = start(&db, runtime()).await;
        let counter = system.agent_by_key::<Counter>("m");
        // Each Add writes through; the next ones arrive while it writes.
        for amount in 1..=40 {
            counter.tell(CounterMsg::Add(amount)).unwrap();
        }
        assert_eq!(
            total(&system, "m").await,
            (1..=40).sum::<i64>(),
            "{backend:?}"
        );
        let stored = db
            .store()
            .await
            .load_state::<crate::support::CounterState>("counter", "m")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.version, stored.state.total),
            (40, 820),
            "{backend:?}"
        );
    }
}
