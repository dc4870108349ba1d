//! `[pip]` end to end against a loopback simple index and a wheelhouse, with wheels built here.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_core::{Digest, Platform};
use kiln_fs::layer::{Entry, EntryKind};
use kiln_fs::Rootfs;
use kiln_pip::{layer_groups, plan, PipError, PipSection, RequirementProblem};
use kiln_store::Http;
use kiln_store::{Cache, CacheBucket};

use crate::common::{
    expect_failure, python_base, record_hash, sha256_hex, umoci_unpack, wheel_zip, CommandExt,
    Workspace,
};

struct Wheel<'a> {
    name: &'a str,
    version: &'a str,
    tag: &'a str,
    requires: &'a [&'a str],
    extras: &'a [&'a str],
    requires_python: Option<&'a str>,
    files: &'a [(&'a str, &'a [u8], u32)],
}

impl Wheel<'_> {
    fn simple<'a>(name: &'a str, version: &'a str) -> Wheel<'a> {
        Wheel {
            name,
            version,
            tag: "py3-none-any",
            requires: &[],
            extras: &[],
            requires_python: None,
            files: &[],
        }
    }
    fn filename(&self) -> String {
        format!("{}-{}-{}.whl", self.name, self.version, self.tag)
    }
    fn metadata(&self) -> String {
        let mut m = format!(
            "Metadata-Version: 2.1\nName: {}\nVersion: {}\n",
            self.name, self.version
        );
        if let Some(rp) = self.requires_python {
            m += &format!("Requires-Python: {rp}\n");
        }
        for e in self.extras {
            m += &format!("Provides-Extra: {e}\n");
        }
        for r in self.requires {
            m += &format!("Requires-Dist: {r}\n");
        }
        m
    }
    fn build(&self) -> Vec<u8> {
        let di = format!("{}-{}.dist-info", self.name, self.version);
        let mut members = vec![(
            format!("{}/__init__.py", self.name),
            b"VERSION = 1\n".to_vec(),
            0o644,
        )];
        for (p, d, m) in self.files {
            members.push((p.to_string(), d.to_vec(), *m));
        }
        members.push((
            format!("{di}/METADATA"),
            self.metadata().into_bytes(),
            0o644,
        ));
        members.push((
            format!("{di}/WHEEL"),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n".to_vec(),
            0o644,
        ));
        wheel_zip(&members)
    }
}

type Routes = Arc<HashMap<String, (String, Vec<u8>)>>;

/// Index pages the servers below have sent gzip-encoded (all tests').
static GZIPPED: AtomicU64 = AtomicU64::new(0);

/// A tiny HTTP/1.0 server on loopback serving `routes` (it lives as long
/// as the test process), answering `Range: bytes=…` requests with `206` when `ranges`
/// (else the whole body, as servers that do not serve ranges do); the body
/// bytes written are added to the counter. Index pages go gzip-encoded to
/// a client that asks, as a CDN sends them; files go as they are.
fn serve_counted(routes: Routes, ranges: bool) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let routes = routes.clone();
            let sent = counter.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let (mut range, mut gzip) = (None, false);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let h = h.to_ascii_lowercase();
                    if let Some(v) = h.strip_prefix("range: bytes=") {
                        range = Some(v.trim().to_string());
                    }
                    if let Some(v) = h.strip_prefix("accept-encoding:") {
                        gzip = v.split(',').any(|e| e.trim() == "gzip");
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let encoded;
                let (head, body): (String, &[u8]) = match routes.get(&path) {
                    Some((ct, body)) if gzip && (ct.contains("json") || ct.contains("html")) => {
                        let mut z =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                        z.write_all(body).unwrap();
                        encoded = z.finish().unwrap();
                        GZIPPED.fetch_add(1, Ordering::SeqCst);
                        (
                            format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", encoded.len()),
                            &encoded[..],
                        )
                    }
                    Some((ct, body)) => {
                        let len = body.len();
                        // `a-b`, `a-`, `-n`
                        let span = range.filter(|_| ranges && len > 0).and_then(|r| {
                            let (a, b) = r.split_once('-')?;
                            Some(if a.is_empty() {
                                (len - b.parse::<usize>().ok()?.min(len), len - 1)
                            } else {
                                let a: usize = a.parse().ok()?;
                                (a, b.parse::<usize>().map_or(len - 1, |b| b.min(len - 1)))
                            })
                        });
                        match span {
                            Some((a, b)) if a <= b => (
                                format!("HTTP/1.1 206 Partial Content\r\nContent-Type: {ct}\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b + 1 - a),
                                &body[a..=b],
                            ),
                            _ => (
                                format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
                                &body[..],
                            ),
                        }
                    }
                    None => (
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string(),
                        &[],
                    ),
                };
                // Counted before the client can have it; taken back if not sent.
                sent.fetch_add(body.len() as u64, Ordering::SeqCst);
                if s.write_all(head.as_bytes())
                    .and_then(|()| s.write_all(body))
                    .is_err()
                {
                    sent.fetch_sub(body.len() as u64, Ordering::SeqCst);
                }
                let _ = r.read(&mut [0u8; 0]);
            });
        }
    });
    (format!("http://{addr}"), sent)
}

struct Fixture {
    base: String,
    wheelhouse: tempfile::TempDir,
    /// Body bytes the index server has sent.
    sent: Arc<AtomicU64>,
}

/// (filename, bytes, requires-python, core-metadata sha256) of one index file.
type PageFile<'a> = (String, &'a [u8], Option<&'a str>, Option<String>);

