//! kiln.lock, `--locked`, `kiln fetch`, `--offline` and reproducibility,
//! hermetically: a base image in the test registry, a conda channel served
//! over loopback HTTP and a local wheelhouse. Offline builds run in a
//! network namespace with no network at all (`unshare -n`, needs root).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::conda_channel::*;
use serde_json::Value;

struct Setup {
    ws: Workspace,
    server: FileServer,
    base_repo: String,
}

fn wheel(ws: &Workspace, name: &str, version: &str) {
    let di = format!("{name}-{version}.dist-info");
    let members: Vec<(String, Vec<u8>, u32)> = [
        (format!("{name}/__init__.py"), format!("V = {version:?}\n")),
        (
            format!("{di}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
        ),
        (
            format!("{di}/WHEEL"),
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_string(),
        ),
    ]
    .into_iter()
    .map(|(p, d)| (p, d.into_bytes(), 0o644))
    .collect();
    ws.write(
        &format!("env/wheels/{name}-{version}-py3-none-any.whl"),
        wheel_zip(&members),
    );
}

fn setup(label: &str) -> Setup {
    let ws = Workspace::new(label);
    let python = fake_python("3.11.0");
    let lib1 = pkg("libdemo", "1.0", &[], vec![file("share/demo", b"1.0\n")]);
    write_channel(&ws.join("channel"), &[python, lib1]);
    let server = FileServer::start(&ws.join("channel"));
    wheel(&ws, "tinywheel", "1.0");
    ws.write(
        "env/environment.yml",
        format!(
            "channels:\n  - http://127.0.0.1:{}/\ndependencies:\n  - python=3.11\n  - libdemo\n  - pip:\n    - --no-index\n    - --find-links ./wheels\n    - tinywheel\n",
            server.port
        ),
    );
    let reg = Registry::shared();
    let base_repo = unique_repo("lockbase");
    push_scratch_image(reg, &base_repo, "v1", &[("hello.txt", "base v1\n")]);
    let base = reg.docker_ref(&base_repo, "v1").replace("docker://", "");
    ws.spec(&format!(
        "[image]\nbase = {base:?}\ntags = [\"t\"]\nplatforms = [\"linux/amd64\"]\n\n[conda]\nenvironment = \"env/environment.yml\"\n"
    ));
    Setup {
        ws,
        server,
        base_repo,
    }
}

fn kiln_in(s: &Setup, cache: &Path, args: &[&str]) -> Command {
    let mut c = s.ws.kiln();
    c.env("KILN_CACHE", cache)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .args(args);
    c
}

fn build(s: &Setup, cache: &Path, out: &str, extra: &[&str]) -> Value {
    let o = format!("oci:{out}");
    let mut args = vec!["build", "kiln.toml", "-o", &o, "--json"];
    args.extend_from_slice(extra);
    let v = kiln_in(s, cache, &args).run_ok().json();
    check_build_json(&v);
    v
}

/// `kiln ARGS` inside a new network namespace (loopback down: no network at all).
fn offline(s: &Setup, cache: &Path, args: &[&str]) -> crate::common::Run {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let mut c = Command::new("unshare");
    c.current_dir(s.ws.path())
        .env("KILN_CACHE", cache)
        .arg("-n")
        .arg(kiln)
        .args(args);
    c.run()
}

#[test]
fn lock_pins_every_input_and_builds_from_it() {
    let s = setup("lock-basic");
    let cache = unique_dir("cache");
    let unlocked = build(&s, &cache, "unlocked", &[]);
    assert_eq!(unlocked["lock"], "absent");

    let r = kiln_in(&s, &cache, &["lock", "--json"]).run_ok().json();
    assert_eq!(r["status"], "written", "{r}");
    assert_eq!(r["conda"], 2);
    assert_eq!(r["pip"], 1);
    let text = fs::read_to_string(s.ws.join("kiln.lock")).unwrap();
    assert!(
        text.contains("[[platform.conda]]") && text.contains("[[platform.pip]]"),
        "{text}"
    );
    assert!(text.contains("base-top = \"sha256:"), "{text}");
    assert!(text.contains("libdemo-1.0-h0_0.conda"), "{text}");
    // Locking again changes nothing.
    let r = kiln_in(&s, &cache, &["lock", "--json"]).run_ok().json();
    assert_eq!(r["status"], "unchanged");

    let locked = build(&s, &cache, "locked", &["--locked"]);
    assert_eq!(locked["lock"], "used");
    // The same layers as the fresh build; the image is dated by the lock
    // (its `resolved-at`), the fresh one by its inputs (none here: 1970).
    assert_eq!(locked["layers"], unlocked["layers"]);
    let lock: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        Layout::open(s.ws.join("locked")).config("t")["created"],
        lock["resolved-at"].as_str().unwrap()
    );
    // A second locked build takes the stages from the first, same result.
    let reused = build(&s, &cache, "reused", &["--locked"]);
    assert_eq!(reused["stages_reused"], 1, "{reused}");
    assert_eq!(reused["digest"], locked["digest"]);
    assert_eq!(
        fs::read(s.ws.join("reused/sbom/linux-amd64.spdx.json")).unwrap(),
        fs::read(s.ws.join("locked/sbom/linux-amd64.spdx.json")).unwrap()
    );
    // A damaged layer in the cache: the stages run again, same result.
    let layer = reused["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let blob = cache.join("blobs/sha256").join(layer);
    fs::write(&blob, b"damaged").unwrap();
    let rebuilt = build(&s, &cache, "rebuilt", &["--locked"]);
    assert_eq!(rebuilt["stages_reused"], 0, "{rebuilt}");
    assert_eq!(rebuilt["digest"], locked["digest"]);

    // The base tag moves on; the lock keeps the image on the pinned base.
    push_scratch_image(
        Registry::shared(),
        &s.base_repo,
        "v1",
        &[("hello.txt", "base v2\n")],
    );
    let again = build(&s, &cache, "again", &["--locked"]);
    assert_eq!(again["digest"], locked["digest"]);
    let r = kiln_in(&s, &cache, &["lock", "--upgrade", "--json"])
        .run_ok()
        .json();
    assert_eq!(r["status"], "updated", "{r}");
    let upgraded = build(&s, &cache, "upgraded", &["--locked"]);
    assert_ne!(upgraded["digest"], locked["digest"]);

    // An edited spec: --locked refuses with a readable diff and writes nothing.
    let env = fs::read_to_string(s.ws.join("env/environment.yml")).unwrap();
    s.ws.write("env/environment.yml", env.replace("  - libdemo\n", ""));
    let spec = fs::read_to_string(s.ws.join("kiln.toml")).unwrap();
    s.ws.write(
        "kiln.toml",
        format!("{spec}channel-priority = \"disabled\"\n"),
    );
    let run = kiln_in(
        &s,
        &cache,
        &["build", "kiln.toml", "-o", "oci:edited", "--locked"],
    )
    .run();
    let run = run.code_is(2);
    assert!(run.stderr.contains("does not match"), "{}", run.describe());
    assert!(
        run.stderr
            .contains("+ conda.channel-priority = \"disabled\""),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("- file env/environment.yml = sha256:"),
        "{}",
        run.describe()
    );
    assert!(!s.ws.join("edited").exists());
    // Without --locked the stale lock is ignored and the spec resolved.
    let v = build(&s, &cache, "edited", &[]);
    assert_eq!(v["lock"], "stale");
}

#[test]
fn a_pin_that_no_longer_matches_is_an_error() {
    let s = setup("lock-mismatch");
    let cache = unique_dir("cache");
    kiln_in(&s, &cache, &["lock"]).run_ok();
    // The channel now serves different bytes under the locked file name.
    let archive = s.ws.join("channel/linux-64/libdemo-1.0-h0_0.conda");
    let mut bytes = fs::read(&archive).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    fs::write(&archive, bytes).unwrap();
    let run = kiln_in(
        &s,
        &unique_dir("cache"),
        &["build", "kiln.toml", "-o", "oci:out", "--locked"],
    )
    .run()
    .code_is(2);
    assert!(run.stderr.contains("libdemo"), "{}", run.describe());
    assert!(run.stderr.contains("sha256"), "{}", run.describe());
    assert!(!s.ws.join("out").exists());
}

#[test]
fn offline_from_fetch_and_from_an_imported_cache() {
    let s = setup("lock-offline");
    let cache = unique_dir("cache");
    kiln_in(&s, &cache, &["lock"]).run_ok();
    let online = build(&s, &cache, "online", &["--locked"]);

    // A fresh cache filled by `kiln fetch`, then a build with no network.
    let fetched = unique_dir("cache");
    let f = kiln_in(&s, &fetched, &["fetch", "--json"]).run_ok().json();
    assert_eq!(f["artifacts"], 3, "{f}");
    let run = offline(
        &s,
        &fetched,
        &[
            "build",
            "kiln.toml",
            "-o",
            "oci:offline",
            "--offline",
            "--frozen",
            "--json",
        ],
    );
    let v = run.ok().json();
    assert_eq!(v["digest"], online["digest"]);

    // Offline with an empty cache: a clear error naming what is missing.
    let run = offline(
        &s,
        &unique_dir("cache"),
        &[
            "build",
            "kiln.toml",
            "-o",
            "oci:nothing",
            "--offline",
            "--frozen",
        ],
    );
    assert!(run.code() == Some(3), "{}", run.describe());
    assert!(run.stderr.contains("offline"), "{}", run.describe());
    assert!(!s.ws.join("nothing").exists());
    drop(s.server);
}

#[test]
fn same_digest_across_caches_thread_counts_and_a_second_run() {
    let s = setup("lock-repro");
    let cache = unique_dir("cache");
    kiln_in(&s, &cache, &["lock"]).run_ok();
    let a = build(&s, &cache, "a", &["--locked"]);
    let b = {
        let mut c = kiln_in(
            &s,
            &unique_dir("cache"),
            &["build", "kiln.toml", "-o", "oci:b", "--json", "--locked"],
        );
        c.env("RAYON_NUM_THREADS", "1");
        c.run_ok().json()
    };
    assert_eq!(a["digest"], b["digest"]);
    let c = build(&s, &cache, "c", &["--locked", "--check-reproducible"]);
    assert_eq!(c["digest"], a["digest"]);
    assert_eq!(c["reproducible"]["reproducible"], true, "{c}");
}

#[test]
fn upgrade_some_or_all() {
    let s = setup("lock-upgrade");
    let cache = unique_dir("cache");
    kiln_in(&s, &cache, &["lock"]).run_ok();
    // Newer versions of everything appear upstream.
    let python = fake_python("3.11.1");
    let mut all = vec![python];
    for v in ["1.0", "2.0"] {
        all.push(pkg(
            "libdemo",
            v,
            &[],
            vec![file("share/demo", v.as_bytes())],
        ));
    }
    all.push(fake_python("3.11.0"));
    write_channel(&s.ws.join("channel"), &all);
    wheel(&s.ws, "tinywheel", "1.1");
    let pinned = |name: &str| -> String {
        let text = fs::read_to_string(s.ws.join("kiln.lock")).unwrap();
        let lock: toml::Value = toml::from_str(&text).unwrap();
        let p = &lock["platform"][0];
        p["conda"]
            .as_array()
            .unwrap()
            .iter()
            .chain(p["pip"].as_array().unwrap())
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| e["version"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(pinned("libdemo"), "1.0");
    // Unchanged spec, no --upgrade: nothing moves.
    let r = kiln_in(&s, &cache, &["lock", "--json"]).run_ok().json();
    assert_eq!(r["status"], "unchanged");
    // Only libdemo moves.
    kiln_in(&s, &cache, &["lock", "--upgrade", "libdemo"]).run_ok();
    assert_eq!(pinned("libdemo"), "2.0");
    assert_eq!(pinned("python"), "3.11.0");
    assert_eq!(pinned("tinywheel"), "1.0");
    // Everything moves.
    kiln_in(&s, &cache, &["lock", "--upgrade"]).run_ok();
    assert_eq!(pinned("python"), "3.11.1");
    assert_eq!(pinned("tinywheel"), "1.1");
}
