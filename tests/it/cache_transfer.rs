//! `kiln cache export|import|gc`: moving exactly what a lock needs between
//! caches, refusing damaged or unsafe exports, and trimming the rest.
//!
//! The fixture is made by hand: package archives put into a cache with the
//! library, a two-platform base image (an index) whose blobs are copied into
//! the cache, and a kiln.lock pinning one platform of it plus the packages.

use crate::common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_core::Digest;
use kiln_spec::lock::{Lock, LockedPlatform};
use kiln_store::{Cache, CacheBucket};
use serde_json::json;

struct Fixture {
    ws: Workspace,
    /// The source cache.
    cache: PathBuf,
    /// Digests (`sha256:…`) the lock needs.
    needed: BTreeSet<String>,
    /// In the cache, needed by nothing: the other platform's manifest, config, layer, and a stray blob.
    unneeded: BTreeSet<String>,
    /// Contents of the pinned wheel (unique bytes, to find it in an export).
    wheel: Vec<u8>,
    lock: Lock,
}

fn pin<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid pin")
}

fn pin_hex(d: &Digest) -> String {
    d.hex().to_string()
}

fn fixture(label: &str) -> Fixture {
    let ws = Workspace::new(label);
    let cache_dir = unique_dir(&format!("{label}-cache"));
    let cache = Cache::open(&cache_dir).unwrap();

    let deb = format!("!<arch>\nfake deb of {label}\n").into_bytes();
    let wheel: Vec<u8> = (0..4000)
        .map(|i| format!("wheel line {i} of {label}\n"))
        .collect::<String>()
        .into_bytes();
    let conda = format!("fake conda package of {label}\n").into_bytes();
    let (deb_d, wheel_d, conda_d) = (
        cache.put(&deb).unwrap(),
        cache.put(&wheel).unwrap(),
        cache.put(&conda).unwrap(),
    );
    let stray = cache.put(format!("stray {label}").as_bytes()).unwrap();

    // A base index with amd64 and arm64 images; the lock uses amd64 only.
    let layout = unique_dir(&format!("{label}-base"));
    let layer = |arch: &str| {
        make_tar(&[Item::File(
            "etc/arch",
            format!("{arch} {label}\n").as_bytes(),
            0o644,
        )])
    };
    let (index, imgs) = write_oci_index_layout(
        &layout,
        "v1",
        &[
            ("amd64", vec![layer("amd64")]),
            ("arm64", vec![layer("arm64")]),
        ],
    );
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), cache_dir.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    let (amd, arm) = (&imgs[0], &imgs[1]);

    let platform = LockedPlatform {
        platform: "linux/amd64".into(),
        base: Some(amd.manifest_digest.parse().unwrap()),
        base_top: Some(index.parse().unwrap()),
        // Pins from JSON, so fields the lock grows later take their defaults.
        apt: vec![pin(json!({
            "name": "fake", "version": "1.0", "arch": "amd64", "suite": "stable",
            "url": "https://example.invalid/pool/fake_1.0_amd64.deb",
            "sha256": pin_hex(&deb_d), "size": deb.len(),
        }))],
        pip: vec![pin(json!({
            "section": "pip", "name": "fake", "version": "1.0",
            "filename": "fake-1.0-py3-none-any.whl",
            "url": "https://example.invalid/fake-1.0-py3-none-any.whl",
            "sha256": pin_hex(&wheel_d), "size": wheel.len(), "requested": true,
        }))],
        conda: vec![pin(json!({
            "name": "fake", "version": "1.0", "build": "0",
            "channel": "file:///srv/channel", "subdir": "linux-64",
            "filename": "fake-1.0-0.conda",
            "url": "file:///srv/channel/linux-64/fake-1.0-0.conda",
            "sha256": pin_hex(&conda_d),
        }))],
    };
    let lock = Lock::new(vec![format!("test = \"{label}\"")], vec![platform]);
    lock.write(&ws.join("kiln.lock")).unwrap();

    let mut needed: BTreeSet<String> = [&deb_d, &wheel_d, &conda_d]
        .iter()
        .map(|d| d.to_string())
        .collect();
    needed.extend([
        index,
        amd.manifest_digest.clone(),
        amd.config_digest.clone(),
    ]);
    needed.extend(amd.layer_digests.iter().cloned());
    let mut unneeded: BTreeSet<String> =
        [arm.manifest_digest.clone(), arm.config_digest.clone()].into();
    unneeded.extend(arm.layer_digests.iter().cloned());
    unneeded.insert(stray.to_string());
    assert_eq!(needed.len(), 7);
    assert_eq!(unneeded.len(), 4);
    Fixture {
        ws,
        cache: cache_dir,
        needed,
        unneeded,
        wheel,
        lock,
    }
}

