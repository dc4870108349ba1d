//! The HTTP API (JSON under `/api/v1`), `/healthz`, `/openapi.json` and a
//! read-only HTML list of specs at `/`.
//!
//! Every route but `/healthz` and `/openapi.json` needs a bearer token:
//! the viewer token may read, the admin token may also write.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::spec_input::{validate_name, SpecInput};
use crate::store::{Job, JobBrief, SpecSummary, Store, Transition};
use crate::worker::RegistryConfig;
use crate::ServiceError;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// Who a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Admin,
}

/// The bearer tokens, kept as sha256 digests and compared in constant time
/// (hashing first also hides the tokens' lengths).
#[derive(Clone)]
pub struct Tokens {
    admin: [u8; 32],
    viewer: Option<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(***)")
    }
}

fn sha(t: &str) -> [u8; 32] {
    Sha256::digest(t.as_bytes()).into()
}

impl Tokens {
    pub fn new(admin: &str, viewer: Option<&str>) -> Tokens {
        Tokens {
            admin: sha(admin),
            viewer: viewer.filter(|v| !v.is_empty()).map(sha),
        }
    }

    /// The role a token grants, if any.
    pub fn check(&self, token: &str) -> Option<Role> {
        let h = sha(token);
        let admin: bool = h.ct_eq(&self.admin).into();
        let viewer: bool = self
            .viewer
            .map(|v| bool::from(h.ct_eq(&v)))
            .unwrap_or(false);
        if admin {
            Some(Role::Admin)
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    /// The role of a request's `Authorization: Bearer` header.
    pub fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<Role, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(role) = token.and_then(|t| self.check(t)) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required",
            ));
        };
        if need == Role::Admin && role != Role::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this token may only read; writing needs the admin token",
            ));
        }
        Ok(role)
    }
}

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub tokens: Tokens,
    /// Where images go; names are validated against it when set.
    pub registry: Option<RegistryConfig>,
}

/// An error answer: `{"error": "<message>"}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        eprintln!("kiln serve: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::ui::routes())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/openapi.json", get(openapi))
        .route("/api/v1/specs", get(list_specs).post(create_spec))
        .route(
            "/api/v1/specs/{name}",
            get(get_spec).put(update_spec).delete(delete_spec),
        )
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/log", get(job_log))
        .route("/api/v1/jobs/{id}/events", get(crate::events::job_events))
        .route("/api/v1/webhooks/github", post(crate::webhooks::github))
        .route("/api/v1/webhooks/gitlab", post(crate::webhooks::gitlab))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/retry", post(retry_job))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Parse and validate a spec body; `path_name` is the name in the URL (PUT).
fn parse_spec(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    path_name: Option<&str>,
) -> ApiResult<(String, crate::spec_input::Rendered)> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let mut input: SpecInput = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid spec JSON: {e}")))?;
    let name = match (path_name, input.name.as_deref()) {
        (Some(p), Some(n)) if p != n => {
            return Err(ApiError::invalid(format!(
                "name `{n}` does not match the URL's `{p}`: a spec's name cannot change"
            )))
        }
        (Some(p), _) => p.to_string(),
        (None, Some(n)) => n.to_string(),
        (None, None) => return Err(ApiError::invalid("name is required")),
    };
    validate_name(&name).map_err(ApiError::invalid)?;
    input.name = Some(name.clone());
    let image = state.registry.as_ref().map(|r| r.image_name(&name));
    let rendered = input.render(image.as_deref()).map_err(ApiError::invalid)?;
    Ok((name, rendered))
}

fn created_json(name: &str, revision: i64, job: JobBrief) -> Value {
    json!({"name": name, "revision": revision, "job": job})
}

async fn create_spec(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    state.tokens.authorize(&headers, Role::Admin)?;
    let (name, rendered) = parse_spec(&state, body, None)?;
    match state.store.create_spec(&name, &rendered).await? {
        Some((rev, job)) => Ok((StatusCode::CREATED, Json(created_json(&name, rev, job)))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a spec named `{name}` exists; PUT /api/v1/specs/{name} adds a revision"),
        )),
    }
}

async fn update_spec(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    state.tokens.authorize(&headers, Role::Admin)?;
    let (name, rendered) = parse_spec(&state, body, Some(&name))?;
    match state.store.add_revision(&name, &rendered).await? {
        Some((rev, job)) => Ok(Json(created_json(&name, rev, job))),
        None => Err(ApiError::not_found(format!("no spec named `{name}`"))),
    }
}

