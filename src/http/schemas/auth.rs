//! The roles of API keys (`valueverse_agents::auth`).

use serde::{Deserialize, Serialize};

use valueverse_agents::auth as domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
    /// The operator's: the supervision tree, the cluster, resets; no
    /// tenant's data.
    Platform,
}

convert_enum!(domain::Role <=> Role {
    Viewer,
    Editor,
    Admin,
    Platform
});
