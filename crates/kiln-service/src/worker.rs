//! Build workers: claim a queued job, run `kiln build --push` for it as a
//! child process (its own process group), stream its output into the job
//! log, renew the job's lease while it runs and kill it when the job is
//! cancelled or deleted.
//!
//! A build is a subprocess so that a failing or panicking build cannot take
//! the service down, cancelling is killing a process group, and each build's
//! memory is returned when it ends.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::spec_input::{full_toml, SpecInput, TYPE_DOCKERFILE, TYPE_IMAGE, TYPE_PYTHON_ENV};
use crate::store::{now_ms, Claimed, Store, FAILED, SUCCEEDED};
use crate::ServiceError;

/// How long a claimed job stays ours without a heartbeat: 30 s, or
/// `KILN_SERVE_LEASE_SECS` (a shorter lease re-queues the jobs of a dead
/// worker sooner; it must stay well above [`HEARTBEAT`]).
pub(crate) fn lease_ms() -> i64 {
    std::env::var("KILN_SERVE_LEASE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s >= 2)
        .map_or(30_000, |s| s as i64 * 1000)
}
/// How often a running build renews its lease and checks for cancellation.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);
/// How often buffered log lines are written.
const LOG_FLUSH: Duration = Duration::from_millis(100);
/// How often an idle worker looks for a job.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often a worker re-queues jobs whose lease ran out.
const REQUEUE_EVERY: Duration = Duration::from_secs(10);
/// Log lines longer than this are cut.
const MAX_LINE: usize = 8 * 1024;
/// The most of a build's stdout (its JSON report) that is kept.
const MAX_STDOUT: usize = 16 * 1024 * 1024;
/// What `kiln build` prints on stderr at each phase with `KILN_PHASES=1`.
pub const PHASE_PREFIX: &str = "kiln-phase: ";

/// The phase a `kiln-phase: NAME` line announces (`resolving`, `fetching`,
/// `building`, `pushing`, or a later kiln's: lowercase letters and `-`).
pub fn parse_phase(line: &str) -> Option<&str> {
    let name = line.strip_prefix(PHASE_PREFIX)?.trim();
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    ok.then_some(name)
}

/// Where images go: `KILN_REGISTRY_ENDPOINT`, `KILN_REPO_PREFIX` and the
/// credentials handed to each build (`KILN_REGISTRY_USERNAME`/`_PASSWORD`).
#[derive(Clone, Default)]
pub struct RegistryConfig {
    pub endpoint: String,
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("username", &self.username.as_ref().map(|_| "***"))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RegistryConfig {
    /// From the environment; `None` without `KILN_REGISTRY_ENDPOINT`.
    pub fn from_env() -> Option<RegistryConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = var("KILN_REGISTRY_ENDPOINT")?;
        Some(RegistryConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            prefix: var("KILN_REPO_PREFIX")
                .unwrap_or_default()
                .trim_matches('/')
                .to_string(),
            username: var("KILN_REGISTRY_USERNAME"),
            password: var("KILN_REGISTRY_PASSWORD"),
        })
    }

    /// `<endpoint>/<prefix>/<spec>` (no prefix: `<endpoint>/<spec>`).
    pub fn image_name(&self, spec: &str) -> String {
        if self.prefix.is_empty() {
            format!("{}/{spec}", self.endpoint)
        } else {
            format!("{}/{}/{spec}", self.endpoint, self.prefix)
        }
    }

    /// A log line with URL credentials and the registry password masked.
    pub fn redact(&self, line: &str) -> String {
        let mut out = kiln_core::url::redact(line);
        if let Some(p) = self.password.as_deref().filter(|p| p.len() >= 4) {
            out = out.replace(p, "***");
        }
        out
    }
}

/// What every worker of a process shares.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The `kiln` binary builds run (`KILN_SERVE_KILN_BIN`, else this one).
    pub kiln_bin: PathBuf,
    /// Job work directories go under this.
    pub work_root: PathBuf,
    /// The builds' cache (`--cache`); `None`: the CLI's default.
    pub cache_dir: Option<PathBuf>,
    pub registry: RegistryConfig,
    /// Names this process in `jobs.worker` (host, pid and slot are added).
    pub id: String,
}

