//! The committer agent: one instance per commitment. A commitment promises
//! a value target for a model version at a confidence level; the committer
//! accepts it only when the model version's latest finished simulation
//! supports it (the NPV reached with that probability is at least the
//! target), and records the contract terms and milestones. Once a period
//! ends it issues the period's statement (`crate::statements`): realized
//! value against the committed value, and the fee the terms make of them.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::statements::{Statement, statement};
use crate::value::{Expectation, add_months};
use valueverse_gpu::model::{FieldError, MAX_MONEY};
use valueverse_store::Column;

use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

const TABLE: &str = "commitments";

/// Contract terms: a fixed fee, plus a share of realized value above the
/// target, the whole capped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    pub fixed_fee: f64,
    /// Share (0 to 1) of realized value above the target.
    pub outcome_share: f64,
    /// Most the customer pays in all; `None`: no cap.
    pub cap: Option<f64>,
}

impl Terms {
    /// What the customer owes for `realized` value against `target`.
    pub fn fee(&self, realized: f64, target: f64) -> f64 {
        let fee = self.fixed_fee + self.outcome_share * (realized - target).max(0.0);
        self.cap.map_or(fee, |cap| fee.min(cap))
    }
}

/// Most milestones a commitment may list.
pub const MAX_MILESTONES: usize = 100;

