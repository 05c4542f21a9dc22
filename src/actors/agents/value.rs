//! One quantity, one meaning: what a model version expects of its drivers
//! and what a commitment asks of them, both as **gross, undiscounted value
//! per month** (the quantity a delivery records), so that realized value is
//! compared with like.
//!
//! A commitment's target is an NPV: discounted and net of the model's
//! costs. Its gross equivalent scales the model's expected monthly values
//! by `scale = (target + PV(costs)) / PV(expected value)`: the gross value
//! which, following the model's ramp and discounted at its rate, nets the
//! target after its costs (`scale = 1` when the target is the mean NPV).

use chrono::{Months, NaiveDate};
use serde::{Deserialize, Serialize};

use super::architect::ModelVersion;

/// Average days in a month, to turn dates into elapsed months.
pub const DAYS_PER_MONTH: f64 = 30.4375;

/// What a driver is expected to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverBaseline {
    pub name: String,
    /// Expected monthly value at full ramp: unit value x mean quantity.
    pub monthly_value: f64,
    pub ramp_months: u32,
}

impl DriverBaseline {
    /// Gross value expected over the first `months` months (fractional),
    /// month `m` (1-based) at `min(1, m / ramp_months)` of full ramp.
    pub fn expected_over(&self, months: f64) -> f64 {
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

/// A model version's expected gross value by driver, and the scale a
/// commitment puts on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    pub model_version: i64,
    pub horizon_months: u32,
    pub drivers: Vec<DriverBaseline>,
    /// Committed gross value over expected gross value (see the module).
    pub scale: f64,
}

impl Expectation {
    /// What `version` expects (each driver at its mean quantity), scaled
    /// to `target` (an NPV) when one is given.
    pub fn of(version: &ModelVersion, target: Option<f64>) -> Expectation {
        let model = &version.model;
        let pv_expected: f64 = version
            .analytics
            .drivers
            .iter()
            .map(|d| d.present_value)
            .sum();
        let pv_costs = model.npv_weights().cost_basis;
        let scale = match target {
            Some(target) if pv_expected > 0.0 => ((target + pv_costs) / pv_expected).max(0.0),
            _ => 1.0,
        };
        Expectation {
            model_version: version.version,
            horizon_months: model.horizon_months,
            drivers: model
                .drivers
                .iter()
                .zip(&version.analytics.drivers)
                .map(|(driver, analytics)| DriverBaseline {
                    name: driver.name.clone(),
                    monthly_value: driver.unit_value * analytics.mean_quantity,
                    ramp_months: driver.ramp_months,
                })
                .collect(),
            scale: if scale.is_finite() { scale } else { 1.0 },
        }
    }

    /// Committed gross value of one driver over the first `months` months.
    pub fn committed_over(&self, driver: &DriverBaseline, months: f64) -> f64 {
        self.scale * driver.expected_over(months.min(f64::from(self.horizon_months)))
    }
}

/// Months from `start` to `date` (fractional, by days), within 0..=`horizon`.
pub fn months_between(start: NaiveDate, date: NaiveDate, horizon: u32) -> f64 {
    ((date - start).num_days() as f64 / DAYS_PER_MONTH).clamp(0.0, f64::from(horizon))
}

/// The first day after `months` calendar months from `start`.
pub fn add_months(start: NaiveDate, months: u32) -> NaiveDate {
    start
        .checked_add_months(Months::new(months))
        .unwrap_or(NaiveDate::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The scale, by hand: a model of one driver worth 1,000 a month for
    /// 12 months, undiscounted, costs 2,000 up front and 100 a month:
    /// expected gross 12,000, mean NPV 12,000 - 2,000 - 1,200 = 8,800.
    /// A target NPV of 6,000 needs gross value G with G - 3,200 = 6,000:
    /// G = 9,200, scale 9,200 / 12,000.
    #[test]
    fn a_target_npv_becomes_its_gross_equivalent() {
        let model: valueverse_gpu::model::ValueModel = serde_json::from_value(serde_json::json!({
            "name": "m", "customer": "c", "industry": "retail", "currency": "USD",
            "horizon_months": 12, "discount_rate": 0.0,
            "costs": { "one_off": 2000.0, "monthly": 100.0 },
            "drivers": [{ "name": "d", "category": "revenue", "unit_value": 10.0,
                          "quantity": { "dist": "fixed", "value": 100.0 } }]
        }))
        .unwrap();
        let version = ModelVersion {
            version: 1,
            analytics: model.analytics(),
            model,
            created_at: chrono::Utc::now(),
        };
        assert!((version.analytics.npv - 8800.0).abs() < 1e-9);
        let at_mean = Expectation::of(&version, Some(8800.0));
        assert!((at_mean.scale - 1.0).abs() < 1e-12);
        let lower = Expectation::of(&version, Some(6000.0));
        assert!((lower.scale - 9200.0 / 12000.0).abs() < 1e-12);
        let driver = &lower.drivers[0];
        assert!((lower.committed_over(driver, 12.0) - 9200.0).abs() < 1e-9);
        assert!((lower.committed_over(driver, 3.0) - 2300.0).abs() < 1e-9);
        // Beyond the horizon nothing more is committed.
        assert!((lower.committed_over(driver, 30.0) - 9200.0).abs() < 1e-9);
        // A target below minus the costs asks for no value at all.
        assert_eq!(Expectation::of(&version, Some(-1e6)).scale, 0.0);
        assert_eq!(Expectation::of(&version, None).scale, 1.0);
    }
}
