//! The saga coordinator agent: one instance per saga, keyed by its id, so
//! that the cluster can place it like any other instance. It owns the
//! durable saga log (table `sagas`): every transition of the state machine
//! in `crate::sagas` is written before the reply, so before the runner takes
//! the next action; the time of the next action is a column of the same
//! row, so a restart finds every saga that something must drive.

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::sagas::{Due, Saga, SagaDefinition, SagaStatus, TransitionError, definition};
use valueverse_store::Column;

use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SagaMsg {
    Start(Box<Saga>),
    Get,
    /// The action due now, handed out (recorded as in flight), if any.
    /// The outcome messages below answer the next one the same way.
    Take,
    Succeeded {
        step: usize,
        output: serde_json::Value,
    },
    Failed {
        step: usize,
        error: String,
        retryable: bool,
    },
    Compensated {
        step: usize,
    },
    CompensationFailed {
        step: usize,
        error: String,
    },
    Cancel,
    Retry,
    /// The node restarted: what was in flight is due now.
    Resume,
}

impl AgentMessage for SagaMsg {
    fn name(&self) -> &'static str {
        match self {
            SagaMsg::Start(_) => "start",
            SagaMsg::Get => "get",
            SagaMsg::Take => "take",
            SagaMsg::Succeeded { .. } => "succeeded",
            SagaMsg::Failed { .. } => "failed",
            SagaMsg::Compensated { .. } => "compensated",
            SagaMsg::CompensationFailed { .. } => "compensation_failed",
            SagaMsg::Cancel => "cancel",
            SagaMsg::Retry => "retry",
            SagaMsg::Resume => "resume",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SagaReply {
    Saga(Box<Saga>),
    Due(Option<Due>, Box<Saga>),
}

impl SagaReply {
    pub fn saga(self) -> Saga {
        match self {
            SagaReply::Saga(saga) | SagaReply::Due(_, saga) => *saga,
        }
    }
}

pub struct SagaCoordinator;

fn refused(error: TransitionError) -> HandlerError {
    HandlerError::rejected(RejectionCode::Conflict, error.to_string(), None)
}

fn definition_of(saga: &Saga) -> Result<SagaDefinition, HandlerError> {
    definition(&saga.definition, saga.definition_version).ok_or_else(|| {
        // A definition version this build no longer has: nothing can drive
        // the saga safely, so it stops here.
        HandlerError::fatal(format!(
            "no saga definition {} v{}",
            saga.definition, saga.definition_version
        ))
    })
}

/// What `/ws/sagas/{id}` and the notifier see of a transition: typed and
/// borrowed, so that it is encoded once (a `json!` tree was encoded twice).
#[derive(Serialize)]
struct Transition<'a> {
    saga_id: &'a str,
    definition: &'a str,
    status: SagaStatus,
    error: &'a Option<String>,
    steps: Vec<StepTransition<'a>>,
}

#[derive(Serialize)]
struct StepTransition<'a> {
    name: &'a str,
    status: crate::sagas::StepStatus,
    attempts: u32,
    compensation_attempts: u32,
    last_error: &'a Option<String>,
}

fn transition(saga: &Saga) -> Transition<'_> {
    Transition {
        saga_id: valueverse_runtime::split_key(&saga.id).1,
        definition: &saga.definition,
        status: saga.status,
        error: &saga.error,
        steps: saga
            .steps
            .iter()
            .map(|step| StepTransition {
                name: &step.name,
                status: step.status,
                attempts: step.attempts,
                compensation_attempts: step.compensation_attempts,
                last_error: &step.last_error,
            })
            .collect(),
    }
}

/// Begins the action due now, if any, in the write this message makes,
/// and answers it with the saga.
fn hand_out(
    saga: &mut Saga,
    definition: &SagaDefinition,
    now: chrono::DateTime<Utc>,
    ctx: &mut Handling<'_>,
) -> SagaReply {
    let due = saga.due(definition, now);
    if let Some(due) = &due {
        saga.begin(definition, due, now);
        ctx.persist();
        ctx.emit("saga.transition", transition(saga));
    }
    SagaReply::Due(due, Box::new(saga.clone()))
}

