//! Statements: what a commitment's customer owes, period by period.
//!
//! Conventions (README, "Statements"):
//! - Every figure is gross, undiscounted value in the commitment's
//!   currency, the quantity deliveries record (`crate::value`).
//! - The target for a period is the commitment's committed gross value over
//!   the period's months, **following the model's ramp** (not linear):
//!   `scale x sum_d expected_d(months)`.
//! - Realized value of a period is the deliveries of the commitment's plans
//!   dated within it, as known when it is issued. A delivery recorded
//!   later for an issued period is an **adjustment line** of the next
//!   statement (issued statements never change): each driver's adjustment
//!   is what is known now before the period less what earlier statements
//!   stated, so the statements' realized values and adjustments always sum
//!   to every delivery dated up to the last period's end.
//! - The fee to date is `min(cap, fixed_fee x months / horizon + share x
//!   max(0, realized to date - committed to date))`: the fixed fee pro rata,
//!   the share of value above the target to date, the cap over the whole
//!   contract. A statement's fee is the fee to date less what earlier
//!   statements charged (negative, a credit, when a correction lowers the
//!   value above target).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use valueverse_runtime::{Agent, AgentError, StateError, System, Tenant, split_key};

use crate::Records;
use crate::amplifier::{Amplifier, AmplifierMsg, AmplifierReply};
use crate::committer::{Commitment, Committer, CommitterMsg};
use crate::executor::Plan;

/// One driver's figures in a statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementLine {
    pub driver: String,
    pub committed: f64,
    /// Delivered within the period.
    pub realized: f64,
    /// Delivered before the period and not yet stated (a correction).
    pub adjustment: f64,
}

/// Figures from the commitment's start to the end of a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToDate {
    pub committed: f64,
    pub realized: f64,
    /// `max(0, realized - committed)`.
    pub value_above_target: f64,
    /// Fees of every statement so far, this one included.
    pub fees: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// 1 for the first period.
    pub period: u32,
    pub period_start: NaiveDate,
    /// The last day of the period.
    pub period_end: NaiveDate,
    pub issued_at: DateTime<Utc>,
    pub lines: Vec<StatementLine>,
    pub committed: f64,
    pub realized: f64,
    pub adjustments: f64,
    /// `realized + adjustments - committed` (negative: below target).
    pub value_above_target: f64,
    /// The fixed fee's share of this period.
    pub fixed_fee: f64,
    /// The fee less its fixed part.
    pub outcome_fee: f64,
    /// What this statement charges.
    pub fee: f64,
    /// The cap held the fee to date down.
    pub cap_reached: bool,
    pub to_date: ToDate,
}

/// The statement of period `(number, first, last)` of `commitment` (whose
/// earlier statements are issued), from the realized value by driver dated
/// from the commitment's start to before the period, and within it.
pub fn statement(
    commitment: &Commitment,
    (number, first, last): (u32, NaiveDate, NaiveDate),
    realized_before: &BTreeMap<String, f64>,
    realized_in: &BTreeMap<String, f64>,
    issued_at: DateTime<Utc>,
) -> Statement {
    let request = &commitment.request;
    let months = request.statement_months.max(1);
    let horizon = commitment
        .expectation
        .as_ref()
        .map_or(0, |expectation| expectation.horizon_months);
    let months_before = f64::from((number - 1) * months);
    let months_to = f64::from((number * months).min(horizon));
    // What earlier statements stated, by driver.
    let mut stated: BTreeMap<&str, f64> = BTreeMap::new();
    for line in commitment.statements.iter().flat_map(|s| &s.lines) {
        *stated.entry(line.driver.as_str()).or_default() += line.realized + line.adjustment;
    }
    let mut lines: Vec<StatementLine> = Vec::new();
    let mut committed_to_date = 0.0;
    if let Some(expectation) = &commitment.expectation {
        for driver in &expectation.drivers {
            let to = expectation.committed_over(driver, months_to);
            committed_to_date += to;
            lines.push(StatementLine {
                driver: driver.name.clone(),
                committed: to - expectation.committed_over(driver, months_before),
                realized: 0.0,
                adjustment: 0.0,
            });
        }
    }
    // Drivers with value but no expectation (a renewal's plan keeps the
    // drivers of its older version) get a line too.
    let mut names: std::collections::BTreeSet<String> = realized_before
        .keys()
        .chain(realized_in.keys())
        .cloned()
        .collect();
    names.extend(stated.keys().map(|name| (*name).to_owned()));
    for name in names {
        if !lines.iter().any(|line| line.driver == name) {
            lines.push(StatementLine {
                driver: name,
                committed: 0.0,
                realized: 0.0,
                adjustment: 0.0,
            });
        }
    }
    for line in &mut lines {
        let name = line.driver.as_str();
        line.realized = realized_in.get(name).copied().unwrap_or(0.0);
        line.adjustment = realized_before.get(name).copied().unwrap_or(0.0)
            - stated.get(name).copied().unwrap_or(0.0);
    }
    let committed: f64 = lines.iter().map(|l| l.committed).sum();
    let realized: f64 = lines.iter().map(|l| l.realized).sum();
    let adjustments: f64 = lines.iter().map(|l| l.adjustment).sum();
    let realized_to_date: f64 =
        realized_before.values().sum::<f64>() + realized_in.values().sum::<f64>();
    let above_to_date = (realized_to_date - committed_to_date).max(0.0);
    let share = |months: f64| {
        if horizon == 0 {
            0.0
        } else {
            months / f64::from(horizon)
        }
    };
    let terms = &request.terms;
    let uncapped = terms.fixed_fee * share(months_to) + terms.outcome_share * above_to_date;
    let fee_to_date = terms.cap.map_or(uncapped, |cap| uncapped.min(cap));
    let fees_before = commitment
        .statements
        .last()
        .map_or(0.0, |statement| statement.to_date.fees);
    let fee = fee_to_date - fees_before;
    let fixed_fee = terms.fixed_fee * (share(months_to) - share(months_before));
    Statement {
        period: number,
        period_start: first,
        period_end: last,
        issued_at,
        lines,
        committed,
        realized,
        adjustments,
        value_above_target: realized + adjustments - committed,
        fixed_fee,
        outcome_fee: fee - fixed_fee,
        fee,
        cap_reached: terms.cap.is_some_and(|cap| uncapped >= cap),
        to_date: ToDate {
            committed: committed_to_date,
            realized: realized_to_date,
            value_above_target: above_to_date,
            fees: fee_to_date,
        },
    }
}

