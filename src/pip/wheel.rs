//! Reading wheels safely: member-name checks (no traversal, absolute paths or symlinks), METADATA, entry points.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// One regular file from a wheel.
#[derive(Clone, Debug)]
pub struct WheelFile {
    /// Member name, `/`-separated, relative.
    pub path: String,
    pub data: Vec<u8>,
    pub executable: bool,
}

/// Refuse member names that could escape the install directory.
pub fn check_member_name(wheel: &str, name: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::input(format!(
            "wheel {wheel}: member `{}` {why}; refusing to install it",
            name.escape_default()
        ))
    };
    if name.is_empty() {
        return Err(bad("has an empty name"));
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(bad("is an absolute path"));
    }
    if name.contains('\\') {
        return Err(bad("contains a backslash"));
    }
    if name.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Err(bad("starts with a drive letter"));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(bad("contains `..` (path traversal)"));
    }
    Ok(())
}

fn open(path: &Path, wheel: &str) -> Result<zip::ZipArchive<File>> {
    let f = File::open(path).map_err(|e| Error::Io {
        context: format!("opening {wheel} in the cache"),
        source: e,
    })?;
    zip::ZipArchive::new(f)
        .map_err(|e| Error::input(format!("wheel {wheel} is not a valid zip file: {e}")))
}

/// Every regular file of the wheel, in archive order, checked.
pub fn read_wheel(path: &Path, wheel: &str) -> Result<Vec<WheelFile>> {
    let mut ar = open(path, wheel)?;
    let mut out = Vec::with_capacity(ar.len());
    let mut seen = HashSet::new();
    for i in 0..ar.len() {
        let mut f = ar
            .by_index(i)
            .map_err(|e| Error::input(format!("wheel {wheel}: member {i}: {e}")))?;
        let name = f
            .name()
            .map_err(|e| Error::input(format!("wheel {wheel}: member {i} has a bad name: {e}")))?
            .to_string();
        check_member_name(wheel, &name)?;
        let mode = f.unix_mode().unwrap_or(0);
        if mode & 0o170000 == 0o120000 {
            return Err(Error::input(format!(
                "wheel {wheel}: member `{name}` is a symlink; wheels may only contain regular files"
            )));
        }
        if f.is_dir() || name.ends_with('/') {
            continue;
        }
        let clean = name
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect::<Vec<_>>()
            .join("/");
        if !seen.insert(clean.clone()) {
            return Err(Error::input(format!(
                "wheel {wheel}: member `{name}` appears twice"
            )));
        }
        let mut data = Vec::with_capacity(f.size() as usize);
        std::io::copy(&mut f, &mut data)
            .map_err(|e| Error::input(format!("wheel {wheel}: reading `{name}`: {e}")))?;
        out.push(WheelFile {
            path: clean,
            data,
            executable: mode & 0o111 != 0,
        });
    }
    Ok(out)
}

/// `*.dist-info/METADATA` from a wheel on disk.
pub fn read_metadata_file(path: &Path, wheel: &str) -> Result<Vec<u8>> {
    let mut ar = open(path, wheel)?;
    let name = ar
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| {
            let mut parts = n.split('/');
            matches!((parts.next(), parts.next(), parts.next()), (Some(d), Some("METADATA"), None) if d.ends_with(".dist-info"))
        })
        .map(|n| n.into_owned())
        .ok_or_else(|| Error::input(format!("wheel {wheel} has no .dist-info/METADATA")))?;
    let f = ar
        .by_name(&name)
        .map_err(|e| Error::input(format!("wheel {wheel}: {e}")))?;
    super::index::read_all(f, 64 << 20)
        .map_err(|e| Error::input(format!("wheel {wheel}: reading METADATA: {e}")))
}

/// `[group]` / `name = module:attr [extras]` entries of entry_points.txt.
pub fn parse_entry_points(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut group = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.starts_with('[') && t.ends_with(']') {
            group = t[1..t.len() - 1].trim().to_string();
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            out.push((group.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_with(entries: &[(&str, u32)]) -> tempfile::NamedTempFile {
        let t = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(t.reopen().unwrap());
        for (name, mode) in entries {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            if mode & 0o170000 == 0o120000 {
                z.add_symlink(*name, "/etc/passwd", opts).unwrap();
            } else {
                z.start_file(*name, opts).unwrap();
                z.write_all(b"x").unwrap();
            }
        }
        z.finish().unwrap();
        t
    }

    #[test]
    fn traversal_rejected() {
        for bad in [
            "../evil.py",
            "pkg/../../evil.py",
            "/etc/passwd",
            "a\\..\\b",
            "C:/x",
        ] {
            assert!(check_member_name("w.whl", bad).is_err(), "{bad}");
        }
        check_member_name("w.whl", "pkg/mod.py").unwrap();
        let z = zip_with(&[("ok.py", 0o644), ("../../etc/cron.d/x", 0o644)]);
        let err = read_wheel(z.path(), "evil-1.0-py3-none-any.whl").unwrap_err();
        assert!(err.to_string().contains("path traversal"), "{err}");
        assert!(matches!(err, Error::Input(_)));
    }

    #[test]
    fn symlinks_rejected_and_modes_kept() {
        let z = zip_with(&[("pkg/link", 0o120777)]);
        let err = read_wheel(z.path(), "evil-1.0-py3-none-any.whl").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let z = zip_with(&[("pkg/run.sh", 0o755), ("pkg/a.py", 0o644)]);
        let files = read_wheel(z.path(), "ok-1.0-py3-none-any.whl").unwrap();
        assert!(files[0].executable && !files[1].executable);
    }

    #[test]
    fn entry_points() {
        let e = parse_entry_points("[console_scripts]\nfoo = foo.cli:main\n\n[gui_scripts]\nbar=bar:run [gui]\n[other]\nx = y\n");
        assert_eq!(
            e[0],
            (
                "console_scripts".into(),
                "foo".into(),
                "foo.cli:main".into()
            )
        );
        assert_eq!(e[1].2, "bar:run [gui]");
        assert_eq!(e.len(), 3);
    }
}
