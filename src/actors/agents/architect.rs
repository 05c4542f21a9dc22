//! The architect agent: one instance per value model, keyed by its id. It
//! keeps every version of the model (an update adds one; old versions stay
//! readable), the deterministic analytics of each, the model's status, and
//! proposes hypotheses from the shipped catalogue (`data/hypotheses.json`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use valueverse_gpu::model::{Analytics, Driver, ValueModel};
use valueverse_store::Column;

use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

const TABLE: &str = "value_models";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    Active,
    Archived,
}

impl ModelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Active => "active",
            ModelStatus::Archived => "archived",
        }
    }
}

/// One version of a model with its analytics from the drivers' means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub version: i64,
    pub model: ValueModel,
    pub analytics: Analytics,
    pub created_at: DateTime<Utc>,
}

/// A value model and all its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: String,
    pub status: ModelStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archive_reason: Option<String>,
    /// Oldest first; `versions[n - 1].version == n`.
    pub versions: Vec<ModelVersion>,
}

impl ModelRecord {
    pub fn current(&self) -> &ModelVersion {
        self.versions.last().expect("a model has a first version")
    }

    pub fn version(&self, version: i64) -> Option<&ModelVersion> {
        usize::try_from(version - 1)
            .ok()
            .and_then(|index| self.versions.get(index))
    }
}

/// A candidate driver from the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    #[serde(flatten)]
    pub driver: Driver,
    /// Where the default range comes from.
    pub why: String,
    /// `unit_value * mean quantity * 12`: the ranking key.
    #[serde(default)]
    pub expected_annual_value: f64,
}

#[derive(Debug, Deserialize)]
struct Catalogue {
    industries: BTreeMap<String, Vec<Hypothesis>>,
}

/// The shipped catalogue, parsed once (a test checks it parses and
/// validates, so this cannot fail at run time).
fn catalogue() -> &'static BTreeMap<String, Vec<Hypothesis>> {
    static CATALOGUE: OnceLock<BTreeMap<String, Vec<Hypothesis>>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let catalogue: Catalogue =
            serde_json::from_str(include_str!("../../../data/hypotheses.json"))
                .expect("data/hypotheses.json is valid (checked by a test)");
        catalogue.industries
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArchitectMsg {
    /// Stores a new model (validated by the caller) as version 1.
    Create(Box<ValueModel>),
    /// The model at a version (the current one when `None`).
    Get {
        version: Option<i64>,
    },
    /// Adds a version, if the current one is still `base_version`.
    Update {
        model: Box<ValueModel>,
        base_version: i64,
        /// Versions the model may hold after this one (`limits.model_versions`).
        max_versions: usize,
    },
    Archive {
        reason: Option<String>,
    },
    /// Candidate drivers for the model's industry, best first.
    Hypotheses {
        limit: usize,
    },
}

