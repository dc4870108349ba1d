//! Debian control data: deb822 paragraphs, version ordering and
//! dependency fields.
//!
//! Written here because the maintained crate for this (debian-packaging)
//! does not build with current libc (its async-tar → xattr 0.2 chain); the
//! formats are small and specified in Debian Policy §5 and §7.

pub(crate) use kiln_fs::probe::{is_blank, parse_paragraphs, trim, Paragraph};
use std::cmp::Ordering;
use std::fmt;

/// A Debian version: `[epoch:]upstream[-revision]`, ordered per Policy §5.6.12.
/// Kept as the text written plus where its parts are: one allocation, since
/// a solve holds tens of thousands (every dependency's bound is one).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Version {
    pub(crate) epoch: u32,
    raw: Box<str>,
    /// `upstream` is `raw[upstream.0..upstream.1]`; the revision follows
    /// after a `-` when the upstream part does not end the text.
    upstream: (u32, u32),
}

impl Version {
    pub(crate) fn parse(s: &str) -> Option<Version> {
        let s = s.trim();
        if s.is_empty() || s.contains(char::is_whitespace) {
            return None;
        }
        let (epoch, start) = match s.split_once(':') {
            Some((e, r)) => (e.parse().ok()?, s.len() - r.len()),
            None => (0, 0),
        };
        let end = match s[start..].rfind('-') {
            Some(i) => start + i,
            None => s.len(),
        };
        if end == start {
            return None;
        }
        Some(Version {
            epoch,
            raw: s.into(),
            upstream: (start as u32, end as u32),
        })
    }

    pub(crate) fn upstream(&self) -> &str {
        &self.raw[self.upstream.0 as usize..self.upstream.1 as usize]
    }

    pub(crate) fn revision(&self) -> &str {
        self.raw
            .get(self.upstream.1 as usize + 1..)
            .unwrap_or_default()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// dpkg's character order: `~` sorts before everything, even the end; letters before non-letters.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream(), other.upstream()))
            .then_with(|| verrevcmp(self.revision(), other.revision()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Relation {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Relation {
    pub(crate) fn holds(self, have: &Version, want: &Version) -> bool {
        let o = have.cmp(want);
        match self {
            Relation::Lt => o == Ordering::Less,
            Relation::Le => o != Ordering::Greater,
            Relation::Eq => o == Ordering::Equal,
            Relation::Ge => o != Ordering::Less,
            Relation::Gt => o == Ordering::Greater,
        }
    }

    pub(crate) fn symbol(self) -> &'static str {
        match self {
            Relation::Lt => "<<",
            Relation::Le => "<=",
            Relation::Eq => "=",
            Relation::Ge => ">=",
            Relation::Gt => ">>",
        }
    }
}

/// `name[:arch] [(op version)]` — one alternative of a dependency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dep {
    pub(crate) name: String,
    /// `any`, `native` or an architecture name.
    pub(crate) arch: Option<String>,
    pub(crate) constraint: Option<(Relation, Version)>,
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(a) = &self.arch {
            write!(f, ":{a}")?;
        }
        if let Some((r, v)) = &self.constraint {
            write!(f, " ({} {v})", r.symbol())?;
        }
        Ok(())
    }
}

/// Parse a dependency field: `a | b (>= 1), c:any`. Build-profile and
/// architecture restrictions (`[...]`, `<...>`) are dropped (binary packages do not carry them).
pub(crate) fn parse_deps(field: &str) -> Result<Vec<Vec<Dep>>, String> {
    let mut out = Vec::new();
    for group in field.split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(parse_dep(alt.trim())?);
        }
        out.push(alts);
    }
    Ok(out)
}

