//! Core metadata (`METADATA`, `PKG-INFO`, PEP 658 `.metadata` files): the fields the resolver needs.

use kiln_core::error::Result;

use crate::PipError;
pub(crate) use kiln_fs::probe::header_fields;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CoreMetadata {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) requires_dist: Vec<String>,
    pub(crate) requires_python: Option<String>,
    pub(crate) provides_extra: Vec<String>,
}

impl CoreMetadata {
    /// Parse the RFC 822-style header block (the body after the first blank line is ignored).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self> {
        let mut m = CoreMetadata::default();
        for (k, v) in header_fields(bytes, false) {
            match k.as_str() {
                "name" => m.name = v,
                "version" => m.version = v,
                "requires-dist" => m.requires_dist.push(v),
                "requires-python" => m.requires_python = Some(v),
                "provides-extra" => m.provides_extra.push(v),
                _ => {}
            }
        }
        if m.name.is_empty() || m.version.is_empty() {
            return Err(PipError::IncompleteMetadata.into());
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fields() {
        let m = CoreMetadata::parse(
            b"Metadata-Version: 2.1\nName: Foo_Bar\nVersion: 1.0\nRequires-Python: >=3.8\nRequires-Dist: six\nRequires-Dist: idna ; extra == 'x'\nProvides-Extra: x\n\nRequires-Dist: body-is-ignored\n",
        )
        .unwrap();
        assert_eq!(m.name, "Foo_Bar");
        assert_eq!(m.requires_dist, vec!["six", "idna ; extra == 'x'"]);
        assert_eq!(m.requires_python.as_deref(), Some(">=3.8"));
        let err = CoreMetadata::parse(b"Name: x\n").unwrap_err();
        assert!(matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::IncompleteMetadata)
        ));
        assert_eq!(err.to_string(), "metadata has no Name or Version field");
    }
}

#[cfg(test)]
mod mutation_tests {
    /// Core metadata never panics on mangled input.
    #[test]
    fn metadata_survives_mutants() {
        let seeds: &[&[u8]] = &[
            b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Python: >=3.8\nRequires-Dist: requests[socks] (>=2.0) ; extra == 'net'\nProvides-Extra: net\n\nbody",
        ];
        for m in kiln_core::mutate::mutants(seeds, 4000) {
            let _ = super::CoreMetadata::parse(&m);
        }
    }
}
