//! Wheel file names and the ordered list of wheel tags a target interpreter accepts.

pub(crate) use kiln_fs::probe::Libc;
use std::collections::HashMap;

use kiln_core::error::Result;

use crate::PipError;

/// `name-version(-build)?-pyTag-abiTag-platTag.whl`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WheelName {
    /// As written in the file name (underscores), not normalised.
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) python: Vec<String>,
    pub(crate) abi: Vec<String>,
    pub(crate) platform: Vec<String>,
}

impl WheelName {
    pub(crate) fn parse(filename: &str) -> Result<Self> {
        let bad = || PipError::InvalidWheelName {
            filename: filename.to_string(),
        };
        let [name, version, py, abi, plat] = Self::fields(filename).ok_or_else(bad)?;
        let split = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        Ok(WheelName {
            name: name.to_string(),
            version: version.to_string(),
            python: split(py),
            abi: split(abi),
            platform: split(plat),
        })
    }

    /// The version a wheel's file name gives, as [`WheelName::parse`] would
    /// read it, without taking the rest apart: an index page names
    /// thousands of files, and most are only looked at for their version.
    pub(crate) fn version_of(filename: &str) -> Option<&str> {
        Self::fields(filename).map(|[_, version, ..]| version)
    }

    /// Name, version, python, abi and platform of `<name>-<version>[-<build>]-<py>-<abi>-<plat>.whl`.
    fn fields(filename: &str) -> Option<[&str; 5]> {
        let stem = filename.strip_suffix(".whl")?;
        let mut got: [&str; 6] = [""; 6];
        let mut n = 0;
        for p in stem.split('-') {
            if n == got.len() {
                return None;
            }
            got[n] = p;
            n += 1;
        }
        let fields = match n {
            5 => [got[0], got[1], got[2], got[3], got[4]],
            6 => [got[0], got[1], got[3], got[4], got[5]],
            _ => return None,
        };
        (!fields[0].is_empty() && !fields[1].is_empty()).then_some(fields)
    }

    /// Whether it fits every Python 3 interpreter and platform
    /// (`py3-none-any`, `py2.py3-none-any`; not `py2-none-any`).
    pub(crate) fn is_pure_python3(&self) -> bool {
        self.python.iter().any(|p| p == "py3") && self.abi == ["none"] && self.platform == ["any"]
    }

    /// Every `py-abi-plat` triple the (possibly compressed) tag set stands for.
    pub(crate) fn tags(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.python {
            for a in &self.abi {
                for pl in &self.platform {
                    out.push(format!("{p}-{a}-{pl}"));
                }
            }
        }
        out
    }
}

/// Ordered compatible tags, most preferred first, with a rank lookup.
#[derive(Clone, Debug)]
pub(crate) struct TagSet {
    ordered: Vec<String>,
    rank: HashMap<String, usize>,
}

impl TagSet {
    /// Tags for CPython 3.`minor` on Linux `arch` (`x86_64`, `aarch64` ...), in
    /// the order `packaging.tags.sys_tags()` yields them.
    pub(crate) fn cpython(minor: u32, arch: &str, libc: &Libc) -> Self {
        let plats = platforms(arch, libc);
        let cp = format!("cp3{minor}");
        let mut t = Vec::new();
        for abi in [cp.clone(), "abi3".into(), "none".into()] {
            for p in &plats {
                t.push(format!("{cp}-{abi}-{p}"));
            }
        }
        for m in (2..minor).rev() {
            for p in &plats {
                t.push(format!("cp3{m}-abi3-{p}"));
            }
        }
        let mut pys = vec![format!("py3{minor}"), "py3".to_string()];
        pys.extend((0..minor).rev().map(|m| format!("py3{m}")));
        for py in &pys {
            for p in &plats {
                t.push(format!("{py}-none-{p}"));
            }
        }
        t.push(format!("{cp}-none-any"));
        for py in &pys {
            t.push(format!("{py}-none-any"));
        }
        let mut rank = HashMap::new();
        for (i, tag) in t.iter().enumerate() {
            rank.entry(tag.clone()).or_insert(i);
        }
        TagSet { ordered: t, rank }
    }

    /// Best (lowest) rank of any of the wheel's tags; None if incompatible.
    pub(crate) fn rank(&self, wheel: &WheelName) -> Option<usize> {
        wheel
            .tags()
            .iter()
            .filter_map(|t| self.rank.get(t).copied())
            .min()
    }

    /// A short human summary for error messages (first few + count).
    pub(crate) fn summary(&self) -> String {
        let head: Vec<&str> = self.ordered.iter().take(4).map(String::as_str).collect();
        format!(
            "{} … {} ({} tags)",
            head.join(", "),
            self.ordered.last().map(String::as_str).unwrap_or(""),
            self.ordered.len()
        )
    }
}

