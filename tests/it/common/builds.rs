//! kiln-level checks: `kiln build --json` and its output, caches, image env, small pushed images.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{assert_digest, list_dir, s, sha256_hex, strs, CommandExt, Registry, Workspace};

/// Run `kiln build --json ARGS` in WS and return the parsed JSON.
#[track_caller]
pub fn build_json(ws: &Workspace, args: &[&str]) -> Value {
    let out = ws.kiln().arg("build").arg("--json").args(args).run_ok();
    let v = out.json();
    check_build_json(&v);
    v
}

/// Shape checks for `kiln build --json` output that hold for every build.
#[track_caller]
pub fn check_build_json(v: &Value) {
    assert_digest(&v["digest"]);
    let manifests = v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("manifests array in {v}"));
    assert!(!manifests.is_empty(), "no manifests in {v}");
    for m in manifests {
        assert_digest(&m["digest"]);
        let p = s(m, "platform");
        assert!(p.starts_with("linux/"), "platform {p:?}");
    }
    if manifests.len() == 1 {
        assert_eq!(
            v["digest"], manifests[0]["digest"],
            "single platform: digest is the manifest's"
        );
    }
    for l in v["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("layers array in {v}"))
    {
        assert_digest(&l["digest"]);
        assert_digest(&l["diff_id"]);
        assert!(l["size"].as_u64().is_some(), "layer size in {l}");
        assert!(s(l, "media_type").starts_with("application/vnd.oci.image.layer.v1.tar"));
    }
    assert!(v["outputs"].is_array(), "outputs array in {v}");
    assert!(v.get("push").is_some(), "push key (object or null) in {v}");
}

/// The env of an image config as a map.
pub fn env_map(config: &Value) -> BTreeMap<String, String> {
    config["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Push a small scratch image with kiln to `reg/REPO:TAG` and return kiln's
/// JSON. `files` are (relative path, contents) placed under /base in the
/// image, each as its own layer.
#[track_caller]
pub fn push_scratch_image(reg: &Registry, repo: &str, tag: &str, files: &[(&str, &str)]) -> Value {
    let ws = Workspace::new("push-base");
    let mut spec = format!(
        "[image]\nname = \"{}\"\ntags = [\"{tag}\"]\n",
        reg.repo(repo)
    );
    for (rel, contents) in files {
        ws.write(&format!("files/{rel}"), contents);
        spec.push_str(&format!(
            "\n[[files]]\nsrc = \"files/{rel}\"\ndst = \"/base/{rel}\"\n"
        ));
    }
    ws.spec(&spec);
    build_json(&ws, &["--push"])
}

/// Every file in a kiln cache's blob store is named by the sha256 of its bytes.
#[track_caller]
pub fn assert_cache_consistent(cache: &Path) {
    let dir = cache.join("blobs/sha256");
    for name in list_dir(&dir) {
        let p = dir.join(&name);
        if p.is_file() && name.len() == 64 {
            assert_eq!(
                sha256_hex(&fs::read(&p).unwrap()),
                name,
                "cache blob {} is corrupt",
                p.display()
            );
        }
    }
}

/// `outputs` of kiln's JSON names exactly EXPECTED (as given on the command
/// line, e.g. "oci:out"); an absolute spelling of the same path is accepted.
#[track_caller]
pub fn assert_outputs(ws: &Workspace, v: &Value, expected: &[&str]) {
    let norm = |o: &str| -> (String, PathBuf) {
        let (transport, path) = o
            .split_once(':')
            .unwrap_or_else(|| panic!("output {o:?} lacks transport"));
        let p = Path::new(path);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            ws.join(p)
        };
        let abs = abs.canonicalize().unwrap_or(abs);
        (transport.to_string(), abs)
    };
    let got: Vec<(String, PathBuf)> = strs(&v["outputs"]).iter().map(|o| norm(o)).collect();
    let want: Vec<(String, PathBuf)> = expected.iter().map(|o| norm(o)).collect();
    assert_eq!(got, want, "outputs in {v}");
}

/// `layers` of kiln's build JSON are the layers this build made (one per
/// `[[files]]`, the same for every platform): the last ones of the manifest,
/// after the base's.
#[track_caller]
pub fn assert_json_layers_match_manifest(v: &Value, manifest: &Value) {
    let j = v["layers"].as_array().unwrap();
    let m = manifest["layers"].as_array().unwrap();
    assert!(
        j.len() <= m.len(),
        "layer count: json {v} manifest {manifest}"
    );
    for (a, b) in j.iter().zip(&m[m.len() - j.len()..]) {
        assert_eq!(a["digest"], b["digest"]);
        assert_eq!(a["size"], b["size"]);
        assert_eq!(a["media_type"], b["mediaType"]);
    }
}

/// Write a spec for a one-file image named `reg_repo` (host/repo) with TAGS;
/// the file's content is unique to the repo, so no other test shares its blob.
pub fn simple_push_spec(ws: &Workspace, reg_repo: &str, tags: &[&str]) {
    ws.write("payload/hello.txt", format!("hello from {reg_repo}\n"));
    ws.write("payload/sub/data.txt", "data\n");
    let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
    ws.spec(&format!(
        "[image]\nname = \"{reg_repo}\"\ntags = [{}]\n\n[[files]]\nsrc = \"payload/\"\ndst = \"/srv\"\n\n[config]\ncmd = [\"/srv/hello.txt\"]\n",
        tags.join(", ")
    ));
}
