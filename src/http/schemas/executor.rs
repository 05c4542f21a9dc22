//! The executor's shapes (`valueverse_agents::executor`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use valueverse_agents::executor as domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Active,
    Cancelled,
    Superseded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MilestoneStatus {
    Pending,
    Overdue,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Todo,
    InProgress,
    Blocked,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanMilestone {
    pub name: String,
    pub due_date: NaiveDate,
    pub expected_value: f64,
    pub status: MilestoneStatus,
    pub completed_on: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: String,
    pub driver: String,
    pub value: f64,
    pub date: NaiveDate,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub id: String,
    pub status: PlanStatus,
    pub commitment_id: String,
    pub model_id: String,
    pub model_version: i64,
    /// Drivers deliveries may name (the model version's).
    pub drivers: Vec<String>,
    pub start_date: NaiveDate,
    /// Deliveries are dated from `start_date` to this many months after
    /// (0: no end, in plans from before it was kept).
    pub horizon_months: u32,
    pub milestones: Vec<PlanMilestone>,
    pub tasks: Vec<Task>,
    pub deliveries: Vec<Delivery>,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// The plan that took this one's place.
    pub superseded_by: Option<String>,
}

convert_enum!(domain::PlanStatus <=> PlanStatus {
    Active,
    Cancelled,
    Superseded
});
convert_enum!(domain::MilestoneStatus <=> MilestoneStatus {
    Pending,
    Overdue,
    Done
});
convert_enum!(domain::TaskStatus <=> TaskStatus {
    Todo,
    InProgress,
    Blocked,
    Done
});
convert_struct!(domain::PlanMilestone <=> PlanMilestone {
    name,
    due_date,
    expected_value,
    status: into,
    completed_on
});
convert_struct!(domain::Task <=> Task {
    id,
    name,
    owner,
    due_date,
    milestone,
    status: into,
    updated_at
});
convert_struct!(domain::Delivery <=> Delivery {
    id,
    driver,
    value,
    date,
    note
});
impl From<domain::Plan> for Plan {
    fn from(plan: domain::Plan) -> Plan {
        let domain::Plan {
            id,
            status,
            commitment_id,
            model_id,
            model_version,
            drivers,
            start_date,
            horizon_months,
            milestones,
            tasks,
            deliveries,
            created_at,
            cancelled_at,
            cancel_reason,
            superseded_by,
            due_indexed: _,
        } = plan;
        Plan {
            id,
            status: status.into(),
            commitment_id,
            model_id,
            model_version,
            drivers,
            start_date,
            horizon_months,
            milestones: milestones.into_iter().map(Into::into).collect(),
            tasks: tasks.into_iter().map(Into::into).collect(),
            deliveries: deliveries.into_iter().map(Into::into).collect(),
            created_at,
            cancelled_at,
            cancel_reason,
            superseded_by,
        }
    }
}
