//! The saga runner: finds sagas whose next action is due (in the durable
//! log, so a restarted node finds them all), takes the action from the
//! coordinator, carries it out against the agents, and reports the outcome
//! back, which the coordinator writes before anything else happens.
//!
//! Every step and compensation addresses instances by keys derived from the
//! saga id (`{saga}-model`, `{saga}-commitment`...): an action sent twice
//! finds its instance already made and is applied once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use valueverse_store::Store;

use crate::amplifier::{Amplifier, AmplifierMsg, baseline_for};
use crate::architect::{Architect, ArchitectMsg, ArchitectReply, ModelRecord};
use crate::committer::{
    Commitment, CommitmentRequest, Committer, CommitterMsg, Milestone, SimulatedSupport, Terms,
};
use crate::executor::{Executor, ExecutorMsg, Plan, PlanStatus, plan_for};
use crate::saga::{SagaCoordinator, SagaMsg, SagaReply};
use crate::simulation::{JobStatus, SimulationRequest};
use crate::simulations::Simulations;
use crate::value::Expectation;
use tracing::Instrument;
use valueverse_gpu::Device;
use valueverse_gpu::model::ValueModel;
use valueverse_runtime::HandlingError;
use valueverse_runtime::{AgentError, RejectionCode, System, TraceContext};

use super::{Direction, Due, Saga, SagaDefinition, Step, StepDef};

/// What a value-creation saga is asked to do (kept in the saga log as
/// JSON; the API's own shape of it is `http`'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueCreationInput {
    pub model: ValueModel,
    pub confidence: f64,
    pub target: Option<f64>,
    pub terms: Terms,
    #[serde(default)]
    pub milestones: Vec<Milestone>,
    pub start_date: Option<NaiveDate>,
    #[serde(default = "default_paths")]
    pub paths: u64,
    pub fail_step: Option<String>,
    /// Months in a statement period of the commitment [default: 1].
    #[serde(default = "one_month")]
    pub statement_months: u32,
}

fn one_month() -> u32 {
    1
}

/// What a renewal saga is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalInput {
    /// The commitment renewed: its model is simulated again at its current
    /// version and committed to again with the same terms.
    pub commitment_id: String,
    /// [default: today]
    pub start_date: Option<NaiveDate>,
    /// Paths of the simulation step, 1 to 10^7 [default: 20000].
    #[serde(default = "default_paths")]
    pub paths: u64,
    /// Admin only: the step to fail, to see the compensations run.
    pub fail_step: Option<String>,
}

/// What a saga's commit step asks of the committer.
struct Asked {
    confidence: f64,
    /// [default: what the simulation reaches with `confidence`]
    target: Option<f64>,
    terms: Terms,
    milestones: Vec<Milestone>,
    start_date: Option<NaiveDate>,
    statement_months: u32,
    renews: Option<String>,
}

/// Paths of a saga's simulation step when the request names none.
pub const DEFAULT_PATHS: u64 = 20_000;

fn default_paths() -> u64 {
    DEFAULT_PATHS
}

/// Why an action failed, and whether trying again may help.
struct ActionError {
    message: String,
    retryable: bool,
}

impl From<AgentError> for ActionError {
    fn from(error: AgentError) -> ActionError {
        // A refusal will be refused again; anything else may pass later.
        let retryable = !matches!(error, AgentError::Handling(HandlingError::Rejected { .. }));
        ActionError {
            message: error.to_string(),
            retryable,
        }
    }
}

fn final_error(message: impl Into<String>) -> ActionError {
    ActionError {
        message: message.into(),
        retryable: false,
    }
}

fn rejection_code(error: &AgentError) -> Option<RejectionCode> {
    match error {
        AgentError::Handling(HandlingError::Rejected { rejection, .. }) => Some(rejection.code),
        _ => None,
    }
}

/// Drives the sagas of a node.
#[derive(Clone)]
pub struct SagaRunner {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct SagaMetrics {
    started: prometheus::IntCounterVec,
    finished: prometheus::IntCounterVec,
    step_seconds: prometheus::HistogramVec,
}

impl SagaMetrics {
    fn new(registry: &prometheus::Registry) -> SagaMetrics {
        let started = prometheus::IntCounterVec::new(
            prometheus::Opts::new("valueverse_sagas_started_total", "Sagas started"),
            &["definition"],
        )
        .expect("valid metric options");
        let finished = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "valueverse_sagas_finished_total",
                "Sagas that reached completed, compensated or needs_attention",
            ),
            &["definition", "status"],
        )
        .expect("valid metric options");
        let step_seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "valueverse_saga_step_seconds",
                "Time a saga step or compensation took",
            )
            .buckets(prometheus::exponential_buckets(1e-4, 4.0, 10).expect("valid buckets")),
            &["definition", "step", "direction"],
        )
        .expect("valid metric options");
        // Every series exists from the start, at 0: alerts on an increase
        // (a first saga needing attention) and dashboards see it.
        for definition in super::definitions() {
            started.with_label_values(&[definition.name]);
            for status in ["completed", "compensated", "needs_attention"] {
                finished.with_label_values(&[definition.name, status]);
            }
            for step in definition.steps.iter().map(StepDef::name).chain(["log"]) {
                for direction in ["forward", "compensate"] {
                    step_seconds.with_label_values(&[definition.name, step, direction]);
                }
            }
        }
        for collector in [
            Box::new(started.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(finished.clone()),
            Box::new(step_seconds.clone()),
        ] {
            registry
                .register(collector)
                .expect("saga metric names are unique");
        }
        SagaMetrics {
            started,
            finished,
            step_seconds,
        }
    }
}

