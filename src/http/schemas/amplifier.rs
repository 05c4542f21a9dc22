//! The amplifier's shapes (`valueverse_agents::amplifier`).

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use valueverse_agents::amplifier as domain;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriverInsight {
    pub driver: String,
    /// Gross value the model expects to date (drivers at their means).
    pub expected_to_date: f64,
    /// Gross value the commitment asks to date (expected x its scale).
    pub committed_to_date: f64,
    pub realized_to_date: f64,
    /// Realized over committed, in percent; `None` before anything was due.
    pub realization_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrendPoint {
    /// `YYYY-MM`.
    pub month: String,
    pub realized: f64,
    pub cumulative_realized: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Opportunity {
    pub driver: String,
    pub realization_percent: f64,
    /// Extra value by the horizon if the driver keeps its current pace.
    pub added_value_at_horizon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Risk {
    pub driver: String,
    pub realization_percent: f64,
    /// Value missing at the horizon if the driver keeps its current pace.
    pub projected_shortfall_at_horizon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Insights {
    pub model_id: String,
    /// The plan these are of; `null`: the model's active plans together.
    pub plan_id: Option<String>,
    /// The plans counted.
    pub plans: Vec<String>,
    pub as_of: NaiveDate,
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

convert_struct!(domain::DriverInsight => DriverInsight {
    driver,
    expected_to_date,
    committed_to_date,
    realized_to_date,
    realization_percent
});
convert_struct!(domain::TrendPoint => TrendPoint {
    month,
    realized,
    cumulative_realized
});
convert_struct!(domain::Opportunity => Opportunity {
    driver,
    realization_percent,
    added_value_at_horizon
});
convert_struct!(domain::Risk => Risk {
    driver,
    realization_percent,
    projected_shortfall_at_horizon
});
convert_struct!(domain::Insights => Insights {
    model_id,
    plan_id,
    plans,
    as_of,
    months_elapsed,
    months_remaining,
    expected_to_date,
    committed_to_date,
    realized_to_date,
    realization_percent,
    drivers: each,
    trend: each,
    opportunities: each,
    risks: each,
    margin
});
