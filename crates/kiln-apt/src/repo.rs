//! Repository client: `InRelease` fetched and its OpenPGP signature checked
//! against the source's keyring (rpgp), then `Packages.gz|xz` for each
//! component and architecture, checked against the sha256 that the signed
//! Release lists. Indexes are cached by that sha256, so an unchanged index is
//! never downloaded twice. Everything fails closed.

use std::collections::BTreeMap;

use pgp::composed::{CleartextSignedMessage, PublicOrSecret, SignedPublicKey};

use super::control::{is_blank, parse_deps, parse_paragraphs, trim, Dep, Paragraph, Version};
use super::deb::Codec;
use super::sources::Source;
use crate::{AptError, IndexProblem, KeyringProblem};
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_store::cache::{Cache, CacheBucket};
use kiln_store::http::Http;

/// A binary package available from a repository (or installed in the base).
#[derive(Clone, Debug)]
pub struct Package {
    pub(crate) name: String,
    pub(crate) version: Version,
    pub(crate) arch: String,
    pub(crate) multi_arch: String,
    pub(crate) essential: bool,
    pub(crate) priority: String,
    /// Depends and Pre-Depends, each group a list of alternatives.
    pub(crate) depends: Vec<Vec<Dep>>,
    pub(crate) provides: Vec<Dep>,
    /// Conflicts and Breaks.
    pub(crate) conflicts: Vec<Dep>,
    /// Where to download it (empty for installed packages).
    pub(crate) url: String,
    pub(crate) sha256: Option<Digest>,
    pub(crate) size: u64,
    pub(crate) suite: String,
    pub(crate) installed: bool,
}

/// The architecture `arch` counts as on a `native` system: `all` (or none) is native.
pub(crate) fn effective_arch<'a>(arch: &'a str, native: &'a str) -> &'a str {
    if arch == "all" || arch.is_empty() {
        native
    } else {
        arch
    }
}

impl Package {
    /// dpkg's name for the package's files in `info/`: `name:arch` for
    /// `Multi-Arch: same` packages (database format 1), else `name`.
    pub(crate) fn info_name(&self) -> String {
        if self.multi_arch == "same" {
            format!("{}:{}", self.name, self.arch)
        } else {
            self.name.clone()
        }
    }

    pub(crate) fn from_paragraph(
        p: &Paragraph,
        base_uri: &str,
        suite: &str,
        installed: bool,
    ) -> std::result::Result<Package, String> {
        let name = p.get("Package").ok_or("missing Package")?.to_string();
        let version =
            Version::parse(p.get("Version").ok_or("missing Version")?).ok_or("bad Version")?;
        let deps = |f: &str| -> std::result::Result<Vec<Vec<Dep>>, String> {
            p.get(f)
                .map(parse_deps)
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let mut depends = deps("Pre-Depends")?;
        depends.extend(deps("Depends")?);
        let flat = |f: &str| -> std::result::Result<Vec<Dep>, String> {
            Ok(deps(f)?.into_iter().flatten().collect())
        };
        let mut conflicts = flat("Conflicts")?;
        conflicts.extend(flat("Breaks")?);
        Ok(Package {
            version,
            arch: p.get("Architecture").unwrap_or("all").to_string(),
            multi_arch: p.get("Multi-Arch").unwrap_or("no").to_string(),
            essential: p.get("Essential") == Some("yes"),
            priority: p.get("Priority").unwrap_or("optional").to_string(),
            depends,
            provides: flat("Provides")?,
            conflicts,
            url: p
                .get("Filename")
                .map(|f| format!("{base_uri}/{f}"))
                .unwrap_or_default(),
            sha256: p
                .get("SHA256")
                .and_then(|s| format!("sha256:{s}").parse().ok()),
            size: p.get("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
            suite: suite.to_string(),
            installed,
            name,
        })
    }
}

/// A package for unit tests: `depends` in control-field syntax.
#[cfg(test)]
pub(crate) fn test_package(
    name: &str,
    version: &str,
    arch: &str,
    multi_arch: &str,
    depends: &str,
) -> Package {
    Package {
        name: name.into(),
        version: Version::parse(version).expect("test version"),
        arch: arch.into(),
        multi_arch: multi_arch.into(),
        essential: false,
        priority: "optional".into(),
        depends: if depends.is_empty() {
            Vec::new()
        } else {
            parse_deps(depends).expect("test depends")
        },
        provides: Vec::new(),
        conflicts: Vec::new(),
        url: String::new(),
        sha256: None,
        size: 0,
        suite: "stable".into(),
        installed: false,
    }
}

/// Load the public keys of a keyring (binary or armored, one or many keys).
pub(crate) fn load_keyring(bytes: &[u8], what: &str) -> Result<Vec<SignedPublicKey>> {
    let bad = |problem| AptError::BadKeyring {
        keyring: what.to_string(),
        problem,
    };
    let (keys, _) = PublicOrSecret::from_reader_many(bytes)
        .map_err(|e| bad(KeyringProblem::NotOpenPgp(e.to_string())))?;
    let mut out = Vec::new();
    for k in keys {
        match k {
            Ok(PublicOrSecret::Public(k)) => out.push(k),
            Ok(PublicOrSecret::Secret(k)) => out.push(k.to_public_key()),
            Err(e) => return Err(bad(KeyringProblem::UnreadableKey(e.to_string())).into()),
        }
    }
    if out.is_empty() {
        return Err(bad(KeyringProblem::NoKeys).into());
    }
    Ok(out)
}

/// Check a cleartext-signed InRelease; returns the signed text.
fn verify_inrelease(text: &str, keys: &[SignedPublicKey], what: &str) -> Result<String> {
    let (msg, _) = CleartextSignedMessage::from_string(text).map_err(|e| AptError::NotSigned {
        repo: what.to_string(),
        detail: e.to_string(),
    })?;
    let ok = keys
        .iter()
        .any(|k| msg.verify(k).is_ok() || k.public_subkeys.iter().any(|sk| msg.verify(sk).is_ok()));
    if !ok {
        return Err(AptError::BadSignature {
            repo: what.to_string(),
        }
        .into());
    }
    Ok(msg.signed_text().replace("\r\n", "\n"))
}

/// The signed text of an InRelease `bytes` that `verify` checked against
/// `keyring`, remembered: rpgp reads a suite's cleartext frame slowly
/// (tens of ms), and a warm build gets the same bytes back. Keyed by the
/// bytes and the keyring, so another keyring verifies afresh. (`gc` drops
/// these, as they name no blob: the next build verifies once more.)
fn remembered(
    cache: &Cache,
    bytes: &[u8],
    keyring: &[SignedPublicKey],
    verify: impl FnOnce() -> Result<String>,
) -> Result<String> {
    let mut id = b"kiln InRelease 1\n".to_vec();
    for k in keyring {
        match pgp::ser::Serialize::to_bytes(k) {
            Ok(k) => id.extend_from_slice(&k),
            Err(_) => return verify(),
        }
    }
    id.extend_from_slice(bytes);
    let key = Digest::of(&id);
    let kept = cache.read_derived(CacheBucket::AptIndexes, &key);
    if let Some(text) = kept.and_then(|b| String::from_utf8(b).ok()) {
        return Ok(text);
    }
    let text = verify()?;
    cache.keep_derived(CacheBucket::AptIndexes, &key, text.as_bytes());
    Ok(text)
}

/// The files a Release lists under SHA256: path → (digest, size).
fn release_hashes(release: &str) -> BTreeMap<String, (Digest, u64)> {
    let mut out = BTreeMap::new();
    for p in parse_paragraphs(release) {
        if let Some(list) = p.get("SHA256") {
            for line in list.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let [hash, size, path] = w[..] {
                    if let (Ok(d), Ok(n)) = (
                        format!("sha256:{hash}").parse::<Digest>(),
                        size.parse::<u64>(),
                    ) {
                        out.insert(path.to_string(), (d, n));
                    }
                }
            }
        }
    }
    out
}

/// The fields of a Packages paragraph that [`Package::from_paragraph`]
/// reads. Everything else (descriptions, maintainers, tags, checksums
/// kiln does not check) is dropped while the index streams by: about half
/// of a suite's Packages text.
const KEPT_FIELDS: [&str; 14] = [
    "Package",
    "Version",
    "Architecture",
    "Multi-Arch",
    "Essential",
    "Priority",
    "Pre-Depends",
    "Depends",
    "Conflicts",
    "Breaks",
    "Provides",
    "Filename",
    "SHA256",
    "Size",
];

/// Positions in [`KEPT_FIELDS`] of the fields the scan itself reads.
const PACKAGE: usize = 0;
const VERSION: usize = 1;
const ARCHITECTURE: usize = 2;
const ESSENTIAL: usize = 4;
const PRIORITY: usize = 5;
const PROVIDES: usize = 10;
const SHA256: usize = 12;

/// One scanned paragraph's kept fields, read as [`Paragraph::get`] reads
/// them (the first of a repeated field, values trimmed) without building a
/// `Paragraph` for each of a suite's ~60k packages.
struct Fields<'a> {
    text: &'a str,
    /// Each kept field's value as a range of `text`.
    at: [Option<(u32, u32)>; KEPT_FIELDS.len()],
    /// A paragraph whose kept fields have continuation lines is parsed
    /// whole instead (its lines join with `\n`); Debian's indexes have none.
    whole: Option<Paragraph>,
}

