//! Reading a `.deb`: the ar container, `control.tar.*` (control, md5sums,
//! conffiles, maintainer scripts) and `data.tar.*` (the files), decompressed
//! from xz, zstd or gzip. Hostile archives are refused: paths that climb out
//! with `..`, device nodes, and hard links to files outside the package.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub enum FileKind {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(String),
}

#[derive(Clone, Debug)]
pub struct DebFile {
    /// Normalised, relative to `/`, no trailing slash (`usr/bin/python3.11`).
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

#[derive(Debug)]
pub struct Deb {
    /// Members of control.tar by name (`control`, `md5sums`, `postinst` ...).
    pub control: BTreeMap<String, Vec<u8>>,
    pub files: Vec<DebFile>,
}

fn decompressor<'a>(name: &str, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(if name.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(r))
    } else if name.ends_with(".zst") {
        Box::new(
            zstd::stream::read::Decoder::new(r).map_err(|e| Error::input(format!("zstd: {e}")))?,
        )
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if name.ends_with(".tar") {
        Box::new(r)
    } else {
        return Err(Error::input(format!(
            "unsupported member compression `{name}`"
        )));
    })
}

/// Normalise a member path; `None` for the root, an error when it climbs out.
pub fn clean_path(raw: &str) -> std::result::Result<Option<String>, String> {
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(format!("path `{raw}` escapes the root")),
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    })
}

pub fn read_deb(bytes: &[u8], what: &str) -> Result<Deb> {
    let bad = |m: String| Error::input(format!("{what}: {m}"));
    let mut ar = ar::Archive::new(bytes);
    let mut control = BTreeMap::new();
    let mut files = Vec::new();
    let mut saw_data = false;
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(|e| bad(format!("not a Debian package: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if name.starts_with("control.tar") {
            let mut t = tar::Archive::new(decompressor(&name, entry)?);
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
            files = read_data(decompressor(&name, entry)?, what)?;
        }
    }
    if !control.contains_key("control") || !saw_data {
        return Err(bad(
            "not a Debian package (control or data member missing)".into()
        ));
    }
    Ok(Deb { control, files })
}

fn read_data(r: impl Read, what: &str) -> Result<Vec<DebFile>> {
    let bad = |m: String| Error::input(format!("{what}: {m}"));
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
        let Some(path) = clean_path(&raw).map_err(bad)? else {
            continue;
        };
        let h = m.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        let kind = match h.entry_type() {
            tar::EntryType::Directory => FileKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut b = Vec::with_capacity(h.size().unwrap_or(0) as usize);
                m.read_to_end(&mut b)
                    .map_err(|e| bad(format!("corrupt data.tar: {e}")))?;
                FileKind::File(Arc::new(b))
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
                let target = clean_path(&t).map_err(bad)?.unwrap_or_default();
                let i = *index.get(&target).ok_or_else(|| {
                    bad(format!("hard link {path} points outside the package ({t})"))
                })?;
                // Stored as a copy: layers stay simple, the content is identical.
                out[i].kind.clone()
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(bad(format!("refusing device node or fifo `{path}`")));
            }
            other => {
                return Err(bad(format!(
                    "unsupported tar entry type {other:?} for `{path}`"
                )))
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
            clean_path("./usr/bin/").unwrap().as_deref(),
            Some("usr/bin")
        );
        assert_eq!(clean_path("./").unwrap(), None);
        assert!(clean_path("./../etc/passwd").is_err());
        assert!(clean_path("usr/../../x").is_err());
    }
}
