//! Package index client: PEP 691 JSON / PEP 503 HTML simple API, find-links, PEP 658 metadata.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use kiln_core::digest::Digest;
use kiln_core::error::{ErrorKind, Result};
use kiln_core::url::strip_credentials;

use crate::PipError;
use kiln_store::cache::{write_atomic, Cache, CacheBucket};
use kiln_store::http::{file_url_path, Http};

use super::metadata::CoreMetadata;
use super::tags::WheelName;

const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// One file an index or find-links location offers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct DistFile {
    pub(crate) filename: String,
    /// Absolute URL, fragment removed.
    pub(crate) url: String,
    pub(crate) sha256: Option<String>,
    pub(crate) requires_python: Option<String>,
    pub(crate) yanked: bool,
    /// PEP 658/714: a `.metadata` file exists; its sha256 when the index gives one.
    pub(crate) core_metadata: Option<Option<String>>,
    /// PEP 700: its size in bytes, when the index says (the largest
    /// downloads start first).
    #[serde(default)]
    pub(crate) size: Option<u64>,
}

impl DistFile {
    /// The file with its URL's credentials taken off, to be kept on disk.
    pub(crate) fn without_credentials(&self) -> DistFile {
        DistFile {
            url: strip_credentials(&self.url),
            ..self.clone()
        }
    }

    pub(crate) fn is_wheel(&self) -> bool {
        self.filename.ends_with(".whl")
    }

    pub(crate) fn digest(&self) -> Option<Digest> {
        self.sha256
            .as_ref()
            .and_then(|h| format!("sha256:{h}").parse().ok())
    }

    /// Its Requires-Python, when that rules `python` out (an unreadable
    /// one does not: METADATA is read then).
    pub(crate) fn excluding(&self, python: &uv_pep440::Version) -> Option<&str> {
        let rp = self.requires_python.as_deref()?;
        let spec = uv_pep440::VersionSpecifiers::from_str(rp).ok()?;
        (!spec.contains(python)).then_some(rp)
    }
}

/// The project name part of a distribution file name, normalised.
pub(crate) fn file_project(filename: &str) -> Option<String> {
    if filename.ends_with(".whl") {
        return WheelName::parse(filename)
            .ok()
            .map(|w| super::normalize(&w.name));
    }
    let stem = filename
        .strip_suffix(".tar.gz")
        .or_else(|| filename.strip_suffix(".zip"))
        .or_else(|| filename.strip_suffix(".tar.bz2"))?;
    stem.rsplit_once('-').map(|(n, _)| super::normalize(n))
}

/// The version part of a distribution file name.
pub(crate) fn file_version(filename: &str) -> Option<String> {
    if filename.ends_with(".whl") {
        return WheelName::version_of(filename).map(str::to_string);
    }
    let stem = filename
        .strip_suffix(".tar.gz")
        .or_else(|| filename.strip_suffix(".zip"))
        .or_else(|| filename.strip_suffix(".tar.bz2"))?;
    stem.rsplit_once('-').map(|(_, v)| v.to_string())
}

pub(crate) struct IndexClient<'a> {
    http: &'a Http,
    cache: &'a Cache,
    pub(crate) indexes: Vec<String>,
    pub(crate) find_links: Vec<String>,
    pages: Mutex<HashMap<String, Arc<Vec<DistFile>>>>,
    links: Mutex<HashMap<String, Listing>>,
    /// What each project's file list was made from (see [`IndexClient::identity`]),
    /// `None` when a file there has no hash and may change under its URL.
    identities: Mutex<HashMap<String, Option<Digest>>>,
    ttl: Duration,
}

/// A find-links location's files, and the digest of what they were read
/// from: a directory's names with each file's size, mtime and inode (a
/// wheel rebuilt in place changes them), or a page's bytes. `stable`: no
/// file can change under its URL unseen (a local file, or one with a hash).
#[derive(Clone)]
struct Listing {
    files: Arc<Vec<DistFile>>,
    digest: Digest,
    stable: bool,
}

/// A page memo's first line: the digest of the page it was read from
/// (`sha256:<hex>\n`), then the [`CachedPage`] as JSON.
const MEMO_HEAD: usize = 72;

/// Pages this process has parsed, by URL (credentials and all) with the
/// digest of the page they were parsed from. The guess's client and the
/// resolver's read the same pages; the resolver reading a freeze's 110
/// memos again took 0.13 CPU-s after the base was read, when nothing else
/// can run. Cleared when it holds [`PARSED_MAX`] pages (a workspace's
/// builds share it; a service runs each build in a process of its own).
static PARSED: Mutex<Option<HashMap<String, Parsed>>> = Mutex::new(None);

/// A page's digest and its files.
type Parsed = (Digest, Arc<Vec<DistFile>>);
const PARSED_MAX: usize = 512;

