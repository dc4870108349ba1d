//! Reading a `.deb`: the ar container, `control.tar.*` (control, md5sums,
//! conffiles, maintainer scripts) and `data.tar.*` (the files), decompressed
//! from xz, zstd or gzip. Hostile archives are refused: paths that climb out
//! with `..`, device nodes, and hard links to files outside the package.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use crate::{AptError, Hostile};
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use serde::{Deserialize, Serialize};

use kiln_fs::layer::{Content, Kept, Spool};
use kiln_store::cache::{Cache, CacheBucket};

#[derive(Clone, Debug)]
pub(crate) enum FileKind {
    Dir,
    /// In a spool when the package was loaded with one (see [`load`]).
    File(Content),
    Symlink(String),
}

#[derive(Clone, Debug)]
pub(crate) struct DebFile {
    /// Normalised, relative to `/`, no trailing slash (`usr/bin/python3.11`).
    pub(crate) path: String,
    pub(crate) kind: FileKind,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
}

#[derive(Debug)]
pub(crate) struct Deb {
    /// Members of control.tar by name (`control`, `md5sums`, `postinst` ...).
    pub(crate) control: BTreeMap<String, Vec<u8>>,
    pub(crate) files: Vec<DebFile>,
}

/// The compressions Debian archives use for package members and indexes.
#[derive(Clone, Copy)]
pub(crate) enum Codec {
    Xz,
    Zstd,
    Gzip,
}

impl Codec {
    /// The codec a file name's suffix names, if any.
    pub(crate) fn of(name: &str) -> Option<Codec> {
        [
            (".xz", Codec::Xz),
            (".zst", Codec::Zstd),
            (".gz", Codec::Gzip),
        ]
        .into_iter()
        .find_map(|(suffix, c)| name.ends_with(suffix).then_some(c))
    }

    /// `r` decompressed (as `Send` as `r` is).
    pub(crate) fn reader<R: Read>(self, r: R) -> Result<Decoder<R>> {
        Ok(match self {
            Codec::Xz => Decoder::Xz(liblzma::read::XzDecoder::new(r)),
            Codec::Zstd => {
                Decoder::Zstd(zstd::stream::read::Decoder::new(r).map_err(AptError::Zstd)?)
            }
            Codec::Gzip => Decoder::Gzip(flate2::read::GzDecoder::new(r)),
        })
    }
}

/// What [`Codec::reader`] gives.
pub(crate) enum Decoder<R: Read> {
    Xz(liblzma::read::XzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, std::io::BufReader<R>>),
    Gzip(flate2::read::GzDecoder<R>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Decoder::Xz(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Gzip(d) => d.read(buf),
        }
    }
}

/// A `.deb` that is not well-formed.
fn bad_deb(what: &str, detail: impl std::fmt::Display) -> AptError {
    AptError::BadDeb {
        package: what.to_string(),
        detail: detail.to_string(),
    }
}

/// A member of the `.deb` `what` kiln refuses.
fn hostile(what: &str, member: &str, reason: Hostile) -> AptError {
    AptError::HostileDeb {
        package: what.to_string(),
        member: member.to_string(),
        reason,
    }
}

/// A reader for the ar member `name` of the `.deb` `what`: a compressed or a plain tar.
fn decompressor<'a>(name: &str, r: impl Read + 'a, what: &str) -> Result<Box<dyn Read + 'a>> {
    match Codec::of(name) {
        Some(c) => Ok(Box::new(c.reader(r)?)),
        None if name.ends_with(".tar") => Ok(Box::new(r)),
        None => Err(bad_deb(
            what,
            format_args!("unsupported member compression `{name}`"),
        )
        .into()),
    }
}

/// Normalise the member path `raw` of the `.deb` `what`; `None` for the
/// root, an error when it climbs out.
fn clean_path(raw: &str, what: &str) -> std::result::Result<Option<String>, AptError> {
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(hostile(what, raw, Hostile::EscapesRoot)),
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    })
}

