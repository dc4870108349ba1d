//! `[pip] compile`: the pycs of what pip installs, compiled by the image's
//! own Python (Debian's python3 from the archive the host's apt names) in
//! kiln's sandbox, are in the image, listed in RECORD, used by imports,
//! and the same bytes from a cold cache and another one.
//!
//! The host-platform tests build on the run's shared Debian python3 image
//! ([`debian_python3`]) instead of bootstrapping it in every build; the
//! foreign-architecture test bootstraps its own (it needs arm64 too).

use std::path::{Path, PathBuf};

use crate::common::*;

/// One warm cache for this file's builds: the run's shared one (the
/// Debian packages are fetched once). The cold-cache check uses its own.
fn shared_cache() -> PathBuf {
    warm_cache()
}

const SITE: &str = "/usr/local/lib/python3.11/dist-packages";

/// A workspace with a local wheel `demo 1.0` (a package of two modules,
/// with a set constant: marshalled in hash order) and a spec installing it
/// on Debian's python3 (the shared image); `extra` goes into `[pip]`.
fn workspace(label: &str, extra: &str) -> Workspace {
    let base = format!("base = \"{}\"\n", debian_python3().reference());
    workspace_on(label, &base, extra)
}

/// [`workspace`] with IMAGE_AND_APT (lines of `[image]`, then possibly an
/// `[apt]` section) giving the Debian python3.
fn workspace_on(label: &str, image_and_apt: &str, extra: &str) -> Workspace {
    let ws = Workspace::new(label);
    let di = "demo-1.0.dist-info";
    let wheel = wheel_zip(&[
        (
            "demo/__init__.py".into(),
            b"from demo.util import kind\n\nVERSION = '1.0'\n".to_vec(),
            0o644,
        ),
        (
            "demo/util.py".into(),
            b"def kind(x):\n    if x in {'alpha', 'beta', 'gamma', 'delta'}:\n        return 'greek'\n    return frozenset(('x', 'y', 'z')).__contains__(x)\n".to_vec(),
            0o644,
        ),
        ("demo/data.txt".into(), b"not python\n".to_vec(), 0o644),
        // Python 2: not compiled, and no failure of the build.
        ("demo/legacy.py".into(), b"print \"old\"\n".to_vec(), 0o644),
        (
            format!("{di}/METADATA"),
            b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n".to_vec(),
            0o644,
        ),
        (
            format!("{di}/WHEEL"),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ]);
    ws.write("wheels/demo-1.0-py3-none-any.whl", wheel);
    ws.spec(&format!(
        r#"
[image]
tags = ["py"]
{image_and_apt}
[pip]
packages = ["demo==1.0"]
no-index = true
isolated = true
find-links = ["wheels"]
{extra}
"#
    ));
    ws
}

fn build(ws: &Workspace, cache: &Path, out: &str) -> serde_json::Value {
    run(ws
        .kiln()
        .env("KILN_CACHE", cache)
        .args(["build", "--json", "-o"])
        .arg(format!("oci:{}", ws.join(out).display())))
    .ok()
    .json()
}

/// The pyc of `source` (an absolute image path).
fn pyc(source: &str) -> String {
    let (dir, file) = source.rsplit_once('/').unwrap();
    format!(
        "{dir}/__pycache__/{}.cpython-311.pyc",
        file.trim_end_matches(".py")
    )
}

/// `python3 -B -v -c 'import MODULE'` in the image: its stderr (imports
/// say `<pyc> matches <source>` when the pyc is used).
fn import_verbose(rootfs: &Path, module: &str) -> String {
    chroot_run(
        rootfs,
        &["python3", "-B", "-v", "-c", &format!("import {module}")],
    )
    .ok()
    .stderr
}

#[test]
fn pip_packages_get_unchecked_hash_pycs_reproducibly() {
    let ws = workspace("bytecode", "");
    let first = build(&ws, &shared_cache(), "out");
    assert_eq!(first["pip"][0]["python"], "/usr/bin/python3.11", "{first}");
    assert_eq!(first["pip"][0]["bytecode"]["compiled"], 2, "{first}");
    assert!(first["pip"][0]["bytecode"].get("skipped").is_none());
    assert_eq!(first["pip"][0]["bytecode"]["failed"], 1, "{first}");
    let digest = first["digest"].as_str().unwrap().to_string();
    let memos = std::fs::read_dir(shared_cache().join("pip-bytecode-v1")).unwrap();
    assert!(memos.count() > 0, "the bytecode is remembered");

    let rootfs = umoci_unpack(&ws.join("out"), "py", &ws.join("bundle"));
    for source in [
        format!("{SITE}/demo/__init__.py"),
        format!("{SITE}/demo/util.py"),
    ] {
        let path = pyc(&source);
        let bytes = std::fs::read(rootfs.join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        // PEP 552 flags: hash-based (bit 0), not checked against the source (bit 1 clear).
        assert_eq!(&bytes[4..8], &[1, 0, 0, 0], "{path}");
    }
    for not_compiled in ["data", "legacy"] {
        let path = format!("{SITE}/demo/__pycache__/{not_compiled}.cpython-311.pyc");
        assert!(!exists_in(&rootfs, &path), "{path}");
    }
    let record = std::fs::read_to_string(
        rootfs.join(format!("{SITE}/demo-1.0.dist-info/RECORD").trim_start_matches('/')),
    )
    .unwrap();
    for row in [
        "demo/__pycache__/__init__.cpython-311.pyc,,",
        "demo/__pycache__/util.cpython-311.pyc,,",
        "demo/util.py,sha256=",
    ] {
        assert!(record.contains(row), "RECORD lacks {row}:\n{record}");
    }
    assert!(!record.contains("legacy.cpython"), "{record}");
    // The pycs are what the interpreter loads (-B: it writes none).
    let verbose = import_verbose(&rootfs, "demo");
    for m in ["__init__", "util"] {
        let line = format!(
            "{} matches {SITE}/demo/{m}.py",
            pyc(&format!("{SITE}/demo/{m}.py"))
        );
        assert!(verbose.contains(&line), "no `{line}` in:\n{verbose}");
    }
    let check = chroot_run(
        &rootfs,
        &[
            "python3",
            "-B",
            "-c",
            "import demo; print(demo.kind('beta'))",
        ],
    )
    .ok();
    assert_eq!(check.stdout.trim(), "greek");

    // The same image from a cold cache elsewhere (the compiler ran again)...
    let other = unique_dir("bytecode-other-cache");
    let second = build(&ws, &other, "out2");
    assert_eq!(
        second["digest"],
        digest.as_str(),
        "a cold cache gives other bytes"
    );
    assert_eq!(second["pip"][0]["bytecode"]["compiled"], 2);
    // (Compiled as the wheel arrived, over the tree started at resolution.)
    assert_eq!(second["pip"][0]["bytecode"]["ahead"], 2, "{second}");
    // ...and on one core, from a cold cache of its own (one compile batch
    // and one layer slot at a time).
    let mut c = ws.kiln();
    on_one_core(&mut c)
        .env("KILN_CACHE", unique_dir("bytecode-one-core-cache"))
        .args(["build", "--json", "-o"])
        .arg(format!("oci:{}", ws.join("out-one-core").display()));
    let one_core = run(&mut c).ok().json();
    assert_eq!(one_core["digest"], digest.as_str(), "{one_core}");
    // ...and from that cache again: the pins it kept hold, so the stages
    // are taken whole (nothing resolved, unpacked or compiled)...
    let third = build(&ws, &other, "out3");
    assert_eq!(third["digest"], digest.as_str());
    assert_eq!(third["stages_reused"], 1, "{third}");
    assert_eq!(third["pip"][0]["resolution"], "kept", "{third}");
    // ...and with those pins gone, the stage runs again and its bytecode
    // comes from the memo (the compiler is not run).
    std::fs::remove_dir_all(other.join("kept-pins-v1")).unwrap();
    let fourth = build(&ws, &other, "out4");
    assert_eq!(fourth["digest"], digest.as_str());
    assert_eq!(fourth["stages_reused"], 0, "{fourth}");
    assert_eq!(fourth["pip"][0]["bytecode"]["compiled"], 2);
    assert_eq!(fourth["pip"][0]["bytecode"]["cached"], 2, "{fourth}");
    assert!(
        fourth["pip"][0]["bytecode"].get("ahead").is_none(),
        "{fourth}"
    );
    let _ = std::fs::remove_dir_all(other);
}

/// A stage that gains a wheel compiles that wheel alone (the other's
/// pycs come from the cache), and the image is the one a cold cache gives.
#[test]
fn a_new_wheel_compiles_alone_and_gives_the_cold_image() {
    let ws = workspace("bytecode-units", "");
    let cache = unique_dir("bytecode-units-cache");
    let first = build(&ws, &cache, "out1");
    assert_eq!(first["pip"][0]["bytecode"]["compiled"], 2, "{first}");
    assert!(
        first["pip"][0]["bytecode"].get("cached").is_none(),
        "{first}"
    );
    // The image below the stage, written out once for the interpreter.
    let trees = || -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut t: Vec<_> = std::fs::read_dir(cache.join("trees-v1"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().unwrap().ino())
            })
            .collect();
        t.sort();
        t
    };
    let tree = trees();
    assert_eq!(tree.len(), 1, "{tree:?}");
    assert!(cache
        .join("trees-v1")
        .join(&tree[0].0)
        .join("usr/bin/python3.11")
        .exists());

    let di = "other-1.0.dist-info";
    ws.write(
        "wheels/other-1.0-py3-none-any.whl",
        wheel_zip(&[
            (
                "other/__init__.py".into(),
                b"NAME = 'other'\n".to_vec(),
                0o644,
            ),
            (
                "other/more.py".into(),
                b"def twice(x):\n    return 2 * x\n".to_vec(),
                0o644,
            ),
            (
                format!("{di}/METADATA"),
                b"Metadata-Version: 2.1\nName: other\nVersion: 1.0\n".to_vec(),
                0o644,
            ),
            (
                format!("{di}/WHEEL"),
                b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
                0o644,
            ),
        ]),
    );
    let spec = std::fs::read_to_string(ws.join("kiln.toml")).unwrap();
    let both = spec.replace(
        r#"packages = ["demo==1.0"]"#,
        r#"packages = ["demo==1.0", "other==1.0"]"#,
    );
    assert_ne!(spec, both);
    ws.spec(&both);
    let second = build(&ws, &cache, "out2");
    let bytecode = &second["pip"][0]["bytecode"];
    assert_eq!(bytecode["compiled"], 4, "{second}");
    assert_eq!(
        bytecode["cached"], 2,
        "demo's pycs come from the cache: {second}"
    );
    assert_eq!(
        bytecode["ahead"], 2,
        "other's, compiled as it arrived: {second}"
    );
    assert_eq!(trees(), tree, "the same tree, not written again");
    // The bytecode layer is made again from parts: demo's as the first
    // build compressed it, other's as compressed once compiled, ahead of
    // the layer (the wheels' own layers are a layer each here: none is
    // cut into parts).
    assert_eq!(second["summary"]["layer_parts_built_ahead"], 1, "{second}");
    assert_eq!(second["summary"]["layer_parts_copied"], 2, "{second}");
    let rootfs = umoci_unpack(&ws.join("out2"), "py", &ws.join("bundle2"));
    assert!(exists_in(&rootfs, &pyc(&format!("{SITE}/other/more.py"))));
    assert!(exists_in(&rootfs, &pyc(&format!("{SITE}/demo/util.py"))));

    let cold = unique_dir("bytecode-units-cold");
    let third = build(&ws, &cold, "out3");
    assert!(
        third["pip"][0]["bytecode"].get("cached").is_none(),
        "{third}"
    );
    assert_eq!(
        third["digest"], second["digest"],
        "a cold cache gives other bytes"
    );
    let _ = std::fs::remove_dir_all(cache);
    let _ = std::fs::remove_dir_all(cold);
}

