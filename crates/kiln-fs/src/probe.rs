//! Facts read from an image's filesystem without running anything: deb822
//! paragraphs and the dpkg database, the C library, Python core-metadata
//! headers. The resolvers and the SBOM read an image the same way, so these
//! live once, here.

use kiln_core::Arch;

use crate::rootfs::{Node, Rootfs};

/// One paragraph: fields in file order, values with continuation lines joined by `\n`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paragraph {
    pub fields: Vec<(String, String)>,
}

impl Paragraph {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// Serialise in deb822 form (no trailing blank line).
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(k);
            s.push(':');
            let mut lines = v.split('\n');
            if let Some(first) = lines.next() {
                if !first.is_empty() {
                    s.push(' ');
                    s.push_str(first);
                }
            }
            s.push('\n');
            for l in lines {
                s.push(' ');
                s.push_str(if l.is_empty() { "." } else { l });
                s.push('\n');
            }
        }
        s
    }
}

/// `text` cut into about `n` pieces at blank lines, so that each piece
/// holds whole paragraphs (for parsing large indexes in parallel).
pub fn paragraph_chunks(text: &str, n: usize) -> Vec<&str> {
    let step = text.len() / n.max(1) + 1;
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > step {
        // Bytes, not chars: `step` may fall inside a UTF-8 sequence.
        match rest.as_bytes()[step..]
            .windows(2)
            .position(|w| w == b"\n\n")
        {
            Some(i) => {
                let (head, tail) = rest.split_at(step + i + 2);
                out.push(head);
                rest = tail;
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

/// `s.trim()`, without walking chars when `s` starts and ends with a
/// visible ASCII character, as deb822 keys and values do: indexes of tens
/// of MB go through here.
pub fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(b)) if !(a.is_ascii_graphic() && b.is_ascii_graphic()) => s.trim(),
        _ => s,
    }
}

/// A deb822 paragraph separator: an empty or whitespace-only line.
pub fn is_blank(line: &str) -> bool {
    trim(line).is_empty()
}

/// Parse every paragraph of a deb822 document (Packages, status, Release, .sources).
pub fn parse_paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for line in text.lines() {
        if is_blank(line) {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = cur.fields.last_mut() {
                // Only the one space that marks a continuation goes: more
                // is the text's own (a Description's verbatim lines), and
                // `render` writes it back as dpkg does.
                let l = line[1..].trim_end();
                v.push('\n');
                v.push_str(if l == "." { "" } else { l });
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.fields.push((trim(k).to_string(), trim(v).to_string()));
        }
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    out
}

/// `Rootfs` lookups that also work on hand-built trees without parent directories (tests).
pub fn exists(fs: &Rootfs, p: &str) -> bool {
    fs.exists(p) || fs.node(p).is_some()
}

pub fn read<'r>(fs: &'r Rootfs, p: &str) -> Option<&'r [u8]> {
    fs.read(p).or(match fs.node(p) {
        Some(Node::File {
            content: Some(c), ..
        }) => Some(c.as_slice()),
        _ => None,
    })
}

pub fn list(fs: &Rootfs, dir: &str) -> Vec<String> {
    let l = fs.list(dir);
    if !l.is_empty() {
        return l;
    }
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut out: Vec<String> = fs
        .paths()
        .filter_map(|(k, _)| k.strip_prefix(&prefix))
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
        .collect();
    out.dedup();
    out
}

/// Version of an installed Debian package from `/var/lib/dpkg/status` (or distroless `status.d/`).
pub fn dpkg_version(rootfs: &Rootfs, package: &str) -> Option<String> {
    let mut texts: Vec<&[u8]> = Vec::new();
    if let Some(s) = read(rootfs, "/var/lib/dpkg/status") {
        texts.push(s);
    }
    for name in list(rootfs, "/var/lib/dpkg/status.d") {
        if let Some(s) = read(rootfs, &format!("/var/lib/dpkg/status.d/{name}")) {
            texts.push(s);
        }
    }
    for t in texts {
        let t = String::from_utf8_lossy(t);
        for para in t.split("\n\n") {
            let mut name = None;
            let mut version = None;
            let mut installed = true;
            for line in para.lines() {
                if let Some(v) = line.strip_prefix("Package: ") {
                    name = Some(v.trim());
                } else if let Some(v) = line.strip_prefix("Version: ") {
                    version = Some(v.trim());
                } else if let Some(v) = line.strip_prefix("Status: ") {
                    installed = v.contains(" installed");
                }
            }
            if name == Some(package) && installed {
                return version.map(String::from);
            }
        }
    }
    None
}