/// The package whose `.deb` is the cached blob `d`, its files' bytes in a
/// spool on disk (a package's files, tens of MB for some, are never all in
/// memory).
///
/// The unpacked package is kept (see [`Kept`]): undoing Debian's xz is most
/// of a cold build's work, so a warm one takes slices of the kept bytes
/// instead, and a layer found in the cache never reads them (each file is
/// known by the package's digest and its path). The hostile-archive checks
/// run when the package is unpacked; a package that fails them is not kept.
pub(crate) fn load(cache: &Cache, d: &Digest, what: &str) -> Result<Deb> {
    let kept = Kept::new(cache, CacheBucket::AptUnpacked, d);
    if let Some(deb) = kept_deb(&kept, d) {
        return Ok(deb);
    }
    let blob = cache
        .verified(d)?
        .ok_or_else(|| kiln_store::StoreError::NotCached { digest: d.clone() })?;
    let file = std::fs::File::open(&blob)
        .io_context(|| format!("opening cached blob {}", blob.display()))?;
    let (tmp, spool) = Kept::spool(cache, what)?;
    let mut deb = read_deb(std::io::BufReader::new(file), what, &spool)?;
    // Best effort: a package that cannot be kept is unpacked again next
    // time; the open spool serves this build either way.
    if let Ok(index) = index_of(&deb, d, &spool) {
        let _ = kept.keep(tmp, &index);
    }
    for f in &mut deb.files {
        if let FileKind::File(Content::Spooled(s)) = &mut f.kind {
            *s = s.clone().known_as(known_name(d, &f.path));
        }
    }
    Ok(deb)
}

/// What [`Index::format`] must be.
const FORMAT: u32 = 1;

/// The kept form of a package: its control members and files, every byte
/// a place in the data file.
#[derive(Serialize, Deserialize)]
struct Index {
    format: u32,
    /// The `.deb` these came from.
    deb: String,
    /// Control members by name (`control`, `md5sums`, `postinst` ...).
    control: Vec<(String, u64, u64)>,
    files: Vec<KeptFile>,
}

#[derive(Serialize, Deserialize)]
struct KeptFile {
    path: String,
    mode: u32,
    uid: u64,
    gid: u64,
    /// A regular file's bytes: offset and length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<(u64, u64)>,
    /// A symlink's target. Neither: a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
}

/// How a layer key knows a kept file: its package and its path there
/// (the bytes are the same whoever unpacks them).
fn known_name(d: &Digest, path: &str) -> String {
    format!("deb {} {path}", d.hex())
}

fn not_spooled() -> std::io::Error {
    std::io::Error::other("a file was not spooled")
}

/// The index of `deb` (unpacked into `spool`), its control members appended.
fn index_of(deb: &Deb, d: &Digest, spool: &Arc<Spool>) -> std::io::Result<Index> {
    let control = deb
        .control
        .iter()
        .map(|(name, bytes)| {
            let s = spool.put(bytes)?;
            let offset = s.spool_offset().ok_or_else(not_spooled)?;
            Ok((name.clone(), offset, s.len()))
        })
        .collect::<std::io::Result<_>>()?;
    let files = deb
        .files
        .iter()
        .map(|f| {
            let (bytes, link) = match &f.kind {
                FileKind::Dir => (None, None),
                FileKind::File(Content::Spooled(s)) => (
                    Some((s.spool_offset().ok_or_else(not_spooled)?, s.len())),
                    None,
                ),
                FileKind::File(Content::Held(_)) => return Err(not_spooled()),
                FileKind::Symlink(t) => (None, Some(t.clone())),
            };
            Ok(KeptFile {
                path: f.path.clone(),
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
                bytes,
                link,
            })
        })
        .collect::<std::io::Result<_>>()?;
    Ok(Index {
        format: FORMAT,
        deb: d.to_string(),
        control,
        files,
    })
}

