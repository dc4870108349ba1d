//! Where images come from and go to: `scratch`, `oci:DIR[:TAG]`,
//! `docker-archive:FILE`, or a registry reference.

use std::fmt;
use std::path::{Path, PathBuf};

use oci_spec::distribution::Reference;

use crate::error::{SpecError, Transport};
use kiln_core::error::Result;

/// An image to read: a base for a build, or the argument of `kiln inspect`.
#[derive(Clone, Debug)]
pub enum ImageSource {
    Scratch,
    Layout { dir: PathBuf, tag: Option<String> },
    DockerArchive { path: PathBuf },
    Registry(Reference),
}

impl ImageSource {
    /// Parse, resolving relative paths against `base_dir`.
    pub fn parse(s: &str, base_dir: &Path) -> Result<Self> {
        let s = s.trim();
        if s == "scratch" {
            return Ok(ImageSource::Scratch);
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_layout(rest);
            if dir.is_empty() {
                return Err(SpecError::EmptyPath {
                    reference: s.to_string(),
                    transport: Transport::Layout,
                }
                .into());
            }
            return Ok(ImageSource::Layout {
                dir: base_dir.join(dir),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(SpecError::EmptyPath {
                    reference: s.to_string(),
                    transport: Transport::DockerArchive,
                }
                .into());
            }
            return Ok(ImageSource::DockerArchive {
                path: base_dir.join(rest),
            });
        }
        // A workspace member (kiln-workspace); "target:x" would otherwise
        // parse as the registry image `target` with tag `x`.
        if let Some(name) = s.strip_prefix("target:") {
            return Err(SpecError::WorkspaceTarget {
                name: name.to_string(),
            }
            .into());
        }
        let s = s.strip_prefix("docker://").unwrap_or(s);
        let reference: Reference =
            crate::reference::parse(s).map_err(|e| SpecError::InvalidReference {
                reference: s.to_string(),
                message: format!("{e}"),
            })?;
        Ok(ImageSource::Registry(reference))
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Scratch => f.write_str("scratch"),
            ImageSource::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageSource::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageSource::DockerArchive { path } => write!(f, "docker-archive:{}", path.display()),
            ImageSource::Registry(r) => write!(f, "{}", r.whole()),
        }
    }
}

/// `DIR[:TAG]`: a trailing `:x` is a tag only when `x` holds no `/`,
/// so `oci:./a:b/c` stays a path.
fn split_layout(s: &str) -> (&str, Option<String>) {
    match s.rsplit_once(':') {
        Some((dir, tag)) if !tag.is_empty() && !tag.contains('/') && !dir.is_empty() => {
            (dir, Some(tag.to_string()))
        }
        _ => (s, None),
    }
}

/// A local output named with `--output`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    Layout(PathBuf),
    DockerArchive(PathBuf),
}

impl OutputTarget {
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("oci:") {
            if !rest.is_empty() {
                return Ok(OutputTarget::Layout(PathBuf::from(rest)));
            }
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if !rest.is_empty() {
                return Ok(OutputTarget::DockerArchive(PathBuf::from(rest)));
            }
        }
        Err(SpecError::InvalidOutput {
            output: s.to_string(),
        }
        .into())
    }
}

impl fmt::Display for OutputTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputTarget::Layout(p) => write!(f, "oci:{}", p.display()),
            OutputTarget::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

/// Is this registry host on the loopback interface (plain HTTP allowed)?
pub fn is_loopback_registry(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sources() {
        let base = Path::new("/spec");
        assert!(matches!(
            ImageSource::parse("scratch", base).unwrap(),
            ImageSource::Scratch
        ));
        match ImageSource::parse("oci:out/img:v1", base).unwrap() {
            ImageSource::Layout { dir, tag } => {
                assert_eq!(dir, PathBuf::from("/spec/out/img"));
                assert_eq!(tag.as_deref(), Some("v1"));
            }
            other => panic!("{other:?}"),
        }
        match ImageSource::parse("127.0.0.1:5000/a/b:1", base).unwrap() {
            ImageSource::Registry(r) => {
                assert_eq!(r.registry(), "127.0.0.1:5000");
                assert_eq!(r.repository(), "a/b");
            }
            other => panic!("{other:?}"),
        }
        let e = ImageSource::parse("UPPER/Case", base).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<SpecError>(),
            Some(SpecError::InvalidReference { reference, .. }) if reference == "UPPER/Case"
        ));
        let e = ImageSource::parse("target:py", base).unwrap_err();
        assert_eq!(
            e.to_string(),
            "base `target:py` is a workspace member; build it with the workspace"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:1"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("registry.example.com"));
    }

    #[test]
    fn empty_paths_and_bad_outputs() {
        let base = Path::new("/spec");
        let e = ImageSource::parse("oci:", base).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<SpecError>(),
            Some(SpecError::EmptyPath {
                transport: Transport::Layout,
                ..
            })
        ));
        assert_eq!(e.to_string(), "`oci:`: missing directory after `oci:`");
        let e = ImageSource::parse("docker-archive:", base).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<SpecError>(),
            Some(SpecError::EmptyPath {
                transport: Transport::DockerArchive,
                ..
            })
        ));
        assert_eq!(
            e.to_string(),
            "`docker-archive:`: missing file after `docker-archive:`"
        );
        assert_eq!(
            OutputTarget::parse("docker-archive:a.tar").unwrap(),
            OutputTarget::DockerArchive(PathBuf::from("a.tar"))
        );
        let e = OutputTarget::parse("tar:x").unwrap_err();
        assert!(matches!(
            e.downcast_ref::<SpecError>(),
            Some(SpecError::InvalidOutput { output }) if output == "tar:x"
        ));
        assert_eq!(e.exit_code(), 2);
    }
}
