//! `/api/v1/plans` (executor) and `/api/v1/amplifications` (amplifier):
//! execution plans from commitments, progress, deliveries, and insights.

use std::collections::HashSet;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use valueverse_agents::Records;
use valueverse_agents::amplifier::{Amplifier, AmplifierMsg, AmplifierReply, baseline_for};
use valueverse_agents::architect::ArchitectMsg;
use valueverse_agents::committer::{CommitmentStatus, Committer, CommitterMsg};
use valueverse_agents::config::ValueConfig;
use valueverse_agents::executor::{
    Delivery, Executor, ExecutorMsg, Plan, PlanStatus, Task, TaskStatus, plan_for,
};
use valueverse_runtime::System;

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json, parse_query};
use super::listing::list_page;
use super::schemas::amplifier as amplifier_api;
use super::schemas::executor as api;
use super::scope::Scope;
use super::value_models::ask_model;
use valueverse_agents::executor::list_plans;

fn timeout(system: &System) -> std::time::Duration {
    system.runtime_config().ask_timeout
}

async fn ask(system: &System, scope: &Scope, id: &str, msg: ExecutorMsg) -> Result<Plan, ApiError> {
    Ok(scope
        .agent::<Executor>(system, id)
        .ask(msg, timeout(system))
        .await?)
}

async fn amplify(
    system: &System,
    scope: &Scope,
    model_id: &str,
    msg: AmplifierMsg,
) -> Result<AmplifierReply, ApiError> {
    Ok(scope
        .agent::<Amplifier>(system, model_id)
        .ask(msg, timeout(system))
        .await?)
}

/// A plan with its progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PlanView {
    #[serde(flatten)]
    plan: api::Plan,
    progress_percent: f64,
    realized_value: f64,
}

impl From<Plan> for PlanView {
    fn from(plan: Plan) -> PlanView {
        PlanView {
            progress_percent: 100.0 * plan.progress(),
            realized_value: plan.realized_value(),
            plan: plan.into(),
        }
    }
}

