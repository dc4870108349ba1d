//! `--cache-from`: a locked build pushes its stage records beside the
//! image (OCI referrers of its platform manifest); another machine (an
//! empty cache) building the same spec and lock takes the package stages
//! from them: the layers are pulled as they are, no package is fetched
//! (the conda channel is gone), and the digest is the same.

use crate::common::*;
use crate::conda_channel::*;

/// `kiln lock`, then `kiln build --push --json` of the workspace's spec.
fn lock_and_push(ws: &Workspace) -> serde_json::Value {
    ws.kiln().args(["lock"]).run_ok();
    ws.kiln()
        .args(["build", "--push", "--json"])
        .run_ok()
        .json()
}

#[test]
fn cache_from_takes_locked_stages_from_the_registry() {
    let reg = Registry::shared();
    let ws = Workspace::new("cache-from");
    let channel = ws.join("channel");
    write_channel(
        &channel,
        &[
            pkg(
                "libbase",
                "1.0",
                &[],
                vec![file("share/libbase/version", b"1.0\n")],
            ),
            pkg(
                "app",
                "2.0",
                &["libbase"],
                vec![script("bin/app", "#!/bin/sh\necho app\n")],
            ),
        ],
    );
    let name = reg.repo("cache-from/app");
    ws.spec(&format!(
        "[image]\nname = \"{name}\"\ntags = [\"1\"]\nplatforms = [\"linux/amd64\"]\n\n\
         [conda]\nchannels = [\"file://{}\"]\npackages = [\"app\"]\n",
        channel.display()
    ));
    let first = lock_and_push(&ws);
    let digest = assert_digest(&first["digest"]);
    // The stage record is a referrer of the platform manifest (the
    // referrers tag schema: this registry has no referrers API).
    let index = skopeo_inspect_raw(
        &reg.docker_ref("cache-from/app", &digest.replace("sha256:", "sha256-")),
    );
    let types: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["artifactType"].as_str())
        .collect();
    assert!(
        types.contains(&"application/vnd.kiln.stages.v1+json"),
        "{index}"
    );

    // Another machine: an empty cache and no channel.
    std::fs::rename(&channel, ws.join("channel-gone")).unwrap();
    let cache = unique_dir("cache-from-empty");
    let again = |extra: &[&str]| {
        let mut c = ws.kiln();
        c.env("KILN_CACHE", &cache)
            .args(["build", "--push", "--json", "--locked"])
            .args(extra);
        c.run()
    };
    // Without --cache-from the packages are needed, and they are gone.
    let miss = again(&[]);
    assert!(!miss.status.success(), "{}", miss.describe());
    // With it: the same image, its stages reused, nothing from the channel.
    let hit = again(&["--cache-from", &format!("{name}:1")]);
    assert!(hit.status.success(), "{}", hit.describe());
    let v = hit.json();
    assert_eq!(assert_digest(&v["digest"]), digest);
    assert_eq!(v["stages_reused"], 1, "{v}");
    // A --cache-from that is not there is a miss, not a failure.
    let cache2 = unique_dir("cache-from-missing");
    let mut c = ws.kiln();
    c.env("KILN_CACHE", &cache2).args([
        "build",
        "--json",
        "--locked",
        "-o",
        "oci:out",
        "--cache-from",
        &format!("{name}:nope"),
    ]);
    let r = c.run();
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("--cache-from") && r.stderr.contains("not used"),
        "{}",
        r.stderr
    );
}

/// A build with no package stage on a base seen before reads the base's
/// package databases (for the SBOM) from the cache's remembered view, not
/// from its layers: with the base's layer blobs gone from the cache, a
/// second build pushed to the base's registry fetches none of them, and
/// its SBOM still lists the base's packages.
#[test]
fn the_sbom_view_of_a_base_is_remembered() {
    let reg = Registry::shared();
    // A base whose SBOM has a package: a dpkg status file.
    let b = Workspace::new("view-base");
    b.write(
        "status",
        "Package: tool\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n\n",
    );
    b.spec(&format!(
        "[image]\nname = \"{}\"\ntags = [\"1\"]\n\n[[files]]\nsrc = \"status\"\ndst = \"/var/lib/dpkg/status\"\n",
        reg.repo("view/base")
    ));
    b.kiln().args(["build", "--push", "--no-sbom"]).run_ok();
    let base = b
        .kiln()
        .args(["inspect", &format!("{}:1", reg.repo("view/base")), "--json"])
        .run_ok()
        .json();
    let layers: Vec<String> = base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();

    let ws = Workspace::new("view-app");
    let cache = unique_dir("view-cache");
    let build = |content: &str| {
        ws.write("app.txt", content);
        ws.spec(&format!(
            "[image]\nbase = \"{}:1\"\nname = \"{}\"\n\n[[files]]\nsrc = \"app.txt\"\ndst = \"/app.txt\"\n",
            reg.repo("view/base"),
            reg.repo("view/app")
        ));
        let mut c = ws.kiln();
        c.env("KILN_CACHE", &cache)
            .args(["build", "--push", "--json"]);
        c.run_ok().json()
    };
    let first = build("one\n");
    assert_eq!(first["sbom"][0]["packages"], 1, "{first}");
    for l in &layers {
        let _ = std::fs::remove_file(cache.join("blobs/sha256").join(l));
    }
    let second = build("two\n");
    assert_eq!(second["sbom"][0]["packages"], 1, "{second}");
    for l in &layers {
        assert!(
            !cache.join("blobs/sha256").join(l).exists(),
            "base layer {l} was fetched again"
        );
    }
}

/// The stage record carries the layers of the `[[run]]` steps over those
/// stages: another machine with `--cache-from` remembers the commands too,
/// runs nothing and writes no tree, and gets the same image.
#[test]
fn cache_from_takes_the_commands_layers_too() {
    let reg = Registry::shared();
    let ws = Workspace::new("cache-from-run");
    busybox_base(&ws);
    let channel = ws.join("channel");
    write_channel(
        &channel,
        &[pkg(
            "libbase",
            "1.0",
            &[],
            vec![file("share/libbase/version", b"1.0\n")],
        )],
    );
    let name = reg.repo("cache-from/run");
    ws.spec(&format!(
        "[image]\nname = \"{name}\"\nbase = \"oci:base:v1\"\ntags = [\"1\"]\nplatforms = [\"linux/amd64\"]\n\n\
         [conda]\nchannels = [\"file://{}\"]\npackages = [\"libbase\"]\n\n\
         [[run]]\ncommand = \"ls /opt/conda/share/libbase > /listing\"\n",
        channel.display()
    ));
    let first = lock_and_push(&ws);
    assert_eq!(first["summary"]["commands_run"], 1, "{first}");
    let digest = assert_digest(&first["digest"]);

    // Another machine: an empty cache and no channel.
    std::fs::rename(&channel, ws.join("channel-gone")).unwrap();
    let cache = unique_dir("cache-from-run-empty");
    let hit = ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .args(["build", "--push", "--json", "--locked", "--cache-from"])
        .arg(format!("{name}:1"))
        .run_ok()
        .json();
    assert_eq!(assert_digest(&hit["digest"]), digest);
    assert_eq!(hit["stages_reused"], 1, "{hit}");
    assert_eq!(hit["summary"]["commands_run"], 0, "{hit}");
    assert_eq!(hit["summary"]["commands_remembered"], 1, "{hit}");
}
