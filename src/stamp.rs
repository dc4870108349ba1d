//! What an image is stamped with besides its contents: its `created` date
//! and the names (RepoTags) a docker-archive carries.

use kiln_core::error::{Error, Result};
use kiln_oci::base::BaseImage;
use kiln_spec::lock::Lock;
use kiln_spec::source::OutputTarget;

/// The image's `created`: `SOURCE_DATE_EPOCH` when set, else the newest
/// date among the inputs — when kiln.lock was resolved (a locked build),
/// the base image's `created` — else 0 (1970, e.g. scratch with no lock).
/// Each comes from the inputs, so the same lock gives the same digest.
pub(crate) fn image_created(
    source_date_epoch: Option<u64>,
    lock: Option<&Lock>,
    base: &BaseImage,
) -> u64 {
    if let Some(e) = source_date_epoch {
        return e;
    }
    let locked = lock.and_then(Lock::resolved_epoch);
    let base_created = base
        .images
        .iter()
        .filter_map(|i| i.config.get("created")?.as_str())
        .filter_map(kiln_core::time::parse_rfc3339)
        .max();
    locked.max(base_created).unwrap_or(0)
}

/// A docker-archive's RepoTags: the `--tag` names when given (`NAME:TAG`
/// as is, `NAME` with every `[image] tags`), else `[image] name` with every
/// tag; none without either (docker then loads the image untagged, as
/// `docker save IMAGE-ID` does).
pub(crate) fn archive_names(
    cli: &[String],
    image_name: Option<&str>,
    tags: &[String],
    outputs: &[OutputTarget],
) -> Result<Vec<String>> {
    if !cli.is_empty()
        && !outputs
            .iter()
            .any(|o| matches!(o, OutputTarget::DockerArchive(_)))
    {
        return Err(Error::input(
            "--tag names docker-archive outputs (their RepoTags), and there is none \
             (-o docker-archive:FILE); OCI layouts and pushes take `[image] tags`",
        ));
    }
    let with_tags = |name: &str| {
        tags.iter()
            .map(|t| format!("{name}:{t}"))
            .collect::<Vec<_>>()
    };
    if cli.is_empty() {
        return Ok(image_name.map(with_tags).unwrap_or_default());
    }
    let mut out = Vec::new();
    for n in cli {
        let bad = |why: &str| {
            Error::input(format!(
                "--tag `{n}`: {why} (expected NAME[:TAG], e.g. registry.example.com/app:1.0)"
            ))
        };
        // A tag is what follows the last `:` after the last `/` (a port is not a tag).
        let last = n.rsplit('/').next().unwrap_or(n);
        let (name, tag) = match last.rsplit_once(':') {
            Some((_, t)) => (&n[..n.len() - t.len() - 1], Some(t)),
            None => (n.as_str(), None),
        };
        if n.contains('@') {
            return Err(bad("a digest cannot name an archive"));
        }
        let names = match tag {
            Some(t) => vec![format!("{name}:{t}")],
            None => with_tags(name),
        };
        for full in names {
            kiln_spec::reference::parse(&full).map_err(|e| bad(&e.to_string()))?;
            if !out.contains(&full) {
                out.push(full);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<OutputTarget> {
        vec![OutputTarget::DockerArchive("a.tar".into())]
    }

    fn tags() -> Vec<String> {
        vec!["1.0".into(), "latest".into()]
    }

    #[test]
    fn archive_names_from_the_spec_or_the_command_line() {
        assert_eq!(
            archive_names(&[], Some("registry.example.com/app"), &tags(), &archive()).unwrap(),
            [
                "registry.example.com/app:1.0",
                "registry.example.com/app:latest"
            ]
        );
        assert!(archive_names(&[], None, &tags(), &archive())
            .unwrap()
            .is_empty());
        let cli = vec!["myapp".to_string(), "127.0.0.1:5000/x/app:dev".to_string()];
        assert_eq!(
            archive_names(&cli, Some("ignored"), &tags(), &archive()).unwrap(),
            ["myapp:1.0", "myapp:latest", "127.0.0.1:5000/x/app:dev"]
        );
        let port_only = vec!["localhost:5000/app".to_string()];
        assert_eq!(
            archive_names(&port_only, None, &tags(), &archive()).unwrap(),
            ["localhost:5000/app:1.0", "localhost:5000/app:latest"]
        );
        for bad in ["Upper/Case", "app:", "app@sha256:00", "a b"] {
            let e = archive_names(&[bad.to_string()], None, &tags(), &archive()).unwrap_err();
            assert!(e.to_string().contains("--tag"), "{bad}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
        let layout = vec![OutputTarget::Layout("out".into())];
        let e = archive_names(&cli, None, &tags(), &layout).unwrap_err();
        assert!(e.to_string().contains("there is none"), "{e}");
        assert!(archive_names(&[], Some("x"), &tags(), &layout).is_ok());
    }
}
