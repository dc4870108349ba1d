//! `[conda]`: solve time on the real conda-forge repodata fixture, and install
//! throughput of `kiln build` over a generated channel of 200 packages
//! (cold cache: download + extract + link + layers; warm: link + layers).
//!
//! No peer comparison: micromamba, conda and pixi are not installable on
//! these machines, so the figures are absolute.

#[path = "../tests/it/conda_channel/mod.rs"]
mod conda_channel;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use conda_channel::*;
use kiln_conda::{channels, solve, target, Priority};
use kiln_core::Platform;
use kiln_fs::Rootfs;
use rattler_conda_types::{Channel, MatchSpec, ParseStrictness};

const PACKAGES: usize = 200;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench_solve() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/kiln-conda/fixtures/conda/conda-forge-numpy-linux-64.json");
    let bytes = std::fs::read(path).unwrap();
    let config = channels::config(Path::new("/"), None).unwrap();
    let mut parse = Vec::new();
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let records = channels::parse_repodata(&bytes)
            .unwrap()
            .into_repo_data_records(&Channel::from_name("conda-forge", &config));
        parse.push(t.elapsed().as_secs_f64());
        let virtuals = target::virtual_packages(
            &Rootfs::default(),
            &Platform::linux("amd64"),
            &[("glibc".to_string(), "2.36".to_string())].into(),
        )
        .unwrap();
        let specs = vec![MatchSpec::from_str("numpy", ParseStrictness::Lenient).unwrap()];
        let t = Instant::now();
        let solved = solve(&[records], &[], virtuals, specs, Priority::Strict).unwrap();
        times.push(t.elapsed().as_secs_f64());
        n = solved.len();
    }
    println!(
        "conda solve numpy (real conda-forge fixture, 34 records -> {n} packages): median {:.2} ms (repodata parse {:.2} ms)",
        median(times) * 1e3,
        median(parse) * 1e3
    );
}

/// A deterministic, moderately compressible payload.
fn payload(seed: usize, len: usize) -> Vec<u8> {
    let mut x = seed as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    (0..len)
        .map(|i| {
            if i % 4 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            (x >> ((i % 4) * 8)) as u8 & 0x3f | 0x40
        })
        .collect()
}

/// `DIR/kiln.toml`: the conda `packages` (TOML strings) from the channel
/// `chan`, for linux/amd64.
fn conda_spec(dir: &Path, chan: &Path, packages: &str) -> std::path::PathBuf {
    let spec = dir.join("kiln.toml");
    std::fs::write(
        &spec,
        format!(
            "[image]\nplatforms = [\"linux/amd64\"]\n\n[conda]\nchannels = [\"file://{}\"]\npackages = [{packages}]\n",
            chan.display()
        ),
    )
    .unwrap();
    spec
}

fn bench_install() {
    let dir = tempfile::tempdir().unwrap();
    let chan = dir.path().join("channel");
    let mut pkgs = Vec::new();
    let mut installed_bytes = 0usize;
    for i in 0..PACKAGES {
        let size = 64 * 1024 + (i % 16) * 48 * 1024;
        installed_bytes += size + 64;
        let deps: Vec<String> = if i > 0 {
            vec![format!("p{:03}", i - 1)]
        } else {
            vec![]
        };
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        let mut p = pkg(
            &format!("p{i:03}"),
            "1.0",
            &deps,
            vec![
                file(&format!("lib/p{i:03}/data.bin"), &payload(i, size)),
                File {
                    placeholder: Some("text"),
                    ..file(
                        &format!("etc/p{i:03}.conf"),
                        format!("prefix={PLACEHOLDER}\n").as_bytes(),
                    )
                },
            ],
        );
        if i % 2 == 1 {
            p.format = Format::TarBz2;
        }
        pkgs.push(p);
    }
    write_channel(&chan, &pkgs);
    let spec = conda_spec(dir.path(), &chan, &format!("\"p{:03}\"", PACKAGES - 1));
    let cache = dir.path().join("cache");
    let run = |out: &str| {
        let t = Instant::now();
        let st = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["build", "--quiet"])
            .arg(&spec)
            .arg("-o")
            .arg(format!("oci:{}", dir.path().join(out).display()))
            .env("KILN_CACHE", &cache)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        t.elapsed().as_secs_f64()
    };
    let cold = run("cold");
    let warm = median((0..3).map(|i| run(&format!("warm{i}"))).collect());
    let mb = installed_bytes as f64 / 1e6;
    println!(
        "conda install {PACKAGES} packages ({mb:.1} MB installed): cold {cold:.2} s ({:.1} MB/s), warm {warm:.2} s ({:.1} MB/s)",
        mb / cold,
        mb / warm
    );
}

/// `kiln build` of `spec` into a fresh layout `out` with the cache `cache`:
/// wall seconds and the peak RSS (MB) of kiln's process, as `/usr/bin/time`
/// reads it (a child spawned from here would count this process's own
/// peak, the generated channel's gigabytes, as its own).
fn build_measured(spec: &Path, cache: &Path, out: &Path) -> (f64, f64) {
    let rss = out.with_extension("rss");
    let t = Instant::now();
    let st = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--quiet"])
        .arg(spec)
        .arg("-o")
        .arg(format!("oci:{}", out.display()))
        .env("KILN_CACHE", cache)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("/usr/bin/time (Debian's time package)");
    let secs = t.elapsed().as_secs_f64();
    assert!(st.success());
    let kb: f64 = std::fs::read_to_string(&rss)
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    (secs, kb / 1024.0)
}

/// Issue 19's flat memory for `[conda]`: BIG packages of 100 MB each (one
/// file of the compressible payload, .conda with zstd inside), a 2 GB
/// image, built cold and warm; kiln's peak RSS should not grow with it.
fn bench_big() {
    const BIG: usize = 20;
    const SIZE: usize = 100 << 20;
    let dir = tempfile::tempdir().unwrap();
    let chan = dir.path().join("channel");
    let pkgs: Vec<Pkg> = (0..BIG)
        .map(|i| {
            pkg(
                &format!("big{i:02}"),
                "1.0",
                &[],
                vec![file(
                    &format!("share/big{i:02}/data.bin"),
                    &payload(1000 + i, SIZE),
                )],
            )
        })
        .collect();
    write_channel(&chan, &pkgs);
    drop(pkgs);
    let names: Vec<String> = (0..BIG).map(|i| format!("\"big{i:02}\"")).collect();
    let spec = conda_spec(dir.path(), &chan, &names.join(", "));
    let cache = dir.path().join("cache");
    let (cold, cold_rss) = build_measured(&spec, &cache, &dir.path().join("cold"));
    let (warm, warm_rss) = build_measured(&spec, &cache, &dir.path().join("warm"));
    let mb = (BIG * SIZE) as f64 / 1e6;
    println!(
        "conda install {BIG} packages of 100 MB ({mb:.0} MB installed): cold {cold:.2} s (peak RSS {cold_rss:.0} MB), warm {warm:.2} s (peak RSS {warm_rss:.0} MB)"
    );
}

fn main() {
    bench_solve();
    bench_install();
    bench_big();
}