fn json_page(files: &[PageFile]) -> Vec<u8> {
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, bytes, rp, meta)| {
            let mut f = serde_json::json!({
                "filename": name, "url": format!("../../files/{name}"),
                "hashes": {"sha256": sha256_hex(bytes)}, "yanked": false,
                "size": bytes.len(),
            });
            if let Some(rp) = rp {
                f["requires-python"] = serde_json::json!(rp);
            }
            if let Some(m) = meta {
                f["core-metadata"] = serde_json::json!({"sha256": m});
            }
            f
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"meta": {"api-version": "1.1"}, "files": files}))
        .unwrap()
}

fn fixture() -> Fixture {
    let mut routes: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    let json = "application/vnd.pypi.simple.v1+json".to_string();
    let scripts: &[(&str, &[u8], u32)] = &[
        ("demo/cli.py", b"def main():\n    print('demo ok')\n", 0o644),
        (
            "demo-1.0.dist-info/entry_points.txt",
            b"[console_scripts]\ndemo-cli = demo.cli:main\n",
            0o644,
        ),
        (
            "demo-1.0.data/scripts/demo-tool",
            b"#!python\nprint('tool')\n",
            0o755,
        ),
    ];
    let demo = Wheel {
        requires: &[
            "helper>=1",
            "tomli; python_version < \"3.11\"",
            "sockslib; extra == \"socks\"",
            "six>=1.10",
        ],
        extras: &["socks"],
        files: scripts,
        ..Wheel::simple("demo", "1.0")
    };
    let helper1 = Wheel::simple("helper", "1.0");
    let helper2 = Wheel {
        tag: "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
        ..Wheel::simple("helper", "2.0")
    };
    let helper3 = Wheel {
        requires_python: Some(">=3.13"),
        ..Wheel::simple("helper", "3.0")
    };
    let tomli = Wheel::simple("tomli", "2.0.1");
    let socks = Wheel::simple("sockslib", "1.0");
    let six = Wheel::simple("six", "1.17.0");
    let conflict = Wheel {
        requires: &["helper<1"],
        ..Wheel::simple("conflict_a", "1.0")
    };
    let badhash = Wheel::simple("badhash", "1.0");

    let mut add_files = |ws: &[&Wheel], page: &str, html: bool| {
        let mut entries = Vec::new();
        for w in ws {
            let bytes = w.build();
            let meta = w.metadata().into_bytes();
            routes.insert(
                format!("/files/{}", w.filename()),
                ("application/octet-stream".into(), bytes.clone()),
            );
            routes.insert(
                format!("/files/{}.metadata", w.filename()),
                ("text/plain".into(), meta.clone()),
            );
            entries.push((
                w.filename(),
                bytes,
                w.requires_python,
                Some(sha256_hex(&meta)),
            ));
        }
        let body = if html {
            let mut h = String::from("<html><body>\n");
            for (f, b, rp, _) in &entries {
                let rp = rp
                    .map(|r| format!(" data-requires-python=\"{}\"", r.replace('>', "&gt;")))
                    .unwrap_or_default();
                h += &format!(
                    "<a href=\"../../files/{f}#sha256={}\"{rp}>{f}</a><br/>\n",
                    sha256_hex(b)
                );
            }
            h.into_bytes()
        } else {
            let v: Vec<PageFile> = entries
                .iter()
                .map(|(f, b, rp, m)| (f.clone(), b.as_slice(), *rp, m.clone()))
                .collect();
            json_page(&v)
        };
        let ct = if html {
            "text/html".to_string()
        } else {
            json.clone()
        };
        routes.insert(format!("/simple/{page}/"), (ct, body));
    };
    add_files(&[&demo], "demo", false);
    add_files(&[&helper1, &helper2, &helper3], "helper", true);
    add_files(&[&tomli], "tomli", false);
    add_files(&[&socks], "sockslib", true);
    add_files(&[&six], "six", false);
    add_files(&[&conflict], "conflict-a", false);
    // badhash: the page promises other bytes than the file has.
    let bh = badhash.build();
    routes.insert(
        format!("/files/{}", badhash.filename()),
        ("application/octet-stream".into(), bh),
    );
    routes.insert(
        "/simple/badhash/".into(),
        (
            json.clone(),
            json_page(&[(badhash.filename(), b"something else", None, None)]),
        ),
    );
    // sdist only.
    routes.insert(
        "/files/sdistonly-1.0.tar.gz".into(),
        ("application/gzip".into(), b"not really".to_vec()),
    );
    routes.insert(
        "/simple/sdistonly/".into(),
        (
            "text/html".into(),
            b"<a href=\"../../files/sdistonly-1.0.tar.gz\">sdistonly-1.0.tar.gz</a>".to_vec(),
        ),
    );
    // The PEP 503 root page: every project (read only for "did you mean").
    let root: String = routes
        .keys()
        .filter_map(|k| k.strip_prefix("/simple/")?.strip_suffix('/'))
        .map(|n| format!("<a href=\"{n}/\">{n}</a>\n"))
        .collect();
    routes.insert("/simple/".into(), ("text/html".into(), root.into_bytes()));
    let (base, sent) = serve_counted(Arc::new(routes), false);
    let wheelhouse = tempfile::tempdir().unwrap();
    let local = Wheel::simple("localonly", "0.1");
    std::fs::write(wheelhouse.path().join(local.filename()), local.build()).unwrap();
    Fixture {
        base,
        wheelhouse,
        sent,
    }
}

fn debian_rootfs(minor: u32) -> Rootfs {
    let mut fs = Rootfs::default();
    fs.insert_file(&format!("/usr/bin/python3.{minor}"), b"\x7fELF");
    fs.insert_file(&format!("/usr/lib/python3.{minor}/os.py"), b"");
    fs.insert_file("/etc/debian_version", b"12.5\n");
    fs.insert_file(
        "/var/lib/dpkg/status",
        format!("Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u4\n\nPackage: python3.{minor}-minimal\nStatus: install ok installed\nVersion: 3.{minor}.2-1\n").as_bytes(),
    );
    fs.insert_file(
        "/usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
        b"Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n",
    );
    fs
}