/// The kept form of `d`, if it is whole, of this format and for `d`.
fn kept_deb(kept: &Kept, d: &Digest) -> Option<Deb> {
    let (index, spool) = kept.open::<Index>()?;
    if index.format != FORMAT || index.deb != d.to_string() {
        return None;
    }
    let control = index
        .control
        .into_iter()
        .map(|(name, at, len)| Some((name, spool.slice_at(at, len).ok()?.read_all().ok()?)))
        .collect::<Option<_>>()?;
    let files = index
        .files
        .into_iter()
        .map(|k| {
            // Paths were checked when the package was unpacked; one that
            // is not clean now means the index is not what kiln wrote.
            if clean_path(&k.path, "").ok()?.as_deref() != Some(k.path.as_str()) {
                return None;
            }
            let kind = match (k.bytes, k.link) {
                (Some((at, len)), None) => {
                    let s = spool.slice_at(at, len).ok()?;
                    FileKind::File(Content::Spooled(s.known_as(known_name(d, &k.path))))
                }
                (None, Some(t)) => FileKind::Symlink(t),
                (None, None) => FileKind::Dir,
                (Some(_), Some(_)) => return None,
            };
            Some(DebFile {
                path: k.path,
                kind,
                mode: k.mode,
                uid: k.uid,
                gid: k.gid,
            })
        })
        .collect::<Option<_>>()?;
    Some(Deb { control, files })
}

