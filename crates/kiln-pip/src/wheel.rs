//! Reading wheels safely: member-name checks (no traversal, absolute paths or symlinks), METADATA, entry points.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_fs::layer::{Content, Damaged, Deflated, Packed};

use crate::install::MemberHashes;
use crate::metadata::CoreMetadata;
use crate::tags::WheelName;
use crate::{normalize, PipError, WheelProblem};

/// One regular file from a wheel.
#[derive(Clone, Debug)]
pub(crate) struct WheelFile {
    /// Member name, `/`-separated, relative.
    pub(crate) path: String,
    /// In memory for what the installer reads (see [`held_in_memory`]),
    /// packed in the wheel for the rest when [`read_wheel`] was given the
    /// wheel's digest.
    pub(crate) data: Content,
    pub(crate) executable: bool,
}

impl WheelFile {
    /// The member's bytes (inflated from the wheel when packed).
    pub(crate) fn bytes(&self, wheel: &str) -> Result<Cow<'_, [u8]>> {
        self.data
            .bytes()
            .io_context(|| format!("reading {} of {wheel}", self.path))
    }
}

/// Members the installer reads itself are held in memory: `.dist-info`
/// (METADATA, WHEEL, RECORD, entry points) and `.data/scripts` (a
/// `#!python` line is rewritten). They are small.
pub(crate) fn held_in_memory(path: &str) -> bool {
    let mut parts = path.split('/');
    match (parts.next(), parts.next()) {
        (Some(top), _) if top.ends_with(".dist-info") => true,
        (Some(top), Some("scripts")) => top.ends_with(".data"),
        _ => false,
    }
}

/// Refuse member names that could escape the install directory.
pub(crate) fn check_member_name(wheel: &str, name: &str) -> Result<()> {
    let bad = |why: &'static str| {
        PipError::wheel(
            wheel,
            WheelProblem::UnsafeName {
                member: name.to_string(),
                why,
            },
        )
    };
    if name.is_empty() {
        return Err(bad("has an empty name"));
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(bad("is an absolute path"));
    }
    if name.contains('\\') {
        return Err(bad("contains a backslash"));
    }
    if name.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Err(bad("starts with a drive letter"));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(bad("contains `..` (path traversal)"));
    }
    Ok(())
}

fn open(path: &Path, wheel: &str) -> Result<zip::ZipArchive<File>> {
    let f = File::open(path).io_context(|| format!("opening {wheel} in the cache"))?;
    zip::ZipArchive::new(f).map_err(|e| PipError::wheel(wheel, WheelProblem::NotZip(e.to_string())))
}

/// Deflate expands at most ~1032:1; a member claiming more is refused before
/// its output buffer is allocated (zip bombs, absurd sizes).
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Where one member's bytes are in the wheel and what they must become.
struct Member {
    path: String,
    executable: bool,
    deflated: bool,
    raw: std::ops::Range<u64>,
    size: usize,
    crc32: u32,
}