/// [`plan`] of `s` (its files read under `spec_dir`) for a Debian image
/// with Python 3.`minor` on amd64.
fn plan_on(
    s: &PipSection,
    spec_dir: &Path,
    minor: u32,
    cache: &Cache,
) -> kiln_core::Result<kiln_pip::PipPlan> {
    plan(
        s,
        spec_dir,
        &debian_rootfs(minor),
        &Platform::linux("amd64"),
        &Http::new().unwrap(),
        cache,
    )
}

fn section(f: &Fixture, packages: &[&str]) -> PipSection {
    PipSection {
        packages: packages.iter().map(|s| s.to_string()).collect(),
        index: Some(format!("{}/simple", f.base)),
        find_links: vec![f.wheelhouse.path().to_string_lossy().into_owned()],
        isolated: true,
        ..Default::default()
    }
}

fn text(entries: &[Entry], path: &str) -> String {
    let e = entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} not in the layer"));
    match e.kind.file_bytes() {
        Some(d) => String::from_utf8(d.unwrap().into_owned()).unwrap(),
        None => panic!("{path}: {:?}", e.kind),
    }
}

fn run(
    packages: &[&str],
    minor: u32,
    target: &str,
) -> (
    kiln_pip::PipPlan,
    Vec<kiln_fs::layer::LayerGroup>,
    tempfile::TempDir,
) {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let mut s = section(&f, packages);
    s.target = target.into();
    let p = plan_on(&s, Path::new("."), minor, &cache).unwrap();
    let groups = layer_groups(&p, &cache).unwrap();
    (p, groups, dir)
}

fn pins(p: &kiln_pip::PipPlan) -> Vec<String> {
    p.wheels
        .iter()
        .map(|w| format!("{}=={}", w.name, w.version))
        .collect()
}

/// The pages a build fetches while it pulls the base are the ones the
/// resolver reads: it asks the index for none of them again.
#[test]
fn prefetched_pages_are_not_fetched_again() {
    let f = fixture();
    let s = section(&f, &["demo[socks]", "localonly"]);
    let plan_sent = |cache: &Cache| {
        let before = f.sent.load(Ordering::SeqCst);
        let p = plan_on(&s, Path::new("."), 11, cache).unwrap();
        (pins(&p), f.sent.load(Ordering::SeqCst) - before)
    };
    let cold = tempfile::tempdir().unwrap();
    let (pins_cold, cold_sent) = plan_sent(&Cache::open(cold.path()).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let before = f.sent.load(Ordering::SeqCst);
    kiln_pip::prefetch_pages(&s, Path::new("."), &Http::new().unwrap(), &cache);
    let prefetched = f.sent.load(Ordering::SeqCst) - before;
    // `demo`'s page (`localonly` is only in the wheelhouse, read later).
    assert!(prefetched > 0);
    let (pins_warm, warm_sent) = plan_sent(&cache);
    assert_eq!(pins_warm, pins_cold);
    assert_eq!(warm_sent + prefetched, cold_sent);
}

/// A second plan of the same section on the same cache takes the
/// resolution the first one kept: it reads no metadata (a memo changed
/// under it changes nothing). A page that changed since (as one fetched
/// again past the TTL would) or a wheel added to the wheelhouse resolves
/// again.
#[test]
fn a_kept_resolution_is_taken_until_a_page_or_the_wheelhouse_changes() {
    let f = fixture();
    let s = section(&f, &["demo[socks]", "localonly"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let plan_for =
        |minor: u32, cache: &Cache| pins(&plan_on(&s, Path::new("."), minor, cache).unwrap());
    let plan_pins = || plan_for(11, &cache);
    let cold = plan_pins();
    assert!(cold.contains(&"helper==2.0".to_string()), "{cold:?}");
    assert!(cold.contains(&"localonly==0.1".to_string()), "{cold:?}");
    let kept = cache.bucket(CacheBucket::PipResolutions);
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 1);
    // Another Python is another resolution (helper 2.0 is a cp311 wheel):
    // what a fresh cache gives, kept beside the first.
    let other = tempfile::tempdir().unwrap();
    let py312 = plan_for(12, &Cache::open(other.path()).unwrap());
    assert!(py312.contains(&"helper==1.0".to_string()), "{py312:?}");
    assert_eq!(plan_for(12, &cache), py312);
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 2);

    let page_memo = |project: &str| {
        let url = format!("{}/simple/{project}/", f.base);
        cache.entry(CacheBucket::PipPages, Digest::of(url.as_bytes()).hex())
    };
    // A page memo: the page's digest on a line, then its files as JSON.
    let read_memo = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let (page, json) = text.split_once('\n').unwrap();
        assert!(page.starts_with("sha256:"), "{page}");
        serde_json::from_str::<serde_json::Value>(json).unwrap()
    };
    let memo = read_memo(&page_memo("demo"));
    let demo_sha = memo["files"][0]["sha256"].as_str().unwrap().to_string();
    // Resolving again would now find nothing for demo's helper.
    std::fs::write(
        cache.entry(CacheBucket::PipMetadata, &demo_sha),
        "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: helper<1\n",
    )
    .unwrap();
    assert_eq!(plan_pins(), cold);

    // helper 2.0 leaves the index (its page, fetched again, is another
    // page): resolved again, with demo's true metadata.
    std::fs::remove_file(cache.entry(CacheBucket::PipMetadata, &demo_sha)).unwrap();
    let helper = page_memo("helper");
    let mut memo = read_memo(&helper);
    memo["files"]
        .as_array_mut()
        .unwrap()
        .retain(|f| !f["filename"].as_str().unwrap().starts_with("helper-2.0"));
    let other_page = Digest::of(b"the page without helper 2.0");
    std::fs::write(&helper, format!("{other_page}\n{memo}")).unwrap();
    let without = plan_pins();
    assert!(without.contains(&"helper==1.0".to_string()), "{without:?}");

    // A newer wheel in the wheelhouse: resolved again.
    let newer = Wheel::simple("localonly", "0.2");
    std::fs::write(f.wheelhouse.path().join(newer.filename()), newer.build()).unwrap();
    let added = plan_pins();
    assert!(added.contains(&"localonly==0.2".to_string()), "{added:?}");
    assert!(added.contains(&"helper==1.0".to_string()), "{added:?}");

    // A damaged kept resolution is resolved again and replaced.
    for e in std::fs::read_dir(&kept).unwrap() {
        std::fs::write(e.unwrap().path(), b"{\"format\": 1, \"proj").unwrap();
    }
    assert_eq!(plan_pins(), added);
    let whole = std::fs::read_dir(&kept)
        .unwrap()
        .filter(|e| {
            serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(e.as_ref().unwrap().path()).unwrap(),
            )
            .is_ok()
        })
        .count();
    assert_eq!(whole, 1, "the 3.11 resolution is whole again");
}

