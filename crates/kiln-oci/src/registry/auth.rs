//! Registry credentials: `KILN_REGISTRY_USERNAME`/`KILN_REGISTRY_PASSWORD`,
//! then the Docker config (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): `auths` entries, `credHelpers` and `credsStore`.
//! Secrets are held only in `RegistryAuth`, whose Debug redacts them, and are
//! never formatted into messages.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::RegistryError;
use kiln_core::error::Result;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Registry keys in Docker configs may be URLs (`https://host/v1/`).
fn normalize_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Credentials for `registry` (as written in the reference, e.g. `docker.io`, `127.0.0.1:5000`).
pub fn credentials_for(registry: &str) -> Result<RegistryAuth> {
    Ok(lookup(registry)?)
}

fn lookup(registry: &str) -> std::result::Result<RegistryAuth, RegistryError> {
    let user = std::env::var("KILN_REGISTRY_USERNAME")
        .ok()
        .filter(|s| !s.is_empty());
    let pass = std::env::var("KILN_REGISTRY_PASSWORD").ok();
    match (user, pass) {
        (Some(u), Some(p)) => return Ok(RegistryAuth::Basic(u, p)),
        (Some(_), None) => return Err(RegistryError::PasswordMissing),
        _ => {}
    }
    let Some(path) = docker_config_path() else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) => return Ok(RegistryAuth::Anonymous),
    };
    let cfg: DockerConfig =
        serde_json::from_str(&text).map_err(|source| RegistryError::DockerConfig {
            path: path.clone(),
            source,
        })?;
    let aliases: &[&str] = if registry == kiln_spec::reference::DOCKER_HUB {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    for (key, helper) in &cfg.cred_helpers {
        if aliases.contains(&normalize_key(key)) {
            return run_helper(helper, key);
        }
    }
    for (key, entry) in &cfg.auths {
        if !aliases.contains(&normalize_key(key)) {
            continue;
        }
        if let Some(token) = &entry.identitytoken {
            if !token.is_empty() {
                return Ok(RegistryAuth::Bearer(token.clone()));
            }
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
        }
        if let Some(auth) = &entry.auth {
            let bad = |problem| RegistryError::AuthEntry {
                path: path.clone(),
                key: key.clone(),
                problem,
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("not valid base64"))?;
            let raw = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| bad("not user:password"))?;
            return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()));
        }
    }
    if let Some(store) = &cfg.creds_store {
        let key = if registry == kiln_spec::reference::DOCKER_HUB {
            "https://index.docker.io/v1/"
        } else {
            registry
        };
        return match run_helper(store, key) {
            Ok(a) => Ok(a),
            // A store that does not know the registry means: anonymous.
            Err(RegistryError::HelperNoCredentials { .. }) => Ok(RegistryAuth::Anonymous),
            Err(e) => Err(e),
        };
    }
    Ok(RegistryAuth::Anonymous)
}

/// `docker-credential-<helper> get`, server URL on stdin, JSON on stdout.
fn run_helper(helper: &str, server: &str) -> std::result::Result<RegistryAuth, RegistryError> {
    let bin = format!("docker-credential-{helper}");
    let mut child = Command::new(&bin)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| RegistryError::HelperNotRunnable {
            helper: bin.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| RegistryError::HelperFailed {
            helper: bin.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(RegistryError::HelperNoCredentials {
            helper: bin,
            server: server.to_string(),
        });
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|_| RegistryError::HelperUnreadable { helper: bin })?;
    if reply.username == "<token>" {
        Ok(RegistryAuth::Bearer(reply.secret))
    } else {
        Ok(RegistryAuth::Basic(reply.username, reply.secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_normalize() {
        assert_eq!(
            normalize_key("https://index.docker.io/v1/"),
            "index.docker.io"
        );
        assert_eq!(normalize_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
