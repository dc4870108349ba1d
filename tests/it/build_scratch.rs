//! `kiln build` from scratch: layout validity, file metadata, config,
//! determinism, tar normalisation, zstd, docker-archive, multi-platform, and a
//! busybox shell that actually runs.

use crate::common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

const FULL_SPEC: &str = r#"
[image]
tags = ["1.0", "latest"]
base = "scratch"

[[files]]
src = "app/"
dst = "/app"

[[files]]
src = "conf/app.conf"
dst = "/etc/app/app.conf"
mode = "0640"
owner = "1000:1000"

[config]
env = { PYTHONUNBUFFERED = "1", GREETING = "hello world" }
entrypoint = ["/bin/sh", "-c"]
cmd = ["echo hi"]
workdir = "/app"
user = "1000:1000"
labels = { "com.example.team" = "ds" }
exposed_ports = ["8080/tcp"]
volumes = ["/data"]
"#;

/// Host files whose permissions deliberately differ from what the image must
/// get: 0600 → 0644, 0700 → 0755, a 0700 directory → 0755.
const PINNED_FULL_GZIP: &str =
    "sha256:3ce40555df8ae832dbc06257c51dade6ab1175207bc3afdddeecbed833165847";
/// The same image at gzip level 6, the default before it became 1: pinned
/// before the workspace split, so only the compression level moved.
const PINNED_FULL_GZIP6: &str =
    "sha256:d724b297e586618972eddf84293fe1525a213e4ac484a27c116bd9bdb9d7e2db";
const PINNED_FULL_ZSTD: &str =
    "sha256:3db463987e2dda0879d74b948a9369a9c518a2b3130b3959482f9e59493a09e1";

fn full_workspace(label: &str) -> Workspace {
    let ws = Workspace::new(label);
    ws.mkdir("app", 0o700);
    ws.write_mode("app/hello.txt", "hello\n", 0o600);
    ws.write_mode("app/run.sh", "#!/bin/sh\necho run\n", 0o700);
    ws.mkdir("app/sub", 0o700);
    ws.write_mode("app/sub/data.bin", (0u8..=255).collect::<Vec<u8>>(), 0o640);
    ws.symlink("app/link", "hello.txt");
    ws.write("conf/app.conf", "key=value\n");
    ws.spec(FULL_SPEC);
    ws
}

