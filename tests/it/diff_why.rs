//! `kiln diff` and `kiln why` on images built here from wheels made here
//! (a local wheelhouse, no index): two builds that differ by one wheel, and
//! a Requires-Dist chain recorded as DEPENDS_ON in the SBOM.

use serde_json::Value;

use crate::common::*;

/// A pure-Python wheel `name-version` requiring `requires`.
fn wheel(name: &str, version: &str, requires: &[&str]) -> (String, Vec<u8>) {
    let di = format!("{name}-{version}.dist-info");
    let mut meta = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
    for r in requires {
        meta.push_str(&format!("Requires-Dist: {r}\n"));
    }
    let members = vec![
        (
            format!("{name}/__init__.py"),
            format!("VERSION = {version:?}\n").into_bytes(),
            0o644,
        ),
        (format!("{di}/METADATA"), meta.into_bytes(), 0o644),
        (
            format!("{di}/WHEEL"),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ];
    (
        format!("{name}-{version}-py3-none-any.whl"),
        wheel_zip(&members),
    )
}

/// app → mid → leaf (and an extra's requirement that is not installed),
/// with `leaf` at `leaf_version`, built into `oci:OUT`.
fn build(ws: &Workspace, wheels: &str, leaf_version: &str, out: &str) -> Value {
    write_spec(ws, wheels, leaf_version, "");
    build_json(ws, &["--output", &format!("oci:{out}")])
}

/// The wheels and a spec (`image` adds lines to `[image]`).
fn write_spec(ws: &Workspace, wheels: &str, leaf_version: &str, image: &str) {
    for (name, bytes) in [
        wheel("app", "1.0", &["mid>=1", "docs-only; extra == \"docs\""]),
        wheel("mid", "1.0", &["leaf"]),
        wheel("leaf", leaf_version, &[]),
    ] {
        ws.write(&format!("{wheels}/{name}"), bytes);
    }
    ws.spec(&format!(
        "[image]\nbase = \"oci:py:v1\"\n{image}\n[pip]\npackages = [\"app\"]\nfind-links = [\"{wheels}\"]\nno-index = true\n"
    ));
}

/// The same image pushed to `repo:tag` (the spec keeps the new name).
fn push(ws: &Workspace, wheels: &str, leaf_version: &str, repo: &str, tag: &str) -> Value {
    write_spec(
        ws,
        wheels,
        leaf_version,
        &format!("name = \"{repo}\"\ntags = [\"{tag}\"]\n"),
    );
    build_json(ws, &["--push"])
}

fn layer_digests(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(l, "digest").to_string())
        .collect()
}

