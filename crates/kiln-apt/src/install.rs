//! Turning resolved packages into layers, and the dpkg database plus the
//! common maintainer-script effects into a final metadata layer, so that
//! `dpkg` and `apt` inside the image agree with what is there.
//!
//! Done natively: merged-/usr (bootstrap), base-passwd's passwd/group and
//! shadow files, `adduser --system` users, `update-alternatives --install`
//! links, the ca-certificates bundle, `update-shells` (`shells.rs`).
//! Everything else a maintainer script would do is reported, not run.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use md5::{Digest as _, Md5};
use rayon::prelude::*;
use serde::Serialize;

use super::control::{parse_paragraphs, Paragraph};
use super::deb::{Deb, FileKind};
use super::{AptPlan, Bootstrap};
use crate::AptError;
use kiln_core::error::Result;
use kiln_fs::layer::{Entry, EntryKind, LayerGroup, Tree};
use kiln_fs::rootfs::Rootfs;
use kiln_store::cache::Cache;

/// Uncompressed bytes per package layer; a package above half of it gets its own layer.
const LAYER_BUDGET: u64 = 128 << 20;
const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct AptReport {
    pub(crate) installed: Vec<String>,
    /// `package: script` pairs whose effects were not reproduced.
    pub skipped_scripts: Vec<String>,
    /// `--run-scripts`: `package: script argument`, in the order run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ran_scripts: Vec<String>,
    /// Effects kiln performed in place of scripts.
    pub(crate) emulated: Vec<String>,
}

fn multiarch_triplet(arch: &str) -> &'static str {
    kiln_core::Arch::from_debian(arch).map_or("unknown-linux-gnu", |a| a.gnu_triplet())
}

/// `name`, or `name:arch` for a package of a foreign architecture.
pub(crate) fn display_name(p: &super::repo::Package, native: &str) -> String {
    if super::repo::effective_arch(&p.arch, native) == native {
        p.name.clone()
    } else {
        format!("{}:{}", p.name, p.arch)
    }
}

/// `bin/x` → `usr/bin/x` on a merged-/usr system.
fn usr_path(p: &str, merged: bool) -> String {
    if merged {
        // Bytes, not a `split`: this runs for every path of every package.
        let first = match memchr::memchr(b'/', p.as_bytes()) {
            Some(i) => &p[..i],
            None => p,
        };
        if MERGED.contains(&first) {
            return format!("usr/{p}");
        }
    }
    p.to_string()
}

fn is_merged(fs: &Rootfs, bootstrap: bool) -> bool {
    bootstrap || matches!(fs.node("/bin"), Some(kiln_fs::rootfs::Node::Symlink(_)))
}

fn entry(path: String, kind: EntryKind, mode: u32) -> Entry {
    Entry {
        path,
        kind,
        mode,
        uid: 0,
        gid: 0,
    }
}

fn data(path: &str, bytes: Vec<u8>, mode: u32) -> Entry {
    Entry::data(path, bytes, mode)
}

/// The package's files as layer entries (merged-/usr applied).
fn package_entries(deb: &Deb, merged: bool, tree: &mut Tree) {
    for f in &deb.files {
        let path = usr_path(&f.path, merged);
        if merged && MERGED.contains(&f.path.as_str()) {
            continue; // the top-level directory itself is a symlink here
        }
        let kind = match &f.kind {
            FileKind::Dir => EntryKind::Dir,
            FileKind::File(b) => b.kind(),
            FileKind::Symlink(t) => EntryKind::Symlink { target: t.clone() },
        };
        tree.add_parents(&path);
        tree.insert(Entry {
            path,
            kind,
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        });
    }
}

fn deb_size(deb: &Deb) -> u64 {
    deb.files
        .iter()
        .map(|f| match &f.kind {
            FileKind::File(b) => b.len(),
            _ => 0,
        })
        .sum()
}

/// Layers for `plan` on top of `fs`: package layers, then one metadata layer.
pub fn layer_groups(
    plan: &AptPlan,
    fs: &Rootfs,
    cache: &Cache,
    epoch: u64,
) -> Result<(Vec<LayerGroup>, AptReport)> {
    layer_groups_counted(plan, fs, cache, epoch, &|_| {})
}

