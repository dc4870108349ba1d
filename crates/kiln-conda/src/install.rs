//! Conda packages → layer entries.
//!
//! Each archive is extracted once into the cache (`conda-pkgs/<sha256>/`,
//! published by rename only when complete and checked), then linked by
//! rattler into a per-package fragment directory as if the prefix were the
//! final path: placeholders (text and binary, padded) are replaced with the
//! prefix, noarch python files go to the environment's site-packages and
//! entry points are written. Fragments become layer entries, with a
//! `conda-meta/<pkg>.json` record each and one `conda-meta/history` block.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use rattler::install::{link_package_sync, InstallOptions, PythonInfo};
use rattler_conda_types::package::{DistArchiveIdentifier, IndexJson, PackageFile, PathsJson};
use rattler_conda_types::prefix::Prefix;
use rattler_conda_types::{PackageRecord, PrefixRecord, RepoDataRecord};
use rayon::prelude::*;

use super::{CondaPlan, CondaReport, Pinned};
use crate::{CondaError, Hostile};
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_fs::layer::{Entry, EntryKind, LayerGroup, Tree};
use kiln_fs::rootfs::Rootfs;
use kiln_store::cache::{Cache, CacheBucket};
use kiln_store::http::redact;

/// Packages whose archive is larger than this get a layer of their own.
pub(crate) const BIG_PACKAGE: u64 = 32 << 20;

/// Layer groups plus the report; the returned directory holds the linked
/// fragments the entries point at and must outlive the layer build.
pub fn layer_groups(
    plan: &CondaPlan,
    fs: &Rootfs,
    cache: &Cache,
    epoch: u64,
) -> Result<(Vec<LayerGroup>, CondaReport, tempfile::TempDir)> {
    let work = tempfile::Builder::new()
        .prefix(&kiln_store::temp_prefix("conda-link"))
        .tempdir_in(cache.bucket(CacheBucket::Tmp))
        .io_context(|| format!("creating a work directory in {}", cache.root().display()))?;
    let python = python_info(plan)?;
    let prefix_rel = plan.prefix.trim_start_matches('/').to_string();

    let linked: Vec<Linked> = plan
        .install
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let dir = work.path().join(i.to_string());
            link(p, &dir, plan, python.as_ref(), cache)
                .map_err(|e| e.context(format!("[conda] installing {}", label(&p.record))))
        })
        .collect::<Result<_>>()?;

    let mut report = CondaReport {
        prefix: plan.prefix.clone(),
        subdir: plan.subdir.to_string(),
        virtual_packages: super::target::describe(&plan.virtual_packages),
        installed: plan.install.iter().map(|p| label(&p.record)).collect(),
        unchanged: plan
            .unchanged
            .iter()
            .map(|r| label(&r.repodata_record))
            .collect(),
        replaced: plan
            .replaced
            .iter()
            .map(|r| label(&r.repodata_record))
            .collect(),
        ..Default::default()
    };

    // Who writes what: new packages, and base packages that stay.
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in &linked {
        for f in &l.files {
            owners.entry(f.clone()).or_default().push(l.name.clone());
        }
    }
    let mut base_owned: BTreeSet<String> = BTreeSet::new();
    for r in plan.unchanged.iter().chain(&plan.replaced) {
        for f in &r.files {
            base_owned.insert(f.to_string_lossy().into_owned());
        }
    }
    for r in &plan.unchanged {
        for f in &r.files {
            let f = f.to_string_lossy().into_owned();
            if let Some(o) = owners.get_mut(&f) {
                o.insert(0, format!("{} (base)", r.name().as_normalized()));
            }
        }
    }
    for (path, who) in &owners {
        if who.len() > 1 {
            report
                .clobbered
                .push(format!("{}/{path}: {}", plan.prefix, who.join(", ")));
        } else if !base_owned.contains(path) && fs.exists(&format!("{}/{path}", plan.prefix)) {
            report.clobbered.push(format!(
                "{}/{path}: {} overwrites a file no conda package owns (pip-installed?)",
                plan.prefix, who[0]
            ));
        }
    }
    for l in &linked {
        report.scripts_skipped.extend(l.scripts.iter().cloned());
    }

    // Layers: big packages alone, the rest together, in name order (a later
    // package wins a clobbered path, as the last one linked does in conda),
    // a part each (see `LayerGroup::in_parts`): a package bumped leaves the
    // others' compressed bytes to be copied.
    let mut groups: Vec<LayerGroup> = Vec::new();
    let mut small: Vec<Vec<Entry>> = Vec::new();
    let mut head: Vec<Entry> = Vec::new();
    let mut small_names = Vec::new();
    for (p, l) in plan.install.iter().zip(linked) {
        let big = p.record.package_record.size.unwrap_or(0) > BIG_PACKAGE;
        if big {
            let mut t = Tree::default();
            add_all(&mut t, l.entries);
            groups.push(LayerGroup::new(
                format!("kiln conda {}", label(&p.record)),
                t.into_sorted(),
            ));
        } else {
            small_names.push(p.record.package_record.name.as_normalized().to_string());
            small.push(l.entries);
        }
    }
    // Replaced packages: their files the new version no longer has go away.
    let new_files: BTreeSet<String> = owners.keys().cloned().collect();
    for r in &plan.replaced {
        for f in &r.files {
            let f = f.to_string_lossy();
            if !new_files.contains(f.as_ref()) {
                head.push(Entry::whiteout(&format!("{prefix_rel}/{f}")));
            }
        }
        let old_meta = format!("{prefix_rel}/conda-meta/{}", r.file_name());
        if !plan
            .install
            .iter()
            .any(|p| format!("{prefix_rel}/conda-meta/{}", meta_name(&p.record)) == old_meta)
        {
            head.push(Entry::whiteout(&old_meta));
        }
    }
    let history_path = format!("{prefix_rel}/conda-meta/history");
    let mut history = fs
        .read(&format!("/{history_path}"))
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    history.extend(history_block(plan, epoch).into_bytes());
    head.push(Entry::data(&history_path, history, 0o644));
    groups.push(LayerGroup::in_parts(
        format!(
            "kiln conda: {} packages into {}",
            small_names.len(),
            plan.prefix
        ),
        head,
        small,
    ));
    Ok((groups, report, work))
}

