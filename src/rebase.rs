//! `kiln rebase`: the registry side of [`kiln_oci::rebase`] (load, push).

use std::path::PathBuf;

use serde::Serialize;

use kiln_core::error::{Error, Result};
use kiln_core::progress::Progress;
use kiln_oci::blobs::Blobs;
use kiln_oci::output::push::{self, PushReport};
use kiln_oci::registry::Registry;
use kiln_spec::source::ImageSource;
use kiln_store::cache::Cache;

pub struct RebaseOptions {
    pub image: String,
    pub base: String,
    /// Tags to push under (default: the image's own tag).
    pub tags: Vec<String>,
    pub insecure_registries: Vec<String>,
    pub cache_dir: PathBuf,
    pub progress: Progress,
}

#[derive(Debug, Serialize)]
pub struct RebaseReport {
    pub image: String,
    pub digest: String,
    pub old_bases: Vec<String>,
    pub new_base: String,
    pub kept_layers: Vec<usize>,
    pub push: PushReport,
}

fn registry_ref(s: &str, what: &str) -> Result<oci_client::Reference> {
    match ImageSource::parse(s, &PathBuf::from("."))? {
        ImageSource::Registry(r) => Ok(r),
        _ => Err(Error::input(format!(
            "{what} `{s}`: a registry reference is needed"
        ))),
    }
}

pub fn rebase(opts: &RebaseOptions) -> Result<RebaseReport> {
    let image = registry_ref(&opts.image, "image")?;
    let base = registry_ref(&opts.base, "--base")?;
    let tags = match (&opts.tags[..], image.tag()) {
        ([], Some(t)) => vec![t.to_string()],
        ([], None) => return Err(Error::input("the image is named by digest: give --tag")),
        (t, _) => t.to_vec(),
    };
    let registry = Registry::new(&opts.insecure_registries, &[&image, &base])?;
    let cache = Cache::open(&opts.cache_dir)?;
    let mut blobs = Blobs::new(&cache, Some(&registry));
    let r = kiln_oci::rebase::rebase(
        &ImageSource::Registry(image.clone()),
        &ImageSource::Registry(base),
        &mut blobs,
        &registry,
    )?;
    let repo = format!("{}/{}", image.registry(), image.repository());
    let push = push::push(
        &registry,
        &repo,
        &tags,
        &r.image,
        &[],
        &blobs,
        &opts.progress,
        &push::Early::default(),
    )?;
    Ok(RebaseReport {
        image: opts.image.clone(),
        digest: r.image.top().digest.to_string(),
        old_bases: r.old_bases,
        new_base: r.new_base,
        kept_layers: r.kept_layers,
        push,
    })
}
