//! `/etc/ld.so.cache` without running `ldconfig`: the libraries the new
//! packages bring (their ELF `SONAME`, read with goblin) in the directories
//! `/etc/ld.so.conf` names plus the system ones, merged with the base's own
//! cache, written in glibc's format (`glibc-ld.so.cache1.1`, little endian).
//!
//! The format is glibc's (elf/cache.c, sysdeps/generic/dl-cache.h): a
//! 48-byte header, 24-byte entries sorted the way the loader's binary search
//! expects (descending by `_dl_cache_libcmp`, numbers compared as numbers),
//! then the string table; string offsets count from the start of the file.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const HEADER: usize = 48;
const ENTRY: usize = 24;
/// `FLAG_ELF_LIBC6`.
const ELF_LIBC6: i32 = 0x0003;

/// One cache entry: `soname => path` with its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CacheEntry {
    pub(crate) flags: i32,
    pub(crate) soname: String,
    pub(crate) path: String,
}

/// The entry flags and ELF machine of a Debian architecture; `None` when
/// kiln does not know how ldconfig marks its libraries.
pub(crate) fn arch_flags(arch: &str) -> Option<(i32, u16)> {
    use kiln_core::Arch;
    let a = Arch::from_debian(arch)?;
    let flags = match a {
        Arch::Amd64 => ELF_LIBC6 | 0x0300, // FLAG_X8664_LIB64
        Arch::Arm64 => ELF_LIBC6 | 0x0a00, // FLAG_AARCH64_LIB64
        Arch::Ppc64le => ELF_LIBC6 | 0x0500,
        Arch::S390x => ELF_LIBC6 | 0x0400,
        Arch::I386 => ELF_LIBC6,
        Arch::ArmV7 => ELF_LIBC6 | 0x0900, // FLAG_ARM_LIBHF
        _ => return None,
    };
    Some((flags, a.elf_machine()))
}

/// The `SONAME` of a shared library for `machine`, or `None`.
pub(crate) fn soname(bytes: &[u8], machine: u16) -> Option<String> {
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    if elf.header.e_machine != machine || elf.header.e_type != goblin::elf::header::ET_DYN {
        return None;
    }
    elf.soname.map(String::from)
}

/// glibc's `_dl_cache_libcmp`: digit runs compare as numbers, and a digit
/// sorts after a non-digit.
pub(crate) fn libcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (ca, cb) = (a[i], b[j]);
        if ca.is_ascii_digit() {
            if !cb.is_ascii_digit() {
                return Ordering::Greater;
            }
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na: u128 = std::str::from_utf8(&a[si..i])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let nb: u128 = std::str::from_utf8(&b[sj..j])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            match na.cmp(&nb) {
                Ordering::Equal => {}
                o => return o,
            }
        } else if cb.is_ascii_digit() {
            return Ordering::Less;
        } else if ca != cb {
            return ca.cmp(&cb);
        } else {
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// Entries of a cache file in the new format (`None` if it is not one).
pub(crate) fn parse(bytes: &[u8]) -> Option<Vec<CacheEntry>> {
    // An old-format cache may precede the new one (glibc < 2.32 wrote both).
    let start = bytes.windows(MAGIC.len()).position(|w| w == MAGIC)?;
    let b = &bytes[start..];
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?)) };
    let nlibs = u32_at(20)? as usize;
    let string = |o: u32| -> Option<String> {
        let s = b.get(o as usize..)?;
        let end = s.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    let mut out = Vec::with_capacity(nlibs);
    for n in 0..nlibs {
        let at = HEADER + n * ENTRY;
        let flags = i32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
        out.push(CacheEntry {
            flags,
            soname: string(u32_at(at + 4)?)?,
            path: string(u32_at(at + 8)?)?,
        });
    }
    Some(out)
}

/// The cache file for `entries` (sorted and de-duplicated here).
pub(crate) fn write(entries: &[CacheEntry]) -> Vec<u8> {
    let mut entries = entries.to_vec();
    // ldconfig's order: descending by library name, then by flags.
    entries.sort_by(|a, b| {
        libcmp(&b.soname, &a.soname)
            .then(b.flags.cmp(&a.flags))
            .then(a.path.cmp(&b.path))
    });
    entries.dedup_by(|a, b| a.soname == b.soname && a.flags == b.flags);

    let mut strings: Vec<u8> = Vec::new();
    let mut offsets: BTreeMap<String, u32> = BTreeMap::new();
    let base = (HEADER + entries.len() * ENTRY) as u32;
    let mut intern = |s: &str| -> u32 {
        if let Some(o) = offsets.get(s) {
            return *o;
        }
        let o = base + strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        offsets.insert(s.to_string(), o);
        o
    };
    let mut table = Vec::with_capacity(entries.len() * ENTRY);
    for e in &entries {
        let key = intern(&e.soname);
        let value = intern(&e.path);
        table.extend_from_slice(&e.flags.to_le_bytes());
        table.extend_from_slice(&key.to_le_bytes());
        table.extend_from_slice(&value.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes()); // osversion (unused)
        table.extend_from_slice(&0u64.to_le_bytes()); // hwcap
    }
    let mut out = Vec::with_capacity(HEADER + table.len() + strings.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.push(2); // little endian
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&0u32.to_le_bytes()); // no extensions
    out.extend_from_slice(&[0; 12]);
    out.extend(table);
    out.extend(strings);
    out
}

