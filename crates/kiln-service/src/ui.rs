//! The web UI: server-rendered HTML pages, usable without JavaScript (one
//! small same-origin script, `/ui/tail.js`, tails a running job's log).
//!
//! Sign-in: `POST /login` with the admin or viewer token (the API's) starts
//! a session kept in this process's memory (a restart signs everyone out):
//! the cookie holds a random 256-bit session id (`HttpOnly`,
//! `SameSite=Strict`, `Path=/`), never the token; the server keeps only the
//! id's sha256, the role and the session's CSRF token. Pages also accept the
//! API's `Authorization: Bearer` header (no cookie, so no CSRF check).
//!
//! Every state-changing form carries the session's CSRF token in a hidden
//! field, compared in constant time; a POST whose `Origin` is another
//! origin or whose `Sec-Fetch-Site` is `cross-site`/`same-site` is refused
//! too (403) — the sign-in form included.
//!
//! Without credentials, a browser (`Accept: text/html`) is sent to
//! `/login`; other clients get a 401 like the API's.

// Errors here are finished answers (an HTML page or a redirect) passed up
// with `?` to the handler that returns them; boxing them buys nothing.
#![allow(clippy::result_large_err)]

mod form;
mod pages;

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::{AppState, Role};
use crate::spec_input::{validate_name, SpecInput};
use crate::store::Transition;
use crate::ServiceError;

use form::{Form, SpecForm};

/// The session cookie's name.
pub const COOKIE: &str = "kiln_session";
/// How long a session lasts after sign-in.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
/// Log lines shown on a job page (the download has them all).
const PAGE_LOG_LINES: usize = 2000;
/// Jobs listed on a spec's page.
const SPEC_JOBS: i64 = 200;

/// The UI's routes (merged into [`crate::http::router`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/ui/tail.js", get(tail_js))
        .route("/specs/new", get(new_form).post(create))
        .route("/specs/{name}", get(spec_page))
        .route("/specs/{name}/edit", get(edit_form).post(edit))
        .route("/specs/{name}/delete", get(delete_form).post(delete))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/log.txt", get(log_txt))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/retry", post(retry))
        .layer(Extension(Sessions::default()))
}

/// Signed-in sessions, by the sha256 of their id.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<[u8; 32], Session>>>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(***)")
    }
}

#[derive(Clone)]
struct Session {
    role: Role,
    csrf: String,
    expires: Instant,
}

fn random_hex(bytes: usize) -> Result<String, std::io::Error> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

impl Sessions {
    /// A new session for `role`: (cookie value, CSRF token).
    fn start(&self, role: Role) -> Result<(String, String), std::io::Error> {
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            Sha256::digest(id.as_bytes()).into(),
            Session {
                role,
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Ok((id, csrf))
    }

    fn get(&self, id: &str) -> Option<Session> {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}

/// Who a request is: its role, and for a session its id and CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    pub role: Role,
    pub csrf: Option<String>,
    session: Option<String>,
}

type UiResult = Result<Response, Response>;

/// An HTML answer with the UI's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// 303 See Other to `to` (a path of ours).
fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut());
    r
}

fn fail(who: Option<&Who>, status: StatusCode, msg: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    html(status, pages::message(who, title, msg))
}

