//! The amplifier agent: one instance per value model. It holds a baseline
//! per execution plan of the model (what each driver is expected to deliver
//! month by month, and the commitment's scale on it: see `crate::value`)
//! with that plan's deliveries, and turns them into insights per plan and
//! for the model as a whole (its active plans): realization per driver and
//! in total, the monthly trend, opportunities (drivers over-delivering) and
//! risks (drivers under-delivering) projected to the horizon. Once a day it
//! takes a snapshot (rows kept by the store) and announces a driver that
//! crosses its margin, once per crossing.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use valueverse_store::Column;

use super::executor::Delivery;
pub use super::value::DriverBaseline;
use super::value::months_between;
use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub plan_id: String,
    pub commitment_id: String,
    pub model_version: i64,
    pub start_date: NaiveDate,
    pub horizon_months: u32,
    pub drivers: Vec<DriverBaseline>,
    /// Committed over expected gross value (`crate::value::Expectation`);
    /// 1 in baselines from before commitments carried it.
    #[serde(default = "one")]
    pub scale: f64,
}

/// Where a driver stands against its margin, as of the last snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Within,
    Risk,
    Opportunity,
}

/// One plan's baseline and deliveries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanAmplification {
    pub baseline: Option<Baseline>,
    /// Counted in the model's insights (a cancelled or superseded plan is
    /// kept, not counted).
    pub active: bool,
    pub deliveries: Vec<Delivery>,
    /// Each driver's band at the last snapshot.
    #[serde(default)]
    pub bands: BTreeMap<String, Band>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Amplification {
    /// By plan id.
    #[serde(default)]
    pub plans: BTreeMap<String, PlanAmplification>,
    /// The day of the last snapshot.
    #[serde(default)]
    pub last_snapshot: Option<NaiveDate>,
    /// Before baselines per plan: one baseline, deliveries pooled. Read
    /// once and moved into `plans`.
    #[serde(default, skip_serializing)]
    baseline: Option<Baseline>,
    #[serde(default, skip_serializing)]
    deliveries: Vec<Delivery>,
}

impl Amplification {
    /// Moves a state of the single-baseline shape into `plans`.
    fn upgrade(&mut self) {
        if let Some(baseline) = self.baseline.take() {
            let deliveries = std::mem::take(&mut self.deliveries);
            self.plans.insert(
                baseline.plan_id.clone(),
                PlanAmplification {
                    baseline: Some(baseline),
                    active: true,
                    deliveries,
                    bands: BTreeMap::new(),
                },
            );
        }
    }

