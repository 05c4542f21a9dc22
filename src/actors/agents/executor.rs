//! The executor agent: one instance per execution plan. A plan comes from a
//! commitment (its milestones) and adds tasks with owners and due dates; it
//! records progress and deliveries of realized value, and a periodic tick
//! marks overdue milestones and announces them.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use valueverse_store::Column;

use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

pub(crate) const TABLE: &str = "plans";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Active,
    Cancelled,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Active => "active",
            PlanStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MilestoneStatus {
    Pending,
    Overdue,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Todo,
    InProgress,
    Blocked,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanMilestone {
    pub name: String,
    pub due_date: NaiveDate,
    pub expected_value: f64,
    pub status: MilestoneStatus,
    pub completed_on: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub due_date: NaiveDate,
    /// The milestone the task leads to, if any.
    pub milestone: Option<String>,
    pub status: TaskStatus,
    pub updated_at: DateTime<Utc>,
}

/// Realized value of one driver, on a date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub driver: String,
    pub value: f64,
    pub date: NaiveDate,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub status: PlanStatus,
    pub commitment_id: String,
    pub model_id: String,
    pub model_version: i64,
    /// Drivers deliveries may name (the model version's).
    pub drivers: Vec<String>,
    pub start_date: NaiveDate,
    pub milestones: Vec<PlanMilestone>,
    pub tasks: Vec<Task>,
    pub deliveries: Vec<Delivery>,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
}

impl Plan {
    /// Share of tasks done (milestones when there are no tasks), 0 to 1.
    pub fn progress(&self) -> f64 {
        let (done, all) = if self.tasks.is_empty() {
            let done = self
                .milestones
                .iter()
                .filter(|m| m.status == MilestoneStatus::Done)
                .count();
            (done, self.milestones.len())
        } else {
            let done = self
                .tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Done)
                .count();
            (done, self.tasks.len())
        };
        if all == 0 {
            0.0
        } else {
            done as f64 / all as f64
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExecutorMsg {
    Create(Box<Plan>),
    Get,
    /// Sets a task's status; a milestone whose tasks are all done is done.
    UpdateTask {
        task: String,
        status: TaskStatus,
    },
    /// Marks a milestone done (on `on`).
    CompleteMilestone {
        milestone: String,
        on: NaiveDate,
    },
    /// Records a delivery; the same id twice is recorded once.
    RecordDelivery(Delivery),
    /// Marks milestones past due on `today` overdue, announcing each once.
    Tick {
        today: NaiveDate,
    },
    Cancel {
        reason: String,
    },
}

impl AgentMessage for ExecutorMsg {
    fn name(&self) -> &'static str {
        match self {
            ExecutorMsg::Create(_) => "create",
            ExecutorMsg::Get => "get",
            ExecutorMsg::UpdateTask { .. } => "update_task",
            ExecutorMsg::CompleteMilestone { .. } => "complete_milestone",
            ExecutorMsg::RecordDelivery(_) => "record_delivery",
            ExecutorMsg::Tick { .. } => "tick",
            ExecutorMsg::Cancel { .. } => "cancel",
        }
    }
}

pub struct Executor;

fn refuse(code: RejectionCode, message: String, field: Option<&str>) -> HandlerError {
    HandlerError::rejected(code, message, field)
}

impl Agent for Executor {
    const KIND: &'static str = "executor";
    const MESSAGE_ID: u32 = 0x0103;
    type State = Option<Plan>;
    type Msg = ExecutorMsg;
    type Reply = Plan;

    fn init(_key: &str) -> Option<Plan> {
        None
    }

