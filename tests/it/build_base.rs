//! `kiln build` on top of a base image: a local OCI layout with whiteouts, a
//! registry image (pushed by kiln itself), a docker archive, and platform
//! selection from a base.

use crate::common::*;
use std::fs;

/// Base layers must be reused byte for byte, whiteouts and opaque dirs must
/// keep working, and the base config is inherited (env merged, cmd kept).
#[test]
fn local_oci_base_with_whiteouts() {
    let ws = Workspace::new("base-whiteouts");
    let base = write_oci_layout(&ws.join("base"), "v1", "amd64", &whiteout_base_layers());
    ws.write("added.txt", "added\n");
    ws.spec(
        r#"
[image]
tags = ["derived"]
base = "oci:base:v1"

[[files]]
src = "added.txt"
dst = "/a/added"

[config]
env = { APP_ENV = "from-kiln" }
"#,
    );
    let v = build_json(&ws, &["--output", "oci:out"]);
    let layout = Layout::open(ws.join("out"));
    let (digest, manifest) = layout.manifest("derived");
    assert_eq!(digest, s(&v, "digest"));
    assert_json_layers_match_manifest(&v, &manifest);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "2 base layers + 1 new");
    for (i, want) in base.layer_digests.iter().enumerate() {
        assert_eq!(
            layers[i]["digest"],
            want.as_str(),
            "base layer {i} must be reused byte-identical"
        );
        assert_eq!(layers[i]["mediaType"], MT_LAYER_GZIP);
        assert_eq!(
            layout.blob(want),
            fs::read(ws.join("base").join("blobs/sha256").join(&want[7..])).unwrap()
        );
    }
    let config = layout.config("derived");
    let diff_ids = strs(&config["rootfs"]["diff_ids"]);
    assert_eq!(diff_ids.len(), 3);
    assert_eq!(&diff_ids[..2], &base.diff_ids[..]);
    assert_eq!(
        config["architecture"], "amd64",
        "platform defaults to the base's"
    );

    // Labels: base provenance plus the base's own labels.
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        base.manifest_digest.as_str()
    );
    assert!(
        !s(labels, "org.opencontainers.image.base.name").is_empty(),
        "base.name label set: {labels}"
    );
    assert_eq!(
        labels["com.example.base"], "handmade",
        "base labels are inherited"
    );
    // Env merged, Cmd inherited.
    let env = env_map(&config["config"]);
    assert_eq!(env["APP_ENV"], "from-kiln");
    assert_eq!(env["BASE_ENV"], "from-base");
    assert!(env["PATH"].contains("/usr/bin"), "base PATH kept: {env:?}");
    assert_eq!(strs(&config["config"]["Cmd"]), ["/bin/sh"]);

    oci_validate(&ws.join("out"), "derived");
    let rootfs = umoci_unpack(&ws.join("out"), "derived", &ws.join("bundle"));
    assert_eq!(fs::read_to_string(rootfs.join("a/keep")).unwrap(), "keep\n");
    assert_eq!(fs::read_to_string(rootfs.join("d/new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(rootfs.join("a/added")).unwrap(),
        "added\n"
    );
    assert!(
        !exists_in(&rootfs, "/a/gone"),
        "whiteout of /a/gone honoured"
    );
    assert!(!exists_in(&rootfs, "/d/old"), "opaque /d hides /d/old");
    assert!(!exists_in(&rootfs, "/a/.wh.gone"));
    assert!(!exists_in(&rootfs, "/d/.wh..wh..opq"));
}

/// kiln pushes a base, then builds FROM it by tag and pushes to another repo:
/// base layers are mounted or skipped, never re-uploaded.
#[test]
fn registry_base_pushed_by_kiln() {
    let reg = Registry::shared();
    let base_repo = unique_repo("base");
    let base = push_scratch_image(
        reg,
        &base_repo,
        "v1",
        &[("one.txt", "one\n"), ("two.txt", "two\n")],
    );
    let base_ref = format!("{}:v1", reg.repo(&base_repo));
    assert_eq!(base["push"]["reference"], base_ref.as_str());
    assert_eq!(base["push"]["digest"], base["digest"]);
    let base_layers = strs(&skopeo_inspect(&format!("docker://{base_ref}"))["Layers"]);
    assert_eq!(base_layers.len(), 2);

    let ws = Workspace::new("base-registry");
    let app_repo = unique_repo("app");
    ws.write("app.txt", format!("app for {app_repo}\n"));
    ws.spec(&format!(
        r#"
[image]
name = "{}"
tags = ["1"]
base = "{base_ref}"

[[files]]
src = "app.txt"
dst = "/app.txt"
"#,
        reg.repo(&app_repo)
    ));
    let v = build_json(&ws, &["--push"]);
    assert!(
        !ws.join("kiln-out").exists(),
        "--push alone writes no local output"
    );
    assert_outputs(&ws, &v, &[]);
    assert_eq!(v["layers"].as_array().unwrap().len(), 1, "one new layer");

    let push = &v["push"];
    assert_eq!(
        push["reference"],
        format!("{}:1", reg.repo(&app_repo)).as_str()
    );
    assert_eq!(push["digest"], v["digest"]);
    let up = push["blobs_uploaded"].as_u64().unwrap();
    let skipped = push["blobs_skipped"].as_u64().unwrap();
    let mounted = push["blobs_mounted"].as_u64().unwrap();
    assert!(
        mounted + skipped >= 2,
        "base layers mounted or skipped: {push}"
    );
    assert_eq!(up + skipped + mounted, 4, "3 layers + config: {push}");
    assert_eq!(
        reg.plain_upload_posts(&app_repo).len() as u64,
        up + push["referrer_blobs_uploaded"].as_u64().unwrap(),
        "registry saw as many uploads as kiln reported (image and SBOM referrer)"
    );

    let r = reg.docker_ref(&app_repo, "1");
    let sk = skopeo_inspect(&r);
    assert_eq!(sk["Digest"], v["digest"]);
    let sk_layers = strs(&sk["Layers"]);
    assert_eq!(sk_layers.len(), 3);
    assert_eq!(
        &sk_layers[..2],
        &base_layers[..],
        "base layers reused as is"
    );
    assert_eq!(sk_layers[2], s(&v["layers"][0], "digest"));
    assert_eq!(
        sk["Labels"]["org.opencontainers.image.base.name"],
        base_ref.as_str()
    );
    assert_eq!(
        sk["Labels"]["org.opencontainers.image.base.digest"],
        base["digest"]
    );

    let copy = ws.join("pulled");
    skopeo_copy(&r, &format!("oci:{}:1", copy.display()));
    let rootfs = umoci_unpack(&copy, "1", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("base/one.txt")).unwrap(),
        "one\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("base/two.txt")).unwrap(),
        "two\n"
    );
    assert!(rootfs.join("app.txt").is_file());
}