/// [`layer_groups`], calling `unpacked` with the file bytes of each
/// package as it is unpacked (in parallel), for a progress bar.
pub fn layer_groups_counted(
    plan: &AptPlan,
    fs: &Rootfs,
    cache: &Cache,
    epoch: u64,
    unpacked: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<LayerGroup>, AptReport)> {
    // The packages' files are kept on disk (see `deb::load`), read back
    // when the layers are written: memory does not grow with the package set.
    let debs: Vec<Deb> = plan
        .packages
        .par_iter()
        .map(|p| {
            let d = p.sha256.as_ref().expect("indexed");
            let what = format!("{}_{}", p.name, p.version);
            let deb = super::deb::load(cache, d, &what)?;
            unpacked(deb_size(&deb));
            Ok(deb)
        })
        .collect::<Result<_>>()?;
    let bootstrap = plan.bootstrap.is_some();
    let merged = is_merged(fs, bootstrap);

    // Group packages into layers by size, in name order (deterministic).
    let mut groups: Vec<(Vec<usize>, u64)> = Vec::new();
    for (i, deb) in debs.iter().enumerate() {
        let size = deb_size(deb);
        match groups.last_mut() {
            Some((members, total))
                if size < LAYER_BUDGET / 2
                    && *total + size <= LAYER_BUDGET
                    && *total < LAYER_BUDGET / 2 =>
            {
                members.push(i);
                *total += size;
            }
            _ => groups.push((vec![i], size)),
        }
    }
    let mut layers = Vec::new();
    for (gi, (members, _)) in groups.iter().enumerate() {
        let mut head = Tree::default();
        if gi == 0 && bootstrap {
            merged_usr(&plan.arch, &mut head);
        }
        // A package a part (see `LayerGroup::in_parts`): adding a package
        // to the plan copies the others' compressed bytes, wherever the
        // cut into layers now falls.
        let parts = members
            .iter()
            .map(|&i| {
                let mut tree = Tree::default();
                package_entries(&debs[i], merged, &mut tree);
                tree.into_sorted()
            })
            .collect();
        let names: Vec<&str> = members
            .iter()
            .map(|&i| plan.packages[i].name.as_str())
            .collect();
        let label = if names.len() > 4 {
            format!(
                "kiln apt {} packages ({} … {})",
                names.len(),
                names[0],
                names[names.len() - 1]
            )
        } else {
            format!("kiln apt {}", names.join(" "))
        };
        layers.push(LayerGroup::in_parts(label, head.into_sorted(), parts));
    }
    let (meta, report) = metadata_layer(plan, &debs, fs, merged, epoch)?;
    layers.push(LayerGroup::new(
        "kiln apt dpkg database and configuration",
        meta,
    ));
    Ok((layers, report))
}

fn merged_usr(arch: &str, tree: &mut Tree) {
    let mut links = vec!["bin", "sbin", "lib"];
    if arch == "amd64" {
        links.push("lib64");
    }
    for l in links {
        tree.insert(entry(format!("usr/{l}"), EntryKind::Dir, 0o755));
        tree.insert(entry(
            l.to_string(),
            EntryKind::Symlink {
                target: format!("usr/{l}"),
            },
            0o777,
        ));
    }
    tree.insert(entry("usr".into(), EntryKind::Dir, 0o755));
}

/// The bytes of a package file kiln reads itself. A spool that cannot be
/// read back counts as no content here; the spool remembers the failure
/// and refuses to be written into a layer, so no image is made from it.
fn file_bytes(c: &kiln_fs::layer::Content) -> Option<Cow<'_, [u8]>> {
    c.bytes().ok()
}

/// Look up a file's content among the new packages first, then the base.
fn find_content<'a>(path: &str, debs: &'a [Deb], fs: &'a Rootfs) -> Option<Cow<'a, [u8]>> {
    for d in debs.iter().rev() {
        for f in &d.files {
            if f.path == path {
                if let FileKind::File(b) = &f.kind {
                    return file_bytes(b);
                }
            }
        }
    }
    fs.read(&format!("/{path}")).map(Cow::Borrowed)
}

fn path_exists(path: &str, debs: &[Deb], fs: &Rootfs, merged: bool) -> bool {
    let rel = path.trim_start_matches('/');
    debs.iter().any(|d| {
        d.files
            .iter()
            .any(|f| usr_path(&f.path, merged) == usr_path(rel, merged))
    }) || fs.exists(path)
}

