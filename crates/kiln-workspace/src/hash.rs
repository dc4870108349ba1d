//! Input hashes and input paths of members and compat dirs.
//!
//! A member's science hash covers its kiln.toml text, every file its
//! `[[files]]` sources, pip requirements and local find-links, conda
//! environment file name, its kiln.lock (if present) and its base: for
//! `target:NAME` the science hash of NAME (so a change propagates down the
//! chain), for a registry base the manifest digests kiln.lock pins (else
//! the reference text). A compat dir's hash covers its kiln-compat.toml,
//! its `[[files]]` sources and requirements, and its includes' hashes in
//! order. A member's input hash is its science hash plus, for a release,
//! its compat dir's hash: compat changes never change a science hash, which
//! is what makes a compat-only change a rebase.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use kiln_core::error::Result;

use crate::error::WorkspaceError;
use crate::workspace::{Base, Member, Workspace, COMPAT_FILE};

/// The hashes of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHashes {
    pub science: String,
    pub compat: Option<String>,
    pub input: String,
}

/// Lexically normalise (`a/./b/../c` → `a/c`); inputs need not exist.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn is_url(s: &str) -> bool {
    s.contains("://")
}

/// Files (or directories) a member's science image is built from.
pub fn member_inputs(m: &Member) -> Vec<PathBuf> {
    let dir = &m.dir;
    let mut v = vec![kiln_spec::lock::path_for(&m.spec.path)];
    // A Dockerfile alone has no kiln.toml.
    if m.spec.path.is_file() || m.dockerfile.is_none() {
        v.push(m.spec.path.clone());
    }
    // A Dockerfile member: the Dockerfile and its whole context.
    if let Some(df) = &m.dockerfile {
        v.push(df.clone());
        v.push(
            m.spec
                .image
                .context
                .as_ref()
                .map_or_else(|| dir.clone(), |c| dir.join(c)),
        );
    }
    // `[[files]] from` sources are paths inside an image, not on the host.
    v.extend(
        m.spec
            .files
            .iter()
            .filter(|f| f.from.is_none())
            .map(|f| dir.join(&f.src)),
    );
    if let Some(pip) = &m.spec.pip {
        v.extend(pip.requirements.iter().map(|r| dir.join(r)));
        v.extend(
            pip.find_links
                .iter()
                .filter(|l| !is_url(l))
                .map(|l| dir.join(l)),
        );
    }
    if let Some(conda) = &m.spec.conda {
        if let Some(env) = &conda.environment {
            v.push(dir.join(env));
        }
    }
    if let Base::Other(b) = &m.base {
        for prefix in ["oci:", "docker-archive:"] {
            if let Some(rest) = b.strip_prefix(prefix) {
                let path = match (prefix, rest.rsplit_once(':')) {
                    ("oci:", Some((d, tag))) if !tag.contains('/') && !d.is_empty() => d,
                    _ => rest,
                };
                v.push(dir.join(path));
            }
        }
    }
    v.iter().map(|p| normalize(p)).collect()
}

/// Files (or directories) of one compat dir itself (not its includes).
pub fn compat_inputs(ws: &Workspace, name: &str) -> Vec<PathBuf> {
    let Some(c) = ws.compat.get(name) else {
        return Vec::new();
    };
    let mut v = vec![c.dir.join(COMPAT_FILE)];
    v.extend(
        c.layer
            .files
            .iter()
            .filter(|f| f.from.is_none())
            .map(|f| c.dir.join(&f.src)),
    );
    if let Some(pip) = &c.layer.pip {
        v.extend(pip.requirements.iter().map(|r| c.dir.join(r)));
        v.extend(
            pip.find_links
                .iter()
                .filter(|l| !is_url(l))
                .map(|l| c.dir.join(l)),
        );
    }
    v.iter().map(|p| normalize(p)).collect()
}