/// What a build checks before it takes an earlier unlocked build's pins
/// and stages whole: the plan's kept resolution, which holds while the
/// options, the sources and every page and wheelhouse listing it read are
/// the same.
#[test]
fn a_kept_resolution_holds_until_its_options_or_sources_change() {
    let f = fixture();
    let s = section(&f, &["demo[socks]", "localonly"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let first = plan_on(&s, Path::new("."), 11, &cache).unwrap();
    let kept = first
        .kept
        .clone()
        .expect("wheels from pages with hashes: kept");
    let second = plan_on(&s, Path::new("."), 11, &cache).unwrap();
    assert_eq!(second.resolution, kiln_pip::Resolution::Kept);
    assert_eq!(second.kept.as_ref(), Some(&kept));
    let holds = |s: &PipSection, builder: bool| {
        kiln_pip::kept_resolution_holds(
            &kept,
            s,
            Path::new("."),
            &Platform::linux("amd64"),
            builder,
            &Http::new().unwrap(),
            &cache,
        )
        .unwrap()
    };
    assert!(holds(&s, false));
    // A plan that could build sdists is another resolution.
    assert!(!holds(&s, true));
    // Other options or sources: pre-releases, one more requirement, the
    // wheelhouse alone.
    let pre = PipSection {
        prerelease: true,
        ..s.clone()
    };
    assert!(!holds(&pre, false));
    assert!(!holds(
        &section(&f, &["demo[socks]", "localonly", "helper"]),
        false
    ));
    let wheelhouse_only = PipSection {
        index: None,
        no_index: true,
        ..s.clone()
    };
    assert!(!holds(&wheelhouse_only, false));
    assert!(holds(&s, false));
    // A newer wheel in the wheelhouse: no longer.
    let newer = Wheel::simple("localonly", "0.2");
    std::fs::write(f.wheelhouse.path().join(newer.filename()), newer.build()).unwrap();
    assert!(!holds(&s, false));
}

/// The same requirements file in another directory (a service's job, a
/// CI checkout) takes the resolution kept for the first: where a line was
/// written is no input of it.
#[test]
fn a_kept_resolution_does_not_depend_on_where_the_spec_is() {
    let f = fixture();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let s = PipSection {
        requirements: vec!["requirements.txt".into()],
        ..section(&f, &[])
    };
    let plan_in = |dir: &Path| {
        std::fs::write(dir.join("requirements.txt"), "demo[socks]\nlocalonly\n").unwrap();
        plan_on(&s, dir, 11, &cache).unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = plan_in(a.path());
    assert_eq!(first.resolution, kiln_pip::Resolution::Resolved);
    let second = plan_in(b.path());
    assert_eq!(second.resolution, kiln_pip::Resolution::Kept);
    assert_eq!(pins(&second), pins(&first));
}

/// A build starts what needs only the image below the stage (the
/// compiler's tree) from `Hooks::resolved`: once, after the resolution,
/// before any wheel is fetched.
#[test]
fn the_resolved_hook_runs_once_between_resolution_and_downloads() {
    let f = fixture();
    let s = section(&f, &["demo[socks]", "localonly"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let calls = std::sync::Mutex::new(Vec::new());
    let before = f.sent.load(Ordering::SeqCst);
    // What the index had sent and which wheel blobs the cache held then,
    // and the interpreter named.
    let hook = |python: &kiln_pip::PythonTarget| {
        assert_eq!(python.interpreter, "/usr/bin/python3.11");
        assert_eq!(python.full_version(), "3.11.2");
        let held: Vec<String> = std::fs::read_dir(cache.bucket(kiln_store::CacheBucket::Blobs))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        calls
            .lock()
            .unwrap()
            .push((f.sent.load(Ordering::SeqCst), held));
    };
    let p = kiln_pip::plan_building(
        &s,
        Path::new("."),
        &debian_rootfs(11),
        &Platform::linux("amd64"),
        &Http::new().unwrap(),
        &cache,
        kiln_pip::Hooks {
            resolved: Some(&hook),
            ..Default::default()
        },
    )
    .unwrap();
    let calls = calls.into_inner().unwrap();
    assert_eq!(calls.len(), 1, "called once");
    // The pages were asked for, and came, gzip-encoded (and read).
    assert!(GZIPPED.load(Ordering::SeqCst) > 0);
    let (sent_then, held_then) = &calls[0];
    assert!(*sent_then > before, "the index pages were read before it");
    let wheels = kiln_pip::pins(&p, "pip");
    assert_eq!(wheels.len(), 4, "{wheels:?}");
    // The resolver reads a wheel whole for its metadata when the index
    // gives no metadata file (and a wheelhouse's are read in place):
    // `demo` alone has one, so it alone is left to the downloads.
    let fetched_after: Vec<&str> = wheels
        .iter()
        .filter(|w| !held_then.iter().any(|h| h == w.sha256.hex()))
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(fetched_after, ["demo"]);
    for w in &wheels {
        assert!(cache.contains(&w.sha256), "{} is in the cache", w.filename);
    }
    assert!(
        f.sent.load(Ordering::SeqCst) > *sent_then,
        "wheels came after it"
    );
}

#[test]
fn resolves_for_python_39_with_extras_and_installs() {
    let (p, groups, _d) = run(&["demo[socks]", "localonly"], 9, "system");
    assert_eq!(
        pins(&p),
        vec![
            "demo==1.0",
            "helper==1.0",
            "localonly==0.1",
            "sockslib==1.0",
            "tomli==2.0.1"
        ]
    );
    assert_eq!(
        p.already_installed,
        vec![("six".to_string(), "1.16.0".to_string())]
    );
    // One layer per wheel: a version bump re-pushes only that wheel.
    assert_eq!(groups.len(), p.wheels.len());
    assert_eq!(groups[0].label, "pip install demo==1.0");
    let entries = &groups
        .iter()
        .flat_map(|g| g.entries.clone())
        .collect::<Vec<_>>();
    let site = "usr/local/lib/python3.9/dist-packages";
    assert!(entries
        .iter()
        .any(|e| e.path == format!("{site}/demo/cli.py")));
    assert!(
        !entries.iter().any(|e| e.path.contains("/six")),
        "six must not be reinstalled"
    );
    let cli = text(entries, "usr/local/bin/demo-cli");
    assert!(
        cli.starts_with("#!/usr/bin/python3.9\n") && cli.contains("from demo.cli import main"),
        "{cli}"
    );
    assert_eq!(
        entries
            .iter()
            .find(|e| e.path == "usr/local/bin/demo-cli")
            .unwrap()
            .mode,
        0o755
    );
    assert_eq!(
        text(entries, "usr/local/bin/demo-tool"),
        "#!/usr/bin/python3.9\nprint('tool')\n"
    );
    assert_eq!(
        text(entries, &format!("{site}/demo-1.0.dist-info/INSTALLER")),
        "kiln\n"
    );
    assert!(entries
        .iter()
        .any(|e| e.path == format!("{site}/demo-1.0.dist-info/REQUESTED")));
    assert!(!entries
        .iter()
        .any(|e| e.path == format!("{site}/helper-1.0.dist-info/REQUESTED")));
    let record = text(entries, &format!("{site}/demo-1.0.dist-info/RECORD"));
    assert!(record.contains("../../../bin/demo-cli,sha256="), "{record}");
    assert!(record.contains("demo/cli.py,sha256="), "{record}");
    // Each layer (a wheel's own: one part): sorted, parents first, each
    // path once.
    for g in &groups {
        assert!(g.parts.is_empty());
        let paths: Vec<&str> = g.entries.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted);
        assert!(paths.contains(&"usr/local/lib"));
    }
}

#[test]
fn python_311_target_gets_other_markers_and_platform_wheel() {
    let (p, groups, _d) = run(&["demo"], 11, "system");
    assert_eq!(
        pins(&p),
        vec!["demo==1.0", "helper==2.0"],
        "no tomli on 3.11, cp311 wheel of helper, 3.0 needs 3.13"
    );
    let again = {
        let (_, g, _d) = run(&["demo"], 11, "system");
        g
    };
    let flat = |g: &[kiln_fs::layer::LayerGroup]| -> Vec<(String, Vec<u8>, u32)> {
        g.iter()
            .flat_map(|g| g.entries.iter())
            .map(|e| {
                let d = match e.kind.file_bytes() {
                    Some(d) => d.unwrap().into_owned(),
                    None => Vec::new(),
                };
                (e.path.clone(), d, e.mode)
            })
            .collect()
    };
    assert_eq!(
        flat(&groups),
        flat(&again),
        "same wheels must give identical entries"
    );
}

#[test]
fn venv_target() {
    let (p, groups, _d) = run(&["helper"], 11, "/opt/venv");
    assert_eq!(pins(&p), vec!["helper==2.0"]);
    let entries = &groups
        .iter()
        .flat_map(|g| g.entries.clone())
        .collect::<Vec<_>>();
    assert!(text(entries, "opt/venv/pyvenv.cfg").contains("home = /usr/bin"));
    assert!(entries
        .iter()
        .any(|e| e.path == "opt/venv/lib/python3.11/site-packages/helper/__init__.py"));
    assert!(entries.iter().any(|e| e.path == "opt/venv/bin/python"
        && matches!(&e.kind, EntryKind::Symlink { target } if target == "/usr/bin/python3.11")));
}

fn plan_err(packages: &[&str], cache: &Cache) -> kiln::Error {
    let f = fixture();
    plan_on(&section(&f, packages), Path::new("."), 11, cache).unwrap_err()
}

#[test]
fn hash_mismatch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let count = |sub: &str| std::fs::read_dir(dir.path().join(sub)).unwrap().count();
    let err = plan_err(&["badhash"], &cache);
    assert!(err.to_string().contains("mismatch"), "{err}");
    assert!(err.to_string().contains("badhash"), "{err}");
    assert_eq!(count("blobs/sha256"), 0, "nothing may be stored");
    assert_eq!(count("tmp"), 0);
}

/// No PubGrub internals, no Debug formatting.
fn readable(m: &str) {
    for bad in [
        "∅",
        "Root",
        "requirements 0",
        "Glibc {",
        "Version {",
        "[pip] requirements ",
    ] {
        assert!(!m.contains(bad), "{bad:?} in:\n{m}");
    }
}

#[test]
fn sdist_only_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = plan_err(&["sdistonly"], &Cache::open(dir.path()).unwrap());
    let m = err.to_string();
    readable(&m);
    assert_eq!(err.kind(), kiln::ErrorKind::Input, "{err}");
    assert!(
        matches!(err.downcast_ref::<PipError>(), Some(PipError::CannotInstall { problems, .. })
            if matches!(&problems[..], [RequirementProblem::NoWheel { name, files, .. }]
                if name == "sdistonly" && files.iter().any(|f| f == "sdistonly-1.0.tar.gz"))),
        "{err:?}"
    );
    assert!(
        m.starts_with("[pip] 1 requirement cannot be installed on CPython 3.11.2 on x86_64 (glibc 2.36):\n  - `sdistonly`: no wheel of sdistonly 1.0 fits this image; there is only sdistonly-1.0.tar.gz (an sdist is built only by `kiln build` for the host's architecture)"),
        "{m}"
    );
    assert!(
        m.contains("`pip wheel --no-deps sdistonly==1.0 -w wheelhouse/`")
            && m.contains("cp311-cp311-manylinux_2_36_x86_64"),
        "{m}"
    );
    assert!(m.contains("find-links"), "{m}");
}

#[test]
fn requires_python_is_named_as_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    // helper 3.0's wheel says Requires-Python >=3.13 on the (HTML) page.
    let err = plan_err(&["helper==3.0"], &Cache::open(dir.path()).unwrap());
    let m = err.to_string();
    readable(&m);
    assert!(
        m.contains("helper==3.0 requires Python >=3.13; the image has Python 3.11.2; the newest helper that supports it is 2.0"),
        "{m}"
    );
    assert!(!m.contains("no wheel") && !m.contains("pip wheel"), "{m}");
}

#[test]
fn every_problem_of_the_requirements_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let err = plan_err(
        &[
            "helper==1.0",
            "Helper==2.0",
            "sdistonly==1.0",
            "tomli==9.9.9",
        ],
        &Cache::open(dir.path()).unwrap(),
    );
    let m = err.to_string();
    readable(&m);
    assert!(
        matches!(err.downcast_ref::<PipError>(), Some(PipError::CannotInstall { problems, .. }) if problems.len() == 3),
        "{err:?}"
    );
    for want in [
        "[pip] 3 requirements cannot be installed on CPython 3.11.2 on x86_64 (glibc 2.36):",
        "\n  - `sdistonly==1.0`: no wheel of sdistonly 1.0 fits this image",
        "\n  - `tomli==9.9.9`: no such version; tomli has 2.0.1",
        "\n  - you require helper==1.0 and helper==2.0; no version of helper is both",
        "(`pip wheel --no-deps sdistonly==1.0 -w wheelhouse/`)",
        "\n  sources: http://127.0.0.1:",
    ] {
        assert!(m.contains(want), "{want:?} in:\n{m}");
    }
}

