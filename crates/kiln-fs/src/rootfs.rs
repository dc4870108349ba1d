//! A read-only view of a base image's filesystem, built by overlaying its
//! layers in order with OCI whiteout semantics (`.wh.NAME` removes NAME,
//! `.wh..wh..opq` hides everything the lower layers had in that directory).
//!
//! Metadata is kept for every path; file contents only for the paths a
//! caller asks for (package databases, os-release, dist-info ...), so a large
//! base costs one streaming pass and little memory.

use std::collections::BTreeMap;
use std::io::Read;

use crate::error::FsError;
use crate::layer::{Entry, EntryKind};
use kiln_core::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Node {
    Dir,
    /// A regular file; `content` is present when the path was asked for.
    File {
        size: u64,
        mode: u32,
        #[serde(with = "base64_content")]
        content: Option<Vec<u8>>,
    },
    Symlink(String),
    /// Devices, fifos: present, but nothing to read.
    Other,
}

/// Serializable, so a build can remember the view of a base it read once
/// (the layers are not decompressed again).
#[derive(Default, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rootfs {
    /// Absolute, normalised paths (`/usr/bin/python3`); the root itself is implicit.
    nodes: BTreeMap<String, Node>,
    /// What the layers or entries gave each directory (`/tmp`'s 1777, a
    /// home owned by its user): a tree written out from this view keeps
    /// the modes, and a later layer's parent directories keep both.
    dirs: BTreeMap<String, DirMeta>,
}

/// A directory's permission bits and owner, as its last layer gave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl DirMeta {
    /// What a runtime gives a directory no layer names: root's 0755.
    pub const IMPLIED: DirMeta = DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
}