pub(crate) fn parse_dep(s: &str) -> Result<Dep, String> {
    // Drop `[arch ...]` and `<profile>` restrictions, which sit outside the parentheses.
    let mut kept = String::with_capacity(s.len());
    let (mut paren, mut skip) = (0, None::<char>);
    for c in s.chars() {
        match (skip, c) {
            (Some(end), c) if c == end => skip = None,
            (Some(_), _) => {}
            (None, '(') => {
                paren += 1;
                kept.push(c);
            }
            (None, ')') => {
                paren -= 1;
                kept.push(c);
            }
            (None, '[') if paren == 0 => skip = Some(']'),
            (None, '<') if paren == 0 => skip = Some('>'),
            (None, c) => kept.push(c),
        }
    }
    let s = kept.trim();
    let (head, constraint) = match s.split_once('(') {
        Some((h, rest)) => {
            let inner = rest.trim_end().trim_end_matches(')').trim();
            let (op, ver) = ["<<", "<=", ">=", ">>", "=", "<", ">"]
                .iter()
                .find_map(|op| inner.strip_prefix(op).map(|v| (*op, v.trim())))
                .ok_or_else(|| format!("bad version relation in `{s}`"))?;
            let rel = match op {
                "<<" => Relation::Lt,
                "<=" | "<" => Relation::Le,
                "=" => Relation::Eq,
                ">=" | ">" => Relation::Ge,
                _ => Relation::Gt,
            };
            let v = Version::parse(ver).ok_or_else(|| format!("bad version `{ver}` in `{s}`"))?;
            (h.trim(), Some((rel, v)))
        }
        None => (s, None),
    };
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n, Some(a.to_string())),
        None => (head, None),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(format!("bad package name in `{s}`"));
    }
    Ok(Dep {
        name: name.to_ascii_lowercase(),
        arch,
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_fs::probe::paragraph_chunks;

    #[test]
    fn chunks_hold_whole_paragraphs() {
        let text: String = (0..50)
            .map(|i| format!("Package: p{i}\nDescription: ünïcode {i}\n more\n\n"))
            .collect();
        for n in [1, 3, 7, 64, 1000] {
            let chunks = paragraph_chunks(&text, n);
            assert_eq!(chunks.concat(), text);
            let parsed: Vec<Paragraph> = chunks.iter().flat_map(|c| parse_paragraphs(c)).collect();
            assert_eq!(parsed, parse_paragraphs(&text), "n = {n}");
        }
        assert!(paragraph_chunks(&text, 7).len() > 1);
        assert_eq!(paragraph_chunks("", 8), vec![""]);
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn version_order() {
        assert!(v("1.0~rc1") < v("1.0"));
        assert!(v("1.0") < v("1.0-1"));
        assert!(v("1:0.1") > v("9.9"));
        assert!(v("2.36-9+deb12u4") > v("2.36-9+deb12u3"));
        assert!(v("1.2.10") > v("1.2.9"));
        assert!(v("1.0a") > v("1.0"));
        assert!(v("1.0+b1") > v("1.0"));
        assert_eq!(v("1.01").cmp(&v("1.1")), Ordering::Equal);
    }

    #[test]
    fn deps() {
        let d =
            parse_deps("libc6 (>= 2.34), awk | mawk:any, python3:any (<< 3.12) [amd64] <!nocheck>")
                .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[1][1].name, "mawk");
        assert_eq!(d[1][1].arch.as_deref(), Some("any"));
        let holds = |d: &Dep, have: &str| {
            let (r, want) = d.constraint.as_ref().unwrap();
            r.holds(&v(have), want)
        };
        assert!(holds(&d[0][0], "2.36-9"));
        assert!(!holds(&d[2][0], "3.12.1-1"));
        assert!(parse_deps("foo (>= )").is_err());
    }

    #[test]
    fn paragraphs_roundtrip() {
        let text = "Package: a\nDescription: short\n long line\n .\n more\n\nPackage: b\n";
        let ps = parse_paragraphs(text);
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("description"), Some("short\nlong line\n\nmore"));
        assert_eq!(
            ps[0].render(),
            "Package: a\nDescription: short\n long line\n .\n more\n"
        );
    }
}

#[cfg(test)]
mod mutation_tests {
    use super::*;

    /// Versions and dependency fields never panic on mangled input.
    #[test]
    fn parsers_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"libc6 (>= 2.36), python3:any (<< 3.12~) | python3-minimal [amd64], foo:i386 <!nocheck>",
            b"1:2.36-9+deb12u4~bpo11.1",
        ];
        for m in kiln_core::mutate::mutants(seeds, 4000) {
            let text = String::from_utf8_lossy(&m);
            let _ = parse_deps(&text);
            let _ = parse_dep(&text);
            if let Some(v) = Version::parse(&text) {
                let w = Version::parse("1.0-1").unwrap();
                let _ = v.cmp(&w);
            }
        }
    }
}