struct Inner {
    system: System,
    store: Store,
    simulations: Simulations,
    metrics: SagaMetrics,
    /// Sagas a task of this node is driving now.
    driving: Mutex<HashSet<String>>,
    wake: Notify,
}

const POLL_EVERY: Duration = Duration::from_millis(100);

impl SagaRunner {
    /// Starts the poller. Call inside a tokio runtime.
    pub fn start(
        system: System,
        store: Store,
        simulations: Simulations,
    ) -> (SagaRunner, tokio::task::JoinHandle<()>) {
        let runner = SagaRunner {
            inner: Arc::new(Inner {
                metrics: SagaMetrics::new(system.metrics().registry()),
                system,
                store,
                simulations,
                driving: Mutex::new(HashSet::new()),
                wake: Notify::new(),
            }),
        };
        let poller = tokio::spawn(runner.clone().poll());
        (runner, poller)
    }

    /// Records a new saga and starts driving it.
    pub async fn start_saga(&self, mut saga: Saga) -> Result<Saga, AgentError> {
        let id = saga.id.clone();
        let definition = saga.definition.clone();
        // The saga's own span, under the request that starts it: stored in
        // the saga's log, it is the parent of every step wherever and
        // whenever the step runs.
        let span = if valueverse_runtime::propagating() {
            let span = tracing::info_span!(
                "saga",
                otel.name = %format_args!("saga {definition}"),
                saga.id = %id,
                saga.definition = %definition,
            );
            saga.trace_context = TraceContext::of(&span).map(|trace| trace.encode());
            span
        } else {
            tracing::Span::none()
        };
        let reply = self
            .ask(&id, SagaMsg::Start(Box::new(saga)))
            .instrument(span)
            .await?;
        self.inner
            .metrics
            .started
            .with_label_values(&[definition.as_str()])
            .inc();
        let saga = match &reply {
            SagaReply::Saga(saga) | SagaReply::Due(_, saga) => (**saga).clone(),
        };
        match reply {
            // A new saga: its first action was handed out with the start.
            SagaReply::Due(Some(_), _) => self.drive_from(id, Some(reply)),
            // Started before (a retried request): drive it as it stands.
            _ => self.drive(id),
        }
        Ok(saga)
    }

    /// Sends a message to a saga's coordinator, then makes sure something
    /// drives it (a cancel or retry makes actions due).
    pub async fn tell(&self, id: &str, msg: SagaMsg) -> Result<Saga, AgentError> {
        let saga = self.ask(id, msg).await?.saga();
        self.drive(id.to_owned());
        Ok(saga)
    }

    /// Cancels a running saga: the steps done are compensated, and a
    /// simulation it is waiting on is cancelled now rather than run to its
    /// end.
    pub async fn cancel(&self, id: &str) -> Result<Saga, AgentError> {
        let saga = self.tell(id, SagaMsg::Cancel).await?;
        let simulating = saga.in_flight.is_some_and(|(step, _)| {
            matches!(
                saga.steps
                    .get(step)
                    .and_then(|state| Step::named(&state.name)),
                Some(Step::Simulate | Step::Resimulate)
            )
        });
        let keys = Keys::of_started(id, saga.started_by.as_deref());
        if simulating && let Err(error) = self.cancel_simulation(&keys, &keys.simulation).await {
            tracing::warn!(saga = %id, error = %error.message, "saga: could not cancel its simulation");
        }
        Ok(saga)
    }

    pub async fn get(&self, id: &str) -> Result<Saga, AgentError> {
        Ok(self.ask(id, SagaMsg::Get).await?.saga())
    }

    async fn ask(&self, id: &str, msg: SagaMsg) -> Result<SagaReply, AgentError> {
        let system = &self.inner.system;
        system
            .agent_by_key::<SagaCoordinator>(id.to_owned())
            .ask(msg, system.runtime_config().ask_timeout)
            .await
    }

    /// Whether this node owns the saga's coordinator (each node drives the
    /// sagas it owns; in a cluster of one, all of them).
    fn owns(&self, id: &str) -> bool {
        self.inner
            .system
            .is_local(<SagaCoordinator as valueverse_runtime::Agent>::KIND, id)
    }

