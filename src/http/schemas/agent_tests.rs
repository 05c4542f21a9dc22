//! The agents' shapes are the domain's JSON: for each response type, a
//! domain value and its twin serialize the same; for each request type, a
//! body reads the same through the twin and its conversion as through the
//! domain type.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use valueverse_agents::{
    amplifier as d_amplifier, architect as d_architect, auth as d_auth, committer as d_committer,
    executor as d_executor, notifier as d_notifier, sagas as d_sagas, simulation as d_simulation,
    simulations as d_simulations,
};

use super::{
    amplifier, architect, auth, committer, executor, notifier, sagas, simulation, simulations,
};

/// The domain value and its twin (converted from it) serialize the same.
fn same_json<D, A>(domain: D) -> A
where
    D: Serialize + Clone,
    A: Serialize + From<D>,
{
    let expected = serde_json::to_value(&domain).unwrap();
    let twin = A::from(domain);
    assert_eq!(serde_json::to_value(&twin).unwrap(), expected);
    twin
}

/// A body reads the same through the twin (then converted) as through the
/// domain type; and both refuse what one refuses. Answers whether it read.
fn same_reading<D, A>(body: serde_json::Value) -> bool
where
    D: DeserializeOwned + PartialEq + std::fmt::Debug,
    A: DeserializeOwned + Into<D>,
{
    let domain = serde_json::from_value::<D>(body.clone());
    let twin = serde_json::from_value::<A>(body.clone());
    match (domain, twin) {
        (Ok(domain), Ok(twin)) => {
            assert_eq!(twin.into(), domain, "{body}");
            true
        }
        (Err(_), Err(_)) => false,
        (domain, twin) => panic!(
            "{body}: the domain reads it: {}, the twin: {}",
            domain.is_ok(),
            twin.is_ok()
        ),
    }
}

/// Every variant of an enum: the same JSON both ways, and back.
fn same_enum<D, A>(variants: &[D])
where
    D: Serialize + DeserializeOwned + Copy + PartialEq + std::fmt::Debug + From<A>,
    A: Serialize + DeserializeOwned + Copy + From<D>,
{
    for &variant in variants {
        let twin: A = same_json(variant);
        assert_eq!(D::from(twin), variant);
        assert!(same_reading::<D, A>(serde_json::to_value(variant).unwrap()));
    }
    assert!(!same_reading::<D, A>(json!("no_such_variant")));
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 3, d).unwrap()
}

