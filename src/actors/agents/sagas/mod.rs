//! Sagas: definitions as data (an ordered list of steps, each with its
//! compensation) and the state machine of one saga instance. The machine is
//! pure: it says which action is due and records outcomes; the coordinator
//! agent persists every transition before the next action is taken, and
//! the time of the next action is part of the same state, so a timer and
//! the state it belongs to are always written together.

mod runner;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use runner::{DEFAULT_PATHS, RenewalInput, SagaInput, SagaRunner, ValueCreationInput};

/// Retry policy of a step (and of its compensation), as Temporal's default:
/// 1 s initial interval, factor 2, capped at 100 times the initial interval;
/// attempts bounded here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub factor: f64,
    pub max_interval: Duration,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max_interval: Duration::from_secs(100),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(60) as i32;
        self.initial
            .mul_f64(self.factor.powi(exponent))
            .min(self.max_interval)
    }
}

/// What a step does: the closed set of steps the saga runner carries out
/// against the agents (each names its action and what undoes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// architect: create the model (undone: archive it).
    Design,
    /// simulation: run the model (nothing to undo; cancelled with the saga).
    Simulate,
    /// committer: commit against the simulation (undone: void).
    Commit,
    /// executor: plan the commitment (undone: cancel the plan).
    Plan,
    /// amplifier: register the plan's baseline (undone: remove it).
    Amplify,
    /// simulation: run the renewed commitment's model again.
    Resimulate,
    /// committer: commit again with the old commitment's terms (undone: void).
    Amend,
    /// executor: move the renewed commitment's open plan to the amended
    /// one, or plan it when there is none, and register the baseline
    /// (undone: move it back, or cancel the plan).
    Replan,
    /// committer: the renewed commitment is superseded by the amended one
    /// (undone: active again).
    Supersede,
}

impl Step {
    const ALL: [Step; 9] = [
        Step::Design,
        Step::Simulate,
        Step::Commit,
        Step::Plan,
        Step::Amplify,
        Step::Resimulate,
        Step::Amend,
        Step::Replan,
        Step::Supersede,
    ];

    /// Its name in the saga log, the API and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Step::Design => "design",
            Step::Simulate => "simulate",
            Step::Commit => "commit",
            Step::Plan => "plan",
            Step::Amplify => "amplify",
            Step::Resimulate => "resimulate",
            Step::Amend => "amend",
            Step::Replan => "replan",
            Step::Supersede => "supersede",
        }
    }

    /// The step a saga log names.
    pub fn named(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.name() == name)
    }

    /// Whether a failed saga undoes it.
    fn compensable(self) -> bool {
        !matches!(self, Step::Simulate | Step::Resimulate)
    }
}

/// One step of a definition, with its time limit and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    pub step: Step,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl StepDef {
    fn new(step: Step) -> Self {
        StepDef {
            step,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.step.name()
    }

    /// Whether a failed saga undoes it.
    pub fn compensable(&self) -> bool {
        self.step.compensable()
    }
}

/// A saga kind at one version. A running saga records the version it
/// started with and keeps it, so a changed definition never breaks it.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaDefinition {
    pub name: &'static str,
    pub version: u32,
    pub steps: Vec<StepDef>,
}

/// Value creation: design, simulate, commit, plan, amplify.
pub fn value_creation() -> SagaDefinition {
    SagaDefinition {
        name: "value-creation",
        version: 1,
        steps: vec![
            StepDef::new(Step::Design),
            StepDef {
                timeout: Duration::from_secs(120),
                ..StepDef::new(Step::Simulate)
            },
            StepDef::new(Step::Commit),
            StepDef::new(Step::Plan),
            StepDef::new(Step::Amplify),
        ],
    }
}

/// Renewal: simulate the current model version again, amend the
/// commitment, move its open plan to the amendment, supersede the renewed
/// commitment.
pub fn renewal() -> SagaDefinition {
    let mut renewal = renewal_v1();
    renewal.version = 2;
    renewal.steps.push(StepDef::new(Step::Supersede));
    renewal
}