impl Fields<'_> {
    fn get(&self, field: usize) -> Option<&str> {
        match &self.whole {
            Some(p) => p.get(KEPT_FIELDS[field]),
            None => self.at[field].map(|(s, e)| &self.text[s as usize..e as usize]),
        }
    }
}

/// Append-only text in blocks of about 1 MiB: one String grown to a
/// suite's ~25 MB would be copied at each doubling, old and new held at once.
#[derive(Debug, Default)]
struct Blocks(Vec<String>);

impl Blocks {
    const SIZE: usize = 1 << 20;

    /// Append `s`, which stays in one block: (block, start).
    fn push(&mut self, s: &str) -> (u32, u32) {
        if self
            .0
            .last()
            .is_none_or(|b| b.capacity() - b.len() < s.len())
        {
            self.0.push(String::with_capacity(Self::SIZE.max(s.len())));
        }
        let n = self.0.len() - 1;
        let b = &mut self.0[n];
        let start = b.len();
        b.push_str(s);
        (n as u32, start as u32)
    }

    fn get(&self, block: u32, start: u32, len: u32) -> &str {
        &self.0[block as usize][start as usize..(start + len) as usize]
    }

    /// Where the text ends now, for [`Blocks::truncate`].
    fn mark(&self) -> (usize, usize) {
        (self.0.len(), self.0.last().map_or(0, String::len))
    }

    fn truncate(&mut self, (blocks, len): (usize, usize)) {
        self.0.truncate(blocks);
        if let Some(b) = self.0.last_mut() {
            b.truncate(len);
        }
    }
}

/// One paragraph of a [`SourceIndex`], not yet parsed into a [`Package`].
#[derive(Debug)]
struct Entry {
    /// The paragraph is `text.get(block, start, len)` of its source.
    block: u32,
    start: u32,
    len: u32,
    /// Which of the source's indexes it came from (for error messages).
    index: u16,
    /// The package's name and architecture as (start, len) in the
    /// paragraph: no allocation for each of a suite's ~60k entries. An
    /// empty architecture stands for none given (`all`).
    name: (u16, u16),
    arch: (u16, u16),
    essential: bool,
    required: bool,
}

impl Entry {
    fn name<'t>(&self, text: &'t Blocks) -> &'t str {
        self.field(text, self.name)
    }

    fn arch<'t>(&self, text: &'t Blocks) -> &'t str {
        self.field(text, self.arch)
    }

    /// The text at (start, len) of the paragraph.
    fn field<'t>(&self, text: &'t Blocks, (at, len): (u16, u16)) -> &'t str {
        let para = text.get(self.block, self.start, self.len);
        &para[at as usize..][..len as usize]
    }
}

/// Where `value` is in `para`, as (start, len): `value` is a field's text,
/// found (the first place with the same text: only the text matters).
fn within(para: &str, value: &str) -> Option<(u16, u16)> {
    let at = memchr::memmem::find(para.as_bytes(), value.as_bytes())?;
    Some((u16::try_from(at).ok()?, u16::try_from(value.len()).ok()?))
}

/// Every index of one source, kept as the paragraphs' fields that matter
/// (see [`KEPT_FIELDS`]), back to back, with an entry per package. Parsed
/// into [`Package`]s only for what a solve can reach ([`Catalog::reachable`]):
/// a suite has ~60k packages, a solve visits a few thousand.
#[derive(Debug)]
pub(crate) struct SourceIndex {
    uri: String,
    suite: String,
    text: Blocks,
    entries: Vec<Entry>,
    /// (name, provided name) pairs, by entry number.
    provides: Vec<(u32, Box<str>)>,
    /// The indexes read: file name and digest.
    indexes: Vec<(String, Digest)>,
    /// The digest of the InRelease they were read by.
    pub(crate) release: Option<Digest>,
}