#[test]
fn the_committer_shapes_are_the_domain_json() {
    same_enum::<d_committer::CommitmentStatus, committer::CommitmentStatus>(&[
        d_committer::CommitmentStatus::Active,
        d_committer::CommitmentStatus::Voided,
        d_committer::CommitmentStatus::Superseded,
    ]);
    let request = d_committer::CommitmentRequest {
        model_id: "m1".into(),
        model_version: 3,
        model_name: "Support automation".into(),
        currency: "EUR".into(),
        confidence: 0.8,
        target: 125_000.5,
        terms: d_committer::Terms {
            fixed_fee: 10_000.0,
            outcome_share: 0.2,
            cap: Some(50_000.0),
        },
        milestones: vec![
            d_committer::Milestone {
                name: "pilot".into(),
                due_date: day(1),
                expected_value: 10.0,
            },
            d_committer::Milestone {
                name: "rollout".into(),
                due_date: day(20),
                expected_value: 0.0,
            },
        ],
        start_date: Some(day(1)),
        statement_months: 3,
        renews: Some("c0".into()),
    };
    for (status, voided_at, void_reason) in [
        (d_committer::CommitmentStatus::Active, None, None),
        (
            d_committer::CommitmentStatus::Voided,
            Some(at(60)),
            Some("renegotiated".to_owned()),
        ),
    ] {
        let commitment = d_committer::Commitment {
            id: "c1".into(),
            status,
            request: request.clone(),
            simulated: d_committer::SimulatedSupport {
                simulation_id: "s1".into(),
                paths: 20_000,
                seed: 9,
                seed_by_server: true,
                npv_mean: 1.5e5,
                npv_at_confidence: 1.2e5,
                quantile: 0.2,
            },
            created_at: at(0),
            voided_at,
            void_reason,
            expectation: Some(valueverse_agents::value::Expectation {
                model_version: 3,
                horizon_months: 24,
                drivers: vec![valueverse_agents::value::DriverBaseline {
                    name: "tickets".into(),
                    monthly_value: 1000.0,
                    ramp_months: 3,
                }],
                scale: 0.9,
            }),
            statements: Vec::new(),
            superseded_by: Some("c2".into()),
            statements_indexed: true,
        };
        // The twin counts the statements (they have their own route) and
        // keeps the row's bookkeeping to itself.
        let mut expected = serde_json::to_value(&commitment).unwrap();
        let object = expected.as_object_mut().unwrap();
        object.remove("statements");
        object.remove("statements_indexed");
        object.insert("statements_issued".into(), 0.into());
        let twin = committer::Commitment::from(commitment);
        assert_eq!(serde_json::to_value(&twin).unwrap(), expected);
    }
    same_json::<_, committer::CommitmentRequest>(request);

    // Request bodies: `terms` and `milestones` of `POST /api/v1/commitments`
    // and of the value-creation saga.
    for (reads, body) in [
        (
            true,
            json!({ "fixed_fee": 1000.0, "outcome_share": 0.1, "cap": 5000.0 }),
        ),
        (
            true,
            json!({ "fixed_fee": 1000.0, "outcome_share": 0.1, "cap": null }),
        ),
        (true, json!({ "fixed_fee": 1000.0, "outcome_share": 0.1 })),
        (
            false,
            json!({ "fixed_fee": 1000.0, "outcome_share": 0.1, "extra": 1 }),
        ),
        (false, json!({ "fixed_fee": "1000" })),
    ] {
        assert_eq!(
            same_reading::<d_committer::Terms, committer::Terms>(body),
            reads
        );
    }
    for (reads, body) in [
        (
            true,
            json!({ "name": "pilot", "due_date": "2025-03-01", "expected_value": 10.0 }),
        ),
        (false, json!({ "name": "pilot", "due_date": "2025-03-01" })),
        (
            false,
            json!({ "name": "pilot", "due_date": "2025-03-01", "expected_value": 1.0, "x": 1 }),
        ),
    ] {
        assert_eq!(
            same_reading::<d_committer::Milestone, committer::Milestone>(body),
            reads
        );
    }
}

#[test]
fn the_executor_shapes_are_the_domain_json() {
    same_enum::<d_executor::PlanStatus, executor::PlanStatus>(&[
        d_executor::PlanStatus::Active,
        d_executor::PlanStatus::Cancelled,
    ]);
    same_enum::<d_executor::MilestoneStatus, executor::MilestoneStatus>(&[
        d_executor::MilestoneStatus::Pending,
        d_executor::MilestoneStatus::Overdue,
        d_executor::MilestoneStatus::Done,
    ]);
    // Also a request field (`status` of `POST /api/v1/plans/{id}/progress`).
    same_enum::<d_executor::TaskStatus, executor::TaskStatus>(&[
        d_executor::TaskStatus::Todo,
        d_executor::TaskStatus::InProgress,
        d_executor::TaskStatus::Blocked,
        d_executor::TaskStatus::Done,
    ]);
    let milestones = [
        (d_executor::MilestoneStatus::Pending, None),
        (d_executor::MilestoneStatus::Overdue, None),
        (d_executor::MilestoneStatus::Done, Some(day(9))),
    ]
    .into_iter()
    .enumerate()
    .map(
        |(index, (status, completed_on))| d_executor::PlanMilestone {
            name: format!("m{index}"),
            due_date: day(index as u32 + 1),
            expected_value: 100.0 * index as f64,
            status,
            completed_on,
        },
    )
    .collect();
    let tasks = [
        d_executor::TaskStatus::Todo,
        d_executor::TaskStatus::InProgress,
        d_executor::TaskStatus::Blocked,
        d_executor::TaskStatus::Done,
    ]
    .into_iter()
    .enumerate()
    .map(|(index, status)| d_executor::Task {
        id: format!("t{}", index + 1),
        name: format!("task {index}"),
        owner: "ana".into(),
        due_date: day(index as u32 + 2),
        milestone: (index % 2 == 0).then(|| "m0".to_owned()),
        status,
        updated_at: at(index as i64),
    })
    .collect();
    let deliveries = vec![
        d_executor::Delivery {
            id: "d1".into(),
            driver: "tickets".into(),
            value: 1234.5,
            date: day(3),
            note: Some("first month".into()),
        },
        d_executor::Delivery {
            id: "d2".into(),
            driver: "churn".into(),
            value: -10.0,
            date: day(4),
            note: None,
        },
    ];
    for (status, cancelled_at, cancel_reason) in [
        (d_executor::PlanStatus::Active, None, None),
        (
            d_executor::PlanStatus::Cancelled,
            Some(at(100)),
            Some("descoped".to_owned()),
        ),
    ] {
        let plan = d_executor::Plan {
            id: "p1".into(),
            status,
            commitment_id: "c1".into(),
            model_id: "m1".into(),
            model_version: 2,
            drivers: vec!["tickets".into(), "churn".into()],
            start_date: day(1),
            milestones: Vec::clone(&milestones),
            tasks: Vec::clone(&tasks),
            deliveries: deliveries.clone(),
            created_at: at(0),
            cancelled_at,
            cancel_reason,
            horizon_months: 24,
            superseded_by: None,
            due_indexed: true,
        };
        let mut expected = serde_json::to_value(&plan).unwrap();
        expected.as_object_mut().unwrap().remove("due_indexed");
        let twin = executor::Plan::from(plan);
        assert_eq!(serde_json::to_value(&twin).unwrap(), expected);
    }
    for delivery in deliveries {
        same_json::<_, executor::Delivery>(delivery);
    }
}