#[test]
fn compile_false_gives_no_pycs_and_compile_stdlib_compiles_the_rest() {
    let ws = workspace("bytecode-off", "compile = false");
    let r = build(&ws, &shared_cache(), "out");
    assert!(r["pip"][0].get("bytecode").is_none(), "{r}");
    let rootfs = umoci_unpack(&ws.join("out"), "py", &ws.join("bundle"));
    assert!(exists_in(&rootfs, &format!("{SITE}/demo/util.py")));
    assert!(!exists_in(&rootfs, &format!("{SITE}/demo/__pycache__")));
    let record = std::fs::read_to_string(
        rootfs.join(format!("{SITE}/demo-1.0.dist-info/RECORD").trim_start_matches('/')),
    )
    .unwrap();
    assert!(!record.contains(".pyc"), "{record}");
    // Debian's packages ship no pycs: the stdlib is compiled on each import.
    assert!(!exists_in(
        &rootfs,
        "/usr/lib/python3.11/__pycache__/os.cpython-311.pyc"
    ));

    let ws = workspace("bytecode-stdlib", "compile-stdlib = true");
    let r = build(&ws, &shared_cache(), "out");
    let compiled = r["pip"][0]["bytecode"]["compiled"].as_u64().unwrap();
    assert!(compiled > 100, "{r}");
    let rootfs = umoci_unpack(&ws.join("out"), "py", &ws.join("bundle"));
    let os = "/usr/lib/python3.11/__pycache__/os.cpython-311.pyc";
    assert!(exists_in(&rootfs, os));
    let bytes = std::fs::read(rootfs.join(os.trim_start_matches('/'))).unwrap();
    assert_eq!(&bytes[4..8], &[1, 0, 0, 0]);
    let verbose = import_verbose(&rootfs, "json");
    assert!(
        verbose.contains("/usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc matches /usr/lib/python3.11/json/decoder.py"),
        "{verbose}"
    );
}