fn metadata_layer(
    plan: &AptPlan,
    debs: &[Deb],
    fs: &Rootfs,
    merged: bool,
    epoch: u64,
) -> Result<(Vec<Entry>, AptReport)> {
    let mut tree = Tree::default();
    let mut report = AptReport::default();
    let triplet = multiarch_triplet(&plan.arch);

    // dpkg status: base entries not replaced, plus ours, sorted by name
    // and architecture (`all` counts as native, as an upgrade may move
    // between the two).
    let key = |name: &str, arch: &str| {
        let arch = super::repo::effective_arch(arch, &plan.arch);
        (name.to_string(), arch.to_string())
    };
    let mut status: BTreeMap<(String, String), Paragraph> = BTreeMap::new();
    if let Some(b) = fs.read("/var/lib/dpkg/status") {
        for p in parse_paragraphs(&String::from_utf8_lossy(b)) {
            if let Some(n) = p.get("Package") {
                status.insert(key(n, p.get("Architecture").unwrap_or("")), p);
            }
        }
    }
    for (pkg, deb) in plan.packages.iter().zip(debs) {
        let control = String::from_utf8_lossy(&deb.control["control"]).into_owned();
        let mut para = parse_paragraphs(&control)
            .into_iter()
            .next()
            .ok_or_else(|| AptError::BadDeb {
                package: pkg.name.clone(),
                detail: "empty control file".into(),
            })?;
        let mut fields = vec![
            ("Package".to_string(), pkg.name.clone()),
            ("Status".to_string(), "install ok installed".to_string()),
        ];
        para.remove("Package");
        fields.append(&mut para.fields);
        let mut para = Paragraph { fields };
        let info_name = pkg.info_name();
        if let Some(conf) = deb.control.get("conffiles") {
            let mut lines = Vec::new();
            for c in String::from_utf8_lossy(conf)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("remove-on-upgrade"))
            {
                let rel = c.trim_start_matches('/');
                let sum = find_content(rel, std::slice::from_ref(deb), &Rootfs::default())
                    .map(|b| hex::encode(Md5::digest(b)))
                    .unwrap_or_else(|| "newconffile".into());
                lines.push(format!("{c} {sum}"));
            }
            if !lines.is_empty() {
                // Insert before Description, as dpkg does.
                let pos = para
                    .fields
                    .iter()
                    .position(|(k, _)| k == "Description")
                    .unwrap_or(para.fields.len());
                para.fields
                    .insert(pos, ("Conffiles".into(), format!("\n{}", lines.join("\n"))));
            }
        }
        status.insert(key(&pkg.name, &pkg.arch), para);

        // info/<pkg>.list: every path the package ships, as dpkg records them.
        let mut list = String::from("/.\n");
        for f in &deb.files {
            list.push('/');
            list.push_str(&f.path);
            list.push('\n');
        }
        tree.insert(data(
            &format!("var/lib/dpkg/info/{info_name}.list"),
            list.into_bytes(),
            0o644,
        ));
        for (name, bytes) in &deb.control {
            if name == "control" {
                continue;
            }
            let mode =
                if ["preinst", "postinst", "prerm", "postrm", "config"].contains(&name.as_str()) {
                    0o755
                } else {
                    0o644
                };
            tree.insert(data(
                &format!("var/lib/dpkg/info/{info_name}.{name}"),
                bytes.clone(),
                mode,
            ));
        }
        report
            .installed
            .push(format!("{} {}", display_name(pkg, &plan.arch), pkg.version));
    }
    let mut status_text = String::new();
    for p in status.values() {
        status_text.push_str(&p.render().replace("Conffiles: \n", "Conffiles:\n"));
        status_text.push('\n');
    }
    for d in [
        "var/lib/dpkg",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/lib/dpkg/alternatives",
        "etc/alternatives",
    ] {
        tree.add_parents(d);
        tree.insert(entry(d.into(), EntryKind::Dir, 0o755));
    }
    tree.insert(data("var/lib/dpkg/status", status_text.into_bytes(), 0o644));
    // Database format 1: Multi-Arch: same packages keep `pkg:arch.*` info files.
    tree.insert(data("var/lib/dpkg/info/format", b"1\n".to_vec(), 0o644));
    for f in [
        "var/lib/dpkg/available",
        "var/lib/dpkg/diversions",
        "var/lib/dpkg/statoverride",
    ] {
        if !fs.exists(&format!("/{f}")) {
            tree.insert(data(f, Vec::new(), 0o644));
        }
    }
    // dpkg's architecture list: native first, then the foreign ones.
    if plan.arch != "amd64" || plan.bootstrap.is_some() || !plan.foreign_archs.is_empty() {
        let mut text = format!("{}\n", plan.arch);
        for a in &plan.foreign_archs {
            text.push_str(a);
            text.push('\n');
        }
        tree.insert(data("var/lib/dpkg/arch", text.into_bytes(), 0o644));
    }

    image_sources(plan, debs, fs, merged, &mut tree, &mut report);
    upgrade_whiteouts(plan, debs, fs, merged, &mut tree, &mut report);
    users(plan, debs, fs, epoch, &mut tree, &mut report);
    alternatives(plan, debs, fs, merged, triplet, &mut tree, &mut report);
    ca_certificates(debs, &mut tree, &mut report);
    super::shells::update_shells(debs, fs, merged, &mut tree, &mut report);
    ld_cache(plan, debs, fs, merged, triplet, &mut tree, &mut report);

    for (pkg, deb) in plan.packages.iter().zip(debs) {
        for script in ["preinst", "postinst"] {
            if let Some(b) = deb.control.get(script) {
                let text = String::from_utf8_lossy(b);
                let meaningful = text.lines().any(|l| {
                    let l = l.trim();
                    !(l.is_empty() || l.starts_with('#') || l.starts_with("set ") || l == "exit 0")
                });
                if meaningful {
                    report
                        .skipped_scripts
                        .push(format!("{}: {script}", display_name(pkg, &plan.arch)));
                }
            }
        }
    }
    if plan.bootstrap == Some(Bootstrap::Minbase) || plan.bootstrap == Some(Bootstrap::Essential) {
        report.emulated.push("merged-/usr symlinks".into());
    }
    report
        .emulated
        .push("ldconfig: not run (libraries in the default paths load without a cache)".into());
    Ok((tree.into_sorted(), report))
}