#[test]
fn the_amplifier_shapes_are_the_domain_json() {
    let insights = d_amplifier::Insights {
        model_id: "m1".into(),
        plan_id: Some("p1".into()),
        plans: vec!["p1".into()],
        as_of: day(15),
        months_elapsed: 2.5,
        months_remaining: 21.5,
        expected_to_date: 1100.0,
        committed_to_date: 1000.0,
        realized_to_date: 800.0,
        realization_percent: Some(80.0),
        drivers: vec![
            d_amplifier::DriverInsight {
                driver: "tickets".into(),
                expected_to_date: 700.0,
                committed_to_date: 600.0,
                realized_to_date: 700.0,
                realization_percent: Some(116.7),
            },
            d_amplifier::DriverInsight {
                driver: "churn".into(),
                expected_to_date: 0.0,
                committed_to_date: 0.0,
                realized_to_date: 0.0,
                realization_percent: None,
            },
        ],
        trend: vec![
            d_amplifier::TrendPoint {
                month: "2025-02".into(),
                realized: 300.0,
                cumulative_realized: 300.0,
            },
            d_amplifier::TrendPoint {
                month: "2025-03".into(),
                realized: 500.0,
                cumulative_realized: 800.0,
            },
        ],
        opportunities: vec![d_amplifier::Opportunity {
            driver: "tickets".into(),
            realization_percent: 116.7,
            added_value_at_horizon: 4200.0,
        }],
        risks: vec![d_amplifier::Risk {
            driver: "seats".into(),
            realization_percent: 40.0,
            projected_shortfall_at_horizon: 9000.0,
        }],
        margin: 0.1,
    };
    same_json::<_, amplifier::Insights>(insights);
}

