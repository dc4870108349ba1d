//! The closing summary of `kiln build` (`summary` in `--json`, text on
//! stderr) and `--dry-run`, checked against what the layout, the registry
//! log and the cache hold: a base in the test registry, a conda channel
//! over loopback HTTP and a local wheel (as in lock.rs).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::conda_channel::*;
use serde_json::Value;

/// A spec with a registry base, two conda packages from a loopback channel
/// and one wheel from a local wheelhouse; the server lives as long as it.
fn setup(label: &str) -> (Workspace, FileServer) {
    let ws = Workspace::new(label);
    let python = fake_python("3.11.0");
    let lib = pkg("libdemo", "1.0", &[], vec![file("share/demo", b"1.0\n")]);
    write_channel(&ws.join("channel"), &[python, lib]);
    let server = FileServer::start(&ws.join("channel"));
    let members: Vec<(String, Vec<u8>, u32)> = [
        ("tinywheel/__init__.py", "V = 1\n"),
        (
            "tinywheel-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: tinywheel\nVersion: 1.0\n",
        ),
        (
            "tinywheel-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
    ]
    .into_iter()
    .map(|(p, d)| (p.to_string(), d.as_bytes().to_vec(), 0o644))
    .collect();
    ws.write(
        "env/wheels/tinywheel-1.0-py3-none-any.whl",
        wheel_zip(&members),
    );
    ws.write(
        "env/environment.yml",
        format!(
            "channels:\n  - http://127.0.0.1:{}/\ndependencies:\n  - python=3.11\n  - libdemo\n  - pip:\n    - --no-index\n    - --find-links ./wheels\n    - tinywheel\n",
            server.port
        ),
    );
    ws.write("files/motd", "summary test\n");
    let reg = Registry::shared();
    let base_repo = unique_repo("summarybase");
    push_scratch_image(reg, &base_repo, "v1", &[("hello.txt", "summary base\n")]);
    let base = reg.docker_ref(&base_repo, "v1").replace("docker://", "");
    ws.spec(&format!(
        "[image]\nbase = {base:?}\ntags = [\"t\"]\nplatforms = [\"linux/amd64\"]\n\n[conda]\nenvironment = \"env/environment.yml\"\n\n[[files]]\nsrc = \"files/motd\"\ndst = \"/etc/motd\"\n"
    ));
    (ws, server)
}

fn kiln_in(ws: &Workspace, cache: &Path, args: &[&str]) -> Command {
    let mut c = ws.kiln();
    c.env("KILN_CACHE", cache)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .args(args);
    c
}

fn build(ws: &Workspace, cache: &Path, out: &str) -> Value {
    let o = format!("oci:{out}");
    let v = kiln_in(ws, cache, &["build", "-o", &o, "--json"])
        .run_ok()
        .json();
    check_build_json(&v);
    v
}

/// The summary's layers are the manifest's, with the layout's blob sizes.
#[track_caller]
fn assert_layers_match_layout(summary: &Value, out: &Path) {
    let layout = Layout::open(out);
    let (digest, manifest) = layout.manifest("t");
    let p = &summary["platforms"][0];
    assert_eq!(p["manifest"], digest.as_str());
    let layers = p["layers"].as_array().unwrap();
    let in_manifest = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), in_manifest.len(), "{summary}");
    for (l, m) in layers.iter().zip(in_manifest) {
        assert_eq!(l["digest"], m["digest"]);
        let on_disk = fs::metadata(layout.blob_path(s(l, "digest")))
            .unwrap()
            .len();
        assert_eq!(l["size"].as_u64(), Some(on_disk), "{l}");
    }
    let origins: Vec<&str> = layers.iter().map(|l| s(l, "origin")).collect();
    assert_eq!(origins[0], "base", "{origins:?}");
}

fn sources(summary: &Value) -> BTreeSet<(String, String, String)> {
    summary["package_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                s(p, "ecosystem").to_string(),
                s(p, "name").to_string(),
                s(p, "source").to_string(),
            )
        })
        .collect()
}