#[test]
fn registry_base_by_digest() {
    let reg = Registry::shared();
    let base_repo = unique_repo("base-digest");
    let base = push_scratch_image(reg, &base_repo, "v1", &[("x.txt", "x\n")]);
    let by_digest = format!("{}@{}", reg.repo(&base_repo), s(&base, "digest"));
    let ws = Workspace::new("base-digest");
    ws.write("y.txt", "y\n");
    ws.spec(&format!(
        "[image]\nbase = \"{by_digest}\"\n\n[[files]]\nsrc = \"y.txt\"\ndst = \"/y.txt\"\n"
    ));
    let v = build_json(&ws, &["--output", "oci:out"]);
    let layout = Layout::open(ws.join("out"));
    let (digest, manifest) = layout.manifest("latest");
    assert_eq!(digest, s(&v, "digest"));
    assert_eq!(manifest["layers"][0]["digest"], base["layers"][0]["digest"]);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    let labels = &layout.config("latest")["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        base["digest"]
    );
    assert_eq!(
        labels["org.opencontainers.image.base.name"],
        by_digest.as_str()
    );
}

/// A docker archive written by kiln works as a base; its layers are
/// recompressed, so compare diff_ids.
#[test]
fn docker_archive_base() {
    let ws = Workspace::new("base-docker-archive");
    ws.write("base/one.txt", "one\n");
    ws.write(
        "base.toml",
        "[image]\ntags = [\"b\"]\n\n[[files]]\nsrc = \"base/one.txt\"\ndst = \"/one.txt\"\n\n[config]\nenv = { FROM_ARCHIVE = \"yes\" }\n",
    );
    let b = build_json(&ws, &["base.toml", "--output", "docker-archive:base.tar"]);
    ws.write("two.txt", "two\n");
    ws.spec(
        "[image]\nbase = \"docker-archive:base.tar\"\n\n[[files]]\nsrc = \"two.txt\"\ndst = \"/two.txt\"\n",
    );
    let v = build_json(&ws, &["--output", "oci:out"]);
    let layout = Layout::open(ws.join("out"));
    let config = layout.config("latest");
    let diff_ids = strs(&config["rootfs"]["diff_ids"]);
    assert_eq!(diff_ids.len(), 2);
    assert_eq!(
        diff_ids[0],
        s(&b["layers"][0], "diff_id"),
        "base filesystem unchanged"
    );
    assert_eq!(diff_ids[1], s(&v["layers"][0], "diff_id"));
    assert_eq!(env_map(&config["config"])["FROM_ARCHIVE"], "yes");
    let labels = &config["config"]["Labels"];
    assert!(
        labels["org.opencontainers.image.base.digest"].is_string(),
        "non-scratch base → base.digest label (the archived image's manifest digest): {labels}"
    );
    assert!(
        labels["org.opencontainers.image.base.name"].is_string(),
        "{labels}"
    );
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_eq!(fs::read_to_string(rootfs.join("one.txt")).unwrap(), "one\n");
    assert_eq!(fs::read_to_string(rootfs.join("two.txt")).unwrap(), "two\n");
}