/// Only the `control` file of the verified `.deb` `d`, streamed from the
/// package itself: what a locked plan needs, without unpacking the
/// package's files into memory (they are unpacked, and checked, when its
/// layers are made).
pub(crate) fn control_file(cache: &Cache, d: &Digest, what: &str) -> Result<Vec<u8>> {
    let bad = |m: String| bad_deb(what, m);
    let path = cache
        .verified(d)?
        .ok_or_else(|| kiln_store::StoreError::NotCached { digest: d.clone() })?;
    let file = std::fs::File::open(&path)
        .io_context(|| format!("opening cached blob {}", path.display()))?;
    let mut ar = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(|e| bad(format!("not a Debian package: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if !name.starts_with("control.tar") {
            continue;
        }
        let mut t = tar::Archive::new(decompressor(&name, entry, what)?);
        for m in t
            .entries()
            .map_err(|e| bad(format!("corrupt {name}: {e}")))?
        {
            let mut m = m.map_err(|e| bad(format!("corrupt {name}: {e}")))?;
            let p = m.path().map_err(|e| bad(e.to_string()))?;
            if m.header().entry_type().is_file()
                && p.to_string_lossy().trim_start_matches("./") == "control"
            {
                let mut b = Vec::new();
                m.read_to_end(&mut b)
                    .map_err(|e| bad(format!("corrupt {name}: {e}")))?;
                return Ok(b);
            }
        }
    }
    Err(bad("not a Debian package (control or data member missing)".into()).into())
}

/// The `.deb` read from `r`, its files' bytes appended to `spool`.
fn read_deb(r: impl Read, what: &str, spool: &Arc<Spool>) -> Result<Deb> {
    let bad = |m: String| bad_deb(what, m);
    let mut ar = ar::Archive::new(r);
    let mut control = BTreeMap::new();
    let mut files = Vec::new();
    let mut saw_data = false;
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(|e| bad(format!("not a Debian package: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if name.starts_with("control.tar") {
            let mut t = tar::Archive::new(decompressor(&name, entry, what)?);
            for m in t
                .entries()
                .map_err(|e| bad(format!("corrupt {name}: {e}")))?
            {
                let mut m = m.map_err(|e| bad(format!("corrupt {name}: {e}")))?;
                if m.header().entry_type().is_file() {
                    let p = m
                        .path()
                        .map_err(|e| bad(e.to_string()))?
                        .to_string_lossy()
                        .into_owned();
                    let key = p.trim_start_matches("./").to_string();
                    let mut b = Vec::new();
                    m.read_to_end(&mut b)
                        .map_err(|e| bad(format!("corrupt {name}: {e}")))?;
                    control.insert(key, b);
                }
            }
        } else if name.starts_with("data.tar") {
            saw_data = true;
            files = read_data(decompressor(&name, entry, what)?, what, spool)?;
        }
    }
    if !control.contains_key("control") || !saw_data {
        return Err(bad("not a Debian package (control or data member missing)".into()).into());
    }
    // Read to the end, so a stream's own checks (zstd's checksum) run.
    let mut rest = ar.into_inner().map_err(|e| bad(e.to_string()))?;
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| bad(format!("corrupt: {e}")))?;
    Ok(Deb { control, files })
}

fn read_data(r: impl Read, what: &str, spool: &Arc<Spool>) -> Result<Vec<DebFile>> {
    let bad = |m: String| bad_deb(what, m);
    let mut t = tar::Archive::new(r);
    let mut out: Vec<DebFile> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for m in t
        .entries()
        .map_err(|e| bad(format!("corrupt data.tar: {e}")))?
    {
        let mut m = m.map_err(|e| bad(format!("corrupt data.tar: {e}")))?;
        let raw = m
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let Some(path) = clean_path(&raw, what)? else {
            continue;
        };
        let h = m.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        let kind = match h.entry_type() {
            tar::EntryType::Directory => FileKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = m.size();
                FileKind::File(Content::Spooled(
                    spool
                        .put_reader(&mut m, size)
                        .map_err(|e| bad(format!("corrupt data.tar: `{path}`: {e}")))?,
                ))
            }
            tar::EntryType::Symlink => {
                let t = m
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                FileKind::Symlink(t)
            }
            tar::EntryType::Link => {
                let t = m
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = clean_path(&t, what)?.unwrap_or_default();
                let i = *index.get(&target).ok_or_else(|| {
                    hostile(what, &path, Hostile::LinkOutside { target: t.clone() })
                })?;
                // Stored as a copy: layers stay simple, the content is identical.
                out[i].kind.clone()
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(hostile(what, &path, Hostile::DeviceNode).into());
            }
            other => {
                return Err(
                    bad(format!("unsupported tar entry type {other:?} for `{path}`")).into(),
                )
            }
        };
        index.insert(path.clone(), out.len());
        out.push(DebFile {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            clean_path("./usr/bin/", "t").unwrap().as_deref(),
            Some("usr/bin")
        );
        assert_eq!(clean_path("./", "t").unwrap(), None);
        for raw in ["./../etc/passwd", "usr/../../x"] {
            assert!(matches!(
                clean_path(raw, "t"),
                Err(AptError::HostileDeb { member, reason: Hostile::EscapesRoot, .. }) if member == raw
            ));
        }
    }

    /// A data.tar member: raw name, type, content, link target.
    type Member<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

    /// A tar member written with a raw name, so hostile paths get through.
    fn member(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: &str,
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// A `.deb` (gzip control, xz data) whose data member holds `data`.
    fn deb(data: &[Member]) -> Vec<u8> {
        use std::io::Write;
        let mut control = tar::Builder::new(Vec::new());
        member(
            &mut control,
            "./control",
            tar::EntryType::Regular,
            b"Package: t\nVersion: 1\n",
            "",
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&control.into_inner().unwrap()).unwrap();
        let mut files = tar::Builder::new(Vec::new());
        for (name, kind, bytes, link) in data {
            member(&mut files, name, *kind, bytes, link);
        }
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&files.into_inner().unwrap()).unwrap();
        let mut ar = ar::Builder::new(Vec::new());
        for (name, bytes) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", gz.finish().unwrap()),
            ("data.tar.xz", xz.finish().unwrap()),
        ] {
            ar.append(
                &ar::Header::new(name.into(), bytes.len() as u64),
                &bytes[..],
            )
            .unwrap();
        }
        ar.into_inner().unwrap()
    }

    #[test]
    fn control_file_is_read_without_unpacking() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache
            .put(&deb(&[("./usr/hello", tar::EntryType::Regular, b"hi", "")]))
            .unwrap();
        assert_eq!(
            control_file(&cache, &d, "t").unwrap(),
            b"Package: t\nVersion: 1\n"
        );
        let kept = cache.entry(CacheBucket::AptUnpacked, d.hex());
        assert!(!kept.exists());
        let d = cache.put(b"!<arch>\n").unwrap();
        let e = control_file(&cache, &d, "t 1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t 1: not a Debian package (control or data member missing)",
        );
    }

    #[test]
    fn load_keeps_the_unpacked_package() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache
            .put(&deb(&[
                ("./usr/", Directory, b"", ""),
                ("./usr/hello", Regular, b"hi", ""),
                ("./usr/again", Link, b"", "./usr/hello"),
                ("./usr/link", Symlink, b"", "hello"),
            ]))
            .unwrap();
        let kept = |d: &Digest, suffix: &str| {
            cache.entry(CacheBucket::AptUnpacked, format!("{}{suffix}", d.hex()))
        };
        // Paths, kinds, bytes and how a layer key knows each file.
        let summary = |deb: &Deb| {
            deb.files
                .iter()
                .map(|f| match &f.kind {
                    FileKind::File(Content::Spooled(s)) => format!(
                        "{} {:?} {}",
                        f.path,
                        String::from_utf8_lossy(&s.read_all().unwrap()),
                        s.known_name().unwrap()
                    ),
                    FileKind::File(Content::Held(_)) => panic!("{} held in memory", f.path),
                    other => format!("{} {other:?}", f.path),
                })
                .collect::<Vec<_>>()
        };
        let first = load(&cache, &d, "t").unwrap();
        assert!(kept(&d, "").is_file() && kept(&d, ".data").is_file());
        let hex = d.hex();
        assert_eq!(
            summary(&first),
            [
                "usr Dir".to_string(),
                format!("usr/hello \"hi\" deb {hex} usr/hello"),
                format!("usr/again \"hi\" deb {hex} usr/again"),
                "usr/link Symlink(\"hello\")".to_string(),
            ]
        );
        // The second load takes the kept form, even with the blob gone.
        std::fs::remove_file(cache.blob_path(&d)).unwrap();
        let second = load(&cache, &d, "t").unwrap();
        assert_eq!(summary(&first), summary(&second));
        assert_eq!(second.control["control"], b"Package: t\nVersion: 1\n");
        assert_eq!(first.control, second.control);
        assert_eq!(
            std::fs::read_dir(cache.bucket(CacheBucket::Tmp))
                .unwrap()
                .count(),
            0,
            "nothing is left in tmp"
        );
        // A damaged index, or one naming an unclean path, is not used: the
        // package is unpacked again from the blob.
        let d2 = cache
            .put(&deb(&[
                ("./usr/", Directory, b"", ""),
                ("./usr/x", Regular, b"x", ""),
            ]))
            .unwrap();
        load(&cache, &d2, "t").unwrap();
        let good = std::fs::read(kept(&d2, "")).unwrap();
        for damage in [b"\"usr/x\"".as_slice(), b"\"usr/y\""] {
            let mut bad = good.clone();
            let at = bad.windows(7).position(|w| w == b"\"usr/x\"").unwrap();
            bad.splice(at..at + 7, damage.iter().copied());
            if damage == b"\"usr/x\"" {
                let n = bad.len();
                bad[n - 2] ^= 0xff;
            }
            std::fs::write(kept(&d2, ""), &bad).unwrap();
            let again = load(&cache, &d2, "t").unwrap();
            assert_eq!(
                summary(&again)[1],
                format!("usr/x \"x\" deb {} usr/x", d2.hex())
            );
        }
        // (An index whose digest matches but whose path climbs out.)
        let json = &good[good.iter().position(|c| *c == b'\n').unwrap() + 1..];
        let text = String::from_utf8(json.to_vec())
            .unwrap()
            .replace("usr/x", "../x");
        let mut climbing = format!("{}\n", Digest::of(text.as_bytes())).into_bytes();
        climbing.extend_from_slice(text.as_bytes());
        std::fs::write(kept(&d2, ""), &climbing).unwrap();
        let again = load(&cache, &d2, "t").unwrap();
        assert_eq!(again.files[1].path, "usr/x");
    }

    #[test]
    fn hostile_packages_are_refused_and_not_remembered() {
        use tar::EntryType::{Char, Fifo, Link, Regular};
        let outside = Hostile::LinkOutside {
            target: "/etc/shadow".into(),
        };
        let cases: [(&[Member], &str, Hostile); 5] = [
            (
                &[("./../etc/passwd", Regular, b"x", "")],
                "./../etc/passwd",
                Hostile::EscapesRoot,
            ),
            (
                &[("./usr/../../x", Regular, b"x", "")],
                "./usr/../../x",
                Hostile::EscapesRoot,
            ),
            (
                &[("./dev/tty", Char, b"", "")],
                "dev/tty",
                Hostile::DeviceNode,
            ),
            (&[("./run/p", Fifo, b"", "")], "run/p", Hostile::DeviceNode),
            (&[("./x", Link, b"", "/etc/shadow")], "x", outside),
        ];
        for (files, want_member, want_reason) in cases {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::open(dir.path()).unwrap();
            let d = cache.put(&deb(files)).unwrap();
            let err = load(&cache, &d, "evil_1").unwrap_err();
            assert!(
                matches!(
                    err.downcast_ref::<AptError>(),
                    Some(AptError::HostileDeb { package, member, reason })
                        if package == "evil_1" && member == want_member && *reason == want_reason
                ),
                "{err:?}"
            );
            assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
            assert!(
                !cache.entry(CacheBucket::AptUnpacked, d.hex()).exists(),
                "a refused package must not be kept"
            );
            assert_eq!(
                std::fs::read_dir(cache.bucket(CacheBucket::Tmp))
                    .unwrap()
                    .count(),
                0,
                "nor its unpacked files left in tmp"
            );
        }
        // A damaged blob (not what its name says) is not unpacked at all.
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(&deb(&[("./ok", Regular, b"x", "")])).unwrap();
        std::fs::write(cache.blob_path(&d), b"!<arch>\n").unwrap();
        assert!(load(&cache, &d, "t").is_err());
    }

    #[test]
    fn malformed_packages_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        // An ar archive without control or data member.
        let mut ar = ar::Builder::new(Vec::new());
        ar.append(
            &ar::Header::new(b"debian-binary".to_vec(), 4),
            &b"2.0\n"[..],
        )
        .unwrap();
        let d = cache.put(&ar.into_inner().unwrap()).unwrap();
        let err = load(&cache, &d, "empty_1").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<AptError>(),
                Some(AptError::BadDeb { package, detail })
                    if package == "empty_1" && detail.contains("member missing")
            ),
            "{err:?}"
        );
        // A member compressed with something Debian does not use.
        let mut ar = ar::Builder::new(Vec::new());
        ar.append(&ar::Header::new(b"data.tar.bz2".to_vec(), 1), &b"x"[..])
            .unwrap();
        let d = cache.put(&ar.into_inner().unwrap()).unwrap();
        let err = load(&cache, &d, "bz_1").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<AptError>(),
                Some(AptError::BadDeb { package, detail })
                    if package == "bz_1" && detail.contains("unsupported member compression `data.tar.bz2`")
            ),
            "{err:?}"
        );
    }
}