/// Issues the statements due on the commitments this node owns (each
/// commitment's instance lives on one node, and a period is issued once
/// whoever asks); answers how many were issued. The node runs it every
/// `[value] tick`; a commitment with nothing due is not read.
pub async fn issue_due_statements(system: &System, records: &Records) -> Result<usize, StateError> {
    let now = Utc::now();
    let (mut offset, mut issued) = (0, 0);
    loop {
        let keys = records
            .store()
            .due_statement_keys(now.timestamp_millis(), 100, offset)
            .await?;
        for key in &keys {
            if !system.is_local(Committer::KIND, key) {
                continue;
            }
            match issue_for(system, records, key, now.date_naive()).await {
                Ok(count) => issued += count,
                Err(error) => tracing::warn!(%key, %error, "statements: cannot issue now"),
            }
        }
        if keys.len() < 100 {
            return Ok(issued);
        }
        offset += 100;
    }
}

/// Issues one commitment's due statements, oldest first.
async fn issue_for(
    system: &System,
    records: &Records,
    key: &str,
    today: NaiveDate,
) -> Result<usize, AgentError> {
    let agent = system.agent_by_key::<Committer>(key.to_owned());
    let timeout = system.runtime_config().ask_timeout;
    let tenant = Tenant::parse(split_key(key).0).unwrap_or_else(|_| Tenant::default_tenant());
    let mut issued = 0;
    loop {
        let commitment = agent.ask(CommitterMsg::Get, timeout).await?;
        let due = commitment
            .next_period()
            .filter(|(_, _, last)| *last < today);
        let (period, realized_before, realized_in) = match due {
            Some((number, first, last)) => {
                let (before, within) = realized(records, &tenant, &commitment, first, last)
                    .await
                    .map_err(|cause| AgentError::Store {
                    target: valueverse_runtime::AgentId {
                        kind: Committer::KIND,
                        key: key.to_owned().into(),
                    },
                    cause: Box::new(cause),
                })?;
                (number, before, within)
            }
            // Nothing due: the row's due date is saved again.
            None => (0, BTreeMap::new(), BTreeMap::new()),
        };
        let after = agent
            .ask(
                CommitterMsg::IssueStatement {
                    period,
                    today,
                    realized_before,
                    realized_in,
                },
                timeout,
            )
            .await?;
        if after.statements.len() == commitment.statements.len() {
            return Ok(issued);
        }
        issued += 1;
    }
}

