//! The one JSON error shape of the API, `{"error":{"code","message","field"?}}`,
//! and the one place where errors become HTTP statuses.

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use valueverse_runtime::StateError;
use valueverse_runtime::{AgentError, RejectionCode};
use valueverse_runtime::{HandlingError, OperatorError, RemoteError, SendError};

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// Seconds, sent as `Retry-After` with 503s the client should retry.
    pub retry_after: Option<u32>,
}

/// The error shape, as the OpenAPI document shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDoc {
    error: ErrorDocDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDocDetail {
    /// Stable machine-readable code (`invalid_field`, `not_found`...).
    code: String,
    message: String,
    /// The JSON path of the field at fault, when there is one.
    field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: BodyError<'a>,
}

#[derive(Serialize)]
struct BodyError<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 422 `invalid_field` naming the field at fault.
    pub(crate) fn invalid_field(field: &str, message: String) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    /// A reason given by an operator: 1 to `max` characters, not all blank.
    /// Its schema says the same: `min_length = 1, pattern = "\\S"`.
    pub(crate) fn check_reason(reason: &str, max: usize) -> Result<&str, ApiError> {
        let trimmed = reason.trim();
        if trimmed.is_empty() || reason.chars().count() > max {
            return Err(ApiError::invalid_field(
                "reason",
                format!("give a reason of 1 to {max} characters, not all blank"),
            ));
        }
        Ok(trimmed)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub(crate) fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(Body {
            error: BodyError {
                code: &self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        })
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> ApiError {
        let message = error.to_string();
        match error {
            AgentError::Send(SendError::MailboxFull { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mailbox_full", message)
                    .retry_after(1)
            }
            AgentError::Send(SendError::Timeout { .. })
            | AgentError::Send(SendError::Expired { .. }) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            }
            AgentError::Handling(HandlingError::Panicked { .. })
            | AgentError::Handling(HandlingError::Fatal { .. })
            | AgentError::Remote(RemoteError::Unencodable { .. }) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "agent_failure", message)
            }
            AgentError::Handling(HandlingError::Failed { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "agent_failed", message)
            }
            AgentError::Send(SendError::Stopped { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "agent_stopped", message)
                    .retry_after(1)
            }
            AgentError::Handling(HandlingError::Rejected { rejection, .. }) => {
                let rejection = *rejection;
                // A refusal is a 422 unless its code says the target is
                // missing or in a state that forbids the request.
                let status = match rejection.code {
                    // No insights before a plan: nothing there yet.
                    RejectionCode::NotFound | RejectionCode::NoBaseline => StatusCode::NOT_FOUND,
                    // The stored model's industry has no catalogue: its
                    // state, not the request, refuses.
                    RejectionCode::UnknownIndustry | RejectionCode::Conflict => {
                        StatusCode::CONFLICT
                    }
                    RejectionCode::Invalid
                    | RejectionCode::NoSimulation
                    | RejectionCode::TargetNotSupported
                    | RejectionCode::UnknownDriver => StatusCode::UNPROCESSABLE_ENTITY,
                    // A tenant's quota: later, or after freeing some.
                    RejectionCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
                };
                ApiError {
                    field: rejection.field,
                    ..ApiError::new(status, rejection.code.as_str(), rejection.message)
                }
            }
            AgentError::Operator(OperatorError::NotFailed { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "not_failed", message)
            }
            AgentError::Operator(OperatorError::NotActive { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "not_active", message)
            }
            AgentError::Operator(OperatorError::UnknownInstance { .. }) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_instance", message)
            }
            AgentError::Send(SendError::UnknownKind { .. }) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_kind", message)
            }
            AgentError::Store { cause, .. } => ApiError::from(*cause),
            AgentError::Remote(RemoteError::Unreachable { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "node_unreachable", message)
                    .retry_after(1)
            }
            AgentError::Remote(RemoteError::Backpressure { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backpressure", message)
                    .retry_after(1)
            }
            AgentError::Remote(RemoteError::Failed { .. }) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "remote_failure", message)
            }
        }
    }
}

impl From<StateError> for ApiError {
    fn from(error: StateError) -> ApiError {
        let message = error.to_string();
        match error {
            StateError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version_conflict", message)
            }
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            )
            .retry_after(1),
        }
    }
}