fn parsed(url: &str, digest: &Digest) -> Option<Arc<Vec<DistFile>>> {
    let held = PARSED.lock().unwrap_or_else(|p| p.into_inner());
    match held.as_ref()?.get(url) {
        Some((d, files)) if d == digest => Some(files.clone()),
        _ => None,
    }
}

fn remember_parsed(url: &str, digest: &Digest, files: &Arc<Vec<DistFile>>) {
    let mut held = PARSED.lock().unwrap_or_else(|p| p.into_inner());
    let map = held.get_or_insert_with(HashMap::new);
    if map.len() >= PARSED_MAX {
        map.clear();
    }
    map.insert(url.to_string(), (digest.clone(), files.clone()));
}

fn memo_head(head: &[u8]) -> Option<Digest> {
    let (line, nl) = head.split_at(MEMO_HEAD - 1);
    (nl == b"\n").then(|| std::str::from_utf8(line).ok()?.parse().ok())?
}

#[derive(Serialize, Deserialize)]
struct CachedPage {
    url: String,
    files: Vec<DistFile>,
}

impl<'a> IndexClient<'a> {
    pub(crate) fn new(
        http: &'a Http,
        cache: &'a Cache,
        indexes: Vec<String>,
        find_links: Vec<String>,
    ) -> Self {
        let ttl = std::env::var("KILN_PIP_INDEX_TTL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600);
        IndexClient {
            http,
            cache,
            indexes,
            find_links,
            pages: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(ttl),
        }
    }

    /// Every file for `project` (normalised) from every index and find-links
    /// location, in source order. `Ok(None)`: no source knows the project.
    pub(crate) fn files(&self, project: &str) -> Result<Option<Arc<Vec<DistFile>>>> {
        if let Some(f) = self.pages.lock().unwrap().get(project) {
            return Ok(Some(f.clone()));
        }
        let mut all = Vec::new();
        let mut found = false;
        let mut sources = Vec::new();
        let mut stable = true;
        for index in &self.indexes {
            let page = self.project_page(&page_url(index, project))?;
            sources.push(page.as_ref().map(|(_, id)| id.clone()));
            if let Some((files, _)) = page {
                found = true;
                // A page's file without a hash may change under its URL.
                stable &= files.iter().all(|f| f.sha256.is_some());
                all.push(files);
            }
        }
        for fl in &self.find_links {
            let listing = self.find_links_listing(fl)?;
            sources.push(Some(listing.digest));
            stable &= listing.stable;
            let here: Vec<DistFile> = listing
                .files
                .iter()
                .filter(|f| file_project(&f.filename).as_deref() == Some(project))
                .cloned()
                .collect();
            if !here.is_empty() {
                found = true;
                all.push(Arc::new(here));
            }
        }
        self.identities
            .lock()
            .unwrap()
            .insert(project.to_string(), stable.then(|| combine(&sources)));
        if !found {
            return Ok(None);
        }
        // One page is taken as it is (shared with the process's other
        // readers of it); several are put together.
        let all = match all.len() {
            1 => all.swap_remove(0),
            _ => Arc::new(all.iter().flat_map(|f| f.iter().cloned()).collect()),
        };
        self.pages
            .lock()
            .unwrap()
            .insert(project.to_string(), all.clone());
        Ok(Some(all))
    }

    /// What `project`'s file list is made from now, as [`IndexClient::files`]
    /// would read it (a page past the TTL is revalidated), without parsing
    /// a page whose memo is fresh: the same digest as the one `files`
    /// recorded means the same files.
    pub(crate) fn identity(&self, project: &str) -> Result<Digest> {
        let mut sources = Vec::new();
        for index in &self.indexes {
            let url = page_url(index, project);
            sources.push(match self.fresh_identity(&url) {
                Some(digest) => Some(digest),
                None => self.project_page(&url)?.map(|(_, id)| id),
            });
        }
        for fl in &self.find_links {
            sources.push(Some(self.find_links_listing(fl)?.digest));
        }
        Ok(combine(&sources))
    }

    /// Every project [`IndexClient::files`] read, with what its file list
    /// was made from; `None` when one of them may change unseen.
    pub(crate) fn identities(&self) -> Option<Vec<(String, Digest)>> {
        let mut read: Vec<(String, Digest)> = self
            .identities
            .lock()
            .unwrap()
            .iter()
            .map(|(p, id)| id.clone().map(|id| (p.clone(), id)))
            .collect::<Option<_>>()?;
        read.sort();
        Some(read)
    }

    /// Whether every index has a fresh memo of `project`'s page (nothing
    /// to fetch ahead).
    pub(crate) fn fresh(&self, project: &str) -> bool {
        self.indexes
            .iter()
            .all(|i| self.memo_is_fresh(&page_url(i, project)))
    }

    /// Every project name the sources know, for "did you mean" hints:
    /// each index's root page (PEP 503/691; a `file://` index's
    /// directories) and the find-links files. Best effort: a source that
    /// does not answer adds nothing.
    pub(crate) fn project_names(&self) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        for index in &self.indexes {
            let url = format!("{}/", index.trim_end_matches('/'));
            match file_url_path(&url) {
                Some(dir) if dir.is_dir() => {
                    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if e.path().is_dir() {
                            names.insert(e.file_name().to_string_lossy().into_owned());
                        }
                    }
                }
                _ => {
                    let Ok(f) = self
                        .http
                        .get_cached(&url, Some(ACCEPT), self.cache, &|_| Ok(()))
                    else {
                        continue;
                    };
                    names.extend(root_page_names(&f.bytes));
                }
            }
        }
        for fl in &self.find_links {
            if let Ok(listing) = self.find_links_listing(fl) {
                names.extend(
                    listing
                        .files
                        .iter()
                        .filter_map(|f| file_project(&f.filename)),
                );
            }
        }
        names.into_iter().collect()
    }

    fn page_cache_path(&self, url: &str) -> PathBuf {
        self.cache
            .entry(CacheBucket::PipPages, Digest::of(url.as_bytes()).hex())
    }

    /// The memo of a remote page's files, if it is younger than the TTL.
    fn memo_is_fresh(&self, url: &str) -> bool {
        file_url_path(url).is_none()
            && std::fs::metadata(self.page_cache_path(url))
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age < self.ttl)
    }

    /// A fresh memo's page digest: its first line, read alone (a warm
    /// build checking a kept resolution reads nothing more of the page).
    fn fresh_identity(&self, url: &str) -> Option<Digest> {
        use std::io::Read;
        if !self.memo_is_fresh(url) {
            return None;
        }
        let mut head = [0u8; MEMO_HEAD];
        std::fs::File::open(self.page_cache_path(url))
            .and_then(|mut f| f.read_exact(&mut head))
            .ok()?;
        memo_head(&head)
    }

    /// A fresh memo's page digest and files (their URLs with the page's
    /// credentials, which the memo does not hold); taken from [`PARSED`]
    /// when this process has read that page already.
    fn fresh_memo(&self, url: &str) -> Option<(Digest, Arc<Vec<DistFile>>)> {
        let digest = self.fresh_identity(url)?;
        if let Some(files) = parsed(url, &digest) {
            return Some((digest, files));
        }
        let bytes = std::fs::read(self.page_cache_path(url)).ok()?;
        if memo_head(bytes.get(..MEMO_HEAD)?)? != digest {
            return None;
        }
        let mut c = serde_json::from_slice::<CachedPage>(&bytes[MEMO_HEAD..]).ok()?;
        if c.url != strip_credentials(url) {
            return None;
        }
        credentials_back(&mut c.files, &[url.to_string()]);
        let files = Arc::new(c.files);
        remember_parsed(url, &digest, &files);
        Some((digest, files))
    }

    /// One project page, and the digest of the page as the index sent it
    /// (kept as the first line of its memo); `Ok(None)` when the index does
    /// not have the project.
    fn project_page(&self, url: &str) -> Result<Option<(Arc<Vec<DistFile>>, Digest)>> {
        if let Some((digest, files)) = self.fresh_memo(url) {
            return Ok(Some((files, digest)));
        }
        let local = file_url_path(url);
        let fetch_url = match &local {
            Some(p) if p.is_dir() => format!("{url}index.html"),
            _ => url.to_string(),
        };
        let fetched = match self
            .http
            .get_cached(&fetch_url, Some(ACCEPT), self.cache, &|_| Ok(()))
        {
            Ok(f) => f,
            // A missing page (HTTP 404/410, or no such local file) means the
            // source does not have the project. Told by class and message, so
            // the store's error may be a plain or a typed one.
            Err(e)
                if e.kind() == ErrorKind::Input
                    && (local.is_some() || e.to_string().contains("not found (HTTP")) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let is_json = fetched
            .content_type
            .as_deref()
            .is_some_and(|c| c.contains("json"))
            || (local.is_some() && fetched.bytes.first() == Some(&b'{'));
        let files = if is_json {
            parse_json(&fetched.bytes, &fetched.url)?
        } else {
            parse_html(&String::from_utf8_lossy(&fetched.bytes), &fetched.url)
        };
        let digest = fetched.digest.unwrap_or_else(|| Digest::of(&fetched.bytes));
        if local.is_none() {
            // Kept without credentials in clear (put back when read); the
            // files of a page reached without any are kept as they are.
            let mut memo = format!("{digest}\n").into_bytes();
            let bare = strip_credentials(url);
            let page = CachedPage {
                files: match bare == url {
                    true => files.clone(),
                    false => files.iter().map(DistFile::without_credentials).collect(),
                },
                url: bare,
            };
            if serde_json::to_writer(&mut memo, &page).is_ok() {
                write_atomic(&self.page_cache_path(url), &memo);
                let files = Arc::new(files);
                remember_parsed(url, &digest, &files);
                return Ok(Some((files, digest)));
            }
        }
        Ok(Some((Arc::new(files), digest)))
    }

    /// Files in a find-links directory or HTML page (cached for the run).
    fn find_links_listing(&self, loc: &str) -> Result<Listing> {
        if let Some(l) = self.links.lock().unwrap().get(loc) {
            return Ok(l.clone());
        }
        let listing = match file_url_path(loc) {
            Some(dir) if dir.is_dir() => {
                use std::os::unix::fs::MetadataExt;
                let mut out = Vec::new();
                let rd = std::fs::read_dir(&dir).map_err(|e| PipError::FindLinks {
                    path: dir.clone(),
                    detail: e.to_string(),
                })?;
                let mut stamps = Vec::new();
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if file_project(&name).is_some() {
                        // Followed: a wheel may be a link into a build's output.
                        let md = std::fs::metadata(e.path()).ok();
                        if let Some(m) = &md {
                            let (s, ns) = (m.mtime(), m.mtime_nsec());
                            stamps.push(format!(
                                "{name}\0{} {s}.{ns} {} {}",
                                m.len(),
                                m.ino(),
                                m.dev()
                            ));
                        }
                        out.push(DistFile {
                            url: super::spec::file_url(&e.path()),
                            filename: name,
                            sha256: None,
                            requires_python: None,
                            yanked: false,
                            core_metadata: None,
                            size: md.map(|m| m.len()),
                        });
                    }
                }
                out.sort_by(|a, b| a.filename.cmp(&b.filename));
                stamps.sort();
                Listing {
                    files: Arc::new(out),
                    digest: Digest::of(stamps.join("\n").as_bytes()),
                    stable: true,
                }
            }
            Some(dir) if !dir.exists() => Listing {
                files: Arc::default(),
                digest: Digest::of(b""),
                stable: true,
            },
            _ => {
                let f = self.http.get(loc, Some("text/html"))?;
                let files = parse_html(&String::from_utf8_lossy(&f.bytes), &f.url);
                Listing {
                    stable: files.iter().all(|f| f.sha256.is_some()),
                    files: Arc::new(files),
                    digest: Digest::of(&f.bytes),
                }
            }
        };
        self.links
            .lock()
            .unwrap()
            .insert(loc.to_string(), listing.clone());
        Ok(listing)
    }

    /// Core metadata of a wheel: PEP 658 file when offered, else from the wheel itself.
    pub(crate) fn metadata(&self, file: &DistFile) -> Result<CoreMetadata> {
        let memo = file
            .sha256
            .as_ref()
            .map(|h| self.cache.entry(CacheBucket::PipMetadata, h));
        if let Some(p) = &memo {
            if let Ok(b) = std::fs::read(p) {
                if let Ok(m) = CoreMetadata::parse(&b) {
                    return Ok(m);
                }
            }
        }
        let bytes = match &file.core_metadata {
            Some(hash) => {
                let expected = hash
                    .as_ref()
                    .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
                let url = format!("{}.metadata", file.url);
                let (d, _) = self.http.download(&url, expected.as_ref(), self.cache)?;
                self.cache.read(&d)?
            }
            // No PEP 658 file: the METADATA member alone, by range
            // requests, unless the wheel is at hand or the server does not
            // serve ranges (then the whole wheel, as before).
            None if !self.cached_wheel(file) && file_url_path(&file.url).is_none() => {
                match super::remote_zip::metadata(self.http, &file.url, &file.filename) {
                    Some(b) => b,
                    None => self.metadata_from_download(file)?,
                }
            }
            None => self.metadata_from_download(file)?,
        };
        let m = CoreMetadata::parse(&bytes)
            .map_err(|e| e.context(format!("metadata of {}", file.filename)))?;
        if let Some(p) = &memo {
            write_atomic(p, &bytes);
        }
        Ok(m)
    }

    /// Whether the wheel is in the cache already (its sha256 known).
    fn cached_wheel(&self, file: &DistFile) -> bool {
        file.digest().is_some_and(|d| self.cache.contains(&d))
    }

    /// METADATA of the wheel downloaded whole (or read from the cache).
    fn metadata_from_download(&self, file: &DistFile) -> Result<Vec<u8>> {
        let (d, _) = self.download(file)?;
        let path = self.cache.blob_path(&d);
        super::wheel::read_metadata_file(&path, &file.filename)
    }

    /// [`IndexClient::download`] of a wheel only installed (see
    /// [`Http::download_artifact`]).
    pub(crate) fn download_artifact(&self, file: &DistFile) -> Result<(Digest, u64)> {
        self.http
            .download_artifact(&file.url, file.digest().as_ref(), self.cache)
            .map_err(|e| e.context(format!("downloading {}", file.filename)))
    }

    /// Download (verified against the index's sha256) into the cache.
    pub(crate) fn download(&self, file: &DistFile) -> Result<(Digest, u64)> {
        self.http
            .download(&file.url, file.digest().as_ref(), self.cache)
            .map_err(|e| e.context(format!("downloading {}", file.filename)))
    }
}

