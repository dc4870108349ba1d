//! Push to a registry, in an order that keeps every tag complete: all blobs
//! (each checked with HEAD first and skipped when present, mounted from the
//! base's repository when it lives on the same registry, uploaded
//! otherwise), then each platform's manifest by digest, then the SBOMs as
//! OCI 1.1 referrers of those manifests, and only then the tags. A tag is
//! the last thing written, so it never points at an image whose blobs or
//! SBOMs are missing. A push that fails part-way says what the registry
//! holds ([`RegistryError::PushIncomplete`]).

use std::fmt;

use oci_client::Reference;
use serde::Serialize;
use serde_json::{json, Value};

use crate::blobs::{Blobs, Origin};
use crate::image::Assembled;
use crate::manifest::{canonical_json, Desc, OCI_INDEX, OCI_MANIFEST};
use crate::output::pushed::Pushed;
use crate::registry::Registry;
use crate::{ImageError, RegistryError};
use kiln_core::digest::Digest;
use kiln_core::error::{Error, Result};
use kiln_core::progress::Progress;

/// The config of an artifact manifest: `{}` (OCI 1.1's empty descriptor).
pub(crate) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const ANN_CREATED: &str = "org.opencontainers.image.created";
const ANN_TITLE: &str = "org.opencontainers.image.title";

/// What a push wrote; after a failure, what it had written
/// ([`RegistryError::PushIncomplete`] carries it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushReport {
    pub reference: String,
    pub digest: String,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    pub bytes_uploaded: u64,
    /// SBOM referrer manifests pushed (one per platform manifest).
    pub referrers: usize,
    /// Their blobs (SBOMs, the empty config) uploaded; not in `blobs_uploaded`.
    pub referrer_blobs_uploaded: usize,
    pub referrer_bytes_uploaded: u64,
    /// Referrers tag schema indexes (`sha256-<hex>`) written, for registries
    /// without the referrers API.
    pub referrer_tags_updated: usize,
    /// The platform manifests pushed by digest.
    pub manifests: Vec<String>,
    /// The SBOM referrer manifests pushed, in the order of the platforms.
    pub referrer_manifests: Vec<String>,
    /// The tags written (each pointing at `digest`).
    pub tags: Vec<String>,
    /// Every tag already named this image (and its SBOMs were there):
    /// nothing was sent but one HEAD per tag (and one per SBOM referrer
    /// the cache does not know the repository holds).
    pub up_to_date: bool,
}

/// The steps of a push, in order; where a failed push stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStep {
    Blobs,
    Manifests,
    Referrers,
    Tags,
}

impl fmt::Display for PushStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PushStep::Blobs => "pushing blobs",
            PushStep::Manifests => "pushing manifests",
            PushStep::Referrers => "pushing SBOM referrers",
            PushStep::Tags => "writing tags",
        })
    }
}

/// An SBOM in the cache, for one platform's manifest.
#[derive(Clone)]
pub struct SbomBlob {
    /// The document's media type (the referrer's `artifactType`).
    pub media_type: &'static str,
    pub digest: Digest,
    pub size: u64,
    /// `linux-amd64.spdx.json`: the blob's title annotation.
    pub file_name: String,
    /// The referrer's `org.opencontainers.image.created` (RFC 3339).
    pub created: String,
}