/// `sha256:<hex>` of every file in a cache's blob store.
fn cached(cache: &Path) -> BTreeSet<String> {
    let dir = cache.join("blobs/sha256");
    if !dir.exists() {
        return BTreeSet::new();
    }
    list_dir(&dir)
        .into_iter()
        .map(|h| format!("sha256:{h}"))
        .collect()
}

fn blob_file(cache: &Path, digest: &str) -> PathBuf {
    cache.join("blobs/sha256").join(&digest["sha256:".len()..])
}

/// `kiln cache ARGS --cache CACHE` in the fixture's workspace.
fn cache_cmd(f: &Fixture, cache: &Path, args: &[&str]) -> std::process::Command {
    let mut c = f.ws.kiln();
    c.arg("cache").args(args).arg("--cache").arg(cache);
    c
}

#[test]
fn needed_is_what_an_offline_build_reads() {
    let f = fixture("ct-needed");
    let cache = Cache::open(&f.cache).unwrap();
    let got: BTreeSet<String> = kiln::cache_transfer::needed(&f.lock, &cache)
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(got, f.needed, "pins + index + amd64 manifest/config/layer");

    // Anything missing is an input error naming it and the way out.
    let gone = f.needed.iter().next().unwrap().clone();
    fs::remove_file(blob_file(&f.cache, &gone)).unwrap();
    let err = kiln::cache_transfer::needed(&f.lock, &cache).unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&gone) && msg.contains("kiln fetch"), "{msg}");
}

