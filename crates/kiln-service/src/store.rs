//! The service's state in SQL (SQLite or Postgres through sqlx's `Any`
//! driver, runtime queries only): specs, their revisions, build jobs and
//! job logs. Every statement uses `$N` placeholders, which both backends
//! accept; where the dialects differ (DDL, `SKIP LOCKED`) there is one
//! text per backend.
//!
//! Writes that belong together run in one transaction whose first
//! statement is a write, so SQLite takes its write lock up front and never
//! has to upgrade a read lock (which could fail with "database is locked").

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::events::Events;
use crate::spec_input::Rendered;
use crate::ServiceError;

/// Job states.
pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";
pub const CANCELLED: &str = "cancelled";

type Result<T> = std::result::Result<T, ServiceError>;

/// Schema migrations, applied in order; never edit a released one, add one.
/// (version, SQLite DDL, Postgres DDL); statements separated by `;`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "CREATE TABLE specs (name TEXT PRIMARY KEY, created BIGINT NOT NULL);
     CREATE TABLE revisions (spec TEXT NOT NULL, number BIGINT NOT NULL, input TEXT NOT NULL,
        toml TEXT NOT NULL, content_hash TEXT NOT NULL, created BIGINT NOT NULL,
        PRIMARY KEY (spec, number));
     CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, spec TEXT NOT NULL,
        revision BIGINT NOT NULL, state TEXT NOT NULL, phase TEXT, image TEXT, digest TEXT,
        worker TEXT, lease_until BIGINT, created BIGINT NOT NULL, started BIGINT,
        finished BIGINT, error TEXT, reused_from BIGINT);
     CREATE INDEX jobs_state ON jobs (state, id);
     CREATE INDEX jobs_spec ON jobs (spec, id);
     CREATE TABLE job_logs (job_id BIGINT NOT NULL, seq BIGINT NOT NULL, line TEXT NOT NULL,
        PRIMARY KEY (job_id, seq))",
        "CREATE TABLE specs (name TEXT PRIMARY KEY, created BIGINT NOT NULL);
     CREATE TABLE revisions (spec TEXT NOT NULL, number BIGINT NOT NULL, input TEXT NOT NULL,
        toml TEXT NOT NULL, content_hash TEXT NOT NULL, created BIGINT NOT NULL,
        PRIMARY KEY (spec, number));
     CREATE TABLE jobs (id BIGSERIAL PRIMARY KEY, spec TEXT NOT NULL,
        revision BIGINT NOT NULL, state TEXT NOT NULL, phase TEXT, image TEXT, digest TEXT,
        worker TEXT, lease_until BIGINT, created BIGINT NOT NULL, started BIGINT,
        finished BIGINT, error TEXT, reused_from BIGINT);
     CREATE INDEX jobs_state ON jobs (state, id);
     CREATE INDEX jobs_spec ON jobs (spec, id);
     CREATE TABLE job_logs (job_id BIGINT NOT NULL, seq BIGINT NOT NULL, line TEXT NOT NULL,
        PRIMARY KEY (job_id, seq))",
    ),
    // Jobs that must build even when the same content was built before
    // (webhook rebuilds, prebuilt images whose tag may have moved).
    (
        2,
        "ALTER TABLE jobs ADD COLUMN no_reuse BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN no_reuse BIGINT NOT NULL DEFAULT 0",
    ),
];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A job's id and state, as returned with a new revision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobBrief {
    pub id: i64,
    pub state: String,
}

/// A spec as `GET /api/v1/specs/{name}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SpecSummary {
    pub name: String,
    pub revision: i64,
    pub current_image: Option<String>,
    pub latest_job: Option<JobBrief>,
}

/// One job row.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub spec: String,
    pub revision: i64,
    pub state: String,
    pub phase: Option<String>,
    pub image: Option<String>,
    pub digest: Option<String>,
    pub created: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub error: Option<String>,
}

/// A job a worker has claimed, with what it needs to build.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub spec: String,
    pub revision: i64,
    pub toml: String,
    pub content_hash: String,
    /// The client's JSON of the revision ([`crate::spec_input::SpecInput`]).
    pub input: String,
    /// Build even when an earlier job built the same content.
    pub no_reuse: bool,
}