#[test]
fn scratch_image_with_files_and_config() {
    let ws = full_workspace("scratch-full");
    let v = build_json(&ws, &["--output", "oci:out"]);
    assert_outputs(&ws, &v, &["oci:out"]);
    assert!(v["push"].is_null(), "no push requested: {v}");
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["platform"], "linux/amd64");
    let digest = s(&v, "digest").to_string();
    // The same inputs, the same image.
    assert_eq!(digest, PINNED_FULL_GZIP, "the pinned digest moved");

    // Layout: both tags point at the manifest kiln reported.
    let layout = Layout::open(ws.join("out"));
    assert_eq!(layout.tags(), vec!["1.0".to_string(), "latest".to_string()]);
    for tag in ["1.0", "latest"] {
        let (d, _) = layout.manifest(tag);
        assert_eq!(d, digest, "tag {tag}");
        oci_validate(&ws.join("out"), tag);
    }
    let (_, manifest) = layout.manifest("1.0");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["mediaType"], MT_CONFIG);
    assert_json_layers_match_manifest(&v, &manifest);
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        2,
        "one layer per [[files]]"
    );
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"], MT_LAYER_GZIP,
            "gzip is the default compression"
        );
    }

    // Image config.
    let config = layout.config("1.0");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert!(
        same_instant(s(&config, "created"), "1970-01-01T00:00:00Z"),
        "created {}",
        config["created"]
    );
    assert_eq!(config["rootfs"]["type"], "layers");
    let diff_ids = strs(&config["rootfs"]["diff_ids"]);
    for (i, (desc, _)) in layout.layers("1.0").iter().enumerate() {
        let raw = decompress(&layout.blob(s(desc, "digest")), s(desc, "mediaType"));
        assert_eq!(diff_ids[i], digest_of(&raw), "diff_id of layer {i}");
        assert_eq!(v["layers"][i]["diff_id"], diff_ids[i].as_str());
    }
    let c = &config["config"];
    let env = env_map(c);
    assert_eq!(env.get("PYTHONUNBUFFERED").map(String::as_str), Some("1"));
    assert_eq!(env.get("GREETING").map(String::as_str), Some("hello world"));
    assert_eq!(strs(&c["Entrypoint"]), ["/bin/sh", "-c"]);
    assert_eq!(strs(&c["Cmd"]), ["echo hi"]);
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(keys(&c["ExposedPorts"]), ["8080/tcp"]);
    assert_eq!(keys(&c["Volumes"]), ["/data"]);
    assert_eq!(c["Labels"]["com.example.team"], "ds");
    assert!(same_instant(
        c["Labels"]["org.opencontainers.image.created"]
            .as_str()
            .expect("created label"),
        "1970-01-01T00:00:00Z"
    ));
    assert!(
        c["Labels"]
            .get("org.opencontainers.image.base.name")
            .is_none(),
        "scratch has no base label"
    );
    assert!(c["Labels"]
        .get("org.opencontainers.image.base.digest")
        .is_none());

    // skopeo reads the same thing.
    let sk = skopeo_inspect(&format!("oci:{}:1.0", ws.join("out").display()));
    assert_eq!(sk["Digest"], digest.as_str());
    assert_eq!(sk["Architecture"], "amd64");
    assert_eq!(sk["Os"], "linux");
    assert_eq!(sk["Labels"]["com.example.team"], "ds");
    assert!(strs(&sk["Env"]).contains(&"PYTHONUNBUFFERED=1".to_string()));
    assert_eq!(sk["Layers"].as_array().unwrap().len(), 2);

    // Unpacked filesystem: contents, modes, owners, symlink.
    let bundle = ws.join("bundle");
    let rootfs = umoci_bundle(&ws.join("out"), "1.0", &bundle);
    assert_eq!(
        fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        fs::read(rootfs.join("app/sub/data.bin")).unwrap(),
        (0u8..=255).collect::<Vec<u8>>()
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/app/app.conf")).unwrap(),
        "key=value\n"
    );
    assert_mode_owner(&rootfs, "/app/hello.txt", 0o644, 0, 0);
    assert_mode_owner(&rootfs, "/app/run.sh", 0o755, 0, 0);
    assert_mode_owner(&rootfs, "/app/sub/data.bin", 0o644, 0, 0);
    assert_mode_owner(&rootfs, "/app/sub", 0o755, 0, 0);
    assert_mode_owner(&rootfs, "/app", 0o755, 0, 0);
    assert_mode_owner(&rootfs, "/etc/app/app.conf", 0o640, 1000, 1000);
    let link = stat(&rootfs, "/app/link");
    assert!(link.file_type().is_symlink(), "symlink kept as a symlink");
    assert_eq!(
        fs::read_link(rootfs.join("app/link")).unwrap().to_str(),
        Some("hello.txt")
    );

    // umoci's runtime config reflects the image config.
    let rt = bundle_config(&bundle);
    let penv = strs(&rt["process"]["env"]);
    assert!(penv.contains(&"PYTHONUNBUFFERED=1".to_string()), "{penv:?}");
    assert!(
        penv.contains(&"GREETING=hello world".to_string()),
        "{penv:?}"
    );
    assert_eq!(strs(&rt["process"]["args"]), ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(rt["process"]["cwd"], "/app");
    assert_eq!(rt["process"]["user"]["uid"], 1000);
    assert_eq!(rt["process"]["user"]["gid"], 1000);
}

