//! `"type": "image"` specs: an existing image, used as it is. The job
//! resolves the reference to its digest with `kiln inspect REF --json` (the
//! same registry client, credentials and insecure-registry rules as a
//! build) and succeeds at once with the reference's repository and that
//! digest, or fails with `image REF not found: …`. Nothing is built or
//! pushed; every job resolves afresh (a tag may have moved).

use std::path::Path;
use std::process::Stdio;

use kiln_spec::source::ImageSource;
use sha2::{Digest, Sha256};

use crate::spec_input::Rendered;
use crate::store::{now_ms, Claimed, Store, FAILED, SUCCEEDED};
use crate::worker::{lease_ms, WorkerConfig, HEARTBEAT};
use crate::ServiceError;

/// The most of `kiln inspect`'s stdout that is read.
const MAX_REPORT: usize = 4 * 1024 * 1024;

/// A reference as the job records it: `repository` (registry and path,
/// normalised) and the reference in full.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    pub whole: String,
    pub repository: String,
}

/// Parse a prebuilt image's reference: a registry reference only (no
/// `scratch`, no files on the server).
pub fn parse_reference(reference: &str) -> Result<ImageRef, String> {
    let r = reference.trim();
    if r.is_empty() {
        return Err("`\"type\": \"image\"` needs `image`: a registry reference".into());
    }
    if r.starts_with("oci:") || r.starts_with("docker-archive:") {
        return Err(format!(
            "image `{r}`: only registry references are allowed here (no local files)"
        ));
    }
    match ImageSource::parse(r, Path::new("/")) {
        Ok(ImageSource::Registry(rf)) => Ok(ImageRef {
            whole: rf.whole(),
            repository: format!("{}/{}", rf.registry(), rf.repository()),
        }),
        Ok(_) => Err(format!(
            "image `{r}`: `\"type\": \"image\"` needs a registry reference"
        )),
        Err(e) => Err(format!("image `{r}`: {e}")),
    }
}

/// The content of a prebuilt spec (not a kiln.toml: nothing is built) and
/// its hash; `input` is the client's spec as JSON.
pub fn render(input: String, reference: &str) -> Result<Rendered, String> {
    let r = parse_reference(reference)?;
    let mut prebuilt = toml::Table::new();
    prebuilt.insert("image".into(), r.whole.into());
    let mut doc = toml::Table::new();
    doc.insert("prebuilt".into(), prebuilt.into());
    let toml = toml::to_string(&doc).expect("a TOML table serialises");
    let content_hash = hex::encode(Sha256::digest(toml.as_bytes()));
    Ok(Rendered {
        input,
        toml,
        content_hash,
        no_reuse: true,
    })
}

/// What `kiln inspect --json` said.
#[derive(Debug, PartialEq)]
pub enum Resolved {
    Digest(String),
    /// The registry has no such image (or repository).
    NotFound(String),
    /// Anything else: network, credentials, a malformed answer.
    Failed(String),
}

/// Read `kiln inspect --json`'s stdout.
pub fn interpret(success: bool, stdout: &str) -> Resolved {
    let v: Option<serde_json::Value> = serde_json::from_str(stdout).ok();
    if success {
        return match v
            .as_ref()
            .and_then(|v| v.get("digest"))
            .and_then(|d| d.as_str())
        {
            Some(d) if d.starts_with("sha256:") || d.starts_with("sha512:") => {
                Resolved::Digest(d.to_string())
            }
            _ => Resolved::Failed("kiln inspect printed no digest".into()),
        };
    }
    let err = v.as_ref().and_then(|v| v.get("error"));
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or("kiln inspect failed")
        .to_string();
    match err.and_then(|e| e.get("kind")).and_then(|k| k.as_str()) {
        Some("input") => Resolved::NotFound(message),
        _ => Resolved::Failed(message),
    }
}