/// Every regular file of the wheel, in archive order, its name, kind and
/// sizes checked.
///
/// Given the wheel's digest (`packed`: a wheel in the cache, verified when
/// it came), the members the installer does not read ([`held_in_memory`])
/// stay in the wheel: each is a [`Packed`] slice, inflated and its CRC-32
/// checked when a layer reads it, and known by [`member_id`] (the wheel's
/// digest and the member's place, a name only these bytes have, so a
/// layer's memo key need not read them). Memory does not grow with the
/// wheel's size, and nothing is written but the layers.
///
/// The other members are inflated now, in parallel with libdeflate
/// (whole-buffer, so each output is allocated once at its final size),
/// and their CRC-32 checked as the zip reader would.
pub(crate) fn read_wheel(
    path: &Path,
    wheel: &str,
    packed: Option<&Digest>,
) -> Result<Vec<WheelFile>> {
    use rayon::prelude::*;
    let reading = || format!("reading {wheel} in the cache");
    let file = Arc::new(File::open(path).io_context(reading)?);
    let total = file.metadata().io_context(reading)?.len();
    let problem = |p: WheelProblem| PipError::wheel(wheel, p);
    let mut ar = zip::ZipArchive::new(std::io::BufReader::new(&*file))
        .map_err(|e| problem(WheelProblem::NotZip(e.to_string())))?;
    let mut members = Vec::with_capacity(ar.len());
    let mut seen = HashSet::new();
    for i in 0..ar.len() {
        let f = ar
            .by_index_raw(i)
            .map_err(|e| problem(WheelProblem::Unreadable(format!("member {i}: {e}"))))?;
        let name = f
            .name()
            .map_err(|e| {
                problem(WheelProblem::Unreadable(format!(
                    "member {i} has a bad name: {e}"
                )))
            })?
            .to_string();
        check_member_name(wheel, &name)?;
        let mode = f.unix_mode().unwrap_or(0);
        if mode & 0o170000 == 0o120000 {
            return Err(problem(WheelProblem::Symlink { member: name }));
        }
        if f.is_dir() || name.ends_with('/') {
            continue;
        }
        let clean = name
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect::<Vec<_>>()
            .join("/");
        if !seen.insert(clean.clone()) {
            return Err(problem(WheelProblem::Duplicate { member: name }));
        }
        let bad = |detail: String| {
            problem(WheelProblem::UnsupportedMember {
                member: name.clone(),
                detail,
            })
        };
        if f.encrypted() {
            return Err(bad("is encrypted".into()));
        }
        let (csize, size) = (f.compressed_size(), f.size());
        let deflated = match f.compression() {
            zip::CompressionMethod::Stored if csize == size => false,
            zip::CompressionMethod::Stored => {
                return Err(bad(format!(
                    "stored with {csize} bytes but {size} declared"
                )))
            }
            zip::CompressionMethod::Deflated
                if size <= csize.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1024) =>
            {
                true
            }
            zip::CompressionMethod::Deflated => {
                return Err(bad(format!(
                    "declares {size} bytes from {csize} compressed"
                )))
            }
            other => return Err(bad(format!("unsupported compression method {other}"))),
        };
        // `by_index_raw` located the data and checked it lies inside the archive.
        let start = f.data_start().ok_or_else(|| bad("no data offset".into()))?;
        let raw = start
            .checked_add(csize)
            .map(|end| start..end)
            .filter(|r| r.end <= total && usize::try_from(csize).is_ok())
            .ok_or_else(|| bad("data lies outside the archive".into()))?;
        members.push(Member {
            path: clean,
            executable: mode & 0o111 != 0,
            deflated,
            raw,
            size: usize::try_from(size).map_err(|_| bad("too large".into()))?,
            crc32: f.crc32(),
        });
    }
    drop(ar);
    members
        .into_par_iter()
        .map(|m| {
            let (start, len) = (m.raw.start, m.raw.end - m.raw.start);
            let what = format!("wheel {wheel}: reading `{}`", m.path);
            let p = Packed::new(
                file.clone(),
                start,
                len,
                m.size as u64,
                m.crc32,
                m.deflated,
                what,
            );
            if let Some(digest) = packed.filter(|_| !held_in_memory(&m.path)) {
                return Ok(WheelFile {
                    data: Content::Spooled(packed_member(p, &file, digest, &m)),
                    path: m.path,
                    executable: m.executable,
                });
            }
            let read = p.read_all();
            if let Some(detail) = read.as_ref().err().and_then(Damaged::detail_of) {
                return Err(problem(WheelProblem::Corrupt {
                    member: m.path,
                    detail: detail.to_string(),
                }));
            }
            let (data, _) = read.io_context(reading)?;
            Ok(WheelFile {
                path: m.path,
                data: Content::from(data),
                executable: m.executable,
            })
        })
        .collect()
}

/// Member `m` of the wheel `file` (of digest `digest`), read as `p`, as
/// it lies there, known by its [`member_id`]; a big enough deflated one
/// offers its stream to gzip layers ([`PASS_ABOVE`]).
fn packed_member(
    p: Packed,
    file: &Arc<File>,
    digest: &Digest,
    m: &Member,
) -> kiln_fs::layer::SpoolSlice {
    let (start, len) = (m.raw.start, m.raw.end - m.raw.start);
    let slice = kiln_fs::layer::SpoolSlice::packed(p).known_as(member_id(digest, start));
    if m.deflated && m.size >= PASS_ABOVE {
        let id = stream_id(digest, start);
        slice.deflated_as(Deflated::new(file.clone(), start, len, m.crc32, id))
    } else {
        slice
    }
}

