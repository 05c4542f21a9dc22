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
