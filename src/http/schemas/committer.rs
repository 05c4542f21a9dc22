//! The committer's shapes (`valueverse_agents::committer`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use valueverse_agents::committer as domain;

/// Contract terms: a fixed fee, plus a share of realized value above the
/// target, the whole capped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    #[schema(minimum = 0.0, maximum = 9007199254740991.0)]
    pub fixed_fee: f64,
    /// Share (0 to 1) of realized value above the target.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub outcome_share: f64,
    /// Most the customer pays in all; `None`: no cap.
    pub cap: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Milestone {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*\\S[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    /// 2000-01-01 to 2199-12-31.
    pub due_date: NaiveDate,
    #[schema(minimum = 0.0, maximum = 9007199254740991.0)]
    pub expected_value: f64,
}

/// What the simulation said, as the commitment was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SimulatedSupport {
    pub simulation_id: String,
    pub paths: u64,
    /// The seed of the run.
    pub seed: u64,
    /// The server drew it (only such a run backs a commitment).
    pub seed_by_server: bool,
    pub npv_mean: f64,
    /// The NPV reached with probability `confidence`.
    pub npv_at_confidence: f64,
    /// The quantile of the NPV relied on: `1 - confidence`.
    pub quantile: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommitmentStatus {
    Active,
    Voided,
}

/// What a client asks to commit to (checked by the caller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitmentRequest {
    pub model_id: String,
    pub model_version: i64,
    pub model_name: String,
    pub currency: String,
    pub confidence: f64,
    pub target: f64,
    pub terms: Terms,
    pub milestones: Vec<Milestone>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Commitment {
    pub id: String,
    pub status: CommitmentStatus,
    #[serde(flatten)]
    pub request: CommitmentRequest,
    pub simulated: SimulatedSupport,
    pub created_at: DateTime<Utc>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
}

convert_struct!(domain::Terms <=> Terms {
    fixed_fee,
    outcome_share,
    cap
});
convert_struct!(domain::Milestone <=> Milestone {
    name,
    due_date,
    expected_value
});
convert_struct!(domain::SimulatedSupport <=> SimulatedSupport {
    simulation_id,
    paths,
    seed,
    seed_by_server,
    npv_mean,
    npv_at_confidence,
    quantile
});
convert_enum!(domain::CommitmentStatus <=> CommitmentStatus { Active, Voided });
convert_struct!(domain::CommitmentRequest <=> CommitmentRequest {
    model_id,
    model_version,
    model_name,
    currency,
    confidence,
    target,
    terms: into,
    milestones: each
});
convert_struct!(domain::Commitment <=> Commitment {
    id,
    status: into,
    request: into,
    simulated: into,
    created_at,
    voided_at,
    void_reason
});