impl AgentMessage for ArchitectMsg {
    fn name(&self) -> &'static str {
        match self {
            ArchitectMsg::Create(_) => "create",
            ArchitectMsg::Get { .. } => "get",
            ArchitectMsg::Update { .. } => "update",
            ArchitectMsg::Archive { .. } => "archive",
            ArchitectMsg::Hypotheses { .. } => "hypotheses",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArchitectReply {
    /// The record and the version asked for.
    Model {
        record: Box<ModelRecord>,
        version: i64,
    },
    Hypotheses {
        industry: String,
        hypotheses: Vec<Hypothesis>,
    },
}

pub struct Architect;

fn not_found(key: &str) -> HandlerError {
    HandlerError::rejected(
        RejectionCode::NotFound,
        format!("no value model `{key}`"),
        None,
    )
}

impl Agent for Architect {
    const KIND: &'static str = "architect";
    const MESSAGE_ID: u32 = 0x0101;
    type State = Option<ModelRecord>;
    type Msg = ArchitectMsg;
    type Reply = ArchitectReply;

    fn init(_key: &str) -> Option<ModelRecord> {
        None
    }

    fn handle(
        state: &mut Option<ModelRecord>,
        msg: ArchitectMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<ArchitectReply, HandlerError> {
        let key = ctx.key().to_owned();
        let now = Utc::now();
        let record = match (msg, state.as_mut()) {
            (ArchitectMsg::Create(model), None) => {
                let analytics = model.analytics();
                let record = ModelRecord {
                    id: key.clone(),
                    status: ModelStatus::Active,
                    created_at: now,
                    updated_at: now,
                    archive_reason: None,
                    versions: vec![ModelVersion {
                        version: 1,
                        model: *model,
                        analytics,
                        created_at: now,
                    }],
                };
                ctx.emit("model.created", event_data(&record));
                ctx.persist();
                state.insert(record)
            }
            (ArchitectMsg::Create(_), Some(_)) => {
                return Err(HandlerError::rejected(
                    RejectionCode::Conflict,
                    format!("value model `{key}` exists"),
                    None,
                ));
            }
            (_, None) => return Err(not_found(&key)),
            (ArchitectMsg::Get { version }, Some(record)) => {
                let version = version.unwrap_or(record.current().version);
                if record.version(version).is_none() {
                    return Err(HandlerError::rejected(
                        RejectionCode::NotFound,
                        format!(
                            "value model `{key}` has no version {version} (it has 1 to {})",
                            record.current().version
                        ),
                        Some("version"),
                    ));
                }
                return Ok(ArchitectReply::Model {
                    record: Box::new(record.clone()),
                    version,
                });
            }
            (
                ArchitectMsg::Update {
                    model,
                    base_version,
                    max_versions,
                },
                Some(record),
            ) => {
                if record.status == ModelStatus::Archived {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!("value model `{key}` is archived: it cannot change"),
                        None,
                    ));
                }
                let current = record.current().version;
                if base_version != current {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!(
                            "value model `{key}` is at version {current}, not {base_version}: \
                             read it again and reapply the change"
                        ),
                        None,
                    ));
                }
                if record.versions.len() >= max_versions {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!(
                            "value model `{key}` has {max_versions} versions, the most one \
                             keeps: archive it and create a new model"
                        ),
                        None,
                    ));
                }
                let analytics = model.analytics();
                record.versions.push(ModelVersion {
                    version: current + 1,
                    model: *model,
                    analytics,
                    created_at: now,
                });
                record.updated_at = now;
                ctx.emit("model.updated", event_data(record));
                ctx.persist();
                record
            }
            (ArchitectMsg::Archive { reason }, Some(record)) => {
                if record.status == ModelStatus::Archived {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!("value model `{key}` is already archived"),
                        None,
                    ));
                }
                record.status = ModelStatus::Archived;
                record.archive_reason = reason;
                record.updated_at = now;
                ctx.emit("model.archived", event_data(record));
                ctx.persist();
                record
            }
            (ArchitectMsg::Hypotheses { limit }, Some(record)) => {
                let model = &record.current().model;
                return hypotheses(model, limit);
            }
        };
        Ok(ArchitectReply::Model {
            version: record.current().version,
            record: Box::new(record.clone()),
        })
    }

    valueverse_runtime::table_persistence!(TABLE, |record| {
        let model = &record.current().model;
        vec![
            ("status", Column::Text(Some(record.status.as_str().into()))),
            ("name", Column::Text(Some(model.name.clone()))),
            ("customer", Column::Text(Some(model.customer.clone()))),
            ("industry", Column::Text(Some(model.industry.clone()))),
            (
                "current_version",
                Column::Int(Some(record.current().version)),
            ),
            (
                "created_at_ms",
                Column::Int(Some(record.created_at.timestamp_millis())),
            ),
        ]
    });
}

fn event_data(record: &ModelRecord) -> serde_json::Value {
    let current = record.current();
    serde_json::json!({
        "model_id": record.id,
        "version": current.version,
        "name": current.model.name,
        "customer": current.model.customer,
        "status": record.status,
        "npv": current.analytics.npv,
    })
}

/// The catalogue's drivers for the model's industry that it does not have
/// yet, by expected annual value.
fn hypotheses(model: &ValueModel, limit: usize) -> Result<ArchitectReply, HandlerError> {
    let industry = model.industry.to_lowercase();
    let Some(candidates) = catalogue().get(&industry) else {
        let known: Vec<&str> = catalogue().keys().map(String::as_str).collect();
        return Err(HandlerError::rejected(
            RejectionCode::UnknownIndustry,
            format!(
                "no hypotheses for industry `{}`; the catalogue covers {}",
                model.industry,
                known.join(", ")
            ),
            Some("industry"),
        ));
    };
    let existing: Vec<String> = model
        .drivers
        .iter()
        .map(|driver| driver.name.to_lowercase())
        .collect();
    let mut hypotheses: Vec<Hypothesis> = candidates
        .iter()
        .filter(|candidate| !existing.contains(&candidate.driver.name.to_lowercase()))
        .map(|candidate| Hypothesis {
            expected_annual_value: candidate.driver.unit_value
                * candidate.driver.quantity.mean()
                * 12.0,
            ..candidate.clone()
        })
        .collect();
    hypotheses.sort_by(|a, b| b.expected_annual_value.total_cmp(&a.expected_annual_value));
    hypotheses.truncate(limit);
    Ok(ArchitectReply::Hypotheses {
        industry,
        hypotheses,
    })
}