/// Deflated members inflating to at least this many bytes keep their
/// deflate stream for gzip layers ([`Deflated`]): most of a wheel's bytes
/// (97% of a 110-wheel PyData freeze's) are in them, and their gzip member
/// framing (18 bytes) and the short chunk before them cost less than
/// compressing them again. At 16 KiB rather than 64 KiB, that freeze's cold
/// build took 5% less time and its layers were 0.3 MB smaller (the wheels'
/// streams are mostly at a higher level than the layers' gzip 1); at 4 KiB
/// rather than 16 KiB, 3.6% less CPU for 1.1 MB (0.4%) more layer bytes,
/// and at 2 KiB no less CPU for 0.8 MB more.
/// Changing it changes layer bytes for the same wheels: bump
/// `kiln_fs::layer::ENCODING`.
const PASS_ABOVE: usize = 4 << 10;

/// The name of the deflate stream at `offset` of the wheel `wheel`.
pub(crate) fn stream_id(wheel: &Digest, offset: u64) -> String {
    format!("{}@{offset}", wheel.hex())
}

/// The name of the member whose data is at `offset` of the wheel `wheel`:
/// the wheel is content-addressed and was verified when it came, so no
/// other bytes have this name. Packed members are known by it rather
/// than by a sha256 of their own: hashing every member (as PEP 427 asks,
/// and as neither pip nor uv does) cost a quarter of the hashing of a
/// cold 110-wheel install, and refused wheels both install (torch 1.7 to
/// 1.12 ship a RECORD whose METADATA line is wrong).
pub(crate) fn member_id(wheel: &Digest, offset: u64) -> String {
    format!("member:{}@{offset}", wheel.hex())
}

/// `*.dist-info/METADATA` from a wheel on disk.
pub(crate) fn read_metadata_file(path: &Path, wheel: &str) -> Result<Vec<u8>> {
    metadata_member(&mut open(path, wheel)?, wheel)
}

/// `*.dist-info/METADATA` of an open wheel (a file, or a remote one read by ranges).
pub(crate) fn metadata_member<R: std::io::Read + std::io::Seek>(
    ar: &mut zip::ZipArchive<R>,
    wheel: &str,
) -> Result<Vec<u8>> {
    let name = ar
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| {
            let mut parts = n.split('/');
            matches!((parts.next(), parts.next(), parts.next()), (Some(d), Some("METADATA"), None) if d.ends_with(".dist-info"))
        })
        .map(|n| n.into_owned())
        .ok_or_else(|| PipError::wheel(wheel, WheelProblem::NoMetadata))?;
    let f = ar
        .by_name(&name)
        .map_err(|e| PipError::wheel(wheel, WheelProblem::Unreadable(e.to_string())))?;
    read_all(f, 64 << 20).map_err(|e| {
        PipError::wheel(
            wheel,
            WheelProblem::Unreadable(format!("reading METADATA: {e}")),
        )
    })
}

