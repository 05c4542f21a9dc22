//! The value model: drivers with uncertain quantities, costs, horizon and
//! discount rate; its validation (each error names the JSON path of the
//! field at fault) and its deterministic analytics (NPV, ROI, payback with
//! every driver at its mean).
//!
//! Semantics: on a path every driver's quantity is drawn once. The cash flow
//! of month m (1..=H) is `sum_d unit_value_d * q_d * ramp_d(m) - monthly`,
//! with `ramp_d(m) = min(1, m / ramp_months_d)` (1 when `ramp_months` is 0).
//! `NPV = -one_off + sum_m CF_m / (1 + rate)^(m / 12)`. ROI is
//! `NPV / (one_off + PV of monthly costs)`. The payback month is the first
//! month whose cumulative discounted cash flow (from `-one_off`) is >= 0.
//!
//! NPV is linear in the drawn quantities: with `W_d = unit_value_d * sum_m
//! ramp_d(m) / (1 + rate)^(m / 12)`, `NPV = base + sum_d W_d * q_d`. Engines
//! use [`NpvWeights`] and never loop over months per path.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest horizon accepted, in months.
pub const MAX_HORIZON_MONTHS: u32 = 600;
/// Most drivers a model may have.
pub const MAX_DRIVERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueModel {
    pub name: String,
    pub customer: String,
    pub industry: String,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    pub horizon_months: u32,
    /// Annual rate in [0, 1).
    pub discount_rate: f64,
    pub costs: Costs,
    pub drivers: Vec<Driver>,
    #[serde(default)]
    pub correlations: Vec<Correlation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    pub one_off: f64,
    pub monthly: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Driver {
    pub name: String,
    pub category: DriverCategory,
    /// Value of one unit of quantity, in the model's currency.
    pub unit_value: f64,
    /// Months to reach full effect (0: from the first month).
    #[serde(default)]
    pub ramp_months: u32,
    /// Units per month.
    pub quantity: Distribution,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverCategory {
    Revenue,
    Cost,
    Productivity,
    Risk,
}

/// The largest present value (in the model's currency) a model may reach
/// on any path: far beyond any business case, and small enough that every
/// statistic of a run of 10^9 paths (sums of squares included) is finite.
/// It is 2^53 - 1, the largest integer whose successor an f64 still tells
/// apart, so that a JSON integer just past it cannot round onto it and pass.
pub const MAX_MONEY: f64 = 9_007_199_254_740_991.0;

/// The distribution of a driver's monthly quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    Fixed {
        value: f64,
    },
    Normal {
        mean: f64,
        sd: f64,
    },
    /// Mean and standard deviation of the quantity itself, not of its log.
    Lognormal {
        mean: f64,
        sd: f64,
    },
    Triangular {
        min: f64,
        mode: f64,
        max: f64,
    },
    /// Beta-PERT with lambda 4.
    Pert {
        min: f64,
        mode: f64,
        max: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    /// `impact` with probability `p`, else 0.
    Bernoulli {
        p: f64,
        impact: f64,
    },
}

impl Distribution {
    /// The largest magnitude a draw can take (normal tails cut at 9 sd,
    /// beyond what a 53-bit uniform's quantile reaches); infinite when the
    /// parameters overflow.
    pub fn extreme(&self) -> f64 {
        const TAIL: f64 = 9.0;
        match *self {
            Distribution::Fixed { value } => value.abs(),
            Distribution::Normal { mean, sd } => mean.abs() + TAIL * sd,
            Distribution::Lognormal { mean, sd } => {
                let sigma2 = (1.0 + (sd / mean).powi(2)).ln();
                (mean.ln() - sigma2 / 2.0 + TAIL * sigma2.sqrt()).exp()
            }
            Distribution::Triangular { min, max, .. }
            | Distribution::Pert { min, max, .. }
            | Distribution::Uniform { min, max } => min.abs().max(max.abs()),
            Distribution::Bernoulli { impact, .. } => impact.abs(),
        }
    }

    pub fn mean(&self) -> f64 {
        match *self {
            Distribution::Fixed { value } => value,
            Distribution::Normal { mean, .. } | Distribution::Lognormal { mean, .. } => mean,
            Distribution::Triangular { min, mode, max } => (min + mode + max) / 3.0,
            Distribution::Pert { min, mode, max } => (min + 4.0 * mode + max) / 6.0,
            Distribution::Uniform { min, max } => (min + max) / 2.0,
            Distribution::Bernoulli { p, impact } => p * impact,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    pub a: String,
    pub b: String,
    pub rho: f64,
}

/// What is wrong with a name (of a model, driver, milestone, API key):
/// empty, longer than `max_len` characters, or holding control characters
/// (a terminal escape or a line break forges output where it is shown).
pub fn name_problem(value: &str, max_len: usize) -> Option<String> {
    if value.trim().is_empty() {
        Some("must not be empty".into())
    } else if value.chars().count() > max_len {
        Some(format!("must be at most {max_len} characters"))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

/// One field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path, e.g. `drivers[2].quantity.sd`.
    pub path: String,
    pub message: String,
}

/// Every field at fault in a model, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidModel {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidModel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                formatter.write_str("; ")?;
            }
            if error.path == "." {
                formatter.write_str(&error.message)?;
            } else {
                write!(formatter, "{}: {}", error.path, error.message)?;
            }
        }
        Ok(())
    }
}

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn text(&mut self, path: &str, value: &str, max_len: usize) {
        if let Some(problem) = name_problem(value, max_len) {
            self.fail(path, problem);
        }
    }

    /// Finite and within `[low, high]` (either bound open when `None`).
    fn number(&mut self, path: &str, value: f64, low: Option<f64>, high: Option<f64>) -> bool {
        let ok = value.is_finite()
            && low.is_none_or(|low| value >= low)
            && high.is_none_or(|high| value <= high);
        if !ok {
            let range = match (low, high) {
                (Some(low), Some(high)) => format!("a number within [{low}, {high}]"),
                (Some(low), None) => format!("a number >= {low}"),
                (None, Some(high)) => format!("a number <= {high}"),
                (None, None) => "a finite number".to_owned(),
            };
            self.fail(path, format!("must be {range}, got {value}"));
        }
        ok
    }

    fn ordered(&mut self, path: &str, low: (&str, f64), high: (&str, f64)) {
        if low.1 > high.1 {
            self.fail(
                format!("{path}.{}", low.0),
                format!("must be <= {} ({} > {})", high.0, low.1, high.1),
            );
        }
    }

    fn distribution(&mut self, path: &str, distribution: &Distribution) {
        let field = |name: &str| format!("{path}.{name}");
        match *distribution {
            Distribution::Fixed { value } => {
                self.number(&field("value"), value, None, None);
            }
            Distribution::Normal { mean, sd } => {
                self.number(&field("mean"), mean, None, None);
                self.number(&field("sd"), sd, Some(0.0), None);
            }
            Distribution::Lognormal { mean, sd } => {
                if self.number(&field("mean"), mean, None, None) && mean <= 0.0 {
                    self.fail(
                        field("mean"),
                        format!("must be > 0 for a lognormal, got {mean}"),
                    );
                }
                self.number(&field("sd"), sd, Some(0.0), None);
            }
            Distribution::Triangular { min, mode, max } | Distribution::Pert { min, mode, max } => {
                let finite = self.number(&field("min"), min, None, None)
                    & self.number(&field("mode"), mode, None, None)
                    & self.number(&field("max"), max, None, None);
                if finite {
                    self.ordered(path, ("min", min), ("mode", mode));
                    self.ordered(path, ("mode", mode), ("max", max));
                }
            }
            Distribution::Uniform { min, max } => {
                let finite = self.number(&field("min"), min, None, None)
                    & self.number(&field("max"), max, None, None);
                if finite {
                    self.ordered(path, ("min", min), ("max", max));
                }
            }
            Distribution::Bernoulli { p, impact } => {
                self.number(&field("p"), p, Some(0.0), Some(1.0));
                self.number(&field("impact"), impact, None, None);
            }
        }
    }
}

