//! Files from another image (`[[files]] from`) and multi-stage Dockerfiles:
//! the stages the target needs are built first (busybox RUN lines in the
//! sandbox), `COPY --from` takes only what it names, `--target` picks a
//! stage, a stage the target does not need is never built, and the same
//! Dockerfile gives the same digest with another cache.

use std::fs;

use crate::common::*;

#[test]
fn files_from_an_oci_layout_image() {
    let ws = Workspace::new("files-from-image");
    let tar = make_tar(&[
        Item::Dir("opt/", 0o755),
        Item::Dir("opt/app/", 0o755),
        Item::Dir("opt/app/lib/", 0o755),
        Item::File("opt/app/lib/core.py", b"print('core')\n", 0o644),
        Item::File("opt/app/run", b"#!/bin/sh\n", 0o750),
        Item::Dir("etc/", 0o755),
        Item::File("etc/secret", b"not copied\n", 0o600),
    ]);
    write_oci_layout(&ws.join("img"), "v1", "amd64", &[tar]);
    ws.spec(
        "[image]\ntags = [\"t\"]\n\
         [[files]]\nfrom = \"oci:img:v1\"\nsrc = \"/opt/app/run\"\ndst = \"/usr/local/bin/run\"\n\
         [[files]]\nfrom = \"oci:img:v1\"\nsrc = \"/opt/app\"\ndst = \"/srv\"\nowner = \"1000:1000\"\n",
    );
    let v = build_json(&ws, &["-o", "oci:out"]);
    assert_eq!(v["layers"].as_array().unwrap().len(), 2, "{v}");
    let layers = Layout::open(ws.join("out")).layers("t");
    let paths: Vec<Vec<String>> = layers
        .iter()
        .map(|(_, entries)| entries.iter().map(|e| e.clean_path()).collect())
        .collect();
    assert!(
        paths.iter().flatten().all(|p| !p.starts_with("etc")),
        "only what src names is copied: {paths:?}"
    );
    let rootfs = umoci_unpack(&ws.join("out"), "t", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("usr/local/bin/run")).unwrap(),
        "#!/bin/sh\n"
    );
    // The image's mode, owner 0:0 (docker's COPY --from) unless given.
    assert_mode_owner(&rootfs, "/usr/local/bin/run", 0o750, 0, 0);
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/lib/core.py")).unwrap(),
        "print('core')\n"
    );
    assert_mode_owner(&rootfs, "/srv/lib/core.py", 0o644, 1000, 1000);
    assert!(
        !exists_in(&rootfs, "/srv/app"),
        "a directory's contents go under dst"
    );
    assert!(!exists_in(&rootfs, "/etc/secret"));

    // A path the image does not have: named, exit 2, nothing written.
    ws.write(
        "missing.toml",
        "[image]\n[[files]]\nfrom = \"oci:img:v1\"\nsrc = \"/nope\"\ndst = \"/x\"\n",
    );
    expect_failure(
        &ws,
        &["build", "missing.toml", "-o", "oci:missing"],
        2,
        &["/nope is not in the image", "oci:img:v1"],
    );
    assert!(!ws.join("missing").exists());
}

const TWO_STAGES: &str = "ARG BASE=oci:base:v1\n\
FROM ${BASE} AS build\n\
RUN mkdir -p /out && echo built > /out/artifact && echo tmp > /out/scratchpad\n\
FROM ${BASE} AS broken\n\
RUN echo this stage is never built && exit 3\n\
FROM scratch\n\
COPY --from=build /out/artifact /artifact\n\
CMD [\"/artifact\"]\n";