impl Agent for SagaCoordinator {
    const KIND: &'static str = "saga";
    const MESSAGE_ID: u32 = 0x0107;
    type State = Option<Saga>;
    type Msg = SagaMsg;
    type Reply = SagaReply;

    fn init(_key: &str) -> Option<Saga> {
        None
    }

    fn handle(
        state: &mut Option<Saga>,
        msg: SagaMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<SagaReply, HandlerError> {
        let key = ctx.key().to_owned();
        let saga = match (msg, state.as_mut()) {
            (SagaMsg::Start(saga), None) => {
                ctx.persist();
                ctx.emit("saga.transition", transition(&saga));
                let saga = state.insert(*saga);
                // The first action goes out in the start's write, as the
                // next action does in an outcome's.
                let definition = definition_of(saga)?;
                return Ok(hand_out(saga, &definition, Utc::now(), ctx));
            }
            // Starting twice (a retried request) answers the saga as it is.
            (SagaMsg::Start(_), Some(saga)) => saga,
            (_, None) => {
                return Err(HandlerError::rejected(
                    RejectionCode::NotFound,
                    format!("no saga `{key}`"),
                    None,
                ));
            }
            (SagaMsg::Get, Some(saga)) => saga,
            (SagaMsg::Resume, Some(saga)) => {
                if saga.resume(Utc::now()) {
                    ctx.persist();
                }
                saga
            }
            (SagaMsg::Take, Some(saga)) => {
                let definition = definition_of(saga)?;
                return Ok(hand_out(saga, &definition, Utc::now(), ctx));
            }
            (msg, Some(saga)) => {
                let definition = definition_of(saga)?;
                let now = Utc::now();
                let before = saga.status;
                // An outcome reported by the runner hands out the next
                // action in the same write: one log write per step, not two.
                let reported = matches!(
                    msg,
                    SagaMsg::Succeeded { .. }
                        | SagaMsg::Failed { .. }
                        | SagaMsg::Compensated { .. }
                        | SagaMsg::CompensationFailed { .. }
                );
                match msg {
                    SagaMsg::Succeeded { step, output } => {
                        saga.succeeded(&definition, step, output, now)
                    }
                    SagaMsg::Failed {
                        step,
                        error,
                        retryable,
                    } => saga.failed(&definition, step, error, retryable, now),
                    SagaMsg::Compensated { step } => saga.compensated(&definition, step, now),
                    SagaMsg::CompensationFailed { step, error } => {
                        saga.compensation_failed(&definition, step, error, now)
                    }
                    SagaMsg::Cancel => saga.cancel(&definition, now),
                    SagaMsg::Retry => saga.retry(&definition, now),
                    SagaMsg::Start(_) | SagaMsg::Get | SagaMsg::Take | SagaMsg::Resume => Ok(()),
                }
                .map_err(refused)?;
                ctx.persist();
                // Every transition, for `/ws/sagas/{id}`; and the end, for
                // the notifier's subscribers.
                ctx.emit("saga.transition", transition(saga));
                if saga.status != before && saga.status.is_final() {
                    ctx.emit("saga.finished", transition(saga));
                }
                if reported {
                    return Ok(hand_out(saga, &definition, now, ctx));
                }
                saga
            }
        };
        Ok(SagaReply::Saga(Box::new(saga.clone())))
    }

    valueverse_runtime::table_persistence!("sagas", |saga| vec![
        ("status", Column::Text(Some(saga.status.as_str().into()))),
        ("definition", Column::Text(Some(saga.definition.clone()))),
        (
            "next_action_at_ms",
            Column::Int(
                saga.next_action_at
                    .filter(|_| !matches!(
                        saga.status,
                        SagaStatus::Completed | SagaStatus::Compensated
                    ))
                    .map(|at| at.timestamp_millis())
            )
        ),
        (
            "created_at_ms",
            Column::Int(Some(saga.created_at.timestamp_millis()))
        ),
    ]);
}