/// The C library the image's binaries link against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Libc {
    Glibc {
        major: u32,
        minor: u32,
    },
    Musl {
        major: u32,
        minor: u32,
    },
    /// Neither found: only pure-Python (`any`) wheels are usable.
    Unknown,
}

/// As people write it: `glibc 2.36`, `musl 1.2`, `an unknown C library`.
impl std::fmt::Display for Libc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Libc::Glibc { major, minor } => write!(f, "glibc {major}.{minor}"),
            Libc::Musl { major, minor } => write!(f, "musl {major}.{minor}"),
            Libc::Unknown => f.write_str("an unknown C library"),
        }
    }
}

fn parse_major_minor(v: &str) -> Option<(u32, u32)> {
    let v = v.split_once(':').map(|x| x.1).unwrap_or(v);
    let mut it = v.split(['.', '-', '+', '~']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// glibc from dpkg's `libc6` (or old `libc-2.X.so` names), musl from the apk database or the loader.
pub fn detect_libc(rootfs: &Rootfs, arch: Arch) -> Libc {
    if let Some((major, minor)) = dpkg_version(rootfs, "libc6").and_then(|v| parse_major_minor(&v))
    {
        return Libc::Glibc { major, minor };
    }
    for dir in [
        format!("/lib/{}", arch.gnu_triplet()),
        format!("/usr/lib/{}", arch.gnu_triplet()),
        "/lib64".to_string(),
        "/usr/lib64".to_string(),
    ] {
        for name in list(rootfs, &dir) {
            if let Some(v) = name
                .strip_prefix("libc-")
                .and_then(|r| r.strip_suffix(".so"))
            {
                if let Some((major, minor)) = parse_major_minor(v) {
                    return Libc::Glibc { major, minor };
                }
            }
        }
    }
    if let Some(db) = read(rootfs, "/lib/apk/db/installed") {
        let text = String::from_utf8_lossy(db);
        for para in text.split("\n\n") {
            if para.lines().any(|l| l == "P:musl") {
                if let Some(v) = para.lines().find_map(|l| l.strip_prefix("V:")) {
                    if let Some((major, minor)) = parse_major_minor(v) {
                        return Libc::Musl { major, minor };
                    }
                }
            }
        }
    }
    // musl's loader names: `x86_64`, `aarch64`, `i386`, `armhf` ...
    let musl = match arch {
        Arch::I386 => "i386",
        Arch::ArmV7 | Arch::ArmV6 => "armhf",
        Arch::ArmV5 => "arm",
        a => a.machine(),
    };
    if exists(rootfs, &format!("/lib/ld-musl-{musl}.so.1")) {
        // musl without a package database: assume 1.2 (every current Alpine).
        return Libc::Musl { major: 1, minor: 2 };
    }
    Libc::Unknown
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

/// PEP 503 name normalisation: lowercase, runs of `-_.` → `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod mutation_tests {
    use super::*;

    /// deb822 and core-metadata headers never panic on mangled input.
    #[test]
    fn parsers_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\nDepends: a (>= 1) | b\n Description: x\n .\n more\n\nPackage: b\n",
            b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nLicense: MIT\n  continued\n\nbody",
        ];
        let mut n = 0;
        for m in kiln_core::mutate::mutants(seeds, 3000) {
            let text = String::from_utf8_lossy(&m);
            let _ = parse_paragraphs(&text);
            let _ = paragraph_chunks(&text, 3);
            let _ = header_fields(&m, true);
            let _ = header_fields(&m, false);
            let _ = normalize(&text);
            n += 1;
        }
        assert_eq!(n, 6000);
    }

    /// A Description's verbatim lines (two leading spaces) and empty lines
    /// come back as written: dpkg's status keeps them so.
    #[test]
    fn continuation_lines_keep_their_own_indentation() {
        let text =
            "Package: openssl\nDescription: toolkit\n such as:\n  * creating keys;\n .\n end\n";
        let p = &parse_paragraphs(text)[0];
        assert_eq!(
            p.get("Description"),
            Some("toolkit\nsuch as:\n * creating keys;\n\nend")
        );
        assert_eq!(p.render(), text);
    }
}
