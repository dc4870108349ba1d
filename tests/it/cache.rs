//! The blob cache: location (--cache, KILN_CACHE, ~/.cache/kiln), content
//! addressing, recovery from corruption, and concurrent use.

use crate::common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;

/// Push a two-layer base and write a derived spec in a new workspace.
fn registry_base_project(label: &str) -> (Workspace, Value) {
    let reg = Registry::shared();
    let base_repo = unique_repo(label);
    // Enough bytes that a corrupted copy cannot pass unnoticed by accident.
    let big: String = (0..20_000).map(|i| format!("{i:08}\n")).collect();
    let base = push_scratch_image(
        reg,
        &base_repo,
        "v1",
        &[("big.txt", &big), ("small.txt", "small\n")],
    );
    let ws = Workspace::new(label);
    ws.write("app.txt", "app\n");
    ws.spec(&format!(
        "[image]\nbase = \"{}:v1\"\n\n[[files]]\nsrc = \"app.txt\"\ndst = \"/app.txt\"\n",
        reg.repo(&base_repo)
    ));
    (ws, base)
}

fn cached_blob(cache: &Path, digest: &str) -> std::path::PathBuf {
    cache
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn base_layer_digests(base: &Value) -> Vec<String> {
    base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(l, "digest").to_string())
        .collect()
}

#[test]
fn corrupted_cache_blob_is_detected_and_refetched() {
    let (ws, base) = registry_base_project("cache-corrupt");
    let cache = unique_dir("cache-corrupt");
    let build = |out: &str| -> Value {
        ws.kiln()
            .env("KILN_CACHE", &cache)
            .args(["build", "--json", "--output"])
            .arg(format!("oci:{out}"))
            .run_ok()
            .json()
    };
    let first = build("out1");
    assert_cache_consistent(&cache);
    let layers = base_layer_digests(&base);
    let (big, small) = (
        cached_blob(&cache, &layers[0]),
        cached_blob(&cache, &layers[1]),
    );
    assert!(
        big.is_file() && small.is_file(),
        "base layers are cached under blobs/sha256/<hex>"
    );

    // Same size, different bytes (a size check alone would not notice) ...
    let len = fs::metadata(&big).unwrap().len() as usize;
    fs::write(&big, vec![b'X'; len]).unwrap();
    // ... and a truncated file.
    fs::write(&small, b"").unwrap();

    let second = build("out2");
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["layers"], first["layers"]);
    assert_cache_consistent(&cache);
    assert_eq!(
        digest_of(&fs::read(&big).unwrap()),
        layers[0],
        "cache entry repaired"
    );
    assert_eq!(
        digest_of(&fs::read(&small).unwrap()),
        layers[1],
        "cache entry repaired"
    );
    // The output holds the right bytes (Layout::blob checks every digest).
    let layout = Layout::open(ws.join("out2"));
    let ls = layout.layers("latest");
    assert_eq!(ls.len(), 3);
    assert_eq!(entry(&ls[1].1, "base/small.txt").content, b"small\n");
}

#[test]
fn cache_flag_beats_env_and_is_created() {
    let (ws, base) = registry_base_project("cache-flag");
    let flag_cache = unique_path("flag-cache");
    let env_cache = unique_path("env-cache");
    ws.kiln()
        .env("KILN_CACHE", &env_cache)
        .arg("build")
        .arg("--cache")
        .arg(&flag_cache)
        .args(["--output", "oci:out"])
        .run_ok();
    for d in base_layer_digests(&base) {
        assert!(
            cached_blob(&flag_cache, &d).is_file(),
            "--cache DIR is used (and created)"
        );
        assert!(
            !cached_blob(&env_cache, &d).exists(),
            "KILN_CACHE is ignored when --cache is given"
        );
    }
    assert_cache_consistent(&flag_cache);
}

#[test]
fn default_cache_is_under_home() {
    let (ws, base) = registry_base_project("cache-home");
    let home = unique_dir("home");
    ws.kiln()
        .env_remove("KILN_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", &home)
        .args(["build", "--output", "oci:out"])
        .run_ok();
    let cache = home.join(".cache/kiln");
    for d in base_layer_digests(&base) {
        assert!(cached_blob(&cache, &d).is_file(), "~/.cache/kiln holds {d}");
    }
    assert_cache_consistent(&cache);
}

