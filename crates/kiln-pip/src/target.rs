//! The target Python environment, read from the image's filesystem without running it.

use std::collections::BTreeMap;

use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_fs::rootfs::Rootfs;

use super::metadata::CoreMetadata;
use super::tags::{Libc, TagSet};
use crate::PipError;
use kiln_fs::probe::{detect_libc, dpkg_version, exists, list, read};

/// Where an install puts things (absolute image paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scheme {
    pub(crate) purelib: String,
    pub(crate) platlib: String,
    pub(crate) scripts: String,
    pub(crate) data: String,
    /// Directory under which `<dist name>/` headers go.
    pub(crate) headers: String,
}

/// A virtual environment kiln creates for the install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Venv {
    pub(crate) path: String,
}

#[derive(Clone, Debug)]
pub struct PythonTarget {
    /// The image's interpreter, e.g. `/usr/bin/python3.11`.
    pub interpreter: String,
    pub(crate) minor: u32,
    /// `3.11.2`; patch level is `0` when the image does not say.
    pub(crate) full_version: String,
    /// `x86_64`, `aarch64`, ...
    pub(crate) machine: String,
    pub(crate) libc: Libc,
    pub(crate) scheme: Scheme,
    pub(crate) venv: Option<Venv>,
    /// Already installed: normalised name → (version, metadata if readable).
    pub(crate) installed: BTreeMap<String, (String, Option<CoreMetadata>)>,
}

/// Where kiln looks for an interpreter, in order.
const PREFIXES: &[&str] = &["/usr/local", "/usr"];

impl PythonTarget {
    /// `3.11.2` (patch `0` when the image does not say).
    pub fn full_version(&self) -> &str {
        &self.full_version
    }

    /// Inspect the image. `target` is `system`, an absolute venv path, or a
    /// conda prefix (a directory holding `conda-meta`), whose own Python is used.
    pub(crate) fn detect(rootfs: &Rootfs, platform: &Platform, target: &str) -> Result<Self> {
        let arch = kiln_core::Arch::from_platform(platform)?;
        let machine = arch.machine().to_string();
        // A conda prefix is its own interpreter prefix (not a venv).
        let conda_prefix = (target != "system"
            && is_dir(
                rootfs,
                &format!("{}/conda-meta", target.trim_end_matches('/')),
            ))
        .then(|| target.trim_end_matches('/').to_string());
        let searched: Vec<&str> = match &conda_prefix {
            Some(p) => vec![p.as_str()],
            None => PREFIXES.to_vec(),
        };
        let (prefix, minor) =
            find_interpreter(rootfs, &searched).ok_or_else(|| PipError::NoInterpreter {
                prefixes: searched.iter().map(|p| p.to_string()).collect(),
            })?;
        let interpreter = format!("{prefix}/bin/python3.{minor}");
        let debian = prefix == "/usr"
            && (is_dir(rootfs, "/usr/lib/python3/dist-packages")
                || exists(rootfs, "/etc/debian_version"));
        let full_version = full_version(rootfs, &prefix, minor);
        let libc = detect_libc(rootfs, arch);
        let pyver = format!("python3.{minor}");

        let (scheme, venv, site_dirs) = if target == "system" || conda_prefix.is_some() {
            let scheme = if debian {
                let site = format!("/usr/local/lib/{pyver}/dist-packages");
                Scheme {
                    purelib: site.clone(),
                    platlib: site,
                    scripts: "/usr/local/bin".into(),
                    data: "/usr/local".into(),
                    headers: format!("/usr/local/include/{pyver}"),
                }
            } else {
                let site = format!("{prefix}/lib/{pyver}/site-packages");
                Scheme {
                    purelib: site.clone(),
                    platlib: site,
                    scripts: format!("{prefix}/bin"),
                    data: prefix.clone(),
                    headers: format!("{prefix}/include/{pyver}"),
                }
            };
            let mut dirs = vec![scheme.purelib.clone()];
            if debian {
                dirs.push("/usr/lib/python3/dist-packages".into());
                dirs.push(format!("/usr/lib/{pyver}/dist-packages"));
            }
            (scheme, None, dirs)
        } else {
            let path = target.trim_end_matches('/').to_string();
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(PipError::InvalidTarget {
                    target: target.to_string(),
                }
                .into());
            }
            let site = format!("{path}/lib/{pyver}/site-packages");
            let scheme = Scheme {
                purelib: site.clone(),
                platlib: site.clone(),
                scripts: format!("{path}/bin"),
                data: path.clone(),
                headers: format!("{path}/include/site/{pyver}"),
            };
            (scheme, Some(Venv { path }), vec![site])
        };
        let installed = installed_dists(rootfs, &site_dirs);
        Ok(PythonTarget {
            interpreter,
            minor,
            full_version,
            machine,
            libc,
            scheme,
            venv,
            installed,
        })
    }

    /// `#!` line for scripts: the venv's python, else the image's interpreter.
    pub(crate) fn shebang(&self) -> String {
        match &self.venv {
            Some(v) => format!("#!{}/bin/python", v.path),
            None => format!("#!{}", self.interpreter),
        }
    }

    pub(crate) fn tags(&self) -> TagSet {
        TagSet::cpython(self.minor, &self.machine, &self.libc)
    }
}

fn is_dir(fs: &Rootfs, p: &str) -> bool {
    matches!(fs.resolve(p), Some((_, kiln_fs::rootfs::Node::Dir)))
        || fs.paths().any(|(k, _)| k.starts_with(&format!("{p}/")))
}

