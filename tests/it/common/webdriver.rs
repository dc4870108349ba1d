//! A real browser for UI tests: Debian's `chromium` (headless) driven by
//! its `chromedriver` over the W3C WebDriver protocol, through a small
//! blocking client (reqwest). A missing browser or driver is a test
//! FAILURE telling to run `make test-deps`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A `chromedriver` process with one headless chromium session; both end
/// when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
}

/// A found element.
#[derive(Debug, Clone)]
pub struct Element(String);

#[track_caller]
fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the browser tests need Debian's `{package}`; run `make test-deps` \
         (it apt-installs chromium and chromium-driver)"
    );
}

impl Browser {
    #[track_caller]
    pub fn start() -> Browser {
        require(CHROMIUM, "chromium");
        require(CHROMEDRIVER, "chromium-driver");
        let http = http_client()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        for _ in 0..10 {
            let port = free_port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let base = format!("http://127.0.0.1:{port}");
            let start = Instant::now();
            let ready = loop {
                if let Ok(r) = http.get(format!("{base}/status")).send() {
                    let v = json_of(r).unwrap_or(Value::Null);
                    if v["value"]["ready"] == true {
                        break true;
                    }
                }
                if driver.try_wait().unwrap().is_some() {
                    break false; // port taken meanwhile: another one
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "chromedriver did not become ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            if !ready {
                continue;
            }
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"],
                },
            }}});
            let r = http
                .post(format!("{base}/session"))
                .header("content-type", "application/json")
                .body(caps.to_string())
                .send()
                .expect("WebDriver: new session");
            let v = json_of(r).expect("WebDriver: new session answer");
            let Some(session) = v["value"]["sessionId"].as_str() else {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("chromium did not start a session: {v}");
            };
            return Browser {
                driver,
                base,
                session: session.to_string(),
                http,
            };
        }
        panic!("could not start chromedriver on a free port");
    }

    /// One WebDriver command; its `value`. A WebDriver error is an `Err`
    /// with the error's JSON.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let r = req
            .send()
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let ok = r.status().is_success();
        let v = json_of(r).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    #[track_caller]
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    #[track_caller]
    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(json!({ "url": url })));
    }

    #[track_caller]
    pub fn url(&self) -> String {
        self.ok("GET", "/url", None).as_str().unwrap().to_string()
    }

    #[track_caller]
    pub fn source(&self) -> String {
        self.ok("GET", "/source", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The element matching a CSS selector, if any.
    pub fn try_find(&self, css: &str) -> Option<Element> {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .ok()?;
        Some(Element(v[ELEMENT].as_str()?.to_string()))
    }

    #[track_caller]
    pub fn find(&self, css: &str) -> Element {
        self.try_find(css)
            .unwrap_or_else(|| panic!("no element `{css}` on {}:\n{}", self.url(), self.source()))
    }

    /// Type into an element (after clearing it when `clear`).
    #[track_caller]
    pub fn type_into(&self, css: &str, text: &str, clear: bool) {
        let Element(id) = self.find(css);
        if clear {
            self.ok("POST", &format!("/element/{id}/clear"), None);
        }
        self.ok(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    #[track_caller]
    pub fn click(&self, css: &str) {
        let Element(id) = self.find(css);
        self.ok("POST", &format!("/element/{id}/click"), None);
    }

    /// [`Browser::execute`], `None` on a WebDriver error (mid-navigation).
    pub fn try_execute(&self, script: &str) -> Option<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .ok()
    }

    /// Click something that loads a new page (a link, a form's button) and
    /// wait until the new page has loaded (chromedriver's click does not
    /// always wait for a form's answer).
    #[track_caller]
    pub fn click_to_load(&self, css: &str) {
        self.execute("window.kilnOldPage = true; return null;");
        self.click(css);
        let start = Instant::now();
        loop {
            // Mid-navigation, scripts may fail: just try again.
            let done = self
                .try_execute("return !window.kilnOldPage && document.readyState === 'complete';");
            if done == Some(Value::Bool(true)) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "clicking {css} loaded no new page: {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An element's rendered text; `None` when it is not (or no longer) there.
    pub fn text(&self, css: &str) -> Option<String> {
        let Element(id) = self.try_find(css)?;
        let v = self
            .call("GET", &format!("/element/{id}/text"), None)
            .ok()?;
        v.as_str().map(str::to_string)
    }

    /// An element's property (`value` of an input or textarea).
    #[track_caller]
    pub fn property(&self, css: &str, name: &str) -> String {
        let Element(id) = self.find(css);
        let v = self.ok("GET", &format!("/element/{id}/property/{name}"), None);
        v.as_str().unwrap_or_default().to_string()
    }

    /// Run JavaScript in the page (`return …` gives a value).
    #[track_caller]
    pub fn execute(&self, script: &str) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// A cookie of the current page (its WebDriver JSON).
    pub fn cookie(&self, name: &str) -> Option<Value> {
        self.call("GET", &format!("/cookie/{name}"), None).ok()
    }

    /// A PNG of the viewport, written to `path`.
    #[track_caller]
    pub fn screenshot(&self, path: &Path) {
        let v = self.ok("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().expect("screenshot is base64"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn json_of(r: reqwest::blocking::Response) -> Result<Value, String> {
    let body = r.bytes().map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("not JSON ({e}): {body:?}"))
}

/// Where UI tests put their screenshots: `<target>/test-artifacts/ui/`.
pub fn ui_artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .join("test-artifacts")
        .join("ui")
}

/// Whether `path` is a non-empty PNG file.
pub fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 8 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A blocking HTTP client builder for talking to test servers, with the TLS
/// provider kiln's reqwest needs installed first (kiln_store::http::tls).
pub fn http_client() -> reqwest::blocking::ClientBuilder {
    kiln_store::http::tls();
    reqwest::blocking::Client::builder()
}