#[test]
fn unsatisfiable_prints_the_conflict_chain() {
    let dir = tempfile::tempdir().unwrap();
    let err = plan_err(
        &["conflict-a", "helper>=1"],
        &Cache::open(dir.path()).unwrap(),
    );
    let m = err.to_string();
    readable(&m);
    assert_eq!(err.kind(), kiln::ErrorKind::Input, "{err}");
    assert!(
        matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::Unsatisfiable { .. })
        ),
        "{err:?}"
    );
    assert!(
        m.starts_with("[pip] your requirements cannot be satisfied on CPython 3.11.2 on x86_64 (glibc 2.36):\n"),
        "{m}"
    );
    assert!(
        m.contains("conflict-a==1.0 depends on helper<1, which no version of helper meets (helper has 3.0, 2.0, 1.0)")
            && m.contains("you require conflict-a"),
        "{m}"
    );
    // Every missing name and version at once: close names from the
    // index's root page and the find-links directory, versions newest first.
    let err = plan_err(
        &["no-such-package", "sdistonyl", "localonyl", "badhash==9.9"],
        &Cache::open(dir.path()).unwrap(),
    );
    assert_eq!(err.kind(), kiln::ErrorKind::Input, "{err}");
    assert!(
        matches!(err.downcast_ref::<PipError>(), Some(PipError::UnknownPackages { missing, .. }) if missing.len() == 4),
        "{err:?}"
    );
    let m = err.to_string();
    for want in [
        "[pip] 4 requested packages not found on http://127.0.0.1:",
        "\n  - `no-such-package`: no such package\n",
        "\n  - `sdistonyl`: no such package; did you mean `sdistonly`?",
        "\n  - `localonyl`: no such package; did you mean `localonly`?",
        "\n  - `badhash==9.9`: no such version; badhash has 1.0",
    ] {
        assert!(m.contains(want), "{want:?}\n{m}");
    }
}