fn internal(who: &Who, e: ServiceError) -> Response {
    eprintln!("kiln serve: {e}");
    fail(
        Some(who),
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
    )
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The request's identity: the bearer header if there is one (an invalid
/// one is a 401), else the session cookie; neither: to `/login` (browsers)
/// or a 401.
fn who(state: &AppState, sessions: &Sessions, headers: &HeaderMap) -> Result<Who, Response> {
    if headers.contains_key(header::AUTHORIZATION) {
        return match state.tokens.authorize(headers, Role::Viewer) {
            Ok(role) => Ok(Who {
                role,
                csrf: None,
                session: None,
            }),
            Err(e) => Err(e.into_response()),
        };
    }
    if let Some(id) = cookie_value(headers, COOKIE) {
        if let Some(s) = sessions.get(id) {
            return Ok(Who {
                role: s.role,
                csrf: Some(s.csrf),
                session: Some(id.to_string()),
            });
        }
    }
    if wants_html(headers) {
        return Err(redirect("/login"));
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "sign in at /login, or send a valid bearer token\n",
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(r)
}

/// Whether the request comes from one of our own pages: `Sec-Fetch-Site`
/// (when sent) is same-origin or none, and `Origin` (when sent) is this host.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!(origin_host, Some(o) if !host.is_empty() && o.eq_ignore_ascii_case(host))
}

/// The CSRF check of a form POST: the session's token in `csrf`, and
/// [`same_origin`]. Bearer requests carry no ambient credential: no token.
pub(crate) fn check_csrf(who: &Who, headers: &HeaderMap, form: &Form) -> Result<(), Response> {
    let Some(expected) = who.csrf.as_deref() else {
        return if who.session.is_none() {
            Ok(())
        } else {
            Err(csrf_refused(who))
        };
    };
    let given = form.get("csrf");
    let ok: bool = given.as_bytes().ct_eq(expected.as_bytes()).into();
    if !ok || given.is_empty() || !same_origin(headers) {
        return Err(csrf_refused(who));
    }
    Ok(())
}

fn csrf_refused(who: &Who) -> Response {
    fail(
        Some(who),
        StatusCode::FORBIDDEN,
        "this form is out of date or did not come from this site (CSRF check failed): reload the page and try again",
    )
}

/// A state-changing form POST: signed in, as admin, CSRF-checked.
fn writer(
    state: &AppState,
    sessions: &Sessions,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Who, Form), Response> {
    let w = who(state, sessions, headers)?;
    let form = Form::parse(body);
    check_csrf(&w, headers, &form)?;
    need_admin(&w)?;
    Ok((w, form))
}

fn need_admin(w: &Who) -> Result<(), Response> {
    if w.role != Role::Admin {
        return Err(fail(
            Some(w),
            StatusCode::FORBIDDEN,
            "this token may only read; writing needs the admin token",
        ));
    }
    Ok(())
}

async fn tail_js() -> Response {
    let mut r = pages::TAIL_JS.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn login_form() -> Response {
    html(StatusCode::OK, pages::login(None))
}

async fn login(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    body: Bytes,
) -> UiResult {
    if !same_origin(&headers) {
        return Err(fail(
            None,
            StatusCode::FORBIDDEN,
            "sign-in from another site refused",
        ));
    }
    let form = Form::parse(&body);
    let Some(role) = state.tokens.check(form.get("token").trim()) else {
        return Err(html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("that token is not valid")),
        ));
    };
    let (id, _csrf) = sessions.start(role).map_err(|e| {
        eprintln!("kiln serve: starting a session: {e}");
        fail(None, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })?;
    let mut r = redirect("/");
    // `Secure` when a TLS-terminating proxy says the client used https.
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if https { "; Secure" } else { "" }
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex is a valid header"),
    );
    Ok(r)
}

async fn logout(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    body: Bytes,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    check_csrf(&w, &headers, &Form::parse(&body))?;
    if let Some(id) = &w.session {
        sessions.end(id);
    }
    let mut r = redirect("/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kiln_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(r)
}

async fn index(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    let specs = state
        .store
        .list_specs()
        .await
        .map_err(|e| internal(&w, e))?;
    Ok(html(StatusCode::OK, pages::index(&w, &specs)))
}

async fn new_form(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    need_admin(&w)?;
    Ok(html(
        StatusCode::OK,
        pages::spec_form(&w, &SpecForm::new_default(), false, None),
    ))
}

/// The form as the API's input, validated the API's way (the same
/// functions, so the messages are the CLI's).
fn validate(
    state: &AppState,
    f: &SpecForm,
    stored: SpecInput,
) -> Result<crate::spec_input::Rendered, String> {
    validate_name(&f.name)?;
    let input = f.apply(stored)?;
    let image = state.registry.as_ref().map(|r| r.image_name(&f.name));
    input.render(image.as_deref())
}

async fn create(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    body: Bytes,
) -> UiResult {
    let (w, form) = writer(&state, &sessions, &headers, &body)?;
    let f = SpecForm::from_form(&form);
    let invalid = |msg: &str| {
        html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::spec_form(&w, &f, false, Some(msg)),
        )
    };
    let rendered = validate(&state, &f, SpecInput::default()).map_err(|m| invalid(&m))?;
    match state
        .store
        .create_spec(&f.name, &rendered)
        .await
        .map_err(|e| internal(&w, e))?
    {
        Some((_, job)) => Ok(redirect(&format!("/jobs/{}", job.id))),
        None => Err(html(
            StatusCode::CONFLICT,
            pages::spec_form(
                &w,
                &f,
                false,
                Some(&format!(
                    "a spec named `{}` exists; edit it to add a revision",
                    f.name
                )),
            ),
        )),
    }
}

async fn spec_page(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    let store = &state.store;
    let Some(s) = store.get_spec(&name).await.map_err(|e| internal(&w, e))? else {
        return Err(no_spec(&w, &name));
    };
    let jobs = store
        .jobs_of_spec(&name, SPEC_JOBS)
        .await
        .map_err(|e| internal(&w, e))?;
    let input = store
        .latest_input(&name)
        .await
        .map_err(|e| internal(&w, e))?;
    Ok(html(
        StatusCode::OK,
        pages::spec_detail(&w, &s, &jobs, input.as_deref()),
    ))
}

fn no_spec(w: &Who, name: &str) -> Response {
    fail(
        Some(w),
        StatusCode::NOT_FOUND,
        &format!("no spec named `{name}`"),
    )
}

async fn edit_form(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    need_admin(&w)?;
    let Some(input) = state
        .store
        .latest_input(&name)
        .await
        .map_err(|e| internal(&w, e))?
    else {
        return Err(no_spec(&w, &name));
    };
    let input: SpecInput = serde_json::from_str(&input).unwrap_or_default();
    let f = SpecForm::from_input(&name, &input);
    Ok(html(StatusCode::OK, pages::spec_form(&w, &f, true, None)))
}