    fn handle(
        state: &mut Option<Plan>,
        msg: ExecutorMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<Plan, HandlerError> {
        let key = ctx.key().to_owned();
        let plan = match (msg, state.as_mut()) {
            (ExecutorMsg::Create(plan), None) => {
                ctx.emit(
                    "plan.created",
                    serde_json::json!({
                        "plan_id": plan.id, "commitment_id": plan.commitment_id,
                        "model_id": plan.model_id,
                    }),
                );
                ctx.persist();
                state.insert(*plan)
            }
            (ExecutorMsg::Create(_), Some(_)) => {
                return Err(refuse(
                    RejectionCode::Conflict,
                    format!("plan `{key}` exists"),
                    None,
                ));
            }
            (_, None) => {
                return Err(refuse(
                    RejectionCode::NotFound,
                    format!("no plan `{key}`"),
                    None,
                ));
            }
            (ExecutorMsg::Get, Some(plan)) => plan,
            (_, Some(plan)) if plan.status == PlanStatus::Cancelled => {
                return Err(refuse(
                    RejectionCode::Conflict,
                    format!("plan `{key}` is cancelled"),
                    None,
                ));
            }
            (ExecutorMsg::UpdateTask { task, status }, Some(plan)) => {
                let Some(index) = plan.tasks.iter().position(|t| t.id == task) else {
                    return Err(refuse(
                        RejectionCode::NotFound,
                        format!("plan `{key}` has no task `{task}`"),
                        Some("task"),
                    ));
                };
                plan.tasks[index].status = status;
                plan.tasks[index].updated_at = Utc::now();
                if let Some(milestone) = plan.tasks[index].milestone.clone() {
                    let all_done = plan
                        .tasks
                        .iter()
                        .filter(|t| t.milestone.as_deref() == Some(&milestone))
                        .all(|t| t.status == TaskStatus::Done);
                    if all_done {
                        complete(plan, &milestone, Utc::now().date_naive(), ctx);
                    }
                }
                ctx.persist();
                plan
            }
            (ExecutorMsg::CompleteMilestone { milestone, on }, Some(plan)) => {
                if !plan.milestones.iter().any(|m| m.name == milestone) {
                    return Err(refuse(
                        RejectionCode::NotFound,
                        format!("plan `{key}` has no milestone `{milestone}`"),
                        Some("milestone"),
                    ));
                }
                complete(plan, &milestone, on, ctx);
                ctx.persist();
                plan
            }
            (ExecutorMsg::RecordDelivery(delivery), Some(plan)) => {
                if let Some(existing) = plan.deliveries.iter().find(|d| d.id == delivery.id) {
                    if *existing != delivery {
                        return Err(refuse(
                            RejectionCode::Conflict,
                            format!("delivery `{}` was recorded with other values", delivery.id),
                            Some("id"),
                        ));
                    }
                    return Ok(plan.clone());
                }
                if !plan.drivers.contains(&delivery.driver) {
                    return Err(refuse(
                        RejectionCode::UnknownDriver,
                        format!(
                            "model `{}` v{} has no driver `{}` (it has: {})",
                            plan.model_id,
                            plan.model_version,
                            delivery.driver,
                            plan.drivers.join(", ")
                        ),
                        Some("driver"),
                    ));
                }
                ctx.emit(
                    "delivery.recorded",
                    serde_json::json!({
                        "plan_id": plan.id, "model_id": plan.model_id, "delivery": delivery,
                    }),
                );
                plan.deliveries.push(delivery);
                ctx.persist();
                plan
            }
            (ExecutorMsg::Tick { today }, Some(plan)) => {
                let mut changed = false;
                for milestone in &mut plan.milestones {
                    if milestone.status == MilestoneStatus::Pending && milestone.due_date < today {
                        milestone.status = MilestoneStatus::Overdue;
                        changed = true;
                        ctx.emit(
                            "milestone.overdue",
                            serde_json::json!({
                                "plan_id": plan.id, "model_id": plan.model_id,
                                "milestone": milestone.name, "due_date": milestone.due_date,
                                "expected_value": milestone.expected_value,
                            }),
                        );
                    }
                }
                if changed {
                    ctx.persist();
                }
                plan
            }
            (ExecutorMsg::Cancel { reason }, Some(plan)) => {
                plan.status = PlanStatus::Cancelled;
                plan.cancelled_at = Some(Utc::now());
                plan.cancel_reason = Some(reason);
                ctx.emit(
                    "plan.cancelled",
                    serde_json::json!({ "plan_id": plan.id, "reason": plan.cancel_reason }),
                );
                ctx.persist();
                plan
            }
        };
        Ok(plan.clone())
    }

    valueverse_runtime::table_persistence!(TABLE, |plan| vec![
        ("status", Column::Text(Some(plan.status.as_str().into()))),
        (
            "commitment_id",
            Column::Text(Some(plan.commitment_id.clone()))
        ),
        ("model_id", Column::Text(Some(plan.model_id.clone()))),
        (
            "created_at_ms",
            Column::Int(Some(plan.created_at.timestamp_millis()))
        ),
    ]);
}

fn complete(plan: &mut Plan, name: &str, on: NaiveDate, ctx: &mut Handling<'_>) {
    if let Some(milestone) = plan.milestones.iter_mut().find(|m| m.name == name)
        && milestone.status != MilestoneStatus::Done
    {
        milestone.status = MilestoneStatus::Done;
        milestone.completed_on = Some(on);
        ctx.emit(
            "milestone.completed",
            serde_json::json!({ "plan_id": plan.id, "milestone": name, "on": on }),
        );
    }
}

/// Tells every active plan the date, so that it marks and announces its
/// overdue milestones; answers how many were told. The node runs it every
/// `executor_tick`.
pub async fn tick_active_plans(
    system: &valueverse_runtime::System,
    records: &crate::Records,
) -> Result<usize, valueverse_runtime::StateError> {
    let today = Utc::now().date_naive();
    let (mut offset, mut told) = (0, 0);
    loop {
        let keys = records.store().active_plan_keys(100, offset).await?;
        for key in &keys {
            // Each node ticks the plans it owns.
            if !system.is_local(Executor::KIND, key) {
                continue;
            }
            // A full mailbox only delays the check to the next tick.
            if system
                .agent_by_key::<Executor>(key.as_str())
                .tell(ExecutorMsg::Tick { today })
                .is_ok()
            {
                told += 1;
            }
        }
        if keys.len() < 100 {
            return Ok(told);
        }
        offset += 100;
    }
}

/// The plan of a commitment at a model version: the commitment's
/// milestones, the tasks given, the version's drivers.
pub fn plan_for(
    id: String,
    commitment: &super::committer::Commitment,
    version: &super::architect::ModelVersion,
    start_date: NaiveDate,
    tasks: Vec<Task>,
) -> Plan {
    Plan {
        id,
        status: PlanStatus::Active,
        commitment_id: commitment.id.clone(),
        model_id: commitment.request.model_id.clone(),
        model_version: version.version,
        drivers: version
            .model
            .drivers
            .iter()
            .map(|d| d.name.clone())
            .collect(),
        start_date,
        milestones: commitment
            .request
            .milestones
            .iter()
            .map(|m| PlanMilestone {
                name: m.name.clone(),
                due_date: m.due_date,
                expected_value: m.expected_value,
                status: MilestoneStatus::Pending,
                completed_on: None,
            })
            .collect(),
        tasks,
        deliveries: Vec::new(),
        created_at: Utc::now(),
        cancelled_at: None,
        cancel_reason: None,
    }
}

/// A page of the plans, newest first, filtered by commitment, model and
/// status.
pub async fn list_plans(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    commitment_id: Option<&str>,
    model_id: Option<&str>,
    status: Option<PlanStatus>,
    page: (i64, i64),
) -> Result<super::Listed<Plan>, valueverse_runtime::StateError> {
    let listing = valueverse_store::Listing::Plans {
        commitment_id,
        model_id,
        status: status.map(PlanStatus::as_str),
    };
    super::listing::page(records, tenant, listing, page).await
}
