//! `kiln serve`'s web UI in a real browser: headless chromium driven over
//! WebDriver, against the real binary building into the loopback registry.
//! Each page visited is saved as `<target>/test-artifacts/ui/NN-name.png`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::service::{fake_kiln, path_str, Service, ADMIN, VIEWER, WAIT};

/// Screenshots, numbered in the order taken.
struct Shots {
    dir: PathBuf,
    /// Names this test's files (tests run in parallel).
    prefix: &'static str,
    taken: Vec<PathBuf>,
}

impl Shots {
    fn new(prefix: &'static str) -> Shots {
        let dir = ui_artifacts();
        std::fs::create_dir_all(&dir).unwrap();
        Shots {
            dir,
            prefix,
            taken: Vec::new(),
        }
    }

    #[track_caller]
    fn check(&self, at_least: usize) {
        for p in &self.taken {
            assert!(is_png(p), "{} is not a PNG", p.display());
        }
        assert!(self.taken.len() >= at_least, "{:?}", self.taken);
        eprintln!("screenshots: {}", self.dir.display());
    }

    #[track_caller]
    fn take(&mut self, b: &Browser, name: &str) {
        let path = self.dir.join(format!(
            "{}{:02}-{name}.png",
            self.prefix,
            self.taken.len() + 1
        ));
        b.screenshot(&path);
        self.taken.push(path);
    }
}

