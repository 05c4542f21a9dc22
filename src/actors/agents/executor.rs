//! The executor agent: one instance per execution plan. A plan comes from a
//! commitment (its milestones) and adds tasks with owners and due dates; it
//! records progress and deliveries of realized value (checked: a known
//! driver, a finite value within the configured bound, a date within the
//! plan's horizon), and a periodic tick marks overdue milestones and
//! announces them. A commitment has one active plan: a new one supersedes
//! it, and voiding the commitment cancels it.

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
    /// A newer plan of the same commitment took its place.
    Superseded,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Active => "active",
            PlanStatus::Cancelled => "cancelled",
            PlanStatus::Superseded => "superseded",
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
    /// The model version's horizon: deliveries are dated within
    /// `start_date` and that many months after (0 in plans from before it
    /// was kept: no end).
    #[serde(default)]
    pub horizon_months: u32,
    pub milestones: Vec<PlanMilestone>,
    pub tasks: Vec<Task>,
    pub deliveries: Vec<Delivery>,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// The plan that took this one's place.
    #[serde(default)]
    pub superseded_by: Option<String>,
    /// The plan's row carries the date its next milestone falls due (false
    /// in plans saved before it did: the next tick saves it).
    #[serde(default)]
    pub due_indexed: bool,
}

/// Most deliveries one plan keeps.
pub const MAX_DELIVERIES: usize = 50_000;

impl Plan {
    /// The last day a delivery may be dated (`None`: no end).
    pub fn last_day(&self) -> Option<NaiveDate> {
        (self.horizon_months > 0).then(|| {
            super::value::add_months(self.start_date, self.horizon_months)
                .pred_opt()
                .unwrap_or(NaiveDate::MAX)
        })
    }

    /// Realized value in all.
    pub fn realized_value(&self) -> f64 {
        self.deliveries.iter().map(|d| d.value).sum()
    }

    /// The first day a tick finds a pending milestone overdue, as the
    /// plans row's `next_due_ms` (none: nothing left to find).
    fn next_due_ms(&self) -> Option<i64> {
        if self.status != PlanStatus::Active {
            return None;
        }
        self.milestones
            .iter()
            .filter(|m| m.status == MilestoneStatus::Pending)
            .map(|m| m.due_date)
            .min()
            .and_then(|due| due.succ_opt())
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map(|at| at.and_utc().timestamp_millis())
    }

    /// Why `delivery` cannot be recorded: `(field, message)`.
    fn refuse_delivery(
        &self,
        delivery: &Delivery,
        max_value: f64,
    ) -> Option<(&'static str, String)> {
        // Characters, as the import counts them.
        if delivery.id.is_empty() || delivery.id.chars().count() > 100 {
            return Some(("id", "a delivery id has 1 to 100 characters".into()));
        }
        if !self.drivers.contains(&delivery.driver) {
            return Some((
                "driver",
                format!(
                    "model `{}` v{} has no driver `{}` (it has: {})",
                    self.model_id,
                    self.model_version,
                    delivery.driver,
                    self.drivers.join(", ")
                ),
            ));
        }
        let bound = max_value.min(valueverse_gpu::model::MAX_MONEY);
        if !(delivery.value.is_finite() && delivery.value.abs() <= bound) {
            return Some((
                "value",
                format!(
                    "must be a finite number within ±{bound:e}, got {}",
                    delivery.value
                ),
            ));
        }
        let last = self.last_day().unwrap_or(NaiveDate::MAX);
        if !(self.start_date..=last).contains(&delivery.date) {
            return Some((
                "date",
                format!(
                    "must be within the plan's horizon, {}..={last}, got {}",
                    self.start_date, delivery.date
                ),
            ));
        }
        if delivery
            .note
            .as_ref()
            .is_some_and(|note| note.chars().count() > 1000)
        {
            return Some(("note", "at most 1000 characters".into()));
        }
        None
    }

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
    /// Records deliveries, all or none: each checked (values within
    /// ±`max_value`); an id the plan has with the same values is recorded
    /// once, with others refused.
    RecordDeliveries {
        deliveries: Vec<Delivery>,
        max_value: f64,
    },
    /// Marks milestones past due on `today` overdue, announcing each once.
    Tick {
        today: NaiveDate,
    },
    Cancel {
        reason: String,
    },
    /// A newer plan of the commitment takes this one's place.
    Supersede {
        by: String,
    },
    /// A renewal moves the open plan to the commitment that renews its
    /// own (and its compensation moves it back).
    Reassign {
        commitment_id: String,
        model_version: i64,
        drivers: Vec<String>,
        horizon_months: u32,
    },
}

