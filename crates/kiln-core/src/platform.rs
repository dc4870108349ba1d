//! `os/arch[/variant]` platforms, as written in specs and image indexes,
//! and [`Arch`]: one CPU architecture with every name it goes by. Each
//! ecosystem spells an architecture its own way (OCI `arm64`, Debian
//! `arm64`, conda `linux-aarch64`, wheels `aarch64`, GNU
//! `aarch64-linux-gnu`, ELF `EM_AARCH64`); the mappings live here once so
//! they cannot drift apart.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(arch: &str) -> Self {
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }

    /// The platform kiln runs on, used when nothing else says.
    pub fn host() -> Self {
        Platform::linux(Arch::host().oci())
    }

    /// Whether this is the host's platform (OS, architecture and variant):
    /// the image's own binaries run here.
    pub fn is_host(&self) -> bool {
        *self == Platform::host()
    }

    /// Does an image for `other` satisfy a request for `self`? A request
    /// without variant accepts any variant (arm64 images are often `v8`).
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.arch == arch
            && match (&self.variant, variant) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            Error::input(format!(
                "invalid platform `{s}`: expected OS/ARCH[/VARIANT] such as linux/amd64 or linux/arm64"
            ))
        };
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        if parts[0] != "linux" {
            return Err(Error::input(format!(
                "unsupported platform `{s}`: only linux images are supported"
            )));
        }
        let known = Arch::oci_names();
        if !known.contains(&parts[1]) {
            return Err(Error::input(format!(
                "unknown architecture `{}` in platform `{s}` (known: {})",
                parts[1],
                known.join(", ")
            )));
        }
        Ok(Platform {
            os: parts[0].into(),
            arch: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

/// A Linux CPU architecture kiln can build for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
    /// 32-bit ARM, hard float (`arm/v7`; Debian `armhf`).
    ArmV7,
    /// 32-bit ARM v6 (`arm/v6`; Raspberry Pi OS' `armhf`, conda `linux-armv6l`).
    ArmV6,
    /// 32-bit ARM, soft float (`arm/v5`; Debian `armel`).
    ArmV5,
    I386,
    Ppc64le,
    S390x,
    Riscv64,
    Mips64le,
    Loong64,
}

/// Each architecture with its names, in one table: OCI arch, OCI variant,
/// Debian arch, conda subdir, machine (`uname -m`, wheel platform tags,
/// conda `__archspec`), GNU multiarch triplet, ELF `e_machine`.
struct Names {
    arch: Arch,
    oci: &'static str,
    variant: Option<&'static str>,
    debian: Option<&'static str>,
    conda: Option<&'static str>,
    machine: &'static str,
    triplet: &'static str,
    elf: u16,
}

#[rustfmt::skip]
const TABLE: &[Names] = &[
    Names { arch: Arch::Amd64, oci: "amd64", variant: None, debian: Some("amd64"), conda: Some("linux-64"), machine: "x86_64", triplet: "x86_64-linux-gnu", elf: 62 },
    Names { arch: Arch::Arm64, oci: "arm64", variant: None, debian: Some("arm64"), conda: Some("linux-aarch64"), machine: "aarch64", triplet: "aarch64-linux-gnu", elf: 183 },
    Names { arch: Arch::ArmV7, oci: "arm", variant: Some("v7"), debian: Some("armhf"), conda: Some("linux-armv7l"), machine: "armv7l", triplet: "arm-linux-gnueabihf", elf: 40 },
    Names { arch: Arch::ArmV6, oci: "arm", variant: Some("v6"), debian: None, conda: Some("linux-armv6l"), machine: "armv6l", triplet: "arm-linux-gnueabihf", elf: 40 },
    Names { arch: Arch::ArmV5, oci: "arm", variant: Some("v5"), debian: Some("armel"), conda: None, machine: "armv5tel", triplet: "arm-linux-gnueabi", elf: 40 },
    Names { arch: Arch::I386, oci: "386", variant: None, debian: Some("i386"), conda: Some("linux-32"), machine: "i686", triplet: "i386-linux-gnu", elf: 3 },
    Names { arch: Arch::Ppc64le, oci: "ppc64le", variant: None, debian: Some("ppc64el"), conda: Some("linux-ppc64le"), machine: "ppc64le", triplet: "powerpc64le-linux-gnu", elf: 21 },
    Names { arch: Arch::S390x, oci: "s390x", variant: None, debian: Some("s390x"), conda: Some("linux-s390x"), machine: "s390x", triplet: "s390x-linux-gnu", elf: 22 },
    Names { arch: Arch::Riscv64, oci: "riscv64", variant: None, debian: Some("riscv64"), conda: Some("linux-riscv64"), machine: "riscv64", triplet: "riscv64-linux-gnu", elf: 243 },
    Names { arch: Arch::Mips64le, oci: "mips64le", variant: None, debian: Some("mips64el"), conda: None, machine: "mips64", triplet: "mips64el-linux-gnuabi64", elf: 8 },
    Names { arch: Arch::Loong64, oci: "loong64", variant: None, debian: Some("loong64"), conda: None, machine: "loongarch64", triplet: "loongarch64-linux-gnu", elf: 258 },
];

impl Arch {
    /// Every architecture, in the order of the table.
    pub fn all() -> impl Iterator<Item = Arch> {
        TABLE.iter().map(|n| n.arch)
    }

    fn names(self) -> &'static Names {
        TABLE
            .iter()
            .find(|n| n.arch == self)
            .expect("every Arch has a row in TABLE")
    }

    /// The OCI architecture names kiln accepts in a platform.
    pub fn oci_names() -> Vec<&'static str> {
        let mut v: Vec<&'static str> = TABLE.iter().map(|n| n.oci).collect();
        v.dedup();
        v
    }

    /// The architecture of an OCI platform; `arm` without a variant is v7
    /// (what registries serve for `linux/arm`).
    pub fn from_platform(p: &Platform) -> Result<Arch> {
        let variant = match (p.arch.as_str(), p.variant.as_deref()) {
            ("arm", None) => Some("v7"),
            ("arm64", Some("v8")) => None,
            (_, v) => v,
        };
        TABLE
            .iter()
            .find(|n| n.oci == p.arch && (n.variant.is_none() || n.variant == variant))
            .map(|n| n.arch)
            .ok_or_else(|| Error::input(format!("unknown architecture in platform {p}")))
    }

    /// The architecture Debian calls `name` (`amd64`, `armhf`, `ppc64el` ...).
    pub fn from_debian(name: &str) -> Option<Arch> {
        TABLE
            .iter()
            .find(|n| n.debian == Some(name))
            .map(|n| n.arch)
    }

    /// The machine kiln itself runs on.
    pub fn host() -> Arch {
        match std::env::consts::ARCH {
            "aarch64" => Arch::Arm64,
            "x86" => Arch::I386,
            "arm" => Arch::ArmV7,
            "powerpc64" => Arch::Ppc64le,
            "s390x" => Arch::S390x,
            "riscv64" => Arch::Riscv64,
            "mips64" => Arch::Mips64le,
            "loongarch64" => Arch::Loong64,
            _ => Arch::Amd64,
        }
    }

    /// OCI `architecture` (`amd64`, `arm`, `386` ...).
    pub fn oci(self) -> &'static str {
        self.names().oci
    }

    /// OCI `variant` where one is customary (`v7` for `arm`).
    pub fn oci_variant(self) -> Option<&'static str> {
        self.names().variant
    }

    /// Debian's architecture name; `None` where Debian has no port.
    pub fn debian(self) -> Option<&'static str> {
        self.names().debian
    }

    /// The conda subdir (`linux-64`, `linux-aarch64` ...); `None` where
    /// conda has none.
    pub fn conda_subdir(self) -> Option<&'static str> {
        self.names().conda
    }

    /// `uname -m`: the platform part of wheel tags (`manylinux_2_17_x86_64`)
    /// and conda's `__archspec` build string.
    pub fn machine(self) -> &'static str {
        self.names().machine
    }

    /// The GNU multiarch triplet: `/usr/lib/<triplet>`, `DEB_HOST_MULTIARCH`.
    pub fn gnu_triplet(self) -> &'static str {
        self.names().triplet
    }

    /// ELF `e_machine` of the architecture's binaries.
    pub fn elf_machine(self) -> u16 {
        self.names().elf
    }

    /// The linux platform of this architecture (with its customary variant).
    pub fn platform(self) -> Platform {
        Platform {
            os: "linux".into(),
            arch: self.oci().into(),
            variant: self.oci_variant().map(String::from),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.oci_variant() {
            Some(v) => write!(f, "{}/{v}", self.oci()),
            None => f.write_str(self.oci()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_its_os_arch_and_variant() {
        assert!(Platform::host().is_host());
        let other = if Arch::host() == Arch::Arm64 {
            "amd64"
        } else {
            "arm64"
        };
        assert!(!Platform::linux(other).is_host());
        let mut variant = Platform::host();
        variant.variant = Some("v9".into());
        assert!(!variant.is_host());
    }

    #[test]
    fn parse() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd65".parse::<Platform>().is_err());
        assert!("windows/amd64".parse::<Platform>().is_err());
        assert!(Platform::linux("arm64").matches("linux", "arm64", Some("v8")));
    }

    #[test]
    fn every_arch_round_trips_through_its_names() {
        let all: Vec<Arch> = Arch::all().collect();
        let mut distinct = all.clone();
        distinct.dedup();
        assert_eq!(distinct, all, "each Arch has one row");
        for n in TABLE {
            let a = n.arch;
            assert_eq!(Arch::from_platform(&a.platform()).unwrap(), a);
            if let Some(d) = a.debian() {
                assert_eq!(Arch::from_debian(d), Some(a));
            }
        }
    }

    #[test]
    fn names_agree_with_each_ecosystem() {
        let arm64 = Arch::from_platform(&"linux/arm64/v8".parse().unwrap()).unwrap();
        assert_eq!(arm64, Arch::Arm64);
        assert_eq!(arm64.conda_subdir(), Some("linux-aarch64"));
        assert_eq!(arm64.gnu_triplet(), "aarch64-linux-gnu");
        let arm = Arch::from_platform(&Platform::linux("arm")).unwrap();
        assert_eq!((arm.debian(), arm.machine()), (Some("armhf"), "armv7l"));
        assert_eq!(Arch::from_debian("ppc64el"), Some(Arch::Ppc64le));
        assert_eq!(Arch::I386.machine(), "i686");
        assert_eq!(Arch::I386.gnu_triplet(), "i386-linux-gnu");
        assert_eq!(Arch::Amd64.elf_machine(), 62);
        assert!(Arch::from_platform(&Platform::linux("sparc")).is_err());
    }
}