/// The rules every way into a commitment obeys (`POST /api/v1/commitments`
/// and the value-creation saga alike): the first field at fault, with its
/// JSON path and why.
pub fn check_commitment(
    confidence: f64,
    target: Option<f64>,
    terms: &Terms,
    milestones: &[Milestone],
) -> Result<(), FieldError> {
    let fail = |path: &str, message: String| {
        Err(FieldError {
            path: path.to_owned(),
            message,
        })
    };
    if !(0.5..=0.95).contains(&confidence) {
        return fail(
            "confidence",
            format!("`confidence` must be within 0.5..=0.95, got {confidence}"),
        );
    }
    if let Some(target) = target
        && !(target.is_finite() && target.abs() <= MAX_MONEY)
    {
        return fail(
            "target",
            format!("`target` must be a finite number within ±{MAX_MONEY:e}, got {target}"),
        );
    }
    if !(terms.fixed_fee.is_finite() && (0.0..=MAX_MONEY).contains(&terms.fixed_fee)) {
        return fail(
            "terms.fixed_fee",
            format!("`terms.fixed_fee` must be within 0..={MAX_MONEY:e}"),
        );
    }
    if !(0.0..=1.0).contains(&terms.outcome_share) {
        return fail(
            "terms.outcome_share",
            format!(
                "`terms.outcome_share` must be within 0..=1, got {}",
                terms.outcome_share
            ),
        );
    }
    if let Some(cap) = terms.cap
        && !(cap.is_finite() && cap >= terms.fixed_fee && cap <= MAX_MONEY)
    {
        return fail(
            "terms.cap",
            format!(
                "`terms.cap` must be at least the fixed fee ({}) and at most {MAX_MONEY:e}, got {cap}",
                terms.fixed_fee
            ),
        );
    }
    if milestones.len() > MAX_MILESTONES {
        return fail("milestones", format!("at most {MAX_MILESTONES} milestones"));
    }
    let mut names = std::collections::HashSet::new();
    let earliest = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
    let latest = NaiveDate::from_ymd_opt(2199, 12, 31).expect("a valid date");
    for (index, milestone) in milestones.iter().enumerate() {
        let name = milestone.name.trim();
        if let Some(problem) = valueverse_gpu::model::name_problem(name, 200) {
            return fail(&format!("milestones[{index}].name"), problem);
        }
        if !names.insert(name.to_lowercase()) {
            return fail(
                &format!("milestones[{index}].name"),
                format!("milestone `{name}` is listed twice"),
            );
        }
        if !(earliest..=latest).contains(&milestone.due_date) {
            return fail(
                &format!("milestones[{index}].due_date"),
                format!(
                    "must be within {earliest}..={latest}, got {}",
                    milestone.due_date
                ),
            );
        }
        if !(milestone.expected_value.is_finite()
            && (0.0..=MAX_MONEY).contains(&milestone.expected_value))
        {
            return fail(
                &format!("milestones[{index}].expected_value"),
                format!("must be within 0..={MAX_MONEY:e}"),
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Milestone {
    pub name: String,
    /// 2000-01-01 to 2199-12-31.
    pub due_date: NaiveDate,
    pub expected_value: f64,
}

/// What the simulation said, as the commitment was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulatedSupport {
    pub simulation_id: String,
    pub paths: u64,
    /// The seed of the run (drawn by the server).
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub seed_by_server: bool,
    pub npv_mean: f64,
    /// The NPV reached with probability `confidence`.
    pub npv_at_confidence: f64,
    /// The quantile of the NPV relied on: `1 - confidence`.
    #[serde(default)]
    pub quantile: f64,
}

impl SimulatedSupport {
    /// What a finished job says for a commitment at `confidence` (`None`:
    /// it has no result). `id` is the job's id as the API shows it.
    pub fn of(id: &str, job: &crate::simulation::SimulationJob, confidence: f64) -> Option<Self> {
        let result = job.result.as_ref()?;
        Some(SimulatedSupport {
            simulation_id: id.to_owned(),
            paths: result.paths,
            seed: job.request.seed,
            seed_by_server: job.request.seed_by_server,
            npv_mean: result.npv.mean,
            npv_at_confidence: result.npv_at_confidence(confidence),
            quantile: ((1.0 - confidence) * 1e9).round() / 1e9,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitmentStatus {
    Active,
    Voided,
    /// A renewal's commitment took its place (`superseded_by`).
    Superseded,
}

impl CommitmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitmentStatus::Active => "active",
            CommitmentStatus::Voided => "voided",
            CommitmentStatus::Superseded => "superseded",
        }
    }
}

fn monthly() -> u32 {
    1
}

/// Lengths of a statement period, in months.
pub const STATEMENT_MONTHS: [u32; 4] = [1, 3, 6, 12];

/// What a client asks to commit to (checked by the caller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitmentRequest {
    pub model_id: String,
    pub model_version: i64,
    pub model_name: String,
    pub currency: String,
    pub confidence: f64,
    pub target: f64,
    pub terms: Terms,
    pub milestones: Vec<Milestone>,
    /// The first day of the first statement period [default: the day it
    /// is made].
    #[serde(default)]
    pub start_date: Option<NaiveDate>,
    /// Months in a statement period: 1, 3, 6 or 12.
    #[serde(default = "monthly")]
    pub statement_months: u32,
    /// The commitment a renewal made this one to replace.
    #[serde(default)]
    pub renews: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commitment {
    pub id: String,
    pub status: CommitmentStatus,
    #[serde(flatten)]
    pub request: CommitmentRequest,
    pub simulated: SimulatedSupport,
    pub created_at: DateTime<Utc>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    /// What the target asks of each driver, gross (none in commitments
    /// from before statements: they issue none).
    #[serde(default)]
    pub expectation: Option<Expectation>,
    /// Issued, oldest first; never changed once issued.
    #[serde(default)]
    pub statements: Vec<Statement>,
    #[serde(default)]
    pub superseded_by: Option<String>,
    /// The row carries when the next statement is due (false in rows from
    /// before it did: the next tick saves it).
    #[serde(default)]
    pub statements_indexed: bool,
}

impl Commitment {
    /// The first day of the first period.
    pub fn start(&self) -> NaiveDate {
        self.request
            .start_date
            .unwrap_or_else(|| self.created_at.date_naive())
    }

    /// The next period to state, `(number, first day, last day)`, while
    /// the commitment is active and has periods left.
    pub fn next_period(&self) -> Option<(u32, NaiveDate, NaiveDate)> {
        let expectation = self.expectation.as_ref()?;
        if self.status != CommitmentStatus::Active {
            return None;
        }
        let months = self.request.statement_months.max(1);
        let horizon = expectation.horizon_months;
        let number = u32::try_from(self.statements.len()).ok()? + 1;
        let from = (number - 1).checked_mul(months)?;
        if from >= horizon {
            return None;
        }
        let to = (from + months).min(horizon);
        let first = add_months(self.start(), from);
        let last = add_months(self.start(), to).pred_opt()?;
        Some((number, first, last))
    }

    /// When the next statement is due: the day after its period (the
    /// committer's row's `next_statement_ms`).
    fn next_statement_ms(&self) -> Option<i64> {
        let (_, _, last) = self.next_period()?;
        let due = last.succ_opt()?.and_hms_opt(0, 0, 0)?;
        Some(due.and_utc().timestamp_millis())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CommitterMsg {
    /// Commits, given the model version's latest finished simulation
    /// that may back it (`None`: there is none, and the commitment is
    /// refused); a run not seeded by the server or of fewer than
    /// `min_paths` paths is refused too.
    Commit {
        request: Box<CommitmentRequest>,
        simulated: Option<SimulatedSupport>,
        min_paths: u64,
        /// The model version's expectation, scaled to the target.
        expectation: Box<Expectation>,
    },
    Get,
    Void {
        reason: String,
    },
    /// Issues the statement of period `period` once it has ended by
    /// `today`, from the realized value by driver of the commitment's plans
    /// dated from the commitment's start to before the period
    /// (`realized_before`) and within it (`realized_in`); any other period
    /// changes nothing (it is issued, or not yet due), so a statement is
    /// issued once however often it is asked.
    IssueStatement {
        period: u32,
        today: NaiveDate,
        realized_before: BTreeMap<String, f64>,
        realized_in: BTreeMap<String, f64>,
    },
    /// A renewal's commitment `by` takes this one's place.
    Supersede {
        by: String,
    },
    /// The renewal's compensation: active again.
    Restore {
        by: String,
    },
}

impl AgentMessage for CommitterMsg {
    fn name(&self) -> &'static str {
        match self {
            CommitterMsg::Commit { .. } => "commit",
            CommitterMsg::Get => "get",
            CommitterMsg::Void { .. } => "void",
            CommitterMsg::IssueStatement { .. } => "issue_statement",
            CommitterMsg::Supersede { .. } => "supersede",
            CommitterMsg::Restore { .. } => "restore",
        }
    }
}

pub struct Committer;

impl Agent for Committer {
    const KIND: &'static str = "committer";
    const MESSAGE_ID: u32 = 0x0102;
    type State = Option<Commitment>;
    type Msg = CommitterMsg;
    type Reply = Commitment;

    fn init(_key: &str) -> Option<Commitment> {
        None
    }

    fn handle(
        state: &mut Option<Commitment>,
        msg: CommitterMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<Commitment, HandlerError> {
        let key = ctx.key().to_owned();
        match (msg, state.as_mut()) {
            (CommitterMsg::Commit { .. }, Some(_)) => Err(HandlerError::rejected(
                RejectionCode::Conflict,
                format!("commitment `{key}` exists"),
                None,
            )),
            (
                CommitterMsg::Commit {
                    request,
                    simulated,
                    min_paths,
                    expectation,
                },
                None,
            ) => {
                if !STATEMENT_MONTHS.contains(&request.statement_months) {
                    return Err(HandlerError::rejected(
                        RejectionCode::Invalid,
                        format!(
                            "`statement_months` must be one of {STATEMENT_MONTHS:?}, got {}",
                            request.statement_months
                        ),
                        Some("statement_months"),
                    ));
                }
                // The rules hold whoever sends the commit (a route, a saga).
                if let Err(error) = check_commitment(
                    request.confidence,
                    Some(request.target),
                    &request.terms,
                    &request.milestones,
                ) {
                    return Err(HandlerError::rejected(
                        RejectionCode::Invalid,
                        error.message,
                        Some(&error.path),
                    ));
                }
                let Some(simulated) = simulated else {
                    return Err(HandlerError::rejected(
                        RejectionCode::NoSimulation,
                        format!(
                            "model `{}` version {} has no finished simulation: simulate it first",
                            request.model_id, request.model_version
                        ),
                        Some("model_version"),
                    ));
                };
                if !simulated.seed_by_server || simulated.paths < min_paths {
                    return Err(HandlerError::rejected(
                        RejectionCode::NoSimulation,
                        format!(
                            "simulation {} ({} paths, seed {} by the {}) cannot back a \
                             commitment: it takes a run of at least {min_paths} paths whose \
                             seed the server drew (submit one without `seed`)",
                            simulated.simulation_id,
                            simulated.paths,
                            simulated.seed,
                            if simulated.seed_by_server {
                                "server"
                            } else {
                                "client"
                            },
                        ),
                        Some("model_version"),
                    ));
                }
                if request.target > simulated.npv_at_confidence {
                    return Err(HandlerError::rejected(
                        RejectionCode::TargetNotSupported,
                        format!(
                            "target {:.0} {} is {:.0} above the NPV the simulation reaches \
                             with {:.0}% confidence ({:.0}, simulation {})",
                            request.target,
                            request.currency,
                            request.target - simulated.npv_at_confidence,
                            request.confidence * 100.0,
                            simulated.npv_at_confidence,
                            simulated.simulation_id
                        ),
                        Some("target"),
                    ));
                }
                let mut request = *request;
                let created_at = Utc::now();
                request.start_date = Some(request.start_date.unwrap_or(created_at.date_naive()));
                let commitment = Commitment {
                    id: key,
                    status: CommitmentStatus::Active,
                    request,
                    simulated,
                    created_at,
                    voided_at: None,
                    void_reason: None,
                    expectation: Some(*expectation),
                    statements: Vec::new(),
                    superseded_by: None,
                    statements_indexed: true,
                };
                ctx.emit("commitment.made", event_data(&commitment));
                ctx.persist();
                Ok(state.insert(commitment).clone())
            }
            (_, None) => Err(HandlerError::rejected(
                RejectionCode::NotFound,
                format!("no commitment `{key}`"),
                None,
            )),
            (CommitterMsg::Get, Some(commitment)) => Ok(commitment.clone()),
            (
                CommitterMsg::IssueStatement {
                    period,
                    today,
                    realized_before,
                    realized_in,
                },
                Some(commitment),
            ) => {
                let mut changed = !commitment.statements_indexed;
                commitment.statements_indexed = true;
                if let Some((number, first, last)) = commitment.next_period()
                    && number == period
                    && last < today
                {
                    let issued = statement(
                        commitment,
                        (number, first, last),
                        &realized_before,
                        &realized_in,
                        Utc::now(),
                    );
                    ctx.emit(
                        "statement.issued",
                        serde_json::json!({
                            "commitment_id": commitment.id,
                            "model_id": commitment.request.model_id,
                            "currency": commitment.request.currency,
                            "statement": issued,
                        }),
                    );
                    commitment.statements.push(issued);
                    changed = true;
                }
                if changed {
                    ctx.persist();
                }
                Ok(commitment.clone())
            }
            (CommitterMsg::Supersede { by }, Some(commitment)) => {
                if commitment.superseded_by.as_deref() == Some(by.as_str()) {
                    return Ok(commitment.clone());
                }
                if commitment.status != CommitmentStatus::Active {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!(
                            "commitment `{key}` is {}: only an active one is superseded",
                            commitment.status.as_str()
                        ),
                        None,
                    ));
                }
                commitment.status = CommitmentStatus::Superseded;
                commitment.superseded_by = Some(by);
                ctx.emit("commitment.superseded", event_data(commitment));
                ctx.persist();
                Ok(commitment.clone())
            }
            (CommitterMsg::Restore { by }, Some(commitment)) => {
                if commitment.status == CommitmentStatus::Superseded
                    && commitment.superseded_by.as_deref() == Some(by.as_str())
                {
                    commitment.status = CommitmentStatus::Active;
                    commitment.superseded_by = None;
                    ctx.emit("commitment.restored", event_data(commitment));
                    ctx.persist();
                }
                Ok(commitment.clone())
            }
            (CommitterMsg::Void { reason }, Some(commitment)) => {
                if commitment.status != CommitmentStatus::Active {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!(
                            "commitment `{key}` is already {}",
                            commitment.status.as_str()
                        ),
                        None,
                    ));
                }
                commitment.status = CommitmentStatus::Voided;
                commitment.voided_at = Some(Utc::now());
                commitment.void_reason = Some(reason);
                ctx.emit("commitment.voided", event_data(commitment));
                ctx.persist();
                Ok(commitment.clone())
            }
        }
    }

    valueverse_runtime::table_persistence!(TABLE, |commitment| vec![
        (
            "status",
            Column::Text(Some(commitment.status.as_str().into()))
        ),
        (
            "model_id",
            Column::Text(Some(commitment.request.model_id.clone()))
        ),
        (
            "created_at_ms",
            Column::Int(Some(commitment.created_at.timestamp_millis()))
        ),
        (
            "next_statement_ms",
            Column::Int(commitment.next_statement_ms())
        ),
    ]);
}

fn event_data(commitment: &Commitment) -> serde_json::Value {
    serde_json::json!({
        "commitment_id": commitment.id,
        "model_id": commitment.request.model_id,
        "model_version": commitment.request.model_version,
        "target": commitment.request.target,
        "confidence": commitment.request.confidence,
        "status": commitment.status,
        "void_reason": commitment.void_reason,
        "superseded_by": commitment.superseded_by,
    })
}

/// A page of the commitments, newest first, filtered by model and status.
pub async fn list_commitments(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    model_id: Option<&str>,
    status: Option<CommitmentStatus>,
    page: (i64, i64),
) -> Result<super::Listed<Commitment>, valueverse_runtime::StateError> {
    let listing = valueverse_store::Listing::Commitments {
        model_id,
        status: status.map(CommitmentStatus::as_str),
    };
    super::listing::page(records, tenant, listing, page).await
}

#[cfg(test)]
mod tests {
    use valueverse_runtime::{Agent, HandlerError, Handling};

    use super::{CommitmentRequest, Committer, CommitterMsg, SimulatedSupport, Terms};

    /// The committer refuses what breaks the rules of a commitment,
    /// whoever sends it (the HTTP route checks first; a saga's step did
    /// not, and committed `outcome_share: 5`).
    #[test]
    fn a_commit_breaking_the_rules_is_refused_by_the_agent_itself() {
        let request = |outcome_share: f64| CommitmentRequest {
            model_id: "m".into(),
            model_version: 1,
            model_name: "m".into(),
            currency: "USD".into(),
            confidence: 0.8,
            target: 100.0,
            terms: Terms {
                fixed_fee: 10.0,
                outcome_share,
                cap: None,
            },
            milestones: Vec::new(),
            start_date: None,
            statement_months: 1,
            renews: None,
        };
        let support = SimulatedSupport {
            simulation_id: "s".into(),
            paths: 1000,
            seed: 7,
            seed_by_server: true,
            npv_mean: 500.0,
            npv_at_confidence: 400.0,
            quantile: 0.2,
        };
        let commit = |outcome_share| {
            let mut state = None;
            let mut ctx = Handling::detached("c");
            let msg = CommitterMsg::Commit {
                request: Box::new(request(outcome_share)),
                simulated: Some(support.clone()),
                min_paths: 1000,
                expectation: Box::new(crate::value::Expectation {
                    model_version: 1,
                    horizon_months: 12,
                    drivers: Vec::new(),
                    scale: 1.0,
                }),
            };
            Committer::handle(&mut state, msg, &mut ctx).map(|_| state.is_some())
        };
        match commit(5.0) {
            Err(HandlerError::Rejected(rejection)) => {
                assert_eq!(rejection.field.as_deref(), Some("terms.outcome_share"));
            }
            other => panic!("committed: {other:?}"),
        }
        assert!(commit(0.2).unwrap());
    }

    #[test]
    fn the_fee_is_fixed_plus_a_share_above_target_capped() {
        let terms = Terms {
            fixed_fee: 100.0,
            outcome_share: 0.2,
            cap: Some(300.0),
        };
        assert_eq!(terms.fee(500.0, 1000.0), 100.0);
        assert_eq!(terms.fee(1500.0, 1000.0), 200.0);
        assert_eq!(terms.fee(10_000.0, 1000.0), 300.0);
        let uncapped = Terms { cap: None, ..terms };
        assert_eq!(uncapped.fee(10_000.0, 1000.0), 1900.0);
    }
}