impl ValueModel {
    /// Parses and validates a model from JSON; every error names the JSON
    /// path of the field at fault (`.` for the document itself).
    pub fn from_json(json: &[u8]) -> Result<ValueModel, InvalidModel> {
        let single = |path: String, message: String| InvalidModel {
            errors: vec![FieldError { path, message }],
        };
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let model: ValueModel = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| single(error.path().to_string(), error.into_inner().to_string()))?;
        deserializer
            .end()
            .map_err(|error| single(".".into(), error.to_string()))?;
        model.validate()?;
        Ok(model)
    }

    /// Checks every field; the errors name their JSON paths.
    pub fn validate(&self) -> Result<(), InvalidModel> {
        let mut check = Checker { errors: Vec::new() };
        check.text("name", &self.name, 200);
        check.text("customer", &self.customer, 200);
        check.text("industry", &self.industry, 64);
        let currency_ok =
            self.currency.len() == 3 && self.currency.bytes().all(|byte| byte.is_ascii_uppercase());
        if !currency_ok {
            check.fail(
                "currency",
                "must be a three-letter ISO 4217 code such as USD",
            );
        }
        if !(1..=MAX_HORIZON_MONTHS).contains(&self.horizon_months) {
            check.fail(
                "horizon_months",
                format!(
                    "must be within 1..={MAX_HORIZON_MONTHS}, got {}",
                    self.horizon_months
                ),
            );
        }
        if !(self.discount_rate.is_finite() && (0.0..1.0).contains(&self.discount_rate)) {
            check.fail(
                "discount_rate",
                format!("must be within [0, 1), got {}", self.discount_rate),
            );
        }
        check.number(
            "costs.one_off",
            self.costs.one_off,
            Some(0.0),
            Some(MAX_MONEY),
        );
        check.number(
            "costs.monthly",
            self.costs.monthly,
            Some(0.0),
            Some(MAX_MONEY),
        );

        if self.drivers.is_empty() {
            check.fail("drivers", "must list at least one driver");
        } else if self.drivers.len() > MAX_DRIVERS {
            check.fail(
                "drivers",
                format!("must list at most {MAX_DRIVERS} drivers"),
            );
        }
        let mut seen = HashSet::new();
        for (index, driver) in self.drivers.iter().enumerate() {
            let path = format!("drivers[{index}]");
            check.text(&format!("{path}.name"), &driver.name, 200);
            if !seen.insert(driver.name.as_str()) {
                check.fail(
                    format!("{path}.name"),
                    format!("duplicate driver name `{}`", driver.name),
                );
            }
            check.number(&format!("{path}.unit_value"), driver.unit_value, None, None);
            if driver.ramp_months > MAX_HORIZON_MONTHS {
                check.fail(
                    format!("{path}.ramp_months"),
                    format!("must be at most {MAX_HORIZON_MONTHS}"),
                );
            }
            check.distribution(&format!("{path}.quantity"), &driver.quantity);
        }

        let index_of = self.driver_indices();
        let mut pairs = HashSet::new();
        for (index, correlation) in self.correlations.iter().enumerate() {
            let path = format!("correlations[{index}]");
            let a = index_of.get(correlation.a.as_str()).copied();
            let b = index_of.get(correlation.b.as_str()).copied();
            if a.is_none() {
                check.fail(
                    format!("{path}.a"),
                    format!("no driver named `{}`", correlation.a),
                );
            }
            if b.is_none() {
                check.fail(
                    format!("{path}.b"),
                    format!("no driver named `{}`", correlation.b),
                );
            }
            check.number(
                &format!("{path}.rho"),
                correlation.rho,
                Some(-1.0),
                Some(1.0),
            );
            if let (Some(a), Some(b)) = (a, b) {
                if a == b {
                    check.fail(format!("{path}.b"), "must name a driver other than `a`");
                } else if !pairs.insert((a.min(b), a.max(b))) {
                    check.fail(path, "this pair of drivers is already correlated");
                }
            }
        }
        if check.errors.is_empty() {
            self.check_magnitudes(&mut check);
        }
        if check.errors.is_empty()
            && let Err(error) = self.correlation_matrix().cholesky()
        {
            check.errors.push(error);
        }
        if check.errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidModel {
                errors: check.errors,
            })
        }
    }

    /// Derived values, not only inputs: finite inputs can multiply into
    /// an infinite NPV (`unit_value` 1e200 times a quantity of 1e200), which
    /// no JSON can hold. Every present value a path can reach, and so every
    /// statistic of a run (sums of squares over 10^9 paths included), must
    /// stay within [`MAX_MONEY`].
    fn check_magnitudes(&self, check: &mut Checker) {
        let weights = self.npv_weights();
        let too_large = |value: f64| !(value.is_finite() && value.abs() <= MAX_MONEY);
        if too_large(self.costs.one_off) {
            check.fail(
                "costs.one_off",
                format!("must be at most {MAX_MONEY:e}, got {}", self.costs.one_off),
            );
        } else if too_large(weights.base) || too_large(weights.cost_basis) {
            check.fail(
                "costs.monthly",
                format!(
                    "its present value over the horizon is {:e}, beyond the {MAX_MONEY:e} a model may hold",
                    weights.cost_basis - self.costs.one_off
                ),
            );
        }
        let mut reach = weights.base.abs();
        for (index, (driver, weight)) in self.drivers.iter().zip(&weights.weights).enumerate() {
            let value = weight.abs() * driver.quantity.extreme();
            if too_large(value) || too_large(driver.unit_value * driver.quantity.mean() * 12.0) {
                check.fail(
                    format!("drivers[{index}].unit_value"),
                    format!(
                        "unit_value times the largest quantity this driver can draw is worth {value:e} in present value, beyond the {MAX_MONEY:e} a model may hold"
                    ),
                );
            }
            reach += value;
        }
        if check.errors.is_empty() && too_large(reach) {
            check.fail(
                "drivers",
                format!(
                    "together the drivers can reach a present value of {reach:e}, beyond the {MAX_MONEY:e} a model may hold"
                ),
            );
        }
    }

    fn driver_indices(&self) -> HashMap<&str, usize> {
        self.drivers
            .iter()
            .enumerate()
            .map(|(index, driver)| (driver.name.as_str(), index))
            .collect()
    }

    /// The drivers' correlation matrix (identity where no pair is given).
    pub fn correlation_matrix(&self) -> CorrelationMatrix {
        let size = self.drivers.len();
        let index_of = self.driver_indices();
        let mut values = vec![0.0; size * size];
        for index in 0..size {
            values[index * size + index] = 1.0;
        }
        let mut sources = HashMap::new();
        for (position, correlation) in self.correlations.iter().enumerate() {
            if let (Some(&a), Some(&b)) = (
                index_of.get(correlation.a.as_str()),
                index_of.get(correlation.b.as_str()),
            ) {
                values[a * size + b] = correlation.rho;
                values[b * size + a] = correlation.rho;
                sources.insert((a.min(b), a.max(b)), position);
            }
        }
        CorrelationMatrix {
            size,
            values,
            sources,
        }
    }

    /// Discount factor of month `m`: `1 / (1 + rate)^(m / 12)`.
    fn discount_factors(&self) -> Vec<f64> {
        let monthly = (1.0 + self.discount_rate).powf(1.0 / 12.0);
        let mut factor = 1.0;
        (1..=self.horizon_months)
            .map(|_| {
                factor /= monthly;
                factor
            })
            .collect()
    }

    /// NPV as `base + sum_d weights[d] * q_d`.
    pub fn npv_weights(&self) -> NpvWeights {
        let factors = self.discount_factors();
        let pv_monthly_costs = self.costs.monthly * factors.iter().sum::<f64>();
        let weights = self
            .drivers
            .iter()
            .map(|driver| {
                let ramped: f64 = factors
                    .iter()
                    .enumerate()
                    .map(|(month, factor)| ramp(driver.ramp_months, month as u32 + 1) * factor)
                    .sum();
                driver.unit_value * ramped
            })
            .collect();
        NpvWeights {
            base: -self.costs.one_off - pv_monthly_costs,
            weights,
            cost_basis: self.costs.one_off + pv_monthly_costs,
        }
    }

    /// Cumulative discounted cash flow of every month, linear in the
    /// quantities, for payback months.
    pub fn payback_curves(&self) -> PaybackCurves {
        let factors = self.discount_factors();
        let months = factors.len();
        let mut base = Vec::with_capacity(months);
        let mut cumulative_costs = self.costs.one_off;
        for factor in &factors {
            cumulative_costs += self.costs.monthly * factor;
            base.push(-cumulative_costs);
        }
        let mut per_driver = Vec::with_capacity(months * self.drivers.len());
        for driver in &self.drivers {
            let mut cumulative = 0.0;
            for (month, factor) in factors.iter().enumerate() {
                cumulative +=
                    driver.unit_value * ramp(driver.ramp_months, month as u32 + 1) * factor;
                per_driver.push(cumulative);
            }
        }
        PaybackCurves {
            months,
            base,
            per_driver,
        }
    }

    /// NPV, ROI and payback with every driver at its mean.
    pub fn analytics(&self) -> Analytics {
        let means: Vec<f64> = self.drivers.iter().map(|d| d.quantity.mean()).collect();
        let weights = self.npv_weights();
        let npv = weights.npv(&means);
        let payback_month = self.payback_curves().payback_month(&means);
        let drivers = self
            .drivers
            .iter()
            .zip(&means)
            .zip(&weights.weights)
            .map(|((driver, &mean), &weight)| DriverAnalytics {
                name: driver.name.clone(),
                mean_quantity: mean,
                annual_value_at_full_ramp: driver.unit_value * mean * 12.0,
                present_value: weight * mean,
            })
            .collect();
        Analytics {
            npv,
            roi: weights.roi(npv),
            payback_month,
            drivers,
        }
    }
}