/// `[group]` / `name = module:attr [extras]` entries of entry_points.txt.
pub(crate) fn parse_entry_points(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut group = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.starts_with('[') && t.ends_with(']') {
            group = t[1..t.len() - 1].trim().to_string();
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            out.push((group.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Read a whole small reader (used for zip members).
fn read_all(r: impl std::io::Read, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut v = Vec::new();
    r.take(limit).read_to_end(&mut v)?;
    Ok(v)
}

/// Check a wheel against what it says of itself, before anything of it is
/// installed: one `.dist-info`; RECORD lists every member (but RECORD and
/// its signatures) and nothing more; WHEEL's `Tag:` lines are the file
/// name's tags; METADATA's name and version are the file name's.
///
/// Returns the sha256 RECORD gives each member (`sha256=<urlsafe b64>`),
/// for the installed RECORD. Those hashes are taken as the wheel states
/// them, not checked against the bytes, as pip and uv take them: the
/// wheel's own sha256 (checked against the index, a `--hash` or the lock)
/// and each member's CRC-32 vouch for the bytes, and real wheels ship
/// RECORD lines that are wrong (torch 1.7 to 1.12's METADATA).
pub(crate) fn verify(filename: &str, files: &[WheelFile]) -> Result<MemberHashes> {
    let bad = |p: WheelProblem| -> kiln_core::Error { PipError::wheel(filename, p) };
    let mut dist_infos: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let (dir, _) = f.path.split_once('/')?;
            dir.ends_with(".dist-info").then(|| dir.to_string())
        })
        .collect();
    dist_infos.sort();
    dist_infos.dedup();
    let dist_info = match dist_infos.as_slice() {
        [one] => one.clone(),
        [] => return Err(bad(WheelProblem::NoMetadata)),
        _ => return Err(bad(WheelProblem::SeveralDistInfos { dirs: dist_infos })),
    };
    let member = |name: &str| {
        files
            .iter()
            .find(|f| f.path == format!("{dist_info}/{name}"))
    };

    // METADATA and WHEEL against the file name.
    let name = WheelName::parse(filename)?;
    let meta = member("METADATA").map(|m| m.bytes(filename)).transpose()?;
    if let Some(meta) = meta.and_then(|m| CoreMetadata::parse(&m).ok()) {
        let (n, v) = (meta.name, meta.version);
        let same_version = match (
            uv_pep440::Version::from_str(&v),
            uv_pep440::Version::from_str(&name.version),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => v == name.version,
        };
        if normalize(&n) != normalize(&name.name) || !same_version {
            return Err(bad(WheelProblem::NameMismatch {
                metadata: format!("{n} {v}"),
                file_name: format!("{} {}", name.name, name.version),
            }));
        }
    }
    if let Some(w) = member("WHEEL") {
        let mut wheel_tags: Vec<String> = kiln_fs::probe::header_fields(&w.bytes(filename)?, false)
            .into_iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v)
            .collect();
        // Old wheels carry no Tag lines: nothing to contradict.
        if !wheel_tags.is_empty() {
            let mut name_tags = name.tags();
            wheel_tags.sort();
            wheel_tags.dedup();
            name_tags.sort();
            name_tags.dedup();
            if wheel_tags != name_tags {
                return Err(bad(WheelProblem::TagMismatch {
                    wheel_tags,
                    name_tags,
                }));
            }
        }
    }

    // RECORD.
    let record_path = format!("{dist_info}/RECORD");
    let record = member("RECORD").ok_or_else(|| {
        bad(WheelProblem::NoRecord {
            dist_info: dist_info.clone(),
        })
    })?;
    let record = record.bytes(filename)?;
    let text = std::str::from_utf8(&record).map_err(|_| {
        bad(WheelProblem::BadRecord {
            line: 0,
            detail: "not UTF-8".into(),
        })
    })?;
    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (path, hash, size) = record_fields(line).ok_or_else(|| {
            bad(WheelProblem::BadRecord {
                line: i + 1,
                detail: "expected `path,hash,size`".into(),
            })
        })?;
        if !size.is_empty() && size.parse::<u64>().is_err() {
            return Err(bad(WheelProblem::BadRecord {
                line: i + 1,
                detail: format!("size `{size}` is not a number"),
            }));
        }
        listed.insert(path, hash);
    }
    let unhashed = |p: &str| {
        p == record_path || p == format!("{record_path}.jws") || p == format!("{record_path}.p7s")
    };
    let mut claims = MemberHashes::new();
    for f in files {
        if unhashed(&f.path) {
            continue;
        }
        let Some(hash) = listed.get(&f.path) else {
            return Err(bad(WheelProblem::NotInRecord {
                member: f.path.clone(),
            }));
        };
        // Another algorithm, or none: the installer hashes the member.
        if hash.starts_with("sha256=") {
            claims.insert(f.path.clone(), hash.clone());
        }
    }
    let held: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for path in listed.keys() {
        if !unhashed(path) && !held.contains(path.as_str()) {
            return Err(bad(WheelProblem::MissingMember {
                member: path.clone(),
            }));
        }
    }
    Ok(claims)
}