#[test]
fn hash_checking_mode_covers_dependencies_as_pip_does() {
    let f = fixture();
    let page = Http::new()
        .unwrap()
        .get(&format!("{}/simple/demo/", f.base), None)
        .unwrap();
    let page: serde_json::Value = serde_json::from_slice(&page.bytes).unwrap();
    let demo = page["files"][0]["hashes"]["sha256"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = plan_on(
        &section(&f, &[&format!("demo==1.0 --hash=sha256:{demo}")]),
        Path::new("."),
        11,
        &Cache::open(dir.path()).unwrap(),
    )
    .unwrap_err();
    let m = err.to_string();
    assert_eq!(err.kind(), kiln::ErrorKind::Input, "{m}");
    // helper comes with demo and has no hash; six is in the image already.
    let helper = match err.downcast_ref::<PipError>() {
        Some(PipError::UnhashedDependencies { lines }) if lines.len() == 1 => lines[0].clone(),
        _ => panic!("{err:?}"),
    };
    assert!(helper.starts_with("helper==2.0 --hash=sha256:"), "{helper}");
    assert_eq!(helper.len(), "helper==2.0 --hash=sha256:".len() + 64);
    assert!(
        m.contains("these dependencies have none. After checking them, add lines like these to the requirements file:\n    helper==2.0 --hash=sha256:"),
        "{m}"
    );
    // With the line added, the set installs.
    let p = plan_on(
        &section(&f, &[&format!("demo==1.0 --hash=sha256:{demo}"), &helper]),
        Path::new("."),
        11,
        &Cache::open(dir.path()).unwrap(),
    )
    .unwrap();
    assert_eq!(pins(&p), ["demo==1.0", "helper==2.0"]);
}

/// A wheel of `size` incompressible bytes (stored, as compressed data is in
/// real wheels) and then a small METADATA, as wheel builders lay them out.
fn big_wheel(size: usize) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("bigwheel/blob.bin", stored).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut blob = Vec::with_capacity(size + 8);
    while blob.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blob.extend_from_slice(&x.to_le_bytes());
    }
    z.write_all(&blob).unwrap();
    let small = zip::write::SimpleFileOptions::default();
    z.start_file("bigwheel-1.0.dist-info/METADATA", small)
        .unwrap();
    z.write_all(
        b"Metadata-Version: 2.1\nName: bigwheel\nVersion: 1.0\nRequires-Dist: tinydep>=1\n",
    )
    .unwrap();
    z.start_file("bigwheel-1.0.dist-info/WHEEL", small).unwrap();
    z.write_all(b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        .unwrap();
    z.finish().unwrap().into_inner()
}

