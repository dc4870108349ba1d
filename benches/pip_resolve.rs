//! `[pip]` plan + layer_groups for a data-science set, cold cache then warm; prints seconds.
//! Needs the package index (found like kiln finds it). Used by benches/pip_compare.sh.

use std::path::Path;
use std::time::Instant;

use kiln_core::Platform;
use kiln_fs::Rootfs;
use kiln_pip::{layer_groups, plan, PipSection};
use kiln_store::Cache;
use kiln_store::Http;

const PACKAGES: &[&str] = &[
    "numpy",
    "pandas",
    "requests",
    "scipy",
    "matplotlib",
    "scikit-learn",
];

fn bookworm() -> Rootfs {
    let mut fs = Rootfs::default();
    fs.insert_file("/usr/bin/python3.11", b"\x7fELF");
    fs.insert_file("/usr/lib/python3.11/os.py", b"");
    fs.insert_file("/etc/debian_version", b"12.5\n");
    fs.insert_file(
        "/var/lib/dpkg/status",
        b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u4\n",
    );
    fs
}

fn once(cache: &Cache) -> (f64, usize, usize) {
    let section = PipSection {
        packages: PACKAGES.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let start = Instant::now();
    let p = plan(
        &section,
        Path::new("."),
        &bookworm(),
        &Platform::linux("amd64"),
        &Http::new().unwrap(),
        cache,
    )
    .unwrap_or_else(|e| panic!("pip_resolve bench: {e}"));
    let groups = layer_groups(&p, cache).unwrap();
    let entries = groups.iter().map(|g| g.entries.len()).sum();
    (start.elapsed().as_secs_f64(), p.wheels.len(), entries)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --all-targets` / `cargo bench -- --list`: nothing to run.
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let (cold, wheels, entries) = once(&cache);
    let (warm, _, _) = once(&cache);
    println!(
        "pip_resolve: {} ({} wheels, {} entries)",
        PACKAGES.join(" "),
        wheels,
        entries
    );
    println!("cold_seconds={cold:.3}");
    println!("warm_seconds={warm:.3}");
}