/// No SPEC argument → ./kiln.toml; no --output/--push → oci:kiln-out in cwd;
/// no tags → "latest".
#[test]
fn defaults_spec_output_and_tag() {
    let ws = Workspace::new("scratch-defaults");
    ws.write("hello.txt", "hi\n");
    ws.spec("[image]\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n");
    let out = ws.kiln().args(["build", "--json"]).run_ok();
    let v = out.json();
    check_build_json(&v);
    assert_outputs(&ws, &v, &["oci:kiln-out"]);
    let layout = Layout::open(ws.join("kiln-out"));
    assert_eq!(layout.tags(), vec!["latest".to_string()]);
    assert_eq!(layout.manifest("latest").0, s(&v, "digest"));
    oci_validate(&ws.join("kiln-out"), "latest");
}

/// Every key of `[image]` has a default (base = scratch), so a spec with only
/// `[[files]]` is complete. (The contract does not say `[image]` is required.)
#[test]
fn image_table_is_optional() {
    let ws = Workspace::new("scratch-no-image-table");
    ws.write("hello.txt", "hi\n");
    ws.spec("[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n");
    let v = build_json(&ws, &["--output", "oci:out"]);
    assert_eq!(v["manifests"][0]["platform"], "linux/amd64");
    assert_eq!(
        Layout::open(ws.join("out")).tags(),
        vec!["latest".to_string()]
    );
}

/// Sources resolve against the spec's directory; outputs against the cwd.
#[test]
fn sources_relative_to_spec_outputs_relative_to_cwd() {
    let ws = Workspace::new("scratch-relative");
    ws.write("proj/data/file.txt", "from proj\n");
    ws.write(
        "proj/kiln.toml",
        "[image]\n\n[[files]]\nsrc = \"data/file.txt\"\ndst = \"/file.txt\"\n",
    );
    let v = build_json(&ws, &["proj/kiln.toml", "--output", "oci:out"]);
    assert!(ws.join("out/index.json").is_file());
    assert!(!ws.join("proj/out").exists() && !ws.join("proj/kiln-out").exists());
    let layout = Layout::open(ws.join("out"));
    let layers = layout.layers("latest");
    assert_eq!(entry(&layers[0].1, "file.txt").content, b"from proj\n");
    assert_eq!(layout.manifest("latest").0, s(&v, "digest"));
}

/// --quiet: no progress or status lines at all; stdout is empty or just the
/// digest (like `docker build -q`).
#[test]
fn quiet_prints_no_progress() {
    let ws = Workspace::new("scratch-quiet");
    ws.write("file.txt", "quiet\n");
    ws.spec("[image]\n\n[[files]]\nsrc = \"file.txt\"\ndst = \"/file.txt\"\n");
    let v = build_json(&ws, &["--output", "oci:out"]);
    let q = ws
        .kiln()
        .args(["build", "--output", "oci:out-quiet", "--quiet"])
        .run_ok();
    assert!(q.stderr.trim().is_empty(), "--quiet stderr: {:?}", q.stderr);
    let qs = q.stdout.trim();
    assert!(
        qs.is_empty() || qs == s(&v, "digest"),
        "--quiet stdout: {:?}",
        q.stdout
    );
    assert_eq!(
        Layout::open(ws.join("out-quiet")).manifest("latest").0,
        s(&v, "digest")
    );
}

fn determinism_workspace(label: &str) -> Workspace {
    let ws = Workspace::new(label);
    ws.write("tree/b.txt", "b\n");
    ws.write("tree/a.txt", "a\n");
    ws.write("tree/A-upper", "upper\n");
    ws.write("tree/sub/z", "z\n");
    ws.write_mode("tree/sub/c", "#!/bin/sh\n", 0o755);
    ws.write("tree/sub-x", "sub-x\n");
    ws.mkdir("tree/empty", 0o755);
    ws.symlink("tree/lnk", "sub/c");
    ws.write(&format!("tree/{}", "l".repeat(120)), "long name\n");
    ws.write("one.conf", "one\n");
    ws.spec(
        r#"
[image]
tags = ["t"]

[[files]]
src = "tree/"
dst = "/opt/tree"

[[files]]
src = "one.conf"
dst = "/etc/one.conf"
owner = "1000:1000"
mode = "0600"

[config]
cmd = ["/opt/tree/sub/c"]
"#,
    );
    ws
}

