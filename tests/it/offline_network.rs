//! Issue-level check over the network: an apt + pip image built online,
//! locked, its cache exported and imported into an empty cache, then built
//! again inside a network namespace with no network (`unshare -n`): same
//! digest. The image's SBOM validates and lists every package `dpkg-query`
//! and the Python dist-infos show. Debian's mirror comes from the host's apt
//! sources, the Python index from pip's configuration (or the default the
//! Python crates carry), as kiln finds them.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use crate::common::*;

#[test]
fn apt_and_pip_online_then_offline_from_an_imported_cache() {
    let ws = Workspace::new("offline-net");
    ws.spec(
        r#"
[image]
tags = ["t"]
platforms = ["linux/amd64"]
[apt]
bootstrap = "minbase"
packages = ["python3"]
[pip]
packages = ["requests"]
target = "/opt/venv"
"#,
    );
    let cache = unique_dir("cache");
    let kiln = |cache: &std::path::Path, args: &[&str]| {
        let mut c = ws.kiln();
        c.env("KILN_CACHE", cache).args(args);
        c
    };
    kiln(&cache, &["lock"]).run_ok();
    let online = kiln(&cache, &["build", "-o", "oci:online", "--locked", "--json"])
        .run_ok()
        .json();
    kiln(&cache, &["cache", "export", "cache.tar.zst"]).run_ok();

    let empty = unique_dir("cache");
    kiln(&empty, &["cache", "import", "cache.tar.zst"]).run_ok();
    let r = Command::new("unshare")
        .current_dir(ws.path())
        .env("KILN_CACHE", &empty)
        .args([
            "-n",
            env!("CARGO_BIN_EXE_kiln"),
            "build",
            "-o",
            "oci:offline",
        ])
        // The second, one-thread build of --check-reproducible reuses nothing.
        .args(["--offline", "--frozen", "--check-reproducible", "--json"])
        .run_ok();
    assert_eq!(r.json()["digest"], online["digest"], "{}", r.describe());
    assert_eq!(r.json()["reproducible"]["reproducible"], true);

    // The SBOM lists what dpkg and the Python dist-infos in the image say.
    let sbom_path = ws.join("offline/sbom/linux-amd64.spdx.json");
    assert_valid_spdx(&sbom_path);
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&sbom_path).unwrap()).unwrap();
    let purls: BTreeSet<String> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["externalRefs"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["referenceLocator"].as_str().map(String::from))
        .collect();
    let rootfs = umoci_unpack(&ws.join("offline"), "t", &ws.join("bundle"));
    let rows = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            rootfs.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Package}\\n"])
        .run_ok();
    let debs: Vec<&str> = rows.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert!(debs.len() > 50, "{debs:?}");
    for name in debs {
        // purl names are percent-encoded (`libstdc++6` → `libstdc%2B%2B6`).
        let name = name.replace('+', "%2B");
        assert!(
            purls
                .iter()
                .any(|u| u.starts_with(&format!("pkg:deb/debian/{name}@"))),
            "dpkg package {name} missing from the SBOM"
        );
    }
    let site = fs::read_dir(rootfs.join("opt/venv/lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages"))
        .find(|p| p.is_dir())
        .expect("venv site-packages");
    for e in fs::read_dir(site).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".dist-info") {
            let project = stem
                .rsplit_once('-')
                .unwrap()
                .0
                .to_lowercase()
                .replace('_', "-");
            assert!(
                purls
                    .iter()
                    .any(|u| u.starts_with(&format!("pkg:pypi/{project}@"))),
                "{name} missing from the SBOM: {purls:?}"
            );
        }
    }
}