#[test]
fn the_status_filters_and_roles_are_the_domain_json() {
    same_enum::<d_architect::ModelStatus, architect::ModelStatus>(&[
        d_architect::ModelStatus::Active,
        d_architect::ModelStatus::Archived,
    ]);
    same_enum::<d_notifier::SubscriptionStatus, notifier::SubscriptionStatus>(&[
        d_notifier::SubscriptionStatus::Active,
        d_notifier::SubscriptionStatus::Deleted,
    ]);
    same_enum::<d_auth::Role, auth::Role>(&[
        d_auth::Role::Viewer,
        d_auth::Role::Editor,
        d_auth::Role::Admin,
    ]);
    same_enum::<d_simulation::JobStatus, simulation::JobStatus>(&[
        d_simulation::JobStatus::Queued,
        d_simulation::JobStatus::Running,
        d_simulation::JobStatus::Done,
        d_simulation::JobStatus::Failed,
        d_simulation::JobStatus::Cancelled,
    ]);
    same_enum::<d_sagas::SagaStatus, sagas::SagaStatus>(&[
        d_sagas::SagaStatus::Running,
        d_sagas::SagaStatus::Completed,
        d_sagas::SagaStatus::Compensating,
        d_sagas::SagaStatus::Compensated,
        d_sagas::SagaStatus::NeedsAttention,
    ]);
    same_enum::<d_sagas::StepStatus, sagas::StepStatus>(&[
        d_sagas::StepStatus::Pending,
        d_sagas::StepStatus::Succeeded,
        d_sagas::StepStatus::Failed,
        d_sagas::StepStatus::Compensated,
        d_sagas::StepStatus::CompensationFailed,
    ]);
    same_enum::<d_sagas::Direction, sagas::Direction>(&[
        d_sagas::Direction::Forward,
        d_sagas::Direction::Compensate,
    ]);
    // The query filters read the same (`?status=needs_attention`).
    let query = "status=needs_attention";
    #[derive(serde::Deserialize)]
    struct Filter<S> {
        status: Option<S>,
    }
    let domain: Filter<d_sagas::SagaStatus> = serde_urlencoded::from_str(query).unwrap();
    let twin: Filter<sagas::SagaStatus> = serde_urlencoded::from_str(query).unwrap();
    assert_eq!(twin.status.map(d_sagas::SagaStatus::from), domain.status);
}

fn progress(done: u64) -> d_simulation::JobProgress {
    d_simulation::JobProgress {
        paths_done: done,
        paths_total: 10_000,
        percent: done as f64 / 100.0,
        samples_per_second: 1.5e6,
        running_mean: 4321.0,
        p50: Some(4000.0),
        p90: None,
        eta_seconds: Some(1.25),
    }
}

#[test]
fn the_simulation_shapes_are_the_domain_json() {
    let twin: simulation::JobProgress = same_json(progress(2500));
    assert_eq!(d_simulation::JobProgress::from(twin), progress(2500));

    let snapshot = d_simulations::QueueSnapshot {
        capacity: 64,
        cpu_workers: 2,
        gpu_workers: 1,
        gpus: vec!["NVIDIA H200".into()],
        no_gpu_reason: None,
        running: vec![
            d_simulations::RunningJob {
                id: "j1".into(),
                submitter: "key:a".into(),
                lane: d_simulations::Lane::Gpu,
                paths: 1_000_000,
                cost: 4e6,
                running_seconds: 1.5,
                progress: Some(progress(10)),
            },
            d_simulations::RunningJob {
                id: "j2".into(),
                submitter: "key:b".into(),
                lane: d_simulations::Lane::Cpu,
                paths: 1000,
                cost: 4000.0,
                running_seconds: 0.0,
                progress: None,
            },
        ],
        queued: vec![d_simulations::QueuedJob {
            id: "j3".into(),
            submitter: "saga".into(),
            lane: d_simulations::Lane::Cpu,
            paths: 20_000,
            position: 0,
            waiting_seconds: 0.25,
        }],
    };
    same_json::<_, simulations::QueueSnapshot>(snapshot.clone());
    same_json::<_, simulations::QueueSnapshot>(d_simulations::QueueSnapshot {
        gpus: Vec::new(),
        gpu_workers: 0,
        no_gpu_reason: Some("no CUDA device".into()),
        ..snapshot
    });

    // The events of `/ws/simulations/{id}`, in every state, and read back
    // from another node's shared event.
    let model: valueverse_gpu::model::ValueModel =
        serde_json::from_value(super::tests::model_json()).unwrap();
    let settings = valueverse_gpu::RunSettings {
        paths: 1_000,
        seed: 3,
        bins: 10,
        stop_at_rel_se: None,
    };
    let result = valueverse_gpu::run(
        &model,
        &settings,
        valueverse_gpu::engine::Device::Cpu,
        |_| valueverse_gpu::Control::Continue,
    )
    .unwrap();
    let job = d_simulation::SimulationJob {
        id: "j1".into(),
        status: d_simulation::JobStatus::Queued,
        submitter: "key:a".into(),
        model_id: None,
        model_version: None,
        request: d_simulation::SimulationRequest {
            model,
            paths: 1_000,
            seed: 3,
            seed_by_server: false,
            device: valueverse_gpu::engine::Device::Auto,
            bins: 10,
            stop_at_rel_se: None,
        },
        engine: None,
        created_at: at(0),
        started_at: None,
        finished_at: None,
        attempts: 0,
        cancel_requested: false,
        progress: None,
        result: None,
        error: None,
        runner: None,
    };
    let states = [
        job.clone(),
        d_simulation::SimulationJob {
            status: d_simulation::JobStatus::Running,
            progress: Some(progress(500)),
            ..job.clone()
        },
        d_simulation::SimulationJob {
            status: d_simulation::JobStatus::Done,
            progress: Some(progress(1000)),
            result: Some(Box::new(result)),
            ..job.clone()
        },
        d_simulation::SimulationJob {
            status: d_simulation::JobStatus::Failed,
            error: Some("the GPU fell off the bus".into()),
            ..job.clone()
        },
        d_simulation::SimulationJob {
            status: d_simulation::JobStatus::Cancelled,
            ..job
        },
    ];
    for job in &states {
        let event = d_simulations::SimulationEvent::of(job);
        let shared = serde_json::to_value(&event).unwrap();
        let twin = same_json::<_, simulation::SimulationEvent>(event);
        let read: simulation::SimulationEvent = serde_json::from_value(shared).unwrap();
        assert_eq!(read, twin);
    }
}