/// Cumulative discounted cash flow by month: `base[m] + sum_d
/// per_driver[d][m] * q_d`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaybackCurves {
    months: usize,
    base: Vec<f64>,
    /// Driver-major: `per_driver[d * months + m]`.
    per_driver: Vec<f64>,
}

impl PaybackCurves {
    /// First month (1-based) whose cumulative discounted cash flow is >= 0.
    pub fn payback_month(&self, quantities: &[f64]) -> Option<u32> {
        (0..self.months)
            .find(|&month| {
                let driven: f64 = quantities
                    .iter()
                    .enumerate()
                    .map(|(driver, quantity)| {
                        self.per_driver[driver * self.months + month] * quantity
                    })
                    .sum();
                self.base[month] + driven >= 0.0
            })
            .map(|month| month as u32 + 1)
    }
}

/// `ramp_d(m) = min(1, m / ramp_months)`, 1 when `ramp_months` is 0.
fn ramp(ramp_months: u32, month: u32) -> f64 {
    if ramp_months == 0 {
        1.0
    } else {
        (f64::from(month) / f64::from(ramp_months)).min(1.0)
    }
}

/// NPV as a linear function of the drivers' quantities.
#[derive(Debug, Clone, PartialEq)]
pub struct NpvWeights {
    /// `-one_off - PV(monthly costs)`.
    pub base: f64,
    /// `unit_value_d * sum_m ramp_d(m) * discount(m)`, one per driver.
    pub weights: Vec<f64>,
    /// `one_off + PV(monthly costs)`: the ROI's denominator.
    pub cost_basis: f64,
}