async fn list_specs(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    state.tokens.authorize(&headers, Role::Viewer)?;
    let specs = state.store.list_specs().await?;
    Ok(Json(json!({ "specs": specs })))
}

async fn get_spec(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    state.tokens.authorize(&headers, Role::Viewer)?;
    let Some(s) = state.store.get_spec(&name).await? else {
        return Err(ApiError::not_found(format!("no spec named `{name}`")));
    };
    let mut v = serde_json::to_value(&s).expect("summary serialises");
    if let Some(input) = state.store.latest_input(&name).await? {
        v["spec"] = serde_json::from_str(&input).unwrap_or(Value::Null);
    }
    Ok(Json(v))
}

async fn delete_spec(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.tokens.authorize(&headers, Role::Admin)?;
    if state.store.delete_spec(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no spec named `{name}`")))
    }
}

fn job_id(id: &str) -> ApiResult<i64> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no job `{id}`")))
}

fn time(ms: Option<i64>) -> Value {
    match ms {
        Some(ms) => Value::String(kiln_core::time::rfc3339((ms.max(0) / 1000) as u64)),
        None => Value::Null,
    }
}

pub(crate) fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "spec": j.spec,
        "revision": j.revision,
        "state": j.state,
        "phase": j.phase,
        "image": j.image,
        "digest": j.digest,
        "created": time(Some(j.created)),
        "started": time(j.started),
        "finished": time(j.finished),
        "error": j.error,
    })
}

async fn get_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state.tokens.authorize(&headers, Role::Viewer)?;
    let id = job_id(&id)?;
    match state.store.get_job(id).await? {
        Some(j) => Ok(Json(job_json(&j))),
        None => Err(ApiError::not_found(format!("no job {id}"))),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<i64>,
}

async fn job_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    state.tokens.authorize(&headers, Role::Viewer)?;
    let id = job_id(&id)?;
    let Some(lines) = state.store.log(id, q.tail).await? else {
        return Err(ApiError::not_found(format!("no job {id}")));
    };
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

fn transition(t: Transition<JobBrief>, id: i64) -> ApiResult<JobBrief> {
    match t {
        Transition::Done(b) => Ok(b),
        Transition::NotFound => Err(ApiError::not_found(format!("no job {id}"))),
        Transition::Conflict(m) => Err(ApiError::new(StatusCode::CONFLICT, m)),
    }
}

async fn cancel_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<JobBrief>> {
    state.tokens.authorize(&headers, Role::Admin)?;
    let id = job_id(&id)?;
    Ok(Json(transition(state.store.cancel(id).await?, id)?))
}

async fn retry_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobBrief>)> {
    state.tokens.authorize(&headers, Role::Admin)?;
    let id = job_id(&id)?;
    let brief = transition(state.store.retry(id).await?, id)?;
    Ok((StatusCode::CREATED, Json(brief)))
}

/// HTML-escape text for element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The specs as an HTML table (read-only; needs a bearer token like the API).
pub fn render_index(specs: &[SpecSummary]) -> String {
    let mut rows = String::new();
    for s in specs {
        let state = s.latest_job.as_ref().map_or("", |j| j.state.as_str());
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"state-{}\">{}</td><td><code>{}</code></td></tr>\n",
            escape(&s.name),
            s.revision,
            escape(state),
            escape(state),
            escape(s.current_image.as_deref().unwrap_or("")),
        ));
    }
    if specs.is_empty() {
        rows.push_str("<tr><td colspan=\"4\">no specs yet</td></tr>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kiln serve</title></head>\n\
         <body><h1>Specs</h1>\n<table>\n<thead><tr><th>Name</th><th>Revision</th><th>Latest job</th><th>Current image</th></tr></thead>\n\
         <tbody>\n{rows}</tbody></table></body></html>\n"
    )
}

async fn openapi() -> Json<Value> {
    Json(openapi_doc())
}