/// Run `slots` workers until `shutdown` turns true; a running build is
/// finished before its worker stops.
pub async fn run_workers(
    store: Store,
    cfg: Arc<WorkerConfig>,
    slots: usize,
    shutdown: watch::Receiver<bool>,
) {
    let mut handles = Vec::new();
    for slot in 0..slots.max(1) {
        let store = store.clone();
        let cfg = cfg.clone();
        let shutdown = shutdown.clone();
        handles.push(tokio::spawn(async move {
            worker_loop(store, cfg, slot, shutdown).await;
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

async fn worker_loop(
    store: Store,
    cfg: Arc<WorkerConfig>,
    slot: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = format!("{}/{slot}", cfg.id);
    let mut last_requeue: Option<tokio::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if last_requeue.is_none_or(|t| t.elapsed() >= REQUEUE_EVERY) {
            last_requeue = Some(tokio::time::Instant::now());
            match store.requeue_expired().await {
                Ok(ids) if !ids.is_empty() => {
                    eprintln!("kiln worker {me}: re-queued jobs with expired leases: {ids:?}")
                }
                Ok(_) => {}
                Err(e) => eprintln!("kiln worker {me}: re-queueing expired jobs: {e}"),
            }
        }
        let lease = now_ms() + lease_ms();
        match store.claim(&me, lease).await {
            Ok(Some(job)) => {
                let id = job.id;
                if let Err(e) = run_job(&store, &cfg, &me, job).await {
                    eprintln!("kiln worker {me}: job {id}: {e}");
                    let msg = format!("internal error: {e}");
                    let _ = store.append_log(id, std::slice::from_ref(&msg)).await;
                    let _ = store.finish(id, &me, FAILED, None, None, Some(&msg)).await;
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                eprintln!("kiln worker {me}: claiming a job: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// What the child printed that decides the job's outcome.
#[derive(Default)]
struct Outcome {
    stdout: String,
    last_error_line: Option<String>,
    lost: bool,
}

async fn run_job(
    store: &Store,
    cfg: &WorkerConfig,
    me: &str,
    job: Claimed,
) -> Result<(), ServiceError> {
    let id = job.id;
    let say = |line: String| async move { store.append_log(id, &[line]).await };

    let input: Option<SpecInput> = serde_json::from_str(&job.input).ok();
    let from_git = input
        .as_ref()
        .filter(|i| i.kind() == TYPE_PYTHON_ENV || i.kind() == TYPE_DOCKERFILE)
        .cloned();
    if let Some(i) = input.filter(|i| i.kind() == TYPE_IMAGE) {
        let reference = i.image.unwrap_or_default();
        return crate::prebuilt::run_job(store, cfg, me, &job, &reference).await;
    }

    let reusable = if job.no_reuse {
        None
    } else {
        store.reusable(&job.spec, &job.content_hash).await?
    };
    if let Some((from, image, digest)) = reusable {
        say(format!(
            "reused {image}@{digest} from job {from}: same content (sha256 {}); nothing built",
            job.content_hash
        ))
        .await?;
        store
            .finish(id, me, SUCCEEDED, Some(&image), Some(&digest), None)
            .await?;
        return Ok(());
    }

    let image = cfg.registry.image_name(&job.spec);
    let unique_tag = format!("r{}-{}", job.revision, &job.content_hash[..8]);
    let tags = vec![unique_tag.clone(), "latest".to_string()];
    let toml = full_toml(&job.toml, &image, &tags).map_err(ServiceError::Input)?;

    let dir = cfg.work_root.join(id.to_string());
    let _ = tokio::fs::remove_dir_all(&dir).await;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ServiceError::io(format!("creating {}", dir.display()), e))?;
    if let Some(i) = &from_git {
        store.set_phase(id, me, "fetching").await?;
        match crate::git_source::prepare(i, cfg.cache_dir.clone(), &dir).await {
            Ok(line) => say(line).await?,
            Err(e) => {
                let msg = cfg.registry.redact(&e.to_string());
                say(msg.clone()).await?;
                store.finish(id, me, FAILED, None, None, Some(&msg)).await?;
                return Ok(());
            }
        }
    }
    let spec_path = dir.join("kiln.toml");
    tokio::fs::write(&spec_path, &toml)
        .await
        .map_err(|e| ServiceError::io(format!("writing {}", spec_path.display()), e))?;

    say(format!(
        "worker {me}: building {} revision {} as {image}:{unique_tag} (and :latest)",
        job.spec, job.revision
    ))
    .await?;

    let mut cmd = kiln_command(cfg);
    cmd.arg("build")
        .arg(&spec_path)
        .args(["--push", "--quiet", "--json"]);
    if let Some(c) = &cfg.cache_dir {
        cmd.arg("--cache").arg(c);
    }
    cmd.current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("could not start {}: {e}", cfg.kiln_bin.display());
            say(msg.clone()).await?;
            store.finish(id, me, FAILED, None, None, Some(&msg)).await?;
            return Ok(());
        }
    };
    let pid = child.id();

    let (tx, mut rx) = mpsc::channel::<(bool, String)>(1024);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, true, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, false, tx.clone()));
    }
    drop(tx);

    let mut outcome = Outcome::default();
    let mut pending: Vec<String> = Vec::new();
    let mut open = true;
    let mut flush = tokio::time::interval(LOG_FLUSH);
    let mut beat = tokio::time::interval(HEARTBEAT);
    let status: ExitStatus = loop {
        tokio::select! {
            line = rx.recv(), if open => match line {
                Some((true, l)) => {
                    if outcome.stdout.len() + l.len() < MAX_STDOUT {
                        outcome.stdout.push_str(&l);
                        outcome.stdout.push('\n');
                    }
                }
                Some((false, l)) => {
                    // Phase lines set the job's phase and are logged as
                    // `phase: NAME`.
                    if let Some(phase) = parse_phase(&l) {
                        store.append_log(id, &pending).await?;
                        pending.clear();
                        let _ = store.set_phase(id, me, phase).await;
                        pending.push(format!("phase: {phase}"));
                        continue;
                    }
                    let l = cfg.registry.redact(&l);
                    if let Some(msg) = l.strip_prefix("error: ") {
                        outcome.last_error_line = Some(msg.to_string());
                    }
                    pending.push(l);
                }
                None => open = false,
            },
            st = child.wait(), if !open => break st.map_err(|e| ServiceError::io("waiting for the build".into(), e))?,
            _ = flush.tick() => {
                store.append_log(id, &pending).await?;
                pending.clear();
            }
            _ = beat.tick() => {
                let lease = now_ms() + lease_ms();
                match store.heartbeat(id, me, lease).await {
                    Ok(true) => {}
                    Ok(false) => if !outcome.lost {
                        outcome.lost = true;
                        kill_group(pid);
                    },
                    Err(e) => eprintln!("kiln worker {me}: heartbeat of job {id}: {e}"),
                }
            }
        }
    };
    store.append_log(id, &pending).await?;
    let _ = tokio::fs::remove_dir_all(&dir).await;

    if outcome.lost {
        // Cancelled or deleted: the job row says so already. A deleted
        // job's log is gone with it; write none for it.
        if store.get_job(id).await?.is_some() {
            say("build process killed: the job was cancelled".into()).await?;
        }
        return Ok(());
    }
    let report: Option<serde_json::Value> = serde_json::from_str(&outcome.stdout).ok();
    if status.success() {
        let digest = report
            .as_ref()
            .and_then(|r| r.get("digest"))
            .and_then(|d| d.as_str())
            .map(str::to_string);
        let Some(digest) = digest else {
            let msg = "the build succeeded but printed no digest".to_string();
            say(format!("{msg}; its output:\n{}", outcome.stdout)).await?;
            store.finish(id, me, FAILED, None, None, Some(&msg)).await?;
            return Ok(());
        };
        say(format!(
            "pushed {image}@{digest} (tags {unique_tag}, latest)"
        ))
        .await?;
        store
            .finish(id, me, SUCCEEDED, Some(&image), Some(&digest), None)
            .await?;
    } else {
        let msg = report
            .as_ref()
            .and_then(|r| r.pointer("/error/message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .or(outcome.last_error_line)
            .unwrap_or_else(|| format!("kiln build {status}"));
        let msg = cfg.registry.redact(&msg);
        say(format!("build failed ({status})")).await?;
        store.finish(id, me, FAILED, None, None, Some(&msg)).await?;
    }
    Ok(())
}

/// `kiln` (the configured binary) as builds and inspections run it: its
/// own process group, killed with its job; the registry credentials but
/// not the API's tokens or the webhook secret; phase lines on.
pub(crate) fn kiln_command(cfg: &WorkerConfig) -> Command {
    let mut cmd = Command::new(&cfg.kiln_bin);
    // A worker killed outright (SIGKILL, OOM) takes its build with it, so
    // the job, re-queued when the lease expires, never runs twice at once.
    // The signal follows the spawning thread: a runtime worker thread,
    // which lives as long as the worker.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    cmd.process_group(0)
        .kill_on_drop(true)
        .env_remove("KILN_SERVE_ADMIN_TOKEN")
        .env_remove("KILN_SERVE_VIEWER_TOKEN")
        .env_remove("KILN_WEBHOOK_SECRET")
        .env_remove("KILN_REGISTRY_USERNAME")
        .env_remove("KILN_REGISTRY_PASSWORD")
        .env("KILN_PHASES", "1");
    if let (Some(u), Some(p)) = (&cfg.registry.username, &cfg.registry.password) {
        cmd.env("KILN_REGISTRY_USERNAME", u)
            .env("KILN_REGISTRY_PASSWORD", p);
    }
    cmd
}

/// Send a stream's lines (lossy UTF-8, cut at [`MAX_LINE`]) down `tx`.
async fn read_lines<R: AsyncRead + Unpin>(r: R, stdout: bool, tx: mpsc::Sender<(bool, String)>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let mut line = String::from_utf8_lossy(&buf).into_owned();
                if line.len() > MAX_LINE && !stdout {
                    let mut cut = MAX_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push_str(" [line cut]");
                }
                if tx.send((stdout, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// SIGKILL a build's whole process group.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines() {
        assert_eq!(parse_phase("kiln-phase: resolving"), Some("resolving"));
        assert_eq!(parse_phase("kiln-phase: pushing  "), Some("pushing"));
        assert_eq!(parse_phase("kiln-phase: run-scripts"), Some("run-scripts"));
        for not in [
            "",
            "kiln-phase:",
            "kiln-phase: ",
            "kiln-phase: Building",
            "kiln-phase: a b",
            "kiln-phase: <script>",
            " kiln-phase: building",
            "pushing 127.0.0.1:5000/x",
            "error: kiln-phase: building",
        ] {
            assert_eq!(parse_phase(not), None, "{not:?}");
        }
        assert_eq!(
            parse_phase(&format!("kiln-phase: {}", "a".repeat(33))),
            None
        );
    }
}
