//! Live job events: `GET /api/v1/jobs/{id}/events` as Server-Sent Events.
//!
//! The database is the source of truth: a follower reads new `job_logs`
//! rows after the last line it sent and the job's row, and sends
//!
//! - `event: log`, `id: <line number>`, `data: <the line>` per log line;
//! - `event: state`, `data: <the job JSON of GET /api/v1/jobs/{id}>` when
//!   the job's JSON changed (state, phase, image, …);
//!
//! and ends after the state event of a finished job (`succeeded`,
//! `failed`, `cancelled`) or when the job is deleted. It reads again when
//! this process writes to the job ([`Events`]: a `tokio` broadcast per
//! followed job, woken by every [`crate::Store`] write of this process: its
//! workers, cancel through the API) and every [`POLL`] regardless, for jobs
//! that workers of other processes or machines run. A client that
//! reconnects sends `Last-Event-ID` (or `?after=N`) and gets only later
//! lines.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::http::{job_json, ApiError, AppState, Role};
use crate::store::{Store, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED};

/// How often a follower reads the database without being woken.
pub const POLL: Duration = Duration::from_millis(250);
/// Log lines read per query.
const BATCH: i64 = 500;

/// Per job, a broadcast that wakes this process's followers of it. Only a
/// wake-up: what changed is read from the database.
#[derive(Clone, Default)]
pub struct Events {
    followed: Arc<Mutex<HashMap<i64, broadcast::Sender<()>>>>,
    /// The server is stopping: streams end (within [`POLL`]).
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.followed.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Events({n} followed)")
    }
}

impl Events {
    /// Be woken when this process writes to job `id`.
    pub fn subscribe(&self, id: i64) -> broadcast::Receiver<()> {
        let mut m = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        // Forget jobs nobody follows any more.
        m.retain(|_, tx| tx.receiver_count() > 0);
        m.entry(id)
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }

    /// End every stream: the server is stopping.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let m = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        for tx in m.values() {
            let _ = tx.send(());
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Job `id` changed (a log line, its state or phase).
    pub fn notify(&self, id: i64) {
        let mut m = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = m.get(&id) {
            if tx.send(()).is_err() {
                m.remove(&id);
            }
        }
    }
}

fn finished(state: &str) -> bool {
    state == SUCCEEDED || state == FAILED || state == CANCELLED
}

/// What a follower sends.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    /// A log line and its number.
    Log(i64, String),
    /// The job JSON.
    State(Value),
}

impl Out {
    fn event(self) -> Event {
        match self {
            Out::Log(seq, line) => Event::default().event("log").id(seq.to_string()).data(line),
            Out::State(v) => Event::default().event("state").data(v.to_string()),
        }
    }
}

/// One follower of one job.
struct Follow {
    store: Store,
    id: i64,
    /// The last log line sent.
    after: i64,
    last_state: Option<Value>,
    wake: broadcast::Receiver<()>,
    queue: VecDeque<Out>,
    first: bool,
    done: bool,
}

impl Follow {
    /// Queue what changed since the last read. The job is read before its
    /// log: a finished job's lines are all written before its final state,
    /// so none is missed before the stream ends.
    async fn read(&mut self) -> Result<(), crate::ServiceError> {
        let Some(job) = self.store.get_job(self.id).await? else {
            self.done = true; // deleted
            return Ok(());
        };
        loop {
            let lines = self.store.log_after(self.id, self.after, BATCH).await?;
            let n = lines.len() as i64;
            for (seq, line) in lines {
                self.after = seq;
                self.queue.push_back(Out::Log(seq, line));
            }
            if n < BATCH {
                break;
            }
        }
        let state = job_json(&job);
        if self.last_state.as_ref() != Some(&state) {
            // A run shorter than a poll went from queued to finished between
            // two reads: say that it ran (the job as it is, without what only
            // the end set), so every follower sees each state the job passed.
            let was_queued = self
                .last_state
                .as_ref()
                .is_some_and(|l| l["state"] == QUEUED);
            if was_queued && finished(&job.state) && job.started.is_some() {
                let mut running = state.clone();
                running["state"] = RUNNING.into();
                for end_only in ["finished", "image", "digest", "error"] {
                    running[end_only] = Value::Null;
                }
                self.queue.push_back(Out::State(running));
            }
            self.queue.push_back(Out::State(state.clone()));
            self.last_state = Some(state);
        }
        if finished(&job.state) {
            self.done = true;
        }
        Ok(())
    }

