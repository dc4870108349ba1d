//! `kiln serve`: live job events (SSE), build phases, prebuilt images and
//! Git webhooks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: String,
    id: Option<i64>,
    data: String,
}

/// A response body read as it comes: chunked or not.
struct Body {
    r: BufReader<TcpStream>,
    chunked: bool,
    text: String,
    eof: bool,
}

impl Body {
    /// More decoded text; false at the end of the body.
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        if !self.chunked {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).unwrap_or(0);
            self.text.push_str(&line);
            self.eof = n == 0;
            return n > 0;
        }
        let mut size = String::new();
        if self.r.read_line(&mut size).unwrap_or(0) == 0 {
            self.eof = true;
            return false;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            self.eof = true;
            return false;
        }
        let mut buf = vec![0; n + 2]; // the chunk and its CRLF
        self.r.read_exact(&mut buf).expect("a whole chunk");
        self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        true
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.text.find('\n') {
                let line: String = self.text.drain(..=i).collect();
                return Some(line.trim_end_matches(['\n', '\r']).to_string());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next event (comments, such as keep-alives, skipped); `None` at
    /// the end of the stream.
    fn next_event(&mut self) -> Option<SseEvent> {
        let mut ev = SseEvent::default();
        let mut any = false;
        loop {
            let line = self.line()?;
            if line.is_empty() {
                if any {
                    return Some(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "event" => ev.event = value.to_string(),
                "id" => ev.id = value.parse().ok(),
                "data" => {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                }
                _ => {}
            }
        }
    }

    /// Every event up to the end of the stream.
    fn all(&mut self) -> Vec<SseEvent> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}

/// A request with any headers; the status, and the body to read on.
fn open(
    svc: &Service,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Body) {
    let mut s = TcpStream::connect(("127.0.0.1", svc.port)).expect("connect to kiln serve");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        svc.port,
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {status_line:?}"));
    let mut chunked = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let l = h.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    (
        status,
        Body {
            r,
            chunked,
            text: String::new(),
            eof: false,
        },
    )
}

fn read_all(mut b: Body) -> String {
    while b.fill() {}
    b.text
}

/// `GET /api/v1/jobs/{id}/events` as the viewer.
fn events(svc: &Service, id: i64, last_event_id: Option<i64>) -> Body {
    let mut h = vec![("Authorization", format!("Bearer {VIEWER}"))];
    if let Some(l) = last_event_id {
        h.push(("Last-Event-ID", l.to_string()));
    }
    let (status, body) = open(svc, "GET", &format!("/api/v1/jobs/{id}/events"), &h, b"");
    assert_eq!(status, 200, "{}", read_all(body));
    body
}

fn state_of(e: &SseEvent) -> Value {
    assert_eq!(e.event, "state", "{e:?}");
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {e:?}"))
}

/// The log lines of a list of events, with their ids.
fn log_lines(events: &[SseEvent]) -> Vec<(i64, String)> {
    events
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| (e.id.expect("a log event has an id"), e.data.clone()))
        .collect()
}

#[test]
fn service_streams_job_events_and_resumes() {
    let bin = fake_kiln(
        "echo 'kiln-phase: resolving' >&2\n\
         echo 'first line' >&2\n\
         echo 'kiln-phase: building' >&2\n\
         echo 'second line' >&2\n\
         exec sleep 600",
    );
    let svc = Service::start("svc-events", &[("KILN_SERVE_KILN_BIN", path_str(&bin))], 1);
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "streamed"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["job"]["id"].as_i64().unwrap();

    // Auth and missing jobs, like the other GETs.
    let (st, _) = open(&svc, "GET", &format!("/api/v1/jobs/{id}/events"), &[], b"");
    assert_eq!(st, 401);
    let (st, _) = open(
        &svc,
        "GET",
        "/api/v1/jobs/999999/events",
        &[("Authorization", format!("Bearer {VIEWER}"))],
        b"",
    );
    assert_eq!(st, 404);

    // Live: lines as they come, the phase in the state events.
    let mut live = events(&svc, id, None);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &SseEvent| e.event == "log" && e.data == "second line")
    {
        seen.push(live.next_event().expect("the stream ended early"));
    }
    let building = |e: &SseEvent| {
        e.event == "state" && {
            let j = state_of(e);
            j["state"] == "running" && j["phase"] == "building"
        }
    };
    // The state with the phase comes with the lines or right after them.
    while !seen.iter().any(building) {
        let e = live.next_event().expect("the stream ended early");
        assert!(e.event != "log", "a line after the last one: {e:?}");
        seen.push(e);
    }
    let lines = log_lines(&seen);
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let first = texts.iter().position(|l| *l == "first line").unwrap();
    assert!(
        texts[first..].starts_with(&["first line", "phase: building", "second line"]),
        "{texts:?}"
    );
    assert!(texts.contains(&"phase: resolving"), "{texts:?}");
    assert!(
        lines.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "ids count lines: {lines:?}"
    );
    assert_eq!(lines[0].0, 1, "{lines:?}");

    // Cancel: the final state, then the end of the stream.
    let r = svc.request(
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rest = live.all();
    let last = rest.last().expect("events after the cancel");
    assert_eq!(state_of(last)["state"], "cancelled", "{rest:#?}");
    assert!(
        log_lines(&rest)
            .iter()
            .any(|(_, l)| l == "cancelled through the API"),
        "{rest:#?}"
    );

    // Reconnect after "first line": only later lines, then the state.
    let first_id = lines[first].0;
    let again = events(&svc, id, Some(first_id)).all();
    let again_lines = log_lines(&again);
    assert_eq!(again_lines[0].0, first_id + 1, "{again:#?}");
    assert!(again_lines.iter().all(|(n, _)| *n > first_id));
    assert!(!again_lines.iter().any(|(_, l)| l == "first line"));
    assert_eq!(again_lines[1].1, "second line", "{again:#?}");
    assert_eq!(state_of(again.last().unwrap())["state"], "cancelled");
    // The same through `?after=`.
    let (st, body) = open(
        &svc,
        "GET",
        &format!("/api/v1/jobs/{id}/events?after={first_id}"),
        &[("Authorization", format!("Bearer {VIEWER}"))],
        b"",
    );
    assert_eq!(st, 200);
    let mut body = body;
    assert_eq!(log_lines(&body.all())[0].0, first_id + 1);
}

#[test]
fn service_phases_and_prebuilt_images() {
    let svc = Service::start("svc-phases", &[], 1);
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "phased", "config": {"env": {"PHASED": "1"}, "cmd": ["/bin/true"]}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["job"]["id"].as_i64().unwrap();

    // The whole job through its events: the log replayed and followed.
    let all = events(&svc, id, None).all();
    let last = state_of(all.last().expect("events"));
    let texts: Vec<String> = log_lines(&all).into_iter().map(|(_, l)| l).collect();
    assert_eq!(last["state"], "succeeded", "{texts:#?}");
    let phases: Vec<&str> = texts
        .iter()
        .filter_map(|l| l.strip_prefix("phase: "))
        .collect();
    assert_eq!(
        phases,
        ["resolving", "fetching", "building", "pushing"],
        "{texts:#?}"
    );
    assert!(
        !texts.iter().any(|l| l.starts_with("kiln-phase:")),
        "{texts:#?}"
    );
    let seen_phases: Vec<String> = all
        .iter()
        .filter(|e| e.event == "state")
        .filter_map(|e| state_of(e)["phase"].as_str().map(String::from))
        .collect();
    eprintln!("phases seen in state events: {seen_phases:?}");
    let digest = s(&last, "digest").to_string();
    let image = svc.image("phased");
    assert_eq!(last["image"], image.as_str());
    let j = svc.get(&format!("/api/v1/jobs/{id}"), Some(VIEWER)).json();
    assert_eq!(j, last, "the last state event is the job");

    // A prebuilt image: the pushed one, by tag.
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "prebuilt", "type": "image", "image": format!("{image}:latest")}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let pre = svc.wait_job(r.json()["job"]["id"].as_i64().unwrap());
    let pre_id = pre["id"].as_i64().unwrap();
    let log = svc
        .get(&format!("/api/v1/jobs/{pre_id}/log"), Some(VIEWER))
        .body;
    assert_eq!(pre["state"], "succeeded", "{pre}\n{log}");
    assert_eq!(pre["digest"], digest.as_str(), "{pre}");
    assert_eq!(pre["image"], image.as_str(), "{pre}");
    assert!(
        log.contains("resolved") && !log.contains("building"),
        "{log}"
    );
    let current = format!("{image}@{digest}");
    let sp = svc.get("/api/v1/specs/prebuilt", Some(VIEWER)).json();
    assert_eq!(sp["current_image"], current.as_str(), "{sp}");
    assert_eq!(sp["spec"]["type"], "image", "{sp}");

    // A tag that does not exist: failed, clearly; the current image stays.
    let missing = format!("{image}:no-such-tag");
    let r = svc.send(
        "PUT",
        "/api/v1/specs/prebuilt",
        Some(ADMIN),
        &json!({"type": "image", "image": missing}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let failed = svc.wait_job(r.json()["job"]["id"].as_i64().unwrap());
    assert_eq!(failed["state"], "failed", "{failed}");
    let err = s(&failed, "error");
    assert!(
        err.starts_with(&format!("image {missing} not found: ")),
        "{err}"
    );
    assert!(failed["digest"].is_null(), "{failed}");
    let sp = svc.get("/api/v1/specs/prebuilt", Some(VIEWER)).json();
    assert_eq!(sp["current_image"], current.as_str(), "{sp}");
    assert_eq!(sp["latest_job"]["state"], "failed", "{sp}");

    // The same reference again is resolved again (never reused).
    let r = svc.send(
        "PUT",
        "/api/v1/specs/prebuilt",
        Some(ADMIN),
        &json!({"type": "image", "image": format!("{image}:latest")}),
    );
    assert_eq!(r.json()["job"]["state"], "queued", "{}", r.body);
    let again = svc.wait_job(r.json()["job"]["id"].as_i64().unwrap());
    assert_eq!(again["digest"], digest.as_str(), "{again}");

    // Git-backed types without their source, and fields that do not go
    // together: 422.
    let post = |body: &Value| svc.send("POST", "/api/v1/specs", Some(ADMIN), body);
    for t in ["python-env", "dockerfile"] {
        let r = post(&json!({"name": "later", "type": t}));
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(
            s(&r.json(), "error").contains("needs `source`"),
            "{}",
            r.body
        );
    }
    let r = post(
        &json!({"name": "mixed", "type": "image", "image": format!("{image}:latest"), "packages": {"pip": ["six"]}}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(s(&r.json(), "error").contains("packages"), "{}", r.body);
    let r = post(&json!({"name": "no-ref", "type": "image"}));
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(&json!({"name": "local", "type": "image", "image": "oci:/etc"}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(svc.spec_names(), ["phased", "prebuilt"]);
}

/// HMAC-SHA256, written out (RFC 2104), to check the server's independently.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn service_webhooks_queue_rebuilds() {
    let secret = "webhook-secret-for-tests-5d1e";
    // No workers: queued jobs stay queued, and nothing needs a registry.
    let svc = Service::start("svc-hooks", &[("KILN_WEBHOOK_SECRET", secret)], 0);
    let mut first_jobs = std::collections::BTreeMap::new();
    for (name, git) in [
        (
            "gh",
            json!({"url": "https://git.invalid/Team/app.git", "ref": "main"}),
        ),
        ("gh-any", json!({"url": "git@GIT.invalid:Team/app"})),
        ("gl", json!({"url": "https://gitlab.invalid/group/app"})),
        (
            "other",
            json!({"url": "https://git.invalid/Team/other.git"}),
        ),
        ("plain", Value::Null),
    ] {
        let mut body = json!({ "name": name });
        if !git.is_null() {
            body["git"] = git;
        }
        let r = svc.send("POST", "/api/v1/specs", Some(ADMIN), &body);
        assert_eq!(r.status, 201, "{}", r.body);
        first_jobs.insert(name, r.json()["job"]["id"].as_i64().unwrap());
    }
    let latest = |name: &str| {
        svc.get(&format!("/api/v1/specs/{name}"), Some(VIEWER))
            .json()["latest_job"]["id"]
            .as_i64()
            .unwrap()
    };
    let post = |path: &str, headers: &[(&str, String)], body: &[u8]| {
        let (status, b) = open(&svc, "POST", path, headers, body);
        Reply {
            status,
            body: read_all(b),
        }
    };
    let github = |event: &str, body: &Value, sig: Option<String>| {
        let bytes = body.to_string().into_bytes();
        let mut h = vec![
            ("X-GitHub-Event", event.to_string()),
            ("Content-Type", "application/json".to_string()),
        ];
        if let Some(sig) = sig {
            h.push(("X-Hub-Signature-256", sig));
        }
        post("/api/v1/webhooks/github", &h, &bytes)
    };
    let sign = |body: &Value| {
        format!(
            "sha256={}",
            hmac_sha256(secret.as_bytes(), body.to_string().as_bytes())
        )
    };

    let push = json!({
        "ref": "refs/heads/main",
        "after": "1111111111111111111111111111111111111111",
        "repository": {
            "clone_url": "https://git.invalid/Team/app.git",
            "html_url": "https://git.invalid/Team/app",
            "ssh_url": "git@git.invalid:Team/app.git",
            "default_branch": "main"
        }
    });

    // Bad or missing signatures: 401, nothing queued.
    let r = github("push", &push, Some(sign(&json!({"other": "body"}))));
    assert_eq!(r.status, 401, "{}", r.body);
    let r = github("push", &push, Some(format!("sha256={}", "0".repeat(64))));
    assert_eq!(r.status, 401, "{}", r.body);
    let r = github("push", &push, None);
    assert_eq!(r.status, 401, "{}", r.body);
    for (name, job) in &first_jobs {
        assert_eq!(latest(name), *job, "{name} got a job");
    }

    // A ping: nothing to do.
    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 1});
    let r = github("ping", &ping, Some(sign(&ping)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["queued"], json!([]), "{}", r.body);

    // A signed push to main: both specs of that repository.
    let r = github("push", &push, Some(sign(&push)));
    assert_eq!(r.status, 200, "{}", r.body);
    let queued = r.json()["queued"].as_array().unwrap().clone();
    let names: Vec<&str> = queued.iter().map(|q| q["spec"].as_str().unwrap()).collect();
    assert_eq!(names, ["gh", "gh-any"], "{}", r.body);
    for q in &queued {
        let name = q["spec"].as_str().unwrap();
        let job = q["job"]["id"].as_i64().unwrap();
        assert_ne!(job, first_jobs[name]);
        assert_eq!(q["job"]["state"], "queued");
        assert_eq!(latest(name), job);
        let log = svc
            .get(&format!("/api/v1/jobs/{job}/log"), Some(VIEWER))
            .body;
        assert!(
            log.contains("queued by a GitHub push to refs/heads/main of https://git.invalid/Team/app.git (111111111111)"),
            "{log}"
        );
    }
    for name in ["gl", "other", "plain"] {
        assert_eq!(latest(name), first_jobs[name], "{name}");
    }

    // Another branch: only the spec without a ref would follow it, and it
    // follows the default branch.
    let mut dev = push.clone();
    dev["ref"] = json!("refs/heads/dev");
    let r = github("push", &dev, Some(sign(&dev)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["queued"], json!([]), "{}", r.body);

    // GitLab: the token, in constant time.
    let gl_push = json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "after": "2222222222222222222222222222222222222222",
        "project": {
            "git_http_url": "http://GitLab.invalid/group/app.git",
            "git_ssh_url": "git@gitlab.invalid:group/app.git",
            "web_url": "http://gitlab.invalid/group/app",
            "default_branch": "main"
        }
    });
    let gitlab = |event: &str, token: &str| {
        post(
            "/api/v1/webhooks/gitlab",
            &[
                ("X-Gitlab-Event", event.to_string()),
                ("X-Gitlab-Token", token.to_string()),
                ("Content-Type", "application/json".to_string()),
            ],
            gl_push.to_string().as_bytes(),
        )
    };
    let r = gitlab("Push Hook", "wrong");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(latest("gl"), first_jobs["gl"]);
    let r = gitlab("Note Hook", secret);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["queued"], json!([]));
    let r = gitlab("Push Hook", secret);
    assert_eq!(r.status, 200, "{}", r.body);
    let queued = r.json()["queued"].clone();
    assert_eq!(queued.as_array().unwrap().len(), 1, "{queued}");
    assert_eq!(queued[0]["spec"], "gl");
    let job = queued[0]["job"]["id"].as_i64().unwrap();
    assert_eq!(latest("gl"), job);
    // A second push while that job waits: the same job.
    let r = gitlab("Push Hook", secret);
    assert_eq!(r.json()["queued"][0]["job"]["id"], job, "{}", r.body);
    // The stored spec keeps its Git source.
    let sp = svc.get("/api/v1/specs/gl", Some(VIEWER)).json();
    assert_eq!(sp["spec"]["git"]["url"], "https://gitlab.invalid/group/app");
}

#[test]
fn service_events_follow_workers_of_other_processes() {
    let pg = Postgres::start();
    // No workers in the serving process: no in-process wake-ups, only the
    // database.
    let mut svc = Service::start_with("svc-events-pg", &[], 0, Some(&pg.url()));
    let post = |svc: &Service, name: &str| {
        let body = json!({"name": name, "config": {"env": {"WHERE": name}}});
        let r = svc.send("POST", "/api/v1/specs", Some(ADMIN), &body);
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["job"]["id"].as_i64().unwrap()
    };
    let id = post(&svc, "remote");
    let mut stream = events(&svc, id, None);
    let first = stream.next_event().unwrap();
    assert_eq!(
        (first.event.as_str(), first.id),
        ("log", Some(1)),
        "{first:?}"
    );
    assert_eq!(state_of(&stream.next_event().unwrap())["state"], "queued");

    let worker = Worker::start(&svc, &pg.url());
    let rest = stream.all();
    let last = state_of(rest.last().expect("events"));
    let lines = log_lines(&rest);
    assert_eq!(last["state"], "succeeded", "{rest:#?}");
    assert_eq!(lines[0].0, 2, "{lines:?}");
    assert!(lines.windows(2).all(|w| w[1].0 == w[0].0 + 1), "{lines:?}");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(texts.contains(&"phase: building"), "{texts:?}");
    assert!(texts.contains(&"phase: pushing"), "{texts:?}");
    assert!(
        rest.iter()
            .filter(|e| e.event == "state")
            .any(|e| state_of(e)["state"] == "running"),
        "{rest:#?}"
    );
    drop(worker);

    // SIGTERM with a stream open on a job nobody runs: the stream ends and
    // the server stops.
    let idle = post(&svc, "idle");
    let mut stream = events(&svc, idle, None);
    assert_eq!(stream.next_event().unwrap().event, "log");
    assert_eq!(state_of(&stream.next_event().unwrap())["state"], "queued");
    tool("kill")
        .args(["-TERM", &svc.child.id().to_string()])
        .run_ok();
    assert!(stream.all().is_empty());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = svc.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < WAIT, "kiln serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "kiln serve exited with {status}");
}