/// A plan as lists show it: counts in place of its milestone, task and
/// delivery arrays (those are on `GET /api/v1/plans/{id}`), so that a page
/// stays small whatever the plans hold.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PlanSummary {
    id: String,
    status: api::PlanStatus,
    commitment_id: String,
    model_id: String,
    model_version: i64,
    start_date: chrono::NaiveDate,
    milestones: usize,
    tasks: usize,
    deliveries: usize,
    progress_percent: f64,
    realized_value: f64,
    created_at: chrono::DateTime<chrono::Utc>,
    cancelled_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<Plan> for PlanSummary {
    fn from(plan: Plan) -> PlanSummary {
        PlanSummary {
            progress_percent: 100.0 * plan.progress(),
            realized_value: plan.realized_value(),
            milestones: plan.milestones.len(),
            tasks: plan.tasks.len(),
            deliveries: plan.deliveries.len(),
            id: plan.id,
            status: plan.status.into(),
            commitment_id: plan.commitment_id,
            model_id: plan.model_id,
            model_version: plan.model_version,
            start_date: plan.start_date,
            created_at: plan.created_at,
            cancelled_at: plan.cancelled_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TaskBody {
    name: String,
    owner: String,
    due_date: NaiveDate,
    milestone: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    commitment_id: String,
    /// [default: today]
    start_date: Option<NaiveDate>,
    #[serde(default)]
    tasks: Vec<TaskBody>,
}

/// The active plans of a commitment, superseded by plan `by` (those made
/// before it: of two plans made at once the newer stays) or cancelled with
/// `reason`; the amplifier stops counting them.
pub(crate) async fn end_plans(
    system: &System,
    records: &Records,
    scope: &Scope,
    commitment_id: &str,
    by: Option<&str>,
    reason: &str,
) -> Result<(), ApiError> {
    loop {
        let page = list_plans(
            records,
            scope.tenant(),
            Some(commitment_id),
            None,
            Some(PlanStatus::Active),
            (100, 0),
        )
        .await?;
        let ending: Vec<&Plan> = page
            .items
            .iter()
            .filter(|plan| by.is_none_or(|by| plan.id.as_str() < by))
            .collect();
        if ending.is_empty() {
            return Ok(());
        }
        for plan in ending {
            let msg = match by {
                Some(by) => ExecutorMsg::Supersede { by: by.to_owned() },
                None => ExecutorMsg::Cancel {
                    reason: reason.to_owned(),
                },
            };
            match ask(system, scope, &plan.id, msg).await {
                // Ended meanwhile by another request.
                Ok(_)
                | Err(ApiError {
                    status: StatusCode::CONFLICT,
                    ..
                }) => {}
                Err(error) => return Err(error),
            }
            amplify(
                system,
                scope,
                &plan.model_id,
                AmplifierMsg::RetireBaseline {
                    plan_id: plan.id.clone(),
                },
            )
            .await?;
        }
    }
}

/// The plan of a commitment: its milestones, the tasks given, and the
/// amplifier's baseline registered for its model; the commitment's plan
/// before it is superseded (a commitment has one active plan).
#[utoipa::path(
    post,
    path = "/api/v1/plans",
    tag = "executor",
    request_body = PlanBody,
    responses(
        (status = 409, description = "the state of what it names refuses it (a voided commitment, an archived model)", body = ErrorDoc),
        (status = 201, description = "the plan, and the amplifier baseline registered", body = PlanView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    scope: Scope,
    system: web::Data<System>,
    records: web::Data<Records>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: PlanBody = parse_json(&body, false)?;
    let commitment = scope
        .agent::<Committer>(&system, &body.commitment_id)
        .ask(CommitterMsg::Get, timeout(&system))
        .await?;
    if commitment.status != CommitmentStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "commitment `{}` is voided: it cannot be planned",
                commitment.id
            ),
        )
        .with_field("commitment_id"));
    }
    let request = &commitment.request;
    let names: HashSet<&str> = request.milestones.iter().map(|m| m.name.as_str()).collect();
    let mut tasks = Vec::with_capacity(body.tasks.len());
    for (index, task) in body.tasks.iter().enumerate() {
        for (field, text) in [("name", &task.name), ("owner", &task.owner)] {
            if text.trim().is_empty() || text.len() > 200 {
                return Err(ApiError::invalid_field(
                    &format!("tasks[{index}].{field}"),
                    "must have 1 to 200 characters".into(),
                ));
            }
        }
        if let Some(milestone) = &task.milestone
            && !names.contains(milestone.as_str())
        {
            return Err(ApiError::invalid_field(
                &format!("tasks[{index}].milestone"),
                format!("the commitment has no milestone `{milestone}`"),
            ));
        }
        tasks.push(Task {
            id: format!("t{}", index + 1),
            name: task.name.trim().to_owned(),
            owner: task.owner.trim().to_owned(),
            due_date: task.due_date,
            milestone: task.milestone.clone(),
            status: TaskStatus::Todo,
            updated_at: Utc::now(),
        });
    }
    let (record, version) = ask_model(
        &system,
        &scope,
        &request.model_id,
        ArchitectMsg::Get {
            version: Some(request.model_version),
        },
    )
    .await?;
    let at = record.version(version).expect("an existing version");
    let start_date = body.start_date.unwrap_or_else(|| Utc::now().date_naive());
    let id = uuid::Uuid::now_v7().to_string();
    let plan = plan_for(id.clone(), &commitment, at, start_date, tasks);
    let plan = ask(&system, &scope, &id, ExecutorMsg::Create(Box::new(plan))).await?;
    let baseline = baseline_for(&plan, at, &commitment);
    amplify(
        &system,
        &scope,
        &request.model_id,
        AmplifierMsg::RegisterBaseline(Box::new(baseline)),
    )
    .await?;
    end_plans(&system, &records, &scope, &commitment.id, Some(&id), "").await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/plans/{id}")))
        .json(PlanView::from(plan)))
}

#[utoipa::path(
    get,
    path = "/api/v1/plans/{id}",
    tag = "executor",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "the plan", body = PlanView),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(PlanView::from(
        ask(&system, &scope, &id, ExecutorMsg::Get).await?,
    )))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ProgressBody {
    /// A task id (`t1`) and its new status, or
    task: Option<String>,
    status: Option<api::TaskStatus>,
    /// a milestone reached (on `on`, default today).
    milestone: Option<String>,
    on: Option<NaiveDate>,
}