impl AgentMessage for ExecutorMsg {
    fn name(&self) -> &'static str {
        match self {
            ExecutorMsg::Create(_) => "create",
            ExecutorMsg::Get => "get",
            ExecutorMsg::UpdateTask { .. } => "update_task",
            ExecutorMsg::CompleteMilestone { .. } => "complete_milestone",
            ExecutorMsg::RecordDeliveries { .. } => "record_deliveries",
            ExecutorMsg::Tick { .. } => "tick",
            ExecutorMsg::Cancel { .. } => "cancel",
            ExecutorMsg::Supersede { .. } => "supersede",
            ExecutorMsg::Reassign { .. } => "reassign",
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
            (ExecutorMsg::Tick { .. }, Some(plan)) if plan.status != PlanStatus::Active => {
                // A row indexed before the plan ended: saved again, off
                // the tick's index.
                if !plan.due_indexed {
                    plan.due_indexed = true;
                    ctx.persist();
                }
                plan
            }
            (ExecutorMsg::Reassign { commitment_id, .. }, Some(plan))
                if plan.commitment_id == commitment_id =>
            {
                plan
            }
            (_, Some(plan)) if plan.status != PlanStatus::Active => {
                return Err(refuse(
                    RejectionCode::Conflict,
                    format!("plan `{key}` is {}", plan.status.as_str()),
                    None,
                ));
            }
            (ExecutorMsg::UpdateTask { task, status }, Some(plan)) => {
                let Some(index) = plan.tasks.iter().position(|t| t.id == task) else {
                    // The field names what is not there: 422, not 404 (the
                    // plan is).
                    return Err(refuse(
                        RejectionCode::Invalid,
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
                        RejectionCode::Invalid,
                        format!("plan `{key}` has no milestone `{milestone}`"),
                        Some("milestone"),
                    ));
                }
                complete(plan, &milestone, on, ctx);
                ctx.persist();
                plan
            }
            (
                ExecutorMsg::RecordDeliveries {
                    deliveries,
                    max_value,
                },
                Some(plan),
            ) => {
                let mut fresh: Vec<Delivery> = Vec::new();
                // By id: a file of many rows is checked in one pass.
                let known: std::collections::HashMap<&str, &Delivery> =
                    plan.deliveries.iter().map(|d| (d.id.as_str(), d)).collect();
                let mut seen = std::collections::HashSet::new();
                // One delivery's fields are named plainly (the single route's
                // body); a batch's by index.
                let single = deliveries.len() == 1;
                for (index, delivery) in deliveries.into_iter().enumerate() {
                    let at = |field: &str| {
                        if single {
                            field.to_owned()
                        } else {
                            format!("deliveries[{index}].{field}")
                        }
                    };
                    if let Some(existing) = known.get(delivery.id.as_str()) {
                        if **existing != delivery {
                            return Err(refuse(
                                RejectionCode::Conflict,
                                format!(
                                    "delivery `{}` was recorded with other values",
                                    delivery.id
                                ),
                                Some(&at("id")),
                            ));
                        }
                        continue;
                    }
                    if let Some((field, message)) = plan.refuse_delivery(&delivery, max_value) {
                        let code = if field == "driver" {
                            RejectionCode::UnknownDriver
                        } else {
                            RejectionCode::Invalid
                        };
                        return Err(refuse(code, message, Some(&at(field))));
                    }
                    if !seen.insert(delivery.id.clone()) {
                        continue;
                    }
                    fresh.push(delivery);
                }
                if plan.deliveries.len() + fresh.len() > MAX_DELIVERIES {
                    return Err(refuse(
                        RejectionCode::Invalid,
                        format!("a plan keeps at most {MAX_DELIVERIES} deliveries"),
                        Some("deliveries"),
                    ));
                }
                if !fresh.is_empty() {
                    ctx.emit(
                        "delivery.recorded",
                        serde_json::json!({
                            "plan_id": plan.id, "model_id": plan.model_id,
                            "commitment_id": plan.commitment_id,
                            "deliveries": fresh.len(),
                            "value": fresh.iter().map(|d| d.value).sum::<f64>(),
                            "first": fresh.first(),
                        }),
                    );
                    plan.deliveries.extend(fresh);
                    ctx.persist();
                }
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
                if changed || !plan.due_indexed {
                    plan.due_indexed = true;
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
            (ExecutorMsg::Supersede { by }, Some(plan)) => {
                plan.status = PlanStatus::Superseded;
                plan.cancelled_at = Some(Utc::now());
                plan.cancel_reason = Some(format!("superseded by plan {by}"));
                plan.superseded_by = Some(by);
                ctx.emit(
                    "plan.superseded",
                    serde_json::json!({
                        "plan_id": plan.id, "commitment_id": plan.commitment_id,
                        "superseded_by": plan.superseded_by,
                    }),
                );
                ctx.persist();
                plan
            }
            (
                ExecutorMsg::Reassign {
                    commitment_id,
                    model_version,
                    drivers,
                    horizon_months,
                },
                Some(plan),
            ) => {
                ctx.emit(
                    "plan.reassigned",
                    serde_json::json!({
                        "plan_id": plan.id, "from": plan.commitment_id, "to": commitment_id,
                    }),
                );
                plan.commitment_id = commitment_id;
                plan.model_version = model_version;
                // Deliveries already made name the old version's drivers.
                for driver in drivers {
                    if !plan.drivers.contains(&driver) {
                        plan.drivers.push(driver);
                    }
                }
                plan.horizon_months = horizon_months;
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
        ("next_due_ms", Column::Int(plan.next_due_ms())),
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

/// Tells every active plan with a milestone due the date, so that it marks
/// and announces its overdue milestones; answers how many were told. The
/// node runs it every `executor_tick`. Plans with nothing due are not read
/// (an index on the next due date), so idle plans stay passivated.
pub async fn tick_active_plans(
    system: &valueverse_runtime::System,
    records: &crate::Records,
) -> Result<usize, valueverse_runtime::StateError> {
    let now = Utc::now();
    let today = now.date_naive();
    let (mut offset, mut told) = (0, 0);
    loop {
        let keys = records
            .store()
            .due_plan_keys(now.timestamp_millis(), 100, offset)
            .await?;
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
        horizon_months: version.model.horizon_months,
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
        superseded_by: None,
        due_indexed: true,
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