struct Linked {
    name: String,
    /// Paths relative to the prefix.
    files: Vec<String>,
    entries: Vec<Entry>,
    scripts: Vec<String>,
}

fn add_all(t: &mut Tree, entries: Vec<Entry>) {
    for e in entries {
        let path = e.path.clone();
        t.insert(e);
        t.add_parents(&path);
    }
}

/// `channel::name-version-build` (the channel's last path segment, never
/// its token: see [`kiln_core::url::strip_credentials`]).
pub(crate) fn label(r: &RepoDataRecord) -> String {
    let p = &r.package_record;
    let bare = r.channel.as_deref().map(kiln_core::url::strip_credentials);
    let channel = bare
        .as_deref()
        .map(|c| c.trim_end_matches('/').rsplit('/').next().unwrap_or(c))
        .unwrap_or("");
    format!(
        "{channel}::{}-{}-{}",
        p.name.as_normalized(),
        p.version,
        p.build.as_str()
    )
}

fn meta_name(r: &RepoDataRecord) -> String {
    let p = &r.package_record;
    format!(
        "{}-{}-{}.json",
        p.name.as_normalized(),
        p.version,
        p.build.as_str()
    )
}

/// Python of the environment (needed to place noarch python packages).
fn python_info(plan: &CondaPlan) -> Result<Option<PythonInfo>> {
    let python = plan
        .install
        .iter()
        .map(|p| &p.record.package_record)
        .chain(
            plan.unchanged
                .iter()
                .map(|r| &r.repodata_record.package_record),
        )
        .find(|r| r.name.as_normalized() == "python");
    let needs = plan
        .install
        .iter()
        .find(|p| p.record.package_record.noarch.is_python());
    match (python, needs) {
        (Some(py), _) => Ok(PythonInfo::from_python_record(py, plan.subdir)
            .map(Some)
            .map_err(|e| CondaError::BadPython {
                version: py.version.to_string(),
                reason: e.to_string(),
            })?),
        (None, Some(p)) => Err(CondaError::NoPython {
            package: label(&p.record),
        }
        .into()),
        (None, None) => Ok(None),
    }
}