/// A source's InRelease, fetched (revalidated against the HTTP cache) and
/// verified against `keyring`: the digest of its bytes and its signed text.
pub(crate) fn signed_release(
    src: &Source,
    keyring: &[SignedPublicKey],
    http: &Http,
    cache: &Cache,
) -> Result<(Digest, String)> {
    let what = format!("{} {}", src.uri, src.suite);
    let as_text = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| AptError::BadIndex {
            repo: what.clone(),
            problem: IndexProblem::ReleaseNotUtf8,
        })
    };
    let verified = |b: &[u8]| {
        remembered(cache, b, keyring, || {
            verify_inrelease(&as_text(b)?, keyring, &what)
        })
    };
    let check = |b: &[u8]| verified(b).map(|_| ());
    let url = format!("{}/dists/{}/InRelease", src.uri, src.suite);
    let inrelease = http.get_cached(&url, None, cache, &check)?;
    Ok((Digest::of(&inrelease.bytes), verified(&inrelease.bytes)?))
}

/// Fetch, verify and index every Packages file of one source for `archs`
/// (the native one first). `Architecture: all` packages are taken from the
/// native index only, since every index lists them. `keep(name, version)`
/// drops what `[apt] pinned` excludes.
pub(crate) fn load_source(
    src: &Source,
    keyring: &[SignedPublicKey],
    archs: &[String],
    keep: &(dyn Fn(&str, &str) -> bool + Sync),
    http: &Http,
    cache: &Cache,
) -> Result<SourceIndex> {
    let base = format!("{}/dists/{}", src.uri, src.suite);
    let what = format!("{} {}", src.uri, src.suite);
    let (release_digest, release) = signed_release(src, keyring, http, cache)?;
    let hashes = release_hashes(&release);
    let fields = parse_paragraphs(&release)
        .into_iter()
        .next()
        .unwrap_or_default();
    let by_hash = fields.get("Acquire-By-Hash") == Some("yes");
    let components: Vec<String> = if src.components.is_empty() {
        fields
            .get("Components")
            .map(|c| c.split_whitespace().map(String::from).collect())
            .unwrap_or_else(|| vec!["main".into()])
    } else {
        src.components.clone()
    };
    let mut out = SourceIndex {
        uri: src.uri.clone(),
        suite: src.suite.clone(),
        text: Blocks::default(),
        entries: Vec::new(),
        provides: Vec::new(),
        indexes: Vec::new(),
        release: Some(release_digest),
    };
    for (comp, (ai, arch)) in components
        .iter()
        .flat_map(|c| archs.iter().enumerate().map(move |a| (c, a)))
    {
        let stem = format!("{comp}/binary-{arch}/Packages");
        // gzip before xz: the same 50 MB suite index takes a third of the
        // CPU to decompress (0.4 s against 1.2 s here) for a third more
        // bytes (12.1 against 8.8 MB), which a network that delivers
        // packages at tens of MB/s fetches in a fraction of the time saved.
        let (name, (digest, _)) = ["gz", "xz", ""]
            .iter()
            .map(|ext| {
                if ext.is_empty() {
                    stem.clone()
                } else {
                    format!("{stem}.{ext}")
                }
            })
            .find_map(|n| hashes.get(&n).map(|h| (n.clone(), h.clone())))
            .ok_or_else(|| AptError::NoIndex {
                repo: what.clone(),
                component: comp.clone(),
                arch: arch.clone(),
            })?;
        // With Acquire-By-Hash the index is fetched by its digest, so a
        // mirror caught mid-update cannot hand out a newer file than the
        // Release we verified (apt does the same); the plain name is the fallback.
        let url = format!("{base}/{name}");
        let fetched = match by_hash.then(|| {
            let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            format!("{base}/{dir}/by-hash/SHA256/{}", digest.hex())
        }) {
            Some(hashed) => http
                .download(&hashed, Some(&digest), cache)
                .or_else(|_| http.download(&url, Some(&digest), cache)),
            None => http.download(&url, Some(&digest), cache),
        };
        fetched.map_err(|e| {
            e.context(format!(
                "{what}: index {name} (checked against the signed Release)"
            ))
        })?;
        let index = out.indexes.len() as u16;
        // An index is scanned (or its memo read) whatever this build
        // filters; the filters apply to what the scan gives.
        let take = |name: &str, pkg_arch: &str, version: &str| {
            (ai == 0 || pkg_arch == arch) && keep(name, version)
        };
        scan_index(cache, &digest, &name, &what, index, &mut out, &read, &take)?;
        out.indexes.push((name, digest));
    }
    out.entries.shrink_to_fit();
    out.provides.shrink_to_fit();
    Ok(out)
}

/// What the scan keeps of a paragraph, beside its kept fields' text: what
/// a source's filters and the catalog look at. `None` for a paragraph
/// without a valid SHA256 (nothing could be checked against it).
fn read(p: &Fields) -> std::result::Result<Option<Scanned>, String> {
    let name = p.get(PACKAGE).ok_or("missing Package")?;
    let version = p.get(VERSION).ok_or("missing Version")?;
    Version::parse(version).ok_or("bad Version")?;
    if !p.get(SHA256).is_some_and(Digest::is_valid_hex) {
        return Ok(None);
    }
    let provides = provided(p)?;
    Ok(Some(Scanned {
        name: name.into(),
        arch: p.get(ARCHITECTURE).unwrap_or("all").into(),
        version: version.into(),
        essential: p.get(ESSENTIAL) == Some("yes"),
        required: p.get(PRIORITY) == Some("required"),
        provides,
    }))
}

/// The names a paragraph's `Provides` gives.
fn provided(p: &Fields) -> std::result::Result<Vec<String>, String> {
    Ok(match p.get(PROVIDES) {
        Some(f) => parse_deps(f)?
            .into_iter()
            .flatten()
            .map(|d| d.name)
            .collect(),
        None => Vec::new(),
    })
}

/// What the scan keeps of a paragraph `read` accepts.
struct Scanned {
    name: String,
    arch: String,
    version: String,
    essential: bool,
    required: bool,
    provides: Vec<String>,
}

/// How a scan reads a paragraph's kept fields.
type ReadFn<'a> = &'a dyn Fn(&Fields) -> std::result::Result<Option<Scanned>, String>;
/// Whether a scanned paragraph is taken: (name, architecture, version).
type TakeFn<'a> = &'a dyn Fn(&str, &str, &str) -> bool;

/// Why a scan stopped.
enum ScanError {
    Read(std::io::Error),
    NotUtf8,
    Entry(String),
}

/// Add a taken paragraph (its kept text `para`) to `out`.
#[allow(clippy::too_many_arguments)]
fn add<'p>(
    out: &mut SourceIndex,
    index: u16,
    para: &str,
    name: &str,
    arch: &str,
    essential: bool,
    required: bool,
    provides: impl Iterator<Item = &'p str>,
) {
    // A name or architecture past 64 KiB into its paragraph (none is):
    // the package is left out rather than misread.
    let Some(name) = within(para, name) else {
        return;
    };
    let Some(arch) = (if arch == "all" {
        Some((0, 0))
    } else {
        within(para, arch)
    }) else {
        return;
    };
    let entry = out.entries.len() as u32;
    let (block, start) = out.text.push(para);
    out.provides
        .extend(provides.map(|v| (entry, Box::<str>::from(v))));
    out.entries.push(Entry {
        block,
        start,
        len: para.len() as u32,
        index,
        name,
        arch,
        essential,
        required,
    });
}

