//! What the solver is told about the machine: the image's platform as a conda
//! subdir and the virtual packages (`__glibc`, `__linux`, `__unix`,
//! `__archspec`, `__cuda`) of the *target*, never of the host running kiln.

use std::collections::BTreeMap;
use std::str::FromStr;

use rattler_conda_types::package::BuildString;
use rattler_conda_types::{GenericVirtualPackage, PackageName, Subdir, Version};

use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_fs::probe::Libc;
use kiln_fs::rootfs::Rootfs;

use crate::CondaError;

/// The `__linux` version assumed when the spec does not give one: the kernel
/// of the machine that will run the image is unknown at build time, and conda
/// packages that pin `__linux` ask for old minimums.
pub(crate) const DEFAULT_LINUX: &str = "5.10";

/// `linux/amd64` → `linux-64`, and so on.
pub(crate) fn subdir(platform: &Platform) -> Result<Subdir> {
    if platform.os != "linux" {
        return Err(CondaError::NotLinux {
            platform: platform.to_string(),
        }
        .into());
    }
    let name = kiln_core::Arch::from_platform(platform)
        .ok()
        .and_then(|a| a.conda_subdir())
        .ok_or_else(|| CondaError::NoSubdir {
            arch: platform.arch.clone(),
        })?;
    Ok(
        Subdir::from_str(name).map_err(|e| CondaError::UnknownSubdir {
            name: name.to_string(),
            reason: e.to_string(),
        })?,
    )
}

/// `__archspec`'s build string: the generic microarchitecture of the platform.
fn archspec(platform: &Platform) -> &'static str {
    use kiln_core::Arch;
    match Arch::from_platform(platform) {
        Ok(Arch::I386) => "x86",
        Ok(a) => a.machine(),
        Err(_) => "armv7l",
    }
}

/// Virtual packages of the image. `overrides` (the spec's
/// `virtual-packages` table: `glibc`, `linux`, `cuda`, `archspec`) wins over
/// what is read from the base; `__glibc` comes from the image's C library.
pub fn virtual_packages(
    fs: &Rootfs,
    platform: &Platform,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<GenericVirtualPackage>> {
    for k in overrides.keys() {
        if !matches!(k.as_str(), "glibc" | "linux" | "cuda" | "archspec") {
            return Err(CondaError::UnknownVirtualPackage { key: k.clone() }.into());
        }
    }
    let glibc = match overrides.get("glibc") {
        Some(v) => Some(v.clone()),
        None => match kiln_fs::probe::detect_libc(fs, kiln_core::Arch::from_platform(platform)?) {
            Libc::Glibc { major, minor } => Some(format!("{major}.{minor}")),
            _ => None,
        },
    };
    let mut out = vec![
        virtual_package("__unix", "0", "0")?,
        virtual_package(
            "__linux",
            overrides
                .get("linux")
                .map(String::as_str)
                .unwrap_or(DEFAULT_LINUX),
            "0",
        )?,
        virtual_package(
            "__archspec",
            "1",
            overrides
                .get("archspec")
                .map(String::as_str)
                .unwrap_or(archspec(platform)),
        )?,
    ];
    if let Some(v) = glibc {
        out.push(virtual_package("__glibc", &v, "0")?);
    }
    if let Some(v) = overrides.get("cuda") {
        out.push(virtual_package("__cuda", v, "0")?);
    }
    Ok(out)
}

fn virtual_package(name: &str, version: &str, build: &str) -> Result<GenericVirtualPackage> {
    Ok(GenericVirtualPackage {
        name: PackageName::new_unchecked(name),
        version: Version::from_str(version).map_err(|e| CondaError::BadVirtualPackageVersion {
            name: name.trim_start_matches("__").to_string(),
            version: version.to_string(),
            reason: e.to_string(),
        })?,
        build_string: BuildString::new_unchecked(build),
    })
}

/// Human-readable list for reports and errors: `__glibc=2.36, __unix=0 ...`.
pub(crate) fn describe(v: &[GenericVirtualPackage]) -> String {
    v.iter()
        .map(|p| format!("{}={}", p.name.as_normalized(), p.version))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_comes_from_the_image_and_overrides_win() {
        let mut fs = Rootfs::default();
        fs.insert_file(
            "/var/lib/dpkg/status",
            b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\n\n",
        );
        let p = Platform::linux("amd64");
        let v = virtual_packages(&fs, &p, &BTreeMap::new()).unwrap();
        let d = describe(&v);
        assert!(d.contains("__glibc=2.36"), "{d}");
        assert!(d.contains("__linux=5.10"), "{d}");
        assert!(!d.contains("__cuda"), "{d}");
        let o = BTreeMap::from([
            ("glibc".to_string(), "2.28".to_string()),
            ("cuda".to_string(), "12.2".to_string()),
        ]);
        let d = describe(&virtual_packages(&fs, &p, &o).unwrap());
        assert!(
            d.contains("__glibc=2.28") && d.contains("__cuda=12.2"),
            "{d}"
        );
        let bad = BTreeMap::from([("osx".to_string(), "13".to_string())]);
        let err = virtual_packages(&fs, &p, &bad).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::UnknownVirtualPackage { key }) if key == "osx"
            ),
            "{err:?}"
        );
        let bad = BTreeMap::from([("cuda".to_string(), "twelve..".to_string())]);
        let err = virtual_packages(&fs, &p, &bad).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadVirtualPackageVersion { name, version, .. })
                    if name == "cuda" && version == "twelve.."
            ),
            "{err:?}"
        );
    }

    #[test]
    fn subdirs() {
        assert_eq!(
            subdir(&Platform::linux("amd64")).unwrap().to_string(),
            "linux-64"
        );
        assert_eq!(
            subdir(&Platform::linux("arm64")).unwrap().to_string(),
            "linux-aarch64"
        );
        let err = subdir(&Platform::linux("mips")).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::NoSubdir { arch }) if arch == "mips"
            ),
            "{err:?}"
        );
        let windows = Platform {
            os: "windows".into(),
            ..Platform::linux("amd64")
        };
        let err = subdir(&windows).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::NotLinux { .. })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "[conda] platform windows/amd64: kiln builds Linux images only"
        );
    }
}
