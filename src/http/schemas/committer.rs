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
    Superseded,
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
    /// The first day of the first statement period.
    pub start_date: Option<NaiveDate>,
    /// Months in a statement period: 1, 3, 6 or 12.
    pub statement_months: u32,
    /// The commitment a renewal made this one to replace.
    pub renews: Option<String>,
}

/// What a driver is expected to deliver: gross value a month at full ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriverBaseline {
    pub name: String,
    pub monthly_value: f64,
    pub ramp_months: u32,
}

/// The model version's expected gross value by driver, and the scale the
/// target puts on it: committed gross value = scale x expected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Expectation {
    pub model_version: i64,
    pub horizon_months: u32,
    pub drivers: Vec<DriverBaseline>,
    pub scale: f64,
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
    pub expectation: Option<Expectation>,
    /// Statements issued (they are on `/statements`).
    pub statements_issued: usize,
    pub superseded_by: Option<String>,
}

/// One driver's figures in a statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatementLine {
    pub driver: String,
    pub committed: f64,
    /// Delivered within the period.
    pub realized: f64,
    /// Delivered before the period and not yet stated (a correction).
    pub adjustment: f64,
}

/// Figures from the commitment's start to the end of a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToDate {
    pub committed: f64,
    pub realized: f64,
    pub value_above_target: f64,
    pub fees: f64,
}

/// A period's statement: gross, undiscounted value in the commitment's
/// currency; immutable once issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Statement {
    pub period: u32,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub issued_at: DateTime<Utc>,
    pub lines: Vec<StatementLine>,
    pub committed: f64,
    pub realized: f64,
    pub adjustments: f64,
    pub value_above_target: f64,
    pub fixed_fee: f64,
    pub outcome_fee: f64,
    pub fee: f64,
    pub cap_reached: bool,
    pub to_date: ToDate,
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
convert_enum!(domain::CommitmentStatus <=> CommitmentStatus {
    Active,
    Voided,
    Superseded
});
convert_struct!(domain::CommitmentRequest <=> CommitmentRequest {
    model_id,
    model_version,
    model_name,
    currency,
    confidence,
    target,
    terms: into,
    milestones: each,
    start_date,
    statement_months,
    renews
});
convert_struct!(valueverse_agents::value::DriverBaseline => DriverBaseline {
    name,
    monthly_value,
    ramp_months
});
convert_struct!(valueverse_agents::value::Expectation => Expectation {
    model_version,
    horizon_months,
    drivers: each,
    scale
});
convert_struct!(valueverse_agents::statements::StatementLine => StatementLine {
    driver,
    committed,
    realized,
    adjustment
});
convert_struct!(valueverse_agents::statements::ToDate => ToDate {
    committed,
    realized,
    value_above_target,
    fees
});
convert_struct!(valueverse_agents::statements::Statement => Statement {
    period,
    period_start,
    period_end,
    issued_at,
    lines: each,
    committed,
    realized,
    adjustments,
    value_above_target,
    fixed_fee,
    outcome_fee,
    fee,
    cap_reached,
    to_date: into
});

impl From<domain::Commitment> for Commitment {
    fn from(commitment: domain::Commitment) -> Commitment {
        let domain::Commitment {
            id,
            status,
            request,
            simulated,
            created_at,
            voided_at,
            void_reason,
            expectation,
            statements,
            superseded_by,
            statements_indexed: _,
        } = commitment;
        Commitment {
            id,
            status: status.into(),
            request: request.into(),
            simulated: simulated.into(),
            created_at,
            voided_at,
            void_reason,
            expectation: expectation.map(Into::into),
            statements_issued: statements.len(),
            superseded_by,
        }
    }
}