/// Stream one verified index (decompressed on the fly) into `out`, or read
/// the memo an earlier scan of it left. Only [`KEPT_FIELDS`] of each
/// paragraph `read` accepts are kept, and of those only what `take` takes.
/// The whole text is never held: a suite's Packages is ~50 MB.
#[allow(clippy::too_many_arguments)]
fn scan_index(
    cache: &Cache,
    digest: &Digest,
    name: &str,
    what: &str,
    index: u16,
    out: &mut SourceIndex,
    read: ReadFn,
    take: TakeFn,
) -> Result<()> {
    let bad = |problem| AptError::BadIndex {
        repo: what.to_string(),
        problem,
    };
    let blob = cache
        .verified(digest)?
        .ok_or_else(|| kiln_store::StoreError::NotCached {
            digest: digest.clone(),
        })?;
    let open = |p: &std::path::Path| {
        std::fs::File::open(p).io_context(|| format!("opening cached blob {}", p.display()))
    };
    let (text_len, entries, provides) = (out.text.mark(), out.entries.len(), out.provides.len());
    let Some(codec) = Codec::of(name) else {
        let r = std::io::BufReader::new(open(&blob)?);
        return scan(r, index, out, read, take, &mut |_, _| {})
            .map_err(|e| scan_problem(e, name, &bad));
    };
    // Decompressing and reading every line was most of a warm build's
    // index step (0.3 s of 0.55 s for a Debian suite), so what the scan
    // gives is remembered (zstd, checksummed) beside the blob: a warm
    // build reads records, no lines.
    let memo = cache.entry(CacheBucket::AptIndexes, format!("{}.zst", digest.hex()));
    if let Ok(f) = std::fs::File::open(&memo) {
        if memo::read(f, index, out, take).is_ok() {
            return Ok(());
        }
        // A damaged (or older) memo: drop it and what it gave, scan again.
        cache.forget_derived(CacheBucket::AptIndexes, digest);
        out.text.truncate(text_len);
        out.entries.truncate(entries);
        out.provides.truncate(provides);
    }
    // Three threads: this one scans, one decompresses ahead of it, one
    // compresses the memo.
    let (tx, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let memo_writer = std::thread::Builder::new()
        .name("kiln-index-memo".into())
        .spawn(move || memo::write(chunks));
    let mut sink = memo_writer.is_ok().then(|| memo::Sink::new(tx));
    let inner = codec.reader(std::io::BufReader::new(open(&blob)?))?;
    let r = std::io::BufReader::with_capacity(1 << 18, kiln_fs::layer::ReadAhead::new(inner));
    let remember = &mut |para: &str, s: &Scanned| {
        if let Some(sink) = &mut sink {
            sink.record(para, s);
        }
    };
    scan(r, index, out, read, take, remember).map_err(|e| scan_problem(e, name, &bad))?;
    // The whole index was scanned: the memo may finish. Storing is best
    // effort: a full disk costs the memo, not the build.
    if let Some(sink) = sink {
        sink.finish();
    }
    if let Some(z) = memo_writer.ok().and_then(|w| w.join().ok().flatten()) {
        kiln_store::cache::write_atomic(&memo, &z);
    }
    Ok(())
}

/// The remembered scan of an index: a magic line, then one record per
/// paragraph `read` accepted (taken or not: the filters are the build's),
/// then an end mark, in a zstd frame with its checksum. A record is its
/// length (u32 LE), flags (1 essential, 2 required), then the kept text,
/// name, architecture, version and each provided name, each as a u32 LE
/// length and its bytes.
mod memo {
    use super::{add, Scanned, SourceIndex, TakeFn};
    use std::io::{BufRead, Read, Write};
    use std::sync::mpsc::{Receiver, SyncSender};

    const MAGIC: &[u8] = b"kiln apt scan 1\n";
    const END: u32 = u32::MAX;
    /// A paragraph's kept fields are a few KiB: a record past this is not
    /// remembered, and a length past it in a memo is damage, not a reason
    /// to allocate it.
    const MAX_RECORD: usize = 16 << 20;
    /// Records are sent to the encoder in chunks of about this size.
    const CHUNK: usize = 256 << 10;

    /// Records on their way to the memo's encoder.
    pub(super) struct Sink {
        tx: Option<SyncSender<Vec<u8>>>,
        buf: Vec<u8>,
    }

    impl Sink {
        pub(super) fn new(tx: SyncSender<Vec<u8>>) -> Sink {
            let mut buf = Vec::with_capacity(CHUNK + (4 << 10));
            buf.extend_from_slice(MAGIC);
            Sink { tx: Some(tx), buf }
        }

        pub(super) fn record(&mut self, para: &str, s: &Scanned) {
            let fields = [&*s.name, &s.arch, &s.version];
            let strs = std::iter::once(para)
                .chain(fields)
                .chain(s.provides.iter().map(String::as_str));
            let len = 1 + strs.clone().map(|x| 4 + x.len()).sum::<usize>();
            if len > MAX_RECORD {
                return self.fail();
            }
            let len = len as u32;
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf
                .push(u8::from(s.essential) | (u8::from(s.required) << 1));
            for x in strs {
                self.buf.extend_from_slice(&(x.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(x.as_bytes());
            }
            if self.buf.len() >= CHUNK {
                self.send();
            }
        }

        /// No memo for this index (a record too large, an encoder gone).
        fn fail(&mut self) {
            self.tx = None;
        }

        fn send(&mut self) {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + (4 << 10)));
            if let Some(tx) = &self.tx {
                if tx.send(chunk).is_err() {
                    self.fail();
                }
            }
        }

        /// Close the memo with its end mark. Dropped without this, the
        /// encoder gets no end mark and keeps nothing.
        pub(super) fn finish(mut self) {
            self.buf.extend_from_slice(&END.to_le_bytes());
            self.send();
        }
    }

    /// The encoder's side: the compressed memo, if every chunk up to the
    /// end mark arrived.
    pub(super) fn write(chunks: Receiver<Vec<u8>>) -> Option<Vec<u8>> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).ok()?;
        enc.include_checksum(true).ok()?;
        let mut ended = false;
        for chunk in chunks {
            ended = chunk.ends_with(&END.to_le_bytes());
            enc.write_all(&chunk).ok()?;
        }
        ended.then(|| enc.finish().ok()).flatten()
    }

    /// Add the taken records of a memo to `out`. Any damage (a short
    /// frame, a bad checksum, a record that does not parse, no end mark)
    /// is an error: the caller drops what was added and scans again.
    pub(super) fn read(
        f: std::fs::File,
        index: u16,
        out: &mut SourceIndex,
        take: TakeFn,
    ) -> std::io::Result<()> {
        // Decompressed on a thread of its own, beside the records' reading.
        let dec = kiln_fs::layer::ReadAhead::new(zstd::stream::read::Decoder::new(f)?);
        let mut r = std::io::BufReader::with_capacity(1 << 18, dec);
        let mut magic = [0u8; MAGIC.len()];
        r.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(damaged());
        }
        let mut rec = Vec::new();
        loop {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            let len = u32::from_le_bytes(len);
            if len == END {
                // Nothing may follow the end mark (the frame's checksum is
                // checked at its end).
                return match r.fill_buf()?.is_empty() {
                    true => Ok(()),
                    false => Err(damaged()),
                };
            }
            if len as usize > MAX_RECORD {
                return Err(damaged());
            }
            rec.resize(len as usize, 0);
            r.read_exact(&mut rec)?;
            let (&flags, mut rest) = rec.split_first().ok_or_else(damaged)?;
            let mut next = || next_str(&mut rest);
            let (para, name, arch, version) = (next()?, next()?, next()?, next()?);
            if !take(name, arch, version) {
                continue;
            }
            let mut provides = Vec::new();
            while !rest.is_empty() {
                provides.push(next_str(&mut rest)?);
            }
            add(
                out,
                index,
                para,
                name,
                arch,
                flags & 1 != 0,
                flags & 2 != 0,
                provides.into_iter(),
            );
        }
    }

    /// The length-prefixed string at the front of `rest`, which moves past it.
    fn next_str<'a>(rest: &mut &'a [u8]) -> std::io::Result<&'a str> {
        let (n, tail) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
        let n = u32::from_le_bytes(*n) as usize;
        if tail.len() < n {
            return Err(damaged());
        }
        let (s, tail) = tail.split_at(n);
        *rest = tail;
        std::str::from_utf8(s).map_err(|_| damaged())
    }

    fn damaged() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "a damaged index memo")
    }
}