/// Scramble what must not matter: mtimes, atimes, host owners.
fn scramble_host_metadata(ws: &Workspace) {
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    for rel in [
        "tree/b.txt",
        "tree/a.txt",
        "tree/sub/z",
        "tree/sub/c",
        "one.conf",
    ] {
        let f = fs::File::options().write(true).open(ws.join(rel)).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(when).set_accessed(when))
            .unwrap();
        std::os::unix::fs::chown(ws.join(rel), Some(4321), Some(4321)).unwrap();
    }
    std::os::unix::fs::chown(ws.join("tree/sub"), Some(4321), Some(4321)).unwrap();
}

#[test]
fn builds_are_reproducible() {
    let ws = determinism_workspace("scratch-determinism");
    let build = |out: &str, epoch: &str| -> serde_json::Value {
        let o = ws
            .kiln()
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["build", "--json", "--output"])
            .arg(format!("oci:{out}"))
            .args(["--output"])
            .arg(format!("docker-archive:{out}.tar"))
            .run_ok();
        let v = o.json();
        check_build_json(&v);
        v
    };
    // Each kiln() call gets its own fresh cache directory.
    let a = build("out-a", "1700000000");
    scramble_host_metadata(&ws);
    let b = build("out-b", "1700000000");
    assert_eq!(
        a["digest"], b["digest"],
        "same inputs, same epoch → same digest"
    );
    assert_eq!(a["layers"], b["layers"]);
    assert_eq!(
        sha256_hex(&fs::read(ws.join("out-a.tar")).unwrap()),
        sha256_hex(&fs::read(ws.join("out-b.tar")).unwrap()),
        "docker-archive outputs should be byte-identical too"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(ws.join("out-a.tar"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o644,
            "a docker-archive is an ordinary output file"
        );
    }

    let c = build("out-c", "1700000001");
    assert_ne!(
        a["digest"], c["digest"],
        "another SOURCE_DATE_EPOCH → another digest"
    );

    let la = Layout::open(ws.join("out-a"));
    let cfg = la.config("t");
    assert!(
        same_instant(s(&cfg, "created"), &rfc3339(1_700_000_000)),
        "created {}",
        cfg["created"]
    );
    assert!(same_instant(
        s(&cfg["config"]["Labels"], "org.opencontainers.image.created"),
        "2023-11-14T22:13:20Z"
    ));
    let lc = Layout::open(ws.join("out-c"));
    assert!(same_instant(
        s(&lc.config("t"), "created"),
        &rfc3339(1_700_000_001)
    ));
}