#[test]
fn summary_counts_what_the_layout_and_the_cache_hold() {
    let (ws, _server) = setup("summary-counts");
    let cache = unique_dir("cache");

    let cold = build(&ws, &cache, "cold");
    let sum = &cold["summary"];
    assert_layers_match_layout(sum, &ws.join("cold"));
    assert_eq!(sum["packages"]["conda"], 2, "{sum}");
    assert_eq!(sum["packages"]["pip"], 1, "{sum}");
    assert_eq!(sum["image"], Value::Null);
    assert_eq!(strs(&sum["tags"]), ["t"]);
    assert_eq!(sum["digest"], cold["digest"]);
    // The conda packages and the base's blobs came over the network.
    assert!(sum["bytes_downloaded"].as_u64().unwrap() > 0, "{sum}");
    assert!(sum["files_downloaded"].as_u64().unwrap() >= 2, "{sum}");
    let got = sources(sum);
    assert!(
        got.contains(&("conda".into(), "libdemo".into(), "downloaded".into())),
        "{got:?}"
    );
    assert!(sum["layers_built"].as_u64().unwrap() >= 2, "{sum}");
    assert_eq!(sum["bytes_pushed"], 0);
    // The wheel's layer was written as soon as the wheel was in, and it
    // is the image's: the layer memo holds what the image was built from
    // and nothing more (no layer built ahead in vain).
    assert_eq!(sum["layers_built_ahead"], 1, "{sum}");
    let wheel_layer = sum["platforms"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| s(l, "created_by").contains("tinywheel"))
        .unwrap_or_else(|| panic!("no tinywheel layer in {sum}"));
    assert_eq!(wheel_layer["origin"], "built", "{sum}");
    let memos = fs::read_dir(cache.join("layers-v1")).unwrap().count();
    assert_eq!(sum["layers_built"].as_u64(), Some(memos as u64), "{sum}");

    // Warm: no package downloaded, nothing compressed, every package
    // cached; the channel's repodata is revalidated (kiln's HTTP cache
    // keeps it: a 304 sends no body), so nothing came over the wire.
    let warm = build(&ws, &cache, "warm");
    let sum = &warm["summary"];
    assert_eq!(warm["digest"], cold["digest"]);
    assert_layers_match_layout(sum, &ws.join("warm"));
    assert_eq!(sum["bytes_downloaded"], 0, "{sum}");
    assert_eq!(sum["files_downloaded"], 0, "{sum}");
    assert_eq!(sum["layers_built"], 0, "{sum}");
    assert_eq!(sum["layers_built_ahead"], 0, "{sum}");
    assert!(
        sources(sum).iter().all(|(_, _, src)| src == "cached"),
        "{sum}"
    );

    // Locked and warm: not a byte from the network.
    kiln_in(&ws, &cache, &["lock"]).run_ok();
    let locked = build(&ws, &cache, "locked");
    assert_eq!(locked["summary"]["bytes_downloaded"], 0, "{locked}");

    // The text on a terminal says the same; -v lists the packages.
    let r = kiln_in(&ws, &cache, &["build", "-o", "oci:text", "-v"]).run_ok();
    assert_eq!(r.stdout.trim(), s(&locked, "digest"));
    for line in [
        "wrote oci:text",
        "packages    conda 2, pip 1",
        "downloaded  0 B (0 files)",
        "  libdemo 1.0 conda (cached)",
        "  tinywheel 1.0 pip (cached)",
    ] {
        assert!(r.stderr.contains(line), "{line:?} in:\n{}", r.stderr);
    }
    let quiet = kiln_in(&ws, &cache, &["build", "-o", "oci:quiet", "-q"]).run_ok();
    assert_eq!(quiet.stderr, "");
}

#[test]
fn bytes_pushed_are_the_blobs_the_registry_received() {
    let reg = Registry::shared();
    let repo = unique_repo("summary-push");
    let ws = Workspace::new("summary-push");
    simple_push_spec(&ws, &reg.repo(&repo), &["v1"]);
    let first = build_json(&ws, &["--push", "--no-sbom", "-o", "oci:out"]);
    let layout = Layout::open(ws.join("out"));
    // Every blob the registry stored (a PUT closing an upload names it).
    let uploaded: BTreeSet<String> = reg
        .log()
        .lines()
        .filter(|l| l.contains(&format!("\"PUT /v2/{repo}/blobs/uploads/")))
        .filter_map(|l| {
            let d = l.split("digest=").nth(1)?;
            let d = d.split(['&', ' ', '"']).next()?;
            Some(d.replace("%3A", ":").replace("%3a", ":"))
        })
        .collect();
    assert!(!uploaded.is_empty(), "{}", reg.log());
    let expected: u64 = uploaded
        .iter()
        .map(|d| fs::metadata(layout.blob_path(d)).unwrap().len())
        .sum();
    assert_eq!(first["summary"]["bytes_pushed"].as_u64(), Some(expected));
    assert_eq!(
        first["summary"]["bytes_pushed"],
        first["push"]["bytes_uploaded"]
    );

    // The same image again: the registry has every blob.
    let again = build_json(&ws, &["--push", "--no-sbom"]);
    assert_eq!(again["digest"], first["digest"]);
    assert_eq!(again["summary"]["bytes_pushed"], 0, "{again}");
}