/// A bootstrap's apt sources, so `apt-get update` works in the image: the
/// sources it was built from in `/etc/apt/sources.list.d/debian.sources`,
/// each signed by its keyring where a package installs it (Debian's
/// archive keyring), else by a copy of the keyring kiln used in
/// `/etc/apt/keyrings/`.
fn image_sources(
    plan: &AptPlan,
    debs: &[Deb],
    fs: &Rootfs,
    merged: bool,
    tree: &mut Tree,
    report: &mut AptReport,
) {
    if plan.bootstrap.is_none() || plan.image_sources.is_empty() {
        return;
    }
    let mut copied: BTreeMap<String, String> = BTreeMap::new();
    let signed_by: Vec<String> = plan
        .image_sources
        .iter()
        .map(|s| {
            if s.keyring.starts_with('/') && path_exists(&s.keyring, debs, fs, merged) {
                return s.keyring.clone();
            }
            let name = s
                .keyring
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty() && *n != "..")
                .unwrap_or("kiln-archive-keyring.gpg");
            let mut inside = format!("/etc/apt/keyrings/{name}");
            // Two keyrings of one name: the later ones get a number.
            let mut n = 1;
            while copied.get(&inside).is_some_and(|k| *k != s.keyring) {
                n += 1;
                inside = format!("/etc/apt/keyrings/{n}-{name}");
            }
            if copied.insert(inside.clone(), s.keyring.clone()).is_none() {
                tree.add_parents(&inside[1..]);
                tree.insert(data(&inside[1..], s.keyring_bytes.to_vec(), 0o644));
            }
            inside
        })
        .collect();
    let text = super::sources::deb822(&plan.image_sources, &|i| signed_by[i].clone());
    let path = "etc/apt/sources.list.d/debian.sources";
    tree.add_parents(path);
    tree.insert(data(path, text.into_bytes(), 0o644));
    report
        .emulated
        .push("apt sources: /etc/apt/sources.list.d/debian.sources".into());
}

/// A package upgraded over the base's version: files the old version had and
/// the new one does not are removed with whiteouts (layers only add).
fn upgrade_whiteouts(
    plan: &AptPlan,
    debs: &[Deb],
    fs: &Rootfs,
    merged: bool,
    tree: &mut Tree,
    report: &mut AptReport,
) {
    let info = fs.list("/var/lib/dpkg/info");
    // A file may move to another package of this install: never white it out.
    let new: BTreeSet<String> = debs
        .iter()
        .flat_map(|d| d.files.iter().map(|f| usr_path(&f.path, merged)))
        .collect();
    for (pkg, deb) in plan.packages.iter().zip(debs) {
        let stems = [pkg.name.clone(), format!("{}:{}", pkg.name, pkg.arch)];
        let Some(old_list) = stems
            .iter()
            .find_map(|s| fs.read(&format!("/var/lib/dpkg/info/{s}.list")))
        else {
            continue;
        };
        let mut removed = 0;
        for line in String::from_utf8_lossy(old_list).lines() {
            let rel = usr_path(line.trim().trim_start_matches('/'), merged);
            if rel.is_empty() || rel == "." || new.contains(&rel) {
                continue;
            }
            if matches!(
                fs.node(&format!("/{rel}")),
                Some(kiln_fs::rootfs::Node::File { .. } | kiln_fs::rootfs::Node::Symlink(_))
            ) {
                tree.insert(Entry::whiteout(&rel));
                removed += 1;
            }
        }
        // Old control files (scripts, md5sums ...) that the new version does not ship.
        for name in &info {
            let Some((stem, ext)) = name.rsplit_once('.') else {
                continue;
            };
            if stems.contains(&stem.to_string())
                && ext != "list"
                && ext != "md5sums"
                && !deb.control.contains_key(ext)
            {
                tree.insert(Entry::whiteout(&format!("var/lib/dpkg/info/{name}")));
            }
        }
        if removed > 0 {
            report.emulated.push(format!(
                "{}: upgrade removes {removed} files of the base's version",
                pkg.name
            ));
        }
    }
}