/// The API described as OpenAPI 3.1.
pub fn openapi_doc() -> Value {
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9.-]*$", "maxLength": 128}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}});
    let spec_body = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SpecInput"}}}});
    let created = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Revision"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "kiln serve", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"security": [], "summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/openapi.json": {"get": {"security": [], "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/": {"get": {"summary": "HTML list of specs", "responses": {"200": {"description": "text/html"}, "401": err}}},
            "/api/v1/specs": {
                "get": {"summary": "List specs", "responses": {"200": {"description": "specs", "content": {"application/json": {"schema": {"type": "object", "properties": {"specs": {"type": "array", "items": {"$ref": "#/components/schemas/Spec"}}}}}}}, "401": err}},
                "post": {"summary": "Create a spec (revision 1) and queue its build", "requestBody": spec_body, "responses": {"201": {"description": "created", "content": created["content"]}, "401": err, "403": err, "409": err, "413": err, "422": err}}
            },
            "/api/v1/specs/{name}": {
                "parameters": [name],
                "get": {"summary": "A spec", "responses": {"200": {"description": "the spec", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Spec"}}}}, "404": err}},
                "put": {"summary": "Add a revision and queue its build", "requestBody": spec_body, "responses": {"200": {"description": "new revision", "content": created["content"]}, "404": err, "413": err, "422": err}},
                "delete": {"summary": "Delete a spec, its revisions and jobs", "responses": {"204": {"description": "deleted"}, "404": err}}
            },
            "/api/v1/jobs/{id}": {"parameters": [id], "get": {"summary": "A job", "responses": {"200": {"description": "the job", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}, "404": err}}},
            "/api/v1/jobs/{id}/log": {"parameters": [id, {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0}}], "get": {"summary": "A job's log (text)", "responses": {"200": {"description": "log lines", "content": {"text/plain": {}}}, "404": err}}},
            "/api/v1/jobs/{id}/events": {"parameters": [id, {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}, "description": "resume after this log line"}, {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "like Last-Event-ID"}], "get": {"summary": "A job's log and state as Server-Sent Events: `log` (id = line number, data = the line) and `state` (data = the Job JSON, on every change); ends after a finished job's state", "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {}}}, "401": err, "404": err}}},
            "/api/v1/webhooks/github": {"post": {"security": [], "summary": "GitHub webhook (X-Hub-Signature-256 with KILN_WEBHOOK_SECRET): a push queues rebuilds of the specs whose git.url is the repository", "parameters": [{"name": "X-GitHub-Event", "in": "header", "schema": {"type": "string"}}, {"name": "X-Hub-Signature-256", "in": "header", "required": true, "schema": {"type": "string"}}], "requestBody": {"content": {"application/json": {}}}, "responses": {"200": {"description": "jobs queued", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Queued"}}}}, "400": err, "401": err, "404": err}}},
            "/api/v1/webhooks/gitlab": {"post": {"security": [], "summary": "GitLab webhook (X-Gitlab-Token = KILN_WEBHOOK_SECRET): a push queues rebuilds of the specs whose git.url is the project", "parameters": [{"name": "X-Gitlab-Event", "in": "header", "schema": {"type": "string"}}, {"name": "X-Gitlab-Token", "in": "header", "required": true, "schema": {"type": "string"}}], "requestBody": {"content": {"application/json": {}}}, "responses": {"200": {"description": "jobs queued", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Queued"}}}}, "400": err, "401": err, "404": err}}},
            "/api/v1/jobs/{id}/cancel": {"parameters": [id], "post": {"summary": "Cancel a queued or running job", "responses": {"200": {"description": "cancelled", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobBrief"}}}}, "404": err, "409": err}}},
            "/api/v1/jobs/{id}/retry": {"parameters": [id], "post": {"summary": "Queue a new job for a finished job's revision", "responses": {"201": {"description": "new job", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobBrief"}}}}, "404": err, "409": err}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "JobBrief": {"type": "object", "properties": {"id": {"type": "integer"}, "state": {"$ref": "#/components/schemas/State"}}},
                "State": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                "Revision": {"type": "object", "properties": {"name": {"type": "string"}, "revision": {"type": "integer"}, "job": {"$ref": "#/components/schemas/JobBrief"}}},
                "Spec": {"type": "object", "properties": {"name": {"type": "string"}, "revision": {"type": "integer"}, "current_image": {"type": ["string", "null"]}, "latest_job": {"oneOf": [{"$ref": "#/components/schemas/JobBrief"}, {"type": "null"}]}, "spec": {"$ref": "#/components/schemas/SpecInput"}}},
                "Job": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "spec": {"type": "string"}, "revision": {"type": "integer"},
                    "state": {"$ref": "#/components/schemas/State"},
                    "phase": {"type": ["string", "null"]}, "image": {"type": ["string", "null"]}, "digest": {"type": ["string", "null"]},
                    "created": {"type": "string", "format": "date-time"},
                    "started": {"type": ["string", "null"], "format": "date-time"},
                    "finished": {"type": ["string", "null"], "format": "date-time"},
                    "error": {"type": ["string", "null"]}}},
                "Queued": {"type": "object", "properties": {"queued": {"type": "array", "items": {"type": "object", "properties": {"spec": {"type": "string"}, "job": {"$ref": "#/components/schemas/JobBrief"}}}}}},
                "SpecInput": {"type": "object", "additionalProperties": false, "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "enum": ["packages", "image", "python-env", "dockerfile"], "default": "packages", "description": "packages: base plus packages; image: an existing image (`image`), resolved to its digest and used as it is; python-env: the requirements.txt or environment.yml at `source` installed on `base` (default: the server's KILN_SERVE_PYTHON_BASE); dockerfile: the folder (or Dockerfile) at `source`"},
                    "image": {"type": "string", "description": "with type image: a registry reference"},
                    "source": {"type": "string", "description": "with types python-env and dockerfile: a Git URL (URL#REF:PATH, a clone URL, or a forge's …/blob/REF/FILE or …/tree/REF/DIR page address)"},
                    "git": {"type": "object", "additionalProperties": false, "required": ["url"], "properties": {"url": {"type": "string"}, "ref": {"type": "string"}}, "description": "the spec's Git repository: pushes to it (webhooks) queue rebuilds"},
                    "base": {"type": "string", "default": "scratch"},
                    "packages": {"type": "object", "additionalProperties": false, "properties": {
                        "apt": {"type": "array", "items": {"type": "string"}},
                        "pip": {"type": "array", "items": {"type": "string"}},
                        "conda": {"type": "array", "items": {"type": "string"}}}},
                    "channels": {"type": "array", "items": {"type": "string"}},
                    "config": {"type": "object", "additionalProperties": false, "properties": {
                        "env": {"type": "object", "additionalProperties": {"type": "string"}},
                        "user": {"type": "string"}, "workdir": {"type": "string"},
                        "entrypoint": {"type": "array", "items": {"type": "string"}},
                        "cmd": {"type": "array", "items": {"type": "string"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn tokens() {
        let t = Tokens::new("admin-secret", Some("viewer-secret"));
        assert_eq!(t.check("admin-secret"), Some(Role::Admin));
        assert_eq!(t.check("viewer-secret"), Some(Role::Viewer));
        assert_eq!(t.check("admin-secre"), None);
        assert_eq!(t.check(""), None);

        let ok = |auth: &str, need| t.authorize(&headers(auth), need).map_err(|e| e.status);
        assert_eq!(ok("Bearer admin-secret", Role::Admin), Ok(Role::Admin));
        assert_eq!(ok("Bearer viewer-secret", Role::Viewer), Ok(Role::Viewer));
        assert_eq!(
            ok("Bearer viewer-secret", Role::Admin),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            ok("Bearer nope", Role::Viewer),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            ok("Basic admin-secret", Role::Viewer),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            t.authorize(&HeaderMap::new(), Role::Viewer)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );

        // Without a viewer token, only the admin token works.
        let t = Tokens::new("admin-secret", Some(""));
        assert_eq!(t.check(""), None);
        assert_eq!(t.check("admin-secret"), Some(Role::Admin));
    }

    #[test]
    fn html_is_escaped() {
        let s = SpecSummary {
            name: "a<b>&\"'".into(),
            revision: 2,
            current_image: Some("h/x@sha256:00".into()),
            latest_job: Some(JobBrief {
                id: 1,
                state: "succeeded".into(),
            }),
        };
        let html = render_index(&[s]);
        assert!(html.contains("a&lt;b&gt;&amp;&quot;&#39;"), "{html}");
        assert!(!html.contains("a<b>"));
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = openapi_doc();
        assert_eq!(doc["openapi"], "3.1.0");
        for p in [
            "/healthz",
            "/api/v1/specs",
            "/api/v1/specs/{name}",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}/log",
            "/api/v1/jobs/{id}/cancel",
            "/api/v1/jobs/{id}/retry",
            "/api/v1/jobs/{id}/events",
            "/api/v1/webhooks/github",
            "/api/v1/webhooks/gitlab",
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} missing");
        }
    }
}