#[test]
fn layer_tar_entries_are_normalized() {
    let ws = determinism_workspace("scratch-normalized");
    scramble_host_metadata(&ws);
    let epoch: u64 = 1_700_000_000;
    ws.kiln()
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["build", "--output", "oci:out"])
        .run_ok();
    let layout = Layout::open(ws.join("out"));
    let layers = layout.layers("t");
    assert_eq!(layers.len(), 2);
    for (desc, entries) in &layers {
        assert!(!entries.is_empty(), "empty layer {desc}");
        assert_sorted(entries);
        for e in entries {
            assert!(
                !e.path.starts_with('/'),
                "absolute path in layer: {:?}",
                e.path
            );
            assert!(
                !e.clean_path().split('/').any(|c| c == ".."),
                "'..' in {:?}",
                e.path
            );
            assert_eq!(e.mtime, epoch, "mtime of {}", e.path);
            assert!(
                e.uname.is_empty() && e.gname.is_empty(),
                "uname/gname on {}: {:?}/{:?}",
                e.path,
                e.uname,
                e.gname
            );
            for (k, val) in &e.pax {
                assert!(
                    !k.starts_with("SCHILY.")
                        && !k.starts_with("LIBARCHIVE.")
                        && k != "atime"
                        && k != "ctime",
                    "host metadata leaked into PAX record {k}={val} on {}",
                    e.path
                );
                if k == "mtime" {
                    assert_eq!(
                        val.split('.').next().unwrap(),
                        epoch.to_string(),
                        "PAX mtime on {}",
                        e.path
                    );
                }
                if k == "uname" || k == "gname" {
                    assert!(val.is_empty(), "PAX {k}={val} on {}", e.path);
                }
            }
        }
    }

    // Layer 1: the directory tree, all 0:0 despite host owner 4321.
    let tree = &layers[0].1;
    for e in tree {
        assert_eq!((e.uid, e.gid), (0, 0), "owner of {}", e.path);
    }
    assert_eq!(entry(tree, "opt/tree/a.txt").content, b"a\n");
    assert_eq!(entry(tree, "opt/tree/a.txt").mode & 0o7777, 0o644);
    assert_eq!(entry(tree, "opt/tree/sub/c").mode & 0o7777, 0o755);
    assert_eq!(
        entry(tree, &format!("opt/tree/{}", "l".repeat(120))).content,
        b"long name\n"
    );
    let lnk = entry(tree, "opt/tree/lnk");
    assert_eq!(lnk.kind, tar::EntryType::Symlink);
    assert_eq!(lnk.link.as_deref(), Some("sub/c"));
    let empty = entry(tree, "opt/tree/empty");
    assert_eq!(empty.kind, tar::EntryType::Directory);
    assert_eq!(empty.mode & 0o7777, 0o755);
    assert_eq!(entry(tree, "opt/tree/sub").kind, tar::EntryType::Directory);

    // Layer 2: a single file with explicit mode and owner.
    let one = entry(&layers[1].1, "etc/one.conf");
    assert_eq!((one.uid, one.gid), (1000, 1000));
    assert_eq!(one.mode & 0o7777, 0o600);
    assert_eq!(one.content, b"one\n");
}

#[test]
fn zstd_compression() {
    let ws = full_workspace("scratch-zstd");
    let v = build_json(&ws, &["--compression", "zstd", "--output", "oci:out"]);
    let layout = Layout::open(ws.join("out"));
    let (digest, manifest) = layout.manifest("latest");
    assert_eq!(digest, s(&v, "digest"));
    // Pinned before the workspace split: the same inputs, the same image.
    assert_eq!(digest, PINNED_FULL_ZSTD, "the pinned digest moved");
    // And at the old gzip level, the old image.
    let v6 = build_json(&ws, &["--compression", "gzip:6", "--output", "oci:out6"]);
    assert_eq!(
        s(&v6, "digest"),
        PINNED_FULL_GZIP6,
        "the pinned digest moved"
    );
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(l["mediaType"], MT_LAYER_ZSTD);
        assert_eq!(v["layers"][i]["media_type"], MT_LAYER_ZSTD);
    }
    let config = layout.config("latest");
    let diff_ids = strs(&config["rootfs"]["diff_ids"]);
    let layers = layout.layers("latest"); // decompresses with the zstd crate
    for (i, (desc, _)) in layers.iter().enumerate() {
        let raw = decompress(&layout.blob(s(desc, "digest")), MT_LAYER_ZSTD);
        assert_eq!(
            digest_of(&raw),
            diff_ids[i],
            "diff_id is the uncompressed tar's digest"
        );
    }
    assert_eq!(entry(&layers[0].1, "app/hello.txt").content, b"hello\n");

    // zstd changes blobs, not the filesystem: same diff_ids as the gzip build.
    let g = build_json(&ws, &["--output", "oci:out-gzip"]);
    let gdiff: Vec<&serde_json::Value> = g["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["diff_id"])
        .collect();
    let zdiff: Vec<&serde_json::Value> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["diff_id"])
        .collect();
    assert_eq!(gdiff, zdiff);
    assert_ne!(g["digest"], v["digest"]);

    // skopeo reads it; umoci 0.4 cannot unpack zstd, so let skopeo recompress
    // to gzip and unpack that.
    let src = format!("oci:{}:latest", ws.join("out").display());
    assert_eq!(skopeo_inspect(&src)["Digest"], digest.as_str());
    let conv = ws.join("conv");
    skopeo_copy_with(
        &["--dest-compress", "--dest-compress-format", "gzip"],
        &src,
        &format!("oci:{}:latest", conv.display()),
    );
    let rootfs = umoci_unpack(&conv, "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello\n"
    );
    assert_mode_owner(&rootfs, "/etc/app/app.conf", 0o640, 1000, 1000);
}