/// Push `image` to `repo` under `tags`, with `sboms` (one per platform, in
/// the order of `image.images`; none with `--no-sbom`) attached as
/// referrers. Fails with [`RegistryError::PushIncomplete`] once anything
/// was sent, naming what the registry holds.
#[allow(clippy::too_many_arguments)]
pub fn push(
    registry: &Registry,
    repo: &str,
    tags: &[String],
    image: &Assembled,
    sboms: &[SbomBlob],
    blobs: &Blobs,
    progress: &Progress,
    early: &Early,
) -> Result<PushReport> {
    // Bad names fail before anything is sent.
    let tag_refs = tags
        .iter()
        .map(|t| tag_ref(repo, t))
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = tag_refs.first() else {
        return Err(Error::internal("push without a tag"));
    };
    let mut report = PushReport {
        reference: first.whole(),
        digest: image.top().digest.to_string(),
        ..Default::default()
    };
    if let Some(referrers) = already_pushed(registry, &tag_refs, first, image, sboms, blobs) {
        report.referrer_manifests = referrers;
        report.tags = tags.to_vec();
        report.manifests = image
            .images
            .iter()
            .map(|i| i.manifest.digest.to_string())
            .collect();
        report.up_to_date = true;
        return Ok(report);
    }
    let todo = image_blobs(image);
    let mut step = PushStep::Blobs;
    let pushed = (|| -> Result<()> {
        let total = todo.iter().map(|d| d.size).sum();
        let bar = progress.bytes_bar(total, "pushing blobs");
        let pushed = push_blobs(registry, first, &todo, blobs, early, &|d| bar.inc(d.size));
        bar.finish_and_clear();
        for sent in &pushed.sent {
            match sent {
                Sent::Skipped => report.blobs_skipped += 1,
                Sent::Mounted => report.blobs_mounted += 1,
                Sent::Uploaded(size) => {
                    report.blobs_uploaded += 1;
                    report.bytes_uploaded += size;
                }
            }
        }
        if let Some(e) = pushed.failed {
            return Err(e);
        }

        step = PushStep::Manifests;
        let read = |d: &Digest| -> Result<Vec<u8>> { blobs.cache.read(d) };
        for img in &image.images {
            let r = digest_ref(first, &img.manifest.digest);
            registry.push_manifest(&r, &read(&img.manifest.digest)?, &img.manifest.media_type)?;
            report.manifests.push(img.manifest.digest.to_string());
        }

        if !sboms.is_empty() {
            step = PushStep::Referrers;
            let spinner = progress.spinner("pushing SBOM referrers");
            push_sboms(registry, first, image, sboms, blobs, &mut report)?;
            spinner.finish_and_clear();
        }

        step = PushStep::Tags;
        let top = image.top();
        let top_bytes = read(&top.digest)?;
        for (tag, r) in tags.iter().zip(&tag_refs) {
            registry.push_manifest(r, &top_bytes, &top.media_type)?;
            report.tags.push(tag.clone());
        }
        Ok(())
    })();
    match pushed {
        Ok(()) => Ok(report),
        Err(source) => Err(RegistryError::PushIncomplete {
            repository: format!("{}/{}", first.registry(), first.repository()),
            report: Box::new(report),
            blobs_total: todo.len(),
            sboms: sboms.len().min(image.images.len()),
            tags: tags.to_vec(),
            step,
            source,
        }
        .into()),
    }
}

/// Whether the registry already holds this push: every tag names the
/// image's digest (tags are written last, so its blobs and manifests are
/// there), and, with SBOMs, each platform manifest has an SPDX referrer.
/// Any doubt (an error, a missing tag) means a full push. Returns the
/// referrer found for each SBOM.
fn already_pushed(
    registry: &Registry,
    tag_refs: &[Reference],
    first: &Reference,
    image: &Assembled,
    sboms: &[SbomBlob],
    blobs: &Blobs,
) -> Option<Vec<String>> {
    let top = image.top().digest.to_string();
    let tags_there = tag_refs
        .iter()
        .all(|r| matches!(registry.manifest_digest_quick(r), Ok(Some(d)) if d == top));
    if !tags_there {
        return None;
    }
    // The SBOM referrers kiln would push are known here (the same SBOM
    // gives the same manifest): none to ask for when this cache knows the
    // repository holds them, else one HEAD by digest each, no listing. A
    // referrer pushed by kiln was made findable (API or tag schema) in
    // the same step.
    let pushed = Pushed::new(blobs.cache);
    image
        .images
        .iter()
        .zip(sboms)
        .map(|(img, sbom)| {
            let digest = Digest::of(&sbom_referrer(img, sbom));
            referrer_there(registry, &pushed, first, &digest).then(|| digest.to_string())
        })
        .collect()
}

/// Whether the repository of `repo` holds the referrer `digest`: known to
/// this cache, or found by one HEAD (and then remembered).
fn referrer_there(registry: &Registry, pushed: &Pushed, repo: &Reference, digest: &Digest) -> bool {
    if pushed.holds(repo, digest) {
        return true;
    }
    let want = digest.to_string();
    let there = matches!(
        registry.manifest_digest_quick(&digest_ref(repo, digest)),
        Ok(Some(d)) if d == want
    );
    if there {
        pushed.record(repo, digest);
    }
    there
}