#[test]
fn the_saga_shapes_are_the_domain_json() {
    let steps: Vec<d_sagas::StepState> = [
        d_sagas::StepStatus::Succeeded,
        d_sagas::StepStatus::Failed,
        d_sagas::StepStatus::Compensated,
        d_sagas::StepStatus::CompensationFailed,
        d_sagas::StepStatus::Pending,
    ]
    .into_iter()
    .enumerate()
    .map(|(index, status)| d_sagas::StepState {
        name: format!("step{index}"),
        status,
        attempts: index as u32,
        compensation_attempts: (index % 2) as u32,
        started_at: (index < 4).then(|| at(index as i64)),
        finished_at: (index < 3).then(|| at(index as i64 + 1)),
        last_error: (index == 1).then(|| "refused".to_owned()),
        output: (index == 0).then(|| json!({ "model_id": "m1", "version": 1 })),
    })
    .collect();
    for (status, in_flight, started_by) in [
        (
            d_sagas::SagaStatus::Running,
            Some((4, d_sagas::Direction::Forward)),
            Some("key:a".to_owned()),
        ),
        (
            d_sagas::SagaStatus::Compensating,
            Some((2, d_sagas::Direction::Compensate)),
            None,
        ),
        (d_sagas::SagaStatus::NeedsAttention, None, None),
    ] {
        let saga = d_sagas::Saga {
            id: "s1".into(),
            definition: "value-creation".into(),
            definition_version: 2,
            status,
            input: Arc::new(json!({ "confidence": 0.8, "terms": { "fixed_fee": 1.0 } })),
            steps: steps.clone(),
            next_action_at: in_flight.map(|_| at(30)),
            in_flight,
            cancel_requested: status == d_sagas::SagaStatus::Compensating,
            error: (status == d_sagas::SagaStatus::NeedsAttention).then(|| "stuck".to_owned()),
            created_at: at(0),
            updated_at: at(40),
            started_by,
            trace_context: None,
        };
        same_json::<_, sagas::Saga>(saga.clone());
        same_json::<_, sagas::SagaSummary>(d_sagas::SagaSummary::from(saga));
    }

    // The body of `POST /api/v1/sagas/renewal`.
    for (reads, body) in [
        (true, json!({ "commitment_id": "c1" })),
        (
            true,
            json!({ "commitment_id": "c1", "start_date": "2025-03-01", "paths": 5000, "fail_step": "amend" }),
        ),
        (
            true,
            json!({ "commitment_id": "c1", "start_date": null, "fail_step": null }),
        ),
        (false, json!({ "commitment_id": "c1", "unknown": true })),
        (false, json!({ "paths": 10 })),
    ] {
        assert_eq!(
            same_reading::<d_sagas::RenewalInput, sagas::RenewalInput>(body),
            reads
        );
    }
}