/// Put back on `files` the credentials [`DistFile::without_credentials`]
/// took off, from the first of `sources` that has them for each URL's
/// host. (Nothing to do, and no URL read, when no source has any.)
pub(crate) fn credentials_back<'f>(
    files: impl IntoIterator<Item = &'f mut DistFile>,
    sources: &[String],
) {
    if sources.iter().all(|s| strip_credentials(s) == *s) {
        return;
    }
    for f in files {
        f.url = kiln_core::url::with_credentials(&f.url, sources);
    }
}

/// A project's page on an index.
fn page_url(index: &str, project: &str) -> String {
    format!("{}/{project}/", index.trim_end_matches('/'))
}

/// One digest for the sources of a project's files, in source order
/// (`None`: the source does not have the project).
fn combine(sources: &[Option<Digest>]) -> Digest {
    let mut text = String::new();
    for s in sources {
        text.push_str(s.as_ref().map_or("-", |d| d.hex()));
        text.push('\n');
    }
    Digest::of(text.as_bytes())
}

/// `href` resolved against a page's URL, parsed once per page (`None`: it
/// does not parse, and hrefs are taken as they are). A large project's
/// page lists thousands of files.
fn join(base: Option<&url::Url>, href: &str) -> String {
    if canonical_absolute(href) {
        return href.to_string();
    }
    match base.map(|b| b.join(href)) {
        Some(Ok(u)) => u.to_string(),
        _ => href.to_string(),
    }
}