/// The layers and configs of every platform, each once.
fn image_blobs(image: &Assembled) -> Vec<&Desc> {
    let mut todo: Vec<&Desc> = Vec::new();
    for img in &image.images {
        for d in img.layers.iter().chain(std::iter::once(&img.config)) {
            if !todo.iter().any(|t| t.digest == d.digest) {
                todo.push(d);
            }
        }
    }
    todo
}

/// Attach each platform's SBOM to its manifest as an OCI 1.1 referrer: an
/// artifact manifest (`artifactType` = SPDX JSON, empty config, the SBOM as
/// its layer, `subject` = the platform manifest), pushed by digest. Where the
/// registry's referrers API does not list it (registries without the API),
/// the referrers tag schema's index `sha256-<hex of subject>` gets it added.
/// `target` is any reference in the pushed repository; `sboms` go with
/// `image.images`, in order. The referrer digests go to
/// `report.referrer_manifests`.
fn push_sboms(
    registry: &Registry,
    target: &Reference,
    image: &Assembled,
    sboms: &[SbomBlob],
    blobs: &Blobs,
    report: &mut PushReport,
) -> Result<()> {
    let empty = blobs.cache.put(b"{}")?;
    debug_assert_eq!(empty, Digest::of(EMPTY_CONFIG));
    for (img, sbom) in image.images.iter().zip(sboms) {
        for (digest, size) in [(&empty, 2), (&sbom.digest, sbom.size)] {
            if let Sent::Uploaded(_) =
                send(registry, target, digest, size, None, || blobs.path(digest))?
            {
                report.referrer_blobs_uploaded += 1;
                report.referrer_bytes_uploaded += size;
            }
        }
        let manifest = sbom_referrer(img, sbom);
        let annotations = json!({ANN_CREATED: sbom.created});
        let (digest, tag_written) = push_referrer(
            registry,
            target,
            &img.manifest.digest,
            &manifest,
            sbom.media_type,
            Some(annotations),
        )?;
        Pushed::new(blobs.cache).record(target, &digest);
        report.referrers += 1;
        report.referrer_manifests.push(digest.to_string());
        if tag_written {
            report.referrer_tags_updated += 1;
        }
    }
    Ok(())
}

/// The empty JSON object: every referrer's config.
const EMPTY_CONFIG: &[u8] = b"{}";

/// The SBOM referrer of one platform manifest, as pushed (canonical JSON:
/// the same SBOM gives the same referrer digest).
fn sbom_referrer(img: &crate::image::PlatformManifest, sbom: &SbomBlob) -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": sbom.media_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": Digest::of(EMPTY_CONFIG).to_string(), "size": 2},
        "layers": [{
            "mediaType": sbom.media_type,
            "digest": sbom.digest.to_string(),
            "size": sbom.size,
            "annotations": {ANN_TITLE: sbom.file_name},
        }],
        "subject": {
            "mediaType": img.manifest.media_type,
            "digest": img.manifest.digest.to_string(),
            "size": img.manifest.size,
        },
        "annotations": {ANN_CREATED: sbom.created},
    });
    canonical_json(&manifest)
}

/// Push `bytes`, an OCI 1.1 artifact manifest of `artifact_type` whose
/// `subject` is `subject`, by digest into `target`'s repository, and make it
/// findable: where the registry's referrers API does not list it
/// (registries without the API), the referrers tag schema's index
/// `sha256-<hex of subject>` gets an entry for it (with `annotations`, the
/// manifest's own). Returns its digest and whether that tag was written.
pub(crate) fn push_referrer(
    registry: &Registry,
    target: &Reference,
    subject: &Digest,
    bytes: &[u8],
    artifact_type: &str,
    annotations: Option<Value>,
) -> Result<(Digest, bool)> {
    let digest = Digest::of(bytes);
    registry.push_manifest(&digest_ref(target, &digest), bytes, OCI_MANIFEST)?;
    // A registry that cannot answer counts as one without the API.
    let listed = registry
        .referrers(&digest_ref(target, subject), artifact_type)
        .map(|l| l.contains(&digest.to_string()))
        .unwrap_or(false);
    if listed {
        return Ok((digest, false));
    }
    let mut entry = json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest.to_string(),
        "size": bytes.len(),
        "artifactType": artifact_type,
    });
    if let Some(a) = annotations {
        entry["annotations"] = a;
    }
    let written = add_to_referrers_tag(registry, target, subject, entry)?;
    Ok((digest, written))
}

