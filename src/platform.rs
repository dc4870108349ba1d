//! `os/arch[/variant]` platforms, as written in specs and image indexes.

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
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::linux(arch)
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

const KNOWN_ARCHES: &[&str] = &[
    "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "loong64",
];

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
        if !KNOWN_ARCHES.contains(&parts[1]) {
            return Err(Error::input(format!(
                "unknown architecture `{}` in platform `{s}` (known: {})",
                parts[1],
                KNOWN_ARCHES.join(", ")
            )));
        }
        Ok(Platform {
            os: parts[0].into(),
            arch: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd65".parse::<Platform>().is_err());
        assert!("windows/amd64".parse::<Platform>().is_err());
        assert!(Platform::linux("arm64").matches("linux", "arm64", Some("v8")));
    }
}
