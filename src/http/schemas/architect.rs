//! The architect's shapes (`valueverse_agents::architect`).

use serde::{Deserialize, Serialize};

use valueverse_agents::architect as domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    Active,
    Archived,
}

convert_enum!(domain::ModelStatus <=> ModelStatus { Active, Archived });

/// A candidate driver from the shipped catalogue of the model's industry.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Hypothesis {
    #[serde(flatten)]
    pub driver: super::Driver,
    /// Where the default range comes from.
    pub why: String,
    /// `unit_value * mean quantity * 12`: the ranking key.
    pub expected_annual_value: f64,
}

/// The hypotheses for a model, best first.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Hypotheses {
    pub industry: String,
    /// `catalogue` (the shipped templates of the industry) or `derived`
    /// (the industry has none: from the drivers of your models in similar
    /// industries, each saying which).
    pub source: String,
    pub hypotheses: Vec<Hypothesis>,
}

impl From<domain::Hypothesis> for Hypothesis {
    fn from(hypothesis: domain::Hypothesis) -> Hypothesis {
        let domain::Hypothesis {
            driver,
            why,
            expected_annual_value,
        } = hypothesis;
        Hypothesis {
            driver: driver.into(),
            why,
            expected_annual_value,
        }
    }
}
