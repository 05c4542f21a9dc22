//! Pages of the agents' rows, read from their tables (a list wakes no
//! instance per row) and decoded as the agents' own types: the one way
//! the API and the dashboard list what agents hold.

use serde::de::DeserializeOwned;

use valueverse_store::{Listing, StoreError};

use valueverse_runtime::System;

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
    system: &System,
    listing: Listing<'_>,
    (limit, offset): (i64, i64),
) -> Result<Listed<T>, StoreError> {
    let page = system.store().list(listing, limit, offset).await?;
    Ok(Listed {
        total: page.total,
        items: decode(system, listing, &page.bodies),
    })
}

/// The newest `limit` rows of `listing`, uncounted.
pub(crate) async fn latest<T: DeserializeOwned>(
    system: &System,
    listing: Listing<'_>,
    limit: i64,
) -> Result<Vec<T>, StoreError> {
    let bodies = system.store().latest(listing, limit).await?;
    Ok(decode(system, listing, &bodies))
}

/// The rows as `T`. A row that does not decode (written by an older build,
/// or edited by hand) is skipped, logged and counted: one bad row must not
/// make the list fail for everyone.
fn decode<T: DeserializeOwned>(system: &System, listing: Listing<'_>, bodies: &[String]) -> Vec<T> {
    let table = listing.table();
    bodies
        .iter()
        .filter_map(|body| match serde_json::from_str(body) {
            Ok(item) => Some(item),
            Err(error) => {
                tracing::warn!(table, %error, "a stored row does not decode; skipped from the list");
                system
                    .metrics()
                    .http
                    .rows_skipped
                    .with_label_values(&[table])
                    .inc();
                None
            }
        })
        .collect()
}
