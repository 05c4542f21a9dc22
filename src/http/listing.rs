//! What every list route shares: `limit`/`offset` checks and the page's
//! JSON (its byte cap, where to go on).

use actix_web::http::StatusCode;

use valueverse_agents::Listed;

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

/// A page of a list route, as the OpenAPI document shows it (the answer is
/// written by [`page_json`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct PageOf<T> {
    /// Rows matching the filters, all pages together.
    total: i64,
    limit: i64,
    offset: i64,
    /// Where the next page starts; `null` on the last page.
    next_offset: Option<i64>,
    /// The 1 MiB cap ended the page before `limit`.
    truncated: bool,
    items: Vec<T>,
}

/// Bytes of items one page answers at most: past it the page ends early
/// (`truncated`, with `next_offset` to go on), whatever `limit` asked.
pub(crate) const MAX_PAGE_BYTES: usize = 1 << 20;

/// The JSON answer of a list route: `total`, `limit`, `offset`, `items`,
/// `next_offset` (`null` on the last page) and `truncated` (the byte cap
/// ended the page before `limit`).
pub(crate) fn page_json<T: serde::Serialize>(
    total: i64,
    limit: i64,
    offset: i64,
    items: Vec<T>,
) -> Result<actix_web::HttpResponse, ApiError> {
    let mut json = String::from("[");
    let mut shown = 0usize;
    for item in &items {
        let text = serde_json::to_string(item).map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("a list item does not serialize: {error}"),
            )
        })?;
        // The first item always goes, so that paging moves on.
        if shown > 0 && json.len() + text.len() > MAX_PAGE_BYTES {
            break;
        }
        if shown > 0 {
            json.push(',');
        }
        json.push_str(&text);
        shown += 1;
    }
    json.push(']');
    let truncated = shown < items.len();
    let next = offset + shown as i64;
    let next_offset = (truncated || next < total).then_some(next);
    let head = serde_json::json!({
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
        "truncated": truncated,
    })
    .to_string();
    // `{...head fields..., "items": [...]}`
    let body = format!("{},\"items\":{json}}}", &head[..head.len() - 1]);
    Ok(actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// A list route's answer: the paging checked, then the page `fetch`
/// reads (through the agents' own list functions), each item shown as
/// `view(item)`.
pub(crate) async fn list_page<T, V: serde::Serialize, F>(
    (limit, offset): (i64, i64),
    fetch: impl FnOnce((i64, i64)) -> F,
    view: impl Fn(T) -> V,
) -> Result<actix_web::HttpResponse, ApiError>
where
    F: std::future::Future<Output = Result<Listed<T>, valueverse_runtime::StateError>>,
{
    check_paging(limit, offset)?;
    let listed = fetch((limit, offset)).await?;
    let items: Vec<V> = listed.items.into_iter().map(view).collect();
    page_json(listed.total, limit, offset, items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(response: actix_web::HttpResponse) -> serde_json::Value {
        let bytes =
            futures_util::FutureExt::now_or_never(actix_web::body::to_bytes(response.into_body()))
                .unwrap()
                .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_page_ends_at_its_byte_cap_and_says_where_to_go_on() {
        let big = "x".repeat(400 * 1024);
        let items: Vec<String> = (0..5).map(|_| big.clone()).collect();
        let body = body_of(page_json(10, 5, 0, items).unwrap());
        assert_eq!(
            body["items"].as_array().unwrap().len(),
            2,
            "2 x 400 KiB fit in 1 MiB"
        );
        assert_eq!(body["truncated"], true);
        assert_eq!(body["next_offset"], 2);
        let small = body_of(page_json(10, 5, 5, vec![1, 2, 3, 4, 5]).unwrap());
        assert_eq!(small["truncated"], false);
        assert_eq!(
            small["next_offset"],
            serde_json::Value::Null,
            "the last page"
        );
        assert_eq!(small["total"], 10);
        let huge = body_of(page_json(10, 1, 0, vec!["y".repeat(2 << 20)]).unwrap());
        assert_eq!(
            huge["items"].as_array().unwrap().len(),
            1,
            "one item always goes"
        );
    }
}
