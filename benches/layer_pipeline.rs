//! Layer pipeline throughput: tar + compress + sha256 (digest and diff_id)
//! over a generated tree of ~500 MB (many small files, a few large ones),
//! for gzip and zstd. Prints MB/s of uncompressed input.
//!
//! The tree is generated once into `target/bench-tree` (override with
//! `KILN_BENCH_TREE`) and reused by `benches/compare.sh`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_fs::layer::tree::{collect_files, SourceScope};
use kiln_fs::layer::{build_layer_fresh, Compression};
use kiln_spec::Spec;
use kiln_store::Cache;

const SMALL_FILES: usize = 20_000;
const LARGE_FILES: usize = 6;
const LARGE_SIZE: usize = 48 << 20;

/// xorshift: fast, reproducible pseudo-random bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "import", "numpy", "def", "return", "self", "class", "for", "in", "range", "lambda", "value",
    "data", "tensor", "float", "0x1f", "error", "None", "True", "config", "layer", "kiln",
    "/usr/lib", "python3",
];

/// Text-like content (compresses like source code) or random bytes (like already-compressed data).
fn content(rng: &mut Rng, len: usize, random: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    if random {
        while v.len() < len {
            v.extend_from_slice(&rng.next().to_le_bytes());
        }
    } else {
        while v.len() < len {
            let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
            v.extend_from_slice(w.as_bytes());
            v.push(if rng.next().is_multiple_of(9) {
                b'\n'
            } else {
                b' '
            });
        }
    }
    v.truncate(len);
    v
}

fn generate(root: &Path) -> u64 {
    let marker = root.join(".complete");
    if marker.exists() {
        return fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    }
    let _ = fs::remove_dir_all(root);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut total = 0u64;
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("pkg{:03}/sub{:02}", i % 200, i % 17));
        fs::create_dir_all(&dir).unwrap();
        let len = 1024 + (rng.next() % 15_000) as usize;
        let data = content(&mut rng, len, i.is_multiple_of(5));
        fs::write(dir.join(format!("file{i}.py")), &data).unwrap();
        total += len as u64;
    }
    let big = root.join("large");
    fs::create_dir_all(&big).unwrap();
    for i in 0..LARGE_FILES {
        let mut f = fs::File::create(big.join(format!("blob{i}.bin"))).unwrap();
        for part in 0..(LARGE_SIZE >> 20) {
            f.write_all(&content(&mut rng, 1 << 20, (part + i) % 2 == 0))
                .unwrap();
        }
        total += LARGE_SIZE as u64;
    }
    fs::write(&marker, total.to_string()).unwrap();
    total
}

fn main() {
    let root = std::env::var_os("KILN_BENCH_TREE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-tree"));
    let t = Instant::now();
    let bytes = generate(&root);
    eprintln!(
        "tree: {} ({:.0} MB, ready in {:.1}s)",
        root.display(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let spec_path = root.with_extension("toml");
    fs::write(
        &spec_path,
        format!(
            "[image]\n[[files]]\nsrc = {:?}\ndst = \"/bench\"\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    let spec = Spec::load(&spec_path).unwrap();
    for (name, c) in [
        ("gzip -1 (default)", Compression::DEFAULT),
        ("gzip -6", Compression::Gzip { level: 6 }),
        ("zstd", Compression::Zstd { level: 3 }),
    ] {
        let mut best = f64::MAX;
        let mut out = None;
        for _ in 0..3 {
            let cache_dir = tempfile::tempdir().unwrap();
            let cache = Cache::open(cache_dir.path()).unwrap();
            let t = Instant::now();
            let entries = collect_files(&spec.files[0], Path::new("/"), SourceScope::Host).unwrap();
            let blob = build_layer_fresh(&entries, &[], 0, c, &cache).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            out = Some(blob);
        }
        let blob = out.unwrap();
        println!(
            "layer_pipeline/{name}: {:.0} MB/s ({:.0} MB in {:.2}s, compressed {:.0} MB, {} threads)",
            bytes as f64 / 1e6 / best,
            bytes as f64 / 1e6,
            best,
            blob.size as f64 / 1e6,
            rayon::current_num_threads()
        );
    }
}