/// Renewal as version 1 ran it (sagas started then finish with it): no
/// supersede step.
fn renewal_v1() -> SagaDefinition {
    SagaDefinition {
        name: "renewal",
        version: 1,
        steps: vec![
            StepDef {
                timeout: Duration::from_secs(120),
                ..StepDef::new(Step::Resimulate)
            },
            StepDef::new(Step::Amend),
            StepDef::new(Step::Replan),
        ],
    }
}

/// Every saga definition this build has, in their current versions.
pub fn definitions() -> [SagaDefinition; 2] {
    [value_creation(), renewal()]
}

/// The definition a saga recorded, by name and version.
pub fn definition(name: &str, version: u32) -> Option<SagaDefinition> {
    definitions()
        .into_iter()
        .chain([renewal_v1()])
        .find(|definition| definition.name == name && definition.version == version)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    Running,
    Completed,
    Compensating,
    Compensated,
    NeedsAttention,
}

impl SagaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Compensated => "compensated",
            SagaStatus::NeedsAttention => "needs_attention",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Succeeded,
    Failed,
    Compensated,
    /// Its compensation keeps failing: the saga needs attention.
    CompensationFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// What the step produced (ids), for later steps and compensations.
    pub output: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Forward,
    Compensate,
}

/// What is due now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    pub step: usize,
    pub direction: Direction,
    pub attempt: u32,
    /// `(saga id, step, direction)`: what agents record to apply it once.
    pub idempotency_key: String,
}

/// One saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub id: String,
    pub definition: String,
    pub definition_version: u32,
    pub status: SagaStatus,
    /// The request that started it. Shared: a saga is copied into every
    /// reply of its coordinator, the model in its input need not be.
    pub input: std::sync::Arc<serde_json::Value>,
    pub steps: Vec<StepState>,
    /// When the next action is due (`None` when nothing is). While an
    /// action is in flight, its deadline: past it, the action is due again
    /// (the runner that took it may have died; agents apply it once).
    pub next_action_at: Option<DateTime<Utc>>,
    /// The action handed to a runner and not yet reported: `[step,
    /// direction]`.
    pub in_flight: Option<(usize, Direction)>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Who started it (`key:<id>`): its simulation counts against that
    /// key's share of the queue.
    #[serde(default)]
    pub started_by: Option<String>,
    /// The saga's span (W3C trace context), while spans are exported: every
    /// step, its retries and its compensation are spans under it, on any
    /// node and after any restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<String>,
}