/// The referrers tag schema: the index tagged `sha256-<hex>` lists the
/// referrers of that digest. Adds `entry` unless its digest is there already;
/// `true` when the tag was (re)written.
fn add_to_referrers_tag(
    registry: &Registry,
    repo: &Reference,
    subject: &Digest,
    entry: Value,
) -> Result<bool> {
    let r = Reference::with_tag(
        repo.registry().into(),
        repo.repository().into(),
        format!("sha256-{}", subject.hex()),
    );
    let mut index = match registry.pull_manifest_opt(&r)? {
        Some((bytes, _)) => {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if !v.get("manifests").is_some_and(Value::is_array) {
                return Err(ImageError::ReferrersTagNotIndex {
                    reference: r.whole(),
                }
                .into());
            }
            v
        }
        None => json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
    };
    let Some(list) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Err(Error::internal("referrers index without manifests"));
    };
    if list.iter().any(|m| m.get("digest") == entry.get("digest")) {
        return Ok(false);
    }
    list.push(entry);
    if let Some(obj) = index.as_object_mut() {
        obj.entry("mediaType").or_insert_with(|| OCI_INDEX.into());
    }
    registry.push_manifest(&r, &canonical_json(&index), OCI_INDEX)?;
    Ok(true)
}

/// How many blobs go up at once: as docker's default (5) does, so that
/// the registry's end of one upload (hashing, moving the file into place)
/// overlaps the transfer of the next instead of leaving the link idle.
const UPLOADS_AT_ONCE: usize = 4;

/// What became of one blob.
#[derive(Clone, Copy, Debug)]
pub enum Sent {
    Skipped,
    Mounted,
    Uploaded(u64),
}

/// What [`push_blobs`] did: every blob it finished, and the first error.
struct BlobsPushed {
    sent: Vec<Sent>,
    failed: Option<Error>,
}

/// Push `todo`, [`UPLOADS_AT_ONCE`] at a time, the largest first (so that
/// no big one is left to go alone at the end). After an error no blob is
/// started; the ones under way finish. `done` is called after each blob.
fn push_blobs(
    registry: &Registry,
    target: &Reference,
    todo: &[&Desc],
    blobs: &Blobs,
    early: &Early,
    done: &(dyn Fn(&Desc) + Sync),
) -> BlobsPushed {
    let mut order: Vec<&Desc> = Vec::new();
    let mut sent = Vec::new();
    let here = early.repository == repo_of(target);
    for d in todo {
        match early.sent.get(&d.digest) {
            Some(s) if here => {
                done(d);
                sent.push(*s);
            }
            _ => order.push(d),
        }
    }
    order.sort_by_key(|d| std::cmp::Reverse(d.size));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let work = || {
        let mut out = BlobsPushed {
            sent: Vec::new(),
            failed: None,
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(d) = order.get(i) else { break };
            match push_blob(registry, target, d, blobs) {
                Ok(sent) => {
                    done(d);
                    out.sent.push(sent);
                }
                Err(e) => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    out.failed = Some(e);
                }
            }
        }
        out
    };
    std::thread::scope(|s| {
        let workers = UPLOADS_AT_ONCE.min(order.len());
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
        let mut all = BlobsPushed { sent, failed: None };
        for h in handles {
            let part = h.join().unwrap_or_else(|_| BlobsPushed {
                sent: Vec::new(),
                failed: Some(Error::internal("a blob upload thread stopped")),
            });
            all.sent.extend(part.sent);
            all.failed = all.failed.or(part.failed);
        }
        all
    })
}

/// `registry/repository` of a reference: where its blobs live.
fn repo_of(r: &Reference) -> String {
    format!("{}/{}", r.resolve_registry(), r.repository())
}

/// Blobs the registry got while the build went on: what became of each,
/// for the repository they went to. [`push`] sends those again only if
/// they went elsewhere.
#[derive(Debug, Default)]
pub struct Early {
    repository: String,
    sent: std::collections::HashMap<Digest, Sent>,
}

/// An uploader of [`EarlyPush`]: what became of each blob it sent.
type Uploader = std::thread::JoinHandle<Vec<(Digest, Sent)>>;