    /// Whatever was in flight for sagas owned here died with its node: at
    /// a restart this node's previous run, after a change of placement the
    /// node that owned them before. Sagas this node is driving are left be.
    async fn resume_owned(&self) {
        match self.inner.store.unfinished_sagas().await {
            Ok(ids) => {
                for id in ids {
                    let driving = self.lock_driving().contains(&id);
                    if driving || !self.owns(&id) {
                        continue;
                    }
                    if let Err(error) = self.ask(&id, SagaMsg::Resume).await {
                        tracing::warn!(saga = %id, %error, "saga runner: cannot resume");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "saga runner: cannot read the saga log"),
        }
    }

    async fn poll(self) {
        let mut placement = self.inner.system.watch_placement();
        placement.mark_unchanged();
        self.resume_owned().await;
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            match self.inner.store.due_sagas(now, 500).await {
                Ok(ids) => ids
                    .into_iter()
                    .filter(|id| self.owns(id))
                    .for_each(|id| self.drive(id)),
                Err(error) => tracing::warn!(%error, "saga runner: cannot read the saga log"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = self.inner.wake.notified() => {}
                changed = placement.changed() => {
                    if changed.is_ok() {
                        self.resume_owned().await;
                    }
                }
            }
        }
    }

    fn lock_driving(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.driving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives one saga until nothing is due, unless a task does already.
    fn drive(&self, id: String) {
        self.drive_from(id, None)
    }

    /// Like [`SagaRunner::drive`], from an action already handed out.
    fn drive_from(&self, id: String, first: Option<SagaReply>) {
        let mut driving = self.inner.driving.lock().unwrap_or_else(|p| p.into_inner());
        if !driving.insert(id.clone()) {
            return;
        }
        drop(driving);
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.drive_now(&id, first).await;
            this.inner
                .driving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Err(error) = outcome {
                tracing::warn!(saga = %id, %error, "saga runner: cannot drive the saga now");
            }
            // A retry's backoff is found again by the poller.
        });
    }

    async fn drive_now(&self, id: &str, first: Option<SagaReply>) -> Result<(), AgentError> {
        let mut next = match first {
            Some(reply) => reply,
            None => self.ask(id, SagaMsg::Take).await?,
        };
        loop {
            let SagaReply::Due(Some(due), saga) = next else {
                return Ok(());
            };
            let started = Instant::now();
            let direction = match due.direction {
                Direction::Forward => "forward",
                Direction::Compensate => "compensate",
            };
            let span = step_span(&saga, &due, direction);
            let outcome = tokio::time::timeout(
                super::definition(&saga.definition, saga.definition_version)
                    .map(|definition| definition.steps[due.step].timeout)
                    .unwrap_or(Duration::from_secs(30)),
                self.perform(&saga, &due),
            )
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| {
                Err(ActionError {
                    message: "timed out".into(),
                    retryable: true,
                })
            });
            if !span.is_disabled() {
                span.record("outcome", if outcome.is_ok() { "ok" } else { "failed" });
                if let Err(error) = &outcome {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_message", error.message.as_str());
                }
            }
            self.inner
                .metrics
                .step_seconds
                .with_label_values(&[
                    saga.definition.as_str(),
                    saga.steps[due.step].name.as_str(),
                    direction,
                ])
                .observe(started.elapsed().as_secs_f64());
            let report = match (due.direction, outcome) {
                (Direction::Forward, Ok(output)) => SagaMsg::Succeeded {
                    step: due.step,
                    output,
                },
                (Direction::Forward, Err(error)) => SagaMsg::Failed {
                    step: due.step,
                    error: error.message,
                    retryable: error.retryable,
                },
                (Direction::Compensate, Ok(_)) => SagaMsg::Compensated { step: due.step },
                (Direction::Compensate, Err(error)) => SagaMsg::CompensationFailed {
                    step: due.step,
                    error: error.message,
                },
            };
            let reported = Instant::now();
            // The report (and the log's write) is part of the step.
            next = self.ask(id, report).instrument(span).await?;
            self.inner
                .metrics
                .step_seconds
                .with_label_values(&[saga.definition.as_str(), "log", direction])
                .observe(reported.elapsed().as_secs_f64());
            let after = match &next {
                SagaReply::Saga(saga) | SagaReply::Due(_, saga) => saga,
            };
            if after.status != saga.status
                && (after.status.is_final() || after.status == super::SagaStatus::NeedsAttention)
            {
                self.inner
                    .metrics
                    .finished
                    .with_label_values(&[after.definition.as_str(), after.status.as_str()])
                    .inc();
            }
        }
    }