    /// Until this process writes to the job, or [`POLL`].
    async fn wait(&mut self) {
        tokio::select! {
            r = self.wake.recv() => {
                if let Err(broadcast::error::RecvError::Closed) = r {
                    tokio::time::sleep(POLL).await;
                }
                // Several writes, one read.
                while self.wake.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }

    async fn next(&mut self) -> Option<Out> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if !std::mem::replace(&mut self.first, false) {
                self.wait().await;
            }
            if self.store.events().is_closed() {
                return None;
            }
            if let Err(e) = self.read().await {
                eprintln!("kiln serve: events of job {}: {e}", self.id);
                self.done = true;
            }
        }
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Like `Last-Event-ID`, for clients that cannot set headers.
    after: Option<i64>,
}

/// The `Last-Event-ID` header, else `?after=`, else 0 (every line).
fn resume_from(headers: &HeaderMap, q: &EventsQuery) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(q.after)
        .unwrap_or(0)
        .max(0)
}

/// `GET /api/v1/jobs/{id}/events`.
pub async fn job_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Viewer)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`"));
    let id: i64 = id.parse().map_err(|_| not_found())?;
    // Subscribe before the first read: no write falls between the two.
    let wake = state.store.events().subscribe(id);
    if state.store.get_job(id).await?.is_none() {
        return Err(not_found());
    }
    let follow = Follow {
        store: state.store.clone(),
        id,
        after: resume_from(&headers, &q),
        last_state: None,
        wake,
        queue: VecDeque::new(),
        first: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        f.next().await.map(|o| (Ok::<_, Infallible>(o.event()), f))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn resume_point() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_from(&h, &EventsQuery { after: None }), 0);
        assert_eq!(resume_from(&h, &EventsQuery { after: Some(7) }), 7);
        h.insert("last-event-id", HeaderValue::from_static(" 12 "));
        assert_eq!(resume_from(&h, &EventsQuery { after: Some(7) }), 12);
        h.insert("last-event-id", HeaderValue::from_static("junk"));
        assert_eq!(resume_from(&h, &EventsQuery { after: None }), 0);
        h.insert("last-event-id", HeaderValue::from_static("-3"));
        assert_eq!(resume_from(&h, &EventsQuery { after: None }), 0);
    }

    async fn collect(mut f: Follow) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(o) = f.next().await {
            out.push(o);
        }
        out
    }

    fn follow(store: &Store, id: i64, after: i64) -> Follow {
        Follow {
            store: store.clone(),
            id,
            after,
            last_state: None,
            wake: store.events().subscribe(id),
            queue: VecDeque::new(),
            first: true,
            done: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_see_lines_and_the_final_state() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        let (_, j) = store
            .create_spec("e", &crate::store::tests::revision("{}", "t", "h", false))
            .await
            .unwrap()
            .unwrap();
        let f = follow(&store, j.id, 0);
        let task = tokio::spawn(collect(f));
        let c = store
            .claim("w", crate::store::now_ms() + 30_000)
            .await
            .unwrap()
            .unwrap();
        store.set_phase(c.id, "w", "building").await.unwrap();
        store
            .append_log(c.id, &["one".into(), "two".into()])
            .await
            .unwrap();
        store
            .finish(c.id, "w", SUCCEEDED, Some("h/e"), Some("sha256:1"), None)
            .await
            .unwrap();
        let events = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        let logs: Vec<_> = events
            .iter()
            .filter_map(|o| match o {
                Out::Log(n, l) => Some((*n, l.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(logs[1..], [(2, "one"), (3, "two")], "{events:#?}");
        let Some(Out::State(last)) = events.last() else {
            panic!("{events:#?}")
        };
        assert_eq!(last["state"], "succeeded", "{events:#?}");
        assert_eq!(last["digest"], "sha256:1", "{events:#?}");
        // Every state sent differs from the one before.
        let states: Vec<_> = events
            .iter()
            .filter(|o| matches!(o, Out::State(_)))
            .collect();
        assert!(states.windows(2).all(|w| w[0] != w[1]), "{events:#?}");

        // Resuming after line 2 gives line 3 only, then the final state.
        let events = collect(follow(&store, j.id, 2)).await;
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(events[0], Out::Log(3, "two".into()));
    }

    #[tokio::test]
    async fn notifications_wake_followers_only() {
        let ev = Events::default();
        ev.notify(1); // nobody follows: nothing happens
        let mut a = ev.subscribe(1);
        let mut b = ev.subscribe(2);
        ev.notify(1);
        assert!(a.try_recv().is_ok());
        assert!(b.try_recv().is_err());
        drop(a);
        drop(b);
        ev.notify(1); // the dropped follower's channel goes
        let mut c = ev.subscribe(3); // and so does job 2's
        assert_eq!(ev.followed.lock().unwrap().len(), 1);
        assert!(!ev.is_closed());
        ev.close();
        assert!(ev.is_closed() && c.try_recv().is_ok());
    }
}
