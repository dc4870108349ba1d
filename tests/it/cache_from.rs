//! `--cache-from`: a locked build pushes its stage records beside the
//! image (OCI referrers of its platform manifest); another machine (an
//! empty cache) building the same spec and lock takes the package stages
//! from them: the layers are pulled as they are, no package is fetched
//! (the conda channel is gone), and the digest is the same.

use crate::common::*;
use crate::conda_channel::*;

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
    ws.kiln().args(["lock"]).run_ok();
    let first = ws
        .kiln()
        .args(["build", "--push", "--json"])
        .run_ok()
        .json();
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