/// Most of the tenant's models read to derive hypotheses (the newest).
const PEERS_READ: i64 = 1000;

/// Candidate drivers for a model whose industry the catalogue lacks,
/// derived from the drivers of the tenant's other models in similar
/// industries (`crate::hypotheses`): each driver's median unit value, mean
/// quantity (as a fixed quantity: give it your own range) and ramp, best
/// first, with why. Empty when no model is in a similar industry.
pub async fn derived_hypotheses(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    record: &ModelRecord,
    limit: usize,
) -> Result<Vec<Hypothesis>, valueverse_runtime::StateError> {
    use crate::hypotheses::{Peer, PeerDriver, derive};
    let mut models = Vec::new();
    let mut offset = 0;
    while offset < PEERS_READ {
        let page = list_models(records, tenant, None, None, None, (100, offset)).await?;
        let read = page.items.len();
        models.extend(page.items.into_iter().filter(|peer| peer.id != record.id));
        if read < 100 {
            break;
        }
        offset += 100;
    }
    let drivers: Vec<(String, String, Vec<PeerDriver>)> = models
        .iter()
        .map(|peer| {
            let current = peer.current();
            let drivers = current
                .model
                .drivers
                .iter()
                .zip(&current.analytics.drivers)
                .map(|(driver, analytics)| PeerDriver {
                    name: driver.name.clone(),
                    category: serde_json::to_value(driver.category)
                        .ok()
                        .and_then(|value| value.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    unit_value: driver.unit_value,
                    mean_quantity: analytics.mean_quantity,
                    ramp_months: driver.ramp_months,
                })
                .collect();
            (peer.id.clone(), current.model.industry.clone(), drivers)
        })
        .collect();
    let peers: Vec<Peer> = drivers
        .iter()
        .map(|(id, industry, drivers)| Peer {
            model_id: id,
            industry,
            drivers,
        })
        .collect();
    let model = &record.current().model;
    let own: Vec<&str> = model.drivers.iter().map(|d| d.name.as_str()).collect();
    Ok(derive(&model.industry, &peers, &own, limit)
        .into_iter()
        .filter_map(|derived| {
            let category =
                serde_json::from_value(serde_json::Value::String(derived.category)).ok()?;
            Some(Hypothesis {
                driver: Driver {
                    name: derived.name,
                    category,
                    unit_value: derived.unit_value,
                    ramp_months: derived.ramp_months,
                    quantity: valueverse_gpu::model::Distribution::Fixed {
                        value: derived.mean_quantity,
                    },
                },
                why: format!(
                    "{}; the median of those models (a fixed quantity: give it your own range)",
                    derived.rationale
                ),
                expected_annual_value: derived.expected_annual_value,
            })
        })
        .collect())
}

/// A page of the stored models, newest first, filtered by customer,
/// industry and status.
pub async fn list_models(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    customer: Option<&str>,
    industry: Option<&str>,
    status: Option<ModelStatus>,
    page: (i64, i64),
) -> Result<super::Listed<ModelRecord>, valueverse_runtime::StateError> {
    let listing = valueverse_store::Listing::ValueModels {
        customer,
        industry,
        status: status.map(ModelStatus::as_str),
    };
    super::listing::page(records, tenant, listing, page).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_covers_five_industries_with_valid_explained_drivers() {
        let catalogue = catalogue();
        assert!(catalogue.len() >= 5, "{} industries", catalogue.len());
        for (industry, drivers) in catalogue {
            assert!(drivers.len() >= 5, "{industry}: {} drivers", drivers.len());
            // Each driver must be valid in a model of its industry.
            let model = ValueModel {
                name: "catalogue check".into(),
                customer: "c".into(),
                industry: industry.clone(),
                currency: "USD".into(),
                horizon_months: 36,
                discount_rate: 0.1,
                costs: valueverse_gpu::model::Costs {
                    one_off: 0.0,
                    monthly: 0.0,
                },
                drivers: drivers.iter().map(|h| h.driver.clone()).collect(),
                correlations: Vec::new(),
            };
            model
                .validate()
                .unwrap_or_else(|error| panic!("{industry}: {error}"));
            for hypothesis in drivers {
                assert!(
                    hypothesis.why.len() > 40,
                    "{industry}/{}: explain the range",
                    hypothesis.driver.name
                );
            }
        }
    }
}