/// Hash a file or a directory tree (names relative to `label`, content,
/// executable bit, symlink targets; sorted).
fn hash_path(h: &mut Sha256, owner: &str, path: &Path, label: &str, optional: bool) -> Result<()> {
    let missing = |source| WorkspaceError::MissingInput {
        owner: owner.to_string(),
        what: "the spec".into(),
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
            h.update(format!("absent\0{label}\0").as_bytes());
            return Ok(());
        }
        Err(e) => return Err(missing(e).into()),
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(missing)?;
        h.update(format!("link\0{label}\0{}\0", target.display()).as_bytes());
    } else if meta.is_dir() {
        h.update(format!("dir\0{label}\0").as_bytes());
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(missing)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(missing)?;
        entries.sort();
        for name in entries {
            let sub = format!("{label}/{}", name.to_string_lossy());
            hash_path(h, owner, &path.join(&name), &sub, false)?;
        }
    } else {
        let exec = meta.permissions().mode() & 0o111 != 0;
        h.update(format!("file\0{label}\0{exec}\0{}\0", meta.len()).as_bytes());
        let mut f = std::fs::File::open(path).map_err(missing)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(missing)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(())
}

fn label(ws: &Workspace, p: &Path) -> String {
    p.strip_prefix(&ws.root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// Every compat dir's hash (own inputs, then its includes' hashes in order).
pub fn compat_hashes(ws: &Workspace) -> Result<BTreeMap<String, String>> {
    fn go(ws: &Workspace, name: &str, memo: &mut BTreeMap<String, String>) -> Result<String> {
        if let Some(h) = memo.get(name) {
            return Ok(h.clone());
        }
        let mut h = Sha256::new();
        h.update(format!("compat\0{name}\0").as_bytes());
        let owner = format!("compat {name}");
        for p in compat_inputs(ws, name) {
            hash_path(&mut h, &owner, &p, &label(ws, &p), false)?;
        }
        for i in &ws.compat[name].includes {
            let ih = go(ws, i, memo)?;
            h.update(format!("include\0{i}\0{ih}\0").as_bytes());
        }
        let hex = hex::encode(h.finalize());
        memo.insert(name.to_string(), hex.clone());
        Ok(hex)
    }
    let mut memo = BTreeMap::new();
    for name in ws.compat.keys() {
        go(ws, name, &mut memo)?;
    }
    Ok(memo)
}

/// Every member's hashes, computed bases first.
pub fn member_hashes(ws: &Workspace) -> Result<BTreeMap<String, MemberHashes>> {
    let compat = compat_hashes(ws)?;
    let mut out: BTreeMap<String, MemberHashes> = BTreeMap::new();
    for target in &ws.order {
        let m = &ws.members[target];
        let mut h = Sha256::new();
        h.update(format!("member\0{target}\0").as_bytes());
        let inputs = member_inputs(m);
        for (i, p) in inputs.iter().enumerate() {
            // inputs[0] is kiln.lock, which may be absent.
            hash_path(&mut h, target, p, &label(ws, p), i == 0)?;
        }
        for d in m.deps() {
            h.update(format!("base-target\0{d}\0{}\0", out[&d].science).as_bytes());
        }
        match &m.base {
            Base::Target(_) => {}
            Base::Other(reference) => {
                let lock = kiln_spec::lock::Lock::read(&kiln_spec::lock::path_for(&m.spec.path))?;
                let pinned: Vec<String> = lock
                    .iter()
                    .flat_map(|l| &l.platforms)
                    .filter_map(|p| p.base.as_ref().map(|d| format!("{}={d}", p.platform)))
                    .collect();
                if pinned.is_empty() {
                    h.update(format!("base-ref\0{reference}\0").as_bytes());
                } else {
                    h.update(format!("base-pinned\0{}\0", pinned.join(",")).as_bytes());
                }
            }
        }
        let science = hex::encode(h.finalize());
        let compat_hash = m
            .release
            .as_ref()
            .and_then(|r| r.compat.as_ref())
            .map(|c| compat[c].clone());
        let input = match &compat_hash {
            None => science.clone(),
            Some(c) => hex::encode(Sha256::digest(format!("{science}\0{c}").as_bytes())),
        };
        out.insert(
            target.clone(),
            MemberHashes {
                science,
                compat: compat_hash,
                input,
            },
        );
    }
    Ok(out)
}
