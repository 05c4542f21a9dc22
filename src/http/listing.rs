//! What every list route shares: `limit`/`offset` checks and decoding a
//! page of stored rows.

use actix_web::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::store::Page;

use super::error::ApiError;

pub(crate) fn default_limit() -> i64 {
    20
}

/// `limit` within 1..=100, `offset` >= 0.
pub(crate) fn check_paging(limit: i64, offset: i64) -> Result<(), ApiError> {
    let invalid = |field: &str, message: String| {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message).with_field(field))
    };
    if !(1..=100).contains(&limit) {
        return invalid(
            "limit",
            format!("`limit` must be within 1..=100, got {limit}"),
        );
    }
    if offset < 0 {
        return invalid("offset", format!("`offset` must be >= 0, got {offset}"));
    }
    Ok(())
}

/// The rows of a page as `T`. A row that does not decode (written by an
/// older build, or edited by hand) is skipped, logged and counted: one bad
/// row must not make the list fail for everyone.
pub(crate) fn decode<T: DeserializeOwned>(
    page: &Page,
    table: &str,
    metrics: &crate::Metrics,
) -> Vec<T> {
    page.bodies
        .iter()
        .filter_map(|body| match serde_json::from_str(body) {
            Ok(item) => Some(item),
            Err(error) => {
                tracing::warn!(table, %error, "a stored row does not decode; skipped from the list");
                metrics.http.rows_skipped.with_label_values(&[table]).inc();
                None
            }
        })
        .collect()
}

/// The JSON answer of a list route.
pub(crate) fn page_json<T: serde::Serialize>(
    page: &Page,
    limit: i64,
    offset: i64,
    items: Vec<T>,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(serde_json::json!({
        "total": page.total,
        "limit": limit,
        "offset": offset,
        "items": items,
    }))
}

/// A list route's answer: a page of `table`'s rows matching `filters`,
/// each decoded as `T` and shown as `view(row)`.
pub(crate) async fn list_page<T: DeserializeOwned, V: serde::Serialize>(
    system: &crate::actors::System,
    table: &'static str,
    filters: &[(&'static str, Option<&str>)],
    (limit, offset): (i64, i64),
    view: impl Fn(T) -> V,
) -> Result<actix_web::HttpResponse, ApiError> {
    check_paging(limit, offset)?;
    let page = system
        .store()
        .list_records(table, filters, limit, offset)
        .await?;
    let items: Vec<V> = decode::<T>(&page, table, system.metrics())
        .into_iter()
        .map(view)
        .collect();
    Ok(page_json(&page, limit, offset, items))
}
