//! `[pip]` against the real index (found like kiln finds it: pip config, PIP_* env, then the
//! crate default), for a fake Debian bookworm rootfs; the result is imported by the host's Python 3.11.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use kiln_core::Platform;
use kiln_fs::layer::{Entry, EntryKind};
use kiln_fs::Rootfs;
use kiln_pip::{layer_groups, plan, PipSection};
use kiln_store::Cache;
use kiln_store::Http;

fn bookworm() -> Rootfs {
    let mut fs = Rootfs::default();
    fs.insert_file("/usr/bin/python3.11", b"\x7fELF");
    fs.insert_file("/usr/lib/python3.11/os.py", b"");
    fs.insert_file("/etc/debian_version", b"12.5\n");
    fs.insert_file(
        "/var/lib/dpkg/status",
        b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u4\n\nPackage: python3.11-minimal\nStatus: install ok installed\nVersion: 3.11.2-6+deb12u1\n",
    );
    fs
}

/// Write entries under `root` the way a container runtime would unpack the layer.
fn materialise(root: &Path, entries: &[Entry]) {
    for e in entries {
        let p = root.join(&e.path);
        match &e.kind {
            EntryKind::Dir => std::fs::create_dir_all(&p).unwrap(),
            EntryKind::Data(_) | EntryKind::Spooled(_) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, e.kind.file_bytes().unwrap().unwrap()).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
            }
            EntryKind::File { src, .. } => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::copy(src, &p).unwrap();
            }
            EntryKind::Symlink { target } => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let _ = std::fs::remove_file(&p);
                std::os::unix::fs::symlink(target, &p).unwrap();
            }
        }
    }
}

fn host_python() -> &'static str {
    let py = "/usr/bin/python3.11";
    if !Path::new(py).exists() {
        let st = Command::new("apt-get")
            .args(["install", "-y", "python3"])
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "{py} is missing and `apt-get install -y python3` failed"
        );
    }
    assert!(
        Path::new(py).exists(),
        "this test needs Debian's {py} on the host"
    );
    py
}

#[test]
fn numpy_pandas_requests_scipy_import_on_the_host_python() {
    let py = host_python();
    let cache =
        Cache::open(Path::new(env!("CARGO_TARGET_TMPDIR")).join("pip-network-cache")).unwrap();
    let section = PipSection {
        packages: ["numpy", "pandas", "requests", "scipy"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let p = match plan(&section, Path::new("."), &bookworm(), &Platform::linux("amd64"), &Http::new().unwrap(), &cache) {
        Ok(p) => p,
        Err(e) => panic!(
            "[pip] could not resolve against the configured index (pip.conf / PIP_INDEX_URL / the default): {e}\n\
             this test needs a reachable package index"
        ),
    };
    let names: Vec<&str> = p.wheels.iter().map(|w| w.name.as_str()).collect();
    for want in [
        "numpy",
        "pandas",
        "requests",
        "scipy",
        "charset-normalizer",
        "urllib3",
        "idna",
        "certifi",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for w in &p.wheels {
        assert!(
            w.filename.ends_with("-none-any.whl")
                || w.filename.contains("cp311")
                || w.filename.contains("abi3"),
            "{} is not for CPython 3.11",
            w.filename
        );
    }
    let groups = layer_groups(&p, &cache).unwrap();
    assert!(
        groups.len() >= 2,
        "big wheels get their own layers: {:?}",
        groups.iter().map(|g| &g.label).collect::<Vec<_>>()
    );
    let root = tempfile::tempdir().unwrap();
    for g in &groups {
        materialise(root.path(), &g.entries);
    }
    let site = root.path().join("usr/local/lib/python3.11/dist-packages");
    let out = Command::new(py)
        .args(["-S", "-s", "-c", "import numpy, pandas, requests, scipy, scipy.linalg; print(numpy.__file__); print(pandas.DataFrame({'a': [1, 2]}).sum().iloc[0])"])
        .env_clear()
        .env("PYTHONPATH", &site)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "import failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&site.to_string_lossy().to_string()),
        "numpy came from elsewhere: {stdout}"
    );
    assert!(stdout.lines().nth(1) == Some("3"), "{stdout}");

    let script = root.path().join("usr/local/bin/normalizer");
    let head = std::fs::read_to_string(&script).unwrap();
    assert!(head.starts_with("#!/usr/bin/python3.11\n"), "{head}");
    let out = Command::new(&script)
        .arg("--version")
        .env_clear()
        .env("PYTHONPATH", &site)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && all.contains("Charset-Normalizer"),
        "normalizer --version: {all}"
    );
}