async fn edit(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> UiResult {
    let (w, form) = writer(&state, &sessions, &headers, &body)?;
    let mut f = SpecForm::from_form(&form);
    // The name is the URL's: a spec's name cannot change.
    f.name = name.clone();
    let Some(stored) = state
        .store
        .latest_input(&name)
        .await
        .map_err(|e| internal(&w, e))?
    else {
        return Err(no_spec(&w, &name));
    };
    let stored: SpecInput = serde_json::from_str(&stored).unwrap_or_default();
    let rendered = validate(&state, &f, stored).map_err(|m| {
        html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::spec_form(&w, &f, true, Some(&m)),
        )
    })?;
    match state
        .store
        .add_revision(&name, &rendered)
        .await
        .map_err(|e| internal(&w, e))?
    {
        Some((_, job)) => Ok(redirect(&format!("/jobs/{}", job.id))),
        None => Err(no_spec(&w, &name)),
    }
}

async fn delete_form(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    need_admin(&w)?;
    if state
        .store
        .get_spec(&name)
        .await
        .map_err(|e| internal(&w, e))?
        .is_none()
    {
        return Err(no_spec(&w, &name));
    }
    Ok(html(StatusCode::OK, pages::confirm_delete(&w, &name)))
}

async fn delete(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> UiResult {
    let (w, _) = writer(&state, &sessions, &headers, &body)?;
    if state
        .store
        .delete_spec(&name)
        .await
        .map_err(|e| internal(&w, e))?
    {
        Ok(redirect("/"))
    } else {
        Err(no_spec(&w, &name))
    }
}

fn job_id(w: &Who, id: &str) -> Result<i64, Response> {
    id.parse()
        .map_err(|_| fail(Some(w), StatusCode::NOT_FOUND, &format!("no job `{id}`")))
}

fn no_job(w: &Who, id: i64) -> Response {
    fail(Some(w), StatusCode::NOT_FOUND, &format!("no job {id}"))
}

/// The job named in the path, with its whole log (404 when there is none).
async fn job_with_log(
    state: &AppState,
    w: &Who,
    id: &str,
) -> Result<(i64, crate::store::Job, Vec<String>), Response> {
    let id = job_id(w, id)?;
    let store = &state.store;
    let Some(j) = store.get_job(id).await.map_err(|e| internal(w, e))? else {
        return Err(no_job(w, id));
    };
    let lines = store
        .log(id, None)
        .await
        .map_err(|e| internal(w, e))?
        .unwrap_or_default();
    Ok((id, j, lines))
}

async fn job_page(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    let (_, j, lines) = job_with_log(&state, &w, &id).await?;
    let start = lines.len().saturating_sub(PAGE_LOG_LINES);
    Ok(html(
        StatusCode::OK,
        pages::job(&w, &j, &lines[start..], lines.len()),
    ))
}

#[derive(Deserialize)]
struct LogQuery {
    after: Option<usize>,
}

/// The whole log as a download, or (`?after=N`) the lines after the first
/// N, for the live tail; `X-Kiln-Log-Lines` is the log's length and
/// `X-Kiln-Job-State` and `-Phase` the job's state and phase.
async fn log_txt(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> UiResult {
    let w = who(&state, &sessions, &headers)?;
    let (id, j, lines) = job_with_log(&state, &w, &id).await?;
    let from = q.after.unwrap_or(0).min(lines.len());
    let mut text = String::new();
    for l in &lines[from..] {
        text.push_str(l);
        text.push('\n');
    }
    let mut r = text.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    secure_headers(h);
    h.insert("x-kiln-log-lines", HeaderValue::from(lines.len()));
    if let Ok(v) = HeaderValue::from_str(&j.state) {
        h.insert("x-kiln-job-state", v);
    }
    if let Ok(v) = HeaderValue::from_str(j.phase.as_deref().unwrap_or("")) {
        h.insert("x-kiln-job-phase", v);
    }
    if q.after.is_none() {
        let name = format!("attachment; filename=\"kiln-job-{id}.log\"");
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&name).expect("ASCII"),
        );
    }
    Ok(r)
}

async fn cancel(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let (w, _) = writer(&state, &sessions, &headers, &body)?;
    let id = job_id(&w, &id)?;
    let t = state.store.cancel(id).await.map_err(|e| internal(&w, e))?;
    transition(&w, t, id).map(|_| redirect(&format!("/jobs/{id}")))
}

async fn retry(
    State(state): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let (w, _) = writer(&state, &sessions, &headers, &body)?;
    let id = job_id(&w, &id)?;
    let t = state.store.retry(id).await.map_err(|e| internal(&w, e))?;
    transition(&w, t, id).map(|new| redirect(&format!("/jobs/{new}")))
}

fn transition(w: &Who, t: Transition<crate::store::JobBrief>, id: i64) -> Result<i64, Response> {
    match t {
        Transition::Done(b) => Ok(b.id),
        Transition::NotFound => Err(no_job(w, id)),
        Transition::Conflict(m) => Err(fail(Some(w), StatusCode::CONFLICT, &m)),
    }
}

#[cfg(test)]
mod tests;