/// What cancel or retry found.
#[derive(Debug, PartialEq)]
pub enum Transition<T> {
    Done(T),
    NotFound,
    /// The job is in a state that does not allow it.
    Conflict(String),
}

/// A spec with its latest revision, current image and latest job, in one
/// query (the list page asks for every spec at once; one query per spec
/// made a list of 100 specs take ~300 ms under 50 clients).
const SPEC_SUMMARY: &str = "SELECT s.name,
        (SELECT MAX(number) FROM revisions r WHERE r.spec = s.name),
        (SELECT j.image || '@' || j.digest FROM jobs j
          WHERE j.spec = s.name AND j.state = 'succeeded'
            AND j.image IS NOT NULL AND j.digest IS NOT NULL
          ORDER BY j.id DESC LIMIT 1),
        (SELECT j.id FROM jobs j WHERE j.spec = s.name ORDER BY j.id DESC LIMIT 1),
        (SELECT j.state FROM jobs j WHERE j.spec = s.name ORDER BY j.id DESC LIMIT 1)
     FROM specs s";

fn spec_summary(row: &AnyRow) -> Result<SpecSummary> {
    let revision: Option<i64> = row.try_get(1)?;
    let job_id: Option<i64> = row.try_get(3)?;
    let job_state: Option<String> = row.try_get(4)?;
    Ok(SpecSummary {
        name: row.try_get(0)?,
        revision: revision.unwrap_or(0),
        current_image: row.try_get(2)?,
        latest_job: match (job_id, job_state) {
            (Some(id), Some(state)) => Some(JobBrief { id, state }),
            _ => None,
        },
    })
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
    /// Wakes this process's followers of a job's events after each write.
    events: Events,
    /// SQLite admits one writer at a time and makes the others wait in its
    /// busy handler, which sleeps in steps of up to 100 ms: under 50
    /// concurrent clients that was the API's p99. This process's writers
    /// queue here instead (FIFO, no sleeps); the busy handler still covers
    /// writers in other processes. Postgres needs no such gate.
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Store {
    /// Connect (creating a SQLite file when the URL says `mode=rwc`) and
    /// migrate.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        let mut options = AnyPoolOptions::new()
            .max_connections(if postgres { 8 } else { 4 })
            .acquire_timeout(Duration::from_secs(30));
        if !postgres {
            // WAL with synchronous=NORMAL: a commit is durable once it is in
            // the WAL, which survives a killed process (what the service
            // promises); only a power cut can lose the last commits. FULL
            // would fsync on every log line.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA synchronous=NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await?;
        if !postgres {
            sqlx::query("PRAGMA journal_mode=WAL")
                .fetch_all(&pool)
                .await?;
        }
        let store = Store {
            pool,
            postgres,
            events: Events::default(),
            write_gate: (!postgres).then(|| Arc::new(tokio::sync::Mutex::new(()))),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Wait for this process's turn to write (SQLite only; see `write_gate`).
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_gate {
            Some(gate) => Some(gate.lock().await),
            None => None,
        }
    }

    async fn migrate(&self) -> Result<()> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (version, sqlite, pg) in MIGRATIONS {
            if *version <= current {
                continue;
            }
            let ddl = if self.postgres { pg } else { sqlite };
            for stmt in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Create a spec with revision 1 and its job. `None`: the name is taken.
    /// With `no_reuse`, the revision's jobs never take an earlier job's
    /// image (a prebuilt image is resolved each time: its tag may move).
    pub async fn create_spec(&self, name: &str, r: &Rendered) -> Result<Option<(i64, JobBrief)>> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO specs (name, created) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let rev = insert_revision(&mut tx, name, &r.input, &r.toml, &r.content_hash, now).await?;
        let job = insert_job(&mut tx, name, rev, &r.content_hash, now, r.no_reuse).await?;
        tx.commit().await?;
        Ok(Some((rev, job)))
    }

    /// A new revision of an existing spec, and its job. `None`: no such spec.
    pub async fn add_revision(&self, name: &str, r: &Rendered) -> Result<Option<(i64, JobBrief)>> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        // A write first (see the module docs); it also checks the spec exists.
        let exists = sqlx::query("UPDATE specs SET created = created WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if exists == 0 {
            return Ok(None);
        }
        let rev = insert_revision(&mut tx, name, &r.input, &r.toml, &r.content_hash, now).await?;
        let job = insert_job(&mut tx, name, rev, &r.content_hash, now, r.no_reuse).await?;
        tx.commit().await?;
        Ok(Some((rev, job)))
    }

    /// Delete a spec with its revisions, jobs and logs; a running build
    /// notices at its next heartbeat and is killed. `false`: no such spec.
    pub async fn delete_spec(&self, name: &str) -> Result<bool> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM specs WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        for stmt in [
            "DELETE FROM job_logs WHERE job_id IN (SELECT id FROM jobs WHERE spec = $1)",
            "DELETE FROM jobs WHERE spec = $1",
            "DELETE FROM revisions WHERE spec = $1",
        ] {
            sqlx::query(stmt).bind(name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn list_specs(&self) -> Result<Vec<SpecSummary>> {
        let rows = sqlx::query(&format!("{SPEC_SUMMARY} ORDER BY s.name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(spec_summary).collect()
    }

    pub async fn get_spec(&self, name: &str) -> Result<Option<SpecSummary>> {
        let row = sqlx::query(&format!("{SPEC_SUMMARY} WHERE s.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(spec_summary).transpose()
    }

    /// The client's JSON of a spec's latest revision.
    pub async fn latest_input(&self, name: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT input FROM revisions WHERE spec = $1 ORDER BY number DESC LIMIT 1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    pub async fn get_job(&self, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(
            "SELECT id, spec, revision, state, phase, image, digest, created, started, finished, error
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| job_from_row(&r)).transpose()
    }

    /// A spec's jobs, newest first (at most `limit`), for the web UI.
    pub(crate) async fn jobs_of_spec(&self, name: &str, limit: i64) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT id, spec, revision, state, phase, image, digest, created, started, finished, error
             FROM jobs WHERE spec = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(name)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// A job's log lines (the last `tail` when given). `None`: no such job.
    pub async fn log(&self, id: i64, tail: Option<i64>) -> Result<Option<Vec<String>>> {
        if self.get_job(id).await?.is_none() {
            return Ok(None);
        }
        let rows = match tail {
            Some(n) => {
                sqlx::query(
                    "SELECT line FROM (SELECT seq, line FROM job_logs WHERE job_id = $1
                     ORDER BY seq DESC LIMIT $2) t ORDER BY seq",
                )
                .bind(id)
                .bind(n.max(0))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT line FROM job_logs WHERE job_id = $1 ORDER BY seq")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let lines = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Some(lines))
    }

    /// Up to `limit` log lines of a job after line `after`, with their
    /// numbers (1, 2, …): what `GET /api/v1/jobs/{id}/events` streams.
    pub async fn log_after(&self, id: i64, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT seq, line FROM job_logs WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// This process's notifications of changes to jobs (see [`Events`]).
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Append lines to a job's log, durably, in order.
    pub async fn append_log(&self, id: i64, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        for line in lines {
            append_log_line(&mut tx, id, line).await?;
        }
        tx.commit().await?;
        self.events.notify(id);
        Ok(())
    }

    /// Cancel a queued or running job (a running build is killed by its
    /// worker at the next heartbeat).
    pub async fn cancel(&self, id: i64) -> Result<Transition<JobBrief>> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', phase = NULL, finished = $2, lease_until = NULL
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            drop(tx);
            return Ok(match self.get_job(id).await? {
                None => Transition::NotFound,
                Some(j) => Transition::Conflict(format!(
                    "job {id} is {}; only queued or running jobs can be cancelled",
                    j.state
                )),
            });
        }
        append_log_line(&mut tx, id, "cancelled through the API").await?;
        tx.commit().await?;
        self.events.notify(id);
        Ok(Transition::Done(JobBrief {
            id,
            state: CANCELLED.into(),
        }))
    }

    /// A new job for a finished job's spec revision.
    pub async fn retry(&self, id: i64) -> Result<Transition<JobBrief>> {
        let Some(job) = self.get_job(id).await? else {
            return Ok(Transition::NotFound);
        };
        if job.state == QUEUED || job.state == RUNNING {
            return Ok(Transition::Conflict(format!(
                "job {id} is {}; only finished jobs can be retried",
                job.state
            )));
        }
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        // A write first (see the module docs): lock the spec's row.
        let exists = sqlx::query("UPDATE specs SET created = created WHERE name = $1")
            .bind(&job.spec)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if exists == 0 {
            return Ok(Transition::NotFound);
        }
        let hash: String =
            sqlx::query("SELECT content_hash FROM revisions WHERE spec = $1 AND number = $2")
                .bind(&job.spec)
                .bind(job.revision)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let no_reuse: i64 = sqlx::query("SELECT no_reuse FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let brief = insert_job(&mut tx, &job.spec, job.revision, &hash, now, no_reuse != 0).await?;
        append_log_line(&mut tx, brief.id, &format!("retry of job {id}")).await?;
        tx.commit().await?;
        Ok(Transition::Done(brief))
    }

    /// Every spec's name with the client's JSON of its latest revision.
    pub async fn latest_inputs(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT r.spec, r.input FROM revisions r
             WHERE r.number = (SELECT MAX(number) FROM revisions x WHERE x.spec = r.spec)
             ORDER BY r.spec",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Queue a build of a spec's latest revision that does not reuse an
    /// earlier image (its sources changed: a webhook), saying `why` in its
    /// log. A job of that revision still waiting in the queue is returned
    /// instead of a second one. `None`: no such spec.
    pub async fn rebuild(&self, spec: &str, why: &str) -> Result<Option<JobBrief>> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        // A write first (see the module docs): lock the spec's row.
        let exists = sqlx::query("UPDATE specs SET created = created WHERE name = $1")
            .bind(spec)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if exists == 0 {
            return Ok(None);
        }
        let Some(rev) = sqlx::query(
            "SELECT number, content_hash FROM revisions WHERE spec = $1
             ORDER BY number DESC LIMIT 1",
        )
        .bind(spec)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let (number, hash): (i64, String) = (rev.try_get(0)?, rev.try_get(1)?);
        let waiting = sqlx::query(
            "SELECT id FROM jobs WHERE spec = $1 AND revision = $2 AND state = 'queued'
             AND no_reuse = 1 ORDER BY id LIMIT 1",
        )
        .bind(spec)
        .bind(number)
        .fetch_optional(&mut *tx)
        .await?;
        let brief = match waiting {
            Some(r) => JobBrief {
                id: r.try_get(0)?,
                state: QUEUED.into(),
            },
            None => insert_job(&mut tx, spec, number, &hash, now, true).await?,
        };
        append_log_line(&mut tx, brief.id, why).await?;
        tx.commit().await?;
        self.events.notify(brief.id);
        Ok(Some(brief))
    }

    /// Claim the oldest queued job for `worker`, holding it until
    /// `lease_until` (renewed by [`Store::heartbeat`]).
    pub async fn claim(&self, worker: &str, lease_until: i64) -> Result<Option<Claimed>> {
        let sql = if self.postgres {
            "UPDATE jobs SET state = 'running', phase = 'starting', worker = $1, started = $2,
                lease_until = $3
             WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1
                         FOR UPDATE SKIP LOCKED)
             RETURNING id, spec, revision, no_reuse"
        } else {
            "UPDATE jobs SET state = 'running', phase = 'starting', worker = $1, started = $2,
                lease_until = $3
             WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1)
             RETURNING id, spec, revision, no_reuse"
        };
        let turn = self.write_turn().await;
        let row = sqlx::query(sql)
            .bind(worker)
            .bind(now_ms())
            .bind(lease_until)
            .fetch_optional(&self.pool)
            .await?;
        drop(turn);
        let Some(row) = row else {
            return Ok(None);
        };
        let (id, spec, revision): (i64, String, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let no_reuse: i64 = row.try_get(3)?;
        self.events.notify(id);
        let rev = sqlx::query(
            "SELECT toml, content_hash, input FROM revisions WHERE spec = $1 AND number = $2",
        )
        .bind(&spec)
        .bind(revision)
        .fetch_optional(&self.pool)
        .await?;
        let Some(rev) = rev else {
            // The spec was deleted under us; nothing to build.
            self.finish(id, worker, FAILED, None, None, Some("spec was deleted"))
                .await?;
            return Ok(None);
        };
        Ok(Some(Claimed {
            id,
            spec,
            revision,
            toml: rev.try_get(0)?,
            content_hash: rev.try_get(1)?,
            input: rev.try_get(2)?,
            no_reuse: no_reuse != 0,
        }))
    }

    /// Renew a running job's lease. `false`: the job is no longer ours to
    /// run (cancelled, deleted, or re-queued after our lease ran out).
    pub async fn heartbeat(&self, id: i64, worker: &str, lease_until: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let n = sqlx::query(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND worker = $3 AND state = 'running'",
        )
        .bind(lease_until)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn set_phase(&self, id: i64, worker: &str, phase: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "UPDATE jobs SET phase = $1 WHERE id = $2 AND worker = $3 AND state = 'running'",
        )
        .bind(phase)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        self.events.notify(id);
        Ok(())
    }

    /// End a running job of `worker`'s. `false`: it was not ours any more
    /// (cancelled or deleted meanwhile), and is left as it is.
    pub async fn finish(
        &self,
        id: i64,
        worker: &str,
        state: &str,
        image: Option<&str>,
        digest: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let n = sqlx::query(
            "UPDATE jobs SET state = $1, phase = NULL, image = $2, digest = $3, error = $4,
                finished = $5, lease_until = NULL
             WHERE id = $6 AND worker = $7 AND state = 'running'",
        )
        .bind(state)
        .bind(image.map(str::to_string))
        .bind(digest.map(str::to_string))
        .bind(error.map(str::to_string))
        .bind(now_ms())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.events.notify(id);
        Ok(n == 1)
    }

    /// The image and digest of an earlier succeeded job of `spec` whose
    /// revision has this content hash.
    pub async fn reusable(
        &self,
        spec: &str,
        content_hash: &str,
    ) -> Result<Option<(i64, String, String)>> {
        let mut conn = self.pool.acquire().await?;
        find_reusable(&mut conn, spec, content_hash).await
    }

    /// Put running jobs whose lease ran out back in the queue (their worker
    /// died or lost the database), saying so in their logs.
    pub async fn requeue_expired(&self) -> Result<Vec<i64>> {
        let now = now_ms();
        let rows =
            sqlx::query("SELECT id, worker FROM jobs WHERE state = 'running' AND lease_until < $1")
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        let mut requeued = Vec::new();
        for r in rows {
            let id: i64 = r.try_get(0)?;
            let worker: Option<String> = r.try_get(1)?;
            let _turn = self.write_turn().await;
            let mut tx = self.pool.begin().await?;
            let n = sqlx::query(
                "UPDATE jobs SET state = 'queued', phase = NULL, worker = NULL, lease_until = NULL,
                    started = NULL
                 WHERE id = $1 AND state = 'running' AND lease_until < $2",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                let who = worker.unwrap_or_else(|| "?".into());
                append_log_line(
                    &mut tx,
                    id,
                    &format!("lease of worker {who} expired (worker gone?); job re-queued"),
                )
                .await?;
                requeued.push(id);
            }
            tx.commit().await?;
            self.events.notify(id);
        }
        Ok(requeued)
    }
}

fn job_from_row(r: &AnyRow) -> Result<Job> {
    Ok(Job {
        id: r.try_get(0)?,
        spec: r.try_get(1)?,
        revision: r.try_get(2)?,
        state: r.try_get(3)?,
        phase: r.try_get(4)?,
        image: r.try_get(5)?,
        digest: r.try_get(6)?,
        created: r.try_get(7)?,
        started: r.try_get(8)?,
        finished: r.try_get(9)?,
        error: r.try_get(10)?,
    })
}

async fn insert_revision(
    tx: &mut Transaction<'_, Any>,
    name: &str,
    input: &str,
    toml: &str,
    content_hash: &str,
    now: i64,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO revisions (spec, number, input, toml, content_hash, created)
         SELECT $1, COALESCE(MAX(number), 0) + 1, $2, $3, $4, $5 FROM revisions WHERE spec = $1
         RETURNING number",
    )
    .bind(name)
    .bind(input)
    .bind(toml)
    .bind(content_hash)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get(0)?)
}

async fn find_reusable(
    conn: &mut sqlx::AnyConnection,
    spec: &str,
    content_hash: &str,
) -> Result<Option<(i64, String, String)>> {
    let row = sqlx::query(
        "SELECT j.id, j.image, j.digest FROM jobs j
         JOIN revisions r ON r.spec = j.spec AND r.number = j.revision
         WHERE j.spec = $1 AND r.content_hash = $2 AND j.state = 'succeeded'
           AND j.image IS NOT NULL AND j.digest IS NOT NULL
         ORDER BY j.id DESC LIMIT 1",
    )
    .bind(spec)
    .bind(content_hash)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
        None => None,
    })
}

/// Queue a job for a revision, or, when an earlier revision of the spec
/// with the same content was built, record that build's image at once.
async fn insert_job(
    tx: &mut Transaction<'_, Any>,
    spec: &str,
    revision: i64,
    content_hash: &str,
    now: i64,
    no_reuse: bool,
) -> Result<JobBrief> {
    let reusable = if no_reuse {
        None
    } else {
        find_reusable(tx, spec, content_hash).await?
    };
    if let Some((from, image, digest)) = reusable {
        let id: i64 = sqlx::query(
            "INSERT INTO jobs (spec, revision, state, image, digest, created, started, finished,
                reused_from)
             VALUES ($1, $2, 'succeeded', $3, $4, $5, $5, $5, $6) RETURNING id",
        )
        .bind(spec)
        .bind(revision)
        .bind(&image)
        .bind(&digest)
        .bind(now)
        .bind(from)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
        append_log_line(
            tx,
            id,
            &format!(
                "reused {image}@{digest} from job {from}: same content (sha256 {content_hash}); nothing built"
            ),
        )
        .await?;
        return Ok(JobBrief {
            id,
            state: SUCCEEDED.into(),
        });
    }
    let id: i64 = sqlx::query(
        "INSERT INTO jobs (spec, revision, state, created, no_reuse)
         VALUES ($1, $2, 'queued', $3, $4) RETURNING id",
    )
    .bind(spec)
    .bind(revision)
    .bind(now)
    .bind(i64::from(no_reuse))
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    append_log_line(tx, id, &format!("queued: {spec} revision {revision}")).await?;
    Ok(JobBrief {
        id,
        state: QUEUED.into(),
    })
}

async fn append_log_line(tx: &mut sqlx::AnyConnection, id: i64, line: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_logs (job_id, seq, line)
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2 FROM job_logs WHERE job_id = $1",
    )
    .bind(id)
    .bind(line)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A revision as the API would store it.
    pub(crate) fn revision(
        input: &str,
        toml: &str,
        content_hash: &str,
        no_reuse: bool,
    ) -> Rendered {
        Rendered {
            input: input.into(),
            toml: toml.into(),
            content_hash: content_hash.into(),
            no_reuse,
        }
    }

    async fn sqlite() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let s = Store::open(&url).await.unwrap();
        // Opening again finds the schema in place.
        Store::open(&url).await.unwrap();
        (dir, s)
    }

    /// With `KILN_TEST_POSTGRES_URL` (a server whose user may create
    /// databases), the same checks run on a fresh Postgres database.
    async fn postgres() -> Option<Store> {
        let base = std::env::var("KILN_TEST_POSTGRES_URL").ok()?;
        sqlx::any::install_default_drivers();
        let db = format!(
            "kiln_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&base)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let url = format!("{prefix}/{db}");
        let s = Store::open(&url).await.unwrap();
        Store::open(&url).await.unwrap();
        Some(s)
    }

    static NEXT_DB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[tokio::test]
    async fn lifecycle_sqlite() {
        let (_d, s) = sqlite().await;
        lifecycle(s).await;
    }

    #[tokio::test]
    async fn lifecycle_postgres() {
        if let Some(s) = postgres().await {
            lifecycle(s).await;
        }
    }

    #[tokio::test]
    async fn expired_leases_are_requeued_sqlite() {
        let (_d, s) = sqlite().await;
        expired_leases_are_requeued(s).await;
    }

    #[tokio::test]
    async fn expired_leases_are_requeued_postgres() {
        if let Some(s) = postgres().await {
            expired_leases_are_requeued(s).await;
        }
    }

    #[tokio::test]
    async fn concurrent_claims_take_each_job_once_postgres() {
        if let Some(s) = postgres().await {
            concurrent_claims_take_each_job_once(s).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_take_each_job_once_sqlite() {
        let (_d, s) = sqlite().await;
        concurrent_claims_take_each_job_once(s).await;
    }

    async fn concurrent_claims_take_each_job_once(s: Store) {
        let mut ids = Vec::new();
        for i in 0..20 {
            let (_, j) = s
                .create_spec(
                    &format!("s{i}"),
                    &revision("{}", "t", &format!("h{i}"), false),
                )
                .await
                .unwrap()
                .unwrap();
            ids.push(j.id);
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(c) = s.claim(&format!("w{w}"), now_ms() + 30_000).await.unwrap() {
                    got.push(c.id);
                }
                got
            }));
        }
        let mut claimed = Vec::new();
        for t in tasks {
            claimed.extend(t.await.unwrap());
        }
        claimed.sort();
        assert_eq!(claimed, ids);
    }

    async fn lifecycle(s: Store) {
        let (rev, job) = s
            .create_spec("a", &revision("{}", "t1", "h1", false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((rev, job.state.as_str()), (1, QUEUED));
        assert!(s
            .create_spec("a", &revision("{}", "t1", "h1", false))
            .await
            .unwrap()
            .is_none());

        let c = s.claim("w", now_ms() + 30_000).await.unwrap().unwrap();
        assert_eq!((c.id, c.revision, c.toml.as_str()), (job.id, 1, "t1"));
        assert!(s.claim("w", now_ms() + 30_000).await.unwrap().is_none());
        assert!(s.heartbeat(c.id, "w", now_ms() + 30_000).await.unwrap());
        assert!(!s.heartbeat(c.id, "other", now_ms() + 30_000).await.unwrap());
        s.append_log(c.id, &["one".into(), "two".into()])
            .await
            .unwrap();
        assert!(s
            .finish(c.id, "w", SUCCEEDED, Some("h/a"), Some("sha256:1"), None)
            .await
            .unwrap());
        let sum = s.get_spec("a").await.unwrap().unwrap();
        assert_eq!(sum.current_image.as_deref(), Some("h/a@sha256:1"));

        // New content fails: current image stays.
        let (rev, j2) = s
            .add_revision("a", &revision("{}", "t2", "h2", false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((rev, j2.state.as_str()), (2, QUEUED));
        let c2 = s.claim("w", now_ms() + 30_000).await.unwrap().unwrap();
        s.finish(c2.id, "w", FAILED, None, None, Some("boom"))
            .await
            .unwrap();
        let sum = s.get_spec("a").await.unwrap().unwrap();
        assert_eq!(sum.current_image.as_deref(), Some("h/a@sha256:1"));
        assert_eq!(sum.latest_job.unwrap().state, FAILED);

        // Content equal to the succeeded revision: reused at once.
        let (rev, j3) = s
            .add_revision("a", &revision("{}", "t1", "h1", false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((rev, j3.state.as_str()), (3, SUCCEEDED));
        let j = s.get_job(j3.id).await.unwrap().unwrap();
        assert_eq!(j.digest.as_deref(), Some("sha256:1"));
        let log = s.log(j3.id, None).await.unwrap().unwrap();
        assert!(
            log[0].starts_with("reused h/a@sha256:1 from job"),
            "{log:?}"
        );

        // Logs, tail.
        let log = s.log(job.id, None).await.unwrap().unwrap();
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(
            s.log(job.id, Some(2)).await.unwrap().unwrap(),
            ["one", "two"]
        );
        assert!(s.log(999, None).await.unwrap().is_none());

        // Retry of the failed job, then cancel it; cancelling twice conflicts.
        let Transition::Done(r) = s.retry(c2.id).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.state, QUEUED);
        assert_eq!(
            s.cancel(r.id).await.unwrap(),
            Transition::Done(JobBrief {
                id: r.id,
                state: CANCELLED.into()
            })
        );
        assert!(matches!(
            s.cancel(r.id).await.unwrap(),
            Transition::Conflict(_)
        ));
        assert_eq!(s.cancel(12345).await.unwrap(), Transition::NotFound);

        assert_eq!(s.list_specs().await.unwrap().len(), 1);
        assert!(s.delete_spec("a").await.unwrap());
        assert!(!s.delete_spec("a").await.unwrap());
        assert!(s.get_spec("a").await.unwrap().is_none());
        assert!(s.get_job(job.id).await.unwrap().is_none());
        assert!(s
            .add_revision("a", &revision("{}", "t", "h", false))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn rebuilds_and_log_after_sqlite() {
        let (_d, s) = sqlite().await;
        rebuilds_and_log_after(s).await;
    }

    #[tokio::test]
    async fn rebuilds_and_log_after_postgres() {
        if let Some(s) = postgres().await {
            rebuilds_and_log_after(s).await;
        }
    }

    async fn rebuilds_and_log_after(s: Store) {
        let (_, j1) = s
            .create_spec("r", &revision("{\"name\":\"r\"}", "t", "h", false))
            .await
            .unwrap()
            .unwrap();
        let c = s.claim("w", now_ms() + 30_000).await.unwrap().unwrap();
        assert!(!c.no_reuse);
        assert_eq!(c.input, "{\"name\":\"r\"}");
        s.append_log(c.id, &["a".into(), "b".into()]).await.unwrap();
        s.finish(c.id, "w", SUCCEEDED, Some("h/r"), Some("sha256:1"), None)
            .await
            .unwrap();
        let after1 = s.log_after(j1.id, 1, 100).await.unwrap();
        assert_eq!(after1, [(2, "a".to_string()), (3, "b".to_string())]);
        assert_eq!(s.log_after(j1.id, 0, 1).await.unwrap().len(), 1);
        assert!(s.log_after(j1.id, 3, 100).await.unwrap().is_empty());

        // Same content, but a rebuild: queued, not reused; a second push
        // while it waits gets the same job.
        let j2 = s
            .rebuild("r", "queued by a test push")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(j2.state, QUEUED);
        let again = s.rebuild("r", "another push").await.unwrap().unwrap();
        assert_eq!(again.id, j2.id);
        let log = s.log(j2.id, None).await.unwrap().unwrap();
        assert!(log.iter().any(|l| l == "another push"), "{log:?}");
        let c2 = s.claim("w", now_ms() + 30_000).await.unwrap().unwrap();
        assert_eq!((c2.id, c2.no_reuse), (j2.id, true));
        assert!(s.rebuild("missing", "x").await.unwrap().is_none());
        assert_eq!(
            s.latest_inputs().await.unwrap(),
            [("r".to_string(), "{\"name\":\"r\"}".to_string())]
        );

        // A no-reuse revision is queued even with built content; its retry too.
        s.finish(c2.id, "w", FAILED, None, None, Some("x"))
            .await
            .unwrap();
        let (_, j3) = s
            .add_revision("r", &revision("{}", "t", "h", true))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(j3.state, QUEUED);
        s.cancel(j3.id).await.unwrap();
        let Transition::Done(j4) = s.retry(j3.id).await.unwrap() else {
            panic!()
        };
        assert_eq!(j4.state, QUEUED);
        // Reusable content, ordinary revision: reused at once.
        let (_, j5) = s
            .add_revision("r", &revision("{}", "t", "h", false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(j5.state, SUCCEEDED);
    }

    async fn expired_leases_are_requeued(s: Store) {
        let (_, job) = s
            .create_spec("b", &revision("{}", "t", "h", false))
            .await
            .unwrap()
            .unwrap();
        let c = s.claim("dead", now_ms() - 1).await.unwrap().unwrap();
        assert_eq!(s.requeue_expired().await.unwrap(), [c.id]);
        assert_eq!(s.get_job(job.id).await.unwrap().unwrap().state, QUEUED);
        let log = s.log(job.id, None).await.unwrap().unwrap();
        assert!(
            log.last().unwrap().contains("lease of worker dead expired"),
            "{log:?}"
        );
        // The dead worker's late report is ignored.
        assert!(!s
            .finish(c.id, "dead", SUCCEEDED, Some("x"), Some("y"), None)
            .await
            .unwrap());
        let c = s.claim("alive", now_ms() + 30_000).await.unwrap().unwrap();
        assert_eq!(c.id, job.id);
        assert!(s.requeue_expired().await.unwrap().is_empty());
    }
}