/// Platform tags, most specific first.
fn platforms(arch: &str, libc: &Libc) -> Vec<String> {
    let mut out = Vec::new();
    match *libc {
        Libc::Glibc { major: 2, minor } => {
            // manylinux_2_5 is the oldest for x86 (manylinux1); others start at 2_17.
            let floor = if matches!(arch, "x86_64" | "i686") {
                5
            } else {
                17
            };
            for m in (floor..=minor).rev() {
                out.push(format!("manylinux_2_{m}_{arch}"));
                let legacy = match m {
                    17 => Some("manylinux2014"),
                    12 => Some("manylinux2010"),
                    5 => Some("manylinux1"),
                    _ => None,
                };
                if let Some(l) = legacy {
                    out.push(format!("{l}_{arch}"));
                }
            }
        }
        Libc::Musl { major: 1, minor } => {
            for m in (0..=minor).rev() {
                out.push(format!("musllinux_1_{m}_{arch}"));
            }
        }
        _ => {}
    }
    out.push(format!("linux_{arch}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        let w = WheelName::parse(
            "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        )
        .unwrap();
        assert_eq!(w.name, "numpy");
        assert_eq!(w.platform.len(), 2);
        let b = WheelName::parse("foo-1.0-1build-py2.py3-none-any.whl").unwrap();
        assert_eq!(b.tags(), vec!["py2-none-any", "py3-none-any"]);
        assert_eq!(
            WheelName::version_of("foo-1.0-1build-py2.py3-none-any.whl"),
            Some("1.0")
        );
        assert_eq!(WheelName::version_of("foo-2-py3-none-any.whl"), Some("2"));
        assert_eq!(WheelName::version_of("a-1-2-3-4-5-6.whl"), None);
        for bad in ["foo-1.0.tar.gz", "foo-1.0-py3.whl", "-1.0-py3-none-any.whl"] {
            assert_eq!(WheelName::version_of(bad), None);
            let err = WheelName::parse(bad).unwrap_err();
            assert!(
                matches!(err.downcast_ref::<PipError>(), Some(PipError::InvalidWheelName { filename }) if filename == bad),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("`{bad}` is not a valid wheel file name")
            );
        }
    }

    #[test]
    fn glibc_tags_in_order() {
        let t = TagSet::cpython(
            11,
            "x86_64",
            &Libc::Glibc {
                major: 2,
                minor: 36,
            },
        );
        let o = &t.ordered;
        assert_eq!(o[0], "cp311-cp311-manylinux_2_36_x86_64");
        assert!(o.contains(&"cp311-cp311-manylinux2014_x86_64".to_string()));
        assert!(o.contains(&"cp38-abi3-manylinux_2_17_x86_64".to_string()));
        assert_eq!(o.last().unwrap(), "py30-none-any");
        let rank = |f: &str| t.rank(&WheelName::parse(f).unwrap());
        let native = rank("x-1-cp311-cp311-manylinux_2_17_x86_64.whl").unwrap();
        let abi3 = rank("x-1-cp38-abi3-manylinux_2_17_x86_64.whl").unwrap();
        let pure = rank("x-1-py3-none-any.whl").unwrap();
        assert!(native < abi3 && abi3 < pure);
        assert_eq!(
            rank("x-1-cp311-cp311-manylinux_2_38_x86_64.whl"),
            None,
            "newer glibc"
        );
        assert_eq!(
            rank("x-1-cp312-cp312-manylinux_2_17_x86_64.whl"),
            None,
            "other python"
        );
        assert_eq!(rank("x-1-cp311-cp311-musllinux_1_1_x86_64.whl"), None);
        assert_eq!(rank("x-1-cp311-cp311-manylinux_2_17_aarch64.whl"), None);
    }

    #[test]
    fn musl_and_unknown() {
        let t = TagSet::cpython(12, "aarch64", &Libc::Musl { major: 1, minor: 2 });
        assert_eq!(t.ordered[0], "cp312-cp312-musllinux_1_2_aarch64");
        let u = TagSet::cpython(12, "x86_64", &Libc::Unknown);
        assert!(u.ordered.iter().all(|t| !t.contains("manylinux")));
    }
}

#[cfg(test)]
mod mutation_tests {
    /// Wheel file names never panic on mangled input.
    #[test]
    fn wheel_names_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"numpy-2.0.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            b"pkg-1.0-1build-py2.py3-none-any.whl",
        ];
        for m in kiln_core::mutate::mutants(seeds, 4000) {
            if let Ok(w) = super::WheelName::parse(&String::from_utf8_lossy(&m)) {
                let _ = w.tags();
            }
        }
    }
}
