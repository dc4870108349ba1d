//! Core metadata (`METADATA`, `PKG-INFO`, PEP 658 `.metadata` files): the fields the resolver needs.

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreMetadata {
    pub name: String,
    pub version: String,
    pub requires_dist: Vec<String>,
    pub requires_python: Option<String>,
    pub provides_extra: Vec<String>,
}

/// The RFC 822-style header block of core metadata as (lowercased name,
/// value) pairs in order. Continuation lines are joined with a space, or
/// with newlines (a leading `|` dropped) when `multiline`, as License
/// texts are written.
pub fn header_fields(bytes: &[u8], multiline: bool) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                let l = line.trim_start();
                if multiline {
                    last.1.push('\n');
                    last.1.push_str(l.strip_prefix('|').unwrap_or(l).trim_end());
                } else {
                    last.1.push(' ');
                    last.1.push_str(l.trim_end());
                }
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    fields
}

impl CoreMetadata {
    /// Parse the RFC 822-style header block (the body after the first blank line is ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
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
            return Err(Error::input("metadata has no Name or Version field"));
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
        assert!(CoreMetadata::parse(b"Name: x\n").is_err());
    }
}
