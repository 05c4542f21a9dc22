//! `POST /api/v1/plans/{id}/deliveries:import`: realized value from the
//! files customers keep (CSV, Excel `.xlsx`), with a column mapping and a
//! report naming the row and column of each refusal; and `/ws/plans/{id}`,
//! the plan's stream (the import's progress, the plan's events).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use valueverse_agents::config::ValueConfig;
use valueverse_agents::executor::{Delivery, Executor, ExecutorMsg, Plan, PlanStatus};
use valueverse_agents::import::{self, FileError, Format, Mapping, RowError, Rules};
use valueverse_runtime::{DomainEvent, System, Tenant};

use super::error::{ApiError, ErrorDoc, parse_query};
use super::scope::Scope;
use super::ws::{Outgoing, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// [default: from `Content-Type`].
    format: Option<ImportFormat>,
    /// Store the good rows of a file with errors [default: false: nothing].
    #[serde(default)]
    partial: bool,
    id_column: Option<String>,
    driver_column: Option<String>,
    value_column: Option<String>,
    date_column: Option<String>,
    note_column: Option<String>,
}

/// The file's format, when `Content-Type` does not say.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum ImportFormat {
    Csv,
    Xlsx,
}

/// A customer's file, as bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct ImportFile(Vec<u8>);

/// What an import did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ImportReport {
    plan_id: String,
    /// Data rows in the file.
    rows: usize,
    /// New deliveries recorded.
    recorded: usize,
    /// Rows whose delivery the plan had (same id, same values).
    already_recorded: usize,
    /// Rows refused (with `partial=true`; otherwise nothing is stored).
    refused: usize,
    /// Each refusal: the row as the file numbers it (header = 1), the
    /// column by its header, why.
    errors: Vec<ImportError>,
    realized_value: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ImportError {
    row: usize,
    column: String,
    message: String,
}

impl From<RowError> for ImportError {
    fn from(error: RowError) -> ImportError {
        ImportError {
            row: error.row,
            column: error.column,
            message: error.message,
        }
    }
}