#[test]
fn diff_of_builds_that_differ_by_one_wheel() {
    let ws = Workspace::new("diff-one-wheel");
    python_base(&ws);
    let a = build(&ws, "wheels-a", "1.0", "out-a");
    let b = build(&ws, "wheels-b", "2.0", "out-b");
    let (ra, rb) = (
        format!("oci:{}", ws.join("out-a").display()),
        format!("oci:{}", ws.join("out-b").display()),
    );
    let v = ws.kiln().args(["diff", &ra, &rb, "--json"]).run_ok().json();
    assert!(s(&v, "a_packages_from").starts_with("sidecar "), "{v}");
    // Exactly the wheel: pypi only, one change, nothing added or removed.
    assert_eq!(keys(&v["packages"]), ["pypi"], "{v}");
    let pypi = &v["packages"]["pypi"];
    assert_eq!(pypi["added"], serde_json::json!([]));
    assert_eq!(pypi["removed"], serde_json::json!([]));
    assert_eq!(
        pypi["changed"],
        serde_json::json!([{"name": "leaf", "from": "1.0", "to": "2.0"}])
    );
    // Exactly one layer differs; the rest are shared.
    let added = layer_digests(&v, "layers_added");
    let removed = layer_digests(&v, "layers_removed");
    assert_eq!(added.len(), 1, "{v}");
    assert_eq!(removed.len(), 1, "{v}");
    let b_layers: Vec<&Value> = b["layers"].as_array().unwrap().iter().collect();
    let changed = b_layers
        .iter()
        .find(|l| s(l, "digest") == added[0])
        .expect("the added layer is one of B's");
    assert!(a["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| s(l, "digest") == removed[0]));
    let layout = Layout::open(ws.join("out-b"));
    let (_, manifest) = layout.manifest("latest");
    assert_eq!(
        v["layers_shared"].as_array().unwrap().len(),
        manifest["layers"].as_array().unwrap().len() - 1
    );
    // A push of B where A is: that layer's bytes (plus B's new config).
    assert_eq!(v["push_layer_bytes"], changed["size"]);
    assert_eq!(
        v["push_bytes"].as_u64().unwrap(),
        changed["size"].as_u64().unwrap() + manifest["config"]["size"].as_u64().unwrap()
    );
    // Human text says the same.
    let text = ws.kiln().args(["diff", &ra, &rb]).run_ok().stdout;
    assert!(text.contains("  ~ leaf 1.0 -> 2.0"), "{text}");
    assert!(
        text.contains(&format!("+ {}", added[0])),
        "names the layer:\n{text}"
    );
    // An image against itself: nothing differs, nothing to send.
    let same = ws.kiln().args(["diff", &rb, &rb, "--json"]).run_ok().json();
    assert_eq!(same["packages"], serde_json::json!({}));
    assert_eq!(same["push_bytes"], 0);

    // B pushed to a registry: its SBOM comes back as a referrer.
    let reg = Registry::shared();
    let repo = reg.repo(&unique_repo("diff"));
    let pushed = format!("{repo}:b");
    push(&ws, "wheels-b", "2.0", &repo, "b");
    let v = ws
        .kiln()
        .args(["diff", &ra, &pushed, "--json"])
        .run_ok()
        .json();
    assert!(
        s(&v, "b_packages_from").starts_with("referrer sha256:"),
        "{v}"
    );
    assert_eq!(v["packages"]["pypi"]["changed"][0]["name"], "leaf", "{v}");
    assert_eq!(layer_digests(&v, "layers_added"), added);
}

#[test]
fn why_follows_requires_dist() {
    let ws = Workspace::new("why-pip");
    python_base(&ws);
    build(&ws, "wheels", "1.0", "out");
    let sbom = ws.join("out/sbom/linux-amd64.spdx.json");
    assert_valid_spdx(&sbom);
    let doc = read_json(&sbom);
    let has_dep = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["relationshipType"] == "DEPENDS_ON");
    assert!(has_dep, "the SBOM records DEPENDS_ON");
    let image = format!("oci:{}", ws.join("out").display());
    let v = ws
        .kiln()
        .args(["why", &image, "leaf", "--json"])
        .run_ok()
        .json();
    let chains = v["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{v}");
    let names: Vec<&str> = chains[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(l, "name"))
        .collect();
    assert_eq!(names, ["app", "mid", "leaf"]);
    assert_eq!(chains[0][0]["requested"], true);
    assert_eq!(chains[0][1]["requested"], false);
    assert_eq!(v["from_roots"], false);
    let text = ws.kiln().args(["why", &image, "leaf"]).run_ok().stdout;
    assert_eq!(text.trim(), "app 1.0 (requested) → mid 1.0 → leaf 1.0");
    // A base package nothing requested leads to: from the roots.
    let v = ws
        .kiln()
        .args(["why", &image, "libc6", "--json"])
        .run_ok()
        .json();
    assert_eq!(v["from_roots"], true, "{v}");
    // Not in the image: bad input, with the names that are close.
    expect_failure(
        &ws,
        &["why", &image, "lea"],
        2,
        &["no package `lea`", "leaf"],
    );
}

#[test]
fn inspect_history_sizes_and_referrers() {
    let ws = Workspace::new("inspect-detail");
    python_base(&ws);
    let b = build(&ws, "wheels", "1.0", "out");
    let r = format!("oci:{}", ws.join("out").display());
    let v = ws.kiln().args(["inspect", &r, "--json"]).run_ok().json();
    let layers = v["layers"].as_array().unwrap();
    let layout = Layout::open(ws.join("out"));
    // The base's layer, then the ones kiln built.
    assert_eq!(layers.len(), layout.layers("latest").len());
    assert_eq!(layers.len(), b["layers"].as_array().unwrap().len() + 1);
    let mut total = 0;
    let mut total_unc = 0;
    for (l, (desc, _)) in layers.iter().zip(layout.layers("latest")) {
        let blob = layout.blob(s(&desc, "digest"));
        let tar = decompress(&blob, s(&desc, "mediaType"));
        assert_eq!(l["size"].as_u64().unwrap(), blob.len() as u64);
        assert_eq!(l["uncompressed_size"].as_u64().unwrap(), tar.len() as u64);
        assert_eq!(l["uncompressed_from"], "decompressed");
        assert_eq!(l["diff_id"].as_str().unwrap(), digest_of(&tar));
        assert!(l["created_by"].is_string(), "{l}");
        total += blob.len() as u64;
        total_unc += tar.len() as u64;
    }
    assert_eq!(v["total_size"].as_u64().unwrap(), total);
    assert_eq!(v["total_uncompressed_size"].as_u64().unwrap(), total_unc);
    // History entries map onto the layers, kiln's own marked.
    let history = v["history"].as_array().unwrap();
    assert_eq!(v["history_len"].as_u64().unwrap(), history.len() as u64);
    let mapped: Vec<u64> = history.iter().filter_map(|h| h["layer"].as_u64()).collect();
    assert_eq!(mapped, (0..layers.len() as u64).collect::<Vec<_>>());
    assert!(history.iter().any(|h| h["comment"] == "kiln"), "{v}");
    assert!(s(&v, "sbom").starts_with("sidecar "), "{v}");
    let human = ws.kiln().args(["inspect", &r]).run_ok().stdout;
    assert!(human.contains("history:"), "{human}");
    assert!(human.contains("created by: "), "{human}");

    // In a registry: the SBOM is a referrer of the manifest.
    let reg = Registry::shared();
    let repo = reg.repo(&unique_repo("inspect-referrers"));
    let built = push(&ws, "wheels", "1.0", &repo, "v1");
    let v = ws
        .kiln()
        .args(["inspect", &format!("{repo}:v1"), "--json"])
        .run_ok()
        .json();
    let refs = v["referrers"].as_array().unwrap();
    assert_eq!(refs.len(), 1, "{v}");
    assert_eq!(refs[0]["artifact_type"], "application/spdx+json");
    assert_eq!(
        refs[0]["digest"], built["sbom"][0]["referrer"],
        "the referrer kiln pushed: {built}"
    );
    assert!(s(&v, "sbom").starts_with("referrer "), "{v}");
    // A tag that is not there: the error names the tags that are.
    expect_failure(
        &ws,
        &["inspect", &format!("{repo}:nope")],
        2,
        &["nope", "tags there: v1"],
    );
}
