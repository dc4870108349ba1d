//! `kiln serve`: the real binary serving HTTP on loopback, its workers
//! building with real `kiln build --push` subprocesses into the loopback
//! docker-registry, checked with skopeo. Fake build binaries (shell scripts
//! via `KILN_SERVE_KILN_BIN`) stand in where a build must hang or fail in a
//! particular way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

mod creds;
mod git_types;
mod live;

pub(crate) const ADMIN: &str = "admin-token-for-tests-7f3a";
pub(crate) const VIEWER: &str = "viewer-token-for-tests-91bc";

/// Guard against hangs only (never an assertion on speed).
pub(crate) const WAIT: Duration = Duration::from_secs(300);

/// A `kiln serve` process on a free loopback port, stopped when dropped.
pub(crate) struct Service {
    child: Child,
    pub(crate) port: u16,
    /// The image repository prefix on the shared registry.
    prefix: String,
    /// Its `--data` directory.
    data: PathBuf,
    log: mpsc::Receiver<String>,
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Reply {
    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `kiln` with the service's environment: tokens, the shared registry
/// under `prefix`, and `extra_env`.
fn service_command(prefix: &str, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = kiln();
    cmd.env("KILN_SERVE_ADMIN_TOKEN", ADMIN)
        .env("KILN_SERVE_VIEWER_TOKEN", VIEWER)
        .env("KILN_REGISTRY_ENDPOINT", Registry::shared().host())
        .env("KILN_REPO_PREFIX", prefix)
        .env_remove("KILN_SERVE_KILN_BIN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// Copy a child's stderr to ours (tagged) and down a channel.
fn tee_stderr(child: &mut Child, tag: &str) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let tag = tag.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

impl Service {
    pub(crate) fn start(label: &str, extra_env: &[(&str, &str)], workers: usize) -> Service {
        Service::start_with(label, extra_env, workers, None)
    }

    /// `kiln serve` again on this one's data directory (after it stopped).
    fn restart(&self, extra_env: &[(&str, &str)], workers: usize) -> Service {
        Service::start_in(&self.prefix, self.data.clone(), extra_env, workers, None)
    }

    /// `kiln serve` on `database` (default: SQLite in its data dir).
    fn start_with(
        label: &str,
        extra_env: &[(&str, &str)],
        workers: usize,
        database: Option<&str>,
    ) -> Service {
        Service::start_in(
            &unique_repo(label),
            unique_dir("serve-data"),
            extra_env,
            workers,
            database,
        )
    }

    fn start_in(
        prefix: &str,
        data: PathBuf,
        extra_env: &[(&str, &str)],
        workers: usize,
        database: Option<&str>,
    ) -> Service {
        let prefix = prefix.to_string();
        let mut cmd = service_command(&prefix, extra_env);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(["--workers", &workers.to_string()]);
        if let Some(db) = database {
            cmd.args(["--database", db]);
        }
        let mut child = cmd.spawn().expect("start kiln serve");
        let rx = tee_stderr(&mut child, "kiln serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("kiln serve printed no `listening on` line");
            if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                break rest.trim().parse::<u16>().expect("port");
            }
        };
        Service {
            child,
            port,
            prefix,
            data,
            log: rx,
        }
    }

    pub(crate) fn image(&self, name: &str) -> String {
        format!("{}/{}/{name}", Registry::shared().host(), self.prefix)
    }

    /// One HTTP/1.1 request; `token` goes in `Authorization: Bearer`.
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Reply {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to kiln serve");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.port
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or(b"");
        if !body.is_empty() || method != "GET" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) and close before reading a big body.
        let _ = s.write_all(body);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (headers, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP response to {method} {path}: {text:?}"));
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {headers}"));
        let chunked = headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Reply { status, body }
    }

    pub(crate) fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request("GET", path, token, None)
    }

    fn send(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.request(method, path, token, Some(body.to_string().as_bytes()))
    }

    /// A job, polled until it is in a final state.
    #[track_caller]
    fn wait_job(&self, id: i64) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/api/v1/jobs/{id}"), Some(VIEWER));
            assert_eq!(r.status, 200, "{}", r.body);
            let j = r.json();
            if ["succeeded", "failed", "cancelled"].contains(&s(&j, "state")) {
                return j;
            }
            assert!(start.elapsed() < WAIT, "job {id} did not finish: {j}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Poll until the job is in `state`.
    #[track_caller]
    fn wait_state(&self, id: i64, state: &str) -> Value {
        let start = Instant::now();
        loop {
            let j = self.get(&format!("/api/v1/jobs/{id}"), Some(VIEWER)).json();
            if s(&j, "state") == state {
                return j;
            }
            assert!(start.elapsed() < WAIT, "job {id} never got {state}: {j}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Poll until the job's log contains `fragment`; returns the log.
    #[track_caller]
    fn wait_log(&self, id: i64, fragment: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self
                .get(&format!("/api/v1/jobs/{id}/log"), Some(VIEWER))
                .body;
            if log.contains(fragment) {
                return log;
            }
            assert!(
                start.elapsed() < WAIT,
                "job {id}'s log never said {fragment:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spec_names(&self) -> Vec<String> {
        let r = self.get("/api/v1/specs", Some(VIEWER));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["specs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Everything the server printed so far.
    fn stderr_so_far(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A stand-in for `kiln` that runs `script` (sh) instead of building.
pub(crate) fn fake_kiln(script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = unique_dir("fake-kiln");
    let path = dir.join("kiln");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn service_builds_edits_and_reuses_images() {
    let svc = Service::start("svc-build", &[], 1);
    let spec =
        json!({"name": "hello", "config": {"env": {"GREETING": "hi there"}, "cmd": ["/bin/true"]}});

    // 1. Create: built and pushed, `latest` and the unique tag point at it.
    let r = svc.send("POST", "/api/v1/specs", Some(ADMIN), &spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    assert_eq!(created["name"], "hello");
    assert_eq!(created["revision"], 1);
    let job1 = created["job"]["id"].as_i64().unwrap();
    let j = svc.wait_job(job1);
    let log = svc
        .get(&format!("/api/v1/jobs/{job1}/log"), Some(VIEWER))
        .body;
    assert_eq!(j["state"], "succeeded", "{j}\nlog:\n{log}");
    let digest = s(&j, "digest").to_string();
    assert!(digest.starts_with("sha256:"), "{j}");
    let image = svc.image("hello");
    assert_eq!(j["image"], image.as_str());
    assert!(j["started"].is_string() && j["finished"].is_string(), "{j}");

    let latest = skopeo_inspect(&format!("docker://{image}:latest"));
    assert_eq!(latest["Digest"], digest.as_str(), "{latest}");
    let tags = strs(&latest["RepoTags"]);
    let unique: Vec<_> = tags.iter().filter(|t| t.starts_with("r1-")).collect();
    assert_eq!(unique.len(), 1, "tags: {tags:?}");
    assert_eq!(unique[0].len(), "r1-".len() + 8, "tags: {tags:?}");
    let by_unique = skopeo_inspect(&format!("docker://{image}:{}", unique[0]));
    assert_eq!(by_unique["Digest"], digest.as_str());
    let config = skopeo_inspect_config(&format!("docker://{image}:latest"));
    assert!(
        strs(&config["config"]["Env"]).contains(&"GREETING=hi there".to_string()),
        "{config}"
    );

    let sp = svc.get("/api/v1/specs/hello", Some(VIEWER)).json();
    let current = format!("{image}@{digest}");
    assert_eq!(sp["current_image"], current.as_str(), "{sp}");
    assert_eq!(sp["revision"], 1);
    assert_eq!(sp["latest_job"]["id"], job1);
    assert_eq!(sp["latest_job"]["state"], "succeeded");

    // 2. An edit that fails at build time: a base the registry lacks.
    let broken = json!({
        "base": format!("{}/{}/no-such-base:latest", Registry::shared().host(), svc.prefix),
        "config": {"env": {"GREETING": "hi there"}, "cmd": ["/bin/true"]},
    });
    let r = svc.send("PUT", "/api/v1/specs/hello", Some(ADMIN), &broken);
    assert_eq!(r.status, 200, "{}", r.body);
    let rev2 = r.json();
    assert_eq!(rev2["revision"], 2);
    let job2 = rev2["job"]["id"].as_i64().unwrap();
    assert_ne!(job2, job1);
    let j2 = svc.wait_job(job2);
    assert_eq!(j2["state"], "failed", "{j2}");
    assert!(j2["error"].as_str().is_some_and(|e| !e.is_empty()), "{j2}");
    assert!(j2["digest"].is_null(), "{j2}");
    let sp = svc.get("/api/v1/specs/hello", Some(VIEWER)).json();
    assert_eq!(
        sp["current_image"],
        current.as_str(),
        "failure moved it: {sp}"
    );
    assert_eq!(sp["revision"], 2);
    assert_eq!(sp["latest_job"]["state"], "failed");
    let latest = skopeo_inspect(&format!("docker://{image}:latest"));
    assert_eq!(latest["Digest"], digest.as_str());

    // 3. Back to revision 1's content: the image is reused, nothing built.
    let r = svc.send("PUT", "/api/v1/specs/hello", Some(ADMIN), &spec);
    assert_eq!(r.status, 200, "{}", r.body);
    let rev3 = r.json();
    assert_eq!(rev3["revision"], 3);
    assert_eq!(rev3["job"]["state"], "succeeded", "{rev3}");
    let job3 = rev3["job"]["id"].as_i64().unwrap();
    let j3 = svc.wait_job(job3);
    assert_eq!(j3["digest"], digest.as_str());
    assert_eq!(j3["image"], image.as_str());
    let log3 = svc
        .get(&format!("/api/v1/jobs/{job3}/log"), Some(VIEWER))
        .body;
    assert!(log3.contains("reused") && log3.contains(&digest), "{log3}");
    assert!(log3.contains(&format!("from job {job1}")), "{log3}");
    assert!(!log3.contains("building"), "{log3}");
    let sp = svc.get("/api/v1/specs/hello", Some(VIEWER)).json();
    assert_eq!(sp["current_image"], current.as_str());
    assert_eq!(sp["spec"]["config"]["env"]["GREETING"], "hi there", "{sp}");

    // The log endpoint's tail.
    let tail = svc.get(&format!("/api/v1/jobs/{job1}/log?tail=1"), Some(VIEWER));
    assert_eq!(tail.status, 200);
    assert_eq!(tail.body.lines().count(), 1, "{}", tail.body);
    assert!(tail.body.contains("pushed"), "{}", tail.body);

    // The HTML list.
    let page = svc.get("/", Some(VIEWER));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<td>hello</td>"), "{}", page.body);
    assert!(page.body.contains(&current), "{}", page.body);
}

#[test]
fn service_auth() {
    let svc = Service::start("svc-auth", &[], 0);
    assert_eq!(svc.get("/healthz", None).status, 200);
    let doc = svc.get("/openapi.json", None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"], "3.1.0");

    for path in ["/api/v1/specs", "/api/v1/specs/x", "/api/v1/jobs/1", "/"] {
        assert_eq!(svc.get(path, None).status, 401, "{path}");
        assert_eq!(svc.get(path, Some("wrong-token")).status, 401, "{path}");
    }
    let spec = json!({"name": "auth-check"});
    let r = svc.send("POST", "/api/v1/specs", None, &spec);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = svc.send("POST", "/api/v1/specs", Some(VIEWER), &spec);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].is_string());
    assert_eq!(svc.get("/api/v1/specs", Some(VIEWER)).status, 200);
    assert_eq!(svc.get("/", Some(VIEWER)).status, 200);
    assert!(svc.spec_names().is_empty());

    // Admin may write; the viewer may still read but not change it.
    let r = svc.send("POST", "/api/v1/specs", Some(ADMIN), &spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json()["job"]["id"].as_i64().unwrap();
    assert_eq!(
        svc.get("/api/v1/specs/auth-check", Some(VIEWER)).status,
        200
    );
    let r = svc.send("PUT", "/api/v1/specs/auth-check", Some(VIEWER), &spec);
    assert_eq!(r.status, 403);
    assert_eq!(
        svc.request("DELETE", "/api/v1/specs/auth-check", Some(VIEWER), None)
            .status,
        403
    );
    assert_eq!(
        svc.request(
            "POST",
            &format!("/api/v1/jobs/{job}/cancel"),
            Some(VIEWER),
            None
        )
        .status,
        403
    );
    assert_eq!(
        svc.request(
            "POST",
            &format!("/api/v1/jobs/{job}/retry"),
            Some(VIEWER),
            None
        )
        .status,
        403
    );
    // A second POST of the same name conflicts.
    assert_eq!(
        svc.send("POST", "/api/v1/specs", Some(ADMIN), &spec).status,
        409
    );
}

#[test]
fn service_rejects_bad_input_and_queues_nothing() {
    let svc = Service::start("svc-bad", &[], 0);
    let post = |body: &Value| svc.send("POST", "/api/v1/specs", Some(ADMIN), body);

    let r = post(&json!({"name": "a/b"}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(s(&r.json(), "error").contains("invalid name"), "{}", r.body);
    for bad in ["", "Upper", "-dash", "a_b", &"x".repeat(129)] {
        assert_eq!(post(&json!({ "name": bad })).status, 422, "{bad:?}");
    }
    assert_eq!(
        post(&json!({"base": "scratch"})).status,
        422,
        "name required"
    );
    assert_eq!(post(&json!({"name": "x", "bogus": true})).status, 422);
    assert_eq!(
        svc.request("POST", "/api/v1/specs", Some(ADMIN), Some(b"{not json"))
            .status,
        422
    );

    // The CLI's own error for a bad [config] env name.
    let r = post(&json!({"name": "bad-env", "config": {"env": {"A=B": "1"}}}));
    assert_eq!(r.status, 422, "{}", r.body);
    let msg = s(&r.json(), "error").to_string();
    assert!(
        msg.contains("[config] env") && msg.contains("invalid variable name `A=B`"),
        "{msg}"
    );
    // And a bad workdir (the spec parser's located error).
    let r = post(&json!({"name": "bad-workdir", "config": {"workdir": "relative"}}));
    assert_eq!(r.status, 422, "{}", r.body);
    // Local files on the server are not a base.
    let r = post(&json!({"name": "local-base", "base": "oci:/etc"}));
    assert_eq!(r.status, 422, "{}", r.body);

    // Over 1 MiB: 413.
    let big = json!({"name": "big", "config": {"labels": {"x": "y".repeat(2 * 1024 * 1024)}}});
    let r = post(&big);
    assert_eq!(r.status, 413, "{}", r.body);

    assert!(svc.spec_names().is_empty(), "{:?}", svc.spec_names());
    for missing in ["a", "bad-env", "big"] {
        assert_eq!(
            svc.get(&format!("/api/v1/specs/{missing}"), Some(VIEWER))
                .status,
            404
        );
    }
    assert_eq!(svc.get("/api/v1/jobs/1", Some(VIEWER)).status, 404);
}

#[test]
fn service_cancels_and_retries() {
    // A build that hangs until killed.
    let bin = fake_kiln("echo 'fake build starting' >&2\nexec sleep 600");
    let svc = Service::start("svc-cancel", &[("KILN_SERVE_KILN_BIN", path_str(&bin))], 1);
    let post = |name: &str| {
        let r = svc.send(
            "POST",
            "/api/v1/specs",
            Some(ADMIN),
            &json!({ "name": name }),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["job"]["id"].as_i64().unwrap()
    };
    let running = post("slow");
    svc.wait_state(running, "running");
    svc.wait_log(running, "fake build starting");
    // One worker, busy: the next job waits in the queue.
    let queued = post("waiting");
    assert_eq!(
        svc.get(&format!("/api/v1/jobs/{queued}"), Some(VIEWER))
            .json()["state"],
        "queued"
    );

    let r = svc.request(
        "POST",
        &format!("/api/v1/jobs/{queued}/cancel"),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "cancelled");
    let r = svc.request(
        "POST",
        &format!("/api/v1/jobs/{queued}/cancel"),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 409, "{}", r.body);

    let r = svc.request(
        "POST",
        &format!("/api/v1/jobs/{running}/cancel"),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let j = svc.wait_job(running);
    assert_eq!(j["state"], "cancelled", "{j}");
    svc.wait_log(running, "build process killed");
    // The worker is free again: a retry of the cancelled job runs.
    let r = svc.request(
        "POST",
        &format!("/api/v1/jobs/{running}/retry"),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let retry = r.json()["id"].as_i64().unwrap();
    assert_ne!(retry, running);
    svc.wait_state(retry, "running");
    let log = svc.wait_log(retry, "fake build starting");
    assert!(log.contains(&format!("retry of job {running}")), "{log}");
    let r = svc.request(
        "POST",
        &format!("/api/v1/jobs/{retry}/retry"),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 409, "a running job is not retried: {}", r.body);
    assert_eq!(
        svc.request(
            "POST",
            &format!("/api/v1/jobs/{retry}/cancel"),
            Some(ADMIN),
            None
        )
        .status,
        200
    );
    assert_eq!(svc.wait_job(retry)["state"], "cancelled");
    // Its build process is gone before the service is.
    svc.wait_log(retry, "build process killed");
    assert_eq!(
        svc.request("POST", "/api/v1/jobs/999999/cancel", Some(ADMIN), None)
            .status,
        404
    );
}

#[test]
fn service_survives_failing_builds_and_redacts_secrets() {
    let password = "hunter2-registry-secret";
    let bin = fake_kiln(
        "echo \"fetching http://someone:$KILN_REGISTRY_PASSWORD@127.0.0.1:9/v2/\" >&2\n\
         echo \"password is $KILN_REGISTRY_PASSWORD\" >&2\n\
         echo \"tokens: [$KILN_SERVE_ADMIN_TOKEN] [$KILN_SERVE_VIEWER_TOKEN]\" >&2\n\
         echo 'error: the build fell over' >&2\n\
         kill -SEGV $$",
    );
    let svc = Service::start(
        "svc-fail",
        &[
            ("KILN_SERVE_KILN_BIN", path_str(&bin)),
            ("KILN_REGISTRY_USERNAME", "someone"),
            ("KILN_REGISTRY_PASSWORD", password),
        ],
        1,
    );
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "crashy"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json()["job"]["id"].as_i64().unwrap();
    let j = svc.wait_job(job);
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["error"], "the build fell over", "{j}");
    let log = svc
        .get(&format!("/api/v1/jobs/{job}/log"), Some(VIEWER))
        .body;
    assert!(log.contains("fetching http://***@127.0.0.1:9/v2/"), "{log}");
    assert!(log.contains("password is ***"), "{log}");
    assert!(!log.contains(password), "{log}");
    assert!(
        log.contains("tokens: [] []"),
        "the API tokens reached the build: {log}"
    );
    assert!(!svc.stderr_so_far().contains(password));
    // Still serving.
    assert_eq!(svc.get("/healthz", None).status, 200);
    assert!(svc.get("/api/v1/specs/crashy", Some(VIEWER)).json()["current_image"].is_null());
}

#[test]
fn service_deletes_specs() {
    let svc = Service::start("svc-delete", &[], 0);
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "doomed"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json()["job"]["id"].as_i64().unwrap();
    assert_eq!(svc.spec_names(), ["doomed"]);
    let r = svc.request("DELETE", "/api/v1/specs/doomed", Some(ADMIN), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(svc.get("/api/v1/specs/doomed", Some(VIEWER)).status, 404);
    assert_eq!(
        svc.get(&format!("/api/v1/jobs/{job}"), Some(VIEWER)).status,
        404
    );
    assert_eq!(
        svc.request("DELETE", "/api/v1/specs/doomed", Some(ADMIN), None)
            .status,
        404
    );
    let r = svc.send("PUT", "/api/v1/specs/doomed", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(svc.spec_names().is_empty());
}

/// A `kiln worker` process, stopped when dropped.
struct Worker {
    child: Child,
}

impl Worker {
    /// Workers for `svc`'s database, pushing under `svc`'s prefix.
    fn start(svc: &Service, database: &str) -> Worker {
        Worker::start_with(svc, database, &[])
    }

    fn start_with(svc: &Service, database: &str, extra_env: &[(&str, &str)]) -> Worker {
        let mut cmd = service_command(&svc.prefix, extra_env);
        cmd.args(["worker", "--database", database, "--data"])
            .arg(unique_dir("worker-data"));
        let mut child = cmd.spawn().expect("start kiln worker");
        let _ = tee_stderr(&mut child, "kiln worker");
        Worker { child }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL server on a free loopback port (trust auth, user
/// `kiln`), run as the `postgres` user when we are root; stopped when dropped.
struct Postgres {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .map(|e| e.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            })
            .expect("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install Debian's `postgresql` (make test-deps)");
        // Outside the scratch tree: the postgres user must reach it.
        let dir = tempfile::Builder::new()
            .prefix("kiln-it-postgres")
            .tempdir()
            .unwrap();
        let root = is_root();
        let as_postgres = |program: PathBuf| {
            if root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                    .arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            tool("chown").arg("postgres:").arg(dir.path()).run_ok();
        }
        let data = dir.path().join("data");
        let mut initdb = as_postgres(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "kiln", "--no-sync"]);
        initdb.run_ok();
        let log_path = dir.path().join("postgres.log");
        for _ in 0..20 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).unwrap();
            if root {
                tool("chown").arg("postgres:").arg(&log_path).run_ok();
            }
            let mut child = as_postgres(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start postgres");
            let start = Instant::now();
            loop {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("ready to accept connections") {
                    return Postgres {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                if let Some(st) = child.try_wait().unwrap() {
                    if log.contains("already in use") {
                        break; // port taken meanwhile: another one
                    }
                    panic!("postgres exited ({st}):\n{log}");
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "postgres did not start:\n{log}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start postgres on a free port");
    }

    fn url(&self) -> String {
        format!("postgres://kiln@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown, the backends go too.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    tool("id").arg("-u").run_ok().stdout.trim() == "0"
}

/// Several specs built by separate `kiln worker` processes.
#[track_caller]
fn build_with_separate_workers(svc: &Service, database: &str) {
    let _w1 = Worker::start(svc, database);
    let _w2 = Worker::start(svc, database);
    let names = ["one", "two", "three", "four"];
    let mut jobs = Vec::new();
    for n in names {
        let body = json!({"name": n, "config": {"env": {"WHICH": n}}});
        let r = svc.send("POST", "/api/v1/specs", Some(ADMIN), &body);
        assert_eq!(r.status, 201, "{}", r.body);
        jobs.push(r.json()["job"]["id"].as_i64().unwrap());
    }
    for (n, id) in names.iter().zip(jobs) {
        let j = svc.wait_job(id);
        let log = svc
            .get(&format!("/api/v1/jobs/{id}/log"), Some(VIEWER))
            .body;
        assert_eq!(j["state"], "succeeded", "{j}\n{log}");
        assert_eq!(log.matches(": building ").count(), 1, "built once: {log}");
        let image = svc.image(n);
        let sk = skopeo_inspect(&format!("docker://{image}:latest"));
        assert_eq!(sk["Digest"], j["digest"], "{n}");
        let sp = svc.get(&format!("/api/v1/specs/{n}"), Some(VIEWER)).json();
        assert_eq!(
            sp["current_image"],
            format!("{image}@{}", s(&j, "digest")).as_str()
        );
    }
}

#[test]
fn service_with_worker_processes_on_sqlite() {
    let svc = Service::start("svc-workers-sqlite", &[], 0);
    let db = format!("sqlite://{}/kiln.db", svc.data.display());
    build_with_separate_workers(&svc, &db);
}

#[test]
fn service_with_worker_processes_on_postgres() {
    let pg = Postgres::start();
    let svc = Service::start_with("svc-workers-pg", &[], 1, Some(&pg.url()));
    build_with_separate_workers(&svc, &pg.url());
}

/// A worker killed with SIGKILL mid-job: its build dies with it, the job is
/// re-queued when the lease runs out and completes on the other worker,
/// and no two runs of it ever overlap.
#[test]
fn service_requeues_the_job_of_a_killed_worker_on_postgres() {
    let pg = Postgres::start();
    let runs = unique_dir("killed-worker").join("runs");
    let digest = format!("sha256:{}", "cd".repeat(32));
    let bin = fake_kiln(&format!(
        "echo \"start $$ $(date +%s%N)\" >> {runs}\necho 'fake build starting' >&2\nsleep 3\necho \"end $$ $(date +%s%N)\" >> {runs}\necho '{{\"digest\": \"{digest}\"}}'",
        runs = runs.display()
    ));
    let env = [
        ("KILN_SERVE_KILN_BIN", path_str(&bin)),
        ("KILN_SERVE_LEASE_SECS", "2"),
    ];
    let svc = Service::start_with("svc-killed-worker", &env, 0, Some(&pg.url()));
    let mut first = Worker::start_with(&svc, &pg.url(), &env);
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "survivor"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["job"]["id"].as_i64().unwrap();
    svc.wait_log(id, "fake build starting");
    let _second = Worker::start_with(&svc, &pg.url(), &env);
    tool("kill")
        .args(["-KILL", &first.child.id().to_string()])
        .run_ok();
    let _ = first.child.wait();

    let j = svc.wait_job(id);
    let log = svc
        .get(&format!("/api/v1/jobs/{id}/log"), Some(VIEWER))
        .body;
    assert_eq!(j["state"], "succeeded", "{j}\nlog:\n{log}");
    assert_eq!(j["digest"], digest.as_str());
    assert!(log.contains("job re-queued"), "{log}");

    // Two runs started; the killed one never ended (its build died with
    // its worker), and the second started only after that.
    let text = std::fs::read_to_string(&runs).unwrap();
    let events: Vec<(&str, &str, u128)> = text
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let (kind, pid, at) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            (kind, pid, at.parse().unwrap())
        })
        .collect();
    let starts: Vec<_> = events.iter().filter(|e| e.0 == "start").collect();
    let ends: Vec<_> = events.iter().filter(|e| e.0 == "end").collect();
    assert_eq!(starts.len(), 2, "{text}");
    assert_eq!(
        ends.len(),
        1,
        "the killed worker's build must not finish: {text}"
    );
    assert_eq!(ends[0].1, starts[1].1, "{text}");
    // Give an orphaned first run time to betray itself, then check again.
    std::thread::sleep(Duration::from_secs(4));
    let again = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(again, text, "a run of the killed worker went on");
}

#[test]
fn service_stops_gracefully_on_sigterm() {
    // A build that takes a moment and reports a (made-up) digest.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let bin = fake_kiln(&format!(
        "echo 'fake build starting' >&2\nsleep 5\necho '{{\"digest\": \"{digest}\"}}'"
    ));
    let env = [("KILN_SERVE_KILN_BIN", path_str(&bin))];
    let mut svc = Service::start("svc-sigterm", &env, 1);
    let post = |svc: &Service, name: &str| {
        let r = svc.send(
            "POST",
            "/api/v1/specs",
            Some(ADMIN),
            &json!({ "name": name }),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["job"]["id"].as_i64().unwrap()
    };
    let first = post(&svc, "first");
    svc.wait_log(first, "fake build starting");
    let second = post(&svc, "second");

    tool("kill")
        .args(["-TERM", &svc.child.id().to_string()])
        .run_ok();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = svc.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < WAIT, "kiln serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "kiln serve exited with {status}");

    // The running build was finished; the queued job was left queued.
    let svc = svc.restart(&env, 0);
    let j = svc.wait_job(first);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["digest"], digest.as_str());
    let j2 = svc
        .get(&format!("/api/v1/jobs/{second}"), Some(VIEWER))
        .json();
    assert_eq!(j2["state"], "queued", "{j2}");
    assert_eq!(svc.spec_names(), ["first", "second"]);
}