/// A dry run downloads only what resolving reads: the repodata, not the
/// packages of the last stage.
#[test]
fn dry_run_downloads_no_package() {
    let ws = Workspace::new("summary-dry-conda");
    let lib = pkg("libdemo", "1.0", &[], vec![file("share/demo", b"1.0\n")]);
    write_channel(&ws.join("channel"), &[lib]);
    let server = FileServer::start(&ws.join("channel"));
    ws.spec(&format!(
        "[image]\nplatforms = [\"linux/amd64\"]\n\n[conda]\nchannels = [\"http://127.0.0.1:{}/\"]\npackages = [\"libdemo\"]\n",
        server.port
    ));
    let cache = unique_dir("cache");
    let plan = kiln_in(&ws, &cache, &["build", "--dry-run", "--json"])
        .run_ok()
        .json();
    let p = &plan["platforms"][0];
    assert_eq!(p["packages"][0]["name"], "libdemo", "{plan}");
    assert_eq!(p["packages"][0]["source"], "download", "{plan}");
    assert_eq!(p["layers"][0]["action"], "build", "{plan}");
    assert!(!ws.join("kiln-out").exists());
    let repodata: u64 = ["linux-64", "noarch"]
        .iter()
        .map(|d| {
            fs::metadata(ws.join(format!("channel/{d}/repodata.json")))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(plan["bytes_downloaded"].as_u64(), Some(repodata), "{plan}");
    // The build downloads it; a dry run then finds it cached.
    let built = kiln_in(&ws, &cache, &["build", "--json"]).run_ok().json();
    assert!(
        built["summary"]["files_downloaded"].as_u64() >= Some(1),
        "{built}"
    );
    let plan = kiln_in(&ws, &cache, &["build", "--dry-run", "--json"])
        .run_ok()
        .json();
    assert_eq!(plan["platforms"][0]["packages"][0]["source"], "cached");
}

#[test]
fn dry_run_writes_nothing_and_lists_the_packages() {
    let (ws, _server) = setup("summary-dry");
    let cache = unique_dir("cache");
    let plan = kiln_in(
        &ws,
        &cache,
        &["build", "--dry-run", "-o", "oci:out", "--json"],
    )
    .run_ok()
    .json();
    assert!(!ws.join("out").exists());
    assert!(!ws.join("kiln.lock").exists());
    assert_eq!(plan["lock"], "absent");
    assert_eq!(strs(&plan["outputs"]), ["oci:out"]);
    assert_eq!(plan["packages"]["conda"], 2, "{plan}");
    assert_eq!(plan["packages"]["pip"], 1, "{plan}");
    let p = &plan["platforms"][0];
    assert_eq!(strs(&p["stages"]), ["conda"]);
    let names: BTreeSet<&str> = p["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x, "name"))
        .collect();
    assert!(
        names.contains("libdemo") && names.contains("tinywheel"),
        "{names:?}"
    );
    // Nothing built yet: every layer would be.
    assert!(
        p["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["action"] == "build"),
        "{p}"
    );
    assert_eq!(plan["files"][0]["action"], "build");

    // With a lock and a build behind it: the same packages, layers reused,
    // and the lock left as it was.
    kiln_in(&ws, &cache, &["lock"]).run_ok();
    let lock = fs::read(ws.join("kiln.lock")).unwrap();
    build(&ws, &cache, "built");
    let r = kiln_in(&ws, &cache, &["build", "--dry-run", "-o", "oci:out2"]).run_ok();
    assert!(!ws.join("out2").exists());
    assert_eq!(fs::read(ws.join("kiln.lock")).unwrap(), lock);
    for line in [
        "lock        used",
        "  libdemo 1.0 conda (cached)",
        "would write oci:out2",
    ] {
        assert!(r.stdout.contains(line), "{line:?} in:\n{}", r.stdout);
    }
    assert!(!r.stdout.contains("layer: build"), "{}", r.stdout);
}