#[test]
fn docker_archive_output() {
    let ws = full_workspace("scratch-docker-archive");
    let v = build_json(
        &ws,
        &["--output", "docker-archive:img.tar", "--output", "oci:out"],
    );
    assert_outputs(&ws, &v, &["docker-archive:img.tar", "oci:out"]);
    let archive = format!("docker-archive:{}", ws.join("img.tar").display());
    let sk = skopeo_inspect(&archive);
    assert_eq!(sk["Layers"].as_array().unwrap().len(), 2);
    assert!(strs(&sk["Env"]).contains(&"GREETING=hello world".to_string()));
    assert_eq!(sk["Architecture"], "amd64");
    assert_eq!(sk["Labels"]["com.example.team"], "ds");

    // Same image config (hence same diff_ids) as the OCI output.
    let oci_cfg = Layout::open(ws.join("out")).config("latest");
    let da_cfg = skopeo_inspect_config(&archive);
    assert_eq!(da_cfg["rootfs"]["diff_ids"], oci_cfg["rootfs"]["diff_ids"]);
    assert_eq!(da_cfg["config"], oci_cfg["config"]);

    // skopeo can convert it to an OCI layout that umoci unpacks.
    let copy = ws.join("copy");
    skopeo_copy(&archive, &format!("oci:{}:tag", copy.display()));
    let rootfs = umoci_unpack(&copy, "tag", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello\n"
    );
    assert_mode_owner(&rootfs, "/app/run.sh", 0o755, 0, 0);
    assert_mode_owner(&rootfs, "/etc/app/app.conf", 0o640, 1000, 1000);
}

#[test]
fn multi_platform_scratch_is_an_index() {
    let ws = Workspace::new("scratch-multiplatform");
    ws.write("hello.txt", "hello\n");
    ws.spec(
        r#"
[image]
tags = ["multi"]
platforms = ["linux/amd64", "linux/arm64"]

[[files]]
src = "hello.txt"
dst = "/hello.txt"
"#,
    );
    let v = build_json(&ws, &["--output", "oci:out"]);
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{v}");
    let mut plats: Vec<&str> = ms.iter().map(|m| s(m, "platform")).collect();
    plats.sort();
    assert_eq!(plats, ["linux/amd64", "linux/arm64"]);
    let index_digest = s(&v, "digest").to_string();
    assert!(
        ms.iter().all(|m| m["digest"] != index_digest.as_str()),
        "digest must be the index's"
    );

    // index.json: the tag names an image index holding both manifests.
    let layout = Layout::open(ws.join("out"));
    let d = layout.descriptor("multi");
    assert_eq!(d["mediaType"], MT_INDEX);
    assert_eq!(d["digest"], index_digest.as_str());
    let index = layout.json_blob(&index_digest);
    assert_eq!(index["schemaVersion"], 2);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let mut layer_sets = Vec::new();
    for e in entries {
        assert_eq!(e["mediaType"], MT_MANIFEST);
        let arch = s(&e["platform"], "architecture");
        assert_eq!(e["platform"]["os"], "linux");
        let m = ms
            .iter()
            .find(|m| m["platform"] == format!("linux/{arch}"))
            .expect("json lists it");
        assert_eq!(m["digest"], e["digest"]);
        let manifest = layout.json_blob(s(e, "digest"));
        let cfg = layout.json_blob(s(&manifest["config"], "digest"));
        assert_eq!(cfg["architecture"], arch);
        assert_eq!(cfg["os"], "linux");
        layer_sets.push(manifest["layers"].clone());
    }
    assert_eq!(
        layer_sets[0], layer_sets[1],
        "platform-independent files → same layer blobs"
    );

    let src = format!("oci:{}:multi", ws.join("out").display());
    let raw = skopeo_inspect_raw(&src);
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    for arch in ["amd64", "arm64"] {
        let r = skopeo(&[
            "--override-arch",
            arch,
            "--override-os",
            "linux",
            "inspect",
            &src,
        ])
        .ok()
        .json();
        assert_eq!(r["Architecture"], arch);
        // skopeo reports the digest of what the reference names: the index.
        assert_eq!(r["Digest"], index_digest.as_str());
    }
}