/// Directories ldconfig reads, in order: `/etc/ld.so.conf` (with its
/// `include` globs resolved by `list`), then the system directories.
pub(crate) fn search_dirs(
    conf: Option<&str>,
    triplet: &str,
    read: &dyn Fn(&str) -> Option<String>,
    list: &dyn Fn(&str) -> Vec<String>,
) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut seen = BTreeSet::new();
    let mut add = |d: &str, dirs: &mut Vec<String>| {
        let d = d.trim_end_matches('/');
        if d.starts_with('/') && seen.insert(d.to_string()) {
            dirs.push(d.to_string());
        }
    };
    fn lines(
        text: &str,
        read: &dyn Fn(&str) -> Option<String>,
        list: &dyn Fn(&str) -> Vec<String>,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some(pattern) = line.strip_prefix("include") {
                let pattern = pattern.trim();
                let (dir, glob) = pattern.rsplit_once('/').unwrap_or(("", pattern));
                let suffix = glob.strip_prefix('*').unwrap_or(glob);
                let mut names = list(dir);
                names.sort();
                for n in names.iter().filter(|n| n.ends_with(suffix)) {
                    if depth < 4 {
                        if let Some(t) = read(&format!("{dir}/{n}")) {
                            lines(&t, read, list, depth + 1, out);
                        }
                    }
                }
            } else if !line.is_empty() {
                out.push(line.to_string());
            }
        }
    }
    let mut conf_dirs = Vec::new();
    if let Some(c) = conf {
        lines(c, read, list, 0, &mut conf_dirs);
    }
    for d in &conf_dirs {
        add(d, &mut dirs);
    }
    for d in [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib".to_string(),
        "/usr/lib".to_string(),
    ] {
        add(&d, &mut dirs);
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcmp_like_glibc() {
        assert_eq!(libcmp("libc.so.6", "libc.so.6"), Ordering::Equal);
        assert_eq!(libcmp("libfoo.so.10", "libfoo.so.9"), Ordering::Greater);
        assert_eq!(libcmp("libz.so.1", "liba.so.1"), Ordering::Greater);
        assert_eq!(libcmp("lib1.so", "liba.so"), Ordering::Greater);
    }

    #[test]
    fn round_trip() {
        let e = vec![
            CacheEntry {
                flags: 0x303,
                soname: "libz.so.1".into(),
                path: "/lib/x86_64-linux-gnu/libz.so.1".into(),
            },
            CacheEntry {
                flags: 0x303,
                soname: "libc.so.6".into(),
                path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
            },
        ];
        let bytes = write(&e);
        assert!(bytes.starts_with(MAGIC));
        let back = parse(&bytes).unwrap();
        assert_eq!(back[0].soname, "libz.so.1");
        assert_eq!(back[1].soname, "libc.so.6");
        assert_eq!(write(&back), bytes);
    }

    #[test]
    fn conf_with_includes() {
        let read = |p: &str| match p {
            "/etc/ld.so.conf.d/libc.conf" => Some("/usr/local/lib\n".to_string()),
            "/etc/ld.so.conf.d/x86_64-linux-gnu.conf" => Some(
                "# multiarch\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n".to_string(),
            ),
            _ => None,
        };
        let list = |d: &str| {
            if d == "/etc/ld.so.conf.d" {
                vec![
                    "x86_64-linux-gnu.conf".into(),
                    "libc.conf".into(),
                    "README".into(),
                ]
            } else {
                vec![]
            }
        };
        let dirs = search_dirs(
            Some("include /etc/ld.so.conf.d/*.conf\n"),
            "x86_64-linux-gnu",
            &read,
            &list,
        );
        assert_eq!(
            dirs,
            [
                "/usr/local/lib",
                "/usr/local/lib/x86_64-linux-gnu",
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib",
                "/usr/lib"
            ]
        );
    }
}
