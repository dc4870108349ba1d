//! The examples in examples/ keep working.

use crate::common::*;
use std::fs;
use std::path::Path;

const PINNED_SCRATCH_EXAMPLE: &str =
    "sha256:f80b87f896a6a1ecc8e611dad9ef8af245d429f1199f0ed96c40f530e3aef781";

fn examples_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

#[test]
fn scratch_files_example_builds() {
    let ws = Workspace::new("example-scratch");
    let spec = examples_dir().join("scratch-files/kiln.toml");
    let v = build_json(&ws, &[spec.to_str().unwrap(), "--output", "oci:out"]);
    assert!(
        !examples_dir().join("scratch-files/kiln-out").exists(),
        "nothing written next to the example"
    );
    let layout = Layout::open(ws.join("out"));
    assert_eq!(layout.manifest("latest").0, s(&v, "digest"));
    // The same inputs, the same image (moved when gzip's default level became 1).
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            s(&v, "digest"),
            PINNED_SCRATCH_EXAMPLE,
            "the pinned digest moved"
        );
    }
    oci_validate(&ws.join("out"), "latest");
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_mode_owner(&rootfs, "/opt/hello/hello.sh", 0o755, 0, 0);
    assert_mode_owner(&rootfs, "/opt/hello/README.md", 0o644, 0, 0);
    let config = layout.config("latest");
    assert_eq!(env_map(&config["config"])["GREETING"], "hello");
    assert_eq!(strs(&config["config"]["Cmd"]), ["/opt/hello/hello.sh"]);
}

/// Push the scratch example, then build the from-registry example on it
/// (with the example's 127.0.0.1:5000 replaced by the test registry).
#[test]
fn from_registry_example_builds_on_the_scratch_example() {
    let reg = Registry::shared();
    let ws = Workspace::new("example-registry");
    copy_dir(examples_dir(), &ws.join("examples"));
    let prefix = unique_repo("examples");
    for spec in [
        "examples/scratch-files/kiln.toml",
        "examples/from-registry/kiln.toml",
    ] {
        rewrite(&ws.join(spec), "127.0.0.1:5000", &reg.host());
        rewrite(&ws.join(spec), "kiln-examples/", &format!("{prefix}/"));
    }
    let base = build_json(&ws, &["examples/scratch-files/kiln.toml", "--push"]);
    let app = build_json(&ws, &["examples/from-registry/kiln.toml", "--push"]);
    let r = reg.docker_ref(&format!("{prefix}/app"), "1.0");
    let sk = skopeo_inspect(&r);
    assert_eq!(sk["Digest"], app["digest"]);
    let layers = strs(&sk["Layers"]);
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0], s(&base["layers"][0], "digest"));
    assert_eq!(layers[1], s(&app["layers"][0], "digest"));
    let pulled = ws.join("pulled");
    skopeo_copy(&r, &format!("oci:{}:1.0", pulled.display()));
    let rootfs = umoci_unpack(&pulled, "1.0", &ws.join("bundle"));
    assert!(rootfs.join("opt/hello/hello.sh").is_file());
    assert_mode_owner(&rootfs, "/etc/app/app.conf", 0o640, 1000, 1000);
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/app/app.conf")).unwrap(),
        fs::read_to_string(examples_dir().join("from-registry/app.conf")).unwrap()
    );
}

/// The main example, built as `make example` builds it (the same spec, to an
/// OCI layout), then run: numpy and pandas import with the image's python3,
/// and the image's own command works. Needs the host's apt mirror and the
/// package index pip is configured with. With the run's warm cache (the
/// packages other tests fetched): the example is the subject, not the cache.
#[test]
fn python_data_example_builds_and_imports_numpy_and_pandas() {
    let ws = Workspace::new("example-python-data");
    let spec = examples_dir().join("python-data/kiln.toml");
    let v = ws
        .kiln()
        .env("KILN_CACHE", warm_cache())
        .args(["build", "--json"])
        .args([spec.to_str().unwrap(), "--output", "oci:kiln-out"])
        .run_ok()
        .json();
    check_build_json(&v);
    assert!(
        !examples_dir().join("python-data/kiln-out").exists()
            && !examples_dir().join("python-data/kiln.lock").exists(),
        "nothing written next to the example"
    );
    let installed = strs(&v["pip"][0]["installed"]);
    for name in ["numpy ", "pandas "] {
        assert!(
            installed.iter().any(|w| w.starts_with(name)),
            "{installed:?}"
        );
    }
    let out = ws.join("kiln-out");
    oci_validate(&out, "latest");
    let rootfs = umoci_unpack(&out, "latest", &ws.join("bundle"));
    chroot_run(&rootfs, &["python3", "-c", "import numpy, pandas"]).ok();
    let config = Layout::open(&out).config("latest");
    let cmd = strs(&config["config"]["Cmd"]);
    assert_eq!(cmd[0], "python3");
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let r = chroot_run(&rootfs, &args).ok();
    assert!(
        r.stdout.starts_with("numpy ") && r.stdout.contains("- pandas "),
        "{}",
        r.describe()
    );
}