/// Whitespace-collapsed text, for comparing rendered text with a message.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Poll the job page (the browser follows the live tail and the reloads)
/// until the job's state is final; returns it.
#[track_caller]
fn wait_job_page(b: &Browser, shots: &mut Shots) -> String {
    let start = Instant::now();
    let mut shot_running = false;
    loop {
        // The state the server rendered the page in (the live tail updates
        // `#state`, then reloads the page when the job ends); the page may
        // be reloading: then try again.
        let rendered = b.try_execute(
            "const l = document.getElementById('log'); \
             return document.readyState === 'complete' && l ? l.dataset.state : null;",
        );
        if let Some(Value::String(state)) = rendered {
            if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
                return state;
            }
            if !shot_running {
                shots.take(b, "job-in-progress");
                shot_running = true;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "the job page never showed a final state:\n{}",
            b.source()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The job whose page the browser is on (after a form's redirect, which
/// may still be under way).
#[track_caller]
fn job_id_of(b: &Browser) -> i64 {
    let start = Instant::now();
    loop {
        let url = b.url();
        if let Some(id) = url.rsplit("/jobs/").next().and_then(|t| t.parse().ok()) {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not a job page: {url}\n{}",
            b.source()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A form POST with the session cookie (no browser), for the CSRF checks.
fn post_form(
    svc: &Service,
    path: &str,
    cookie: &str,
    body: &str,
    origin: Option<&str>,
) -> reqwest::blocking::Response {
    let client = http_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client
        .post(format!("http://127.0.0.1:{}{path}", svc.port))
        .header("cookie", format!("kiln_session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().unwrap()
}

#[test]
fn service_ui_in_a_browser() {
    let svc = Service::start("svc-ui", &[], 1);
    let b = Browser::start();
    let mut shots = Shots::new("");
    let base = format!("http://127.0.0.1:{}", svc.port);
    let name = "ui-hello";

    // Signed out: every page leads to the sign-in form.
    b.goto(&format!("{base}/specs/new"));
    assert!(b.url().ends_with("/login"), "{}", b.url());
    shots.take(&b, "login");
    b.type_into("#token", "not-the-token", false);
    b.click_to_load("#login");
    assert!(
        b.text("#error").is_some_and(|t| t.contains("not valid")),
        "{}",
        b.source()
    );
    b.type_into("#token", ADMIN, true);
    b.click_to_load("#login");
    assert_eq!(b.url(), format!("{base}/"));
    let cookie = b.cookie("kiln_session").expect("a session cookie");
    let session = cookie["value"].as_str().unwrap().to_string();
    assert!(!session.contains(ADMIN), "{cookie}");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert!(b.source().contains("no specs yet"));
    shots.take(&b, "specs-empty");

    // Create through the form.
    b.click_to_load("#new-spec");
    assert!(b.url().ends_with("/specs/new"), "{}", b.url());
    b.type_into("#name", name, false);
    b.type_into("#env", "GREETING=hi from the form", false);
    b.type_into("#cmd", "/bin/true", false);
    b.type_into("#labels", "org.example.ui=<yes> & \"quoted\"", false);
    shots.take(&b, "new-spec");
    b.click_to_load("#submit");
    let job1 = job_id_of(&b);
    let state = wait_job_page(&b, &mut shots);
    let log = b.text("#log").unwrap_or_default();
    assert_eq!(state, "succeeded", "log:\n{log}");
    let image = b.text("#image").unwrap();
    assert!(
        image.starts_with(&format!("{}@sha256:", svc.image(name))),
        "{image}"
    );
    assert!(log.contains("pushed"), "{log}");
    shots.take(&b, "job-succeeded");

    // The full log: a download, and as text after N lines (the live tail's).
    let href = b.property("#download", "href");
    assert_eq!(href, format!("{base}/jobs/{job1}/log.txt"));
    let client = http_client().build().unwrap();
    let r = client
        .get(&href)
        .header("cookie", format!("kiln_session={session}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let disposition = r.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let full = r.text().unwrap();
    assert_eq!(squash(&full), squash(&log), "the page shows the whole log");
    b.goto(&format!("{base}/jobs/{job1}/log.txt?after=1"));
    let tail = b.text("body").unwrap();
    assert_eq!(
        tail.lines().count(),
        full.lines().count() - 1,
        "{tail}\n---\n{full}"
    );
    shots.take(&b, "log-text");

    // The spec's page and the list.
    b.goto(&format!("{base}/specs/{name}"));
    assert_eq!(b.text("#revision").as_deref(), Some("1"));
    assert_eq!(b.text("#current-image"), Some(image.clone()));
    assert!(b.try_find(&format!("#job-{job1}")).is_some());
    shots.take(&b, "spec");
    b.goto(&format!("{base}/"));
    let row = b.text(&format!("#spec-{name}")).unwrap();
    assert!(row.contains("succeeded") && row.contains(&image), "{row}");
    shots.take(&b, "specs");

    // Edit: prefilled; one more variable is a new revision, built.
    b.click_to_load(&format!("#edit-{name}"));
    assert_eq!(b.property("#name", "value"), name);
    let env = b.property("#env", "value");
    assert_eq!(env, "GREETING=hi from the form");
    assert_eq!(
        b.property("#labels", "value"),
        "org.example.ui=<yes> & \"quoted\""
    );
    b.type_into("#env", "\nEXTRA=added", false);
    shots.take(&b, "edit");
    b.click_to_load("#submit");
    let job2 = job_id_of(&b);
    assert_ne!(job2, job1);
    assert_eq!(wait_job_page(&b, &mut shots), "succeeded");
    shots.take(&b, "edited-job-succeeded");
    let sp = svc
        .get(&format!("/api/v1/specs/{name}"), Some(VIEWER))
        .json();
    assert_eq!(sp["revision"], 2, "{sp}");
    assert_eq!(sp["spec"]["config"]["env"]["EXTRA"], "added", "{sp}");
    assert_eq!(
        sp["spec"]["config"]["labels"]["org.example.ui"], "<yes> & \"quoted\"",
        "{sp}"
    );

    // An invalid value: the CLI's message next to the form, values kept.
    b.goto(&format!("{base}/specs/{name}/edit"));
    b.type_into("#workdir", "relative/dir", true);
    b.click_to_load("#submit");
    let input: kiln_service::spec_input::SpecInput = serde_json::from_value(json!({
        "name": name,
        "config": {
            "env": {"GREETING": "hi from the form", "EXTRA": "added"},
            "cmd": ["/bin/true"],
            "labels": {"org.example.ui": "<yes> & \"quoted\""},
            "workdir": "relative/dir",
        },
    }))
    .unwrap();
    let expected = input
        .render(Some(&svc.image(name)))
        .expect_err("a relative workdir is refused");
    let shown = b.text("#error").unwrap_or_else(|| b.source());
    assert_eq!(squash(&shown), squash(&expected));
    assert_eq!(b.property("#workdir", "value"), "relative/dir");
    assert!(b.property("#env", "value").contains("EXTRA=added"));
    shots.take(&b, "invalid-edit");
    let sp = svc
        .get(&format!("/api/v1/specs/{name}"), Some(VIEWER))
        .json();
    assert_eq!(sp["revision"], 2, "nothing was stored: {sp}");

    // CSRF: the session cookie alone is not enough to change anything.
    b.goto(&format!("{base}/specs/new"));
    let csrf = b.property("input[name=csrf]", "value");
    assert_eq!(csrf.len(), 64);
    let same = Some(base.as_str());
    for (body, origin) in [
        ("name=csrf-a".to_string(), same),
        ("csrf=wrong&name=csrf-b".to_string(), same),
        (
            format!("csrf={csrf}&name=csrf-c"),
            Some("http://elsewhere.test"),
        ),
    ] {
        let r = post_form(&svc, "/specs/new", &session, &body, origin);
        assert_eq!(r.status(), 403, "{body} from {origin:?}");
    }
    let r = post_form(
        &svc,
        &format!("/specs/{name}/delete"),
        &session,
        "csrf=wrong",
        same,
    );
    assert_eq!(r.status(), 403);
    let r = post_form(
        &svc,
        "/specs/new",
        &session,
        &format!("csrf={csrf}&name=csrf-ok"),
        same,
    );
    assert_eq!(r.status(), 303, "the same form with its token works");
    let names: Vec<Value> = svc.get("/api/v1/specs", Some(VIEWER)).json()["specs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("csrf-ok"), json!(name)]);

    // Delete, after a confirmation.
    b.goto(&format!("{base}/"));
    b.click_to_load(&format!("#delete-{name}"));
    assert_eq!(b.text("h1"), Some(format!("Delete {name}?")));
    shots.take(&b, "delete-confirm");
    b.click_to_load("#confirm");
    assert_eq!(b.url(), format!("{base}/"));
    assert!(b.try_find(&format!("#spec-{name}")).is_none());
    shots.take(&b, "deleted");
    assert_eq!(
        svc.get(&format!("/api/v1/specs/{name}"), Some(VIEWER))
            .status,
        404
    );

    // Sign out: the old cookie no longer works.
    b.click_to_load("#logout");
    assert!(b.url().ends_with("/login"), "{}", b.url());
    b.goto(&format!("{base}/"));
    assert!(b.url().ends_with("/login"), "{}", b.url());
    shots.take(&b, "signed-out");
    let r = post_form(
        &svc,
        "/specs/csrf-ok/delete",
        &session,
        &format!("csrf={csrf}"),
        same,
    );
    assert_eq!(r.status(), 401, "signed out");

    // A viewer may look, not change.
    b.type_into("#token", VIEWER, false);
    b.click_to_load("#login");
    assert!(b.try_find("#new-spec").is_none());
    assert!(b.try_find("#delete-csrf-ok").is_none());
    b.goto(&format!("{base}/specs/new"));
    assert!(b.source().contains("only read"), "{}", b.source());
    shots.take(&b, "viewer-refused");

    drop(b);
    shots.check(12);
}

/// Sign in through the form.
#[track_caller]
fn sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/login"));
    b.type_into("#token", token, false);
    b.click_to_load("#login");
    assert_eq!(b.url(), format!("{base}/"));
}

#[test]
fn service_ui_tails_cancels_and_retries() {
    // A build that logs a line a second, then hangs until killed.
    let bin = fake_kiln(
        "for i in 1 2 3 4; do echo \"fake build: line $i\" >&2; sleep 1; done\nexec sleep 600",
    );
    let svc = Service::start("svc-ui-tail", &[("KILN_SERVE_KILN_BIN", path_str(&bin))], 1);
    let b = Browser::start();
    let mut shots = Shots::new("tail-");
    let base = format!("http://127.0.0.1:{}", svc.port);
    sign_in(&b, &base, ADMIN);
    b.goto(&format!("{base}/specs/new"));
    b.type_into("#name", "slow", false);
    b.click_to_load("#submit");
    let job = job_id_of(&b);

    // The script appends lines as they come, without reloading the page.
    b.execute("window.kilnMarker = 'same page'; return null;");
    let start = Instant::now();
    loop {
        let log = b.text("#log").unwrap_or_default();
        if log.contains("fake build: line 4") {
            break;
        }
        assert!(start.elapsed() < WAIT, "the log never grew:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b.execute("return window.kilnMarker;"), "same page");
    assert_eq!(b.text("#state").as_deref(), Some("running"));
    shots.take(&b, "live-tail");
    // Without JavaScript the page refreshes itself while the job runs; a
    // viewer gets no buttons.
    let page = svc.get(&format!("/jobs/{job}"), Some(VIEWER));
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("id=\"cancel\""), "{}", page.body);

    // Cancel and retry with the page's buttons.
    b.click_to_load("#cancel");
    assert_eq!(job_id_of(&b), job);
    assert_eq!(wait_job_page(&b, &mut shots), "cancelled");
    shots.take(&b, "cancelled");
    b.click_to_load("#retry");
    let retry = job_id_of(&b);
    assert_ne!(retry, job);
    let start = Instant::now();
    while !b
        .text("#log")
        .unwrap_or_default()
        .contains(&format!("retry of job {job}"))
    {
        assert!(start.elapsed() < WAIT, "{}", b.source());
        std::thread::sleep(Duration::from_millis(200));
    }
    shots.take(&b, "retried");
    b.click_to_load("#cancel");
    assert_eq!(wait_job_page(&b, &mut shots), "cancelled");
    drop(b);
    shots.check(3);
}

#[test]
fn service_ui_without_a_browser() {
    // Pages answer bearer clients too; without credentials, browsers are
    // sent to /login and other clients get a 401.
    let svc = Service::start("svc-ui-plain", &[], 0);
    let r = svc.get("/", Some(VIEWER));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<h1>Specs</h1>"), "{}", r.body);
    assert_eq!(svc.get("/", None).status, 401);
    assert_eq!(svc.get("/specs/new", Some(VIEWER)).status, 403);
    assert_eq!(svc.get("/jobs/1", Some(VIEWER)).status, 404);
    let login = svc.get("/login", None);
    assert_eq!(login.status, 200);
    assert!(login.body.contains("name=\"token\""), "{}", login.body);
    let js = svc.get("/ui/tail.js", None);
    assert_eq!(js.status, 200);
    assert!(js.body.contains("log.txt?after="), "{}", js.body);
    let client = http_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(format!("http://127.0.0.1:{}/", svc.port))
        .header("accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
}

#[test]
fn service_ui_screenshot_decoding() {
    for data in [&b""[..], b"a", b"ab", b"abc", b"\x89PNG\r\n\x1a\n\x00\xff"] {
        assert_eq!(base64_decode(&base64(data)), data);
    }
}
