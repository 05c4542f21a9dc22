//! Pages of the agents' rows, read from their tables (a list wakes no
//! instance per row) and decoded as the agents' own types: the one way
//! the API and the dashboard list what agents hold.

use serde::de::DeserializeOwned;

use valueverse_runtime::{Metrics, System, Tenant};
use valueverse_store::{Listing, Store};

/// The agents' rows as lists read them: the store under the agents and the
/// node's metrics (rows that do not decode are counted). Cheap to clone.
#[derive(Clone)]
pub struct Records {
    store: Store,
    metrics: Metrics,
}

impl Records {
    pub fn new(store: Store, system: &System) -> Records {
        Records {
            store,
            metrics: system.metrics().clone(),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

/// A page of an agent's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    /// Rows matching the filters, all pages together (rows that did not
    /// decode included).
    pub total: i64,
    pub items: Vec<T>,
}

/// `limit` rows of `listing` from `offset`, newest first, with the count
/// of all.
pub(crate) async fn page<T: DeserializeOwned>(
    records: &Records,
    tenant: &Tenant,
    listing: Listing<'_>,
    (limit, offset): (i64, i64),
) -> Result<Listed<T>, valueverse_runtime::StateError> {
    let page = records
        .store
        .list(tenant.as_str(), listing, limit, offset)
        .await?;
    Ok(Listed {
        total: page.total,
        items: decode(records, listing, &page.bodies),
    })
}

/// The newest `limit` rows of `listing`, uncounted.
pub(crate) async fn latest<T: DeserializeOwned>(
    records: &Records,
    tenant: &Tenant,
    listing: Listing<'_>,
    limit: i64,
) -> Result<Vec<T>, valueverse_runtime::StateError> {
    let bodies = records
        .store
        .latest(tenant.as_str(), listing, limit)
        .await?;
    Ok(decode(records, listing, &bodies))
}

/// The rows as `T`. A row that does not decode (written by an older build,
/// or edited by hand) is skipped, logged and counted: one bad row must not
/// make the list fail for everyone.
fn decode<T: DeserializeOwned>(
    records: &Records,
    listing: Listing<'_>,
    bodies: &[String],
) -> Vec<T> {
    let table = listing.table();
    bodies
        .iter()
        .filter_map(|body| match serde_json::from_str(body) {
            Ok(item) => Some(item),
            Err(error) => {
                tracing::warn!(table, %error, "a stored row does not decode; skipped from the list");
                records
                    .metrics
                    .http
                    .rows_skipped
                    .with_label_values(&[table])
                    .inc();
                None
            }
        })
        .collect()
}