impl NpvWeights {
    pub fn npv(&self, quantities: &[f64]) -> f64 {
        // Added onto the base driver by driver: the order every engine uses,
        // so their NPVs agree bit for bit.
        self.weights
            .iter()
            .zip(quantities)
            .fold(self.base, |total, (weight, quantity)| {
                total + weight * quantity
            })
    }

    /// `None` when there is no cost to return on.
    pub fn roi(&self, npv: f64) -> Option<f64> {
        (self.cost_basis > 0.0).then(|| npv / self.cost_basis)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analytics {
    pub npv: f64,
    pub roi: Option<f64>,
    pub payback_month: Option<u32>,
    pub drivers: Vec<DriverAnalytics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverAnalytics {
    pub name: String,
    pub mean_quantity: f64,
    pub annual_value_at_full_ramp: f64,
    pub present_value: f64,
}

/// A symmetric correlation matrix, row-major, remembering which entry of
/// `correlations` set each pair.
#[derive(Debug, Clone)]
pub struct CorrelationMatrix {
    size: usize,
    values: Vec<f64>,
    sources: HashMap<(usize, usize), usize>,
}

impl CorrelationMatrix {
    /// The lower-triangular Cholesky factor (row-major). A matrix that is not
    /// positive semi-definite is refused, naming the correlation that breaks
    /// it: the largest given one in the row where the factorisation fails.
    pub fn cholesky(&self) -> Result<Vec<f64>, FieldError> {
        let n = self.size;
        let mut lower = vec![0.0; n * n];
        for row in 0..n {
            for column in 0..=row {
                let dot: f64 = (0..column)
                    .map(|k| lower[row * n + k] * lower[column * n + k])
                    .sum();
                let value = self.values[row * n + column] - dot;
                if row == column {
                    // Tolerate rounding: semi-definite is allowed.
                    if value < -1e-9 {
                        return Err(self.blame(row));
                    }
                    lower[row * n + row] = value.max(0.0).sqrt();
                } else {
                    let pivot = lower[column * n + column];
                    lower[row * n + column] = if pivot > 1e-12 { value / pivot } else { 0.0 };
                }
            }
        }
        Ok(lower)
    }

    fn blame(&self, row: usize) -> FieldError {
        let culprit = (0..row)
            .filter_map(|column| {
                self.sources
                    .get(&(column, row))
                    .map(|&position| (self.values[row * self.size + column].abs(), position))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, position)| position);
        let path = culprit.map_or_else(
            || "correlations".to_owned(),
            |p| format!("correlations[{p}]"),
        );
        FieldError {
            path,
            message: "makes the correlation matrix not positive semi-definite".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ValueModel {
        serde_json::from_value(serde_json::json!({
            "name": "Acme support automation", "customer": "Acme", "industry": "saas",
            "currency": "USD", "horizon_months": 36, "discount_rate": 0.10,
            "costs": { "one_off": 250000, "monthly": 10000 },
            "drivers": [
                { "name": "ticket deflection", "category": "cost", "unit_value": 12.5,
                  "ramp_months": 6,
                  "quantity": { "dist": "triangular", "min": 1000, "mode": 2500, "max": 4000 } },
                { "name": "agent productivity", "category": "productivity", "unit_value": 40,
                  "quantity": { "dist": "normal", "mean": 300, "sd": 50 } }
            ],
            "correlations": [ { "a": "ticket deflection", "b": "agent productivity", "rho": 0.3 } ]
        }))
        .unwrap()
    }

    #[test]
    fn the_example_model_is_valid() {
        model().validate().unwrap();
    }

    #[test]
    fn errors_name_the_json_path_of_the_field() {
        type Change = fn(&mut ValueModel);
        let cases: Vec<(Change, &str)> = vec![
            (|m| m.horizon_months = 0, "horizon_months"),
            (|m| m.horizon_months = 601, "horizon_months"),
            (|m| m.discount_rate = 1.0, "discount_rate"),
            (|m| m.discount_rate = -0.1, "discount_rate"),
            (|m| m.currency = "usd".into(), "currency"),
            (|m| m.costs.monthly = f64::NAN, "costs.monthly"),
            (
                |m| {
                    m.drivers[1].quantity = Distribution::Normal {
                        mean: 1.0,
                        sd: -1.0,
                    }
                },
                "drivers[1].quantity.sd",
            ),
            (
                |m| {
                    m.drivers[0].quantity = Distribution::Triangular {
                        min: 5.0,
                        mode: 1.0,
                        max: 9.0,
                    }
                },
                "drivers[0].quantity.min",
            ),
            (
                |m| {
                    m.drivers[0].quantity = Distribution::Pert {
                        min: 1.0,
                        mode: 9.0,
                        max: 5.0,
                    }
                },
                "drivers[0].quantity.mode",
            ),
            (
                |m| {
                    m.drivers[0].quantity = Distribution::Bernoulli {
                        p: 1.5,
                        impact: 1.0,
                    }
                },
                "drivers[0].quantity.p",
            ),
            (
                |m| m.drivers[0].quantity = Distribution::Lognormal { mean: 0.0, sd: 1.0 },
                "drivers[0].quantity.mean",
            ),
            (
                |m| m.drivers[1].name = "ticket deflection".into(),
                "drivers[1].name",
            ),
            (|m| m.correlations[0].rho = 1.2, "correlations[0].rho"),
            (
                |m| m.correlations[0].b = "nobody".into(),
                "correlations[0].b",
            ),
            (|m| m.drivers.clear(), "drivers"),
        ];
        for (change, path) in cases {
            let mut model = model();
            change(&mut model);
            let errors = model.validate().unwrap_err().errors;
            assert!(errors.iter().any(|e| e.path == path), "{path}: {errors:?}");
        }
    }

    #[test]
    fn from_json_names_the_path_of_a_malformed_field() {
        let mut value = serde_json::to_value(model()).unwrap();
        value["drivers"][1]["quantity"]["sd"] = "wide".into();
        let error = ValueModel::from_json(value.to_string().as_bytes()).unwrap_err();
        // serde buffers an internally tagged enum, so a type error inside a
        // distribution is placed at the distribution; the message says what.
        assert_eq!(error.errors[0].path, "drivers[1].quantity", "{error}");
        assert!(error.errors[0].message.contains("expected f64"), "{error}");
        let mut value = serde_json::to_value(model()).unwrap();
        value["horizon_months"] = 0.into();
        let error = ValueModel::from_json(value.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.errors[0].path, "horizon_months");
        assert!(ValueModel::from_json(b"{").is_err());
        let good = serde_json::to_vec(&model()).unwrap();
        assert_eq!(ValueModel::from_json(&good).unwrap(), model());
    }

    #[test]
    fn unknown_fields_and_distributions_are_refused() {
        let mut value = serde_json::to_value(model()).unwrap();
        value["drivers"][0]["quantity"]["dist"] = "weibull".into();
        assert!(serde_json::from_value::<ValueModel>(value).is_err());
        let mut value = serde_json::to_value(model()).unwrap();
        value["colour"] = "blue".into();
        assert!(serde_json::from_value::<ValueModel>(value).is_err());
    }

    #[test]
    fn a_non_psd_correlation_matrix_names_the_pair_at_fault() {
        let mut model = model();
        model.drivers.push(Driver {
            name: "churn".into(),
            category: DriverCategory::Risk,
            unit_value: 1.0,
            ramp_months: 0,
            quantity: Distribution::Fixed { value: 1.0 },
        });
        // a~b and a~c strongly positive, b~c strongly negative: impossible.
        model.correlations = vec![
            Correlation {
                a: "ticket deflection".into(),
                b: "agent productivity".into(),
                rho: 0.9,
            },
            Correlation {
                a: "ticket deflection".into(),
                b: "churn".into(),
                rho: 0.9,
            },
            Correlation {
                a: "agent productivity".into(),
                b: "churn".into(),
                rho: -0.9,
            },
        ];
        let errors = model.validate().unwrap_err().errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].path.starts_with("correlations["), "{errors:?}");
        assert!(errors[0].message.contains("positive semi-definite"));
    }

    #[test]
    fn cholesky_reproduces_the_matrix() {
        let matrix = model().correlation_matrix();
        let lower = matrix.cholesky().unwrap();
        let n = 2;
        for i in 0..n {
            for j in 0..n {
                let product: f64 = (0..n).map(|k| lower[i * n + k] * lower[j * n + k]).sum();
                assert!((product - matrix.values[i * n + j]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn analytics_match_hand_computed_cases() {
        // No discounting, no ramp: NPV = -one_off + H * (value - monthly).
        let mut flat = model();
        flat.discount_rate = 0.0;
        flat.horizon_months = 12;
        flat.correlations.clear();
        flat.costs = Costs {
            one_off: 1000.0,
            monthly: 100.0,
        };
        flat.drivers.truncate(1);
        flat.drivers[0].ramp_months = 0;
        flat.drivers[0].unit_value = 2.0;
        flat.drivers[0].quantity = Distribution::Fixed { value: 150.0 };
        let analytics = flat.analytics();
        assert!((analytics.npv - (-1000.0 + 12.0 * (300.0 - 100.0))).abs() < 1e-9);
        // 1000 recovered at 200 a month: month 5.
        assert_eq!(analytics.payback_month, Some(5));
        assert!((analytics.roi.unwrap() - 1400.0 / 2200.0).abs() < 1e-12);
        assert!((analytics.drivers[0].annual_value_at_full_ramp - 3600.0).abs() < 1e-9);

        // A ramp of 4 months gives 1/4, 2/4, 3/4 of the value first.
        flat.drivers[0].ramp_months = 4;
        let ramped = flat.analytics();
        assert!((analytics.npv - ramped.npv - 300.0 * (0.75 + 0.5 + 0.25)).abs() < 1e-9);

        // Discounting: one month at 12.68% a year is one percent a month.
        let mut one_month = flat.clone();
        one_month.horizon_months = 1;
        one_month.drivers[0].ramp_months = 0;
        one_month.discount_rate = 1.01f64.powi(12) - 1.0;
        let npv = one_month.analytics().npv;
        assert!((npv - (-1000.0 + 200.0 / 1.01)).abs() < 1e-9, "{npv}");
        assert_eq!(one_month.analytics().payback_month, None);
    }

    #[test]
    fn means_of_each_distribution() {
        let cases = [
            (Distribution::Fixed { value: 3.0 }, 3.0),
            (Distribution::Normal { mean: 5.0, sd: 2.0 }, 5.0),
            (Distribution::Lognormal { mean: 7.0, sd: 2.0 }, 7.0),
            (
                Distribution::Triangular {
                    min: 0.0,
                    mode: 3.0,
                    max: 6.0,
                },
                3.0,
            ),
            (
                Distribution::Pert {
                    min: 0.0,
                    mode: 1.0,
                    max: 8.0,
                },
                2.0,
            ),
            (Distribution::Uniform { min: 2.0, max: 4.0 }, 3.0),
            (
                Distribution::Bernoulli {
                    p: 0.25,
                    impact: 8.0,
                },
                2.0,
            ),
        ];
        for (distribution, mean) in cases {
            assert!(
                (distribution.mean() - mean).abs() < 1e-12,
                "{distribution:?}"
            );
        }
    }
}