/// Extract (cached), check, and link one package into `dir`.
fn link(
    p: &Pinned,
    dir: &Path,
    plan: &CondaPlan,
    python: Option<&PythonInfo>,
    cache: &Cache,
) -> Result<Linked> {
    let extracted = extracted(&p.sha256, p.record.url.as_str(), cache)?;
    let paths =
        PathsJson::from_package_directory_with_deprecated_fallback(&extracted).map_err(|e| {
            CondaError::NoPathsJson {
                reason: e.to_string(),
            }
        })?;
    let package = p.record.identifier.to_string();
    for e in &paths.paths {
        check_relative(&package, &e.relative_path)?;
    }
    let target = Prefix::create(dir).io_context(|| format!("creating {}", dir.display()))?;
    let options = InstallOptions {
        target_prefix: Some(PathBuf::from(&plan.prefix)),
        paths_json: Some(paths.clone()),
        python_info: python.cloned(),
        platform: Some(plan.subdir),
        allow_symbolic_links: Some(true),
        allow_hard_links: Some(true),
        allow_ref_links: Some(false),
        external_symlink_policy: rattler::install::ExternalSymlinkPolicy::Deny,
        ..Default::default()
    };
    let (entries, _) = link_package_sync(
        &extracted,
        &target,
        Arc::new(Mutex::new(Default::default())),
        options,
    )
    .map_err(|e| CondaError::Link {
        reason: kiln_core::error::with_causes(&e),
    })?;

    let name = p.record.package_record.name.as_normalized().to_string();
    // The record goes into the image: channel and URL without credentials.
    let mut record = PrefixRecord::from_repodata_record(crate::public_record(&p.record), entries);
    if let Some(spec) = &p.requested {
        record.requested_specs = vec![spec.clone()];
    }
    let mut meta = Vec::new();
    record
        .write_to(&mut meta, true)
        .map_err(|source| CondaError::WriteRecord { source })?;

    let prefix_rel = plan.prefix.trim_start_matches('/');
    let mut files = Vec::new();
    let mut out = Vec::new();
    collect(dir, dir, prefix_rel, &mut out, &mut files)?;
    let meta_path = format!("{prefix_rel}/conda-meta/{}", meta_name(&p.record));
    out.push(Entry::data(&meta_path, meta, 0o644));
    let scripts = ["pre-link", "post-link", "pre-unlink"]
        .iter()
        .filter(|kind| files.contains(&format!("bin/.{name}-{kind}.sh")))
        .map(|kind| format!("{name}: {kind} script not run"))
        .collect();
    Ok(Linked {
        name,
        files,
        entries: out,
        scripts,
    })
}

/// A locked package's record, rebuilt from its archive (fetched and checked
/// against the locked sha256) instead of from repodata. The locked URL has
/// no credentials: those of the configured channel it is under (`sources`,
/// the channels' base URLs) are put back to fetch it.
pub(crate) fn record_from_archive(
    pin: &kiln_spec::lock::CondaPin,
    sources: &[String],
    http: &kiln_store::http::Http,
    cache: &Cache,
) -> Result<RepoDataRecord> {
    let what = format!("[conda] locked {}", pin.filename);
    let d: Digest = pin.sha256.clone();
    let fetch_url = kiln_core::url::with_credentials(&pin.url, sources);
    let (_, size) = http
        .download(&fetch_url, Some(&d), cache)
        .map_err(|e| e.context(&what))?;
    let dir = extracted(&d, &fetch_url, cache).map_err(|e| e.context(&what))?;
    let bad = |reason: String| CondaError::BadLockedPackage {
        filename: pin.filename.clone(),
        reason,
    };
    let index = IndexJson::from_package_directory(&dir)
        .map_err(|e| bad(format!("info/index.json: {e}")))?;
    let sha = rattler_digest::parse_digest_from_hex::<rattler_digest::Sha256>(pin.sha256.hex())
        .ok_or_else(|| bad("bad sha256 in kiln.lock".into()))?;
    let md5 = pin
        .md5
        .as_deref()
        .and_then(rattler_digest::parse_digest_from_hex::<rattler_digest::Md5>);
    let mut package_record =
        PackageRecord::from_index_json(index, Some(pin.size.unwrap_or(size)), Some(sha), md5)
            .map_err(|e| bad(e.to_string()))?;
    // The channel's view of the dependencies wins over the archive's (repodata patches).
    package_record.depends = pin.depends.clone();
    package_record.constrains = pin.constrains.clone();
    let url = url::Url::parse(&fetch_url)
        .map_err(|e| bad(format!("url `{}`: {e}", redact(&fetch_url))))?;
    let identifier = DistArchiveIdentifier::try_from_filename(&pin.filename)
        .ok_or_else(|| bad("not a conda archive name".into()))?;
    Ok(RepoDataRecord {
        package_record,
        identifier,
        url,
        channel: Some(pin.channel.clone()).filter(|c| !c.is_empty()),
    })
}