/// base-passwd's master files, shadow entries, and the system users and
/// groups packages add (see [`super::accounts`]).
fn users(
    plan: &AptPlan,
    debs: &[Deb],
    fs: &Rootfs,
    epoch: u64,
    tree: &mut Tree,
    report: &mut AptReport,
) {
    let lines = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .map(String::from)
            .collect()
    };
    let mut passwd = fs.read("/etc/passwd").map(lines).unwrap_or_default();
    let mut group = fs.read("/etc/group").map(lines).unwrap_or_default();
    let mut changed = false;
    if passwd.is_empty() {
        if let (Some(p), Some(g)) = (
            find_content("usr/share/base-passwd/passwd.master", debs, fs),
            find_content("usr/share/base-passwd/group.master", debs, fs),
        ) {
            passwd = lines(&p);
            group = lines(&g);
            changed = true;
            report
                .emulated
                .push("base-passwd: /etc/passwd, /etc/group, shadow files".into());
        }
    }
    // System users and groups from postinst scripts and sysusers.d files.
    // Without a passwd file (no base-passwd) there is no system to add them to.
    let users_possible = !passwd.is_empty();
    let mut accounts = super::accounts::Accounts { passwd, group };
    for (pkg, deb) in plan.packages.iter().zip(debs) {
        let mut requests = deb
            .control
            .get("postinst")
            .map(|s| super::accounts::from_script(&String::from_utf8_lossy(s)))
            .unwrap_or_default();
        for f in &deb.files {
            if f.path.contains("lib/sysusers.d/") && f.path.ends_with(".conf") {
                if let Some(b) = match &f.kind {
                    FileKind::File(b) => file_bytes(b),
                    _ => None,
                } {
                    requests.extend(super::accounts::from_sysusers(&String::from_utf8_lossy(&b)));
                }
            }
        }
        for r in requests {
            if !users_possible {
                let name = match &r {
                    super::accounts::Request::User { name, .. }
                    | super::accounts::Request::Group { name, .. } => name,
                };
                report.skipped_scripts.push(format!(
                    "{}: adds system account {name}, but the image has no /etc/passwd (install base-passwd)",
                    pkg.name
                ));
                continue;
            }
            if let Some(what) = accounts.apply(&r) {
                report.emulated.push(format!("{}: {what}", pkg.name));
                changed = true;
            }
        }
    }
    let super::accounts::Accounts { passwd, group } = accounts;
    if !changed {
        return;
    }
    let days = epoch / 86_400;
    let shadow: Vec<String> = passwd
        .iter()
        .filter_map(|l| l.split(':').next())
        .map(|n| format!("{n}:*:{days}:0:99999:7:::"))
        .collect();
    let gshadow: Vec<String> = group
        .iter()
        .filter_map(|l| l.split(':').next())
        .map(|n| format!("{n}:*::"))
        .collect();
    let shadow_gid = group
        .iter()
        .find(|l| l.starts_with("shadow:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let render = |v: &[String]| format!("{}\n", v.join("\n")).into_bytes();
    tree.insert(data("etc/passwd", render(&passwd), 0o644));
    tree.insert(data("etc/group", render(&group), 0o644));
    tree.insert(Entry {
        path: "etc/shadow".into(),
        kind: EntryKind::Data(Arc::new(render(&shadow))),
        mode: 0o640,
        uid: 0,
        gid: shadow_gid,
    });
    tree.insert(Entry {
        path: "etc/gshadow".into(),
        kind: EntryKind::Data(Arc::new(render(&gshadow))),
        mode: 0o640,
        uid: 0,
        gid: shadow_gid,
    });
}

/// ldconfig: `/etc/ld.so.cache` with the base's entries and the new
/// packages' libraries, and the SONAME links ldconfig would create.
fn ld_cache(
    plan: &AptPlan,
    debs: &[Deb],
    fs: &Rootfs,
    merged: bool,
    triplet: &str,
    tree: &mut Tree,
    report: &mut AptReport,
) {
    use super::ldconfig::{self, CacheEntry};
    // Native libraries, and those of a foreign architecture the native
    // ldconfig also lists (i386 on amd64); others (arm64 cross libraries on
    // amd64) are not in the cache, as ldconfig skips them.
    let kinds: Vec<(i32, u16)> = std::iter::once(&plan.arch)
        .chain(
            plan.foreign_archs
                .iter()
                .filter(|f| (plan.arch.as_str(), f.as_str()) == ("amd64", "i386")),
        )
        .filter_map(|a| ldconfig::arch_flags(a))
        .collect();
    if kinds.is_empty() {
        return;
    }
    let text = |p: &str| {
        find_content(p.trim_start_matches('/'), debs, fs)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let list = |dir: &str| -> Vec<String> {
        let rel = dir.trim_start_matches('/');
        let mut names: BTreeSet<String> = fs.list(dir).into_iter().collect();
        for d in debs {
            for f in &d.files {
                if let Some((parent, name)) = f.path.rsplit_once('/') {
                    if parent == rel {
                        names.insert(name.to_string());
                    }
                }
            }
        }
        names.into_iter().collect()
    };
    let dirs = ldconfig::search_dirs(text("/etc/ld.so.conf").as_deref(), triplet, &text, &list);
    // A directory reached twice (merged-/usr) counts under its first name.
    let mut by_canonical: BTreeMap<String, String> = BTreeMap::new();
    for d in &dirs {
        by_canonical
            .entry(usr_path(d.trim_start_matches('/'), merged))
            .or_insert_with(|| d.clone());
    }
    // Candidates: what the new packages and kiln's own entries put in a
    // search directory; symlinks (alternatives) are followed to the file.
    let mut candidates: BTreeMap<(String, String), ()> = BTreeMap::new();
    for d in debs {
        for f in &d.files {
            if let Some((parent, name)) = f.path.rsplit_once('/') {
                candidates.insert((usr_path(parent, merged), name.to_string()), ());
            }
        }
    }
    for canonical in by_canonical.keys() {
        for e in tree.children(canonical) {
            if let Some((_, name)) = e.path.rsplit_once('/') {
                candidates.insert((canonical.clone(), name.to_string()), ());
            }
        }
    }
    let mut new = Vec::new();
    let mut links = Vec::new();
    for (parent, name) in candidates.into_keys() {
        if !(name.starts_with("lib") || name.starts_with("ld-")) || !name.contains(".so") {
            continue;
        }
        let Some(dir) = by_canonical.get(&parent) else {
            continue;
        };
        let path = format!("{parent}/{name}");
        let Some(bytes) = resolved_content(&path, debs, tree, merged, 0) else {
            continue;
        };
        let Some((flags, soname)) = kinds
            .iter()
            .find_map(|&(flags, machine)| Some((flags, ldconfig::soname(&bytes, machine)?)))
        else {
            continue;
        };
        let link = format!("{parent}/{soname}");
        if soname != name
            && tree.get(&link).is_none()
            && !path_exists(&format!("/{link}"), debs, fs, merged)
        {
            links.push(entry(
                link,
                EntryKind::Symlink {
                    target: name.to_string(),
                },
                0o777,
            ));
        }
        new.push(CacheEntry {
            flags,
            soname: soname.clone(),
            path: format!("{dir}/{soname}"),
        });
    }
    for l in links {
        tree.insert(l);
    }
    if new.is_empty() {
        return;
    }
    let provided: BTreeSet<(i32, &str)> =
        new.iter().map(|e| (e.flags, e.soname.as_str())).collect();
    let base: Vec<CacheEntry> = fs
        .read("/etc/ld.so.cache")
        .and_then(ldconfig::parse)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !provided.contains(&(e.flags, e.soname.as_str())))
        .filter(|e| path_exists(&e.path, debs, fs, merged))
        .collect();
    let entries: Vec<CacheEntry> = base.into_iter().chain(new).collect();
    let cache = ldconfig::write(&entries);
    let count = ldconfig::parse(&cache).map(|e| e.len()).unwrap_or(0);
    tree.insert(data("etc/ld.so.cache", cache, 0o644));
    report
        .emulated
        .push(format!("ldconfig: /etc/ld.so.cache with {count} libraries"));
}

/// The bytes of a file the new packages (or kiln's entries) provide at
/// `path` (canonical, relative), following symlinks; `None` for base files.
fn resolved_content<'a>(
    path: &str,
    debs: &'a [Deb],
    tree: &'a Tree,
    merged: bool,
    depth: usize,
) -> Option<Cow<'a, [u8]>> {
    if depth > 16 {
        return None;
    }
    let follow = |target: &str| {
        let next = if let Some(abs) = target.strip_prefix('/') {
            abs.to_string()
        } else {
            let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            format!("{parent}/{target}")
        };
        let next = normalize_rel(&next)?;
        resolved_content(&usr_path(&next, merged), debs, tree, merged, depth + 1)
    };
    if let Some(e) = tree.get(path) {
        return match &e.kind {
            EntryKind::Symlink { target } => follow(target),
            k => k.file_bytes()?.ok(),
        };
    }
    for d in debs.iter().rev() {
        for f in &d.files {
            if usr_path(&f.path, merged) == path {
                return match &f.kind {
                    FileKind::File(b) => file_bytes(b),
                    FileKind::Symlink(t) => follow(t),
                    FileKind::Dir => None,
                };
            }
        }
    }
    None
}

