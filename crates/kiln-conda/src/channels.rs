//! Channels and their repodata: names resolved against the channel alias,
//! `https://` / `file://` URLs and local directories, fetched per subdir
//! (`<platform>` and `noarch`) with kiln's HTTP client, so the system trust
//! store, proxies and `file://` behave as everywhere else in kiln.
//!
//! Written here rather than with rattler_repodata_gateway: the gateway brings
//! its own async HTTP stack and cache; a channel is two JSON documents per
//! subdir, which the shared client and rattler_conda_types parse fine.

use std::path::Path;

use rattler_conda_types::{Channel, ChannelConfig, RepoData, RepoDataRecord, Subdir};
use rayon::prelude::*;
use url::Url;

use kiln_core::digest::Digest;
use kiln_core::error::{ErrorKind, Result};
use kiln_store::cache::Cache;
use kiln_store::http::{redact, Http};

use crate::CondaError;

/// The channel alias in force: the spec's, else `CONDA_CHANNEL_ALIAS`, else
/// rattler's default.
pub fn config(spec_dir: &Path, alias: Option<&str>) -> Result<ChannelConfig> {
    let mut config = ChannelConfig::default_with_root_dir(spec_dir.to_path_buf());
    let alias = alias
        .map(String::from)
        .or_else(|| std::env::var("CONDA_CHANNEL_ALIAS").ok())
        .filter(|a| !a.trim().is_empty());
    if let Some(a) = alias {
        let a = if a.ends_with('/') { a } else { format!("{a}/") };
        // A plain directory is allowed as an alias too (an offline mirror).
        let url = if a.contains("://") {
            Url::parse(&a).map_err(|e| CondaError::BadChannelAlias {
                alias: redact(&a),
                reason: e.to_string(),
            })?
        } else {
            let dir = spec_dir.join(&a);
            Url::from_directory_path(&dir).map_err(|_| CondaError::BadChannelAlias {
                alias: a.clone(),
                reason: "not a usable directory".into(),
            })?
        };
        config.channel_alias = url;
    }
    Ok(config)
}

/// The channel list with conda's special names expanded: `defaults` becomes
/// `default_channels` (the spec's, else `CONDA_DEFAULT_CHANNELS`, else
/// `pkgs/main` and `pkgs/r` under the alias, conda's own layout, so a mirror
/// set as the alias serves them); `nodefaults` (an environment.yml's way to
/// keep `defaults` out) is dropped, as kiln never adds `defaults` itself.
pub(crate) fn expand_defaults(channels: &[String], default_channels: &[String]) -> Vec<String> {
    let defaults: Vec<String> = if !default_channels.is_empty() {
        default_channels.to_vec()
    } else if let Some(v) = std::env::var("CONDA_DEFAULT_CHANNELS")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        v.split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    } else {
        vec!["pkgs/main".into(), "pkgs/r".into()]
    };
    let mut out = Vec::new();
    for c in channels {
        match c.as_str() {
            "defaults" => out.extend(defaults.iter().cloned()),
            "nodefaults" => {}
            _ => out.push(c.clone()),
        }
    }
    out
}

pub(crate) fn parse(s: &str, config: &ChannelConfig) -> Result<Channel> {
    Ok(
        Channel::from_str(s, config).map_err(|e| CondaError::BadChannel {
            channel: redact(s),
            reason: e.to_string(),
        })?,
    )
}