    /// Carries out one action; answers what a forward step produced.
    async fn perform(&self, saga: &Saga, due: &Due) -> Result<serde_json::Value, ActionError> {
        let name = saga.steps[due.step].name.as_str();
        let step = Step::named(name)
            .ok_or_else(|| final_error(format!("this build has no step `{name}`")))?;
        let input = SagaInput::of(saga).map_err(final_error)?;
        if due.direction == Direction::Forward && input.fail_step() == Some(name) {
            return Err(final_error(format!("failure injected at step {name}")));
        }
        let keys = Keys::of_started(&saga.id, saga.started_by.as_deref());
        match (due.direction, step, input) {
            (Direction::Compensate, Step::Replan, SagaInput::Renewal(input)) => {
                self.unreplan(&keys, &input, &saga.id).await
            }
            // A replan that failed after its move is not compensated
            // itself: the amendment's undoing moves the plan back first.
            (Direction::Compensate, Step::Amend, SagaInput::Renewal(input)) => {
                self.unreplan(&keys, &input, &saga.id).await?;
                self.void(&keys, &keys.commitment, &saga.id).await
            }
            (Direction::Compensate, Step::Supersede, SagaInput::Renewal(input)) => {
                let restored = self
                    .inner
                    .system
                    .agent_by_key::<Committer>(keys.of_id(&input.commitment_id))
                    .with_actor(keys.actor.clone())
                    .ask(
                        CommitterMsg::Restore {
                            by: id_of(&keys.commitment).to_owned(),
                        },
                        self.timeout(),
                    )
                    .await;
                tolerate_done(restored.map(|_| ()))
            }
            (Direction::Forward, Step::Replan, SagaInput::Renewal(input)) => {
                self.replan(&keys, &input).await
            }
            (Direction::Forward, Step::Supersede, SagaInput::Renewal(input)) => {
                let superseded = self
                    .inner
                    .system
                    .agent_by_key::<Committer>(keys.of_id(&input.commitment_id))
                    .with_actor(keys.actor.clone())
                    .ask(
                        CommitterMsg::Supersede {
                            by: id_of(&keys.commitment).to_owned(),
                        },
                        self.timeout(),
                    )
                    .await?;
                Ok(serde_json::json!({
                    "commitment_id": superseded.id,
                    "superseded_by": superseded.superseded_by,
                }))
            }
            (Direction::Compensate, step, _) => match step {
                Step::Design => self.archive(&keys, &keys.model).await,
                Step::Simulate | Step::Resimulate => {
                    self.cancel_simulation(&keys, &keys.simulation).await
                }
                Step::Commit | Step::Amend => self.void(&keys, &keys.commitment, &saga.id).await,
                Step::Plan | Step::Replan => self.cancel_plan(&keys, &keys.plan, &saga.id).await,
                Step::Amplify => self.remove_baseline(&keys).await,
                // Only renewals have it (above).
                Step::Supersede => Ok(serde_json::Value::Null),
            },
            (Direction::Forward, Step::Design, SagaInput::ValueCreation(input)) => {
                self.design(&keys, input.model).await
            }
            (Direction::Forward, Step::Simulate, SagaInput::ValueCreation(input)) => {
                self.simulate(saga, &keys, &keys.model, input.paths).await
            }
            (Direction::Forward, Step::Commit, SagaInput::ValueCreation(input)) => {
                self.commit(
                    &keys,
                    &keys.model,
                    Asked {
                        confidence: input.confidence,
                        target: input.target,
                        terms: input.terms,
                        milestones: input.milestones,
                        start_date: input.start_date,
                        statement_months: input.statement_months,
                        renews: None,
                    },
                )
                .await
            }
            (Direction::Forward, Step::Plan | Step::Replan, input) => {
                self.plan(&keys, input.start_date()).await
            }
            (Direction::Forward, Step::Amplify, _) => self.baseline(&keys).await,
            (Direction::Forward, Step::Resimulate, SagaInput::Renewal(input)) => {
                let old = self
                    .commitment(&keys, &keys.of_id(&input.commitment_id))
                    .await?;
                self.simulate(saga, &keys, &keys.of_id(&old.request.model_id), input.paths)
                    .await
            }
            (Direction::Forward, Step::Amend, SagaInput::Renewal(input)) => {
                let old = self
                    .commitment(&keys, &keys.of_id(&input.commitment_id))
                    .await?;
                // The new commitment starts where the old one stopped
                // stating, so no period is left unstated between them.
                let start_date = input.start_date.or_else(|| {
                    old.next_period()
                        .map(|(_, first, _)| first)
                        .filter(|first| *first > old.start())
                });
                let request = old.request;
                self.commit(
                    &keys,
                    &keys.of_id(&request.model_id),
                    Asked {
                        confidence: request.confidence,
                        target: Some(request.target),
                        terms: request.terms,
                        milestones: request.milestones,
                        start_date,
                        statement_months: request.statement_months,
                        renews: Some(old.id),
                    },
                )
                .await
            }
            (Direction::Forward, step, _) => Err(final_error(format!(
                "{} has no action for step {}",
                saga.definition,
                step.name()
            ))),
        }
    }

    fn timeout(&self) -> Duration {
        self.inner.system.runtime_config().ask_timeout
    }

    async fn model(&self, keys: &Keys, id: &str) -> Result<(ModelRecord, i64), ActionError> {
        match self
            .inner
            .system
            .agent_by_key::<Architect>(id.to_owned())
            .with_actor(keys.actor.clone())
            .ask(ArchitectMsg::Get { version: None }, self.timeout())
            .await?
        {
            ArchitectReply::Model { record, version } => Ok((*record, version)),
            ArchitectReply::Hypotheses { .. } => Err(final_error("unexpected reply")),
        }
    }