/// Parses a JSON request body, naming the field at fault on error. An empty
/// body reads as `{}` when `empty_is_object`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], empty_is_object: bool) -> Result<T, ApiError> {
    let body: &[u8] = if empty_is_object && body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.to_string())
    })?;
    // JSON has one number type: `10.0` is the integer 10 to JSON Schema (and
    // to the OpenAPI document), so it is taken where an integer is asked.
    integral_floats_as_integers(&mut value);
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let code = if inner.is_data() {
                "invalid_field"
            } else {
                "malformed_json"
            };
            let message = inner.to_string();
            // serde reports a missing field at the object that lacks it.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| match path.as_str() {
                    "." => name.to_owned(),
                    parent => format!("{parent}.{name}"),
                });
            let error = ApiError::new(StatusCode::BAD_REQUEST, code, message);
            // A syntax error has no field to name: the body is not JSON.
            Err(match missing {
                Some(field) if code == "invalid_field" => error.with_field(field),
                None if code == "invalid_field" && path != "." => error.with_field(path),
                _ => error,
            })
        }
    }
}

/// Rewrites every float with no fractional part (within the 64-bit integer
/// range) as an integer; a float field reads an integer all the same.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            if let Some(float) = number.as_f64()
                && float.fract() == 0.0
                && float.abs() < 9.0e15
            {
                // Below 2^53 every integral float is exact.
                *value = Value::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Parses a query string, naming the parameter at fault on error.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let deserializer = serde_urlencoded::Deserializer::new(url_decode_pairs(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = format!("invalid query: {}", error.into_inner());
        let error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message);
        if path == "." {
            error
        } else {
            error.with_field(path)
        }
    })
}

fn url_decode_pairs(query: &[u8]) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query)
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        status if status.is_server_error() => "internal",
        _ => "error",
    }
}

/// `GET, POST`: the methods of the route `pattern` in the route table.
fn allowed_methods(pattern: Option<&str>) -> Option<String> {
    let pattern = pattern?;
    let methods: Vec<String> = super::ROUTES
        .iter()
        .filter(|(_, path)| *path == pattern)
        .map(|(method, _)| method.to_ascii_uppercase())
        .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// Gives every error response that is not JSON yet (actix's own 404s, 405s,
/// extractor errors) the API's JSON error shape.
pub(crate) fn to_json_error<B>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value == HeaderValue::from_static("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let status = response.status();
    let request = response.request();
    let message = match (status, response.response().error()) {
        (_, Some(error)) => error.to_string(),
        (StatusCode::NOT_FOUND, None) => {
            format!("no route for {} {}", request.method(), request.path())
        }
        (StatusCode::METHOD_NOT_ALLOWED, None) => {
            format!(
                "method {} is not allowed on {}",
                request.method(),
                request.path()
            )
        }
        (status, None) => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let allow = (status == StatusCode::METHOD_NOT_ALLOWED)
        .then(|| allowed_methods(request.match_pattern().as_deref()))
        .flatten();
    let (request, _) = response.into_parts();
    let mut rewritten = ApiError::new(status, code_for(status), message).error_response();
    // A 405 names the methods the route does take (RFC 9110, 15.5.6).
    if let Some(allow) = allow.and_then(|allow| HeaderValue::from_str(&allow).ok()) {
        rewritten.headers_mut().insert(header::ALLOW, allow);
    }
    let rewritten: ServiceResponse<EitherBody<B>> =
        ServiceResponse::new(request, rewritten).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(rewritten))
}

impl From<valueverse_agents::quotas::QuotaError> for ApiError {
    fn from(error: valueverse_agents::quotas::QuotaError) -> ApiError {
        use valueverse_agents::quotas::QuotaError;
        match error {
            QuotaError::Exceeded { quota, .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                error.to_string(),
            )
            .with_field(quota)
            .retry_after(60),
            QuotaError::Store(error) => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        paths: u64,
        share: f64,
    }

    #[test]
    fn an_integral_float_is_an_integer_as_json_schema_says() {
        let body: Body = parse_json(br#"{"paths": 10.0, "share": 1}"#, false).unwrap();
        assert_eq!((body.paths, body.share), (10, 1.0));
        let error = parse_json::<Body>(br#"{"paths": 10.5, "share": 1}"#, false).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("paths"));
        let error = parse_json::<Body>(br#"{"paths": 1, "share": 1, "x": 2}"#, false).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        let error = parse_json::<Body>(b"{not json", false).unwrap_err();
        assert_eq!(error.code, "malformed_json");
    }
}