/// Paths in a package (`package`, its archive's file name) must stay inside the prefix.
fn check_relative(package: &str, p: &Path) -> Result<(), CondaError> {
    if p.as_os_str().is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(CondaError::HostilePath {
            package: package.to_string(),
            path: p.display().to_string(),
            problem: Hostile::OutsidePrefix,
        });
    }
    Ok(())
}

/// The package extracted in the cache, extracting it first if needed.
fn extracted(sha256: &Digest, url: &str, cache: &Cache) -> Result<PathBuf> {
    let root = cache.bucket(CacheBucket::CondaPackages);
    let dest = root.join(sha256.hex());
    if dest.join(".kiln-complete").is_file() {
        return Ok(dest);
    }
    fs::create_dir_all(&root).io_context(|| format!("creating {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(&root)
        .io_context(|| format!("creating a directory in {}", root.display()))?;
    let archive = cache
        .verified(sha256)?
        .ok_or_else(|| CondaError::NotCached { url: redact(url) })?;
    let file = fs::File::open(&archive).io_context(|| format!("opening {}", archive.display()))?;
    let reader = std::io::BufReader::new(file);
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let result = if path.ends_with(".conda") {
        rattler_package_streaming::read::extract_conda_via_streaming(reader, tmp.path())
    } else if path.ends_with(".tar.bz2") {
        rattler_package_streaming::read::extract_tar_bz2(reader, tmp.path())
    } else {
        return Err(CondaError::UnknownFormat { url: redact(url) }.into());
    };
    result.map_err(|e| CondaError::CorruptArchive {
        url: redact(url),
        reason: kiln_core::error::with_causes(&e),
    })?;
    let package = path.rsplit('/').next().unwrap_or(path);
    check_tree(package, tmp.path(), tmp.path())?;
    fs::write(tmp.path().join(".kiln-complete"), b"")
        .io_context(|| "marking an extracted package".into())?;
    let staged = tmp.keep();
    match fs::rename(&staged, &dest) {
        Ok(()) => {}
        // Another build published the same package first: use theirs.
        Err(_) if dest.join(".kiln-complete").is_file() => {
            let _ = fs::remove_dir_all(&staged);
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staged);
            return Err(e).io_context(|| format!("publishing {}", dest.display()));
        }
    }
    Ok(dest)
}

/// Only files, directories and symlinks that stay inside the package
/// (`package`, the archive's file name).
fn check_tree(package: &str, root: &Path, dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).io_context(|| format!("reading {}", dir.display()))? {
        let e = e.io_context(|| format!("reading {}", dir.display()))?;
        let path = e.path();
        let ft = e
            .file_type()
            .io_context(|| format!("reading {}", path.display()))?;
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if ft.is_dir() {
            check_tree(package, root, &path)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).io_context(|| format!("reading {rel}"))?;
            let depth = Path::new(&rel).components().count() - 1;
            if escapes(&target, depth) {
                return Err(CondaError::HostilePath {
                    package: package.to_string(),
                    path: rel,
                    problem: Hostile::SymlinkOutside {
                        target: target.display().to_string(),
                    },
                }
                .into());
            }
        } else if !ft.is_file() {
            return Err(CondaError::HostilePath {
                package: package.to_string(),
                path: rel,
                problem: Hostile::SpecialFile,
            }
            .into());
        }
    }
    Ok(())
}