/// The realized value by driver of the commitment's plans (whatever their
/// status: a cancelled plan's deliveries were delivered), dated from the
/// commitment's start to before `first`, and from `first` to `last`.
async fn realized(
    records: &Records,
    tenant: &Tenant,
    commitment: &Commitment,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<(BTreeMap<String, f64>, BTreeMap<String, f64>), StateError> {
    let start = commitment.start();
    let (mut before, mut within) = (BTreeMap::new(), BTreeMap::new());
    // A delivery id counts once across the commitment's plans (the newest
    // plan's, read first): a file imported again into the plan that
    // superseded another is not billed twice.
    let mut counted = std::collections::HashSet::new();
    let mut offset = 0;
    loop {
        let page: crate::Listed<Plan> = crate::executor::list_plans(
            records,
            tenant,
            Some(&commitment.id),
            None,
            None,
            (100, offset),
        )
        .await?;
        for delivery in page.items.iter().flat_map(|plan| &plan.deliveries) {
            if !counted.insert(delivery.id.clone()) {
                continue;
            }
            let sums = if (start..first).contains(&delivery.date) {
                &mut before
            } else if (first..=last).contains(&delivery.date) {
                &mut within
            } else {
                continue;
            };
            *sums.entry(delivery.driver.clone()).or_insert(0.0) += delivery.value;
        }
        if page.items.len() < 100 {
            return Ok((before, within));
        }
        offset += 100;
    }
}

/// Takes today's snapshot of the models this node owns whose snapshot is
/// due, keeping its rows; answers how many models were snapshot.
pub async fn take_due_snapshots(
    system: &System,
    records: &Records,
    margin: f64,
) -> Result<usize, StateError> {
    let now = Utc::now();
    let (mut offset, mut taken) = (0, 0);
    let timeout = system.runtime_config().ask_timeout;
    loop {
        let keys = records
            .store()
            .due_snapshot_keys(now.timestamp_millis(), 100, offset)
            .await?;
        for key in &keys {
            if !system.is_local(Amplifier::KIND, key) {
                continue;
            }
            let day = now.date_naive();
            let reply = system
                .agent_by_key::<Amplifier>(key.to_owned())
                .ask(AmplifierMsg::Snapshot { day, margin }, timeout)
                .await;
            let rows = match reply {
                Ok(AmplifierReply::Snapshot(rows)) => rows,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(%key, %error, "snapshot: the amplifier cannot take it now");
                    continue;
                }
            };
            let (tenant, model_id) = split_key(key);
            let rows: Vec<valueverse_store::RealizationRow> = rows
                .into_iter()
                .map(|row| valueverse_store::RealizationRow {
                    plan_id: row.plan_id.unwrap_or_default(),
                    driver: row.driver.unwrap_or_default(),
                    day: day.to_string(),
                    expected: row.expected,
                    committed: row.committed,
                    realized: row.realized,
                    realization_percent: row.realization_percent,
                })
                .collect();
            // A day whose rows cannot be written is a gap in the history:
            // each row is to date, so the next day's rows stand alone.
            match records
                .store()
                .record_realization(tenant, model_id, &rows)
                .await
            {
                Ok(()) => taken += 1,
                Err(error) => tracing::warn!(%key, %error, "snapshot: cannot keep its rows"),
            }
        }
        if keys.len() < 100 {
            return Ok(taken);
        }
        offset += 100;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, Utc};
    use valueverse_runtime::{Agent, Handling};

    use super::*;
    use crate::committer::{CommitmentRequest, CommitmentStatus, SimulatedSupport, Terms};
    use crate::value::{DriverBaseline, Expectation};

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    /// 12 months of one flat driver worth 1,000 a month, committed at 90%
    /// (900 a month); 1,200 fixed (100 a month), half the value above
    /// target, capped at 2,000.
    fn commitment(statement_months: u32, horizon_months: u32) -> Commitment {
        Commitment {
            id: "c".into(),
            status: CommitmentStatus::Active,
            request: CommitmentRequest {
                model_id: "m".into(),
                model_version: 1,
                model_name: "m".into(),
                currency: "USD".into(),
                confidence: 0.8,
                target: 1.0,
                terms: Terms {
                    fixed_fee: 1200.0,
                    outcome_share: 0.5,
                    cap: Some(2000.0),
                },
                milestones: Vec::new(),
                start_date: Some(date("2026-01-01")),
                statement_months,
                renews: None,
            },
            simulated: SimulatedSupport {
                simulation_id: "s".into(),
                paths: 10_000,
                seed: 1,
                seed_by_server: true,
                npv_mean: 1.0,
                npv_at_confidence: 1.0,
                quantile: 0.2,
            },
            created_at: Utc::now(),
            voided_at: None,
            void_reason: None,
            expectation: Some(Expectation {
                model_version: 1,
                horizon_months,
                drivers: vec![DriverBaseline {
                    name: "d".into(),
                    monthly_value: 1000.0,
                    ramp_months: 0,
                }],
                scale: 0.9,
            }),
            statements: Vec::new(),
            superseded_by: None,
            statements_indexed: true,
        }
    }

    fn sums(value: f64) -> BTreeMap<String, f64> {
        if value == 0.0 {
            BTreeMap::new()
        } else {
            BTreeMap::from([("d".to_owned(), value)])
        }
    }

    /// Issues the next statement through the agent, as the tick does.
    fn issue(state: &mut Option<Commitment>, before: f64, within: f64, today: &str) -> usize {
        let period = state.as_ref().unwrap().statements.len() as u32 + 1;
        let mut ctx = Handling::detached("c");
        Committer::handle(
            state,
            CommitterMsg::IssueStatement {
                period,
                today: date(today),
                realized_before: sums(before),
                realized_in: sums(within),
            },
            &mut ctx,
        )
        .unwrap();
        ctx.emitted().len()
    }

    /// The fees by hand, period by period:
    /// 1. committed 900, realized 1,000: above 100; fee 100 + 50 = 150.
    /// 2. a late 300 for January (an adjustment), 800 in February: to date
    ///    2,100 against 1,800, above 300; fee to date 200 + 150 = 350, this
    ///    period's 200.
    /// 3. 5,000 in March: to date 7,100 against 2,700, above 4,400; 300 +
    ///    2,200 = 2,500 capped at 2,000: 1,650 this period, the cap reached.
    /// 4. nothing more: to date still capped, 0 this period.
    #[test]
    fn fees_follow_the_terms_by_hand() {
        let mut state = Some(commitment(1, 12));
        assert_eq!(issue(&mut state, 0.0, 1000.0, "2026-02-01"), 1);
        assert_eq!(issue(&mut state, 1300.0, 800.0, "2026-03-01"), 1);
        assert_eq!(issue(&mut state, 2100.0, 5000.0, "2026-04-01"), 1);
        assert_eq!(issue(&mut state, 7100.0, 0.0, "2026-05-01"), 1);
        let statements = &state.as_ref().unwrap().statements;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let first = &statements[0];
        assert_eq!(
            (first.period_start, first.period_end),
            (date("2026-01-01"), date("2026-01-31"))
        );
        assert!(close(first.committed, 900.0) && close(first.realized, 1000.0));
        assert!(close(first.value_above_target, 100.0));
        assert!(close(first.fixed_fee, 100.0) && close(first.outcome_fee, 50.0));
        assert!(close(first.fee, 150.0));
        let second = &statements[1];
        assert!(close(second.adjustments, 300.0), "{second:?}");
        assert!(close(second.lines[0].adjustment, 300.0));
        assert!(close(second.to_date.realized, 2100.0));
        assert!(close(second.to_date.committed, 1800.0));
        assert!(close(second.to_date.value_above_target, 300.0));
        assert!(close(second.fee, 200.0) && close(second.to_date.fees, 350.0));
        let third = &statements[2];
        assert!(third.cap_reached);
        assert!(close(third.fee, 1650.0) && close(third.to_date.fees, 2000.0));
        let fourth = &statements[3];
        assert!(close(fourth.fee, 0.0) && fourth.cap_reached);
        // What was stated sums to every delivery to the last period's end.
        let stated: f64 = statements.iter().map(|s| s.realized + s.adjustments).sum();
        assert!(close(stated, 7100.0));
        let fees: f64 = statements.iter().map(|s| s.fee).sum();
        assert!(close(fees, 2000.0));
    }

    /// A period is issued once, and only once it has ended.
    #[test]
    fn a_statement_is_issued_once_and_only_when_due() {
        let mut state = Some(commitment(1, 12));
        // January is not over on the 31st.
        assert_eq!(issue(&mut state, 0.0, 10.0, "2026-01-31"), 0);
        assert_eq!(issue(&mut state, 0.0, 10.0, "2026-02-01"), 1);
        // Period 1 asked again (a second node, a retry): nothing.
        let mut ctx = Handling::detached("c");
        Committer::handle(
            &mut state,
            CommitterMsg::IssueStatement {
                period: 1,
                today: date("2026-06-01"),
                realized_before: BTreeMap::new(),
                realized_in: sums(99.0),
            },
            &mut ctx,
        )
        .unwrap();
        assert!(ctx.emitted().is_empty());
        assert_eq!(state.as_ref().unwrap().statements.len(), 1);
    }

    /// Quarters over a 10-month horizon: four periods, the last of one
    /// month (October), committed pro rata of its months.
    #[test]
    fn periods_end_at_the_horizon() {
        let mut state = Some(commitment(3, 10));
        for today in ["2026-04-01", "2026-07-01", "2026-10-01"] {
            assert_eq!(issue(&mut state, 0.0, 0.0, today), 1);
        }
        let commitment = state.as_ref().unwrap();
        assert_eq!(
            commitment.next_period(),
            Some((4, date("2026-10-01"), date("2026-10-31")))
        );
        assert_eq!(issue(&mut state, 0.0, 0.0, "2026-11-01"), 1);
        let last = state.as_ref().unwrap().statements.last().unwrap().clone();
        assert!((last.committed - 900.0).abs() < 1e-9, "{last:?}");
        assert!((last.fixed_fee - 120.0).abs() < 1e-9);
        assert_eq!(state.as_ref().unwrap().next_period(), None);
    }
}