fn find_interpreter(rootfs: &Rootfs, prefixes: &[&str]) -> Option<(String, u32)> {
    for prefix in prefixes {
        for minor in (6..=20).rev() {
            let exe = format!("{prefix}/bin/python3.{minor}");
            let stdlib = format!("{prefix}/lib/python3.{minor}/os.py");
            if exists(rootfs, &exe) && exists(rootfs, &stdlib) {
                return Some((prefix.to_string(), minor));
            }
        }
    }
    None
}

/// `PY_VERSION` from patchlevel.h, else the dpkg/apk version of the python package.
fn full_version(rootfs: &Rootfs, prefix: &str, minor: u32) -> String {
    let header = format!("{prefix}/include/python3.{minor}/patchlevel.h");
    if let Some(text) = read(rootfs, &header).map(String::from_utf8_lossy) {
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("#define PY_VERSION") {
                if let Some(v) = numeric_version(rest.trim().trim_matches('"'), minor) {
                    return v;
                }
            }
        }
    }
    for pkg in [
        format!("python3.{minor}-minimal"),
        format!("python3.{minor}"),
    ] {
        if let Some(v) = dpkg_version(rootfs, &pkg).and_then(|v| numeric_version(&v, minor)) {
            return v;
        }
    }
    format!("3.{minor}.0")
}

/// `*.dist-info` / `*.egg-info` found in `dirs`; the first directory wins.
fn installed_dists(
    rootfs: &Rootfs,
    dirs: &[String],
) -> BTreeMap<String, (String, Option<CoreMetadata>)> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        for entry in list(rootfs, dir) {
            let (stem, meta_path) = if let Some(s) = entry.strip_suffix(".dist-info") {
                (s, format!("{dir}/{entry}/METADATA"))
            } else if let Some(s) = entry.strip_suffix(".egg-info") {
                let p = format!("{dir}/{entry}");
                if is_dir(rootfs, &p) {
                    (s, format!("{p}/PKG-INFO"))
                } else {
                    (s, p)
                }
            } else {
                continue;
            };
            let meta = rootfs
                .read(&meta_path)
                .and_then(|b| CoreMetadata::parse(b).ok());
            let (name, version) = match &meta {
                Some(m) => (m.name.clone(), m.version.clone()),
                None => {
                    // `name-version` (egg-info may add `-pyX.Y`).
                    let mut it = stem.splitn(3, '-');
                    match (it.next(), it.next()) {
                        (Some(n), Some(v)) => (n.to_string(), v.to_string()),
                        _ => continue,
                    }
                }
            };
            out.entry(super::normalize(&name))
                .or_insert((version, meta));
        }
    }
    out
}

/// The leading `3.X.Y` of a version string, if it is for Python 3.`minor`.
fn numeric_version(v: &str, minor: u32) -> Option<String> {
    let v: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    v.starts_with(&format!("3.{minor}.")).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian() -> Rootfs {
        let mut fs = Rootfs::default();
        fs.insert_file("/usr/bin/python3.11", b"ELF");
        fs.insert_file("/usr/lib/python3.11/os.py", b"");
        fs.insert_file("/etc/debian_version", b"12.5\n");
        fs.insert_file(
            "/var/lib/dpkg/status",
            b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u4\n\nPackage: python3.11-minimal\nStatus: install ok installed\nVersion: 3.11.2-6+deb12u1\n",
        );
        fs.insert_file(
            "/usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n",
        );
        fs.insert(
            "/usr/lib/python3/dist-packages/six-1.16.0.dist-info",
            kiln_fs::rootfs::Node::Dir,
        );
        fs.insert("/usr/lib/python3/dist-packages", kiln_fs::rootfs::Node::Dir);
        fs
    }

    #[test]
    fn debian_system_python() {
        let t = PythonTarget::detect(&debian(), &Platform::linux("amd64"), "system").unwrap();
        assert_eq!(t.interpreter, "/usr/bin/python3.11");
        assert_eq!(t.full_version, "3.11.2");
        assert_eq!(
            t.libc,
            Libc::Glibc {
                major: 2,
                minor: 36
            }
        );
        assert_eq!(t.scheme.purelib, "/usr/local/lib/python3.11/dist-packages");
        assert_eq!(t.scheme.scripts, "/usr/local/bin");
        assert_eq!(t.installed.get("six").unwrap().0, "1.16.0");
        assert_eq!(t.shebang(), "#!/usr/bin/python3.11");
    }

    #[test]
    fn venv_and_missing_python() {
        let t = PythonTarget::detect(&debian(), &Platform::linux("arm64"), "/opt/venv").unwrap();
        assert_eq!(t.scheme.purelib, "/opt/venv/lib/python3.11/site-packages");
        assert_eq!(t.machine, "aarch64");
        assert!(
            t.installed.is_empty(),
            "a venv does not see system packages"
        );
        assert_eq!(t.shebang(), "#!/opt/venv/bin/python");
        let err = PythonTarget::detect(&Rootfs::default(), &Platform::linux("amd64"), "system")
            .unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::NoInterpreter { prefixes }) if prefixes == &["/usr/local", "/usr"]),
            "{err:?}"
        );
        assert!(err.to_string().contains(
            "none found at /usr/local/bin/python3.N with /usr/local/lib/python3.N/os.py or /usr/bin/python3.N"
        ));
    }

    #[test]
    fn target_must_be_system_or_an_absolute_venv() {
        for bad in ["venv", "/opt/../etc"] {
            let err = PythonTarget::detect(&debian(), &Platform::linux("amd64"), bad).unwrap_err();
            assert!(
                matches!(err.downcast_ref::<PipError>(), Some(PipError::InvalidTarget { target }) if target == bad),
                "{err:?}"
            );
            assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        }
    }
}