/// Does a symlink target at `depth` directories below the root leave it?
fn escapes(target: &Path, depth: usize) -> bool {
    let mut level = depth as isize;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return true,
            Component::ParentDir => level -= 1,
            Component::Normal(_) => level += 1,
            Component::CurDir => {}
        }
        if level < 0 {
            return true;
        }
    }
    false
}

/// Layer entries for everything under `dir`, placed under `prefix_rel`.
fn collect(
    root: &Path,
    dir: &Path,
    prefix_rel: &str,
    out: &mut Vec<Entry>,
    files: &mut Vec<String>,
) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .io_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .io_context(|| format!("reading {}", dir.display()))?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .map_err(|_| CondaError::FragmentOutsideRoot { path: path.clone() })?
            .to_string_lossy()
            .into_owned();
        // Made by rattler for a prefix on disk, not by the package: the
        // clobber store (clobbers are reported instead), the backup
        // exclusion tag and an empty history (kiln writes its own).
        if matches!(
            rel.as_str(),
            "__clobbers__" | "CACHEDIR.TAG" | "conda-meta/history"
        ) {
            continue;
        }
        let meta =
            fs::symlink_metadata(&path).io_context(|| format!("reading {}", path.display()))?;
        let image_path = format!("{prefix_rel}/{rel}");
        if meta.file_type().is_symlink() {
            let target =
                fs::read_link(&path).io_context(|| format!("reading {}", path.display()))?;
            files.push(rel);
            out.push(Entry {
                path: image_path,
                kind: EntryKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
            });
        } else if meta.is_dir() {
            out.push(Entry {
                path: image_path,
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            collect(root, &path, prefix_rel, out, files)?;
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            files.push(rel);
            out.push(Entry {
                path: image_path,
                kind: EntryKind::File {
                    src: path,
                    size: meta.len(),
                },
                mode: if exec { 0o755 } else { 0o644 },
                uid: 0,
                gid: 0,
            });
        }
    }
    Ok(())
}

/// One `conda-meta/history` block, as conda writes it.
fn history_block(plan: &CondaPlan, epoch: u64) -> String {
    let when = kiln_core::time::rfc3339(epoch)
        .replace('T', " ")
        .replace('Z', "");
    let mut s = format!(
        "==> {when} <==\n# cmd: kiln build\n# kiln version: {}\n",
        env!("CARGO_PKG_VERSION")
    );
    for r in &plan.replaced {
        s.push_str(&format!("-{}\n", label(&r.repodata_record)));
    }
    for p in &plan.install {
        s.push_str(&format!("+{}\n", label(&p.record)));
    }
    let specs: Vec<String> = plan.specs.iter().map(|s| format!("{s:?}")).collect();
    s.push_str(&format!("# update specs: [{}]\n", specs.join(", ")));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_escapes() {
        assert!(!escapes(Path::new("libz.so.1"), 1));
        assert!(!escapes(Path::new("../lib/libz.so"), 1));
        assert!(escapes(Path::new("../../etc/passwd"), 1));
        assert!(escapes(Path::new("/etc/passwd"), 3));
    }

    #[test]
    fn package_paths_stay_in_the_prefix() {
        let pkg = "zlib-1.3-h0.conda";
        assert!(check_relative(pkg, Path::new("lib/libz.so")).is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "lib/../../x"] {
            let e = check_relative(pkg, Path::new(bad)).unwrap_err();
            assert!(
                matches!(
                    &e,
                    CondaError::HostilePath { package, path, problem: Hostile::OutsidePrefix }
                        if package == pkg && path == bad
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("outside the prefix"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn extracted_trees_keep_inside_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("lib")).unwrap();
        std::os::unix::fs::symlink("libz.so.1", root.join("lib/libz.so")).unwrap();
        assert!(check_tree("p.conda", root, root).is_ok());
        std::os::unix::fs::symlink("../../etc/passwd", root.join("lib/evil")).unwrap();
        let e = check_tree("p.conda", root, root).unwrap_err();
        match e.downcast_ref::<CondaError>() {
            Some(CondaError::HostilePath {
                package,
                path,
                problem: Hostile::SymlinkOutside { target },
            }) => {
                assert_eq!(package, "p.conda");
                assert_eq!(path, "lib/evil");
                assert_eq!(target, "../../etc/passwd");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("points outside the package"), "{e}");
    }
}