    fn active(&self) -> impl Iterator<Item = &PlanAmplification> {
        self.plans.values().filter(|plan| plan.active)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverInsight {
    pub driver: String,
    /// Gross value the model expects to date (drivers at their means).
    pub expected_to_date: f64,
    /// Gross value the commitment asks to date (expected x scale).
    pub committed_to_date: f64,
    /// Gross value delivered to date.
    pub realized_to_date: f64,
    /// Realized over committed, in percent; `None` before anything was due.
    pub realization_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendPoint {
    /// `YYYY-MM`.
    pub month: String,
    pub realized: f64,
    pub cumulative_realized: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opportunity {
    pub driver: String,
    pub realization_percent: f64,
    /// Extra value by the horizon if the driver keeps its current pace.
    pub added_value_at_horizon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    pub driver: String,
    pub realization_percent: f64,
    /// Value missing at the horizon if the driver keeps its current pace.
    pub projected_shortfall_at_horizon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insights {
    pub model_id: String,
    /// The plan these are of; `None`: the model's active plans together.
    pub plan_id: Option<String>,
    /// The plans counted.
    pub plans: Vec<String>,
    pub as_of: NaiveDate,
    /// Of the earliest plan counted.
    pub months_elapsed: f64,
    pub months_remaining: f64,
    pub expected_to_date: f64,
    pub committed_to_date: f64,
    pub realized_to_date: f64,
    pub realization_percent: Option<f64>,
    pub drivers: Vec<DriverInsight>,
    pub trend: Vec<TrendPoint>,
    pub opportunities: Vec<Opportunity>,
    pub risks: Vec<Risk>,
    /// The margin around 100% outside which a driver is an opportunity or
    /// a risk.
    pub margin: f64,
}

/// One row of a daily snapshot: a driver of a plan (or all drivers, or
/// the whole model: `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub plan_id: Option<String>,
    pub driver: Option<String>,
    pub expected: f64,
    pub committed: f64,
    pub realized: f64,
    pub realization_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AmplifierMsg {
    /// Registers (or replaces) the baseline of a plan, active.
    RegisterBaseline(Box<Baseline>),
    /// Removes the baseline of `plan_id` and its deliveries (a saga's
    /// compensation of its registration).
    RemoveBaseline { plan_id: String },
    /// The plan was cancelled or superseded: kept, no longer counted.
    RetireBaseline { plan_id: String },
    /// Records deliveries of a plan; a delivery id the plan has is
    /// recorded once.
    RecordDeliveries {
        plan_id: String,
        deliveries: Vec<Delivery>,
    },
    /// Insights of one plan, or of the active plans together.
    Insights {
        as_of: NaiveDate,
        margin: f64,
        plan_id: Option<String>,
    },
    /// The daily snapshot of `day` (once: again the same day answers no
    /// rows): the rows to keep, and an event per driver that crossed its
    /// margin since the last one.
    Snapshot { day: NaiveDate, margin: f64 },
}

impl AgentMessage for AmplifierMsg {
    fn name(&self) -> &'static str {
        match self {
            AmplifierMsg::RegisterBaseline(_) => "register_baseline",
            AmplifierMsg::RemoveBaseline { .. } => "remove_baseline",
            AmplifierMsg::RetireBaseline { .. } => "retire_baseline",
            AmplifierMsg::RecordDeliveries { .. } => "record_deliveries",
            AmplifierMsg::Insights { .. } => "insights",
            AmplifierMsg::Snapshot { .. } => "snapshot",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AmplifierReply {
    Done,
    Insights(Box<Insights>),
    Snapshot(Vec<SnapshotRow>),
}

pub struct Amplifier;

fn no_baseline(key: &str, plan: Option<&str>) -> HandlerError {
    let message = match plan {
        Some(plan) => format!("model `{key}` has no plan `{plan}` with a baseline"),
        None => format!("model `{key}` has no active execution plan: insights need its baseline"),
    };
    HandlerError::rejected(RejectionCode::NoBaseline, message, plan.map(|_| "plan_id"))
}

impl Agent for Amplifier {
    const KIND: &'static str = "amplifier";
    const MESSAGE_ID: u32 = 0x0104;
    /// `None` until the first baseline or delivery.
    type State = Option<Amplification>;
    type Msg = AmplifierMsg;
    type Reply = AmplifierReply;

    fn init(_key: &str) -> Option<Amplification> {
        None
    }

    fn handle(
        state: &mut Option<Amplification>,
        msg: AmplifierMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<AmplifierReply, HandlerError> {
        let state = state.get_or_insert_with(Amplification::default);
        state.upgrade();
        match msg {
            AmplifierMsg::RegisterBaseline(baseline) => {
                state.forget_retired(&baseline.plan_id);
                let plan = state.plans.entry(baseline.plan_id.clone()).or_default();
                if plan.baseline.as_ref() == Some(&*baseline) && plan.active {
                    return Ok(AmplifierReply::Done);
                }
                plan.baseline = Some(*baseline);
                plan.active = true;
                ctx.persist();
                Ok(AmplifierReply::Done)
            }
            AmplifierMsg::RemoveBaseline { plan_id } => {
                if state.plans.remove(&plan_id).is_some() {
                    ctx.persist();
                }
                Ok(AmplifierReply::Done)
            }
            AmplifierMsg::RetireBaseline { plan_id } => {
                if let Some(plan) = state.plans.get_mut(&plan_id)
                    && plan.active
                {
                    plan.active = false;
                    ctx.persist();
                }
                Ok(AmplifierReply::Done)
            }
            AmplifierMsg::RecordDeliveries {
                plan_id,
                deliveries,
            } => {
                let plan = state.plans.entry(plan_id).or_default();
                let before = plan.deliveries.len();
                let mut known: std::collections::HashSet<String> =
                    plan.deliveries.iter().map(|d| d.id.clone()).collect();
                for delivery in deliveries {
                    if known.insert(delivery.id.clone()) {
                        plan.deliveries.push(delivery);
                    }
                }
                if plan.deliveries.len() != before {
                    ctx.persist();
                }
                Ok(AmplifierReply::Done)
            }
            AmplifierMsg::Insights {
                as_of,
                margin,
                plan_id,
            } => {
                let key = ctx.key();
                let counted: Vec<(&String, &PlanAmplification)> = match &plan_id {
                    Some(id) => state
                        .plans
                        .get_key_value(id)
                        .filter(|(_, plan)| plan.baseline.is_some())
                        .into_iter()
                        .collect(),
                    None => state
                        .plans
                        .iter()
                        .filter(|(_, plan)| plan.active && plan.baseline.is_some())
                        .collect(),
                };
                if counted.is_empty() {
                    return Err(no_baseline(key, plan_id.as_deref()));
                }
                Ok(AmplifierReply::Insights(Box::new(insights(
                    key, plan_id, &counted, as_of, margin,
                ))))
            }
            AmplifierMsg::Snapshot { day, margin } => {
                if state.last_snapshot >= Some(day) {
                    return Ok(AmplifierReply::Snapshot(Vec::new()));
                }
                let key = ctx.key().to_owned();
                let rows = snapshot(&key, state, day, margin, ctx);
                state.last_snapshot = Some(day);
                ctx.persist();
                Ok(AmplifierReply::Snapshot(rows))
            }
        }
    }

    valueverse_runtime::table_persistence!(Amplifier::TABLE, |amplification| vec![
        (
            "plan_id",
            Column::Text(amplification.active_plan().map(str::to_owned)),
        ),
        (
            "snapshot_due_ms",
            Column::Int(amplification.snapshot_due_ms()),
        ),
    ]);
}

/// Most plans a model's amplifier keeps: beyond, the oldest retired ones
/// are forgotten (their daily history stays in the store).
pub const MAX_PLANS: usize = 64;

impl Amplification {
    /// Makes room for `plan_id` under [`MAX_PLANS`], oldest retired first.
    fn forget_retired(&mut self, plan_id: &str) {
        while self.plans.len() >= MAX_PLANS && !self.plans.contains_key(plan_id) {
            // Plan ids are time-ordered (UUIDv7): the first retired is the
            // oldest.
            let Some(oldest) = self
                .plans
                .iter()
                .find(|(_, plan)| !plan.active)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            self.plans.remove(&oldest);
        }
    }

    /// The most recently registered active plan (for the plans column).
    fn active_plan(&self) -> Option<&str> {
        self.plans
            .iter()
            .filter(|(_, plan)| plan.active)
            .max_by_key(|(id, _)| id.as_str())
            .map(|(id, _)| id.as_str())
    }

    /// When the next daily snapshot is due (start of the day after the
    /// last, UTC), while an active plan has a baseline; none otherwise, so
    /// that an idle model is never woken.
    fn snapshot_due_ms(&self) -> Option<i64> {
        if !self.active().any(|plan| plan.baseline.is_some()) {
            return None;
        }
        Some(match self.last_snapshot {
            Some(day) => day
                .succ_opt()
                .and_then(|next| next.and_hms_opt(0, 0, 0))
                .map_or(i64::MAX, |at| at.and_utc().timestamp_millis()),
            None => 0,
        })
    }
}

impl Amplifier {
    const TABLE: &'static str = "amplifications";
}

fn percent(realized: f64, committed: f64) -> Option<f64> {
    (committed > 0.0).then(|| 100.0 * realized / committed)
}

/// One driver's figures in one plan, to date and for the rest of the
/// horizon.
#[derive(Default, Clone, Copy)]
struct Figures {
    expected: f64,
    committed: f64,
    realized: f64,
    committed_rest: f64,
}

/// Each driver's figures in one plan as of a date, in the baseline's order.
fn plan_figures(
    baseline: &Baseline,
    deliveries: &[Delivery],
    as_of: NaiveDate,
) -> Vec<(String, Figures)> {
    let horizon = f64::from(baseline.horizon_months);
    let elapsed = months_between(baseline.start_date, as_of, baseline.horizon_months);
    baseline
        .drivers
        .iter()
        .map(|driver| {
            let expected = driver.expected_over(elapsed);
            let realized = deliveries
                .iter()
                .filter(|d| d.driver == driver.name && d.date <= as_of)
                .map(|d| d.value)
                .sum();
            let figures = Figures {
                expected,
                committed: baseline.scale * expected,
                realized,
                committed_rest: baseline.scale * (driver.expected_over(horizon) - expected),
            };
            (driver.name.clone(), figures)
        })
        .collect()
}

/// Realized against committed as of a date, of the plans given together
/// (drivers of the same name summed).
fn insights(
    model_id: &str,
    plan_id: Option<String>,
    plans: &[(&String, &PlanAmplification)],
    as_of: NaiveDate,
    margin: f64,
) -> Insights {
    let mut by_driver: Vec<(String, Figures)> = Vec::new();
    let (mut elapsed, mut remaining) = (0.0f64, 0.0f64);
    for (_, plan) in plans {
        let Some(baseline) = &plan.baseline else {
            continue;
        };
        let months = months_between(baseline.start_date, as_of, baseline.horizon_months);
        elapsed = elapsed.max(months);
        remaining = remaining.max(f64::from(baseline.horizon_months) - months);
        for (name, figures) in plan_figures(baseline, &plan.deliveries, as_of) {
            match by_driver.iter_mut().find(|(known, _)| *known == name) {
                Some((_, total)) => {
                    total.expected += figures.expected;
                    total.committed += figures.committed;
                    total.realized += figures.realized;
                    total.committed_rest += figures.committed_rest;
                }
                None => by_driver.push((name, figures)),
            }
        }
    }
    let mut drivers = Vec::new();
    let (mut opportunities, mut risks) = (Vec::new(), Vec::new());
    for (name, figures) in &by_driver {
        let realization = percent(figures.realized, figures.committed);
        if let Some(realization) = realization {
            // The rest of the horizon at the pace so far.
            let pace = realization / 100.0;
            match band(pace, margin) {
                Band::Opportunity => opportunities.push(Opportunity {
                    driver: name.clone(),
                    realization_percent: realization,
                    added_value_at_horizon: figures.committed_rest * (pace - 1.0),
                }),
                Band::Risk => risks.push(Risk {
                    driver: name.clone(),
                    realization_percent: realization,
                    projected_shortfall_at_horizon: figures.committed_rest * (1.0 - pace),
                }),
                Band::Within => {}
            }
        }
        drivers.push(DriverInsight {
            driver: name.clone(),
            expected_to_date: figures.expected,
            committed_to_date: figures.committed,
            realized_to_date: figures.realized,
            realization_percent: realization,
        });
    }
    opportunities.sort_by(|a, b| {
        b.added_value_at_horizon
            .total_cmp(&a.added_value_at_horizon)
    });
    risks.sort_by(|a, b| {
        b.projected_shortfall_at_horizon
            .total_cmp(&a.projected_shortfall_at_horizon)
    });
    let mut by_month: BTreeMap<String, f64> = BTreeMap::new();
    for (_, plan) in plans {
        for delivery in plan.deliveries.iter().filter(|d| d.date <= as_of) {
            let month = format!("{:04}-{:02}", delivery.date.year(), delivery.date.month());
            *by_month.entry(month).or_default() += delivery.value;
        }
    }
    let mut cumulative = 0.0;
    let trend = by_month
        .into_iter()
        .map(|(month, realized)| {
            cumulative += realized;
            TrendPoint {
                month,
                realized,
                cumulative_realized: cumulative,
            }
        })
        .collect();
    let expected_to_date: f64 = drivers.iter().map(|d| d.expected_to_date).sum();
    let committed_to_date: f64 = drivers.iter().map(|d| d.committed_to_date).sum();
    let realized_to_date: f64 = drivers.iter().map(|d| d.realized_to_date).sum();
    Insights {
        model_id: model_id.to_owned(),
        plan_id,
        plans: plans.iter().map(|(id, _)| (*id).clone()).collect(),
        as_of,
        months_elapsed: elapsed,
        months_remaining: remaining,
        expected_to_date,
        committed_to_date,
        realized_to_date,
        realization_percent: percent(realized_to_date, committed_to_date),
        drivers,
        trend,
        opportunities,
        risks,
        margin,
    }
}

fn band(pace: f64, margin: f64) -> Band {
    if pace > 1.0 + margin {
        Band::Opportunity
    } else if pace < 1.0 - margin {
        Band::Risk
    } else {
        Band::Within
    }
}

/// The rows of a day's snapshot (each active plan's drivers and total, the
/// model's total), announcing each driver that entered the risk or the
/// opportunity band since the last snapshot.
fn snapshot(
    model_id: &str,
    state: &mut Amplification,
    day: NaiveDate,
    margin: f64,
    ctx: &mut Handling<'_>,
) -> Vec<SnapshotRow> {
    let mut rows = Vec::new();
    let row = |plan: Option<&str>, driver: Option<&str>, figures: Figures| SnapshotRow {
        plan_id: plan.map(str::to_owned),
        driver: driver.map(str::to_owned),
        expected: figures.expected,
        committed: figures.committed,
        realized: figures.realized,
        realization_percent: percent(figures.realized, figures.committed),
    };
    let mut model_total = Figures::default();
    for (plan_id, plan) in state.plans.iter_mut().filter(|(_, plan)| plan.active) {
        let Some(baseline) = &plan.baseline else {
            continue;
        };
        let mut plan_total = Figures::default();
        for (driver, figures) in plan_figures(baseline, &plan.deliveries, day) {
            plan_total.expected += figures.expected;
            plan_total.committed += figures.committed;
            plan_total.realized += figures.realized;
            rows.push(row(Some(plan_id), Some(&driver), figures));
            let Some(realization) = percent(figures.realized, figures.committed) else {
                continue;
            };
            let now = band(realization / 100.0, margin);
            let before = plan
                .bands
                .insert(driver.clone(), now)
                .unwrap_or(Band::Within);
            let pace = realization / 100.0;
            let (event, at_horizon) = match now {
                Band::Risk => ("risk.detected", figures.committed_rest * (1.0 - pace)),
                Band::Opportunity => (
                    "opportunity.detected",
                    figures.committed_rest * (pace - 1.0),
                ),
                Band::Within => continue,
            };
            if before != now {
                ctx.emit(
                    event,
                    serde_json::json!({
                        "model_id": model_id,
                        "plan_id": plan_id, "driver": driver, "as_of": day,
                        "realization_percent": realization, "margin": margin,
                        "committed_to_date": figures.committed,
                        "realized_to_date": figures.realized,
                        "value_at_horizon": at_horizon,
                    }),
                );
            }
        }
        model_total.expected += plan_total.expected;
        model_total.committed += plan_total.committed;
        model_total.realized += plan_total.realized;
        rows.push(row(Some(plan_id), None, plan_total));
    }
    rows.push(row(None, None, model_total));
    rows
}

/// The baseline a plan registers: each driver's expected monthly value at
/// full ramp (unit value x mean quantity) of the plan's model version, and
/// the commitment's scale on it.
pub fn baseline_for(
    plan: &super::executor::Plan,
    version: &super::architect::ModelVersion,
    commitment: &super::committer::Commitment,
) -> Baseline {
    let expectation = super::value::Expectation::of(version, Some(commitment.request.target));
    Baseline {
        plan_id: plan.id.clone(),
        commitment_id: plan.commitment_id.clone(),
        model_version: version.version,
        start_date: plan.start_date,
        horizon_months: version.model.horizon_months,
        drivers: expectation.drivers,
        scale: expectation.scale,
    }
}

/// A model's daily realization, oldest first: one plan's rows (`None`:
/// the model's active plans together), one driver's (`None`: all), from
/// `since`, at most `limit`.
pub async fn history(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    model_id: &str,
    plan_id: Option<&str>,
    driver: Option<&str>,
    since: NaiveDate,
    limit: i64,
) -> Result<Vec<valueverse_store::RealizationRow>, valueverse_runtime::StateError> {
    Ok(records
        .store()
        .realization_history(
            tenant.as_str(),
            model_id,
            plan_id.unwrap_or(""),
            driver.unwrap_or(""),
            &since.to_string(),
            limit,
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::DAYS_PER_MONTH;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn delivery(id: &str, driver: &str, value: f64, on: &str) -> Delivery {
        Delivery {
            id: id.into(),
            driver: driver.into(),
            value,
            date: date(on),
            note: None,
        }
    }

    fn flat(name: &str, monthly_value: f64) -> DriverBaseline {
        DriverBaseline {
            name: name.into(),
            monthly_value,
            ramp_months: 0,
        }
    }

    fn baseline(plan: &str, scale: f64, drivers: Vec<DriverBaseline>) -> Baseline {
        Baseline {
            plan_id: plan.into(),
            commitment_id: "c".into(),
            model_version: 1,
            start_date: date("2026-01-01"),
            horizon_months: 12,
            drivers,
            scale,
        }
    }

    fn plan(baseline: Baseline, deliveries: Vec<Delivery>) -> PlanAmplification {
        PlanAmplification {
            baseline: Some(baseline),
            active: true,
            deliveries,
            bands: BTreeMap::new(),
        }
    }

    /// By hand: four months (121 days) into a flat 1,000 a month driver
    /// whose commitment asks 80% of the expectation: expected 3,975.36,
    /// committed 3,180.29; 6,000 realized is 188.7% of committed.
    #[test]
    fn realization_is_against_the_committed_gross_value() {
        let base = baseline(
            "p",
            0.8,
            vec![
                flat("fast", 1000.0),
                flat("slow", 1000.0),
                flat("on plan", 500.0),
            ],
        );
        let as_of = date("2026-01-01") + chrono::Days::new(121);
        let deliveries = vec![
            delivery("1", "fast", 6000.0, "2026-02-15"),
            delivery("2", "slow", 1000.0, "2026-03-15"),
            delivery("3", "on plan", 1600.0, "2026-04-01"),
            delivery("4", "fast", 9999.0, "2027-01-01"),
        ];
        let plans = [(&"p".to_owned(), &plan(base, deliveries))];
        let insights = insights("m", None, &plans.map(|(a, b)| (a, b)), as_of, 0.1);
        let elapsed = 121.0 / DAYS_PER_MONTH;
        assert!((insights.months_elapsed - elapsed).abs() < 1e-12);
        let fast = &insights.drivers[0];
        assert!((fast.expected_to_date - 1000.0 * elapsed).abs() < 1e-6);
        assert!((fast.committed_to_date - 800.0 * elapsed).abs() < 1e-6);
        assert_eq!(
            fast.realized_to_date, 6000.0,
            "later deliveries do not count"
        );
        let pace = 6000.0 / (800.0 * elapsed);
        assert!((fast.realization_percent.unwrap() - 100.0 * pace).abs() < 1e-9);
        assert_eq!(insights.opportunities.len(), 1);
        assert_eq!(insights.opportunities[0].driver, "fast");
        // The committed rest of the horizon, at the pace so far.
        let rest = 800.0 * (12.0 - elapsed);
        assert!(
            (insights.opportunities[0].added_value_at_horizon - rest * (pace - 1.0)).abs() < 1e-6
        );
        // 1,600 against 400 x 3.975 = 1,590: within the margin.
        assert_eq!(insights.risks.len(), 1);
        assert_eq!(insights.risks[0].driver, "slow");
        assert_eq!(insights.trend.len(), 3);
        assert_eq!(insights.trend[2].cumulative_realized, 8600.0);
        assert!((insights.realized_to_date - 8600.0).abs() < 1e-9);
        assert!((insights.committed_to_date - 2000.0 * elapsed).abs() < 1e-6);
    }

    /// Two plans of one model: each keeps its deliveries (the same id in
    /// both is two deliveries), the model's insights sum the active ones,
    /// and a retired plan stops counting.
    #[test]
    fn plans_keep_their_own_deliveries_and_the_model_sums_the_active_ones() {
        let mut state = Some(Amplification::default());
        let mut ctx = Handling::detached("m");
        let mut send = |msg| Amplifier::handle(&mut state, msg, &mut ctx).unwrap();
        for id in ["p1", "p2"] {
            send(AmplifierMsg::RegisterBaseline(Box::new(baseline(
                id,
                1.0,
                vec![flat("d", 1000.0)],
            ))));
            send(AmplifierMsg::RecordDeliveries {
                plan_id: id.into(),
                deliveries: vec![delivery("jan", "d", 700.0, "2026-01-20")],
            });
        }
        // Again: recorded once.
        send(AmplifierMsg::RecordDeliveries {
            plan_id: "p2".into(),
            deliveries: vec![delivery("jan", "d", 700.0, "2026-01-20")],
        });
        let as_of = date("2026-02-01");
        let read =
            |send: &mut dyn FnMut(AmplifierMsg) -> AmplifierReply, plan: Option<&str>| match send(
                AmplifierMsg::Insights {
                    as_of,
                    margin: 0.1,
                    plan_id: plan.map(str::to_owned),
                },
            ) {
                AmplifierReply::Insights(insights) => insights,
                other => panic!("{other:?}"),
            };
        assert_eq!(read(&mut send, None).realized_to_date, 1400.0);
        assert_eq!(read(&mut send, Some("p2")).realized_to_date, 700.0);
        send(AmplifierMsg::RetireBaseline {
            plan_id: "p1".into(),
        });
        let model = read(&mut send, None);
        assert_eq!(model.plans, ["p2"]);
        assert_eq!(model.realized_to_date, 700.0);
        // A retired plan still answers for itself.
        assert_eq!(read(&mut send, Some("p1")).realized_to_date, 700.0);
    }

    /// A snapshot announces a driver entering the risk band once, not at
    /// every snapshot, and again after it left and came back.
    #[test]
    fn a_crossing_is_announced_once() {
        let mut state = Some(Amplification::default());
        let mut ctx = Handling::detached("m");
        let mut send = |msg| Amplifier::handle(&mut state, msg, &mut ctx).unwrap();
        send(AmplifierMsg::RegisterBaseline(Box::new(baseline(
            "p",
            1.0,
            vec![flat("d", 1000.0)],
        ))));
        let day = |n: u64| date("2026-03-01") + chrono::Days::new(n);
        for n in 0..3 {
            let AmplifierReply::Snapshot(rows) = send(AmplifierMsg::Snapshot {
                day: day(n),
                margin: 0.1,
            }) else {
                panic!()
            };
            assert_eq!(rows.len(), 3, "a driver, the plan, the model");
        }
        // The same day again: nothing new.
        let again = send(AmplifierMsg::Snapshot {
            day: day(2),
            margin: 0.1,
        });
        assert!(matches!(again, AmplifierReply::Snapshot(rows) if rows.is_empty()));
        send(AmplifierMsg::RecordDeliveries {
            plan_id: "p".into(),
            deliveries: vec![delivery("big", "d", 50_000.0, "2026-02-01")],
        });
        for n in 3..5 {
            send(AmplifierMsg::Snapshot {
                day: day(n),
                margin: 0.1,
            });
        }
        assert_eq!(ctx.emitted(), ["risk.detected", "opportunity.detected"]);
    }

    /// A state of the single-baseline shape reads into its plan.
    #[test]
    fn a_state_from_before_plans_reads_into_its_plan() {
        let old = serde_json::json!({
            "baseline": baseline("p", 1.0, vec![flat("d", 1000.0)]),
            "deliveries": [delivery("1", "d", 5.0, "2026-01-02")],
        });
        let mut state: Option<Amplification> = Some(serde_json::from_value(old).unwrap());
        let mut ctx = Handling::detached("m");
        let reply = Amplifier::handle(
            &mut state,
            AmplifierMsg::Insights {
                as_of: date("2026-02-01"),
                margin: 0.1,
                plan_id: None,
            },
            &mut ctx,
        )
        .unwrap();
        let AmplifierReply::Insights(insights) = reply else {
            panic!()
        };
        assert_eq!(insights.plans, ["p"]);
        assert_eq!(insights.realized_to_date, 5.0);
        let saved = serde_json::to_value(state.unwrap()).unwrap();
        assert!(saved.get("baseline").is_none(), "{saved}");
    }
}
