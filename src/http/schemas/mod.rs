//! The API's own shapes of the value model, of a simulation's result, of
//! the cluster's view (here) and of the agents' types (one submodule per
//! agent): the engines' crate (`valueverse-gpu`), the cluster's
//! (`valueverse-cluster`) and the agents' (`valueverse-agents`) know
//! nothing of OpenAPI, so the document's schemas are these, converted at
//! the edge. Their JSON is the domain types' JSON field for field; unit
//! tests hold the two together.

use serde::{Deserialize, Serialize};

/// `From` between a domain struct and its API twin, both ways (`<=>`) or
/// one way (`=>`): each field listed once, the value destructured
/// exhaustively, so that a field added on either side is a compile error
/// here rather than a silently dropped value. A field converts as is (the
/// same type), or `into` (`From`), `each` (a `Vec` of convertible values)
/// or `opt` (an `Option` of one).
macro_rules! convert_struct {
    (@how $field:ident) => { $field };
    (@how $field:ident into) => { $field.into() };
    (@how $field:ident each) => { $field.into_iter().map(Into::into).collect() };
    (@how $field:ident opt) => { $field.map(Into::into) };
    ($($a:ident)::+ <=> $($b:ident)::+ { $($field:ident $(: $how:ident)?),* $(,)? }) => {
        convert_struct!($($a)::+ => $($b)::+ { $($field $(: $how)?),* });
        convert_struct!($($b)::+ => $($a)::+ { $($field $(: $how)?),* });
    };
    ($($from:ident)::+ => $($to:ident)::+ { $($field:ident $(: $how:ident)?),* $(,)? }) => {
        impl From<$($from)::+> for $($to)::+ {
            fn from(value: $($from)::+) -> $($to)::+ {
                use $($from)::+ as From_;
                use $($to)::+ as To;
                let From_ { $($field),* } = value;
                To { $($field: convert_struct!(@how $field $($how)?)),* }
            }
        }
    };
}

/// `From` both ways between a domain enum of unit variants and its API
/// twin: an exhaustive match each way, so that a variant added on either
/// side is a compile error.
macro_rules! convert_enum {
    (@one $($from:ident)::+ => $($to:ident)::+ { $($variant:ident),* }) => {
        impl From<$($from)::+> for $($to)::+ {
            fn from(value: $($from)::+) -> $($to)::+ {
                use $($from)::+ as From_;
                use $($to)::+ as To;
                match value {
                    $(From_::$variant => To::$variant,)*
                }
            }
        }
    };
    ($($a:ident)::+ <=> $($b:ident)::+ { $($variant:ident),* $(,)? }) => {
        convert_enum!(@one $($a)::+ => $($b)::+ { $($variant),* });
        convert_enum!(@one $($b)::+ => $($a)::+ { $($variant),* });
    };
}

pub(crate) mod amplifier;
pub(crate) mod architect;
pub(crate) mod auth;
pub(crate) mod committer;
pub(crate) mod executor;
pub(crate) mod notifier;
pub(crate) mod sagas;
pub(crate) mod simulation;
pub(crate) mod simulations;
pub(crate) mod supervision;