/// A saga as lists and dashboard frames show it: no input and no step
/// outputs (those can be large; the whole saga is on its own route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSummary {
    pub id: String,
    pub definition: String,
    pub status: SagaStatus,
    pub steps: Vec<StepSummary>,
    pub in_flight: Option<(usize, Direction)>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A step of a [`SagaSummary`]: its state without its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl From<Saga> for SagaSummary {
    fn from(saga: Saga) -> SagaSummary {
        SagaSummary {
            id: saga.id,
            definition: saga.definition,
            status: saga.status,
            steps: saga
                .steps
                .into_iter()
                .map(|step| StepSummary {
                    name: step.name,
                    status: step.status,
                    attempts: step.attempts,
                    compensation_attempts: step.compensation_attempts,
                    started_at: step.started_at,
                    finished_at: step.finished_at,
                    last_error: step.last_error,
                })
                .collect(),
            in_flight: saga.in_flight,
            cancel_requested: saga.cancel_requested,
            error: saga.error,
            created_at: saga.created_at,
            updated_at: saga.updated_at,
        }
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the saga is {0}: {1}")]
    WrongState(&'static str, &'static str),
    #[error("step {0} is not the one due")]
    NotDue(usize),
}

fn chrono_add(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

impl Saga {
    pub fn new(
        id: String,
        definition: &SagaDefinition,
        input: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Saga {
        Saga {
            id,
            definition: definition.name.to_owned(),
            definition_version: definition.version,
            status: SagaStatus::Running,
            input: input.into(),
            steps: definition
                .steps
                .iter()
                .map(|step| StepState {
                    name: step.name().to_owned(),
                    status: StepStatus::Pending,
                    attempts: 0,
                    compensation_attempts: 0,
                    started_at: None,
                    finished_at: None,
                    last_error: None,
                    output: None,
                })
                .collect(),
            next_action_at: Some(now),
            in_flight: None,
            cancel_requested: false,
            error: None,
            created_at: now,
            updated_at: now,
            started_by: None,
            trace_context: None,
        }
    }

    fn key(&self, step: usize, direction: Direction) -> String {
        let direction = match direction {
            Direction::Forward => "do",
            Direction::Compensate => "undo",
        };
        format!("{}:{}:{direction}", self.id, self.steps[step].name)
    }

    /// The step that runs next going forward.
    fn forward_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|step| step.status == StepStatus::Pending)
    }

    /// The step compensated next: the latest one that succeeded and has a
    /// compensation.
    fn compensation_step(&self, definition: &SagaDefinition) -> Option<usize> {
        (0..self.steps.len()).rev().find(|&index| {
            self.steps[index].status == StepStatus::Succeeded
                && definition.steps[index].compensable()
        })
    }

    /// The action due at `now`, if any: an in-flight action past its
    /// deadline again, else the next one.
    pub fn due(&self, definition: &SagaDefinition, now: DateTime<Utc>) -> Option<Due> {
        if self.next_action_at.is_none_or(|at| at > now) {
            return None;
        }
        let (step, direction) = match (self.in_flight, self.status) {
            // A forward step lost while compensating: it may have been
            // applied, so it is compensated (compensations tolerate a step
            // that never happened).
            (Some((step, Direction::Forward)), SagaStatus::Compensating) => {
                (step, Direction::Compensate)
            }
            (Some(in_flight), _) => in_flight,
            (None, SagaStatus::Running) => (self.forward_step()?, Direction::Forward),
            (None, SagaStatus::Compensating) => {
                (self.compensation_step(definition)?, Direction::Compensate)
            }
            _ => return None,
        };
        let attempt = match direction {
            Direction::Forward => self.steps[step].attempts + 1,
            Direction::Compensate => self.steps[step].compensation_attempts + 1,
        };
        Some(Due {
            step,
            direction,
            attempt,
            idempotency_key: self.key(step, direction),
        })
    }

    /// After a restart: an action that was in flight will never be
    /// reported, so it is due again now rather than at its timeout.
    pub fn resume(&mut self, now: DateTime<Utc>) -> bool {
        if self.in_flight.is_some() && !self.status.is_final() {
            self.next_action_at = Some(now);
            self.updated_at = now;
            return true;
        }
        false
    }

    /// Hands the due action to a runner: it is in flight until reported,
    /// or until its timeout, when it is due again.
    pub fn begin(&mut self, definition: &SagaDefinition, due: &Due, now: DateTime<Utc>) {
        let step = &mut self.steps[due.step];
        if due.direction == Direction::Forward && step.started_at.is_none() {
            step.started_at = Some(now);
        }
        if due.direction == Direction::Compensate && step.status == StepStatus::Pending {
            // The lost forward step of a cancelled saga: undo it as done.
            step.status = StepStatus::Succeeded;
        }
        self.in_flight = Some((due.step, due.direction));
        self.next_action_at = Some(chrono_add(now, definition.steps[due.step].timeout));
        self.updated_at = now;
    }

    fn report(&mut self, step: usize, direction: Direction) -> Result<(), TransitionError> {
        if self.in_flight != Some((step, direction)) {
            return Err(TransitionError::NotDue(step));
        }
        self.in_flight = None;
        Ok(())
    }

    /// A forward step succeeded. While compensating (a cancel came while it
    /// ran), it is recorded too, so that its compensation runs.
    pub fn succeeded(
        &mut self,
        definition: &SagaDefinition,
        step: usize,
        output: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        self.report(step, Direction::Forward)?;
        let state = &mut self.steps[step];
        state.status = StepStatus::Succeeded;
        state.attempts += 1;
        state.finished_at = Some(now);
        state.output = Some(output);
        state.last_error = None;
        self.updated_at = now;
        match self.status {
            SagaStatus::Running if self.forward_step().is_none() => {
                self.status = SagaStatus::Completed;
                self.next_action_at = None;
            }
            SagaStatus::Running => self.next_action_at = Some(now),
            SagaStatus::Compensating => self.settle_compensation(definition, now),
            _ => {
                return Err(TransitionError::WrongState(
                    self.status.as_str(),
                    "no step runs",
                ));
            }
        }
        Ok(())
    }

    /// A forward step failed: retried after its backoff while attempts
    /// remain (and `retryable`), else the saga compensates.
    pub fn failed(
        &mut self,
        definition: &SagaDefinition,
        step: usize,
        error: String,
        retryable: bool,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        self.report(step, Direction::Forward)?;
        let policy = definition.steps[step].retry;
        let state = &mut self.steps[step];
        state.attempts += 1;
        state.last_error = Some(error.clone());
        self.updated_at = now;
        if self.status == SagaStatus::Running && retryable && state.attempts < policy.max_attempts {
            self.next_action_at = Some(chrono_add(now, policy.backoff(state.attempts)));
            return Ok(());
        }
        state.status = StepStatus::Failed;
        state.finished_at = Some(now);
        self.error = Some(format!("step {} failed: {error}", state.name));
        self.status = SagaStatus::Compensating;
        self.settle_compensation(definition, now);
        Ok(())
    }

    /// A compensation succeeded.
    pub fn compensated(
        &mut self,
        definition: &SagaDefinition,
        step: usize,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        if self.status != SagaStatus::Compensating {
            return Err(TransitionError::WrongState(
                self.status.as_str(),
                "nothing to compensate",
            ));
        }
        self.report(step, Direction::Compensate)?;
        let state = &mut self.steps[step];
        state.status = StepStatus::Compensated;
        state.compensation_attempts += 1;
        state.finished_at = Some(now);
        self.updated_at = now;
        self.settle_compensation(definition, now);
        Ok(())
    }

    /// A compensation failed: retried after its backoff, then the saga
    /// needs attention (it is never skipped).
    pub fn compensation_failed(
        &mut self,
        definition: &SagaDefinition,
        step: usize,
        error: String,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        if self.status != SagaStatus::Compensating {
            return Err(TransitionError::WrongState(
                self.status.as_str(),
                "nothing to compensate",
            ));
        }
        self.report(step, Direction::Compensate)?;
        let policy = definition.steps[step].retry;
        let state = &mut self.steps[step];
        state.compensation_attempts += 1;
        state.last_error = Some(error.clone());
        self.updated_at = now;
        if state.compensation_attempts < policy.max_attempts {
            self.next_action_at =
                Some(chrono_add(now, policy.backoff(state.compensation_attempts)));
        } else {
            state.status = StepStatus::CompensationFailed;
            self.status = SagaStatus::NeedsAttention;
            self.error = Some(format!(
                "compensation of {} keeps failing: {error}",
                state.name
            ));
            self.next_action_at = None;
        }
        Ok(())
    }

    /// Stops a running saga: the steps done are compensated.
    pub fn cancel(
        &mut self,
        definition: &SagaDefinition,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        if self.status != SagaStatus::Running {
            return Err(TransitionError::WrongState(
                self.status.as_str(),
                "only a running saga can be cancelled",
            ));
        }
        self.cancel_requested = true;
        self.error = Some("cancelled".into());
        self.status = SagaStatus::Compensating;
        self.updated_at = now;
        // A step in flight reports first (or times out); then compensation.
        if self.in_flight.is_none() {
            self.settle_compensation(definition, now);
        }
        Ok(())
    }

    /// An operator tries the failing compensation again.
    pub fn retry(
        &mut self,
        definition: &SagaDefinition,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        if self.status != SagaStatus::NeedsAttention {
            return Err(TransitionError::WrongState(
                self.status.as_str(),
                "only a saga that needs attention can be retried",
            ));
        }
        for step in &mut self.steps {
            if step.status == StepStatus::CompensationFailed {
                step.status = StepStatus::Succeeded;
                step.compensation_attempts = 0;
            }
        }
        self.status = SagaStatus::Compensating;
        self.updated_at = now;
        self.settle_compensation(definition, now);
        Ok(())
    }

    /// After a compensation transition: done when nothing is left to undo.
    fn settle_compensation(&mut self, definition: &SagaDefinition, now: DateTime<Utc>) {
        if self.in_flight.is_some() {
            return;
        }
        if self.compensation_step(definition).is_some() {
            self.next_action_at = Some(now);
        } else {
            self.status = SagaStatus::Compensated;
            self.next_action_at = None;
        }
    }
}

/// A page of the sagas' summaries, newest first, filtered by status and
/// definition.
pub async fn list_sagas(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    status: Option<SagaStatus>,
    definition: Option<&str>,
    page: (i64, i64),
) -> Result<crate::Listed<SagaSummary>, valueverse_runtime::StateError> {
    let listing = valueverse_store::Listing::Sagas {
        status: status.map(SagaStatus::as_str),
        definition,
    };
    crate::listing::page(records, tenant, listing, page).await
}

/// The newest `limit` summaries of sagas in `status`, uncounted.
pub async fn latest_sagas(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    status: SagaStatus,
    limit: i64,
) -> Result<Vec<SagaSummary>, valueverse_runtime::StateError> {
    let listing = valueverse_store::Listing::Sagas {
        status: Some(status.as_str()),
        definition: None,
    };
    crate::listing::latest(records, tenant, listing, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes the due action (it must be `step`) and hands it out.
    fn take(saga: &mut Saga, definition: &SagaDefinition, step: usize, now: DateTime<Utc>) -> Due {
        let due = saga.due(definition, now).expect("an action is due");
        assert_eq!(due.step, step);
        saga.begin(definition, &due, now);
        due
    }

    fn start() -> (SagaDefinition, Saga, DateTime<Utc>) {
        let definition = value_creation();
        let now = Utc::now();
        let saga = Saga::new("s1".into(), &definition, serde_json::json!({}), now);
        (definition, saga, now)
    }

    #[test]
    fn steps_run_in_order_to_completion() {
        let (definition, mut saga, now) = start();
        for index in 0..5 {
            let due = take(&mut saga, &definition, index, now);
            assert_eq!(
                (due.step, due.direction, due.attempt),
                (index, Direction::Forward, 1)
            );
            assert_eq!(
                due.idempotency_key,
                format!("s1:{}:do", definition.steps[index].name())
            );
            saga.succeeded(&definition, index, serde_json::json!({ "i": index }), now)
                .unwrap();
        }
        assert_eq!(saga.status, SagaStatus::Completed);
        assert_eq!(saga.due(&definition, now), None);
        assert!(
            saga.succeeded(&definition, 0, serde_json::json!({}), now)
                .is_err()
        );
    }

    #[test]
    fn a_failing_step_retries_with_backoff_then_compensates_in_reverse() {
        let (definition, mut saga, now) = start();
        for index in 0..3 {
            take(&mut saga, &definition, index, now);
            saga.succeeded(&definition, index, serde_json::json!({}), now)
                .unwrap();
        }
        // Step 3 (plan) fails: retried at 1 s, 2 s, 4 s, 8 s, then given up.
        let mut at = now;
        for attempt in 1..=4 {
            take(&mut saga, &definition, 3, at);
            saga.failed(&definition, 3, "boom".into(), true, at)
                .unwrap();
            let next = saga.next_action_at.unwrap();
            let expected = chrono::Duration::seconds(1 << (attempt - 1));
            assert_eq!(next - at, expected);
            assert_eq!(
                saga.due(&definition, at),
                None,
                "not due before its backoff"
            );
            at = next;
            assert_eq!(saga.due(&definition, at).unwrap().attempt, attempt + 1);
        }
        take(&mut saga, &definition, 3, at);
        saga.failed(&definition, 3, "boom".into(), true, at)
            .unwrap();
        assert_eq!(saga.status, SagaStatus::Compensating);
        // Compensations in reverse, skipping the simulation (none).
        let due = take(&mut saga, &definition, 2, at);
        assert_eq!(due.direction, Direction::Compensate);
        assert_eq!(due.idempotency_key, "s1:commit:undo");
        saga.compensated(&definition, 2, at).unwrap();
        take(&mut saga, &definition, 0, at);
        saga.compensated(&definition, 0, at).unwrap();
        assert_eq!(saga.status, SagaStatus::Compensated);
        assert_eq!(
            saga.steps[1].status,
            StepStatus::Succeeded,
            "nothing undoes a simulation"
        );
    }

    #[test]
    fn a_compensation_that_keeps_failing_needs_attention_until_retried() {
        let (definition, mut saga, now) = start();
        take(&mut saga, &definition, 0, now);
        saga.succeeded(&definition, 0, serde_json::json!({}), now)
            .unwrap();
        take(&mut saga, &definition, 1, now);
        saga.failed(&definition, 1, "injected".into(), false, now)
            .unwrap();
        let mut at = now;
        for _ in 0..5 {
            take(&mut saga, &definition, 0, at);
            saga.compensation_failed(&definition, 0, "store down".into(), at)
                .unwrap();
            at = saga.next_action_at.unwrap_or(at);
        }
        assert_eq!(saga.status, SagaStatus::NeedsAttention);
        assert_eq!(saga.steps[0].status, StepStatus::CompensationFailed);
        assert!(saga.error.as_deref().unwrap().contains("store down"));
        saga.retry(&definition, at).unwrap();
        take(&mut saga, &definition, 0, at);
        saga.compensated(&definition, 0, at).unwrap();
        assert_eq!(saga.status, SagaStatus::Compensated);
    }

    #[test]
    fn a_cancel_compensates_what_is_done_even_a_step_that_finishes_late() {
        let (definition, mut saga, now) = start();
        take(&mut saga, &definition, 0, now);
        saga.succeeded(&definition, 0, serde_json::json!({}), now)
            .unwrap();
        // Step 2 (commit, which has a compensation) is in flight when the
        // cancel arrives: nothing is due until it reports.
        take(&mut saga, &definition, 1, now);
        saga.succeeded(&definition, 1, serde_json::json!({}), now)
            .unwrap();
        take(&mut saga, &definition, 2, now);
        saga.cancel(&definition, now).unwrap();
        assert_eq!(saga.status, SagaStatus::Compensating);
        assert_eq!(saga.due(&definition, now), None);
        saga.succeeded(&definition, 2, serde_json::json!({}), now)
            .unwrap();
        saga.succeeded(&definition, 3, serde_json::json!({}), now)
            .unwrap_err();
        take(&mut saga, &definition, 2, now);
        saga.compensated(&definition, 2, now).unwrap();
        take(&mut saga, &definition, 0, now);
        saga.compensated(&definition, 0, now).unwrap();
        assert_eq!(saga.status, SagaStatus::Compensated);
        assert!(saga.cancel(&definition, now).is_err());
    }

    #[test]
    fn an_action_whose_runner_died_is_due_again_after_its_timeout() {
        let (definition, mut saga, now) = start();
        let first = take(&mut saga, &definition, 0, now);
        assert_eq!(saga.due(&definition, now), None, "in flight");
        let later = now + chrono::Duration::seconds(31);
        let again = saga.due(&definition, later).unwrap();
        assert_eq!(again.idempotency_key, first.idempotency_key);
        saga.begin(&definition, &again, later);
        saga.succeeded(&definition, 0, serde_json::json!({}), later)
            .unwrap();
        take(&mut saga, &definition, 1, later);
        saga.succeeded(&definition, 1, serde_json::json!({}), later)
            .unwrap();
        // Cancelled while the commit is in flight, and its runner dies: past
        // the timeout the commit is compensated as if it had happened.
        take(&mut saga, &definition, 2, later);
        saga.cancel(&definition, later).unwrap();
        let expired = later + chrono::Duration::seconds(31);
        let due = saga.due(&definition, expired).unwrap();
        assert_eq!((due.step, due.direction), (2, Direction::Compensate));
        saga.begin(&definition, &due, expired);
        saga.compensated(&definition, 2, expired).unwrap();
        take(&mut saga, &definition, 0, expired);
        saga.compensated(&definition, 0, expired).unwrap();
        assert_eq!(saga.status, SagaStatus::Compensated);
    }

    #[test]
    fn definitions_are_found_by_the_version_a_saga_recorded() {
        assert_eq!(definition("value-creation", 1), Some(value_creation()));
        assert_eq!(definition("renewal", 1).unwrap().steps.len(), 3);
        assert_eq!(definition("renewal", 2).unwrap().steps.len(), 4);
        assert_eq!(definition("value-creation", 2), None);
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_secs(1));
        assert_eq!(
            policy.backoff(8),
            Duration::from_secs(100),
            "capped at 100x"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// What befalls an action handed out: it succeeds, fails for good,
        /// fails and may be retried (forward), or its compensation fails.
        #[derive(Debug, Clone, Copy)]
        enum Outcome {
            Succeed,
            FailFinal,
            FailRetryable,
        }

        fn outcome() -> impl Strategy<Value = Outcome> {
            prop_oneof![
                4 => Just(Outcome::Succeed),
                1 => Just(Outcome::FailFinal),
                1 => Just(Outcome::FailRetryable),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever each action's outcome, a saga ends completed with
            /// every step done, compensated with every done step that has a
            /// compensation undone (in reverse order, never a step twice), or
            /// needing attention; forward steps run in order, and nothing is
            /// due once it has ended.
            #[test]
            fn any_run_ends_in_a_consistent_state(
                outcomes in proptest::collection::vec(outcome(), 1..200),
                renewal_saga in any::<bool>(),
            ) {
                let definition = if renewal_saga { renewal() } else { value_creation() };
                let mut at = Utc::now();
                let mut saga = Saga::new("p".into(), &definition, serde_json::json!({}), at);
                let mut forward = Vec::new();
                let mut undone = Vec::new();
                let mut outcomes = outcomes.into_iter().cycle();
                for _ in 0..1000 {
                    let Some(due) = saga.due(&definition, at) else {
                        match saga.next_action_at {
                            Some(next) if next > at => {
                                at = next;
                                continue;
                            }
                            _ => break,
                        }
                    };
                    saga.begin(&definition, &due, at);
                    let outcome = outcomes.next().unwrap();
                    match (due.direction, outcome) {
                        (Direction::Forward, Outcome::Succeed) => {
                            forward.push(due.step);
                            saga.succeeded(&definition, due.step, serde_json::json!({}), at).unwrap();
                        }
                        (Direction::Forward, Outcome::FailFinal) => {
                            saga.failed(&definition, due.step, "final".into(), false, at).unwrap();
                        }
                        (Direction::Forward, Outcome::FailRetryable) => {
                            saga.failed(&definition, due.step, "again".into(), true, at).unwrap();
                        }
                        (Direction::Compensate, Outcome::Succeed) => {
                            undone.push(due.step);
                            saga.compensated(&definition, due.step, at).unwrap();
                        }
                        (Direction::Compensate, _) => {
                            saga.compensation_failed(&definition, due.step, "down".into(), at).unwrap();
                        }
                    }
                    if saga.status == SagaStatus::NeedsAttention {
                        break;
                    }
                }
                prop_assert!(forward.windows(2).all(|pair| pair[0] < pair[1]), "{forward:?}");
                prop_assert!(undone.windows(2).all(|pair| pair[0] > pair[1]), "{undone:?}");
                match saga.status {
                    SagaStatus::Completed => {
                        prop_assert_eq!(forward.len(), definition.steps.len());
                        prop_assert!(undone.is_empty());
                    }
                    SagaStatus::Compensated => {
                        let expected: Vec<usize> = forward
                            .iter()
                            .rev()
                            .copied()
                            .filter(|step| definition.steps[*step].compensable())
                            .collect();
                        prop_assert_eq!(&undone, &expected);
                    }
                    SagaStatus::NeedsAttention => {
                        prop_assert!(saga.steps.iter().any(|step| step.status == StepStatus::CompensationFailed));
                    }
                    other => prop_assert!(false, "ended {other:?}"),
                }
                if saga.status.is_final() {
                    prop_assert_eq!(saga.due(&definition, at), None);
                }
            }
        }
    }
}