/// `a/b/../c` → `a/c`; `None` when it climbs above the root.
fn normalize_rel(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

/// A slave link: (name, link, path).
type Slave = (String, String, String);

#[derive(Default)]
struct Alternative {
    link: String,
    /// (path, priority, slaves)
    choices: Vec<(String, i64, Vec<Slave>)>,
}

/// `update-alternatives --install LINK NAME PATH PRIO [--slave LINK NAME PATH]...` from postinst scripts.
fn alternatives(
    plan: &AptPlan,
    debs: &[Deb],
    fs: &Rootfs,
    merged: bool,
    triplet: &str,
    tree: &mut Tree,
    report: &mut AptReport,
) {
    let mut alts: BTreeMap<String, Alternative> = BTreeMap::new();
    for (pkg, deb) in plan.packages.iter().zip(debs) {
        let Some(script) = deb.control.get("postinst") else {
            continue;
        };
        let text = String::from_utf8_lossy(script)
            .replace("\\\n", " ")
            .replace("${DEB_HOST_MULTIARCH}", triplet)
            .replace("$DEB_HOST_MULTIARCH", triplet);
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| *w == "--install") else {
                continue;
            };
            if !words[..at]
                .iter()
                .any(|w| w.ends_with("update-alternatives"))
            {
                continue;
            }
            let w = &words[at + 1..];
            if w.len() < 4 || w[..4].iter().any(|x| x.contains('$')) {
                continue;
            }
            let Ok(prio) = w[3].parse::<i64>() else {
                continue;
            };
            let mut slaves = Vec::new();
            let mut rest = &w[4..];
            while rest.len() >= 4 && rest[0] == "--slave" {
                if !rest[1..4].iter().any(|x| x.contains('$')) {
                    slaves.push((
                        rest[2].to_string(),
                        rest[1].to_string(),
                        rest[3].to_string(),
                    ));
                }
                rest = &rest[4..];
            }
            let a = alts.entry(w[1].to_string()).or_default();
            a.link = w[0].to_string();
            a.choices.push((w[2].to_string(), prio, slaves));
            report
                .emulated
                .push(format!("{}: alternative {} -> {}", pkg.name, w[1], w[2]));
        }
    }
    for (name, a) in &alts {
        // Highest priority wins; ties by path for determinism.
        let Some(best) = a
            .choices
            .iter()
            .filter(|c| path_exists(&c.0, debs, fs, merged))
            .max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0)))
        else {
            continue;
        };
        let link = usr_path(a.link.trim_start_matches('/'), merged);
        tree.add_parents(&link);
        tree.insert(entry(
            link,
            EntryKind::Symlink {
                target: format!("/etc/alternatives/{name}"),
            },
            0o777,
        ));
        tree.insert(entry(
            format!("etc/alternatives/{name}"),
            EntryKind::Symlink {
                target: best.0.clone(),
            },
            0o777,
        ));
        let mut slave_names: BTreeSet<(String, String)> = BTreeSet::new();
        for c in &a.choices {
            for (sname, slink, _) in &c.2 {
                slave_names.insert((sname.clone(), slink.clone()));
            }
        }
        for (sname, slink, spath) in &best.2 {
            if path_exists(spath, debs, fs, merged) {
                let l = usr_path(slink.trim_start_matches('/'), merged);
                tree.add_parents(&l);
                tree.insert(entry(
                    l,
                    EntryKind::Symlink {
                        target: format!("/etc/alternatives/{sname}"),
                    },
                    0o777,
                ));
                tree.insert(entry(
                    format!("etc/alternatives/{sname}"),
                    EntryKind::Symlink {
                        target: spath.clone(),
                    },
                    0o777,
                ));
            }
        }
        // The admin file update-alternatives reads back.
        let mut admin = format!("auto\n{}\n", a.link);
        for (sname, slink) in &slave_names {
            admin.push_str(&format!("{sname}\n{slink}\n"));
        }
        admin.push('\n');
        let mut choices = a.choices.clone();
        choices.sort_by(|x, y| x.0.cmp(&y.0));
        for (path, prio, slaves) in &choices {
            admin.push_str(&format!("{path}\n{prio}\n"));
            for (sname, _) in &slave_names {
                let p = slaves
                    .iter()
                    .find(|s| &s.0 == sname)
                    .map(|s| s.2.as_str())
                    .unwrap_or("");
                admin.push_str(&format!("{p}\n"));
            }
        }
        admin.push('\n');
        tree.insert(data(
            &format!("var/lib/dpkg/alternatives/{name}"),
            admin.into_bytes(),
            0o644,
        ));
    }
}

