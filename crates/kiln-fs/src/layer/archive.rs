//! `[[files]] extract = true` (a Dockerfile's `ADD` of a local archive):
//! the members of a tar archive — plain, gzip, xz, bzip2 or zstd, told
//! apart by their first bytes as docker does — become entries under `dst`.
//!
//! The archive is untrusted: a member that climbs out of `dst` (`..`), a
//! hard link to a member it has not seen, a device, fifo or socket, or
//! setuid/setgid bits without `allow-setid` are refused naming the member;
//! nothing is written. Owners are the archive's unless the entry gives
//! `owner`; modes the archive's unless it gives `mode` (for files).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use kiln_core::error::Result;
use kiln_spec::spec::FileEntry;

use super::tree::{Entry, EntryKind, Tree};
use crate::error::FsError;
use crate::rootfs::norm;

/// The members of the archive at `path`, under `entry.dst`.
pub fn extract(entry: &FileEntry, path: &Path) -> Result<Vec<Entry>> {
    let bad = |reason: String| -> kiln_core::Error {
        FsError::BadArchive {
            src: entry.src.clone(),
            reason,
        }
        .into()
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut head = [0u8; 6];
    let n = {
        let mut f = &file;
        read_up_to(&mut f, &mut head).map_err(|e| bad(e.to_string()))?
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let reader: Box<dyn Read> = match &head[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Box::new(liblzma::read::XzDecoder::new(file)),
        [b'B', b'Z', b'h', ..] => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| bad(e.to_string()))?)
        }
        _ => Box::new(file),
    };
    let mut archive = tar::Archive::new(reader);
    let dst = entry.dst.relative().to_string();
    let mut tree = Tree::default();
    if !dst.is_empty() {
        tree.add_parents(&dst);
        tree.insert(Entry {
            path: dst.clone(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    // Member path -> its content, for hard links to earlier members.
    let mut seen: BTreeMap<String, Arc<Vec<u8>>> = BTreeMap::new();
    for member in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut member = member.map_err(|e| bad(e.to_string()))?;
        let raw = member.path_bytes().into_owned();
        let name = String::from_utf8(raw).map_err(|_| bad("a member name is not UTF-8".into()))?;
        let rel = match norm(&name) {
            Some(p) => p[1..].to_string(),
            None if name.split('/').all(|p| p.is_empty() || p == ".") => continue, // `./`
            None => return Err(bad(format!("member `{name}` leads outside the directory"))),
        };
        let path = if dst.is_empty() {
            rel.clone()
        } else {
            format!("{dst}/{rel}")
        };
        let h = member.header();
        let mode = h.mode().map_err(|e| bad(e.to_string()))? & 0o7777;
        if mode & 0o6000 != 0 && !entry.allow_setid {
            return Err(bad(format!(
                "member `{name}` is setuid/setgid; add `allow-setid = true` to the entry if that is meant"
            )));
        }
        let (uid, gid) = match entry.owner {
            Some(o) => (o.uid, o.gid),
            None => (
                h.uid().map_err(|e| bad(e.to_string()))?,
                h.gid().map_err(|e| bad(e.to_string()))?,
            ),
        };
        let kind = match h.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                member
                    .read_to_end(&mut data)
                    .map_err(|e| bad(format!("member `{name}`: {e}")))?;
                let data = Arc::new(data);
                seen.insert(rel.clone(), data.clone());
                EntryKind::Data(data)
            }
            tar::EntryType::Symlink => {
                let target = member
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad(format!("symlink `{name}` has no target")))?;
                EntryKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            }
            tar::EntryType::Link => {
                let target = member
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let data = norm(&target)
                    .and_then(|t| seen.get(&t[1..]).cloned())
                    .ok_or_else(|| {
                        bad(format!(
                            "hard link `{name}` names `{target}`, which is not an earlier member"
                        ))
                    })?;
                EntryKind::Data(data)
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(bad(format!(
                    "member `{name}` is a {other:?}; only files, directories and links are taken"
                )))
            }
        };
        let mode = match (&kind, entry.mode) {
            (EntryKind::Data(_), Some(m)) => m.0,
            _ => mode,
        };
        tree.add_parents(&path);
        tree.insert(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(tree.into_sorted())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_spec::spec::AbsPath;

    fn entry() -> FileEntry {
        FileEntry {
            from: None,
            src: "a.tar.gz".into(),
            dst: AbsPath("/opt/app".into()),
            mode: None,
            owner: None,
            allow_setid: false,
            into: false,
            content: None,
            extract: true,
            url: None,
            sha256: None,
        }
    }

    fn tar_of(members: &[(&str, &[u8], tar::EntryType, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, ty, link) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_size(data.len() as u64);
            h.set_mode(0o640);
            h.set_uid(1000);
            h.set_gid(1000);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Raw names, so `..` reaches the reader as a hostile archive has it.
            let raw = name.as_bytes();
            h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn members_land_under_dst_with_their_owners() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar.gz");
        let t = tar_of(&[
            ("./bin/", b"", tar::EntryType::Directory, None),
            ("./bin/tool", b"#!/bin/sh\n", tar::EntryType::Regular, None),
            ("./bin/alias", b"", tar::EntryType::Link, Some("./bin/tool")),
            ("./bin/sl", b"", tar::EntryType::Symlink, Some("tool")),
        ]);
        std::fs::write(&p, gz(&t)).unwrap();
        let entries = extract(&entry(), &p).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "opt",
                "opt/app",
                "opt/app/bin",
                "opt/app/bin/alias",
                "opt/app/bin/sl",
                "opt/app/bin/tool"
            ]
        );
        let tool = entries
            .iter()
            .find(|e| e.path == "opt/app/bin/tool")
            .unwrap();
        assert_eq!((tool.mode, tool.uid, tool.gid), (0o640, 1000, 1000));
        let alias = entries
            .iter()
            .find(|e| e.path == "opt/app/bin/alias")
            .unwrap();
        assert!(matches!(&alias.kind, EntryKind::Data(d) if d.as_slice() == b"#!/bin/sh\n"));
    }

    #[test]
    fn hostile_members_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (members, needle) in [
            (
                vec![("../../etc/x", &b"x"[..], tar::EntryType::Regular, None)],
                "leads outside",
            ),
            (
                vec![("a", &b""[..], tar::EntryType::Link, Some("/etc/shadow"))],
                "not an earlier member",
            ),
            (
                vec![("dev", &b""[..], tar::EntryType::Char, None)],
                "only files, directories and links",
            ),
        ] {
            let p = dir.path().join("h.tar");
            std::fs::write(&p, tar_of(&members)).unwrap();
            let e = extract(&entry(), &p).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(e.contains("a.tar.gz"), "{e}");
        }
    }
}