    async fn commitment(&self, keys: &Keys, id: &str) -> Result<Commitment, ActionError> {
        Ok(self
            .inner
            .system
            .agent_by_key::<Committer>(id.to_owned())
            .with_actor(keys.actor.clone())
            .ask(CommitterMsg::Get, self.timeout())
            .await?)
    }

    async fn design(
        &self,
        keys: &Keys,
        model: ValueModel,
    ) -> Result<serde_json::Value, ActionError> {
        if let Err(invalid) = model.validate() {
            return Err(final_error(format!("invalid model: {invalid}")));
        }
        let created = self
            .inner
            .system
            .agent_by_key::<Architect>(keys.model.clone())
            .with_actor(keys.actor.clone())
            .ask(ArchitectMsg::Create(Box::new(model)), self.timeout())
            .await;
        applied_once(created)?;
        Ok(serde_json::json!({ "model_id": id_of(&keys.model), "model_version": 1 }))
    }

    async fn archive(&self, keys: &Keys, model_id: &str) -> Result<serde_json::Value, ActionError> {
        let archived = self
            .inner
            .system
            .agent_by_key::<Architect>(model_id.to_owned())
            .with_actor(keys.actor.clone())
            .ask(
                ArchitectMsg::Archive {
                    reason: Some("saga compensation".into()),
                },
                self.timeout(),
            )
            .await;
        tolerate_done(archived.map(|_| ()))
    }

