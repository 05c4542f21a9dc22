//! The amplifier agent: one instance per value model. It holds the model's
//! metrics baseline (what each driver was expected to deliver month by
//! month, from the committed model version) and the realized deliveries,
//! and turns them into insights: realization per driver and in total, the
//! monthly trend, opportunities (drivers over-delivering) and risks (drivers
//! under-delivering) projected to the horizon.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use valueverse_store::Column;

use super::executor::Delivery;
use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

/// Average days in a month, to turn dates into elapsed months.
const DAYS_PER_MONTH: f64 = 30.4375;

/// What a driver was expected to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverBaseline {
    pub name: String,
    /// Expected monthly value at full ramp: unit value x mean quantity.
    pub monthly_value: f64,
    pub ramp_months: u32,
}

impl DriverBaseline {
    /// Value expected over the first `months` months (fractional).
    fn expected_over(&self, months: f64) -> f64 {
        let mut total = 0.0;
        let mut month = 1u32;
        while f64::from(month - 1) < months {
            let share = (months - f64::from(month - 1)).min(1.0);
            let ramp = if self.ramp_months == 0 {
                1.0
            } else {
                (f64::from(month) / f64::from(self.ramp_months)).min(1.0)
            };
            total += share * ramp * self.monthly_value;
            month += 1;
        }
        total
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub plan_id: String,
    pub commitment_id: String,
    pub model_version: i64,
    pub start_date: NaiveDate,
    pub horizon_months: u32,
    pub drivers: Vec<DriverBaseline>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Amplification {
    pub baseline: Option<Baseline>,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverInsight {
    pub driver: String,
    pub committed_to_date: f64,
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
    pub plan_id: String,
    pub as_of: NaiveDate,
    pub months_elapsed: f64,
    pub months_remaining: f64,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AmplifierMsg {
    /// Registers the baseline of a plan (again: no change).
    RegisterBaseline(Box<Baseline>),
    /// Removes the baseline of `plan_id` (a saga's compensation).
    RemoveBaseline {
        plan_id: String,
    },
    /// Records a delivery; the same id twice is recorded once.
    RecordDelivery(Delivery),
    Insights {
        as_of: NaiveDate,
        margin: f64,
    },
}

impl AgentMessage for AmplifierMsg {
    fn name(&self) -> &'static str {
        match self {
            AmplifierMsg::RegisterBaseline(_) => "register_baseline",
            AmplifierMsg::RemoveBaseline { .. } => "remove_baseline",
            AmplifierMsg::RecordDelivery(_) => "record_delivery",
            AmplifierMsg::Insights { .. } => "insights",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AmplifierReply {
    Done,
    Insights(Box<Insights>),
}

pub struct Amplifier;

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
        match msg {
            AmplifierMsg::RegisterBaseline(baseline) => {
                if plan_of(&state.baseline) != Some(baseline.plan_id.as_str()) {
                    state.baseline = Some(*baseline);
                    ctx.persist();
                }
                Ok(AmplifierReply::Done)
            }
            AmplifierMsg::RemoveBaseline { plan_id } => {
                if plan_of(&state.baseline) == Some(plan_id.as_str()) {
                    state.baseline = None;
                    ctx.persist();
                }
                Ok(AmplifierReply::Done)
            }
            AmplifierMsg::RecordDelivery(delivery) => {
                if !state.deliveries.iter().any(|d| d.id == delivery.id) {
                    state.deliveries.push(delivery);
                    ctx.persist();
                }
                Ok(AmplifierReply::Done)
            }
            AmplifierMsg::Insights { as_of, margin } => {
                let Some(baseline) = &state.baseline else {
                    return Err(HandlerError::rejected(
                        RejectionCode::NoBaseline,
                        format!(
                            "model `{}` has no execution plan yet: insights need its baseline",
                            ctx.key()
                        ),
                        None,
                    ));
                };
                Ok(AmplifierReply::Insights(Box::new(insights(
                    ctx.key(),
                    baseline,
                    &state.deliveries,
                    as_of,
                    margin,
                ))))
            }
        }
    }

    valueverse_runtime::table_persistence!(Amplifier::TABLE, |amplification| vec![(
        "plan_id",
        Column::Text(plan_of(&amplification.baseline).map(str::to_owned)),
    )]);
}

impl Amplifier {
    const TABLE: &'static str = "amplifications";
}

fn plan_of(baseline: &Option<Baseline>) -> Option<&str> {
    baseline.as_ref().map(|baseline| baseline.plan_id.as_str())
}

fn percent(realized: f64, committed: f64) -> Option<f64> {
    (committed > 0.0).then(|| 100.0 * realized / committed)
}

/// Realized against committed as of a date.
pub fn insights(
    model_id: &str,
    baseline: &Baseline,
    deliveries: &[Delivery],
    as_of: NaiveDate,
    margin: f64,
) -> Insights {
    let horizon = f64::from(baseline.horizon_months);
    let elapsed =
        ((as_of - baseline.start_date).num_days() as f64 / DAYS_PER_MONTH).clamp(0.0, horizon);
    let remaining = horizon - elapsed;
    let counted: Vec<&Delivery> = deliveries.iter().filter(|d| d.date <= as_of).collect();
    let mut drivers = Vec::new();
    let (mut opportunities, mut risks) = (Vec::new(), Vec::new());
    for driver in &baseline.drivers {
        let committed = driver.expected_over(elapsed);
        let realized: f64 = counted
            .iter()
            .filter(|d| d.driver == driver.name)
            .map(|d| d.value)
            .sum();
        let realization = percent(realized, committed);
        if let Some(realization) = realization {
            // The rest of the horizon at the pace so far: the expected
            // remainder scaled by the realization.
            let rest = driver.expected_over(horizon) - committed;
            let pace = realization / 100.0;
            if pace > 1.0 + margin {
                opportunities.push(Opportunity {
                    driver: driver.name.clone(),
                    realization_percent: realization,
                    added_value_at_horizon: rest * (pace - 1.0),
                });
            } else if pace < 1.0 - margin {
                risks.push(Risk {
                    driver: driver.name.clone(),
                    realization_percent: realization,
                    projected_shortfall_at_horizon: rest * (1.0 - pace),
                });
            }
        }
        drivers.push(DriverInsight {
            driver: driver.name.clone(),
            committed_to_date: committed,
            realized_to_date: realized,
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
    for delivery in &counted {
        let month = format!("{:04}-{:02}", delivery.date.year(), delivery.date.month());
        *by_month.entry(month).or_default() += delivery.value;
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
    let committed_to_date: f64 = drivers.iter().map(|d| d.committed_to_date).sum();
    let realized_to_date: f64 = drivers.iter().map(|d| d.realized_to_date).sum();
    Insights {
        model_id: model_id.to_owned(),
        plan_id: baseline.plan_id.clone(),
        as_of,
        months_elapsed: elapsed,
        months_remaining: remaining,
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

/// The baseline a plan registers: each driver's expected monthly value at
/// full ramp (unit value x mean quantity) of the plan's model version.
pub fn baseline_for(
    plan: &super::executor::Plan,
    version: &super::architect::ModelVersion,
) -> Baseline {
    Baseline {
        plan_id: plan.id.clone(),
        commitment_id: plan.commitment_id.clone(),
        model_version: version.version,
        start_date: plan.start_date,
        horizon_months: version.model.horizon_months,
        drivers: version
            .model
            .drivers
            .iter()
            .zip(&version.analytics.drivers)
            .map(|(driver, analytics)| DriverBaseline {
                name: driver.name.clone(),
                monthly_value: driver.unit_value * analytics.mean_quantity,
                ramp_months: driver.ramp_months,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn realization_opportunities_and_risks_follow_the_pace() {
        let baseline = Baseline {
            plan_id: "p".into(),
            commitment_id: "c".into(),
            model_version: 1,
            start_date: date("2026-01-01"),
            horizon_months: 12,
            drivers: vec![
                DriverBaseline {
                    name: "fast".into(),
                    monthly_value: 1000.0,
                    ramp_months: 0,
                },
                DriverBaseline {
                    name: "slow".into(),
                    monthly_value: 1000.0,
                    ramp_months: 0,
                },
                DriverBaseline {
                    name: "on plan".into(),
                    monthly_value: 500.0,
                    ramp_months: 0,
                },
            ],
        };
        // Four months in: 4,000 expected of each of the first two.
        let as_of = date("2026-01-01") + chrono::Days::new(4 * 30 + 1);
        let deliveries = vec![
            delivery("1", "fast", 6000.0, "2026-02-15"),
            delivery("2", "slow", 1000.0, "2026-03-15"),
            delivery("3", "on plan", 2000.0, "2026-04-01"),
            delivery("4", "fast", 9999.0, "2027-01-01"),
        ];
        let insights = insights("m", &baseline, &deliveries, as_of, 0.1);
        let elapsed = insights.months_elapsed;
        assert!((elapsed - 121.0 / DAYS_PER_MONTH).abs() < 1e-12);
        let fast = &insights.drivers[0];
        assert!((fast.committed_to_date - 1000.0 * elapsed).abs() < 1e-6);
        assert_eq!(
            fast.realized_to_date, 6000.0,
            "later deliveries do not count"
        );
        assert_eq!(insights.opportunities.len(), 1);
        assert_eq!(insights.opportunities[0].driver, "fast");
        let pace = 6000.0 / (1000.0 * elapsed);
        let rest = 1000.0 * (12.0 - elapsed);
        assert!(
            (insights.opportunities[0].added_value_at_horizon - rest * (pace - 1.0)).abs() < 1e-6
        );
        assert_eq!(insights.risks.len(), 1);
        assert_eq!(insights.risks[0].driver, "slow");
        assert_eq!(insights.trend.len(), 3);
        assert_eq!(insights.trend[2].cumulative_realized, 9000.0);
        assert!((insights.realized_to_date - 9000.0).abs() < 1e-9);
    }

    #[test]
    fn ramp_up_lowers_what_is_expected_early() {
        let driver = DriverBaseline {
            name: "d".into(),
            monthly_value: 1200.0,
            ramp_months: 4,
        };
        // Months 1..4 at 1/4, 2/4, 3/4, 1 of 1200.
        assert!((driver.expected_over(4.0) - 3000.0).abs() < 1e-9);
        assert!((driver.expected_over(0.5) - 150.0).abs() < 1e-9);
        assert_eq!(driver.expected_over(0.0), 0.0);
    }
}