use valueverse_cluster::node as cluster_types;
use valueverse_gpu::engine as engine_types;
use valueverse_gpu::model as domain;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueModel {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*\\S[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*\\S[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub customer: String,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*\\S[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub industry: String,
    /// ISO 4217 code, e.g. `USD`.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(minimum = 1, maximum = 600)]
    pub horizon_months: u32,
    /// Annual rate in [0, 1).
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub discount_rate: f64,
    pub costs: Costs,
    #[schema(min_items = 1, max_items = 256)]
    pub drivers: Vec<Driver>,
    #[serde(default)]
    pub correlations: Vec<Correlation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    #[schema(minimum = 0.0, maximum = 9007199254740991.0)]
    pub one_off: f64,
    #[schema(minimum = 0.0, maximum = 9007199254740991.0)]
    pub monthly: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Driver {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*\\S[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    pub category: DriverCategory,
    /// Value of one unit of quantity, in the model's currency.
    pub unit_value: f64,
    /// Months to reach full effect (0: from the first month).
    #[serde(default)]
    #[schema(maximum = 600)]
    pub ramp_months: u32,
    /// Units per month.
    pub quantity: Distribution,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverCategory {
    Revenue,
    Cost,
    Productivity,
    Risk,
}

/// The distribution of a driver's monthly quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    Fixed {
        value: f64,
    },
    Normal {
        mean: f64,
        #[schema(minimum = 0.0)]
        sd: f64,
    },
    /// Mean and standard deviation of the quantity itself, not of its log.
    Lognormal {
        #[schema(exclusive_minimum = 0.0)]
        mean: f64,
        #[schema(minimum = 0.0)]
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
        #[schema(minimum = 0.0, maximum = 1.0)]
        p: f64,
        impact: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    pub a: String,
    pub b: String,
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub rho: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Analytics {
    pub npv: f64,
    pub roi: Option<f64>,
    pub payback_month: Option<u32>,
    pub drivers: Vec<DriverAnalytics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriverAnalytics {
    pub name: String,
    pub mean_quantity: f64,
    pub annual_value_at_full_ramp: f64,
    pub present_value: f64,
}

/// Where to run: `auto` takes the GPU when one is usable, else the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    AllPaths,
    PrecisionReached,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p5: f64,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub percentiles: Percentiles,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Histogram {
    /// `bins + 1` edges.
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// One bar of the tornado: NPV with this driver at its P10 and P90, every
/// other driver at its mean; and the driver's rank correlation with NPV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sensitivity {
    pub driver: String,
    pub npv_at_p10: f64,
    pub npv_at_p90: f64,
    pub swing: f64,
    pub rank_correlation: f64,
}

/// Payback months over the first paths of the run (payback needs a month
/// loop per path, so it is estimated from a sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaybackSummary {
    pub sampled_paths: u64,
    /// Share of sampled paths that pay back within the horizon.
    pub prob_within_horizon: f64,
    /// Payback month percentiles; `None` where that share never pays back.
    pub p10: Option<u32>,
    pub p50: Option<u32>,
    pub p90: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SimulationResult {
    pub npv: Summary,
    /// NPV percentiles P1 to P99 (`npv_quantiles[i]` is P(i + 1)).
    pub npv_quantiles: Vec<f64>,
    pub prob_loss: f64,
    /// NPV over the cost basis; absent when the model has no costs.
    pub roi: Option<Summary>,
    pub std_error: f64,
    pub histogram: Histogram,
    pub sensitivity: Vec<Sensitivity>,
    pub payback: PaybackSummary,
    pub paths: u64,
    pub seed: u64,
    /// `cpu` or `cuda`.
    pub engine: String,
    pub stop_reason: StopReason,
    pub wall_seconds: f64,
    /// Paths times drivers per second of wall time, pilot and statistics
    /// included.
    pub samples_per_second: f64,
}

/// One member as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    pub node: String,
    /// `alive` (gossip hears it, lease valid), `suspect` (gossip does not
    /// hear it, lease still valid: it keeps its keys), `down` (lease expired).
    pub state: String,
    pub transport_addr: String,
    pub http_addr: String,
    pub kinds: Vec<String>,
    pub gpus: u32,
    pub load: f64,
    /// How long gossip has not heard the member, over its usual heartbeat
    /// interval (phi; about 8 marks it suspect); `None` for this node.
    pub phi: Option<f64>,
    /// Fencing token of the node's current lease.
    pub lease_token: i64,
    pub lease_expires_in_ms: i64,
    /// Instances this node would place on the member, out of a sample of
    /// keys per kind: how evenly the view spreads ownership.
    pub owns_share: f64,
    pub is_self: bool,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub node: String,
    /// Whether this node joined a cluster (`valueverse node`) or is a
    /// cluster of one (`serve`).
    pub clustered: bool,
    pub members: Vec<MemberView>,
    /// Instances active on this node, and how many of them this node owns
    /// in the current view (the rest are being handed off).
    pub local_instances: usize,
    pub rebalances: u64,
}

impl ClusterView {
    /// The view as a tenant's caller sees it: no node-to-node addresses,
    /// no count of every tenant's instances.
    pub fn for_tenant(mut self) -> ClusterView {
        for member in &mut self.members {
            member.transport_addr.clear();
        }
        self.local_instances = 0;
        self
    }
}

// Conversions: exhaustive destructuring, so that a field added on either
// side is a compile error here rather than a silently dropped value.

impl From<domain::ValueModel> for ValueModel {
    fn from(model: domain::ValueModel) -> ValueModel {
        let domain::ValueModel {
            name,
            customer,
            industry,
            currency,
            horizon_months,
            discount_rate,
            costs,
            drivers,
            correlations,
        } = model;
        ValueModel {
            name,
            customer,
            industry,
            currency,
            horizon_months,
            discount_rate,
            costs: Costs {
                one_off: costs.one_off,
                monthly: costs.monthly,
            },
            drivers: drivers.into_iter().map(Driver::from).collect(),
            correlations: correlations.into_iter().map(Correlation::from).collect(),
        }
    }
}

impl From<ValueModel> for domain::ValueModel {
    fn from(model: ValueModel) -> domain::ValueModel {
        let ValueModel {
            name,
            customer,
            industry,
            currency,
            horizon_months,
            discount_rate,
            costs,
            drivers,
            correlations,
        } = model;
        domain::ValueModel {
            name,
            customer,
            industry,
            currency,
            horizon_months,
            discount_rate,
            costs: domain::Costs {
                one_off: costs.one_off,
                monthly: costs.monthly,
            },
            drivers: drivers.into_iter().map(domain::Driver::from).collect(),
            correlations: correlations
                .into_iter()
                .map(domain::Correlation::from)
                .collect(),
        }
    }
}

impl From<domain::Driver> for Driver {
    fn from(driver: domain::Driver) -> Driver {
        let domain::Driver {
            name,
            category,
            unit_value,
            ramp_months,
            quantity,
        } = driver;
        Driver {
            name,
            category: match category {
                domain::DriverCategory::Revenue => DriverCategory::Revenue,
                domain::DriverCategory::Cost => DriverCategory::Cost,
                domain::DriverCategory::Productivity => DriverCategory::Productivity,
                domain::DriverCategory::Risk => DriverCategory::Risk,
            },
            unit_value,
            ramp_months,
            quantity: quantity.into(),
        }
    }
}

impl From<Driver> for domain::Driver {
    fn from(driver: Driver) -> domain::Driver {
        let Driver {
            name,
            category,
            unit_value,
            ramp_months,
            quantity,
        } = driver;
        domain::Driver {
            name,
            category: match category {
                DriverCategory::Revenue => domain::DriverCategory::Revenue,
                DriverCategory::Cost => domain::DriverCategory::Cost,
                DriverCategory::Productivity => domain::DriverCategory::Productivity,
                DriverCategory::Risk => domain::DriverCategory::Risk,
            },
            unit_value,
            ramp_months,
            quantity: quantity.into(),
        }
    }
}

/// Both ways between the API's distribution and the domain's: the same
/// variants with the same fields.
macro_rules! convert_distribution {
    ($from:path => $to:path) => {
        impl From<$from> for $to {
            fn from(distribution: $from) -> $to {
                use $from as From_;
                use $to as To;
                match distribution {
                    From_::Fixed { value } => To::Fixed { value },
                    From_::Normal { mean, sd } => To::Normal { mean, sd },
                    From_::Lognormal { mean, sd } => To::Lognormal { mean, sd },
                    From_::Triangular { min, mode, max } => To::Triangular { min, mode, max },
                    From_::Pert { min, mode, max } => To::Pert { min, mode, max },
                    From_::Uniform { min, max } => To::Uniform { min, max },
                    From_::Bernoulli { p, impact } => To::Bernoulli { p, impact },
                }
            }
        }
    };
}

convert_distribution!(domain::Distribution => Distribution);
convert_distribution!(Distribution => domain::Distribution);

convert_struct!(domain::Correlation <=> Correlation { a, b, rho });

convert_struct!(domain::Analytics => Analytics {
    npv,
    roi,
    payback_month,
    drivers: each,
});

convert_struct!(domain::DriverAnalytics => DriverAnalytics {
    name,
    mean_quantity,
    annual_value_at_full_ramp,
    present_value,
});

convert_enum!(engine_types::Device <=> Device { Auto, Cpu, Gpu });

impl From<engine_types::Summary> for Summary {
    fn from(summary: engine_types::Summary) -> Summary {
        let engine_types::Summary {
            mean,
            std,
            min,
            max,
            percentiles,
        } = summary;
        let engine_types::Percentiles {
            p5,
            p10,
            p25,
            p50,
            p75,
            p90,
            p95,
        } = percentiles;
        Summary {
            mean,
            std,
            min,
            max,
            percentiles: Percentiles {
                p5,
                p10,
                p25,
                p50,
                p75,
                p90,
                p95,
            },
        }
    }
}

impl From<engine_types::SimulationResult> for SimulationResult {
    fn from(result: engine_types::SimulationResult) -> SimulationResult {
        let engine_types::SimulationResult {
            npv,
            npv_quantiles,
            prob_loss,
            roi,
            std_error,
            histogram,
            sensitivity,
            payback,
            paths,
            seed,
            engine,
            stop_reason,
            wall_seconds,
            samples_per_second,
        } = result;
        let engine_types::PaybackSummary {
            sampled_paths,
            prob_within_horizon,
            p10,
            p50,
            p90,
        } = payback;
        SimulationResult {
            npv: npv.into(),
            npv_quantiles,
            prob_loss,
            roi: roi.map(Summary::from),
            std_error,
            histogram: Histogram {
                edges: histogram.edges,
                counts: histogram.counts,
            },
            sensitivity: sensitivity
                .into_iter()
                .map(|bar| {
                    let engine_types::Sensitivity {
                        driver,
                        npv_at_p10,
                        npv_at_p90,
                        swing,
                        rank_correlation,
                    } = bar;
                    Sensitivity {
                        driver,
                        npv_at_p10,
                        npv_at_p90,
                        swing,
                        rank_correlation,
                    }
                })
                .collect(),
            payback: PaybackSummary {
                sampled_paths,
                prob_within_horizon,
                p10,
                p50,
                p90,
            },
            paths,
            seed,
            engine,
            stop_reason: match stop_reason {
                engine_types::StopReason::AllPaths => StopReason::AllPaths,
                engine_types::StopReason::PrecisionReached => StopReason::PrecisionReached,
            },
            wall_seconds,
            samples_per_second,
        }
    }
}

convert_struct!(cluster_types::ClusterView => ClusterView {
    node,
    clustered,
    members: each,
    local_instances,
    rebalances,
});

convert_struct!(cluster_types::MemberView => MemberView {
    node,
    state,
    transport_addr,
    http_addr,
    kinds,
    gpus,
    load,
    phi,
    lease_token,
    lease_expires_in_ms,
    owns_share,
    is_self,
});

#[cfg(test)]
mod agent_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use valueverse_gpu::{Control, RunSettings};

    pub(super) fn model_json() -> serde_json::Value {
        let distributions = [
            serde_json::json!({ "dist": "fixed", "value": 3.0 }),
            serde_json::json!({ "dist": "normal", "mean": 10.0, "sd": 2.0 }),
            serde_json::json!({ "dist": "lognormal", "mean": 10.0, "sd": 2.0 }),
            serde_json::json!({ "dist": "triangular", "min": 1.0, "mode": 2.0, "max": 4.0 }),
            serde_json::json!({ "dist": "pert", "min": 1.0, "mode": 2.0, "max": 4.0 }),
            serde_json::json!({ "dist": "uniform", "min": 1.0, "max": 4.0 }),
            serde_json::json!({ "dist": "bernoulli", "p": 0.3, "impact": 40.0 }),
        ];
        let categories = ["revenue", "cost", "productivity", "risk"];
        let drivers: Vec<_> = distributions
            .iter()
            .enumerate()
            .map(|(index, quantity)| {
                serde_json::json!({
                    "name": format!("d{index}"),
                    "category": categories[index % categories.len()],
                    "unit_value": 100.0 + index as f64,
                    "ramp_months": index as u32,
                    "quantity": quantity,
                })
            })
            .collect();
        serde_json::json!({
            "name": "n", "customer": "c", "industry": "saas", "currency": "USD",
            "horizon_months": 24, "discount_rate": 0.08,
            "costs": { "one_off": 1000.0, "monthly": 10.0 },
            "drivers": drivers,
            "correlations": [{ "a": "d1", "b": "d2", "rho": 0.25 }],
        })
    }

    /// The API's shapes are the domain's JSON, both ways, for every
    /// distribution and category and for a real run's result.
    #[test]
    fn the_api_shapes_are_the_domain_json() {
        let json = model_json();
        let model: domain::ValueModel = serde_json::from_value(json.clone()).unwrap();
        let shown = ValueModel::from(model.clone());
        assert_eq!(serde_json::to_value(&shown).unwrap(), json);
        let parsed: ValueModel = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(domain::ValueModel::from(parsed), model);

        let analytics = model.analytics();
        assert_eq!(
            serde_json::to_value(Analytics::from(analytics.clone())).unwrap(),
            serde_json::to_value(analytics).unwrap()
        );

        let settings = RunSettings {
            paths: 2_000,
            seed: 7,
            bins: 20,
            stop_at_rel_se: None,
        };
        let result = valueverse_gpu::run(&model, &settings, engine_types::Device::Cpu, |_| {
            Control::Continue
        })
        .unwrap();
        assert_eq!(
            serde_json::to_value(SimulationResult::from(result.clone())).unwrap(),
            serde_json::to_value(result).unwrap()
        );

        for device in [Device::Auto, Device::Cpu, Device::Gpu] {
            let domain_device = engine_types::Device::from(device);
            assert_eq!(
                serde_json::to_value(device).unwrap(),
                serde_json::to_value(domain_device).unwrap()
            );
            assert_eq!(Device::from(domain_device), device);
        }
    }
}