    async fn simulate(
        &self,
        saga: &Saga,
        keys: &Keys,
        model_id: &str,
        paths: u64,
    ) -> Result<serde_json::Value, ActionError> {
        let (record, version) = self.model(keys, model_id).await?;
        let model = record
            .version(version)
            .map(|at| at.model.clone())
            .ok_or_else(|| final_error("no version"))?;
        let request = SimulationRequest {
            model,
            paths,
            seed: rand::random(),
            seed_by_server: true,
            device: Device::Auto,
            bins: 20,
            stop_at_rel_se: None,
        };
        let job = self
            .inner
            .simulations
            .submit_as(
                keys.simulation.clone(),
                request,
                saga.started_by
                    .clone()
                    .unwrap_or_else(|| crate::simulations::SAGA_SUBMITTER.into()),
                Some((id_of(model_id).to_owned(), version)),
            )
            .await
            .map_err(|error| ActionError {
                // A job bigger than any budget will not fit later either.
                retryable: !matches!(error, crate::simulations::SubmitError::Invalid { .. }),
                message: error.to_string(),
            })?;
        let mut job = job;
        // Follow the job's live events; read its record once they end
        // (or when there are none: it finished, or a restart requeued it).
        while !job.status.is_finished() {
            if let Some(mut events) = self.inner.simulations.subscribe(&keys.simulation) {
                while !events.borrow_and_update().is_final() {
                    if events.changed().await.is_err() {
                        break;
                    }
                }
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            job = self.inner.simulations.get(&keys.simulation).await?;
        }
        if job.status != JobStatus::Done {
            return Err(final_error(format!(
                "the simulation ended {}: {}",
                job.status.as_str(),
                job.error.unwrap_or_default()
            )));
        }
        Ok(serde_json::json!({ "simulation_id": id_of(&job.id), "model_version": version }))
    }

    async fn commit(
        &self,
        keys: &Keys,
        model_id: &str,
        asked: Asked,
    ) -> Result<serde_json::Value, ActionError> {
        let confidence = asked.confidence;
        let job = self.inner.simulations.get(&keys.simulation).await?;
        let (Some(simulated), Some(version)) = (
            SimulatedSupport::of(id_of(&job.id), &job, confidence),
            job.model_version,
        ) else {
            return Err(final_error("the saga's simulation has no result"));
        };
        let npv_at_confidence = simulated.npv_at_confidence;
        let (record, _) = self.model(keys, model_id).await?;
        let at = record
            .version(version)
            .ok_or_else(|| final_error("no version"))?;
        let model = &at.model;
        let target = asked.target.unwrap_or(npv_at_confidence);
        let request = CommitmentRequest {
            model_id: id_of(model_id).to_owned(),
            model_version: version,
            model_name: model.name.clone(),
            currency: model.currency.clone(),
            confidence,
            target,
            terms: asked.terms,
            milestones: asked.milestones,
            start_date: asked.start_date,
            statement_months: asked.statement_months,
            renews: asked.renews,
        };
        let committed = self
            .inner
            .system
            .agent_by_key::<Committer>(keys.commitment.clone())
            .with_actor(keys.actor.clone())
            .ask(
                CommitterMsg::Commit {
                    request: Box::new(request),
                    simulated: Some(simulated),
                    min_paths: self.inner.simulations.min_evidence_paths(),
                    expectation: Box::new(Expectation::of(at, Some(target))),
                },
                self.timeout(),
            )
            .await;
        applied_once(committed)?;
        Ok(serde_json::json!({ "commitment_id": id_of(&keys.commitment) }))
    }

    async fn void(
        &self,
        keys: &Keys,
        commitment_id: &str,
        saga: &str,
    ) -> Result<serde_json::Value, ActionError> {
        let voided = self
            .inner
            .system
            .agent_by_key::<Committer>(commitment_id.to_owned())
            .with_actor(keys.actor.clone())
            .ask(
                CommitterMsg::Void {
                    reason: format!("compensation of saga {saga}"),
                },
                self.timeout(),
            )
            .await;
        tolerate_done(voided.map(|_| ()))
    }

    async fn plan(
        &self,
        keys: &Keys,
        start: Option<NaiveDate>,
    ) -> Result<serde_json::Value, ActionError> {
        let commitment = self.commitment(keys, &keys.commitment).await?;
        let (record, _) = self
            .model(keys, &keys.of_id(&commitment.request.model_id))
            .await?;
        let version = record
            .version(commitment.request.model_version)
            .ok_or_else(|| final_error("no version"))?;
        let start = start.unwrap_or_else(|| chrono::Utc::now().date_naive());
        let plan = plan_for(
            id_of(&keys.plan).to_owned(),
            &commitment,
            version,
            start,
            Vec::new(),
        );
        let created = self
            .inner
            .system
            .agent_by_key::<Executor>(keys.plan.clone())
            .with_actor(keys.actor.clone())
            .ask(ExecutorMsg::Create(Box::new(plan)), self.timeout())
            .await;
        applied_once(created)?;
        Ok(serde_json::json!({ "plan_id": id_of(&keys.plan) }))
    }

    /// Cancels the saga's job if it is still queued or running.
    async fn cancel_simulation(
        &self,
        keys: &Keys,
        job_id: &str,
    ) -> Result<serde_json::Value, ActionError> {
        let cancelled = self.inner.simulations.cancel(job_id, &keys.actor).await;
        tolerate_done(cancelled.map(|_| ()))
    }

    async fn cancel_plan(
        &self,
        keys: &Keys,
        plan_id: &str,
        saga: &str,
    ) -> Result<serde_json::Value, ActionError> {
        let cancelled = self
            .inner
            .system
            .agent_by_key::<Executor>(plan_id.to_owned())
            .with_actor(keys.actor.clone())
            .ask(
                ExecutorMsg::Cancel {
                    reason: format!("compensation of saga {saga}"),
                },
                self.timeout(),
            )
            .await;
        tolerate_done(cancelled.map(|_| ()))
    }

    async fn baseline(&self, keys: &Keys) -> Result<serde_json::Value, ActionError> {
        let plan = self
            .inner
            .system
            .agent_by_key::<Executor>(keys.plan.clone())
            .with_actor(keys.actor.clone())
            .ask(ExecutorMsg::Get, self.timeout())
            .await?;
        self.register_baseline(keys, &plan).await?;
        Ok(serde_json::json!({ "model_id": plan.model_id, "plan_id": plan.id }))
    }

    /// Registers `plan`'s baseline against its commitment as it is now.
    async fn register_baseline(&self, keys: &Keys, plan: &Plan) -> Result<(), ActionError> {
        let commitment = self
            .commitment(keys, &keys.of_id(&plan.commitment_id))
            .await?;
        let (record, _) = self.model(keys, &keys.of_id(&plan.model_id)).await?;
        let version = record
            .version(plan.model_version)
            .ok_or_else(|| final_error("no version"))?;
        self.inner
            .system
            .agent_by_key::<Amplifier>(keys.of_id(&plan.model_id))
            .with_actor(keys.actor.clone())
            .ask(
                AmplifierMsg::RegisterBaseline(Box::new(baseline_for(plan, version, &commitment))),
                self.timeout(),
            )
            .await?;
        Ok(())
    }

    /// The active plan of a commitment other than the saga's own, if any.
    async fn open_plan(
        &self,
        keys: &Keys,
        commitment_id: &str,
    ) -> Result<Option<Plan>, ActionError> {
        let tenant =
            valueverse_runtime::Tenant::parse(valueverse_runtime::split_key(&keys.model).0)
                .map_err(|error| final_error(error.to_string()))?;
        let records = crate::Records::new(self.inner.store.clone(), &self.inner.system);
        let listed = crate::executor::list_plans(
            &records,
            &tenant,
            Some(commitment_id),
            None,
            Some(PlanStatus::Active),
            (100, 0),
        )
        .await
        .map_err(|error| ActionError {
            message: error.to_string(),
            retryable: true,
        })?;
        Ok(listed
            .items
            .into_iter()
            .find(|plan| plan.id != id_of(&keys.plan)))
    }

    /// A renewal's replan: the renewed commitment's open plan moves to the
    /// amended commitment (its deliveries, tasks and progress with it); a
    /// commitment without one gets a new plan. Either way its baseline is
    /// registered against the amended commitment.
    async fn replan(
        &self,
        keys: &Keys,
        input: &RenewalInput,
    ) -> Result<serde_json::Value, ActionError> {
        let amended = self.commitment(keys, &keys.commitment).await?;
        // A retry may find the move already made.
        let open = match self.open_plan(keys, &input.commitment_id).await? {
            Some(plan) => Some(plan),
            None => self.open_plan(keys, &amended.id).await?,
        };
        let Some(open) = open else {
            self.plan(keys, input.start_date).await?;
            self.baseline(keys).await?;
            return Ok(serde_json::json!({ "plan_id": id_of(&keys.plan) }));
        };
        let (record, _) = self
            .model(keys, &keys.of_id(&amended.request.model_id))
            .await?;
        let version = record
            .version(amended.request.model_version)
            .ok_or_else(|| final_error("no version"))?;
        let moved = self
            .inner
            .system
            .agent_by_key::<Executor>(keys.of_id(&open.id))
            .with_actor(keys.actor.clone())
            .ask(
                ExecutorMsg::Reassign {
                    commitment_id: amended.id.clone(),
                    model_version: version.version,
                    drivers: version
                        .model
                        .drivers
                        .iter()
                        .map(|d| d.name.clone())
                        .collect(),
                    horizon_months: version.model.horizon_months,
                },
                self.timeout(),
            )
            .await?;
        self.register_baseline(keys, &moved).await?;
        Ok(serde_json::json!({ "plan_id": moved.id, "moved_from": input.commitment_id }))
    }

    /// Undoes a renewal's replan from what is, not from what the step
    /// recorded (a cancel may come while it runs, a failure after its
    /// move): a plan moved to the amended commitment goes back to the
    /// renewed one (baseline too), and the saga's own plan is cancelled.
    async fn unreplan(
        &self,
        keys: &Keys,
        input: &RenewalInput,
        saga: &str,
    ) -> Result<serde_json::Value, ActionError> {
        self.remove_baseline(keys).await?;
        self.cancel_plan(keys, &keys.plan, saga).await?;
        let amended = id_of(&keys.commitment);
        let Some(open) = self.open_plan(keys, amended).await? else {
            return Ok(serde_json::Value::Null);
        };
        let old = self
            .commitment(keys, &keys.of_id(&input.commitment_id))
            .await?;
        let (record, _) = self.model(keys, &keys.of_id(&old.request.model_id)).await?;
        let version = record
            .version(old.request.model_version)
            .ok_or_else(|| final_error("no version"))?;
        let back = self
            .inner
            .system
            .agent_by_key::<Executor>(keys.of_id(&open.id))
            .with_actor(keys.actor.clone())
            .ask(
                ExecutorMsg::Reassign {
                    commitment_id: old.id.clone(),
                    model_version: version.version,
                    drivers: Vec::new(),
                    horizon_months: version.model.horizon_months,
                },
                self.timeout(),
            )
            .await?;
        self.register_baseline(keys, &back).await?;
        Ok(serde_json::Value::Null)
    }

    async fn remove_baseline(&self, keys: &Keys) -> Result<serde_json::Value, ActionError> {
        let plan = self
            .inner
            .system
            .agent_by_key::<Executor>(keys.plan.clone())
            .with_actor(keys.actor.clone())
            .ask(ExecutorMsg::Get, self.timeout())
            .await;
        let plan = match plan {
            Ok(plan) => plan,
            Err(error) if rejection_code(&error) == Some(RejectionCode::NotFound) => {
                return Ok(serde_json::Value::Null);
            }
            Err(error) => return Err(error.into()),
        };
        self.inner
            .system
            .agent_by_key::<Amplifier>(keys.of_id(&plan.model_id))
            .with_actor(keys.actor.clone())
            .ask(
                AmplifierMsg::RemoveBaseline { plan_id: plan.id },
                self.timeout(),
            )
            .await?;
        Ok(serde_json::Value::Null)
    }
}

/// One action's span, under the saga's (none while spans are not exported):
/// each attempt of a step and each compensation is one.
fn step_span(saga: &Saga, due: &Due, direction: &str) -> tracing::Span {
    if !valueverse_runtime::propagating() {
        return tracing::Span::none();
    }
    let step = &saga.steps[due.step];
    let attempt = match due.direction {
        Direction::Forward => step.attempts,
        Direction::Compensate => step.compensation_attempts,
    };
    let span = tracing::info_span!(
        "saga step",
        otel.name = %format_args!("saga {} {} {direction}", saga.definition, step.name),
        saga.id = %saga.id,
        saga.definition = %saga.definition,
        saga.step = %step.name,
        saga.direction = direction,
        saga.attempt = attempt,
        tenant = valueverse_runtime::split_key(&saga.id).0,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
    );
    if let Some(parent) = saga.trace_context.as_deref().and_then(TraceContext::decode) {
        parent.adopt(&span);
    }
    span
}

/// A compensation finding its work done already, or nothing to undo, has
/// succeeded: compensations are idempotent.
/// A step's creation that an earlier attempt already made (the agent
/// answers `conflict` for its key) is applied once: done.
fn applied_once<T>(outcome: Result<T, AgentError>) -> Result<(), ActionError> {
    match outcome {
        Ok(_) => Ok(()),
        Err(error) if rejection_code(&error) == Some(RejectionCode::Conflict) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn tolerate_done(outcome: Result<(), AgentError>) -> Result<serde_json::Value, ActionError> {
    match outcome {
        Ok(()) => Ok(serde_json::Value::Null),
        Err(error)
            if matches!(
                rejection_code(&error),
                Some(RejectionCode::Conflict | RejectionCode::NotFound)
            ) =>
        {
            Ok(serde_json::Value::Null)
        }
        Err(error) => Err(error.into()),
    }
}

/// What a saga was asked to do, typed: its definition's input, read from
/// the JSON the saga log keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaInput {
    ValueCreation(Box<ValueCreationInput>),
    Renewal(RenewalInput),
}

impl SagaInput {
    pub fn definition(&self) -> SagaDefinition {
        match self {
            SagaInput::ValueCreation(_) => super::value_creation(),
            SagaInput::Renewal(_) => super::renewal(),
        }
    }

    /// The step to fail on purpose (admin only).
    pub fn fail_step(&self) -> Option<&str> {
        match self {
            SagaInput::ValueCreation(input) => input.fail_step.as_deref(),
            SagaInput::Renewal(input) => input.fail_step.as_deref(),
        }
    }

    fn start_date(&self) -> Option<NaiveDate> {
        match self {
            SagaInput::ValueCreation(input) => input.start_date,
            SagaInput::Renewal(input) => input.start_date,
        }
    }

    /// A new saga (id `id`) that does this, its input kept in the log.
    pub fn start(&self, id: String, now: DateTime<Utc>) -> Result<Saga, serde_json::Error> {
        let json = match self {
            SagaInput::ValueCreation(input) => serde_json::to_value(&**input)?,
            SagaInput::Renewal(input) => serde_json::to_value(input)?,
        };
        Ok(Saga::new(id, &self.definition(), json, now))
    }

    /// The input `saga` recorded, as its definition reads it.
    pub fn of(saga: &Saga) -> Result<SagaInput, String> {
        let bad = |error: serde_json::Error| format!("bad saga input: {error}");
        match saga.definition.as_str() {
            "value-creation" => Deserialize::deserialize(&*saga.input)
                .map(|input| SagaInput::ValueCreation(Box::new(input)))
                .map_err(bad),
            "renewal" => Deserialize::deserialize(&*saga.input)
                .map(SagaInput::Renewal)
                .map_err(bad),
            other => Err(format!("this build has no saga definition `{other}`")),
        }
    }
}

/// The instance keys of a saga's steps.
struct Keys {
    /// Who the saga's steps act for: its starter, through the saga.
    actor: std::sync::Arc<str>,
    model: String,
    simulation: String,
    commitment: String,
    plan: String,
}

/// The id part of an instance key (what the agents' states and the API
/// call an id).
fn id_of(key: &str) -> &str {
    valueverse_runtime::split_key(key).1
}

impl Keys {
    /// The instance key of an id the saga's input or an agent's state
    /// names: in the saga's tenant, never another's.
    fn of_id(&self, id: &str) -> String {
        let tenant = valueverse_runtime::split_key(&self.model).0;
        valueverse_runtime::join_key(tenant, id).to_string()
    }

    /// The keys of the agents a saga makes, from the saga's key: in the
    /// saga's tenant (`acme/s1` makes `acme/s1-model`); its steps act for
    /// its starter.
    fn of_started(saga: &str, started_by: Option<&str>) -> Keys {
        Keys {
            actor: format!(
                "{} via saga {}",
                started_by.unwrap_or("system"),
                id_of(saga)
            )
            .into(),
            model: format!("{saga}-model"),
            simulation: format!("{saga}-simulation"),
            commitment: format!("{saga}-commitment"),
            plan: format!("{saga}-plan"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each definition's steps read back from the names the log keeps, and
    /// a saga's input reads back as its definition's type.
    #[test]
    fn steps_and_inputs_read_back_typed() {
        for definition in super::super::definitions() {
            for step in &definition.steps {
                assert_eq!(Step::named(step.name()), Some(step.step));
            }
        }
        assert_eq!(Step::named("teleport"), None);
        let renewal = SagaInput::Renewal(RenewalInput {
            commitment_id: "c1".into(),
            start_date: NaiveDate::from_ymd_opt(2027, 1, 1),
            paths: 500,
            fail_step: Some("amend".into()),
        });
        let saga = renewal.start("s1".into(), Utc::now()).unwrap();
        assert_eq!(saga.definition, "renewal");
        assert_eq!(saga.steps.len(), 4);
        let read = SagaInput::of(&saga).unwrap();
        assert_eq!(read, renewal);
        assert_eq!(read.fail_step(), Some("amend"));
        let mut unknown = saga.clone();
        unknown.definition = "teleport".into();
        assert!(SagaInput::of(&unknown).unwrap_err().contains("teleport"));
        let mut garbled = saga;
        garbled.input = serde_json::json!({ "commitment_id": 5 }).into();
        assert!(
            SagaInput::of(&garbled)
                .unwrap_err()
                .contains("bad saga input")
        );
    }
}