/// A real shell: busybox-static at /bin/busybox and /bin/sh -> busybox.
#[test]
fn busybox_shell_runs_in_chroot() {
    let busybox = require_tool("busybox");
    let ws = Workspace::new("scratch-busybox");
    busybox_rootfs(&ws);
    ws.spec(
        r#"
[image]
tags = ["sh"]

[[files]]
src = "rootfs/bin/"
dst = "/bin"

[config]
entrypoint = ["/bin/sh", "-c"]
cmd = ["echo ok from image config"]
"#,
    );
    build_json(&ws, &["--output", "oci:out"]);
    let bundle = ws.join("bundle");
    let rootfs = umoci_bundle(&ws.join("out"), "sh", &bundle);
    assert!(stat(&rootfs, "/bin/sh").file_type().is_symlink());
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let md = stat(&rootfs, "/bin/busybox");
    assert_eq!(md.mode() & 0o7777, 0o755);
    assert_eq!(md.len(), fs::metadata(&busybox).unwrap().len());

    let r = chroot_run(&rootfs, &["/bin/sh", "-c", "echo ok"]).ok();
    assert_eq!(r.stdout, "ok\n");
    // The entrypoint + cmd from the image config, as umoci laid them out.
    let args = strs(&bundle_config(&bundle)["process"]["args"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = chroot_run(&rootfs, &args).ok();
    assert_eq!(r.stdout, "ok from image config\n");
}

/// `mode` applies to regular files only (dirs stay 0755); `owner` applies to
/// every entry that comes from `src`, but not to the parent directories of
/// `dst` that the layer creates (they stay 0:0, or /etc would change owner).
#[test]
fn mode_and_owner_apply_to_src_entries_only() {
    let ws = Workspace::new("scratch-mode-owner");
    ws.write("data/a.txt", "a\n");
    ws.write_mode("data/sub/b", "b\n", 0o755);
    ws.write("c.conf", "c\n");
    ws.spec(
        r#"
[image]

[[files]]
src = "data/"
dst = "/srv/data"
mode = "0600"
owner = "1000:1000"

[[files]]
src = "c.conf"
dst = "/etc/app/c.conf"
owner = "1000:2000"
"#,
    );
    build_json(&ws, &["--output", "oci:out"]);
    let layers = Layout::open(ws.join("out")).layers("latest");
    let data = &layers[0].1;
    for e in data {
        let p = e.clean_path();
        if let Some(rest) = p.strip_prefix("srv/data/") {
            assert_eq!((e.uid, e.gid), (1000, 1000), "owner of {p}");
            match e.kind {
                tar::EntryType::Directory => assert_eq!(e.mode & 0o7777, 0o755, "dir {rest}"),
                _ => assert_eq!(e.mode & 0o7777, 0o600, "file {rest}"),
            }
        } else if p != "srv/data" {
            assert_eq!((e.uid, e.gid), (0, 0), "parent {p} of dst keeps root owner");
            assert_eq!(e.mode & 0o7777, 0o755, "parent {p}");
        }
    }
    entry(data, "srv/data/a.txt");
    entry(data, "srv/data/sub/b");
    let conf = &layers[1].1;
    let c = entry(conf, "etc/app/c.conf");
    assert_eq!((c.uid, c.gid), (1000, 2000));
    assert_eq!(c.mode & 0o7777, 0o644);
    for e in conf.iter().filter(|e| e.clean_path() != "etc/app/c.conf") {
        assert_eq!((e.uid, e.gid), (0, 0), "parent {} keeps root owner", e.path);
    }
}
