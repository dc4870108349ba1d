//! A resolution kept for the next build with the same inputs.
//!
//! The same requirements, Python and index pages give the same packages:
//! a warm build without a lock takes them from here instead of parsing
//! every page again and resolving (about half its CPU on a large freeze).
//! Each project the resolver read is kept with the digest of what its file
//! list was made from ([`IndexClient::identity`]); all must still match,
//! so a page the index changed (fetched again past the TTL) or a wheel
//! rebuilt in a find-links directory resolves again.

use serde::{Deserialize, Serialize};

use kiln_core::digest::Digest;
use kiln_store::cache::{write_atomic, Cache, CacheBucket};
use rayon::prelude::*;

use crate::index::{credentials_back, DistFile, IndexClient};
use crate::resolve::Resolved;

/// Where a plan's versions came from (`pip[].resolution` in a build's
/// JSON report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// Resolved by this build.
    #[default]
    Resolved,
    /// An earlier build's resolution of the same inputs and pages.
    Kept,
    /// The lock's pins.
    Locked,
}

/// Bumped when what a resolution depends on changes (how a page is read
/// into files too: a project's sources are known by the pages' digests as
/// the index sent them), or this layout.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Kept {
    format: u32,
    /// Every project read, with the digest of its sources (hex).
    projects: Vec<(String, String)>,
    resolved: Vec<Package>,
}

#[derive(Serialize, Deserialize)]
struct Package {
    name: String,
    version: String,
    file: Option<DistFile>,
    installed: bool,
}

/// A kept resolution as a plan names it ([`crate::PipPlan::kept`]): what
/// a later build checks again without the image at hand
/// ([`crate::kept_resolution_holds`]), to take the whole platform from
/// the build that kept it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptResolution {
    /// The target Python as the key read it (with what the image has
    /// installed): fixed by the image below the stage.
    pub(crate) python: String,
    pub(crate) key: Digest,
}

/// The key of a resolution: everything it depends on except the pages
/// (the target Python with what the image has installed, the platform,
/// every requirement, constraint and option, the sources in order).
pub(crate) fn key(
    platform: &kiln_core::platform::Platform,
    python: &str,
    inputs: &crate::spec::Inputs,
    client: &IndexClient,
    builder: bool,
) -> Digest {
    let inputs = format!(
        "{platform:?}\n{python}\n{}{:?}\n{:?}\nbuilder: {builder}",
        crate::resolution_inputs(inputs),
        client.indexes,
        client.find_links,
    );
    Digest::of(format!("kiln-resolution/{FORMAT}\n{inputs}").as_bytes())
}

/// The kept resolution for `key`, if every project it read has the same
/// sources now.
pub(crate) fn load(cache: &Cache, key: &Digest, client: &IndexClient) -> Option<Vec<Resolved>> {
    let bytes = std::fs::read(cache.entry(CacheBucket::PipResolutions, key.hex())).ok()?;
    let kept: Kept = serde_json::from_slice(&bytes).ok()?;
    if kept.format != FORMAT {
        return None;
    }
    // A page past the TTL is revalidated here: side by side.
    let same = kiln_store::http::on_network_pool(|| {
        kept.projects
            .par_iter()
            .all(|(p, id)| client.identity(p).is_ok_and(|now| now.hex() == id))
    });
    if !same {
        return None;
    }
    let mut resolved = kept
        .resolved
        .into_iter()
        .map(|p| {
            Some(Resolved {
                version: p.version.parse().ok()?,
                name: p.name,
                file: p.file,
                installed: p.installed,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let sources: Vec<String> = client
        .indexes
        .iter()
        .chain(&client.find_links)
        .cloned()
        .collect();
    credentials_back(
        resolved.iter_mut().filter_map(|r| r.file.as_mut()),
        &sources,
    );
    Some(resolved)
}

/// Keep `resolved` for `key` when it can be taken again: every file the
/// resolver could have read has a hash or is a local file it stamped, and
/// every package is a wheel from a page or one the image has.
/// Returns whether it was kept.
pub(crate) fn store(
    cache: &Cache,
    key: &Digest,
    client: &IndexClient,
    resolved: &[Resolved],
) -> bool {
    let Some(projects) = client.identities() else {
        return false;
    };
    if !resolved
        .iter()
        .all(|r| r.installed || r.file.as_ref().is_some_and(|f| f.is_wheel()))
    {
        return false;
    }
    let kept = Kept {
        format: FORMAT,
        projects: projects
            .into_iter()
            .map(|(p, d)| (p, d.hex().to_string()))
            .collect(),
        resolved: resolved
            .iter()
            .map(|r| Package {
                name: r.name.clone(),
                version: r.version.to_string(),
                // Kept without credentials in clear (put back when taken).
                file: r.file.as_ref().map(DistFile::without_credentials),
                installed: r.installed,
            })
            .collect(),
    };
    match serde_json::to_vec(&kept) {
        Ok(body) => {
            // Best effort: an entry that did not land is not found.
            write_atomic(&cache.entry(CacheBucket::PipResolutions, key.hex()), &body);
            true
        }
        Err(_) => false,
    }
}