/// Layers sent to the registry as soon as they are built, while the build
/// goes on (a stage's bytecode compiles, the next stage downloads), so
/// that [`push`] finds most of the image there: a remote registry's
/// upload time overlaps the build's instead of following it. Only for
/// layers of the image being pushed (a builder stage's never go out).
/// Nothing is tagged: an image whose build fails leaves unreferenced
/// blobs, as an interrupted push does. A blob that fails here is left to
/// [`push`], which sends it again and reports its error.
pub struct EarlyPush {
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<(Digest, u64)>>>,
    /// Set when the build ends without [`EarlyPush::finish`]: the
    /// uploaders start nothing more.
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: std::sync::Mutex<Vec<Uploader>>,
    repository: String,
    /// What [`EarlyPush::send`] took: each blob goes once (platforms
    /// share layers).
    taken: std::sync::Mutex<std::collections::HashSet<Digest>>,
}

impl EarlyPush {
    /// Start [`UPLOADS_AT_ONCE`] uploaders to `target`'s repository,
    /// reading blobs from `cache`.
    pub fn start(
        registry: std::sync::Arc<Registry>,
        target: Reference,
        cache: kiln_store::Cache,
    ) -> EarlyPush {
        let (tx, rx) = std::sync::mpsc::channel::<(Digest, u64)>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..UPLOADS_AT_ONCE)
            .filter_map(|i| {
                let (registry, target, cache) = (registry.clone(), target.clone(), cache.clone());
                let (rx, dropped) = (rx.clone(), dropped.clone());
                std::thread::Builder::new()
                    .name(format!("kiln-upload-{i}"))
                    .spawn(move || {
                        let mut sent = Vec::new();
                        loop {
                            let next = rx.lock().map(|r| r.recv());
                            let Ok(Ok((digest, size))) = next else { break };
                            if dropped.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            if let Ok(Some(s)) =
                                send_built(&registry, &target, &cache, &digest, size)
                            {
                                sent.push((digest, s));
                            }
                        }
                        sent
                    })
                    .ok()
            })
            .collect();
        EarlyPush {
            tx: std::sync::Mutex::new(Some(tx)),
            dropped,
            workers: std::sync::Mutex::new(workers),
            repository: repo_of(&target),
            taken: Default::default(),
        }
    }

    /// Send this built layer (its blob in the cache) when an uploader is
    /// free.
    pub fn send(&self, digest: &Digest, size: u64) {
        if !self
            .taken
            .lock()
            .is_ok_and(|mut t| t.insert(digest.clone()))
        {
            return;
        }
        if let Some(tx) = self.tx.lock().ok().as_ref().and_then(|t| t.as_ref()) {
            let _ = tx.send((digest.clone(), size));
        }
    }

    /// Wait for what was sent; what the registry holds now.
    pub fn finish(&self) -> Early {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let workers = self.workers.lock().map(|mut w| std::mem::take(&mut *w));
        let mut early = Early {
            repository: self.repository.clone(),
            sent: Default::default(),
        };
        for w in workers.unwrap_or_default() {
            early.sent.extend(w.join().unwrap_or_default());
        }
        early
    }
}