/// Without `platforms`, the image takes the base's platform.
#[test]
fn platform_defaults_to_base_platform() {
    let ws = Workspace::new("base-platform");
    let base = write_oci_layout(
        &ws.join("base"),
        "arm",
        "arm64",
        &[make_tar(&[Item::File("arch.txt", b"arm64\n", 0o644)])],
    );
    ws.write("x.txt", "x\n");
    ws.spec("[image]\nbase = \"oci:base:arm\"\n\n[[files]]\nsrc = \"x.txt\"\ndst = \"/x.txt\"\n");
    let v = build_json(&ws, &["--output", "oci:out"]);
    assert_eq!(v["manifests"][0]["platform"], "linux/arm64");
    let layout = Layout::open(ws.join("out"));
    assert_eq!(
        layout.manifest("latest").1["layers"][0]["digest"],
        base.layer_digests[0].as_str()
    );
    let config = layout.config("latest");
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["os"], "linux");
}

/// A multi-platform base: each platform of the result sits on that
/// platform's base layers.
#[test]
fn multi_platform_base_picks_matching_layers() {
    let ws = Workspace::new("base-multi");
    let (base_index, imgs) = write_oci_index_layout(
        &ws.join("base"),
        "multi",
        &[
            (
                "amd64",
                vec![make_tar(&[Item::File("arch.txt", b"amd64\n", 0o644)])],
            ),
            (
                "arm64",
                vec![make_tar(&[Item::File("arch.txt", b"arm64\n", 0o644)])],
            ),
        ],
    );
    ws.write("x.txt", "x\n");
    ws.spec(
        r#"
[image]
tags = ["m"]
base = "oci:base:multi"
platforms = ["linux/amd64", "linux/arm64"]

[[files]]
src = "x.txt"
dst = "/x.txt"
"#,
    );
    let v = build_json(&ws, &["--output", "oci:out"]);
    let layout = Layout::open(ws.join("out"));
    assert_eq!(layout.descriptor("m")["mediaType"], MT_INDEX);
    for (arch, img) in [("amd64", &imgs[0]), ("arm64", &imgs[1])] {
        let m = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"] == format!("linux/{arch}"))
            .unwrap_or_else(|| panic!("no linux/{arch} in {v}"));
        let manifest = layout.json_blob(s(m, "digest"));
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            layers[0]["digest"],
            img.layer_digests[0].as_str(),
            "{arch} base layer"
        );
        let cfg = layout.json_blob(s(&manifest["config"], "digest"));
        assert_eq!(cfg["architecture"], arch);
        // base.digest may name the base index or this platform's manifest
        // (the contract does not say); it must be one of them.
        let bd = &cfg["config"]["Labels"]["org.opencontainers.image.base.digest"];
        assert!(
            bd == img.manifest_digest.as_str() || bd == base_index.as_str(),
            "base.digest {bd}"
        );
    }
}
