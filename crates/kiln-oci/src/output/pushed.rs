//! What this cache knows a repository holds: manifests and blobs it pushed
//! there by digest, or saw there, within the last day (bucket `pushed-v1`).
//!
//! A manifest by digest never changes, so once it is known to be in a
//! repository a no-op push need not ask again: only its tags (which move)
//! are checked. Blobs are recorded the same way, as Docker's push client
//! does, for the layers a build sends while it goes on: a rebuild sends
//! no request for a layer this cache knows is there (the push itself
//! still asks before it writes a manifest over them). A record is trusted for [`TRUSTED_FOR`] after it was written, so
//! a referrer removed behind kiln's back is pushed again within a day;
//! `kiln cache gc` drops older ones.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use oci_client::Reference;

use kiln_core::digest::Digest;
use kiln_store::{Cache, CacheBucket};

/// How long a record is trusted after it was written.
pub const TRUSTED_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// The records of one cache.
pub(crate) struct Pushed<'a> {
    cache: &'a Cache,
}

impl<'a> Pushed<'a> {
    pub(crate) fn new(cache: &'a Cache) -> Self {
        Pushed { cache }
    }

    /// One file per (registry, repository, digest): its name hashes the
    /// three, so neither a host nor a repository name is stored.
    fn path(&self, repo: &Reference, d: &Digest) -> PathBuf {
        let key = format!("{}\0{}\0{d}", repo.registry(), repo.repository());
        self.cache
            .entry(CacheBucket::Pushed, Digest::of(key.as_bytes()).hex())
    }

    /// Whether `d` was recorded in `repo`'s repository less than a day ago.
    pub(crate) fn holds(&self, repo: &Reference, d: &Digest) -> bool {
        std::fs::metadata(self.path(repo, d))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age < TRUSTED_FOR)
    }

    /// Record that `repo`'s repository holds `d` (best effort: without the
    /// record the next push asks the registry). The file is empty, so a
    /// write cut short still leaves a whole record.
    pub(crate) fn record(&self, repo: &Reference, d: &Digest) {
        let path = self.path(repo, d);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(path, b"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(repo: &str) -> Reference {
        repo.parse().unwrap()
    }

    #[test]
    fn a_record_names_its_repository_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let pushed = Pushed::new(&cache);
        let app = reference("registry.example.org/team/app:1");
        let other = reference("registry.example.org/team/other:1");
        let d = Digest::of(b"manifest");
        assert!(!pushed.holds(&app, &d));
        pushed.record(&app, &d);
        assert!(pushed.holds(&app, &d));
        assert!(!pushed.holds(&other, &d), "another repository");
        assert!(!pushed.holds(&app, &Digest::of(b"other")), "another digest");
        // A record older than a day is not trusted.
        let old = SystemTime::now() - TRUSTED_FOR - Duration::from_secs(60);
        let f = std::fs::File::options()
            .write(true)
            .open(pushed.path(&app, &d))
            .unwrap();
        f.set_modified(old).unwrap();
        assert!(!pushed.holds(&app, &d));
    }
}