/// `/etc/ca-certificates.conf`'s header, as ca-certificates' postinst writes it.
const CA_CONF_HEADER: &str = "\
# This file lists certificates that you wish to use or to ignore to be
# installed in /etc/ssl/certs.
# update-ca-certificates(8) will update /etc/ssl/certs by reading this file.
#
# This is autogenerated by dpkg-reconfigure ca-certificates.
# Certificates should be installed under /usr/share/ca-certificates
# and files with extension '.crt' is recognized as available certs.
#
# line begins with # is comment.
# line begins with ! is certificate filename to be deselected.
#
";

/// update-ca-certificates: the bundle and the per-certificate links.
fn ca_certificates(debs: &[Deb], tree: &mut Tree, report: &mut AptReport) {
    let mut certs: BTreeMap<String, Cow<'_, [u8]>> = BTreeMap::new();
    for d in debs {
        for f in &d.files {
            if let (Some(rel), FileKind::File(b)) =
                (f.path.strip_prefix("usr/share/ca-certificates/"), &f.kind)
            {
                if rel.ends_with(".crt") {
                    if let Some(b) = file_bytes(b) {
                        certs.insert(rel.to_string(), b);
                    }
                }
            }
        }
    }
    if certs.is_empty() {
        return;
    }
    // The header ca-certificates' postinst writes, so the file is the one
    // a dpkg install leaves.
    let mut conf = String::from(CA_CONF_HEADER);
    let mut bundle = Vec::new();
    tree.add_parents("etc/ssl/certs/x");
    for (rel, b) in &certs {
        conf.push_str(rel);
        conf.push('\n');
        bundle.extend_from_slice(b);
        if !b.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        let base = rel
            .rsplit('/')
            .next()
            .unwrap_or(rel)
            .trim_end_matches(".crt");
        tree.insert(entry(
            format!("etc/ssl/certs/{base}.pem"),
            EntryKind::Symlink {
                target: format!("/usr/share/ca-certificates/{rel}"),
            },
            0o777,
        ));
    }
    // OpenSSL's `<subject hash>.N` links, N counting certificates that share
    // a hash (in name order, so the numbering is deterministic).
    let mut used: BTreeMap<u32, usize> = BTreeMap::new();
    let mut unhashed = 0;
    for (rel, b) in &certs {
        let base = rel
            .rsplit('/')
            .next()
            .unwrap_or(rel)
            .trim_end_matches(".crt");
        let Some(h) = super::cert_hash::subject_hash(b) else {
            unhashed += 1;
            continue;
        };
        let n = used.entry(h).or_default();
        tree.insert(entry(
            format!("etc/ssl/certs/{h:08x}.{n}"),
            EntryKind::Symlink {
                target: format!("{base}.pem"),
            },
            0o777,
        ));
        *n += 1;
    }
    tree.insert(data("etc/ca-certificates.conf", conf.into_bytes(), 0o644));
    tree.insert(data("etc/ssl/certs/ca-certificates.crt", bundle, 0o644));
    report.emulated.push(format!(
        "ca-certificates: bundle of {} certificates and their OpenSSL hash links",
        certs.len()
    ));
    if unhashed > 0 {
        report.skipped_scripts.push(format!(
            "ca-certificates: {unhashed} certificate(s) kiln could not parse got no hash link"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::DebFile;
    use crate::sources::{ImageSource, Source};

    fn source(uri: &str, suite: &str, keyring: &str) -> ImageSource {
        let s = Source {
            uri: uri.into(),
            suite: suite.into(),
            components: vec!["main".into()],
            signed_by: None,
            in_image: false,
        };
        ImageSource::new(&s, keyring.into(), keyring.as_bytes().to_vec())
    }

    #[test]
    fn bootstraps_name_their_sources_and_keyrings() {
        let plan = AptPlan {
            arch: "amd64".into(),
            foreign_archs: vec![],
            bootstrap: Some(Bootstrap::Minbase),
            image_sources: vec![
                source(
                    "https://u:pw@m.example.invalid/debian",
                    "bookworm",
                    "/usr/share/keyrings/debian-archive-keyring.gpg",
                ),
                source("https://m.example.invalid/extra", "x", "keys/repo.gpg"),
                source(
                    "https://m.example.invalid/other",
                    "y",
                    "/elsewhere/repo.gpg",
                ),
            ],
            packages: vec![],
            kept: None,
        };
        // The archive keyring comes with a package; the others do not.
        let keyring_deb = Deb {
            control: BTreeMap::new(),
            files: vec![DebFile {
                path: "usr/share/keyrings/debian-archive-keyring.gpg".into(),
                kind: FileKind::File(b"k".to_vec().into()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }],
        };
        let mut tree = Tree::default();
        let mut report = AptReport::default();
        image_sources(
            &plan,
            &[keyring_deb],
            &Rootfs::default(),
            true,
            &mut tree,
            &mut report,
        );
        let entries = tree.into_sorted();
        let text = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == p)
                .and_then(|e| match &e.kind {
                    EntryKind::Data(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no {p}"))
        };
        let sources = text("etc/apt/sources.list.d/debian.sources");
        assert!(!sources.contains("pw@"), "{sources}");
        assert!(sources.contains(
            "URIs: https://m.example.invalid/debian\nSuites: bookworm\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ));
        assert!(
            sources.contains("Signed-By: /etc/apt/keyrings/repo.gpg\n"),
            "{sources}"
        );
        assert!(
            sources.contains("Signed-By: /etc/apt/keyrings/2-repo.gpg\n"),
            "{sources}"
        );
        assert_eq!(text("etc/apt/keyrings/repo.gpg"), "keys/repo.gpg");
        assert_eq!(text("etc/apt/keyrings/2-repo.gpg"), "/elsewhere/repo.gpg");
        assert!(!entries
            .iter()
            .any(|e| e.path == "usr/share/keyrings/debian-archive-keyring.gpg"));
    }
}