/// `path,hash,size` of a RECORD line (CSV: a path with a comma is quoted).
fn record_fields(line: &str) -> Option<(String, String, String)> {
    let (path, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let end = quoted.find("\",")?;
        (quoted[..end].replace("\"\"", "\""), &quoted[end + 2..])
    } else {
        let (p, r) = line.split_once(',')?;
        (p.to_string(), r)
    };
    let (hash, size) = rest.split_once(',')?;
    Some((path, hash.to_string(), size.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn zip_with(entries: &[(&str, u32)]) -> tempfile::NamedTempFile {
        let t = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(t.reopen().unwrap());
        for (name, mode) in entries {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            if mode & 0o170000 == 0o120000 {
                z.add_symlink(*name, "/etc/passwd", opts).unwrap();
            } else {
                z.start_file(*name, opts).unwrap();
                z.write_all(b"x").unwrap();
            }
        }
        z.finish().unwrap();
        t
    }

    #[test]
    fn traversal_rejected() {
        for (bad, why) in [
            ("../evil.py", "path traversal"),
            ("pkg/../../evil.py", "path traversal"),
            ("/etc/passwd", "absolute path"),
            ("a\\..\\b", "backslash"),
            ("C:/x", "drive letter"),
            ("", "empty name"),
        ] {
            let err = check_member_name("w.whl", bad).unwrap_err();
            assert!(
                matches!(problem(&err), WheelProblem::UnsafeName { member, why: w } if member == bad && w.contains(why)),
                "{bad}: {err}"
            );
        }
        check_member_name("w.whl", "pkg/mod.py").unwrap();
        let z = zip_with(&[("ok.py", 0o644), ("../../etc/cron.d/x", 0o644)]);
        let err = read_wheel(z.path(), "evil-1.0-py3-none-any.whl", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "wheel evil-1.0-py3-none-any.whl: member `../../etc/cron.d/x` contains `..` (path traversal); refusing to install it"
        );
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        assert!(matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::BadWheel { wheel, problem: WheelProblem::UnsafeName { .. } }) if wheel == "evil-1.0-py3-none-any.whl"
        ));
    }

    /// A consistent wheel's members (RECORD listing every other member).
    fn consistent(name: &str, version: &str, tag: &str) -> Vec<WheelFile> {
        let di = format!("{name}-{version}.dist-info");
        let mut files = vec![
            wf(&format!("{name}/__init__.py"), b"X = 1\n"),
            wf(
                &format!("{di}/METADATA"),
                format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").as_bytes(),
            ),
            wf(
                &format!("{di}/WHEEL"),
                format!("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n").as_bytes(),
            ),
        ];
        let hashes = crate::install::member_hashes(&files).unwrap();
        let mut record: String = files
            .iter()
            .map(|f| format!("{},{},{}\n", f.path, hashes[&f.path], f.data.len()))
            .collect();
        record.push_str(&format!("{di}/RECORD,,\n"));
        files.push(wf(&format!("{di}/RECORD"), record.as_bytes()));
        files
    }

    fn wf(path: &str, data: &[u8]) -> WheelFile {
        WheelFile {
            path: path.into(),
            data: data.to_vec().into(),
            executable: false,
        }
    }

    #[test]
    fn a_wheel_must_agree_with_its_record_wheel_and_metadata() {
        let good = consistent("demo", "1.0", "py3-none-any");
        verify("demo-1.0-py3-none-any.whl", &good).unwrap();
        // PEP 440 equality and name normalisation, as installers compare.
        verify("Demo-1.0.0-py3-none-any.whl", &good).unwrap();

        let with = |f: &dyn Fn(&mut Vec<WheelFile>)| {
            let mut files = good.clone();
            f(&mut files);
            verify("demo-1.0-py3-none-any.whl", &files).unwrap_err()
        };
        // RECORD's hashes are what the installed RECORD says; a line that
        // disagrees with its member (in hash or size) is taken as pip and
        // uv take it, as is a line with no hash (the installer hashes that).
        let hashes = verify("demo-1.0-py3-none-any.whl", &good).unwrap();
        assert_eq!(
            hashes["demo/__init__.py"],
            crate::install::record_hash(b"X = 1\n")
        );
        let mut lying = good.clone();
        lying[0].data = b"X = 2\n".to_vec().into();
        let n = lying.len() - 1;
        let text = String::from_utf8(lying[n].data.bytes().unwrap().to_vec()).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        let (path, _) = first.split_once(',').unwrap();
        let unhashed = format!("{path},,99\n{rest}");
        assert_eq!(verify("demo-1.0-py3-none-any.whl", &lying).unwrap(), hashes);
        lying[n].data = unhashed.into_bytes().into();
        let claims = verify("demo-1.0-py3-none-any.whl", &lying).unwrap();
        assert!(!claims.contains_key("demo/__init__.py"), "{claims:?}");
        assert_eq!(claims.len(), hashes.len() - 1);

        let err = with(&|fs| fs.push(wf("demo/extra.py", b"")));
        assert!(
            matches!(problem(&err), WheelProblem::NotInRecord { member } if member == "demo/extra.py"),
            "{err}"
        );
        let err = with(&|fs| {
            fs.remove(0);
        });
        assert!(
            matches!(problem(&err), WheelProblem::MissingMember { member } if member == "demo/__init__.py"),
            "{err}"
        );
        let err = with(&|fs| {
            fs.pop();
        });
        assert!(
            matches!(problem(&err), WheelProblem::NoRecord { .. }),
            "{err}"
        );
        let err = with(&|fs| fs.push(wf("other-1.0.dist-info/METADATA", b"Name: other\n")));
        assert!(
            matches!(problem(&err), WheelProblem::SeveralDistInfos { dirs } if dirs.len() == 2),
            "{err}"
        );
        let err = with(&|fs| {
            let n = fs.len() - 1;
            let text = String::from_utf8(fs[n].data.bytes().unwrap().to_vec()).unwrap();
            let (first, rest) = text.split_once('\n').unwrap();
            let wrong = format!("{},lots\n{rest}", first.rsplit_once(',').unwrap().0);
            fs[n].data = wrong.into_bytes().into();
        });
        assert!(
            matches!(problem(&err), WheelProblem::BadRecord { line: 1, detail } if detail.contains("lots")),
            "{err}"
        );

        let err = verify("demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", &good).unwrap_err();
        assert!(
            matches!(problem(&err), WheelProblem::TagMismatch { .. }),
            "{err}"
        );
        let err = verify("other-1.0-py3-none-any.whl", &good).unwrap_err();
        assert!(
            matches!(problem(&err), WheelProblem::NameMismatch { .. }),
            "{err}"
        );
        let err = verify("demo-2.0-py3-none-any.whl", &good).unwrap_err();
        assert!(
            matches!(problem(&err), WheelProblem::NameMismatch { .. }),
            "{err}"
        );
    }

    fn problem(err: &kiln_core::Error) -> &WheelProblem {
        match err.downcast_ref::<PipError>() {
            Some(PipError::BadWheel { problem, .. }) => problem,
            _ => panic!("not a bad wheel: {err:?}"),
        }
    }

    #[test]
    fn not_a_zip_and_no_metadata() {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), b"not a zip").unwrap();
        let err = read_wheel(t.path(), "x-1.0-py3-none-any.whl", None).unwrap_err();
        assert!(matches!(problem(&err), WheelProblem::NotZip(_)), "{err:?}");
        assert!(err
            .to_string()
            .starts_with("wheel x-1.0-py3-none-any.whl is not a valid zip file: "));
        let err = read_metadata_file(t.path(), "x-1.0-py3-none-any.whl").unwrap_err();
        assert!(matches!(problem(&err), WheelProblem::NotZip(_)));

        let z = zip_with(&[("x/__init__.py", 0o644)]);
        let err = read_metadata_file(z.path(), "x-1.0-py3-none-any.whl").unwrap_err();
        assert!(matches!(problem(&err), WheelProblem::NoMetadata));
        assert_eq!(
            err.to_string(),
            "wheel x-1.0-py3-none-any.whl has no .dist-info/METADATA"
        );
        let z = zip_with(&[("x-1.0.dist-info/METADATA", 0o644)]);
        assert_eq!(
            read_metadata_file(z.path(), "x-1.0-py3-none-any.whl").unwrap(),
            b"x"
        );
        let err = read_wheel(Path::new("/nonexistent/x.whl"), "x.whl", None).unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Io);
    }

    #[test]
    fn duplicate_members_rejected() {
        let bytes = zip_of(&[("x/a.py", b"1", false), ("x//a.py", b"2", false)]);
        let err = read_bytes(&bytes).unwrap_err();
        assert!(
            matches!(problem(&err), WheelProblem::Duplicate { member } if member == "x//a.py"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "wheel x-1.0-py3-none-any.whl: member `x//a.py` appears twice"
        );
    }

    #[test]
    fn symlinks_rejected_and_modes_kept() {
        let z = zip_with(&[("pkg/link", 0o120777)]);
        let err = read_wheel(z.path(), "evil-1.0-py3-none-any.whl", None).unwrap_err();
        assert!(
            matches!(problem(&err), WheelProblem::Symlink { member } if member == "pkg/link"),
            "{err:?}"
        );
        assert!(err.to_string().contains("symlink"), "{err}");
        let z = zip_with(&[("pkg/run.sh", 0o755), ("pkg/a.py", 0o644)]);
        let files = read_wheel(z.path(), "ok-1.0-py3-none-any.whl", None).unwrap();
        assert!(files[0].executable && !files[1].executable);
    }

    /// A zip of `(name, content, deflated)` members.
    fn zip_of(members: &[(&str, &[u8], bool)]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data, deflated) in members {
            let method = if *deflated {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            };
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap().into_inner()
    }

    fn read_bytes(bytes: &[u8]) -> Result<Vec<WheelFile>> {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), bytes).unwrap();
        read_wheel(t.path(), "x-1.0-py3-none-any.whl", None)
    }

    #[test]
    fn members_inflate_to_their_content() {
        // Above the size read whole: streamed when packed.
        let big: Vec<u8> = (0..1_200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let bytes = zip_of(&[
            ("x/big.bin", &big, true),
            ("x/empty.py", b"", true),
            ("x/stored.txt", b"as is", false),
            ("x-1.0.dist-info/METADATA", b"Name: x\n", true),
        ]);
        let want: [(&str, &[u8]); 4] = [
            ("x/big.bin", &big[..]),
            ("x/empty.py", &b""[..]),
            ("x/stored.txt", &b"as is"[..]),
            ("x-1.0.dist-info/METADATA", &b"Name: x\n"[..]),
        ];
        let contents = |files: &[WheelFile]| -> Vec<(String, Vec<u8>)> {
            files
                .iter()
                .map(|f| (f.path.clone(), f.bytes("x").unwrap().into_owned()))
                .collect()
        };
        let want: Vec<(String, Vec<u8>)> = want
            .iter()
            .map(|(p, d)| (p.to_string(), d.to_vec()))
            .collect();
        let files = read_bytes(&bytes).unwrap();
        assert!(files.iter().all(|f| matches!(f.data, Content::Held(_))));
        assert_eq!(contents(&files), want);
        // Packed: the same bytes; every member but METADATA left in the
        // wheel and known by its place there.
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), &bytes).unwrap();
        let digest = Digest::of(&bytes);
        let packed = Some(&digest);
        let files = read_wheel(t.path(), "x-1.0-py3-none-any.whl", packed).unwrap();
        assert_eq!(contents(&files), want);
        let mut ids = HashSet::new();
        for f in &files {
            let s = match &f.data {
                Content::Spooled(s) => s,
                Content::Held(_) if held_in_memory(&f.path) => continue,
                Content::Held(_) => panic!("{} is held", f.path),
            };
            assert!(s.is_packed(), "{}", f.path);
            let id = s.known_name().unwrap();
            assert!(id.starts_with(&format!("member:{}@", digest.hex())), "{id}");
            assert!(ids.insert(id.to_string()), "{id} twice");
            // Only a big deflated member offers its stream.
            assert_eq!(s.deflated().is_some(), f.path == "x/big.bin", "{}", f.path);
        }
        assert_eq!(ids.len(), 3);
        // A packed member that is damaged (stored, a byte flipped; or
        // declared longer than it inflates) is refused when it is read, as
        // a held one is refused when the wheel is.
        let stored = zip_of(&[("x/big.bin", &big, false)]);
        let mut bad = stored.clone();
        let at = bad.windows(64).position(|w| w == &big[4000..4064]).unwrap();
        bad[at] ^= 1;
        let deflated = zip_of(&[("x/big.bin", &big, true)]);
        let central = deflated
            .windows(4)
            .rposition(|w| w == b"PK\x01\x02")
            .unwrap();
        let mut longer = deflated.clone();
        let declared = (big.len() as u32 + 1).to_le_bytes();
        longer[central + 24..central + 28].copy_from_slice(&declared);
        for (bad, why) in [(bad, "CRC-32 mismatch"), (longer, "declared")] {
            std::fs::write(t.path(), &bad).unwrap();
            let files = read_wheel(t.path(), "x-1.0-py3-none-any.whl", packed).unwrap();
            let err = files[0]
                .bytes("x-1.0-py3-none-any.whl")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("wheel x-1.0-py3-none-any.whl: reading `x/big.bin`: ")
                    && err.contains(why),
                "{err}"
            );
            let err = read_bytes(&bad).unwrap_err();
            assert!(
                matches!(problem(&err), WheelProblem::Corrupt { member, detail } if member == "x/big.bin" && detail.contains(why)),
                "{err:?}"
            );
        }
        assert!(held_in_memory("x-1.0.data/scripts/tool"));
        assert!(!held_in_memory("x-1.0.data/purelib/x/a.py"));
        assert!(!held_in_memory("x/scripts/a.py"));
    }

    /// A zip whose one member `x/m.bin` is `content` deflated, with
    /// `junk` after the stream inside the member's compressed size.
    fn deflated_with_junk(content: &[u8], junk: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(content).unwrap();
        let mut raw = enc.finish().unwrap();
        raw.extend_from_slice(junk);
        // Written stored, then made a deflated member of `content`.
        let mut z = zip_of(&[("x/m.bin", &raw, false)]);
        let (crc, size) = (libdeflater::crc32(content), content.len() as u32);
        let central = z.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
        for (method, crc_at, size_at) in [(8, 14, 22), (central + 10, central + 16, central + 24)] {
            z[method..method + 2].copy_from_slice(&8u16.to_le_bytes());
            z[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
            z[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
        }
        z
    }

    /// A big deflated member offers the wheel's stream to gzip layers;
    /// reading it says whether the stream ends where the zip says (a
    /// layer takes it only then: a reader would take bytes after it for
    /// the gzip trailer), read whole and streamed alike. The member's
    /// bytes are the same either way.
    #[test]
    fn a_members_stream_is_whole_only_when_it_ends_where_the_zip_says() {
        for size in [PASS_ABOVE + 100, (4 << 20) + 100] {
            let content: Vec<u8> = (0..size).map(|i| (i % 97 + i / 4099) as u8).collect();
            for junk in [&b""[..], b"JUNK"] {
                let bytes = deflated_with_junk(&content, junk);
                let t = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(t.path(), &bytes).unwrap();
                let digest = Digest::of(&bytes);
                let files = read_wheel(t.path(), "x-1.0-py3-none-any.whl", Some(&digest)).unwrap();
                let Content::Spooled(s) = &files[0].data else {
                    panic!("not packed")
                };
                assert_eq!(s.read_all().unwrap(), content);
                let mut r = s.reader().unwrap();
                let mut back = Vec::new();
                r.read_to_end(&mut back).unwrap();
                assert_eq!(back, content);
                assert_eq!(r.whole_stream(), Some(junk.is_empty()), "{size}");
                let d = s.deflated().expect("a big member offers its stream");
                let at = d.offset() as usize;
                let mut back = Vec::new();
                flate2::read::DeflateDecoder::new(&bytes[at..at + d.len() as usize])
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, content);
                assert_eq!(d.crc32(), libdeflater::crc32(&content));
                assert_eq!(d.id(), stream_id(&digest, d.offset()));
            }
        }
    }

    #[test]
    fn damaged_members_rejected() {
        let bytes = zip_of(&[("x/a.txt", b"hello wheel", false)]);
        // A flipped byte in the stored data: the CRC-32 no longer matches.
        let mut bad = bytes.clone();
        let at = bad.windows(11).position(|w| w == b"hello wheel").unwrap();
        bad[at] = b'j';
        let err = read_bytes(&bad).unwrap_err();
        assert!(
            matches!(problem(&err), WheelProblem::Corrupt { member, detail } if member == "x/a.txt" && detail == "CRC-32 mismatch"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "wheel x-1.0-py3-none-any.whl: reading `x/a.txt`: CRC-32 mismatch"
        );

        // A central directory that declares more bytes than the member inflates
        // to, and one that declares an impossible ratio.
        let data = vec![b'a'; 10_000];
        let bytes = zip_of(&[("x/a.txt", &data, true)]);
        let central = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
        for (declared, why) in [(10_001u32, "declared"), (u32::MAX - 1, "compressed")] {
            let mut bad = bytes.clone();
            bad[central + 24..central + 28].copy_from_slice(&declared.to_le_bytes());
            let err = read_bytes(&bad).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            let member = match problem(&err) {
                WheelProblem::Corrupt { member, .. } if why == "declared" => member,
                WheelProblem::UnsupportedMember { member, .. } if why == "compressed" => member,
                other => panic!("{why}: {other:?}"),
            };
            assert_eq!(member, "x/a.txt");
        }
    }

    #[test]
    fn entry_points() {
        let e = parse_entry_points("[console_scripts]\nfoo = foo.cli:main\n\n[gui_scripts]\nbar=bar:run [gui]\n[other]\nx = y\n");
        assert_eq!(
            e[0],
            (
                "console_scripts".into(),
                "foo".into(),
                "foo.cli:main".into()
            )
        );
        assert_eq!(e[1].2, "bar:run [gui]");
        assert_eq!(e.len(), 3);
    }
}

#[cfg(test)]
mod mutation_tests {
    use super::*;

    /// RECORD lines and entry points never panic on mangled input, and a
    /// mangled RECORD is refused, not trusted.
    #[test]
    fn record_and_entry_points_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"demo/__init__.py,sha256=AAAA,6\n\"odd,name.py\",sha256=BBBB,1\ndemo-1.0.dist-info/RECORD,,\n",
            b"[console_scripts]\ndemo = demo.cli:main [extra]\n[gui_scripts]\nx=y:z\n",
        ];
        for m in kiln_core::mutate::mutants(seeds, 4000) {
            let text = String::from_utf8_lossy(&m);
            for line in text.lines() {
                let _ = record_fields(line);
            }
            let _ = parse_entry_points(&text);
        }
    }
}