/// An index without PEP 658 metadata: bigwheel (20 MB) requiring tinydep.
fn no_pep658_routes() -> Routes {
    let json = "application/vnd.pypi.simple.v1+json".to_string();
    let big = big_wheel(20 << 20);
    let tiny = Wheel::simple("tinydep", "1.0").build();
    let mut routes: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    routes.insert(
        "/simple/bigwheel/".into(),
        (
            json.clone(),
            json_page(&[("bigwheel-1.0-py3-none-any.whl".into(), &big, None, None)]),
        ),
    );
    routes.insert(
        "/simple/tinydep/".into(),
        (
            json.clone(),
            json_page(&[("tinydep-1.0-py3-none-any.whl".into(), &tiny, None, None)]),
        ),
    );
    let octet = "application/octet-stream".to_string();
    routes.insert(
        "/files/bigwheel-1.0-py3-none-any.whl".into(),
        (octet.clone(), big),
    );
    routes.insert("/files/tinydep-1.0-py3-none-any.whl".into(), (octet, tiny));
    Arc::new(routes)
}

/// Resolve `bigwheel` as `kiln lock` does (a deferring client: wheels only
/// installed are not fetched): the pins and the body bytes the server sent.
fn lock_bigwheel(routes: Routes, ranges: bool) -> (Vec<String>, u64, bool) {
    let big: kiln_core::Digest = format!(
        "sha256:{}",
        sha256_hex(&routes["/files/bigwheel-1.0-py3-none-any.whl"].1)
    )
    .parse()
    .unwrap();
    let (base, sent) = serve_counted(routes, ranges);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let section = PipSection {
        packages: vec!["bigwheel".into()],
        index: Some(format!("{base}/simple")),
        isolated: true,
        ..Default::default()
    };
    let p = plan(
        &section,
        Path::new("."),
        &debian_rootfs(11),
        &Platform::linux("amd64"),
        &Http::new().unwrap().deferring(),
        &cache,
    )
    .unwrap();
    (pins(&p), sent.load(Ordering::SeqCst), cache.contains(&big))
}

#[test]
fn metadata_without_pep_658_is_read_by_range_requests() {
    let routes = no_pep658_routes();
    let (pins_ranged, bytes, downloaded) = lock_bigwheel(routes.clone(), true);
    assert_eq!(pins_ranged, ["bigwheel==1.0", "tinydep==1.0"]);
    eprintln!("with ranges: {bytes} bytes sent");
    assert!(
        bytes < 1 << 20,
        "{bytes} bytes read for the metadata of a 20 MB wheel"
    );
    assert!(!downloaded, "the wheel is in the cache: it was downloaded");
    // A server that does not serve ranges: the whole wheel, as before.
    let (pins_full, bytes, downloaded) = lock_bigwheel(routes, false);
    assert_eq!(pins_full, pins_ranged);
    assert!(downloaded, "the wheel was not downloaded");
    assert!(bytes >= 20 << 20, "{bytes} bytes sent");
}

#[test]
fn no_python_in_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let err = plan(
        &PipSection {
            packages: vec!["six".into()],
            isolated: true,
            ..Default::default()
        },
        Path::new("."),
        &Rootfs::default(),
        &Platform::linux("amd64"),
        &Http::new().unwrap(),
        &cache,
    )
    .unwrap_err();
    assert_eq!(err.kind(), kiln::ErrorKind::Input, "{err}");
    assert!(
        matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::NoInterpreter { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("[pip] needs a Python interpreter in the image; none found at"),
        "{err}"
    );
}

#[test]
fn kiln_lock_names_every_problem_and_exits_2() {
    let f = fixture();
    let ws = Workspace::new("pip-problems");
    python_base(&ws);
    ws.write(
        "requirements.txt",
        "helper==3.0\nsdistonly==1.0\npkg-resources==0.0.0\ntomli==9.9.9\n",
    );
    ws.spec(&format!(
        "[image]\nbase = \"oci:py:v1\"\n[pip]\nrequirements = [\"requirements.txt\"]\nindex = \"{}/simple\"\nisolated = true\n",
        f.base
    ));
    let r = expect_failure(
        &ws,
        &["lock"],
        2,
        &[
            // (sdistonly==1.0 is no problem: `kiln` builds its sdist.)
            "[pip] 2 requirements cannot be installed on CPython 3.11.0 on x86_64 (glibc 2.36):",
            "requirements.txt:1: helper==3.0 requires Python >=3.13; the image has Python 3.11.0; the newest helper that supports it is 2.0",
            "requirements.txt:4: `tomli==9.9.9`: no such version; tomli has 2.0.1",
            "requirements.txt:3: skipping `pkg-resources==0.0.0`",
        ],
    );
    readable(&r.stderr);
    assert!(!ws.join("kiln.lock").exists());
}