/// The file's format: as `?format=` says, else as `Content-Type` says,
/// else as its first bytes say (a zip is an .xlsx, anything else is read as
/// CSV and refused by row if it is not).
fn format_of(request: &HttpRequest, named: Option<ImportFormat>, body: &[u8]) -> Format {
    match named {
        Some(ImportFormat::Csv) => return Format::Csv,
        Some(ImportFormat::Xlsx) => return Format::Xlsx,
        None => {}
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/csv") {
        Format::Csv
    } else if content_type
        .starts_with("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
        || body.starts_with(b"PK\x03\x04")
    {
        Format::Xlsx
    } else {
        Format::Csv
    }
}

/// The import's progress, on the plan's stream (`/ws/plans/{id}`), on
/// every node.
fn share_progress(system: &System, tenant: &Tenant, plan_id: &str, data: serde_json::Value) {
    system.share(DomainEvent {
        id: uuid::Uuid::now_v7().to_string(),
        event_type: "import.progress".into(),
        occurred_at: Utc::now(),
        source: format!("executor/{plan_id}"),
        tenant: tenant.as_str().to_owned(),
        correlation_id: None,
        data,
    });
}

/// Reads the file whole (nothing is stored from a file with errors unless
/// `partial=true`), then records its rows in batches, idempotent on the
/// row id: the same file sent again records nothing twice.
#[utoipa::path(
    post,
    path = "/api/v1/plans/{id}/deliveries:import",
    tag = "executor",
    request_body(content = ImportFile, description = "the file, a header row naming the columns: CSV or Excel .xlsx, said by `?format=` (with any content type) or by `Content-Type: text/csv` or `application/vnd.openxmlformats-officedocument.spreadsheetml.sheet`", content_type = "application/octet-stream"),
    params(
        ("id" = String, Path, description = "plan id"),
        ("format" = inline(Option<ImportFormat>), Query, description = "[default: from `Content-Type`]"),
        ("partial" = Option<bool>, Query, description = "store the good rows of a file with errors [default: false]"),
        ("id_column" = Option<String>, Query, description = "header of the row id [default: id]"),
        ("driver_column" = Option<String>, Query, description = "[default: driver]"),
        ("value_column" = Option<String>, Query, description = "[default: value]"),
        ("date_column" = Option<String>, Query, description = "[default: date]"),
        ("note_column" = Option<String>, Query, description = "[default: note, optional]"),
    ),
    responses(
        (status = 200, description = "what was recorded, and each row refused", body = ImportReport),
        (status = 400, description = "bad query", body = ErrorDoc),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "the plan is not active", body = ErrorDoc),
        (status = 413, description = "the file is too large", body = ErrorDoc),
        (status = 422, description = "the file, or rows of it, refused: `report` names each row and column", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn import(
    scope: Scope,
    system: web::Data<System>,
    value: web::Data<ValueConfig>,
    id: web::Path<String>,
    request: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query: ImportQuery = parse_query(request.query_string())?;
    // The limits middleware read it already, within the import's limit,
    // into one buffer: taken as it is, not copied.
    let mut chunks = Vec::new();
    let mut size = 0;
    while let Some(chunk) = futures_util::StreamExt::next(&mut payload).await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", error.to_string())
        })?;
        size += chunk.len();
        if size > super::limits::IMPORT_BODY_LIMIT {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "an import file is at most {} bytes",
                    super::limits::IMPORT_BODY_LIMIT
                ),
            ));
        }
        chunks.push(chunk);
    }
    let body = match chunks.len() {
        1 => chunks.pop().expect("one chunk"),
        _ => web::Bytes::from(chunks.concat()),
    };
    let format = format_of(&request, query.format, &body);
    let defaults = Mapping::default();
    let mapping = Mapping {
        id: query.id_column.unwrap_or(defaults.id),
        driver: query.driver_column.unwrap_or(defaults.driver),
        value: query.value_column.unwrap_or(defaults.value),
        date: query.date_column.unwrap_or(defaults.date),
        note: query.note_column.or(defaults.note),
    };
    let timeout = system.runtime_config().ask_timeout;
    let plan = scope
        .agent::<Executor>(&system, &id)
        .ask(ExecutorMsg::Get, timeout)
        .await?;
    if plan.status != PlanStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("plan `{id}` is {}", plan.status.as_str()),
        ));
    }
    let max_rows = value.import_max_rows;
    let max_value = value.max_delivery_value;
    let last_date = plan
        .last_day()
        .unwrap_or(NaiveDate::from_ymd_opt(2199, 12, 31).expect("a date"));
    let (drivers, first_date) = (plan.drivers.clone(), plan.start_date);
    let tenant = scope.tenant().clone();
    let (progress_system, progress_tenant, plan_id) =
        (system.clone(), tenant.clone(), plan.id.clone());
    // Parsing is CPU work: off the async workers.
    let parsed = web::block(move || {
        let rules = Rules {
            drivers: &drivers,
            max_abs_value: max_value,
            first_date,
            last_date,
            max_rows,
        };
        let mut progress = |read: usize, total: usize| {
            share_progress(
                &progress_system,
                &progress_tenant,
                &plan_id,
                serde_json::json!({ "stage": "reading", "rows_read": read, "rows_total": total }),
            );
        };
        import::read(&body, format, &mapping, &rules, &mut progress).map(|parsed| (parsed, mapping))
    })
    .await
    .map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    })?;
    let (parsed, mapping) = parsed.map_err(file_error)?;
    let mut errors = parsed.errors;
    let mut fresh = Vec::with_capacity(parsed.rows.len());
    let mut already = 0;
    for row in parsed.rows {
        let delivery = Delivery {
            id: row.id,
            driver: row.driver,
            value: row.value,
            date: row.date,
            note: row.note,
        };
        match plan.deliveries.iter().find(|d| d.id == delivery.id) {
            Some(existing) if *existing == delivery => already += 1,
            Some(_) => errors.push(RowError {
                row: row.row,
                column: mapping.id.clone(),
                message: format!(
                    "delivery `{}` was recorded with other values: change its id to record it",
                    delivery.id
                ),
            }),
            None => fresh.push(delivery),
        }
    }
    if !errors.is_empty() && !query.partial {
        return Ok(refused(parsed.total_rows, errors));
    }
    // One message: the plan records the file's rows all or none (it checks
    // each again), in one write.
    let recorded = fresh.len();
    share_progress(
        &system,
        &tenant,
        &plan.id,
        serde_json::json!({ "stage": "recording", "rows_recorded": 0, "rows_total": recorded }),
    );
    let realized_value = if fresh.is_empty() {
        plan.realized_value()
    } else {
        super::plans::record_deliveries(&system, &scope, &value, &plan.id, fresh)
            .await?
            .realized_value()
    };
    let total = recorded;
    share_progress(
        &system,
        &tenant,
        &plan.id,
        serde_json::json!({ "stage": "done", "rows_recorded": recorded, "rows_total": total }),
    );
    Ok(HttpResponse::Ok().json(ImportReport {
        plan_id: plan.id,
        rows: parsed.total_rows,
        recorded,
        already_recorded: already,
        refused: errors.len(),
        errors: errors.into_iter().map(Into::into).collect(),
        realized_value,
    }))
}