/// The error a failed scan of index `name` is.
fn scan_problem(
    e: ScanError,
    name: &str,
    bad: &dyn Fn(IndexProblem) -> AptError,
) -> kiln_core::Error {
    let index = name.to_string();
    bad(match e {
        ScanError::Read(e) => IndexProblem::Corrupt {
            index,
            detail: e.to_string(),
        },
        ScanError::NotUtf8 => IndexProblem::NotUtf8 { index },
        ScanError::Entry(detail) => IndexProblem::MalformedEntry { index, detail },
    })
    .into()
}

/// Split deb822 text into paragraphs line by line (as [`parse_paragraphs`]
/// does), keep [`KEPT_FIELDS`] of each, hand what `read` makes of each to
/// `remember`, and add the ones `take` takes to `out`.
/// This reads every line of a suite (~50 MB), so it looks at bytes: a
/// line's first byte says what it is, `memchr` finds a key's end.
fn scan(
    mut r: impl std::io::BufRead,
    index: u16,
    out: &mut SourceIndex,
    read: ReadFn,
    take: TakeFn,
    remember: &mut dyn FnMut(&str, &Scanned),
) -> std::result::Result<(), ScanError> {
    let mut line = Vec::new();
    let mut para = String::new();
    let mut at = [None; KEPT_FIELDS.len()];
    // In a kept field; any field seen; a kept field continued on a line.
    let (mut keeping, mut fields, mut continued) = (false, false, false);
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).map_err(ScanError::Read)?;
        let mut l = line.as_slice();
        if let [rest @ .., b'\n'] = l {
            l = rest;
        }
        if let [rest @ .., b'\r'] = l {
            l = rest;
        }
        let l = std::str::from_utf8(l).map_err(|_| ScanError::NotUtf8)?;
        if n == 0 || is_blank(l) {
            if fields {
                let whole = continued.then(|| {
                    parse_paragraphs(&para)
                        .into_iter()
                        .next()
                        .unwrap_or_default()
                });
                let f = Fields {
                    text: &para,
                    at,
                    whole,
                };
                if let Some(s) = read(&f).map_err(ScanError::Entry)? {
                    remember(&para, &s);
                    if take(&s.name, &s.arch, &s.version) {
                        let provides = s.provides.iter().map(String::as_str);
                        let (essential, required) = (s.essential, s.required);
                        add(
                            out, index, &para, &s.name, &s.arch, essential, required, provides,
                        );
                    }
                }
                para.clear();
                at = [None; KEPT_FIELDS.len()];
                (fields, continued) = (false, false);
            }
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        match l.as_bytes()[0] {
            b'#' => continue,
            b' ' | b'\t' => continued |= keeping,
            _ => {
                let Some(colon) = memchr::memchr(b':', l.as_bytes()) else {
                    continue;
                };
                fields = true;
                let key = trim(&l[..colon]);
                let kept = KEPT_FIELDS
                    .iter()
                    .position(|f| f.len() == key.len() && f.eq_ignore_ascii_case(key));
                keeping = kept.is_some();
                if let Some(i) = kept.filter(|&i| at[i].is_none()) {
                    let value = trim(&l[colon + 1..]);
                    let start = para.len() + (value.as_ptr() as usize - l.as_ptr() as usize);
                    at[i] = Some((start as u32, (start + value.len()) as u32));
                }
            }
        }
        if keeping {
            para.push_str(l);
            para.push('\n');
        }
    }
}

/// Every source's packages, indexed by the names they have or provide, so
/// a solve parses only the packages its requests can reach.
pub(crate) struct Catalog {
    sources: Vec<SourceIndex>,
    /// (hash of a name, source, entry) for each name an entry has or
    /// provides, sorted: a name's candidates are the run of its hash, in
    /// index order, less the entries another name's hash collides with.
    /// One table, where a map of names to lists made two allocations for
    /// each of a suite's ~60k names.
    reach: Vec<(u64, u16, u32)>,
}