/// Kept contents as base64 strings in a remembered view, not arrays of numbers.
mod base64_content {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub(super) fn serialize<S: Serializer>(c: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_some(&B64.encode(c)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|c| B64.decode(c).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Normalise a tar member name to `/a/b` (`None`: the root itself, or
/// `..` climbing above it).
pub(crate) fn norm(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("/{}", parts.join("/")))
    }
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Layers [`Rootfs::from_layers`] reads at a time: as many as the base's
/// blobs fetched at a time (each read holds ~6 MiB of buffers).
const READERS: usize = 4;

impl Rootfs {
    /// Overlay uncompressed layer tar streams, lowest first. `keep(path)`
    /// says whose contents to hold in memory. [`READERS`] layers are read
    /// at a time, lowest first, each on a thread of its own (its
    /// decompression, the hash a caller takes and the tar's parse run
    /// beside the others'), then applied in order. Threads rather than
    /// rayon's two workers: a layer still arriving (see
    /// `kiln_oci::blobs`) is read as its bytes come, and a third
    /// layer's bytes waited for a worker behind a slow link until the
    /// last one had arrived.
    pub fn from_layers<R: Read + Send>(
        layers: impl IntoIterator<Item = R>,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Self> {
        use std::sync::Mutex;
        let layers: Vec<Mutex<Option<R>>> =
            layers.into_iter().map(|l| Mutex::new(Some(l))).collect();
        let parsed: Vec<Mutex<Option<Result<Parsed>>>> =
            layers.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            kiln_core::threads::spawn_in_order(s, layers.len(), READERS, |i| {
                let layer = layers[i].lock().unwrap_or_else(|p| p.into_inner()).take();
                let got = match layer {
                    Some(layer) => parse_layer(layer, keep),
                    None => Err(Error::internal("a layer was read twice")),
                };
                *parsed[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
            })
        });
        let parsed = parsed.into_iter().map(|p| {
            p.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(Error::internal("a layer was not read")))
        });
        let mut fs = Rootfs::default();
        for (i, layer) in parsed.enumerate() {
            let layer = layer.map_err(|e| e.context(format!("reading base layer {}", i + 1)))?;
            fs.apply_parsed(layer);
        }
        Ok(fs)
    }

    /// Overlay one more uncompressed layer tar stream (see [`Rootfs::from_layers`]).
    pub fn apply_layer(&mut self, layer: impl Read, keep: &dyn Fn(&str) -> bool) -> Result<()> {
        self.apply_parsed(parse_layer(layer, keep)?);
        Ok(())
    }

    /// A layer over what is below it: its whiteouts first, then what it adds.
    fn apply_parsed(&mut self, layer: Parsed) {
        for removal in layer.removals {
            match removal {
                Removal::Children(dir) => self.remove_children(&dir),
                Removal::Tree(path) => self.remove_tree(&path),
            }
        }
        self.dirs.extend(layer.dirs);
        for (path, node) in layer.adds {
            // A file replacing a directory removes what was below it.
            if !matches!(node, Node::Dir) {
                self.remove_children(&path);
            }
            self.nodes.insert(path, node);
        }
        for (path, target) in layer.links {
            if let Some(n) = self.nodes.get(&target).cloned() {
                self.nodes.insert(path, n);
            }
        }
    }

    fn remove_children(&mut self, dir: &str) {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// Remove `path` and everything below it (a whiteout).
    pub(crate) fn remove_tree(&mut self, path: &str) {
        self.nodes.remove(path);
        self.remove_children(path);
    }

    pub fn insert(&mut self, path: &str, node: Node) {
        if let Some(p) = norm(path) {
            self.nodes.insert(p, node);
        }
    }

    /// This view with only the contents `keep` names (every node stays):
    /// what a read that kept fewer contents would have given.
    pub fn keeping(&self, keep: &dyn Fn(&str) -> bool) -> Rootfs {
        let nodes = self
            .nodes
            .iter()
            .map(|(p, n)| {
                let n = match n {
                    Node::File {
                        size,
                        mode,
                        content: Some(_),
                    } if !keep(p) => Node::File {
                        size: *size,
                        mode: *mode,
                        content: None,
                    },
                    n => n.clone(),
                };
                (p.clone(), n)
            })
            .collect();
        Rootfs {
            nodes,
            dirs: self.dirs.clone(),
        }
    }

    /// Add a file with content (tests, and layers kiln adds on top).
    pub fn insert_file(&mut self, path: &str, content: &[u8]) {
        self.insert(
            path,
            Node::File {
                size: content.len() as u64,
                mode: 0o644,
                content: Some(content.to_vec()),
            },
        );
    }

    /// The node at `path`, following symlinks (up to 40 hops) in every component.
    pub fn resolve(&self, path: &str) -> Option<(String, &Node)> {
        let mut cur = norm(path)?;
        for _ in 0..40 {
            // Resolve symlinks in parent components first.
            let mut resolved = String::new();
            let mut redirected = false;
            let comps: Vec<&str> = cur.trim_start_matches('/').split('/').collect();
            for (i, c) in comps.iter().enumerate() {
                let here = format!("{resolved}/{c}");
                match self.nodes.get(&here) {
                    Some(Node::Symlink(t)) => {
                        let base = if t.starts_with('/') {
                            t.clone()
                        } else {
                            format!("{}/{t}", if resolved.is_empty() { "" } else { &resolved })
                        };
                        let rest = comps[i + 1..].join("/");
                        cur = norm(&if rest.is_empty() {
                            base
                        } else {
                            format!("{base}/{rest}")
                        })?;
                        redirected = true;
                        break;
                    }
                    Some(_) => resolved = here,
                    None => return None,
                }
            }
            if !redirected {
                return self.nodes.get(&cur).map(|n| (cur.clone(), n));
            }
        }
        None
    }

    /// Contents of a file that was kept, following symlinks.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        match self.resolve(path)?.1 {
            Node::File {
                content: Some(c), ..
            } => Some(c),
            _ => None,
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    /// The node itself, without following a final symlink.
    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&norm(path)?)
    }

    /// Names directly inside `dir` (symlinks in `dir` followed), sorted.
    pub fn list(&self, dir: &str) -> Vec<String> {
        let Some((real, Node::Dir)) = self.resolve(dir) else {
            return Vec::new();
        };
        let prefix = format!("{real}/");
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect()
    }

    /// Every path, in order (for diffing and tests).
    pub fn paths(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// The permission bits a layer gave the directory at `path` (a
    /// normalised path), if any did.
    pub fn dir_mode(&self, path: &str) -> Option<u32> {
        self.dir_meta(path).map(|d| d.mode)
    }

    /// The mode and owner of the directory at `path` (a normalised path),
    /// if it is one and a layer or entry named it.
    pub fn dir_meta(&self, path: &str) -> Option<DirMeta> {
        match self.nodes.get(path) {
            Some(Node::Dir) => self.dirs.get(path).copied(),
            _ => None,
        }
    }

    /// The directories whose mode or owner is not the implied root 0755
    /// (what a remembered view must keep for [`Rootfs::adopt_parents`]).
    pub fn distinct_dirs(&self) -> impl Iterator<Item = (&String, DirMeta)> {
        self.nodes.iter().filter_map(|(p, n)| match n {
            Node::Dir => self
                .dirs
                .get(p)
                .filter(|m| **m != DirMeta::IMPLIED)
                .map(|m| (p, *m)),
            _ => None,
        })
    }

    /// Add a directory with its mode and owner (a remembered view).
    pub fn insert_dir(&mut self, path: &str, meta: DirMeta) {
        if let Some(p) = norm(path) {
            self.dirs.insert(p.clone(), meta);
            self.nodes.insert(p, Node::Dir);
        }
    }

    /// A layer copied to `dst` (relative to the root) on top of this view:
    /// its directory entries for `dst` and every ancestor of it that
    /// already is a directory here take the mode and owner they have here.
    /// docker and buildah leave an existing destination as it is (a COPY
    /// into a home an earlier step chowned keeps it chowned); what the copy
    /// brings below `dst` keeps its own metadata.
    pub fn adopt_parents(&self, dst: &str, entries: &mut [Entry]) {
        let dst = dst.trim_matches('/');
        self.adopt_where(entries, |path| {
            dst.strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
    }

    /// A package layer on top of this view: every directory it names that
    /// already is one here keeps its mode and owner, as dpkg, pip and conda
    /// leave an existing directory alone (a site-packages an earlier step
    /// chowned to the notebook user stays the user's).
    pub fn adopt_existing_dirs(&self, entries: &mut [Entry]) {
        self.adopt_where(entries, |_| true);
    }

    fn adopt_where(&self, entries: &mut [Entry], which: impl Fn(&str) -> bool) {
        for e in entries.iter_mut() {
            let path = e.path.trim_matches('/');
            if !matches!(e.kind, EntryKind::Dir) || path.is_empty() || !which(path) {
                continue;
            }
            if let Some(m) = self.dir_meta(&format!("/{path}")) {
                (e.mode, e.uid, e.gid) = (m.mode, m.uid, m.gid);
            }
        }
    }
}

impl Rootfs {
    /// Lay kiln's own layer entries on top (so a later stage sees what an earlier one installed).
    pub fn apply_entries(&mut self, entries: &[Entry], keep: &dyn Fn(&str) -> bool) {
        for e in entries {
            let path = format!("/{}", e.path);
            // A whiteout (an upgraded package's dropped file) removes what it names.
            if let Some((dir, hidden)) = path
                .rsplit_once('/')
                .and_then(|(d, n)| Some((d, n.strip_prefix(".wh.")?)))
            {
                if !hidden.starts_with(".wh.") {
                    self.remove_tree(&format!("{dir}/{hidden}"));
                    continue;
                }
            }
            let node = match &e.kind {
                EntryKind::Dir => {
                    let meta = DirMeta {
                        mode: e.mode & 0o7777,
                        uid: e.uid,
                        gid: e.gid,
                    };
                    self.dirs.insert(path.clone(), meta);
                    Node::Dir
                }
                EntryKind::Symlink { target } => Node::Symlink(target.clone()),
                kind => Node::File {
                    size: kind.file_len().unwrap_or(0),
                    mode: e.mode,
                    content: keep(&path)
                        .then(|| kind.file_bytes().and_then(|b| b.ok()))
                        .flatten()
                        .map(|b| b.into_owned()),
                },
            };
            self.insert(&path, node);
        }
    }
}

/// What one layer does, read from its tar stream alone.
#[derive(Default)]
struct Parsed {
    /// Opaque markers and whiteouts, in the layer's order.
    removals: Vec<Removal>,
    dirs: Vec<(String, DirMeta)>,
    adds: Vec<(String, Node)>,
    /// Hard links: path and target.
    links: Vec<(String, String)>,
}

enum Removal {
    /// An opaque directory: what lower layers put in it.
    Children(String),
    /// A whiteout: the path and everything below it.
    Tree(String),
}

fn parse_layer(r: impl Read, keep: &dyn Fn(&str) -> bool) -> Result<Parsed> {
    let mut ar = tar::Archive::new(r);
    let mut out = Parsed::default();
    let bad = |source| Error::from(FsError::CorruptLayer { source });
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(path) = norm(&raw) else { continue };
        let name = path.rsplit('/').next().unwrap_or("");
        if name == ".wh..wh..opq" {
            out.removals
                .push(Removal::Children(parent_of(&path).to_string()));
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let dir = parent_of(&path);
            let target = if dir == "/" {
                format!("/{hidden}")
            } else {
                format!("{dir}/{hidden}")
            };
            out.removals.push(Removal::Tree(target));
            continue;
        }
        let h = entry.header();
        let node = match h.entry_type() {
            tar::EntryType::Directory => {
                let meta = DirMeta {
                    mode: h.mode().map_or(0o755, |m| m & 0o7777),
                    uid: h.uid().unwrap_or(0),
                    gid: h.gid().unwrap_or(0),
                };
                out.dirs.push((path.clone(), meta));
                Node::Dir
            }
            tar::EntryType::Symlink => Node::Symlink(
                entry
                    .link_name()
                    .map_err(bad)?
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::Link => {
                if let Some(t) = entry
                    .link_name()
                    .map_err(bad)?
                    .and_then(|p| norm(&p.to_string_lossy()))
                {
                    out.links.push((path, t));
                }
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = h.size().unwrap_or(0);
                let mode = h.mode().unwrap_or(0o644);
                let content = if keep(&path) {
                    Some(crate::layer::read_claimed(&mut entry, size).map_err(bad)?)
                } else {
                    None
                };
                Node::File {
                    size,
                    mode,
                    content,
                }
            }
            _ => Node::Other,
        };
        out.adds.push((path, node));
    }
    // Read to the end of the stream past the tar's end marker: the
    // decompressor's own check (gzip's CRC) runs there, and a reader
    // that hashes the layer sees all of it.
    std::io::copy(&mut ar.into_inner(), &mut std::io::sink()).map_err(bad)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Member<'a> = (&'a str, Option<&'a [u8]>, Option<&'a str>);

    fn layer(entries: &[Member]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, link) in entries {
            let mut h = tar::Header::new_ustar();
            match (data, link) {
                (Some(d), _) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                (None, Some(l)) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, l).unwrap();
                }
                (None, None) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_member_claiming_a_terabyte_is_an_error_not_an_abort() {
        let mut h = tar::Header::new_ustar();
        h.set_path("etc/passwd").unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1 << 40);
        h.set_mode(0o644);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[b'x'; 512]);
        let r = Rootfs::from_layers([&bytes[..]], &|_| true);
        assert!(r.is_err(), "a truncated member is refused");
    }

    #[test]
    fn whiteouts_and_symlinks() {
        let l1 = layer(&[
            ("usr/", None, None),
            ("usr/lib/", None, None),
            ("usr/lib/a", Some(b"A"), None),
            ("usr/lib/gone", Some(b"G"), None),
            ("etc/", None, None),
            ("etc/old", Some(b"O"), None),
            ("lib", None, Some("usr/lib")),
        ]);
        let l2 = layer(&[
            ("usr/lib/.wh.gone", Some(b""), None),
            ("etc/.wh..wh..opq", Some(b""), None),
            ("etc/new", Some(b"N"), None),
        ]);
        let fs = Rootfs::from_layers([&l1[..], &l2[..]], &|_| true).unwrap();
        assert_eq!(fs.read("/lib/a"), Some(&b"A"[..]));
        assert!(!fs.exists("/usr/lib/gone"));
        assert!(!fs.exists("/etc/old"));
        assert_eq!(fs.read("/etc/new"), Some(&b"N"[..]));
        assert_eq!(fs.list("/lib"), vec!["a".to_string()]);
    }

    /// A view read with every content, made into the one a read keeping
    /// fewer contents gives: the same nodes and directories, the same bytes
    /// once serialized.
    #[test]
    fn keeping_fewer_contents_is_reading_fewer() {
        let l = layer(&[
            ("etc/", None, None),
            ("etc/os-release", Some(b"ID=debian\n"), None),
            ("usr/", None, None),
            ("usr/big", Some(b"lots of bytes"), None),
            ("usr/link", None, Some("big")),
        ]);
        let keep = |p: &str| p.starts_with("/etc/");
        let all = Rootfs::from_layers([&l[..]], &|_| true).unwrap();
        let few = Rootfs::from_layers([&l[..]], &keep).unwrap();
        let kept = all.keeping(&keep);
        assert_eq!(kept.read("/etc/os-release"), Some(&b"ID=debian\n"[..]));
        assert_eq!(kept.read("/usr/big"), None);
        assert!(kept.exists("/usr/big"));
        assert_eq!(
            serde_json::to_string(&kept).unwrap(),
            serde_json::to_string(&few).unwrap()
        );
        assert_eq!(all.read("/usr/big"), Some(&b"lots of bytes"[..]));
    }

    #[test]
    fn a_damaged_layer_is_corrupt() {
        let good = layer(&[("a", Some(b"A"), None)]);
        let mut bad = good.clone();
        bad[148..156].copy_from_slice(b"0000000\0"); // the header checksum
        let e = Rootfs::from_layers([&good[..], &bad[..]], &|_| true).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<crate::FsError>(),
                Some(crate::FsError::CorruptLayer { .. })
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("reading base layer 2: corrupt layer: "),
            "{e}"
        );
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    /// A view whose /home/nb is the notebook user's, set-gid 2775.
    fn home_view() -> Rootfs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o2775);
        h.set_uid(1000);
        h.set_gid(100);
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h.clone(), "home/nb/", std::io::empty())
            .unwrap();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, "home/", std::io::empty()).unwrap();
        let tar = b.into_inner().unwrap();
        Rootfs::from_layers([&tar[..]], &|_| false).unwrap()
    }

    #[test]
    fn a_copy_keeps_the_directories_it_lands_in() {
        let fs = home_view();
        let nb = DirMeta {
            mode: 0o2775,
            uid: 1000,
            gid: 100,
        };
        assert_eq!(fs.dir_meta("/home/nb"), Some(nb));
        let mut entries = vec![
            dir("home"),
            dir("home/nb"),
            dir("home/nb/work"),
            dir("home/nb/work/data"),
        ];
        entries[3].mode = 0o700;
        // COPY data/ /home/nb/work/data: the destination does not exist, so
        // it and what is below keep the layer's metadata.
        fs.adopt_parents("home/nb/work/data", &mut entries);
        let got: Vec<_> = entries.iter().map(|e| (e.mode, e.uid, e.gid)).collect();
        assert_eq!(
            got,
            [
                (0o755, 0, 0),
                (0o2775, 1000, 100),
                (0o755, 0, 0),
                (0o700, 0, 0)
            ]
        );
        // Only directories: a file entry named like one is left alone.
        let mut file = vec![Entry {
            kind: EntryKind::Data(std::sync::Arc::new(Vec::new())),
            ..dir("home/nb")
        }];
        fs.adopt_parents("home/nb", &mut file);
        assert_eq!(file[0].uid, 0);
    }

    #[test]
    fn a_package_layer_keeps_every_existing_directory() {
        let mut fs = home_view();
        let mut entries = vec![dir("home/nb"), dir("home/nb/.local")];
        fs.adopt_existing_dirs(&mut entries);
        assert_eq!((entries[0].mode, entries[0].uid), (0o2775, 1000));
        assert_eq!((entries[1].mode, entries[1].uid), (0o755, 0));
        // Entries applied on top are what the view then says.
        fs.apply_entries(&entries, &|_| false);
        let distinct: Vec<_> = fs.distinct_dirs().map(|(p, _)| p.clone()).collect();
        assert_eq!(distinct, ["/home/nb"]);
    }
}