#[test]
fn a_two_stage_dockerfile_copies_the_artifact_only() {
    let ws = Workspace::new("multi-stage");
    busybox_base(&ws);
    ws.write("Dockerfile", TWO_STAGES);

    let build = |out: &str| {
        // A fresh cache each time (the harness gives every kiln one).
        run(ws.kiln().args([
            "build",
            "--dockerfile",
            "Dockerfile",
            "--json",
            "--quiet",
            "-o",
            &format!("oci:{out}"),
        ]))
        .ok()
        .json()
    };
    let v = build("out");
    // Only the stage the target needs was built (`broken` would fail).
    let stages: Vec<&str> = v["dockerfile"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["build"], "{v}");
    let layout = Layout::open(ws.join("out"));
    let layers = layout.layers("latest");
    let paths: Vec<String> = layers
        .iter()
        .flat_map(|(_, e)| e.iter().map(|e| e.clean_path()))
        .collect();
    assert_eq!(
        paths,
        ["artifact"],
        "only the artifact, nothing of the build stage"
    );
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("artifact")).unwrap(),
        "built\n"
    );
    assert!(!exists_in(&rootfs, "/bin/busybox") && !exists_in(&rootfs, "/out"));
    // No scratch path of the stage in the image (history, annotations).
    let config = layout.config("latest");
    let (_, manifest) = layout.manifest("latest");
    for text in [config.to_string(), manifest.to_string()] {
        assert!(
            !text.contains("stages-") && !text.contains("/tmp"),
            "a temp path leaked: {text}"
        );
    }
    assert!(config.to_string().contains("stage:build"), "{config}");

    // The same Dockerfile, another cache: the same digest.
    let again = build("out2");
    assert_eq!(v["digest"], again["digest"]);

    // --target build: the first stage, whole.
    let t = run(ws.kiln().args([
        "build",
        "--dockerfile",
        "Dockerfile",
        "--target",
        "build",
        "--quiet",
        "-o",
        "oci:target",
    ]))
    .ok();
    assert!(t.stdout.trim().starts_with("sha256:"), "{}", t.stdout);
    let rootfs = umoci_unpack(&ws.join("target"), "latest", &ws.join("bundle-target"));
    assert_eq!(
        fs::read_to_string(rootfs.join("out/scratchpad")).unwrap(),
        "tmp\n"
    );
    assert!(exists_in(&rootfs, "/bin/busybox"));

    // --target broken builds that stage, and its RUN fails.
    let r = run(ws.kiln().args([
        "build",
        "--dockerfile",
        "Dockerfile",
        "--target",
        "broken",
        "-o",
        "oci:broken",
    ]));
    assert!(!r.status.success(), "{}", r.describe());
    assert!(!ws.join("broken").exists());

    // --explain shows every stage, each line prefixed.
    let e = run(ws
        .kiln()
        .args(["build", "--dockerfile", "Dockerfile", "--explain"]))
    .ok();
    assert!(e.stdout.contains("[build]"), "{}", e.stdout);
    assert!(e.stdout.contains("[broken (not built"), "{}", e.stdout);
    assert!(e.stdout.contains("from = stage `build`"), "{}", e.stdout);
}

#[test]
fn from_a_stage_names_the_stage_as_the_base() {
    let ws = Workspace::new("multi-stage-from");
    busybox_base(&ws);
    ws.write(
        "Dockerfile",
        "FROM oci:base:v1 AS build\nENV STAGE=build\nRUN echo one > /one\n\
         FROM build\nRUN cat /one > /two && echo $STAGE >> /two\n",
    );
    let v = build_json(&ws, &["--dockerfile", "Dockerfile", "-o", "oci:out"]);
    let layout = Layout::open(ws.join("out"));
    let (_, manifest) = layout.manifest("latest");
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.name"], "stage:build",
        "{manifest}"
    );
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("two")).unwrap(),
        "one\nbuild\n"
    );
    assert!(v["digest"].as_str().is_some());
}

#[test]
fn an_unknown_stage_is_refused_naming_the_line() {
    let ws = Workspace::new("multi-stage-bad");
    busybox_base(&ws);
    ws.write(
        "Dockerfile",
        "FROM oci:base:v1 AS build\nFROM scratch\nCOPY --from=biuld /out /out\n",
    );
    expect_failure(
        &ws,
        &["build", "--dockerfile", "Dockerfile", "-o", "oci:out"],
        2,
        &[
            "line 3",
            "COPY --from",
            "no stage `biuld`",
            "earlier stages: build",
        ],
    );
    expect_failure(
        &ws,
        &[
            "build",
            "--dockerfile",
            "Dockerfile",
            "--target",
            "nope",
            "-o",
            "oci:out",
        ],
        2,
        &["--target", "no stage named `nope`"],
    );
    assert!(!ws.join("out").exists());
}

/// `[[files]] from` a registry image by tag is pinned in kiln.lock at the
/// tag's digest: after the tag moves, a locked build still copies from the
/// image that was locked, and re-locking follows the tag.
#[test]
fn files_from_a_registry_tag_are_pinned_in_the_lock() {
    let reg = Registry::shared();
    let repo = format!("files-from-pin-{}", std::process::id());
    let first = push_scratch_image(reg, &repo, "stable", &[("tool.txt", "one\n")]);
    let ws = Workspace::new("files-from-pin");
    let from = format!("{}:stable", reg.repo(&repo));
    ws.spec(&format!(
        "[image]\ntags = [\"t\"]\n[[files]]\nfrom = \"{from}\"\nsrc = \"/base/tool.txt\"\ndst = \"/tool.txt\"\n"
    ));
    run(ws.kiln().args(["lock", "--json"])).ok();
    let lock: toml::Value =
        toml::from_str(&fs::read_to_string(ws.join("kiln.lock")).unwrap()).unwrap();
    let images = lock["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{lock}");
    assert_eq!(images[0]["reference"].as_str(), Some(from.as_str()));
    assert_eq!(images[0]["digest"].as_str(), first["digest"].as_str());

    push_scratch_image(reg, &repo, "stable", &[("tool.txt", "two\n")]);
    let tool = |out: &str| {
        let rootfs = umoci_unpack(&ws.join(out), "t", &ws.join(format!("{out}-bundle")));
        fs::read_to_string(rootfs.join("tool.txt")).unwrap()
    };
    build_json(&ws, &["--locked", "-o", "oci:locked"]);
    assert_eq!(tool("locked"), "one\n");
    run(ws.kiln().args(["lock", "--upgrade"])).ok();
    build_json(&ws, &["--locked", "-o", "oci:relocked"]);
    assert_eq!(tool("relocked"), "two\n");
}