#[utoipa::path(
    post,
    path = "/api/v1/plans/{id}/progress",
    tag = "executor",
    request_body = ProgressBody,
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "the plan", body = PlanView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn progress(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: ProgressBody = parse_json(&body, false)?;
    let msg = match (body.task, body.status, body.milestone) {
        (Some(task), Some(status), None) => ExecutorMsg::UpdateTask {
            task,
            status: status.into(),
        },
        (Some(_), None, None) => {
            return Err(ApiError::invalid_field(
                "status",
                "a task update needs its `status`".into(),
            ));
        }
        (None, None, Some(milestone)) => ExecutorMsg::CompleteMilestone {
            milestone,
            on: body.on.unwrap_or_else(|| Utc::now().date_naive()),
        },
        _ => {
            return Err(ApiError::invalid_field(
                "task",
                "give `task` and `status`, or `milestone` (and `on`)".into(),
            ));
        }
    };
    Ok(HttpResponse::Ok().json(PlanView::from(ask(&system, &scope, &id, msg).await?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeliveryBody {
    /// The client's id for the delivery: sending it again records it once
    /// [default: a new id].
    #[schema(min_length = 1, max_length = 100)]
    id: Option<String>,
    driver: String,
    value: f64,
    date: NaiveDate,
    note: Option<String>,
}

/// Records realized value with the executor, then with the amplifier (both
/// idempotent on the delivery id, so a retry after a failure is safe).
#[utoipa::path(
    post,
    path = "/api/v1/plans/{id}/deliveries",
    tag = "executor",
    request_body = DeliveryBody,
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 201, description = "recorded (idempotent on `id`)", body = Object),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn deliver(
    scope: Scope,
    system: web::Data<System>,
    value: web::Data<ValueConfig>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: DeliveryBody = parse_json(&body, false)?;
    let delivery = Delivery {
        id: body.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        driver: body.driver,
        value: body.value,
        date: body.date,
        note: body.note,
    };
    let plan = record_deliveries(&system, &scope, &value, &id, vec![delivery.clone()]).await?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "plan_id": plan.id,
        "delivery": api::Delivery::from(delivery),
        "realized_value": plan.realized_value(),
    })))
}

