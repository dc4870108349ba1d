//! `kiln rebase`: an image kiln built on a base is put on a re-pinned base
//! without a rebuild (its own layers kept, the base's swapped), runs under
//! podman, and images that record no base, or whose layers are not their
//! recorded base's, are refused.

use crate::common::*;

/// Push busybox plus /etc/version = VERSION as rb/base:TAG.
fn push_base(reg: &Registry, tag: &str, version: &str) {
    let ws = Workspace::new("rb-base");
    busybox_rootfs(&ws);
    ws.write("rootfs/etc/version", format!("{version}\n"));
    ws.spec(&format!(
        "[image]\nname = \"{}\"\ntags = [\"{tag}\"]\n\n[[files]]\nsrc = \"rootfs\"\ndst = \"/\"\n",
        reg.repo("rb/base")
    ));
    ws.kiln().args(["build", "--push", "--no-sbom"]).run_ok();
}

fn layers(reference: &str) -> Vec<String> {
    skopeo_inspect_raw(reference)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rebase_swaps_the_base_and_keeps_the_image_layers() {
    let reg = Registry::shared();
    push_base(reg, "1", "one");
    let app = Workspace::new("rb-app");
    app.write("app.txt", "app\n");
    app.spec(&format!(
        "[image]\nbase = \"{}\"\nname = \"{}\"\ntags = [\"1\"]\n\n[[files]]\nsrc = \"app.txt\"\ndst = \"/app.txt\"\n",
        reg.repo("rb/base:1"),
        reg.repo("rb/app")
    ));
    app.kiln().args(["build", "--push", "--no-sbom"]).run_ok();
    push_base(reg, "2", "two");

    let rebase = |image: &str, tag: &str| {
        app.kiln()
            .args(["rebase", &reg.repo(image), "--base", &reg.repo("rb/base:2")])
            .args(["--tag", tag, "--json"])
            .run()
    };
    let r = rebase("rb/app:1", "on-2");
    assert!(r.status.success(), "{}", r.describe());
    let v = r.json();
    assert_eq!(v["kept_layers"], serde_json::json!([1]));
    // The new base's layers, then the app's own layer, unchanged.
    let base2 = layers(&reg.docker_ref("rb/base", "2"));
    let old = layers(&reg.docker_ref("rb/app", "1"));
    let new = layers(&reg.docker_ref("rb/app", "on-2"));
    assert_eq!(new[..base2.len()], base2[..]);
    assert_eq!(new.last(), old.last());
    let raw = skopeo_inspect_raw(&reg.docker_ref("rb/app", "on-2"));
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.base.digest"],
        skopeo_inspect(&reg.docker_ref("rb/base", "2"))["Digest"]
    );
    // Only the config and the manifest were new: nothing uploaded but the config.
    assert_eq!(v["push"]["blobs_uploaded"], 1, "{v}");
    // It runs: the new base's file, the app's file.
    let out = podman_run(
        &app.join("pstore"),
        &reg.docker_ref("rb/app", "on-2"),
        &["sh", "-c", "cat /etc/version /app.txt"],
    );
    assert_eq!(out, "two\napp\n");
    // Deterministic: the same rebase, the same digest.
    let again = rebase("rb/app:1", "on-2-again").json();
    assert_eq!(again["digest"], v["digest"]);

    // An image that records no base (built from scratch) is refused.
    let r = rebase("rb/base:1", "x");
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
    assert!(r.stderr.contains("records no base"), "{}", r.stderr);
    // One whose recorded base is not what its layers start with: the app's
    // manifest with base.digest naming base 2, pushed as a forgery.
    let mut forged = skopeo_inspect_raw(&reg.docker_ref("rb/app", "1"));
    forged["annotations"]["org.opencontainers.image.base.digest"] =
        skopeo_inspect(&reg.docker_ref("rb/base", "2"))["Digest"].clone();
    let path = app.write("forged.json", serde_json::to_vec(&forged).unwrap());
    let put = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", path.display()))
        .arg(format!("http://{}/v2/rb/app/manifests/forged", reg.host()))
        .run();
    assert!(put.status.success(), "{}", put.describe());
    let r = rebase("rb/app:forged", "y");
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("first layers are not those of"),
        "{}",
        r.stderr
    );
}