#[test]
fn export_then_import_moves_exactly_what_the_lock_needs() {
    let f = fixture("ct-roundtrip");
    let report = cache_cmd(&f, &f.cache, &["export", "moved.tar", "--json"])
        .run_ok()
        .json();
    assert_eq!(report["blobs"], f.needed.len());
    assert_eq!(report["compression"], "none");

    // Deterministic: the same cache and lock give the same bytes.
    let tar_bytes = fs::read(f.ws.join("moved.tar")).unwrap();
    cache_cmd(
        &f,
        &f.cache,
        &["export", "again.tar", "--lock", "kiln.lock"],
    )
    .run_ok();
    assert_eq!(tar_bytes, fs::read(f.ws.join("again.tar")).unwrap());
    let entries = tar_entries(&tar_bytes);
    assert_eq!(entries[0].path, "kiln-cache/INDEX.json");
    let names: Vec<String> = entries[1..]
        .iter()
        .map(|e| {
            format!(
                "sha256:{}",
                e.path.strip_prefix("kiln-cache/blobs/sha256/").unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        f.needed.iter().cloned().collect::<Vec<_>>(),
        "sorted, exactly the needed blobs"
    );
    for e in &entries {
        assert_eq!(
            (e.mtime, e.uid, e.gid, e.mode),
            (0, 0, 0, 0o644),
            "{}",
            e.path
        );
        assert_eq!(e.kind, tar::EntryType::Regular);
    }
    // No temp file left beside the export.
    assert_eq!(f.ws.listing(), ["again.tar", "kiln.lock", "moved.tar"]);

    // Into an empty cache (named by KILN_CACHE this time).
    let target = unique_path("ct-roundtrip-target");
    let r =
        f.ws.kiln()
            .env("KILN_CACHE", &target)
            .args(["cache", "import", "moved.tar", "--json"])
            .run_ok()
            .json();
    assert_eq!(r["imported"], f.needed.len());
    assert_eq!(r["already_present"], 0);
    assert!(r["bytes_imported"].as_u64().unwrap() > f.wheel.len() as u64);
    assert_eq!(cached(&target), f.needed);
    assert_cache_consistent(&target);
    // The target now satisfies the lock on its own.
    let t = Cache::open(&target).unwrap();
    assert_eq!(kiln::cache_transfer::needed(&f.lock, &t).unwrap().len(), 7);

    // Again: nothing new, every blob already there (human report).
    let again = cache_cmd(&f, &target, &["import", "moved.tar"]).run_ok();
    assert!(
        again.stdout.contains("imported 0 blob(s)") && again.stdout.contains("7 already present"),
        "{}",
        again.describe()
    );
}

#[test]
fn zstd_export_round_trips() {
    let f = fixture("ct-zstd");
    let r = cache_cmd(&f, &f.cache, &["export", "moved.tar.zst", "--json"])
        .run_ok()
        .json();
    assert_eq!(r["compression"], "zstd");
    let bytes = fs::read(f.ws.join("moved.tar.zst")).unwrap();
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let target = unique_path("ct-zstd-target");
    cache_cmd(&f, &target, &["import", "moved.tar.zst"]).run_ok();
    assert_eq!(cached(&target), f.needed);
    assert_cache_consistent(&target);
}

#[test]
fn tampered_export_is_refused_and_the_blob_never_stored() {
    let f = fixture("ct-tamper");
    cache_cmd(&f, &f.cache, &["export", "moved.tar"]).run_ok();
    let mut bytes = fs::read(f.ws.join("moved.tar")).unwrap();
    let at = bytes
        .windows(f.wheel.len())
        .position(|w| w == f.wheel.as_slice())
        .expect("the wheel is stored as is");
    bytes[at + f.wheel.len() / 2] ^= 0x20;
    fs::write(f.ws.join("moved.tar"), &bytes).unwrap();
    let wheel_digest = digest_of(&f.wheel);

    let target = unique_path("ct-tamper-target");
    let r = expect_failure_with(
        &f.ws,
        &mut cache_cmd(&f, &target, &["import", "moved.tar"]),
        2,
        &["mismatch", &wheel_digest[7..]],
    );
    assert!(
        r.stderr.contains("kiln-cache/blobs/sha256/"),
        "{}",
        r.describe()
    );
    assert!(
        !blob_file(&target, &wheel_digest).exists(),
        "the tampered blob must not be in the cache"
    );
    assert_cache_consistent(&target);
    assert!(
        list_dir(&target.join("tmp")).is_empty(),
        "no temp file left"
    );
}

/// A tar holding `kiln-cache/INDEX.json` (listing LISTED), then what ADD appends.
fn crafted(
    dir: &Path,
    listed: &[(&str, usize)],
    add: impl FnOnce(&mut tar::Builder<Vec<u8>>),
) -> PathBuf {
    let blobs: Vec<serde_json::Value> = listed
        .iter()
        .map(|(d, size)| serde_json::json!({"digest": d, "size": size}))
        .collect();
    let index = serde_json::to_vec(
        &serde_json::json!({"format": "kiln-cache-export", "version": 1, "blobs": blobs}),
    )
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(index.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "kiln-cache/INDEX.json", &index[..])
        .unwrap();
    add(&mut b);
    let p = dir.join(format!("crafted-{}.tar", next_name()));
    fs::write(&p, b.into_inner().unwrap()).unwrap();
    p
}

fn next_name() -> String {
    unique_path("n")
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A header with a raw name (so `..` is not refused by the tar crate).
fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

#[test]
fn unsafe_or_foreign_entries_are_refused() {
    let ws = Workspace::new("ct-unsafe");
    let scratch = unique_dir("ct-unsafe-files");
    let payload = b"evil payload\n";
    let d = digest_of(payload);
    let blob_name = format!("kiln-cache/blobs/sha256/{}", &d[7..]);
    let listed = [(d.as_str(), payload.len())];

    let cases: Vec<(&str, PathBuf)> = vec![
        (
            "../evil",
            crafted(&scratch, &listed, |b| {
                b.append(
                    &raw_header("../evil", tar::EntryType::Regular, payload.len() as u64),
                    &payload[..],
                )
                .unwrap();
            }),
        ),
        (
            "kiln-cache/blobs/sha256/../../../evil",
            crafted(&scratch, &listed, |b| {
                b.append(
                    &raw_header(
                        "kiln-cache/blobs/sha256/../../../evil",
                        tar::EntryType::Regular,
                        payload.len() as u64,
                    ),
                    &payload[..],
                )
                .unwrap();
            }),
        ),
        (
            "symlink",
            crafted(&scratch, &listed, |b| {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &blob_name, "/etc/passwd").unwrap();
            }),
        ),
        (
            "hard link",
            crafted(&scratch, &listed, |b| {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, &blob_name, "kiln-cache/INDEX.json")
                    .unwrap();
            }),
        ),
        (
            "character device",
            crafted(&scratch, &listed, |b| {
                b.append(&raw_header(&blob_name, tar::EntryType::Char, 0), &[][..])
                    .unwrap();
            }),
        ),
        (
            "kiln-cache/notes.txt",
            crafted(&scratch, &listed, |b| {
                b.append(
                    &raw_header("kiln-cache/notes.txt", tar::EntryType::Regular, 3),
                    &b"hi\n"[..],
                )
                .unwrap();
            }),
        ),
        (
            "not listed in the index",
            crafted(&scratch, &[], |b| {
                b.append(
                    &raw_header(&blob_name, tar::EntryType::Regular, payload.len() as u64),
                    &payload[..],
                )
                .unwrap();
            }),
        ),
    ];
    for (fragment, tar_path) in cases {
        let target = unique_path("ct-unsafe-target");
        let mut cmd = ws.kiln();
        cmd.env("KILN_CACHE", &target)
            .args(["cache", "import"])
            .arg(&tar_path);
        let r = expect_failure_with(&ws, &mut cmd, 2, &["refusing entry", fragment]);
        assert!(
            cached(&target).is_empty(),
            "{fragment}: nothing stored\n{}",
            r.describe()
        );
        assert!(!target.join("evil").exists() && !scratch.join("evil").exists());
        assert!(!scratch.parent().unwrap().join("evil").exists());
    }

    // The same blob as a proper entry is accepted (the cases above fail for their shape).
    let ok = crafted(&scratch, &listed, |b| {
        b.append(
            &raw_header(&blob_name, tar::EntryType::Regular, payload.len() as u64),
            &payload[..],
        )
        .unwrap();
    });
    let target = unique_path("ct-unsafe-ok");
    ws.kiln()
        .env("KILN_CACHE", &target)
        .args(["cache", "import"])
        .arg(&ok)
        .run_ok();
    assert_eq!(cached(&target), [d.clone()].into());

    // Not an export at all.
    let plain = scratch.join("plain.tar");
    fs::write(&plain, make_tar(&[Item::File("hello.txt", b"hi\n", 0o644)])).unwrap();
    let mut cmd = ws.kiln();
    cmd.args(["cache", "import"]).arg(&plain);
    expect_failure_with(&ws, &mut cmd, 2, &["hello.txt"]);
}

#[test]
fn export_with_a_missing_or_damaged_blob_fails_and_writes_nothing() {
    let f = fixture("ct-missing");
    let wheel = digest_of(&f.wheel);
    let other = f.needed.iter().find(|d| **d != wheel).unwrap().clone();

    // Damaged (same size, other bytes): found while copying; the entry is dropped.
    fs::write(blob_file(&f.cache, &wheel), vec![b'x'; f.wheel.len()]).unwrap();
    let mut cmd = cache_cmd(&f, &f.cache, &["export", "moved.tar"]);
    expect_failure_with(&f.ws, &mut cmd, 2, &["damaged", &wheel, "kiln fetch"]);
    assert!(!blob_file(&f.cache, &wheel).exists());

    // Missing: listed before anything is written.
    fs::remove_file(blob_file(&f.cache, &other)).unwrap();
    let mut cmd = cache_cmd(&f, &f.cache, &["export", "moved.tar", "--json"]);
    let r = expect_failure_with(&f.ws, &mut cmd, 2, &["kiln fetch", &other, &wheel]);
    assert_eq!(r.json()["error"]["kind"], "input");

    // No lock: an input error too.
    let mut cmd = cache_cmd(
        &f,
        &f.cache,
        &["export", "moved.tar", "--lock", "other.lock"],
    );
    expect_failure_with(&f.ws, &mut cmd, 2, &["other.lock", "kiln lock"]);
}

#[test]
fn gc_keeps_what_locks_need_and_removes_the_rest() {
    let f = fixture("ct-gc");
    // Extracted conda packages: one for the pinned archive, one for an unpinned one.
    let conda_pin = &f.lock.platforms[0].conda[0].sha256;
    let other = "ab".repeat(32);
    let bucket = |b: CacheBucket| f.cache.join(b.dir_name());
    for hex in [conda_pin.hex(), other.as_str()] {
        let d = bucket(CacheBucket::CondaPackages).join(hex);
        fs::create_dir_all(d.join("info")).unwrap();
        fs::write(d.join("info/index.json"), b"{}").unwrap();
        fs::write(d.join(".kiln-complete"), b"").unwrap();
    }
    // Unpacked .debs kept by digest (an index and its data file): one for
    // the pinned package, one for a blob no lock needs; and the pinned
    // one's form from before (one zstd file), of no use now.
    let deb_pin = &f.lock.platforms[0].apt[0].sha256;
    let unpacked = bucket(CacheBucket::AptUnpacked);
    fs::create_dir_all(&unpacked).unwrap();
    for hex in [deb_pin.hex(), other.as_str()] {
        fs::write(unpacked.join(hex), b"index").unwrap();
        fs::write(unpacked.join(format!("{hex}.data")), b"files").unwrap();
    }
    fs::write(unpacked.join(format!("{}.zst", deb_pin.hex())), b"frame").unwrap();
    // Wheels unpacked by an older kiln (an index and its data file; wheels
    // are read packed now): no bucket, so all go, the pinned wheel's too.
    let wheel_pin = &f.lock.platforms[0].pip[0].sha256;
    let wheels = f.cache.join("pip-unpacked-v1");
    fs::create_dir_all(&wheels).unwrap();
    for hex in [wheel_pin.hex(), other.as_str()] {
        fs::write(wheels.join(hex), b"index").unwrap();
        fs::write(wheels.join(format!("{hex}.data")), b"members").unwrap();
    }
    // Layer memos: one naming a needed blob stays, one naming a blob that
    // goes goes with it.
    let needed_blob = f.needed.iter().next().unwrap().clone();
    let unneeded_blob = f.unneeded.iter().next().unwrap().clone();
    let layers = bucket(CacheBucket::Layers);
    fs::create_dir_all(&layers).unwrap();
    fs::write(
        layers.join("keep.json"),
        format!("{{\"digest\":\"{needed_blob}\"}}"),
    )
    .unwrap();
    fs::write(
        layers.join("gone.json"),
        format!("{{\"digest\":\"{unneeded_blob}\"}}"),
    )
    .unwrap();
    // Local files' digests by their stamps: one naming a needed blob
    // stays, one naming a blob that goes goes with it.
    let local = bucket(CacheBucket::Local);
    fs::create_dir_all(&local).unwrap();
    let (local_keep, local_gone) = ("e1".repeat(32), "e2".repeat(32));
    fs::write(local.join(&local_keep), needed_blob.as_bytes()).unwrap();
    fs::write(local.join(&local_gone), unneeded_blob.as_bytes()).unwrap();
    // Remembered base views are compressed: read all the same.
    let stages = bucket(CacheBucket::Stages);
    fs::create_dir_all(&stages).unwrap();
    let (view_keep, view_gone) = (
        format!("{}.zst", "c1".repeat(32)),
        format!("{}.zst", "c2".repeat(32)),
    );
    for (name, blob) in [(&view_keep, &needed_blob), (&view_gone, &unneeded_blob)] {
        let json = format!("{{\"manifest\":\"{blob}\",\"fs\":{{}}}}");
        let z = zstd::stream::encode_all(json.as_bytes(), 3).unwrap();
        fs::write(stages.join(name), z).unwrap();
    }
    // A fresh index page stays (it expires by itself), and so does a kept
    // resolution; a directory of an older cache layout is no bucket and goes.
    fs::create_dir_all(bucket(CacheBucket::PipPages)).unwrap();
    fs::write(bucket(CacheBucket::PipPages).join("page"), b"{}").unwrap();
    fs::create_dir_all(bucket(CacheBucket::PipResolutions)).unwrap();
    fs::write(bucket(CacheBucket::PipResolutions).join("kept"), b"{}").unwrap();
    fs::create_dir_all(f.cache.join("apt/unpacked")).unwrap();
    fs::write(f.cache.join("apt/unpacked/x.zst"), b"old").unwrap();
    // A tree written out for the interpreter, which no build has open.
    let tree_name = "ab".repeat(32);
    fs::create_dir_all(bucket(CacheBucket::Trees).join(&tree_name).join("usr/bin")).unwrap();
    fs::write(
        bucket(CacheBucket::Trees)
            .join(&tree_name)
            .join("usr/bin/python3"),
        b"elf",
    )
    .unwrap();
    fs::write(
        bucket(CacheBucket::Trees).join(format!("{tree_name}.lock")),
        b"",
    )
    .unwrap();
    // Records of what a registry holds: a fresh one stays, one older
    // than a push trusts goes.
    let pushed = bucket(CacheBucket::Pushed);
    fs::create_dir_all(&pushed).unwrap();
    let (pushed_fresh, pushed_old) = ("d1".repeat(32), "d2".repeat(32));
    fs::write(pushed.join(&pushed_fresh), b"").unwrap();
    let old = fs::File::create(pushed.join(&pushed_old)).unwrap();
    old.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 24 * 3600))
        .unwrap();
    let before = cached(&f.cache);
    assert_eq!(before, f.needed.union(&f.unneeded).cloned().collect());

    let dry = cache_cmd(&f, &f.cache, &["gc", "--dry-run", "--json"])
        .run_ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["kept"], f.needed.len());
    let removed: BTreeSet<String> = strs(&dry["removed"]).into_iter().collect();
    let mut expected: BTreeSet<String> = f
        .unneeded
        .iter()
        .map(|d| format!("blobs/sha256/{}", &d[7..]))
        .collect();
    let conda_dir = CacheBucket::CondaPackages.dir_name();
    let unpacked_dir = CacheBucket::AptUnpacked.dir_name();
    let layers_dir = CacheBucket::Layers.dir_name();
    expected.insert(format!("{conda_dir}/{other}"));
    expected.insert(format!("{unpacked_dir}/{other}"));
    expected.insert(format!("{unpacked_dir}/{other}.data"));
    expected.insert(format!("{unpacked_dir}/{}.zst", deb_pin.hex()));
    expected.insert(format!("{layers_dir}/gone.json"));
    expected.insert(format!("{}/{local_gone}", CacheBucket::Local.dir_name()));
    expected.insert("pip-unpacked-v1".to_string());
    let stages_dir = CacheBucket::Stages.dir_name();
    expected.insert(format!("{stages_dir}/{view_gone}"));
    expected.insert("apt".to_string());
    expected.insert(format!("{}/{tree_name}", CacheBucket::Trees.dir_name()));
    expected.insert(format!("{}/{pushed_old}", CacheBucket::Pushed.dir_name()));
    assert_eq!(removed, expected);
    assert!(dry["bytes_freed"].as_u64().unwrap() > 0);
    assert_eq!(cached(&f.cache), before, "--dry-run deletes nothing");
    assert!(bucket(CacheBucket::CondaPackages).join(&other).is_dir());
    assert!(bucket(CacheBucket::Trees).join(&tree_name).is_dir());

    let human = cache_cmd(&f, &f.cache, &["gc"]).run_ok();
    assert!(!bucket(CacheBucket::Trees).join(&tree_name).exists());
    assert!(pushed.join(&pushed_fresh).is_file());
    assert!(!pushed.join(&pushed_old).exists());
    assert!(
        human.stdout.contains("removed 15 entries"),
        "{}",
        human.describe()
    );
    assert_eq!(cached(&f.cache), f.needed);
    assert_cache_consistent(&f.cache);
    assert!(bucket(CacheBucket::CondaPackages)
        .join(conda_pin.hex())
        .is_dir());
    assert!(!bucket(CacheBucket::CondaPackages).join(&other).exists());
    assert!(layers.join("keep.json").is_file());
    assert!(!layers.join("gone.json").exists());
    assert!(local.join(&local_keep).is_file());
    assert!(!local.join(&local_gone).exists());
    assert!(
        !f.cache.join("apt").exists(),
        "an older layout's directory goes"
    );
    assert!(unpacked.join(deb_pin.hex()).is_file());
    assert!(unpacked.join(format!("{}.data", deb_pin.hex())).is_file());
    assert!(!unpacked.join(format!("{}.zst", deb_pin.hex())).exists());
    assert!(!unpacked.join(&other).exists());
    assert!(!unpacked.join(format!("{other}.data")).exists());
    assert!(bucket(CacheBucket::PipPages).join("page").is_file());
    assert!(bucket(CacheBucket::PipResolutions).join("kept").is_file());
    assert!(!wheels.exists());
    assert!(stages.join(&view_keep).is_file());
    // The lock is still fully served.
    let cache = Cache::open(&f.cache).unwrap();
    assert_eq!(
        kiln::cache_transfer::needed(&f.lock, &cache).unwrap().len(),
        7
    );

    // Nothing more to do.
    let again = cache_cmd(&f, &f.cache, &["gc", "--json"]).run_ok().json();
    assert_eq!(again["removed"].as_array().unwrap().len(), 0);

    // Without any lock gc refuses (it would delete everything).
    let empty = Workspace::new("ct-gc-nolock");
    let mut cmd = empty.kiln();
    cmd.args(["cache", "gc", "--cache"]).arg(&f.cache);
    expect_failure_with(&empty, &mut cmd, 2, &["kiln.lock"]);
    assert_eq!(cached(&f.cache), f.needed);
}