/// Whether `href` is an absolute http(s) URL that parsing would give back
/// as it is, so [`join`] need not parse it: most pages give every file's
/// URL whole, and parsing each of a freeze's 40 000 was 1.5% of its cold
/// build. Conservative: a port, credentials, an upper-case host, a
/// percent sign, a dot segment or anything outside plain ASCII is parsed.
fn canonical_absolute(href: &str) -> bool {
    let Some(rest) = href
        .strip_prefix("https://")
        .or_else(|| href.strip_prefix("http://"))
    else {
        return false;
    };
    let Some((host, path)) = rest.split_once('/') else {
        return false;
    };
    let path = path.split('#').next().unwrap_or(path);
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !host.starts_with('.')
        && !host.ends_with('.')
        && href
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:#=+!$&'()*,;?@".contains(&b))
        && !path.split(['/', '?']).any(|seg| seg == "." || seg == "..")
}

/// Split `url#sha256=…` into the URL and the hash.
fn split_fragment(u: &str) -> (String, Option<String>) {
    match u.split_once('#') {
        Some((base, frag)) => (
            base.to_string(),
            frag.strip_prefix("sha256=").map(|h| h.to_ascii_lowercase()),
        ),
        None => (u.to_string(), None),
    }
}

/// A PEP 691 page, its strings borrowed from the page where they can be:
/// a large project's page lists thousands of files (13 MB of JSON for a
/// 110-wheel freeze), and most are never chosen.
#[derive(Deserialize)]
struct JsonPage<'a> {
    #[serde(borrow)]
    files: Vec<JsonFile<'a>>,
}