/// A wheel whose RECORD disagrees with a member installs, as pip and uv
/// install it (torch 1.7 to 1.12 ship a RECORD whose METADATA line is
/// wrong): the member is the bytes the wheel holds (their CRC-32 holds),
/// and the installed RECORD lists it with the hash the wheel's RECORD
/// gives. A line with no hash gets the member's own.
#[test]
fn a_wheel_whose_record_disagrees_with_a_member_installs() {
    let ws = Workspace::new("pip-record");
    python_base(&ws);
    let members: [(&str, &[u8]); 4] = [
        ("odd/__init__.py", b"X = 1\n"),
        ("odd/util.py", b"Y = 2\n"),
        (
            "odd-1.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: odd\nVersion: 1.0\n",
        ),
        (
            "odd-1.0.dist-info/WHEEL",
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
    ];
    let wrong = format!("sha256={}", "A".repeat(43));
    let record = format!(
        "odd/__init__.py,{wrong},99\nodd/util.py,,\nodd-1.0.dist-info/METADATA,{},{}\nodd-1.0.dist-info/WHEEL,{},{}\nodd-1.0.dist-info/RECORD,,\n",
        record_hash(members[2].1),
        members[2].1.len(),
        record_hash(members[3].1),
        members[3].1.len(),
    );
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in members
        .iter()
        .chain([&("odd-1.0.dist-info/RECORD", record.as_bytes())])
    {
        z.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(data).unwrap();
    }
    ws.write(
        "wheels/odd-1.0-py3-none-any.whl",
        z.finish().unwrap().into_inner(),
    );
    ws.spec(
        "[image]\nbase = \"oci:py:v1\"\n\n[pip]\npackages = [\"odd\"]\nfind-links = [\"wheels\"]\nno-index = true\n",
    );
    let (_, site) = build_and_unpack(&ws);
    assert_eq!(
        std::fs::read(site.join("odd/__init__.py")).unwrap(),
        b"X = 1\n"
    );
    let installed = std::fs::read_to_string(site.join("odd-1.0.dist-info/RECORD")).unwrap();
    let lines: Vec<&str> = installed.lines().collect();
    assert!(
        lines.contains(&format!("odd/__init__.py,{wrong},6").as_str()),
        "{installed}"
    );
    let util = format!("odd/util.py,{},6", record_hash(b"Y = 2\n"));
    assert!(lines.contains(&util.as_str()), "{installed}");
}

/// The wheels of a pinned requirement are downloaded while the base is
/// read, for the Python its paths show first; a guess the whole view
/// overrules costs a download, not the image. Here the base's first
/// interpreter path is a `python3.10` with no standard library beside it:
/// the guess fetches the cp310 wheel, the resolver (which needs `os.py`)
/// takes CPython 3.11 and installs the cp311 one.
#[test]
fn a_wrong_guess_of_the_python_costs_a_download_not_the_image() {
    use crate::common::{python_base_with, Item};
    let ws = Workspace::new("pip-guess");
    python_base_with(
        &ws,
        &[Item::File("usr/bin/python3.10", b"\x7fELF", 0o755)],
        &[
            Item::Dir("usr/lib/x86_64-linux-gnu/", 0o755),
            Item::File("usr/lib/x86_64-linux-gnu/libc.so.6", b"\x7fELF", 0o755),
        ],
    );
    let mut page = String::new();
    let mut digests = Vec::new();
    for (minor, body) in [(10, b"MINOR = 10\n"), (11, b"MINOR = 11\n")] {
        let tag = format!("cp3{minor}-cp3{minor}-manylinux_2_17_x86_64");
        let files: &[(&str, &[u8], u32)] = &[("plat/which.py", body, 0o644)];
        let wheel = Wheel {
            tag: &tag,
            files,
            ..Wheel::simple("plat", "1.0")
        };
        let bytes = wheel.build();
        ws.write(&format!("files/{}", wheel.filename()), &bytes);
        let name = wheel.filename();
        page += &format!(
            "<a href=\"../../files/{name}#sha256={}\">{name}</a>\n",
            sha256_hex(&bytes)
        );
        digests.push(Digest::of(&bytes));
    }
    ws.write("simple/plat/index.html", page);
    ws.spec(&format!(
        "[image]\nbase = \"oci:py:v1\"\n[pip]\npackages = [\"plat==1.0\"]\nindex = \"file://{}\"\nisolated = true\n",
        ws.join("simple").display()
    ));
    let (rootfs, site) = build_and_unpack(&ws);
    assert_eq!(
        std::fs::read_to_string(site.join("plat/which.py")).unwrap(),
        "MINOR = 11\n"
    );
    assert!(!rootfs.join("usr/lib/python3.10").exists());
    // The cp311 wheel is in the cache; the guess's cp310 one usually is
    // too (it is fetched before resolving starts, but a build that ends
    // first stops it: not asserted).
    let cache = Cache::open(ws.join("cache")).unwrap();
    assert!(cache.contains(&digests[1]));
}

/// `kiln build -o oci:out` of the workspace's spec (its cache in the
/// workspace), unpacked: the root and the base's site-packages.
fn build_and_unpack(ws: &Workspace) -> (std::path::PathBuf, std::path::PathBuf) {
    ws.kiln()
        .env("KILN_CACHE", ws.join("cache"))
        .args(["build", "-o", "oci:out"])
        .run_ok();
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    let site = rootfs.join("usr/lib/python3.11/site-packages");
    (rootfs, site)
}