/// Every record of every channel for `subdir` and `noarch`, in channel
/// order (the solver's channel priority follows it), and what they were
/// read from ([`KeptRepodata`]). Fetched in parallel.
pub(crate) fn fetch_all(
    channels: &[Channel],
    subdir: Subdir,
    http: &Http,
    cache: &Cache,
) -> Result<(Vec<Vec<RepoDataRecord>>, KeptRepodata)> {
    let fetched = channels
        .par_iter()
        .map(|c| {
            let mut records = Vec::new();
            let mut read = Vec::new();
            for sd in [subdir.to_string(), "noarch".to_string()] {
                let got = fetch_subdir(c, &sd, http, cache)?;
                read.push((label(c, &sd), got.as_ref().map(|f| f.digest.clone())));
                if let Some(f) = got {
                    let repodata = match f.parsed {
                        Some(r) => r,
                        None => parse_repodata(&f.bytes).map_err(|e| e.context(f.context))?,
                    };
                    records.extend(repodata.into_repo_data_records(c));
                }
            }
            if read.iter().all(|(_, d)| d.is_none()) {
                return Err(CondaError::NoRepodata {
                    // rattler's canonical name masks a password but shows
                    // the user name and only a token right after the host.
                    channel: redact(&c.canonical_name()),
                    url: redact(c.base_url.as_str()),
                    subdir: subdir.to_string(),
                }
                .into());
            }
            Ok((prefer_conda_format(records), read))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut kept = KeptRepodata(Vec::new());
    let records = fetched
        .into_iter()
        .map(|(records, read)| {
            kept.0.extend(read);
            records
        })
        .collect();
    Ok((records, kept))
}

/// The repodata a solve read: each channel's subdir (its URL without
/// credentials) with the digest of its `repodata.json`, or none where the
/// channel has no such subdir, in the solve's order. The same request on
/// the same image against the same repodata solves the same
/// ([`crate::kept_repodata_holds`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptRepodata(pub(crate) Vec<(String, Option<Digest>)>);

/// [`KeptRepodata`] of `channels` now: each `repodata.json` revalidated
/// through the HTTP cache (parsed only when it changed, to be kept).
pub(crate) fn read_now(
    channels: &[Channel],
    subdir: Subdir,
    http: &Http,
    cache: &Cache,
) -> Result<KeptRepodata> {
    let read = channels
        .par_iter()
        .map(|c| {
            [subdir.to_string(), "noarch".to_string()]
                .into_iter()
                .map(|sd| {
                    Ok((
                        label(c, &sd),
                        fetch_subdir(c, &sd, http, cache)?.map(|f| f.digest),
                    ))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(KeptRepodata(read.into_iter().flatten().collect()))
}

/// A channel's subdir as [`KeptRepodata`] names it.
fn label(c: &Channel, subdir: &str) -> String {
    format!(
        "{} {subdir}",
        kiln_core::url::strip_credentials(c.base_url.as_str())
    )
}

/// A fetched `repodata.json`: its bytes, their digest, and the repodata
/// when the HTTP cache's check parsed it (a new body).
struct Fetched {
    bytes: Vec<u8>,
    digest: Digest,
    parsed: Option<RepoData>,
    context: String,
}

/// `<channel>/<subdir>/repodata.json`; `None` when the channel has no such
/// subdir. Through the HTTP cache: asked for gzip (JSON shrinks several
/// times), kept once it parses (parsed once), revalidated by the next
/// build (a `304` costs no body).
fn fetch_subdir(c: &Channel, subdir: &str, http: &Http, cache: &Cache) -> Result<Option<Fetched>> {
    let url = c
        .base_url
        .url()
        .join(&format!("{subdir}/repodata.json"))
        .map_err(|e| CondaError::BadChannelUrl {
            url: redact(c.base_url.as_str()),
            reason: e.to_string(),
        })?;
    let context = format!("[conda] {}", redact(url.as_str()));
    let parsed = std::sync::Mutex::new(None);
    let check = |b: &[u8]| {
        let r = parse_repodata(b).map_err(|e| e.context(context.clone()))?;
        *parsed.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        Ok(())
    };
    let fetched = match http.get_cached(url.as_str(), Some("application/json"), cache, &check) {
        Ok(f) => f,
        // A missing subdir (or a missing local file) is a channel without
        // packages for it, not an error by itself.
        Err(e) if e.kind() == ErrorKind::Input && is_missing(&e.to_string()) => return Ok(None),
        // The check's own error (a body that does not parse), as it is.
        Err(e)
            if matches!(
                e.downcast_ref::<CondaError>(),
                Some(CondaError::BadRepodata { .. })
            ) =>
        {
            return Err(e)
        }
        Err(e) => {
            return Err(crate::fetch_error(e, || {
                format!("channel {}", redact(&c.canonical_name()))
            }))
        }
    };
    // The HTTP cache hashed the body already (a local file it did not).
    let digest = fetched.digest.unwrap_or_else(|| Digest::of(&fetched.bytes));
    Ok(Some(Fetched {
        digest,
        bytes: fetched.bytes,
        parsed: parsed.into_inner().unwrap_or_else(|p| p.into_inner()),
        context,
    }))
}

/// Does the HTTP client's message say the document is not there (HTTP 404
/// or 410, or no such local file)?
pub(crate) fn is_missing(message: &str) -> bool {
    message.contains("not found") || message.contains("No such file")
}

/// Parse repodata.json. Some exporters write `null` for empty lists
/// (`depends`, `constrains`, ...); conda reads those as empty, so do we.
pub fn parse_repodata(bytes: &[u8]) -> Result<RepoData> {
    let invalid = |e: serde_json::Error| CondaError::BadRepodata {
        reason: e.to_string(),
    };
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
    for key in ["packages", "packages.conda"] {
        if let Some(serde_json::Value::Object(pkgs)) = doc.get_mut(key) {
            for rec in pkgs.values_mut() {
                if let serde_json::Value::Object(fields) = rec {
                    for list in ["depends", "constrains", "track_features"] {
                        if fields.get(list).is_some_and(|v| v.is_null()) {
                            fields.remove(list);
                        }
                    }
                }
            }
        }
    }
    Ok(serde_json::from_value(doc).map_err(invalid)?)
}

/// When a package is published both as `.conda` and `.tar.bz2`, keep the
/// `.conda` one (what conda does); the solver sees each build once.
fn prefer_conda_format(records: Vec<RepoDataRecord>) -> Vec<RepoDataRecord> {
    use std::collections::HashMap;
    let mut best: HashMap<(String, String, String, String), usize> = HashMap::new();
    let mut keep = vec![true; records.len()];
    for (i, r) in records.iter().enumerate() {
        let p = &r.package_record;
        let key = (
            p.name.as_normalized().to_string(),
            p.version.to_string(),
            p.build.as_str().to_string(),
            p.subdir.clone(),
        );
        match best.get(&key) {
            None => {
                best.insert(key, i);
            }
            Some(&j) => {
                let i_conda = r.url.path().ends_with(".conda");
                if i_conda {
                    keep[j] = false;
                    best.insert(key, i);
                } else {
                    keep[i] = false;
                }
            }
        }
    }
    records
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_aliases_and_channels_name_themselves_without_secrets() {
        let err = config(Path::new("/"), Some("https://u:s3cret@[bad")).unwrap_err();
        match err.downcast_ref::<CondaError>() {
            Some(CondaError::BadChannelAlias { alias, .. }) => {
                assert_eq!(alias, "https://***@[bad/");
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let config = config(Path::new("/"), None).unwrap();
        let err = parse("https://u:s3cret@[bad", &config).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadChannel { .. })
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn repodata_must_parse_and_exist() {
        let err = parse_repodata(b"{\"packages\": 3}").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadRepodata { .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("not valid repodata.json: "),
            "{err}"
        );
        assert!(parse_repodata(b"{\"packages\": {}}").is_ok());

        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), None).unwrap();
        let empty = parse(&dir.path().display().to_string(), &config).unwrap();
        let http = Http::offline().unwrap();
        let subdir: Subdir = "linux-64".parse().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let err = fetch_all(&[empty], subdir, &http, &cache).unwrap_err();
        match err.downcast_ref::<CondaError>() {
            Some(CondaError::NoRepodata { url, subdir, .. }) => {
                assert!(url.starts_with("file://"), "{url}");
                assert_eq!(subdir, "linux-64");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("no repodata.json"), "{err}");
    }
}

#[cfg(test)]
mod mutation_tests {
    /// repodata.json never panics on mangled input.
    #[test]
    fn repodata_survives_mutants() {
        let seed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/conda/conda-forge-numpy-linux-64.json"
        ))
        .unwrap();
        // Whole documents are large: fewer rounds, on a prefix-sized seed too.
        let small = &seed[..seed.len().min(4096)];
        for m in kiln_core::mutate::mutants(&[small, &seed], 150) {
            let _ = super::parse_repodata(&m);
        }
    }
}