/// The promise end to end: lock and fetch against a registry, move
/// the cache with export/import, then build with no registry at all (it is
/// stopped before the offline build).
#[test]
fn imported_cache_builds_offline() {
    let reg = Registry::start(None);
    let repo = unique_repo("ct-offline");
    push_scratch_image(&reg, &repo, "v1", &[("hello.txt", "hello offline\n")]);
    let ws = Workspace::new("ct-offline");
    ws.write("app.txt", "app\n");
    ws.spec(&format!(
        "[image]\nbase = \"{}:v1\"\n\n[[files]]\nsrc = \"app.txt\"\ndst = \"/app.txt\"\n",
        reg.repo(&repo)
    ));
    let source = unique_dir("ct-offline-source");
    let with = |cache: &Path, args: &[&str]| {
        let mut c = ws.kiln();
        c.args(args).arg("--cache").arg(cache);
        c.run_ok()
    };
    with(&source, &["lock"]);
    with(&source, &["fetch"]);
    let online = with(&source, &["build", "--json", "-o", "oci:online"]).json();
    with(&source, &["cache", "export", "moved.tar"]);

    drop(reg);
    let target = unique_path("ct-offline-target");
    with(&target, &["cache", "import", "moved.tar"]);
    let offline = with(
        &target,
        &[
            "build",
            "--offline",
            "--locked",
            "--json",
            "-o",
            "oci:offline",
        ],
    )
    .json();
    assert_eq!(offline["digest"], online["digest"]);
}