#[derive(Deserialize)]
struct JsonFile<'a> {
    #[serde(borrow)]
    filename: Cow<'a, str>,
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(default, borrow)]
    hashes: Hashes<'a>,
    #[serde(default, borrow, rename = "requires-python")]
    requires_python: Option<Cow<'a, str>>,
    #[serde(default)]
    yanked: Yanked,
    #[serde(default, rename = "core-metadata")]
    core_metadata: MetadataFile,
    #[serde(default, rename = "dist-info-metadata")]
    dist_info_metadata: MetadataFile,
    #[serde(default)]
    size: Option<u64>,
}

/// A file's `hashes`: only sha256 is used (others are skipped unread).
#[derive(Deserialize, Default)]
struct Hashes<'a> {
    #[serde(default, borrow)]
    sha256: Option<Cow<'a, str>>,
}

/// `yanked`: `true`, or a reason (a string) that also means yanked;
/// anything else is not.
#[derive(Default)]
struct Yanked(bool);

/// `core-metadata` (PEP 714; `dist-info-metadata` before it): `true`, or
/// an object of hashes, says a `.metadata` file exists (`Some`), with its
/// sha256 when given; anything else says none does.
#[derive(Default)]
struct MetadataFile(Option<Option<String>>);

impl<'de> Deserialize<'de> for Yanked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(Flag(|v: FlagValue| match v {
            FlagValue::Bool(b) => Yanked(b),
            FlagValue::Str => Yanked(true),
            FlagValue::Hashes(_) | FlagValue::Other => Yanked(false),
        }))
    }
}