/// 422: the rows refused; nothing stored.
fn refused(rows: usize, errors: Vec<RowError>) -> HttpResponse {
    let first = &errors[0];
    let message = format!(
        "{} of {rows} rows refused (the first: row {}, column `{}`: {}); nothing was stored: \
         fix them, or send `partial=true` to store the others",
        errors.len(),
        first.row,
        first.column,
        first.message
    );
    HttpResponse::UnprocessableEntity().json(serde_json::json!({
        "error": { "code": "invalid_rows", "message": message, "field": "file" },
        "report": {
            "rows": rows,
            "refused": errors.len(),
            "errors": errors.into_iter().map(ImportError::from).collect::<Vec<_>>(),
        },
    }))
}

fn file_error(error: FileError) -> ApiError {
    let field = match &error {
        FileError::MissingColumn { column, .. } | FileError::DuplicateColumn { column } => {
            column.clone()
        }
        _ => "file".to_owned(),
    };
    let status = match error {
        FileError::TooManyRows { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, "invalid_file", error.to_string()).with_field(&field)
}

/// The plan's stream: its state, then the progress of imports into it and
/// its events (deliveries, milestones, supersession), from any node.
#[utoipa::path(
    get,
    path = "/ws/plans/{id}",
    tag = "executor",
    params(
        ("id" = String, Path, description = "plan id"),
        ("access_token" = Option<String>, Query, description = "the API key, for clients that cannot set headers"),
    ),
    responses(
        (status = 101, description = "WebSocket: `{type: \"state\"}`, then `{type: \"import.progress\" | <event type>, data}`"),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn events(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    // Subscribed before the plan is read, so nothing falls between.
    let bus = system.subscribe_cluster_events();
    let plan = scope
        .agent::<Executor>(&system, &id)
        .ask(ExecutorMsg::Get, system.runtime_config().ask_timeout)
        .await
        .map_err(ApiError::from)?;
    let feed = PlanFeed {
        bus,
        tenant: scope.tenant().clone(),
        source: format!("executor/{id}"),
        first: Some(plan),
    };
    super::ws::relay(&request, payload, 4096, feed)
}

struct PlanFeed {
    bus: tokio::sync::broadcast::Receiver<std::sync::Arc<DomainEvent>>,
    tenant: Tenant,
    source: String,
    first: Option<Plan>,
}

impl Source for PlanFeed {
    async fn next(&mut self) -> Outgoing {
        use tokio::sync::broadcast::error::RecvError;
        if let Some(plan) = self.first.take() {
            let text = serde_json::json!({
                "type": "state",
                "plan_id": plan.id,
                "status": plan.status,
                "deliveries": plan.deliveries.len(),
                "realized_value": plan.realized_value(),
            })
            .to_string();
            return Outgoing::Text(text.into());
        }
        loop {
            match self.bus.recv().await {
                Ok(event)
                    if event.tenant == self.tenant.as_str() && event.source == self.source =>
                {
                    let text = serde_json::json!({
                        "type": event.event_type, "at": event.occurred_at, "data": event.data,
                    })
                    .to_string();
                    return Outgoing::Text(text.into());
                }
                Ok(_) => {}
                // Progress is best effort: a slow reader skips some.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Outgoing::End,
            }
        }
    }
}