/// Records deliveries with the executor (which checks them, all or
/// none), then with the amplifier (both idempotent on the delivery id
/// within the plan, so a retry after a failure is safe).
pub(crate) async fn record_deliveries(
    system: &System,
    scope: &Scope,
    value: &ValueConfig,
    plan_id: &str,
    deliveries: Vec<Delivery>,
) -> Result<Plan, ApiError> {
    let plan = ask(
        system,
        scope,
        plan_id,
        ExecutorMsg::RecordDeliveries {
            deliveries: deliveries.clone(),
            max_value: value.max_delivery_value,
        },
    )
    .await?;
    amplify(
        system,
        scope,
        &plan.model_id,
        AmplifierMsg::RecordDeliveries {
            plan_id: plan.id.clone(),
            deliveries,
        },
    )
    .await?;
    Ok(plan)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[schema(min_length = 1, max_length = 1000, pattern = "\\S")]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/plans/{id}/cancel",
    tag = "executor",
    request_body = CancelBody,
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "cancelled", body = PlanView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn cancel(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: CancelBody = parse_json(&body, false)?;
    ApiError::check_reason(&body.reason, 1000)?;
    let plan = ask(
        &system,
        &scope,
        &id,
        ExecutorMsg::Cancel {
            reason: body.reason,
        },
    )
    .await?;
    // Insights stop measuring against it.
    amplify(
        &system,
        &scope,
        &plan.model_id,
        AmplifierMsg::RetireBaseline {
            plan_id: plan.id.clone(),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(PlanView::from(plan)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    commitment_id: Option<String>,
    model_id: Option<String>,
    status: Option<api::PlanStatus>,
    #[serde(default = "super::listing::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/plans",
    tag = "executor",
    params(
        ("commitment_id" = Option<String>, Query, description = "filter"),
        ("model_id" = Option<String>, Query, description = "filter"),
        ("status" = Option<api::PlanStatus>, Query, description = "filter"),
        ("limit" = Option<i64>, Query, description = "1 to 100 [default: 20]"),
        ("offset" = Option<i64>, Query, description = "rows to skip [default: 0]"),
    ),
    responses(
        (status = 200, description = "a page of plans", body = super::listing::PageOf<PlanSummary>),
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
            list_plans(
                &records,
                scope.tenant(),
                query.commitment_id.as_deref(),
                query.model_id.as_deref(),
                query.status.map(Into::into),
                page,
            )
        },
        PlanSummary::from,
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InsightsQuery {
    /// [default: today]
    as_of: Option<NaiveDate>,
    /// Fraction around 100% realization beyond which a driver is an
    /// opportunity or a risk [default: 0.1].
    margin: Option<f64>,
    /// One plan's insights [default: the model's active plans together].
    plan_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/amplifications/{model_id}/insights",
    tag = "amplifier",
    params(
        ("model_id" = String, Path, description = "value model id"),
        ("as_of" = Option<chrono::NaiveDate>, Query, description = "YYYY-MM-DD [default: today]"),
        ("margin" = Option<f64>, Query, description = "0 to 1 [default: 0.1]"),
        ("plan_id" = Option<String>, Query, description = "one plan [default: the model's active plans together]"),
    ),
    responses(
        (status = 200, description = "realized vs committed, trend, opportunities, risks", body = amplifier_api::Insights),
        (status = 404, description = "no such model, or no plan for it yet (`no_baseline`)", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn insights(
    scope: Scope,
    system: web::Data<System>,
    model_id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: InsightsQuery = parse_query(request.query_string())?;
    let margin = query.margin.unwrap_or(0.1);
    if !(0.0..1.0).contains(&margin) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`margin` must be within [0, 1), got {margin}"),
        )
        .with_field("margin"));
    }
    let as_of = query.as_of.unwrap_or_else(|| Utc::now().date_naive());
    match amplify(
        &system,
        &scope,
        &model_id,
        AmplifierMsg::Insights {
            as_of,
            margin,
            plan_id: query.plan_id,
        },
    )
    .await?
    {
        AmplifierReply::Insights(insights) => {
            Ok(HttpResponse::Ok().json(amplifier_api::Insights::from(*insights)))
        }
        AmplifierReply::Done | AmplifierReply::Snapshot(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the amplifier answered an insights request without insights",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    plan_id: Option<String>,
    driver: Option<String>,
    since: Option<NaiveDate>,
    #[serde(default = "history_days")]
    days: i64,
}

fn history_days() -> i64 {
    366
}

/// One day of a model's realization.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HistoryPoint {
    day: String,
    /// Gross value the model expects to date.
    expected: f64,
    /// Gross value the commitments ask to date.
    committed: f64,
    realized: f64,
    realization_percent: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct History {
    model_id: String,
    /// `null`: the model's active plans together.
    plan_id: Option<String>,
    /// `null`: all drivers.
    driver: Option<String>,
    points: Vec<HistoryPoint>,
}

/// The daily snapshots of realization, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/amplifications/{model_id}/history",
    tag = "amplifier",
    params(
        ("model_id" = String, Path, description = "value model id"),
        ("plan_id" = Option<String>, Query, description = "one plan [default: the model's active plans together]"),
        ("driver" = Option<String>, Query, description = "one driver of the plan given [default: all; a model's own rows are of all drivers]"),
        ("since" = Option<chrono::NaiveDate>, Query, description = "YYYY-MM-DD [default: all]"),
        ("days" = Option<i64>, Query, minimum = 1, maximum = 3660, description = "most points, 1 to 3660 [default: 366]"),
    ),
    responses(
        (status = 200, description = "a point per day", body = History),
        (status = 400, description = "bad query", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn history(
    scope: Scope,
    records: web::Data<Records>,
    model_id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: HistoryQuery = parse_query(request.query_string())?;
    if !(1..=3660).contains(&query.days) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`days` must be within 1..=3660, got {}", query.days),
        )
        .with_field("days"));
    }
    let since = query
        .since
        .unwrap_or(NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date"));
    let rows = valueverse_agents::amplifier::history(
        &records,
        scope.tenant(),
        &model_id,
        query.plan_id.as_deref(),
        query.driver.as_deref(),
        since,
        query.days,
    )
    .await?;
    Ok(HttpResponse::Ok().json(History {
        model_id: model_id.into_inner(),
        plan_id: query.plan_id,
        driver: query.driver,
        points: rows
            .into_iter()
            .map(|row| HistoryPoint {
                day: row.day,
                expected: row.expected,
                committed: row.committed,
                realized: row.realized,
                realization_percent: row.realization_percent,
            })
            .collect(),
    }))
}