/// The hash [`Catalog`] files a name under (fixed keys: not random).
fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Catalog {
    pub(crate) fn new(sources: Vec<SourceIndex>) -> Catalog {
        let mut reach = Vec::new();
        for (si, s) in sources.iter().enumerate() {
            reach.extend(
                s.entries
                    .iter()
                    .enumerate()
                    .map(|(ei, e)| (name_hash(e.name(&s.text)), si as u16, ei as u32)),
            );
            reach.extend(
                s.provides
                    .iter()
                    .map(|(ei, v)| (name_hash(v), si as u16, *ei)),
            );
        }
        reach.sort_unstable();
        // A package providing its own name, or a name twice.
        reach.dedup();
        Catalog { sources, reach }
    }

    /// The entries named `name` or providing it, in index order.
    fn candidates<'c>(&'c self, name: &'c str) -> impl Iterator<Item = (u16, u32)> + 'c {
        let h = name_hash(name);
        let from = self.reach.partition_point(|r| r.0 < h);
        self.reach[from..]
            .iter()
            .take_while(move |r| r.0 == h)
            .map(|&(_, si, ei)| (si, ei))
            .filter(move |&(si, ei)| {
                let s = &self.sources[si as usize];
                if s.entries[ei as usize].name(&s.text) == name {
                    return true;
                }
                let first = s.provides.partition_point(|(i, _)| *i < ei);
                s.provides[first..]
                    .iter()
                    .take_while(|(i, _)| *i == ei)
                    .any(|(_, v)| &**v == name)
            })
    }

    /// Names of the packages that are `Essential: yes`, or also
    /// `Priority: required` when `required` (what a bootstrap installs).
    pub(crate) fn bootstrap_names(&self, required: bool) -> Vec<String> {
        self.sources
            .iter()
            .flat_map(|s| s.entries.iter().map(move |e| (s, e)))
            .filter(|(_, e)| e.essential || (required && e.required))
            .map(|(s, e)| e.name(&s.text).to_string())
            .collect()
    }

    /// Names of the packages at `arch` (`all` counts as `native`), for
    /// suggestions when a request names none.
    pub(crate) fn names_at(&self, arch: &str, native: &str) -> Vec<String> {
        self.sources
            .iter()
            .flat_map(|s| s.entries.iter().map(move |e| (s, e)))
            .filter(|(s, e)| effective_arch(e.arch(&s.text), native) == arch)
            .map(|(s, e)| e.name(&s.text).to_string())
            .collect()
    }

    /// Every package a solve of `seeds` can meet, parsed, in index order.
    /// A name is *required* when it is a seed or a dependency of a package
    /// that may be installed: its candidates (the packages named so or
    /// providing it) are parsed and, since the solver may pick any of them,
    /// their own names and dependencies are required in turn. A name a
    /// candidate conflicts with or provides is only *consulted*: the
    /// solver lists its candidates to rule some out but never installs
    /// one for that reason (resolvo queues dependencies only of a
    /// requirement's candidates), so they are parsed and not followed.
    /// Following them too made a python3 solve over a base parse about half
    /// the suite. The solver sees, for each name it can look up, exactly the
    /// candidates the whole index has, in the same order, so it picks the
    /// same packages as with every package parsed.
    pub(crate) fn reachable<'s>(
        &self,
        seeds: impl IntoIterator<Item = &'s str>,
        cache: &Cache,
    ) -> Result<Vec<Package>> {
        // Name → whether it was visited as required (else consulted).
        let mut seen: std::collections::HashMap<String, bool> = Default::default();
        let mut queue: Vec<(String, bool)> = seeds.into_iter().map(|s| (s.into(), true)).collect();
        let mut found: BTreeMap<(u16, u32), Package> = BTreeMap::new();
        let mut followed: std::collections::HashSet<(u16, u32)> = Default::default();
        let wanted = |seen: &std::collections::HashMap<String, bool>, n: &str, required: bool| {
            seen.get(n).is_none_or(|&was| required && !was)
        };
        while let Some((name, required)) = queue.pop() {
            if !wanted(&seen, &name, required) {
                continue;
            }
            let list: Vec<(u16, u32)> = self.candidates(&name).collect();
            if list.is_empty() {
                continue;
            }
            seen.insert(name, required);
            for at in list {
                let p = match found.entry(at) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(self.parse(at, cache)?)
                    }
                };
                if !required || !followed.insert(at) {
                    continue;
                }
                let needed = std::iter::once(&p.name)
                    .chain(p.depends.iter().flatten().map(|d| &d.name))
                    .map(|n| (n, true));
                let consulted = p
                    .conflicts
                    .iter()
                    .chain(&p.provides)
                    .map(|d| (&d.name, false));
                queue.extend(
                    needed
                        .chain(consulted)
                        .filter(|(n, r)| wanted(&seen, n, *r))
                        .map(|(n, r)| (n.clone(), r)),
                );
            }
        }
        Ok(found.into_values().collect())
    }

    fn parse(&self, (si, ei): (u16, u32), cache: &Cache) -> Result<Package> {
        let s = &self.sources[si as usize];
        let e = &s.entries[ei as usize];
        let text = s.text.get(e.block, e.start, e.len);
        let p = parse_paragraphs(text)
            .into_iter()
            .next()
            .unwrap_or_default();
        Package::from_paragraph(&p, &s.uri, &s.suite, false).map_err(|detail| {
            let (index, digest) = &s.indexes[e.index as usize];
            cache.forget_derived(CacheBucket::AptIndexes, digest);
            AptError::BadIndex {
                repo: format!("{} {}", s.uri, s.suite),
                problem: IndexProblem::MalformedEntry {
                    index: index.clone(),
                    detail,
                },
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgp::composed::{ArmorOptions, KeyType, SecretKeyParamsBuilder, SignedSecretKey};
    use pgp::types::Password;
    use rand::SeedableRng;

    fn key(seed: u64) -> SignedSecretKey {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id(format!("kiln test {seed}"))
            .build()
            .unwrap()
            .generate(&mut rng)
            .unwrap()
    }

    fn cause(e: &kiln_core::Error) -> &AptError {
        e.downcast_ref::<AptError>().expect("an apt error")
    }

    /// A verified InRelease is remembered for its bytes and keyring only.
    #[test]
    fn a_verified_release_is_remembered_for_its_bytes_and_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let (one, two) = ([key(1).to_public_key()], [key(2).to_public_key()]);
        let calls = std::cell::Cell::new(0);
        let verify = |text: &str| {
            calls.set(calls.get() + 1);
            Ok(text.to_string())
        };
        let got = |bytes: &str, keys: &[SignedPublicKey]| {
            remembered(&cache, bytes.as_bytes(), keys, || verify(bytes)).unwrap()
        };
        assert_eq!(got("signed a", &one), "signed a");
        assert_eq!(got("signed a", &one), "signed a");
        assert_eq!(calls.get(), 1);
        got("signed a", &two);
        got("signed b", &one);
        assert_eq!(calls.get(), 3);
        // A failed verification is not remembered.
        let e = remembered(&cache, b"signed c", &one, || {
            Err(AptError::BadSignature { repo: "r".into() }.into())
        });
        assert!(e.is_err());
        assert_eq!(got("signed c", &one), "signed c");
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn inrelease_verifies_only_against_its_signer() {
        let signer = key(1);
        let other = key(2);
        let text = "Origin: Kiln\nSuite: test\n";
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let signed =
            CleartextSignedMessage::sign(&mut rng, text, &signer.primary_key, &Password::empty())
                .unwrap();
        let armored = signed.to_armored_string(ArmorOptions::default()).unwrap();

        let keys = [signer.to_public_key()];
        assert_eq!(verify_inrelease(&armored, &keys, "r s").unwrap(), text);

        let e =
            verify_inrelease(&armored, &[other.to_public_key()], "http://m bookworm").unwrap_err();
        assert!(
            matches!(cause(&e), AptError::BadSignature { repo } if repo == "http://m bookworm"),
            "{e:?}"
        );
        assert!(e.to_string().ends_with(
            "signature does not verify against the keyring; refusing to use this repository"
        ));

        let e = verify_inrelease(text, &keys, "r s").unwrap_err();
        assert!(
            matches!(cause(&e), AptError::NotSigned { repo, .. } if repo == "r s"),
            "{e:?}"
        );
    }

    #[test]
    fn keyrings_must_hold_keys() {
        let e = load_keyring(b"not a key", "k.gpg").unwrap_err();
        assert!(
            matches!(
                cause(&e),
                AptError::BadKeyring { keyring, problem: KeyringProblem::NotOpenPgp(_) | KeyringProblem::NoKeys }
                    if keyring == "k.gpg"
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("keyring k.gpg"), "{e}");
        let armored = key(4)
            .to_public_key()
            .to_armored_string(ArmorOptions::default())
            .unwrap();
        assert_eq!(load_keyring(armored.as_bytes(), "k.asc").unwrap().len(), 1);
    }

    fn empty(uri: &str) -> SourceIndex {
        SourceIndex {
            uri: uri.into(),
            suite: "s".into(),
            text: Blocks::default(),
            entries: Vec::new(),
            provides: Vec::new(),
            indexes: Vec::new(),
            release: None,
        }
    }

    fn all(_: &str, _: &str, _: &str) -> bool {
        true
    }

    fn every(p: &Fields) -> std::result::Result<Option<Scanned>, String> {
        Ok(Some(Scanned {
            name: p.get(PACKAGE).ok_or("missing Package")?.into(),
            arch: p.get(ARCHITECTURE).unwrap_or("all").into(),
            version: p.get(VERSION).unwrap_or("0").into(),
            essential: false,
            required: false,
            provides: provided(p)?,
        }))
    }

    #[test]
    fn indexes_that_do_not_read_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut out = empty("r");
        // The error of scanning `bytes` as the index `name` of repo "r s".
        let mut refused = |bytes: &[u8], name: &str| {
            let d = cache.put(bytes).unwrap();
            scan_index(&cache, &d, name, "r s", 0, &mut out, &every, &all).unwrap_err()
        };
        let e = refused(b"not xz", "main/binary-amd64/Packages.xz");
        assert!(
            matches!(
                cause(&e),
                AptError::BadIndex { repo, problem: IndexProblem::Corrupt { index, .. } }
                    if repo == "r s" && index == "main/binary-amd64/Packages.xz"
            ),
            "{e:?}"
        );
        let e = refused(b"Package: a\n\n\xff\xfe", "main/binary-amd64/Packages");
        assert!(
            matches!(
                cause(&e),
                AptError::BadIndex {
                    problem: IndexProblem::NotUtf8 { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "r s: index main/binary-amd64/Packages is not UTF-8"
        );
        let e = refused(b"Version: 1\n", "main/binary-amd64/Packages");
        assert_eq!(
            e.to_string(),
            "r s: malformed entry in main/binary-amd64/Packages: missing Package"
        );
    }

    /// The scan keeps only what `Package::from_paragraph` reads, so a
    /// package parsed from it is the one parsed from the whole paragraph.
    /// What it gives is remembered: a later build reads the memo (with its
    /// own filter), and a damaged memo, or one an older kiln wrote (the
    /// decompressed text), is dropped and made again.
    #[test]
    fn scanned_indexes_parse_as_the_whole_text_and_remember_it() {
        let text =
            "Package: a\nVersion: 1:2.0-1\nArchitecture: amd64\nMaintainer: X <x@example.com>\n\
                    Pre-Depends: c\nDepends: b (>= 1) | d,\n e:any\nDescription: long\n more\n .\n\
                    Provides: v (= 1)\nBreaks: z\nFilename: pool/a.deb\nSize: 10\n\
                    SHA256: 0000000000000000000000000000000000000000000000000000000000000000\n\n\
                    # comment\n\nPackage: b\nVersion: 3\nMulti-Arch: foreign\nPriority: required\n\
                    Essential: yes\n\n";
        let mut xz = Vec::new();
        std::io::Write::write_all(
            &mut liblzma::write::XzEncoder::new(&mut xz, 1),
            text.as_bytes(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(&xz).unwrap();
        let memo = cache.entry(CacheBucket::AptIndexes, format!("{}.zst", d.hex()));
        let name = "main/binary-amd64/Packages.xz";
        // A memo made again is newer than this (an inode may be reused).
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let made = || std::fs::metadata(&memo).unwrap().modified().unwrap() != old;
        let only_b = |n: &str, _: &str, _: &str| n == "b";
        let whole = parse_paragraphs(text);
        // (what is in place of the memo, whether this round must scan, the filter)
        let old_text = zstd::encode_all(text.as_bytes(), 1).unwrap();
        let cut = zstd::encode_all(&b"kiln apt scan 1\n\x05\0\0\0\0"[..], 1).unwrap();
        let rounds: [(Option<&[u8]>, bool, TakeFn); 6] = [
            (None, true, &all),
            (None, false, &all),
            (None, false, &only_b),
            (Some(b"\x28\xb5\x2f\xfd garbage"), true, &only_b),
            (Some(&old_text), true, &all),
            (Some(&cut), true, &all),
        ];
        for (round, (replace, scans, take)) in rounds.into_iter().enumerate() {
            if let Some(bytes) = replace {
                std::fs::write(&memo, bytes).unwrap();
            }
            if memo.is_file() {
                let f = std::fs::File::options().append(true).open(&memo).unwrap();
                f.set_modified(old).unwrap();
            }
            let mut out = empty("http://m");
            scan_index(&cache, &d, name, "m s", 0, &mut out, &every, take).unwrap();
            assert_eq!(made(), scans, "round {round}");
            out.indexes.push((name.into(), d.clone()));
            let kept = out.text.0.concat();
            assert!(!kept.contains("Maintainer") && !kept.contains("more"));
            let taken: Vec<&str> = out.entries.iter().map(|e| e.name(&out.text)).collect();
            let want: Vec<&str> = ["a", "b"].into_iter().filter(|n| take(n, "", "")).collect();
            assert_eq!(taken, want, "round {round}");
            let provides: Vec<&str> = out.provides.iter().map(|(_, v)| &**v).collect();
            assert_eq!(provides, if want[0] == "a" { vec!["v"] } else { vec![] });
            let cat = Catalog::new(vec![out]);
            for (i, p) in whole
                .iter()
                .filter(|p| take(p.get("Package").unwrap(), "", ""))
                .enumerate()
            {
                let want = Package::from_paragraph(p, "http://m", "s", false).unwrap();
                let got = cat.parse((0, i as u32), &cache).unwrap();
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "round {round}");
            }
        }
    }

    /// The scan's byte-level reading of a paragraph's fields agrees with
    /// the parsed paragraph's: CRLF, odd key case and spacing, repeated
    /// fields, continuation lines, comments, whitespace-only lines.
    #[test]
    fn scanned_fields_read_as_a_parsed_paragraph() {
        let hex = "ab".repeat(32);
        let text = format!(
            "Package: a\r\nVersion:  2 \r\nsha256: {hex}\r\n\r\n\
             Package: b\nPackage: c\nVersion: 1\nProvides: x,\n y\n \t\n\
             Package:d\n# note\nArchitecture:\tall\t\n\n\
             Package: e\nDescription: x\n more\nVersion: 3\u{a0}\nESSENTIAL: yes\n\n\
             Size: 5\n"
        );
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |f: &Fields| -> std::result::Result<Option<Scanned>, String> {
            let got: Vec<Option<String>> = (0..KEPT_FIELDS.len())
                .map(|i| f.get(i).map(String::from))
                .collect();
            seen.borrow_mut().push(got);
            Ok(None)
        };
        let mut out = empty("http://m");
        assert!(scan(text.as_bytes(), 0, &mut out, &record, &all, &mut |_, _| {}).is_ok());
        let want: Vec<Vec<Option<String>>> = parse_paragraphs(&text)
            .iter()
            .map(|p| {
                KEPT_FIELDS
                    .iter()
                    .map(|k| p.get(k).map(String::from))
                    .collect()
            })
            .collect();
        assert_eq!(want.len(), 5);
        assert_eq!(*seen.borrow(), want);
    }

    /// A catalog of one plain index holding `text`.
    fn catalog(text: &str, cache: &Cache) -> Catalog {
        let d = cache.put(text.as_bytes()).unwrap();
        let mut out = empty("http://m");
        let name = "main/binary-amd64/Packages";
        scan_index(cache, &d, name, "m s", 0, &mut out, &every, &all).unwrap();
        out.indexes.push((name.into(), d));
        Catalog::new(vec![out])
    }

    #[test]
    fn a_solve_parses_only_what_its_requests_reach() {
        let text = "Package: app\nVersion: 1\nDepends: lib | alt\nConflicts: old\n\n\
                    Package: lib\nVersion: 1\nProvides: virt\n\n\
                    Package: other\nVersion: 1\nProvides: lib\n\n\
                    Package: alt\nVersion: 1\n\n\
                    Package: old\nVersion: 1\nDepends: far\n\n\
                    Package: far\nVersion: 1\n\n\
                    Package: lonely\nVersion: 1\nDepends: app\n\n\
                    Package: user\nVersion: 1\nDepends: virt\n\n";
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let cat = catalog(text, &cache);
        let got: Vec<String> = cat
            .reachable(["app"], &cache)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        // `old` is only conflicted with: parsed (the solver lists it), but
        // what it depends on is not. `virt` is only provided: its users
        // are not reached.
        assert_eq!(got, ["app", "lib", "other", "alt", "old"]);
        assert!(cat.reachable(["nothing"], &cache).unwrap().is_empty());
        let mut names = cat.names_at("amd64", "amd64");
        names.sort();
        assert_eq!(names.len(), 8);
    }

    /// The solver picks from the reachable packages exactly what it picks
    /// from the whole index, including when a name first met as a
    /// conflict is later needed (then what it depends on is followed).
    #[test]
    fn the_reachable_packages_solve_as_the_whole_index() {
        let text =
            "Package: app\nVersion: 1\nDepends: lib | alt\nConflicts: old (<< 2)\nBreaks: gone\n\n\
                    Package: lib\nVersion: 1\nProvides: virt\nDepends: base (>= 2)\n\n\
                    Package: other\nVersion: 2\nProvides: lib\n\n\
                    Package: alt\nVersion: 1\n\n\
                    Package: old\nVersion: 1\nDepends: far\n\n\
                    Package: old\nVersion: 2\nDepends: far2 | far\n\n\
                    Package: far\nVersion: 1\n\n\
                    Package: far2\nVersion: 1\nDepends: base\n\n\
                    Package: base\nVersion: 1\n\n\
                    Package: base\nVersion: 2\n\n\
                    Package: gone\nVersion: 1\nDepends: far\n\n\
                    Package: needs-old\nVersion: 1\nDepends: old\n\n\
                    Package: user\nVersion: 1\nDepends: virt\n\n";
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let cat = catalog(text, &cache);
        let whole: Vec<Package> = (0..cat.sources[0].entries.len() as u32)
            .map(|i| cat.parse((0, i), &cache).unwrap())
            .collect();
        let dep = |n: &str| {
            vec![Dep {
                name: n.into(),
                arch: None,
                constraint: None,
            }]
        };
        let picked = |universe: &[Package], seeds: &[&str]| -> Vec<String> {
            let requests: Vec<_> = seeds.iter().map(|s| dep(s)).collect();
            crate::solve::solve(universe, "amd64", &requests)
                .unwrap()
                .into_iter()
                .map(|i| format!("{} {}", universe[i].name, universe[i].version))
                .collect()
        };
        // `app` pops first and meets `old` as a conflict; `needs-old` then
        // needs it, so old 2 and what it depends on come in after all.
        for seeds in [
            &["app"][..],
            &["needs-old", "app"],
            &["app", "needs-old"],
            &["user"],
        ] {
            let reached = cat.reachable(seeds.iter().copied(), &cache).unwrap();
            assert!(reached.len() < whole.len(), "{seeds:?}");
            assert_eq!(picked(&reached, seeds), picked(&whole, seeds), "{seeds:?}");
        }
        assert_eq!(
            picked(&whole, &["needs-old", "app"]),
            ["app 1", "base 2", "far2 1", "lib 1", "needs-old 1", "old 2"]
        );
    }
}

#[cfg(test)]
mod mutation_tests {
    /// A Release's checksum lists never panic on mangled input.
    #[test]
    fn release_survives_mutants() {
        let seeds: &[&[u8]] = &[
            b"Origin: Debian\nSuite: stable\nAcquire-By-Hash: yes\nSHA256:\n 6d5ab4e5f6d10a0c5a5b4b7bb1b4d1d6c4d1b0e0f0a0b0c0d0e0f0a0b0c0d0e0f 1234 main/binary-amd64/Packages.xz\n 00 5 main/binary-amd64/Packages\n",
        ];
        for m in kiln_core::mutate::mutants(seeds, 4000) {
            let _ = super::release_hashes(&String::from_utf8_lossy(&m));
        }
    }
}