/// Resolve the job's image and finish it (unless it stops being ours,
/// cancelled or deleted, meanwhile).
pub async fn run_job(
    store: &Store,
    cfg: &WorkerConfig,
    me: &str,
    job: &Claimed,
    reference: &str,
) -> Result<(), ServiceError> {
    let id = job.id;
    let say = |line: String| async move { store.append_log(id, &[line]).await };
    let r = match parse_reference(reference) {
        Ok(r) => r,
        Err(e) => {
            say(e.clone()).await?;
            store.finish(id, me, FAILED, None, None, Some(&e)).await?;
            return Ok(());
        }
    };
    store.set_phase(id, me, "resolving").await?;
    say(format!("worker {me}: resolving prebuilt image {}", r.whole)).await?;

    let mut cmd = crate::worker::kiln_command(cfg);
    cmd.arg("inspect").arg(&r.whole).args(["--json", "--quiet"]);
    if let Some(c) = &cfg.cache_dir {
        cmd.arg("--cache").arg(c);
    }
    cmd.current_dir(&cfg.work_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("could not start {}: {e}", cfg.kiln_bin.display());
            say(msg.clone()).await?;
            store.finish(id, me, FAILED, None, None, Some(&msg)).await?;
            return Ok(());
        }
    };
    let out = child.wait_with_output();
    tokio::pin!(out);
    let mut beat = tokio::time::interval(HEARTBEAT);
    let out = loop {
        tokio::select! {
            o = &mut out => break o.map_err(|e| ServiceError::io("running kiln inspect".into(), e))?,
            _ = beat.tick() => {
                let lease = now_ms() + lease_ms();
                if let Ok(false) = store.heartbeat(id, me, lease).await {
                    // Cancelled or deleted: dropping `out` kills the child.
                    if store.get_job(id).await?.is_some() {
                        say("resolving stopped: the job was cancelled".into()).await?;
                    }
                    return Ok(());
                }
            }
        }
    };
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        // The error line repeats the JSON's message; keep the rest.
        if !line.starts_with("error: ") {
            say(cfg.registry.redact(line)).await?;
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(MAX_REPORT)]);
    match interpret(out.status.success(), &stdout) {
        Resolved::Digest(digest) => {
            say(format!(
                "resolved {} to {}@{digest}; nothing to build",
                r.whole, r.repository
            ))
            .await?;
            store
                .finish(id, me, SUCCEEDED, Some(&r.repository), Some(&digest), None)
                .await?;
        }
        Resolved::NotFound(m) => {
            let msg = cfg
                .registry
                .redact(&format!("image {} not found: {m}", r.whole));
            say(msg.clone()).await?;
            store.finish(id, me, FAILED, None, None, Some(&msg)).await?;
        }
        Resolved::Failed(m) => {
            let msg = cfg
                .registry
                .redact(&format!("resolving image {}: {m}", r.whole));
            say(msg.clone()).await?;
            store.finish(id, me, FAILED, None, None, Some(&msg)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference(" 127.0.0.1:5000/team/app:1.0 ").unwrap();
        assert_eq!(r.repository, "127.0.0.1:5000/team/app");
        assert_eq!(r.whole, "127.0.0.1:5000/team/app:1.0");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = parse_reference(&format!("registry.invalid/x/y@{d}")).unwrap();
        assert_eq!(r.repository, "registry.invalid/x/y");
        assert!(r.whole.ends_with(&d), "{}", r.whole);
        for bad in [
            "",
            "scratch",
            "oci:/etc",
            "docker-archive:/x.tar",
            "UPPER/Case:",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rendering_is_stable_and_never_reused() {
        let a = render(String::new(), "127.0.0.1:5000/a:1").unwrap();
        let b = render(String::new(), "docker://127.0.0.1:5000/a:1").unwrap();
        let c = render(String::new(), "127.0.0.1:5000/a:2").unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        assert_ne!(a.content_hash, c.content_hash);
        assert!(a.no_reuse);
        assert!(a.toml.contains("[prebuilt]"), "{}", a.toml);
    }

    #[test]
    fn inspect_output() {
        let d = format!("sha256:{}", "cd".repeat(32));
        assert_eq!(
            interpret(true, &format!("{{\"digest\": \"{d}\", \"layers\": []}}")),
            Resolved::Digest(d)
        );
        assert!(matches!(interpret(true, "{}"), Resolved::Failed(_)));
        assert_eq!(
            interpret(
                false,
                r#"{"error": {"kind": "input", "message": "manifest unknown"}}"#
            ),
            Resolved::NotFound("manifest unknown".into())
        );
        assert_eq!(
            interpret(
                false,
                r#"{"error": {"kind": "network", "message": "connection refused"}}"#
            ),
            Resolved::Failed("connection refused".into())
        );
        assert!(matches!(interpret(false, "garbage"), Resolved::Failed(_)));
    }
}