impl Drop for EarlyPush {
    /// A build that failed does not wait for its uploads: the ones under
    /// way end on their own, no other starts.
    fn drop(&mut self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

/// One built layer to `target`'s repository: HEAD, then the upload.
/// None, with no request, when this cache knows the repository has it
/// (a rebuild's unchanged layers; the push itself asks, if it gets as far
/// as the blobs: a whole image already there takes one request).
fn send_built(
    registry: &Registry,
    target: &Reference,
    cache: &kiln_store::Cache,
    digest: &Digest,
    size: u64,
) -> Result<Option<Sent>> {
    let pushed = Pushed::new(cache);
    if pushed.holds(target, digest) {
        return Ok(None);
    }
    let sent = send(registry, target, digest, size, None, || {
        cache
            .verified(digest)?
            .ok_or_else(|| Error::internal(format!("built layer {digest} is not in the cache")))
    })?;
    pushed.record(target, digest);
    Ok(Some(sent))
}

/// One blob to `target`'s repository, recorded as there for the next
/// build's [`EarlyPush`].
fn push_blob(registry: &Registry, target: &Reference, d: &Desc, blobs: &Blobs) -> Result<Sent> {
    let from = match blobs.origin(&d.digest) {
        Some(Origin::Registry(src)) => Some(src),
        _ => None,
    };
    let sent = send(registry, target, &d.digest, d.size, from, || {
        blobs.path(&d.digest)
    })?;
    Pushed::new(blobs.cache).record(target, &d.digest);
    Ok(sent)
}

/// One blob into `target`'s repository: nothing when a HEAD finds it
/// there, else mounted from `from` when that is another repository of the
/// same registry, else uploaded from the file `path` gives.
fn send(
    registry: &Registry,
    target: &Reference,
    digest: &Digest,
    size: u64,
    from: Option<&Reference>,
    path: impl FnOnce() -> Result<std::path::PathBuf>,
) -> Result<Sent> {
    if registry.blob_exists(target, digest)? {
        return Ok(Sent::Skipped);
    }
    if let Some(src) = from {
        if src.registry() == target.registry()
            && src.repository() != target.repository()
            && registry.mount_blob(target, src, digest)?
        {
            return Ok(Sent::Mounted);
        }
    }
    registry.push_blob(target, &path()?, digest, size)?;
    Ok(Sent::Uploaded(size))
}

/// Attach `docs` (one per platform, in the order of `image.images`) to an
/// image already pushed to `repo` as OCI 1.1 referrers of its platform
/// manifests, as its SBOMs are; a platform manifest that already has a
/// referrer of the doc's type is left alone.
pub fn attach(
    registry: &Registry,
    repo: &str,
    tag: &str,
    image: &Assembled,
    docs: &[SbomBlob],
    blobs: &Blobs,
) -> Result<()> {
    let target = tag_ref(repo, tag)?;
    let pushed = Pushed::new(blobs.cache);
    let mut todo_images = Vec::new();
    let mut todo_docs = Vec::new();
    for (img, doc) in image.images.iter().zip(docs) {
        let subject = digest_ref(&target, &img.manifest.digest);
        // One record per platform manifest: the same manifest has the same
        // layers, whatever built it. This build's own record is known to
        // the cache or found by its digest in one HEAD; else any record,
        // through the listing.
        let own = Digest::of(&sbom_referrer(img, doc));
        let present = referrer_there(registry, &pushed, &target, &own)
            || registry
                .referrers(&subject, doc.media_type)
                .is_ok_and(|l| !l.is_empty());
        if !present {
            todo_images.push(img.clone());
            todo_docs.push(doc.clone());
        }
    }
    if todo_docs.is_empty() {
        return Ok(());
    }
    let subset = Assembled {
        images: todo_images,
        ..image.clone()
    };
    push_sboms(
        registry,
        &target,
        &subset,
        &todo_docs,
        blobs,
        &mut PushReport::default(),
    )
}

/// Point each of `tags` of `repo` at the manifest (or index) `from` names:
/// one GET, then a PUT for each tag that names something else. Nothing is
/// uploaded; `from` must be in `repo`'s registry. Returns the digest and the
/// tags written.
pub fn retag(
    registry: &Registry,
    from: &Reference,
    repo: &str,
    tags: &[String],
) -> Result<(Digest, Vec<String>)> {
    let refs = tags
        .iter()
        .map(|t| tag_ref(repo, t))
        .collect::<Result<Vec<_>>>()?;
    let (bytes, digest) = registry.pull_manifest(from)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let mut written = Vec::new();
    for (tag, r) in tags.iter().zip(&refs) {
        if registry.tag_digest(r)?.as_deref() != Some(digest.to_string().as_str()) {
            registry.push_manifest(r, &bytes, &media_type)?;
            written.push(tag.clone());
        }
    }
    Ok((digest, written))
}

pub fn tag_ref(repo: &str, tag: &str) -> Result<Reference> {
    kiln_spec::reference::parse(&format!("{repo}:{tag}")).map_err(|source| {
        ImageError::InvalidPushReference {
            repo: repo.to_string(),
            tag: tag.to_string(),
            source,
        }
        .into()
    })
}

pub(crate) fn digest_ref(r: &Reference, d: &Digest) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::ErrorKind;
    use oci_client::errors::OciDistributionError;

    const REPO: &str = "registry.example.org/team/app";

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn incomplete(
        report: PushReport,
        sboms: usize,
        step: PushStep,
        source: kiln_core::Error,
    ) -> kiln_core::Error {
        RegistryError::PushIncomplete {
            repository: REPO.into(),
            report: Box::new(report),
            blobs_total: 5,
            sboms,
            tags: vec!["1.0".into(), "latest".into()],
            step,
            source,
        }
        .into()
    }

    fn refused_tag(tag: &str) -> kiln_core::Error {
        RegistryError::Failed {
            op: "pushing manifest",
            reference: format!("{REPO}:{tag}"),
            status: Some(400),
            source: OciDistributionError::ServerError {
                code: 400,
                url: format!("https://registry.example.org/v2/team/app/manifests/{tag}"),
                message: "tag is immutable".into(),
            },
        }
        .into()
    }

    #[test]
    fn a_failed_tag_says_what_the_registry_holds() {
        let report = PushReport {
            blobs_uploaded: 3,
            blobs_mounted: 1,
            blobs_skipped: 1,
            manifests: vec![d('a'), d('b')],
            referrer_manifests: vec![d('c'), d('e')],
            tags: vec!["1.0".into()],
            ..Default::default()
        };
        let cause = refused_tag("latest");
        let cause_text = cause.to_string();
        let err = incomplete(report, 2, PushStep::Tags, cause);
        assert_eq!(
            err.to_string(),
            format!(
                "push to {REPO} incomplete: writing tags failed: {cause_text}\n  \
                 blobs in the registry: 5 of 5 (3 uploaded, 1 mounted, 1 already there)\n  \
                 manifests pushed: {}, {}\n  \
                 SBOM referrers: pushed (2)\n  \
                 tags written: 1.0; tags not written: latest",
                d('a'),
                d('b')
            )
        );
        assert!(cause_text.starts_with(&format!("pushing manifest {REPO}:latest: ")));
        // The cause's kind (a registry failure) decides the exit code, and
        // the cause stays reachable.
        assert_eq!(err.kind(), ErrorKind::Network);
        assert_eq!(err.exit_code(), 3);
        let Some(RegistryError::PushIncomplete {
            report,
            step,
            source,
            ..
        }) = err.downcast_ref::<RegistryError>()
        else {
            panic!("{err:?}");
        };
        assert_eq!(*step, PushStep::Tags);
        assert_eq!(report.tags, ["1.0"]);
        assert!(matches!(
            source.downcast_ref::<RegistryError>(),
            Some(RegistryError::Failed {
                status: Some(400),
                ..
            })
        ));
    }

    #[test]
    fn an_early_failure_says_nothing_is_tagged() {
        let denied: kiln_core::Error = RegistryError::Denied {
            op: "pushing blob",
            reference: format!("{REPO}:1.0"),
            registry: "registry.example.org".into(),
        }
        .into();
        let cause_text = denied.to_string();
        let report = PushReport {
            blobs_skipped: 2,
            ..Default::default()
        };
        let err = incomplete(report, 1, PushStep::Blobs, denied);
        assert_eq!(
            err.to_string(),
            format!(
                "push to {REPO} incomplete: pushing blobs failed: {cause_text}\n  \
                 blobs in the registry: 2 of 5 (0 uploaded, 0 mounted, 2 already there)\n  \
                 manifests pushed: none\n  \
                 SBOM referrers: not pushed\n  \
                 tags written: none; tags not written: 1.0, latest"
            )
        );
        // Refused credentials stay an authentication failure.
        assert_eq!(err.exit_code(), 4);
    }

    #[test]
    fn a_failed_referrer_names_how_many_were_attached() {
        let report = PushReport {
            blobs_uploaded: 5,
            manifests: vec![d('a'), d('b')],
            referrer_manifests: vec![d('c')],
            ..Default::default()
        };
        let err = incomplete(report, 2, PushStep::Referrers, refused_tag("sha256-x"));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "push to {REPO} incomplete: pushing SBOM referrers failed: pushing manifest "
            )),
            "{msg}"
        );
        assert!(msg.contains("\n  SBOM referrers: 1 of 2 pushed\n"), "{msg}");
        assert!(msg.ends_with("\n  tags written: none; tags not written: 1.0, latest"));

        // Without SBOMs there is no referrer line.
        let report = PushReport {
            blobs_uploaded: 5,
            manifests: vec![d('a')],
            ..Default::default()
        };
        let msg = incomplete(report, 0, PushStep::Manifests, refused_tag("x")).to_string();
        assert!(!msg.contains("SBOM"), "{msg}");
        assert!(msg.contains(&format!("\n  manifests pushed: {}\n", d('a'))));
        assert_eq!(msg.lines().count(), 4, "{msg}");
    }

    #[test]
    fn steps_read_as_words() {
        assert_eq!(PushStep::Manifests.to_string(), "pushing manifests");
        assert_eq!(
            serde_json::to_value(PushStep::Referrers).unwrap(),
            json!("referrers")
        );
    }
}
