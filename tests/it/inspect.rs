//! `kiln inspect` on oci:, docker-archive: and registry references.

use crate::common::*;
use serde_json::Value;

const SPEC: &str = r#"
[image]
tags = ["1.0", "latest"]

[[files]]
src = "app/"
dst = "/app"

[[files]]
src = "etc.conf"
dst = "/etc/app.conf"

[config]
env = { PYTHONUNBUFFERED = "1" }
entrypoint = ["/bin/sh", "-c"]
cmd = ["echo hi"]
workdir = "/app"
user = "1000:1000"
labels = { "com.example.team" = "ds" }
exposed_ports = ["8080/tcp", "53/udp"]
volumes = ["/data"]
"#;

fn project(label: &str) -> Workspace {
    let ws = Workspace::new(label);
    ws.write("app/main.txt", "main\n");
    ws.write("etc.conf", "conf\n");
    ws.spec(SPEC);
    ws
}

/// Fields every `kiln inspect --json` answer has, checked against the build.
#[track_caller]
fn check_inspect(v: &Value, reference_fragment: &str) {
    assert!(
        s(v, "reference").contains(reference_fragment),
        "reference {}",
        v["reference"]
    );
    assert_digest(&v["digest"]);
    assert_eq!(v["platform"], "linux/amd64");
    assert_eq!(v["architecture"], "amd64");
    assert_eq!(v["os"], "linux");
    assert!(
        same_instant(s(v, "created"), "1970-01-01T00:00:00Z"),
        "created {}",
        v["created"]
    );
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        assert_digest(&l["digest"]);
        assert!(l["size"].as_u64().unwrap() > 0);
        assert!(s(l, "media_type").starts_with("application/vnd."));
    }
    let c = &v["config"];
    assert_eq!(
        env_map(c).get("PYTHONUNBUFFERED").map(String::as_str),
        Some("1")
    );
    assert_eq!(strs(&c["Entrypoint"]), ["/bin/sh", "-c"]);
    assert_eq!(strs(&c["Cmd"]), ["echo hi"]);
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Labels"]["com.example.team"], "ds");
    assert!(c["Labels"]["org.opencontainers.image.created"].is_string());
    assert_eq!(keys(&c["ExposedPorts"]), ["53/udp", "8080/tcp"]);
    assert_eq!(keys(&c["Volumes"]), ["/data"]);
}

#[test]
fn inspect_oci_layout() {
    let ws = project("inspect-oci");
    let b = build_json(&ws, &["--output", "oci:out"]);
    let r = format!("oci:{}:1.0", ws.join("out").display());
    let v = kiln().args(["inspect", &r, "--json"]).run_ok().json();
    check_inspect(&v, "1.0");
    assert_eq!(v["digest"], b["digest"]);
    assert_eq!(
        v["media_type"], MT_MANIFEST,
        "inspect --json media_type: {v}"
    );
    for (a, l) in v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["layers"].as_array().unwrap())
    {
        assert_eq!(a["digest"], l["digest"]);
        assert_eq!(a["size"], l["size"]);
        assert_eq!(a["media_type"], l["media_type"]);
    }
    // Sizes: the blobs' and what they decompress to; history mapped to layers.
    let layout = Layout::open(ws.join("out"));
    let mut total = 0;
    for (l, (desc, entries)) in v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(layout.layers("1.0"))
    {
        let blob = layout.blob(s(&desc, "digest"));
        let tar = decompress(&blob, s(&desc, "mediaType"));
        assert_eq!(l["uncompressed_size"].as_u64().unwrap(), tar.len() as u64);
        assert!(!entries.is_empty());
        assert_eq!(l["comment"], "kiln", "{l}");
        total += blob.len() as u64;
    }
    assert_eq!(v["total_size"].as_u64().unwrap(), total);
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len() as u64, v["history_len"].as_u64().unwrap());
    assert!(history.iter().all(|h| h["empty_layer"] == false), "{v}");
    assert_eq!(v["referrers"], serde_json::json!([]));
    assert!(s(&v, "sbom").starts_with("sidecar "), "{v}");
    // Relative path from the layout's parent, other tag.
    let v2 = ws
        .kiln()
        .args(["inspect", "oci:out:latest", "--json"])
        .run_ok()
        .json();
    assert_eq!(v2["digest"], b["digest"]);
    // Human output names the digest.
    let human = kiln().args(["inspect", &r]).run_ok();
    assert!(
        human.stdout.contains(s(&b, "digest")),
        "plain inspect shows the digest:\n{}",
        human.stdout
    );
}

#[test]
fn inspect_docker_archive() {
    let ws = project("inspect-docker-archive");
    build_json(&ws, &["--output", "docker-archive:img.tar"]);
    let r = format!("docker-archive:{}", ws.join("img.tar").display());
    let v = kiln().args(["inspect", &r, "--json"]).run_ok().json();
    check_inspect(&v, "img.tar");
}

#[test]
fn inspect_registry_reference() {
    let reg = Registry::shared();
    let repo = unique_repo("inspect");
    let ws = project("inspect-registry");
    ws.spec(&SPEC.replace(
        "[image]\n",
        &format!("[image]\nname = \"{}\"\n", reg.repo(&repo)),
    ));
    let b = build_json(&ws, &["--push"]);
    for r in [
        format!("{}:1.0", reg.repo(&repo)),
        format!("{}@{}", reg.repo(&repo), s(&b, "digest")),
    ] {
        let v = kiln().args(["inspect", &r, "--json"]).run_ok().json();
        check_inspect(&v, &repo);
        assert_eq!(v["digest"], b["digest"], "{r}");
        assert_eq!(
            v["media_type"], MT_MANIFEST,
            "inspect --json media_type: {v}"
        );
        let got: Vec<&Value> = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        let want: Vec<&Value> = b["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn inspect_errors() {
    let ws = project("inspect-errors");
    build_json(&ws, &["--output", "oci:out"]);
    expect_failure(
        &ws,
        &["inspect", "oci:/nonexistent:v1", "--json"],
        2,
        &["/nonexistent"],
    );
    expect_failure(
        &ws,
        &["inspect", "oci:out:no-such-tag", "--json"],
        2,
        &["no-such-tag", "tags there: 1.0, latest"],
    );
    ws.write("garbage.tar", "not a tar\n".repeat(200));
    expect_failure(
        &ws,
        &["inspect", "docker-archive:garbage.tar"],
        2,
        &["garbage.tar"],
    );
    let reg = Registry::shared();
    let missing = unique_repo("inspect-missing");
    expect_failure(
        &ws,
        &["inspect", &format!("{}:v1", reg.repo(&missing))],
        2,
        &[&missing],
    );
    let host = format!("127.0.0.1:{}", closed_port());
    expect_failure(&ws, &["inspect", &format!("{host}/a/b:v1")], 3, &[&host]);
}
