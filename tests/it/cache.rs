//! The blob cache: location (--cache, KILN_CACHE, ~/.cache/kiln), content
//! addressing, recovery from corruption, and concurrent use.

use crate::common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;

/// Push a two-layer base and write a derived spec in a new workspace.
fn registry_base_project(label: &str) -> (Workspace, Value) {
    let reg = Registry::shared();
    let base_repo = unique_repo(label);
    // Enough bytes that a corrupted copy cannot pass unnoticed by accident.
    let big: String = (0..20_000).map(|i| format!("{i:08}\n")).collect();
    let base = push_scratch_image(
        reg,
        &base_repo,
        "v1",
        &[("big.txt", &big), ("small.txt", "small\n")],
    );
    let ws = Workspace::new(label);
    ws.write("app.txt", "app\n");
    ws.spec(&format!(
        "[image]\nbase = \"{}:v1\"\n\n[[files]]\nsrc = \"app.txt\"\ndst = \"/app.txt\"\n",
        reg.repo(&base_repo)
    ));
    (ws, base)
}

fn cached_blob(cache: &Path, digest: &str) -> std::path::PathBuf {
    cache
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn base_layer_digests(base: &Value) -> Vec<String> {
    base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(l, "digest").to_string())
        .collect()
}

#[test]
fn corrupted_cache_blob_is_detected_and_refetched() {
    let (ws, base) = registry_base_project("cache-corrupt");
    let cache = unique_dir("cache-corrupt");
    let build = |out: &str| -> Value {
        ws.kiln()
            .env("KILN_CACHE", &cache)
            .args(["build", "--json", "--output"])
            .arg(format!("oci:{out}"))
            .run_ok()
            .json()
    };
    let first = build("out1");
    assert_cache_consistent(&cache);
    let layers = base_layer_digests(&base);
    let (big, small) = (
        cached_blob(&cache, &layers[0]),
        cached_blob(&cache, &layers[1]),
    );
    assert!(
        big.is_file() && small.is_file(),
        "base layers are cached under blobs/sha256/<hex>"
    );

    // Same size, different bytes (a size check alone would not notice) ...
    let len = fs::metadata(&big).unwrap().len() as usize;
    fs::write(&big, vec![b'X'; len]).unwrap();
    // ... and a truncated file.
    fs::write(&small, b"").unwrap();

    let second = build("out2");
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["layers"], first["layers"]);
    assert_cache_consistent(&cache);
    assert_eq!(
        digest_of(&fs::read(&big).unwrap()),
        layers[0],
        "cache entry repaired"
    );
    assert_eq!(
        digest_of(&fs::read(&small).unwrap()),
        layers[1],
        "cache entry repaired"
    );
    // The output holds the right bytes (Layout::blob checks every digest).
    let layout = Layout::open(ws.join("out2"));
    let ls = layout.layers("latest");
    assert_eq!(ls.len(), 3);
    assert_eq!(entry(&ls[1].1, "base/small.txt").content, b"small\n");
}

#[test]
fn cache_flag_beats_env_and_is_created() {
    let (ws, base) = registry_base_project("cache-flag");
    let flag_cache = unique_path("flag-cache");
    let env_cache = unique_path("env-cache");
    ws.kiln()
        .env("KILN_CACHE", &env_cache)
        .arg("build")
        .arg("--cache")
        .arg(&flag_cache)
        .args(["--output", "oci:out"])
        .run_ok();
    for d in base_layer_digests(&base) {
        assert!(
            cached_blob(&flag_cache, &d).is_file(),
            "--cache DIR is used (and created)"
        );
        assert!(
            !cached_blob(&env_cache, &d).exists(),
            "KILN_CACHE is ignored when --cache is given"
        );
    }
    assert_cache_consistent(&flag_cache);
}

#[test]
fn default_cache_is_under_home() {
    let (ws, base) = registry_base_project("cache-home");
    let home = unique_dir("home");
    ws.kiln()
        .env_remove("KILN_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", &home)
        .args(["build", "--output", "oci:out"])
        .run_ok();
    let cache = home.join(".cache/kiln");
    for d in base_layer_digests(&base) {
        assert!(cached_blob(&cache, &d).is_file(), "~/.cache/kiln holds {d}");
    }
    assert_cache_consistent(&cache);
}

/// Several builds sharing one cache at the same time all succeed and agree,
/// and the cache stays consistent.
#[test]
fn concurrent_builds_share_a_cache() {
    let (ws, _) = registry_base_project("cache-concurrent");
    let cache = unique_dir("cache-concurrent");
    let digests: Vec<Value> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let ws = &ws;
                let cache = &cache;
                sc.spawn(move || {
                    ws.kiln()
                        .env("KILN_CACHE", cache)
                        .args(["build", "--json", "--output"])
                        .arg(format!("oci:out-{i}"))
                        .run_ok()
                        .json()["digest"]
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_cache_consistent(&cache);
}
