//! The notifier's shapes (`valueverse_agents::notifier`).

use serde::{Deserialize, Serialize};

use valueverse_agents::notifier as domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    Deleted,
}

convert_enum!(domain::SubscriptionStatus <=> SubscriptionStatus { Active, Deleted });