/// For another architecture the host's `python3.11` (the image's minor
/// version) compiles: the same bytes as the image's own interpreter. With
/// none on PATH, the build goes on without them and says why.
#[test]
fn foreign_architecture_uses_the_hosts_python_or_says_why() {
    let ws = workspace_on(
        "bytecode-arm64",
        "platforms = [\"linux/amd64\", \"linux/arm64\"]\n[apt]\nbootstrap = \"minbase\"\npackages = [\"python3\"]\n",
        "",
    );
    let layer = |r: &serde_json::Value, platform: &str| {
        let p = r["summary"]["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["platform"] == platform)
            .unwrap_or_else(|| panic!("no {platform} in {r}"))
            .clone();
        p["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| {
                l["created_by"]
                    .as_str()
                    .unwrap()
                    .starts_with("kiln bytecode")
            })
            .map(|l| l["digest"].as_str().unwrap().to_string())
    };
    let build_with_path = |path: &Path, out: &str| {
        run(ws
            .kiln()
            .env("KILN_CACHE", shared_cache())
            .env("PATH", path)
            .args(["build", "--json", "-o"])
            .arg(format!("oci:{}", ws.join(out).display())))
        .ok()
        .json()
    };

    let host_python = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("python3.11"))
        .find(|p| p.is_file());
    let mut host_bin = None;
    if let Some(python) = host_python {
        let bin = ws.join("host-bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(&python, bin.join("python3.11")).unwrap();
        host_bin = Some(bin.clone());
        let r = build_with_path(&bin, "out");
        for i in 0..2 {
            assert_eq!(r["pip"][i]["bytecode"]["compiled"], 2, "{r}");
        }
        let amd64 = layer(&r, "linux/amd64").expect("an amd64 bytecode layer");
        assert_eq!(layer(&r, "linux/arm64"), Some(amd64));
    }

    let empty = ws.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let r = build_with_path(&empty, "out2");
    let arm64 = r["pip"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["bytecode"]["compiled"] == 0)
        .unwrap_or_else(|| panic!("no skipped platform in {r}"));
    let why = arm64["bytecode"]["skipped"].as_str().unwrap();
    assert!(why.contains("no python3.11 on the host's PATH"), "{why}");
    assert!(layer(&r, "linux/arm64").is_none());
    assert!(layer(&r, "linux/amd64").is_some());
    let warnings = strs(&r["summary"]["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("[pip] compile for linux/arm64: nothing compiled")),
        "{warnings:?}"
    );

    // Locked, the stages' memo names the host's Python: one written with
    // it on PATH is not taken without it, and back.
    if let Some(bin) = host_bin {
        run(ws.kiln().env("KILN_CACHE", shared_cache()).arg("lock")).ok();
        let with = build_with_path(&bin, "out3");
        assert_eq!(with["lock"], "used", "{with}");
        let arm64 = layer(&with, "linux/arm64").expect("an arm64 bytecode layer");
        let without = build_with_path(&empty, "out4");
        assert!(layer(&without, "linux/arm64").is_none(), "{without}");
        assert!(layer(&without, "linux/amd64").is_some());
        let again = build_with_path(&bin, "out5");
        assert_eq!(layer(&again, "linux/arm64"), Some(arm64));
    }
}