/// Several builds sharing one cache at the same time all succeed and agree,
/// and the cache stays consistent.
#[test]
fn concurrent_builds_share_a_cache() {
    let (ws, _) = registry_base_project("cache-concurrent");
    let cache = unique_dir("cache-concurrent");
    let digests: Vec<Value> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let ws = &ws;
                let cache = &cache;
                sc.spawn(move || {
                    ws.kiln()
                        .env("KILN_CACHE", cache)
                        .args(["build", "--json", "--output"])
                        .arg(format!("oci:out-{i}"))
                        .run_ok()
                        .json()["digest"]
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_cache_consistent(&cache);
}

/// A pure-Python wheel `name-version` with a module of some size.
fn sized_wheel(name: &str, version: &str) -> (String, Vec<u8>) {
    salted_wheel(name, version, "")
}

/// [`sized_wheel`] whose module's values also carry `salt`: the same
/// wheel name with other bytes.
fn salted_wheel(name: &str, version: &str, salt: &str) -> (String, Vec<u8>) {
    let di = format!("{name}-{version}.dist-info");
    let body: String = (0..2_000)
        .map(|i| {
            format!(
                "X{i} = {:?}\n",
                format!("{name}-{version}{salt}-{}", i * 7919 % 1013)
            )
        })
        .collect();
    let members = vec![
        (format!("{name}/__init__.py"), body.into_bytes(), 0o644),
        (
            format!("{di}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").into_bytes(),
            0o644,
        ),
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

/// Beyond 24 wheels, small wheels share layers, each cut into a part per
/// wheel: a build compresses each part as its wheel comes in; a wheel
/// bumped later rebuilds one shared layer by copying the other wheels'
/// compressed parts from the cache, and that image is the one a cold
/// cache builds, byte for byte, and unpacks whole.
#[test]
fn a_bumped_wheel_compresses_only_its_part_of_a_shared_layer() {
    let ws = Workspace::new("layer-parts");
    python_base(&ws);
    let names: Vec<String> = (0..30).map(|i| format!("pkg{i:02}")).collect();
    let spec = |bumped: &str| {
        let pins: Vec<String> = names
            .iter()
            .map(|n| {
                let v = if n == bumped { "1.1" } else { "1.0" };
                format!("\"{n}=={v}\"")
            })
            .collect();
        format!(
            "[image]\nbase = \"oci:py:v1\"\n\n[pip]\ncompile = false\nno-index = true\nfind-links = [\"wheels\"]\npackages = [{}]\n",
            pins.join(", ")
        )
    };
    for n in &names {
        for v in ["1.0", "1.1"] {
            let (file, bytes) = sized_wheel(n, v);
            ws.write(&format!("wheels/{file}"), bytes);
        }
    }
    let warm = ws.join("warm-cache");
    let build = |cache: &Path, out: &str| -> Value {
        let v = ws
            .kiln()
            .env("KILN_CACHE", cache)
            .args(["build", "--json", "-o"])
            .arg(format!("oci:{}", ws.join(out).display()))
            .run_ok()
            .json();
        check_build_json(&v);
        v
    };
    ws.spec(&spec(""));
    let first = build(&warm, "first");
    assert_eq!(
        first["summary"]["layer_parts_built_ahead"], 30,
        "each small wheel's part, as it came in: {first}"
    );
    assert_eq!(first["summary"]["layer_parts_copied"], 30, "{first}");
    ws.spec(&spec("pkg07"));
    let bumped = build(&warm, "bumped");
    // One shared layer is built again: pkg07's new part is compressed as
    // it comes in, the parts of the wheels beside it are copied.
    assert_eq!(bumped["summary"]["layers_built"], 1, "{bumped}");
    assert_eq!(bumped["summary"]["layer_parts_built_ahead"], 1, "{bumped}");
    let copied = bumped["summary"]["layer_parts_copied"].as_u64().unwrap();
    assert!((2..30).contains(&copied), "{bumped}");
    let parts = fs::read_dir(warm.join("layer-parts-v1")).unwrap().count();
    assert!(parts >= 31, "{parts} part memos");
    // A cold cache gives the same bytes (its parts all compressed as the
    // wheels came in), and so does a build without any memo.
    let cold = build(&ws.join("cold-cache"), "cold");
    assert_eq!(
        cold["summary"]["layer_parts_copied"], 30,
        "the parts built ahead"
    );
    assert_eq!(cold["digest"], bumped["digest"]);
    // So does a cold build on one core: one layer slot and one thread in
    // each pool, where this machine has two.
    let one_core = {
        let mut c = ws.kiln();
        on_one_core(&mut c)
            .env("KILN_CACHE", ws.join("one-core-cache"))
            .args(["build", "--json", "-o"])
            .arg(format!("oci:{}", ws.join("one-core").display()));
        c.run_ok().json()
    };
    assert_eq!(one_core["digest"], bumped["digest"], "{one_core}");
    let unparted = ws
        .kiln()
        .env("KILN_CACHE", ws.join("warm-cache"))
        .args(["build", "--json", "--check-reproducible", "-o"])
        .arg(format!("oci:{}", ws.join("again").display()))
        .run_ok()
        .json();
    assert_eq!(unparted["digest"], bumped["digest"], "{unparted}");
    let rootfs = umoci_unpack(&ws.join("bumped"), "latest", &ws.join("bundle"));
    let site = rootfs.join("usr/lib/python3.11/site-packages");
    for n in &names {
        let v = if n == "pkg07" { "1.1" } else { "1.0" };
        let init = fs::read_to_string(site.join(n).join("__init__.py")).unwrap();
        assert!(init.contains(&format!("{n}-{v}-")), "{n}");
        assert!(site.join(format!("{n}-{v}.dist-info/RECORD")).is_file());
    }
}

/// A local wheelhouse is taken into the cache by hard link, not copied
/// (the cache and the wheelhouse share a file system here); a wheel
/// rebuilt in place afterwards is its new bytes in the next build (the
/// resolution the build before kept is not taken), and kiln never writes
/// the wheelhouse's file.
#[test]
fn a_wheelhouse_is_linked_into_the_cache_and_a_wheel_rebuilt_in_place_is_seen() {
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::new("wheelhouse-link");
    python_base(&ws);
    ws.spec("[image]\nbase = \"oci:py:v1\"\n\n[pip]\ncompile = false\nno-index = true\nfind-links = [\"wheels\"]\npackages = [\"pkg00==1.0\"]\n");
    let (name, first) = sized_wheel("pkg00", "1.0");
    ws.write(&format!("wheels/{name}"), first.clone());
    let file = ws.join("wheels").join(name);
    let cache = ws.join("cache");
    let build = |out: &str| -> Value {
        ws.kiln()
            .env("KILN_CACHE", &cache)
            .args(["build", "--json", "-o"])
            .arg(format!("oci:{}", ws.join(out).display()))
            .run_ok()
            .json()
    };
    let one = build("one");
    assert_eq!(one["pip"][0]["resolution"], "resolved", "{one}");
    // Again: the resolution is kept (the listing's files have not moved).
    let again = build("again");
    assert_eq!(again["pip"][0]["resolution"], "kept", "{again}");
    assert_eq!(again["digest"], one["digest"]);
    // With the resolution, the first build's pins and stages are taken
    // whole (see the stages memo of an unlocked build).
    assert_eq!(
        (
            one["stages_reused"].as_u64(),
            again["stages_reused"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let wheel = fs::metadata(&file).unwrap();
    let blob = fs::metadata(cached_blob(&cache, &digest_of(&first))).unwrap();
    assert_eq!((blob.dev(), blob.ino()), (wheel.dev(), wheel.ino()));
    assert_eq!(fs::read_dir(cache.join("tmp")).unwrap().count(), 0);

    // Rebuilt in place: the same inode, other bytes (as `zipfile` writes).
    let (_, rebuilt) = salted_wheel("pkg00", "1.0", "rebuilt");
    fs::write(&file, &rebuilt).unwrap();
    assert_eq!(fs::metadata(&file).unwrap().ino(), wheel.ino());
    let two = build("two");
    assert_eq!(two["pip"][0]["resolution"], "resolved", "{two}");
    assert_eq!(two["stages_reused"], 0, "{two}");
    assert_ne!(one["digest"], two["digest"], "{two}");
    assert_eq!(fs::read(&file).unwrap(), rebuilt, "kiln never writes it");
    let rootfs = umoci_unpack(&ws.join("two"), "latest", &ws.join("bundle"));
    let init =
        fs::read_to_string(rootfs.join("usr/lib/python3.11/site-packages/pkg00/__init__.py"))
            .unwrap();
    assert!(
        init.contains("pkg00-1.0rebuilt-"),
        "the rebuilt wheel's module"
    );
}