impl<'de> Deserialize<'de> for MetadataFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(Flag(|v: FlagValue| match v {
            FlagValue::Bool(true) => MetadataFile(Some(None)),
            FlagValue::Hashes(sha256) => MetadataFile(Some(sha256)),
            FlagValue::Bool(false) | FlagValue::Str | FlagValue::Other => MetadataFile(None),
        }))
    }
}

/// What a flag-like field held, as [`Yanked`] and [`MetadataFile`] read it.
enum FlagValue {
    Bool(bool),
    Str,
    /// An object, with its `sha256` string (lowercase) if it has one.
    Hashes(Option<String>),
    Other,
}

/// A visitor taking any JSON value to a [`FlagValue`], then through `.0`.
struct Flag<F>(F);

impl<'de, T, F: FnOnce(FlagValue) -> T> serde::de::Visitor<'de> for Flag<F> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<T, E> {
        Ok((self.0)(FlagValue::Bool(v)))
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<T, E> {
        Ok((self.0)(FlagValue::Str))
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<T, E> {
        Ok((self.0)(FlagValue::Other))
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<T, E> {
        Ok((self.0)(FlagValue::Other))
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<T, E> {
        Ok((self.0)(FlagValue::Other))
    }
    fn visit_unit<E>(self) -> std::result::Result<T, E> {
        Ok((self.0)(FlagValue::Other))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> std::result::Result<T, A::Error> {
        while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok((self.0)(FlagValue::Other))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> std::result::Result<T, A::Error> {
        let mut sha256 = None;
        while let Some(k) = a.next_key::<Cow<'de, str>>()? {
            match k.as_ref() {
                "sha256" => {
                    let v = a.next_value::<serde_json::Value>()?;
                    sha256 = v.as_str().map(str::to_ascii_lowercase);
                }
                _ => {
                    a.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok((self.0)(FlagValue::Hashes(sha256)))
    }
}

/// Project names of an index's root page: PEP 691 JSON (`projects[].name`)
/// or PEP 503 HTML (the anchors' text).
fn root_page_names(bytes: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Root {
        projects: Vec<Project>,
    }
    #[derive(Deserialize)]
    struct Project {
        name: String,
    }
    if let Ok(r) = serde_json::from_slice::<Root>(bytes) {
        return r.projects.into_iter().map(|p| p.name).collect();
    }
    let html = String::from_utf8_lossy(bytes);
    html.split("<a")
        .skip(1)
        .filter_map(|a| {
            let text = a.split_once('>')?.1.split_once("</a")?.0.trim();
            (!text.is_empty()).then(|| unescape(text))
        })
        .collect()
}

fn parse_json(bytes: &[u8], page_url: &str) -> Result<Vec<DistFile>> {
    let page: JsonPage =
        serde_json::from_slice(bytes).map_err(|e| PipError::MalformedIndexPage {
            url: kiln_store::http::redact(page_url),
            detail: e.to_string(),
        })?;
    let base = url::Url::parse(page_url).ok();
    Ok(page
        .files
        .into_iter()
        .map(|f| {
            let (url, frag_hash) = split_fragment(&join(base.as_ref(), &f.url));
            DistFile {
                filename: f.filename.into_owned(),
                url,
                sha256: f
                    .hashes
                    .sha256
                    .map(|h| h.to_ascii_lowercase())
                    .or(frag_hash),
                requires_python: f
                    .requires_python
                    .filter(|s| !s.trim().is_empty())
                    .map(Cow::into_owned),
                yanked: f.yanked.0,
                core_metadata: f.core_metadata.0.or(f.dist_info_metadata.0),
                size: f.size,
            }
        })
        .collect())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// Attributes of one start tag's inner text (`a href="x" data-y`).
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let name = tag[start..i].to_ascii_lowercase();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            let value = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                i += 1;
                let s = i;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                let v = &tag[s..i];
                i += 1;
                v
            } else {
                let s = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                &tag[s..i]
            };
            out.insert(name, unescape(value));
        } else if !name.is_empty() {
            out.insert(name, String::new());
        }
    }
    out
}

/// PEP 503 anchors.
pub(crate) fn parse_html(html: &str, page_url: &str) -> Vec<DistFile> {
    let mut out = Vec::new();
    let base = url::Url::parse(page_url).ok();
    let lower = html.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(start) = lower[pos..].find("<a") {
        let s = pos + start;
        let Some(end) = lower[s..].find('>') else {
            break;
        };
        let tag = &html[s + 2..s + end];
        pos = s + end + 1;
        if !tag.starts_with(char::is_whitespace) {
            continue;
        }
        let attrs = attributes(tag.trim_end_matches('/'));
        let Some(href) = attrs.get("href") else {
            continue;
        };
        let (url, hash) = split_fragment(&join(base.as_ref(), href));
        let last = url.rsplit('/').next().unwrap_or("");
        let filename = kiln_store::http::file_url_path(&format!("file:///{last}"))
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| last.to_string());
        if file_project(&filename).is_none() {
            continue;
        }
        let meta = attrs
            .get("data-core-metadata")
            .or_else(|| attrs.get("data-dist-info-metadata"))
            .and_then(|v| match v.as_str() {
                "false" => None,
                v => Some(v.strip_prefix("sha256=").map(|h| h.to_ascii_lowercase())),
            });
        out.push(DistFile {
            filename,
            url,
            sha256: hash,
            requires_python: attrs
                .get("data-requires-python")
                .filter(|s| !s.trim().is_empty())
                .cloned(),
            yanked: attrs.contains_key("data-yanked"),
            core_metadata: meta,
            size: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_page() {
        let html = r#"<html><body>
<a href="../../files/foo-1.0-py3-none-any.whl#sha256=ABCD" data-requires-python="&gt;=3.8" data-dist-info-metadata="sha256=ee">foo-1.0-py3-none-any.whl</a>
<a href="foo-0.9.tar.gz" data-yanked="">foo-0.9.tar.gz</a>
<a href="/other/readme.txt">x</a>
</body></html>"#;
        let f = parse_html(html, "http://127.0.0.1:8/simple/foo/");
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0].url,
            "http://127.0.0.1:8/files/foo-1.0-py3-none-any.whl"
        );
        assert_eq!(f[0].sha256.as_deref(), Some("abcd"));
        assert_eq!(f[0].requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(f[0].core_metadata, Some(Some("ee".into())));
        assert!(f[1].yanked && !f[0].yanked);
    }

    #[test]
    fn malformed_json_page_is_a_network_error_without_credentials() {
        let err =
            parse_json(b"{\"files\": 3}", "https://user:s3cret@host/simple/foo/").unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Network);
        assert!(matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::MalformedIndexPage { url, .. }) if url == "https://***@host/simple/foo/"
        ));
        let m = err.to_string();
        assert!(
            m.starts_with("https://***@host/simple/foo/: malformed simple-API JSON: "),
            "{m}"
        );
        assert!(!m.contains("s3cret"), "{m}");
    }

    #[test]
    fn absolute_urls_taken_as_they_are_are_what_parsing_gives() {
        let base = url::Url::parse("https://idx.example/simple/foo/").unwrap();
        for href in [
            "https://files.example/packages/ab/cd/foo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl#sha256=00ff",
            "http://x/foo-0.1+local.1-py3-none-any.whl",
            "https://files.example/a/b/foo-1.0.tar.gz?x=1&y=2",
            "https://files.example/a/b/c.whl#",
            // Parsed (not taken as they are), each for a reason.
            "https://Files.Example/foo.whl",
            "https://files.example:443/foo.whl",
            "https://user:pw@files.example/foo.whl",
            "https://files.example/a/./b/../foo.whl",
            "https://files.example/a/..",
            "https://files.example/a%2fb/foo.whl",
            "https://files.example/a b/foo.whl",
            "https://files.example/caf\u{e9}/foo.whl",
            "https://files.example",
            "https://files.example./foo.whl",
            "https://xn--caf-dma.example/foo.whl",
            "HTTPS://files.example/foo.whl",
            "../../f/foo-1.0.whl",
            "//files.example/foo.whl",
        ] {
            let parsed = base.join(href).unwrap().to_string();
            assert_eq!(join(Some(&base), href), parsed, "{href}");
            if canonical_absolute(href) {
                assert_eq!(parsed, href, "{href} is not what parsing gives");
            }
        }
        assert!(canonical_absolute(
            "https://files.example/p/foo-1.0-py3-none-any.whl#sha256=ab"
        ));
        assert!(!canonical_absolute("https://Files.Example/foo.whl"));
    }

    #[test]
    fn json_page_flags_of_every_shape() {
        let j = br#"{"files":[
 {"filename":"a-1.whl","url":"https://f.example/a-1.whl","yanked":null,"core-metadata":false,"hashes":{"md5":"x","sha256":"DD","blake2b_256":"y"}},
 {"filename":"a-2.whl","url":"https://f.example/a-2.whl","yanked":1,"core-metadata":{"sha256":5}},
 {"filename":"a-3.whl","url":"https://f.example/a-3.whl","yanked":"","core-metadata":{}},
 {"filename":"a-4.whl","url":"https://f.example/a-4.whl","yanked":["x"],"dist-info-metadata":{"sha256":"CC","md5":"z"}},
 {"filename":"a-5.whl","url":"https://f.example/a-5.whl#sha256=EE","core-metadata":"yes","requires-python":"  "},
 {"filename":"a-\u00e9.whl","url":"https://f.example/a-6.whl","yanked":{"reason":"x"},"core-metadata":true,"dist-info-metadata":{"sha256":"ff"}}]}"#;
        let f = parse_json(j, "https://idx.example/simple/a/").unwrap();
        let got: Vec<_> = f
            .iter()
            .map(|f| {
                (
                    f.filename.as_str(),
                    f.yanked,
                    f.core_metadata.clone(),
                    f.sha256.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a-1.whl", false, None, Some("dd".to_string())),
                ("a-2.whl", false, Some(None), None),
                ("a-3.whl", true, Some(None), None),
                ("a-4.whl", false, Some(Some("cc".to_string())), None),
                ("a-5.whl", false, None, Some("ee".to_string())),
                ("a-\u{e9}.whl", false, Some(None), None),
            ]
        );
        assert_eq!(f[4].url, "https://f.example/a-5.whl");
        assert_eq!(f[4].requires_python, None);
    }

    /// A page's files are kept without the index's credentials and get
    /// them back when read; a file on another host never had any.
    #[test]
    fn kept_files_hold_no_credentials_and_get_them_back() {
        let index = "https://kiln:pw@index.example/simple/demo/".to_string();
        let file = |url: &str| DistFile {
            filename: "demo-1.0-py3-none-any.whl".into(),
            url: url.into(),
            sha256: Some("ab".repeat(32)),
            requires_python: None,
            yanked: false,
            core_metadata: None,
            size: None,
        };
        let files = vec![
            file("https://kiln:pw@index.example/files/demo-1.0-py3-none-any.whl"),
            file("https://files.example/demo-1.0-py3-none-any.whl"),
        ];
        let mut kept: Vec<DistFile> = files.iter().map(DistFile::without_credentials).collect();
        assert!(kept.iter().all(|f| !f.url.contains("pw")), "{kept:?}");
        credentials_back(&mut kept, std::slice::from_ref(&index));
        assert_eq!(kept, files);
    }

    /// A memo is the page's digest on a line, then JSON; one of an older
    /// kiln (JSON alone) or cut short has no head, and is fetched again.
    #[test]
    fn a_page_memo_starts_with_the_page_digest() {
        let d = Digest::of(b"page");
        let memo = format!("{d}\n{{\"url\":\"u\",\"files\":[]}}");
        assert_eq!(memo_head(&memo.as_bytes()[..MEMO_HEAD]), Some(d));
        let old = br#"{"url":"https://index.example/simple/demo/","files":[{"filename":"demo-1.0-py3-none-any.whl"}]}"#;
        assert_eq!(memo_head(&old[..MEMO_HEAD]), None);
        let mut cut = memo.into_bytes()[..MEMO_HEAD].to_vec();
        cut[MEMO_HEAD - 1] = b'x';
        assert_eq!(memo_head(&cut), None);
    }

    #[test]
    fn json_page() {
        let j = br#"{"meta":{"api-version":"1.1"},"name":"foo","files":[
 {"filename":"foo-1.0-py3-none-any.whl","url":"../../f/foo-1.0-py3-none-any.whl","hashes":{"sha256":"AA"},"requires-python":">=3.9","core-metadata":{"sha256":"bb"},"yanked":false},
 {"filename":"foo-0.1-py3-none-any.whl","url":"http://x/foo-0.1-py3-none-any.whl","hashes":{},"yanked":"broken","dist-info-metadata":true}]}"#;
        let f = parse_json(j, "http://127.0.0.1:8/simple/foo/").unwrap();
        assert_eq!(f[0].url, "http://127.0.0.1:8/f/foo-1.0-py3-none-any.whl");
        assert_eq!(f[0].sha256.as_deref(), Some("aa"));
        assert_eq!(f[0].core_metadata, Some(Some("bb".into())));
        assert!(f[1].yanked);
        assert_eq!(f[1].core_metadata, Some(None));
        assert_eq!(
            file_project("Foo_Bar-1.0.tar.gz").as_deref(),
            Some("foo-bar")
        );
        assert_eq!(
            file_version("foo-1.0.post1.zip").as_deref(),
            Some("1.0.post1")
        );
    }
}
