//! What a client sends to `POST /api/v1/specs`: a JSON description of an
//! image, turned into kiln.toml text (serialised with `toml`, so any package
//! line survives verbatim) and validated by the CLI's own parser, so a
//! client sees exactly the errors `kiln build` would print.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The longest spec name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// A spec as the API receives it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpecInput {
    /// Required on create; immutable (a PUT may repeat it, not change it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the spec is: [`TYPE_PACKAGES`] (the default: `base` plus
    /// packages, built by kiln) or [`TYPE_IMAGE`] (an existing image,
    /// `image`, used as it is).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// With `"type": "image"`: the registry reference of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// With `"type": "python-env"` or `"dockerfile"`: a Git URL (any form
    /// kiln-git reads, a forge's file or folder page included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where the spec's sources live; webhooks of this repository queue
    /// rebuilds. Kept with the spec, not used by the build yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,

    /// A registry reference or `scratch` (the default).
    #[serde(default = "default_base")]
    pub base: String,
    #[serde(default)]
    pub packages: Packages,
    /// Conda channels, highest priority first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default)]
    pub config: ConfigInput,
}

fn default_base() -> String {
    "scratch".into()
}

/// `base` plus packages and config, built by kiln (the default type).
pub const TYPE_PACKAGES: &str = "packages";
/// An existing image, resolved to its digest and used as it is.
pub const TYPE_IMAGE: &str = "image";
pub use crate::git_source::{TYPE_DOCKERFILE, TYPE_PYTHON_ENV};
/// Every type, as error messages list them.
const TYPES: &str = "`packages` (base and packages), `image` (an existing image), \
                     `python-env` (a requirements.txt or environment.yml in Git) and \
                     `dockerfile` (a Dockerfile's folder in Git)";

/// A spec's Git repository.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Clone URL (https://, ssh://, `git@host:path`, …).
    pub url: String,
    /// Branch or tag (`main`, `refs/heads/main`, `refs/tags/v1`); none:
    /// the repository's default branch.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apt: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conda: Vec<String>,
}

/// The `[config]` keys a client may set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigInput {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A spec name: `^[a-z0-9][a-z0-9.-]*$`, at most [`MAX_NAME_LEN`] characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is required".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !first_ok || !rest_ok {
        return Err(format!(
            "invalid name `{name}`: names are [a-z0-9][a-z0-9.-]* (lowercase letters, digits, `.` and `-`)"
        ));
    }
    Ok(())
}

impl SpecInput {
    /// `type`, defaulted.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or(TYPE_PACKAGES)
    }

    /// The `type`, with the fields that belong to it and no others.
    fn check_type(&self) -> Result<(), String> {
        let kind = self.kind();
        if ![TYPE_PACKAGES, TYPE_IMAGE, TYPE_PYTHON_ENV, TYPE_DOCKERFILE].contains(&kind) {
            return Err(format!("unknown type `{kind}`; supported types: {TYPES}"));
        }
        if self.source.is_some() && (kind == TYPE_PACKAGES || kind == TYPE_IMAGE) {
            return Err(format!(
                "`source` belongs to `\"type\": \"{TYPE_PYTHON_ENV}\"` or `\"{TYPE_DOCKERFILE}\"`"
            ));
        }
        if let Some(g) = &self.git {
            crate::webhooks::normalize_repo_url(&g.url)
                .ok_or_else(|| format!("git url `{}`: not a repository URL", g.url))?;
            if g.git_ref.as_deref().is_some_and(|r| r.trim().is_empty()) {
                return Err("git ref is empty: name a branch or tag, or leave ref out".into());
            }
        }
        if kind == TYPE_PYTHON_ENV || kind == TYPE_DOCKERFILE {
            return Ok(()); // checked by git_source::render
        }
        if kind == TYPE_PACKAGES {
            if self.image.is_some() {
                return Err(format!(
                    "`image` belongs to `\"type\": \"{TYPE_IMAGE}\"`; a `{TYPE_PACKAGES}` spec starts from `base`"
                ));
            }
            return Ok(());
        }
        let mut extra = Vec::new();
        if self.base.trim() != "scratch" {
            extra.push("base");
        }
        if self.packages != Packages::default() {
            extra.push("packages");
        }
        if !self.channels.is_empty() {
            extra.push("channels");
        }
        if self.config != ConfigInput::default() {
            extra.push("config");
        }
        if !extra.is_empty() {
            return Err(format!(
                "a `{TYPE_IMAGE}` spec is an existing image used as it is: {} cannot be given with it",
                extra.join(", ")
            ));
        }
        Ok(())
    }

    /// Refuse what a service must not build even though the CLI would:
    /// bases and channels that read the server's own files.
    fn check_service_rules(&self) -> Result<(), String> {
        let base = self.base.trim();
        if base.starts_with("oci:") || base.starts_with("docker-archive:") {
            return Err(format!(
                "base `{base}`: only registry references and `scratch` are allowed here (no local files)"
            ));
        }
        for c in &self.channels {
            let remote = c.starts_with("https://") || c.starts_with("http://");
            let plain_name = !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !remote && !plain_name {
                return Err(format!(
                    "channel `{c}`: only channel names and http(s) URLs are allowed here (no local files)"
                ));
            }
        }
        Ok(())
    }

    /// The spec's kiln.toml without `[image] name` and `tags` (those depend
    /// on where and as which revision it is pushed): what the content hash
    /// covers.
    pub fn content_toml(&self) -> String {
        let mut doc = toml::Table::new();
        let mut image = toml::Table::new();
        image.insert("base".into(), self.base.clone().into());
        doc.insert("image".into(), image.into());

        if let Some(config) = config_table(&self.config) {
            doc.insert("config".into(), config);
        }

        let p = &self.packages;
        if !p.apt.is_empty() {
            doc.insert("apt".into(), packages_table(&p.apt, None));
        }
        if !p.pip.is_empty() {
            doc.insert("pip".into(), packages_table(&p.pip, None));
        }
        if !p.conda.is_empty() || !self.channels.is_empty() {
            doc.insert(
                "conda".into(),
                packages_table(&p.conda, Some(&self.channels)),
            );
        }
        toml::to_string(&doc).expect("a TOML table serialises")
    }

    /// Validate and render: the content kiln.toml and its sha256 (hex).
    /// `image_name`, when known, is validated too (as `[image] name`), so a
    /// name the registry would refuse is an error now, not at build time.
    pub fn render(&self, image_name: Option<&str>) -> Result<Rendered, String> {
        self.check_type()?;
        let input = serde_json::to_string(self).expect("spec input serialises");
        if self.kind() == TYPE_IMAGE {
            return crate::prebuilt::render(input, self.image.as_deref().unwrap_or(""));
        }
        if self.kind() == TYPE_PYTHON_ENV || self.kind() == TYPE_DOCKERFILE {
            return crate::git_source::render(self);
        }
        self.check_service_rules()?;
        let content = self.content_toml();
        let check = match image_name {
            Some(n) => full_toml(&content, n, &["latest".to_string()])?,
            None => content.clone(),
        };
        kiln_spec::Spec::parse(&check, Path::new("kiln.toml")).map_err(|e| e.to_string())?;
        let content_hash = hex::encode(Sha256::digest(content.as_bytes()));
        Ok(Rendered {
            input,
            toml: content,
            content_hash,
            no_reuse: false,
        })
    }
}

/// A validated spec, as a revision stores it: the client's JSON, the
/// content kiln.toml made from it and its hash.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The client's spec as JSON (what an edit form starts from).
    pub input: String,
    pub toml: String,
    pub content_hash: String,
    /// Every job resolves or builds afresh (a prebuilt image's tag may move).
    pub no_reuse: bool,
}

/// `[config]` from what a client set (`None`: nothing).
pub(crate) fn config_table(c: &ConfigInput) -> Option<toml::Value> {
    let mut config = toml::Table::new();
    if !c.env.is_empty() {
        config.insert("env".into(), string_map(&c.env));
    }
    if let Some(u) = &c.user {
        config.insert("user".into(), u.clone().into());
    }
    if let Some(w) = &c.workdir {
        config.insert("workdir".into(), w.clone().into());
    }
    if let Some(e) = &c.entrypoint {
        config.insert("entrypoint".into(), string_list(e));
    }
    if let Some(cmd) = &c.cmd {
        config.insert("cmd".into(), string_list(cmd));
    }
    if !c.labels.is_empty() {
        config.insert("labels".into(), string_map(&c.labels));
    }
    (!config.is_empty()).then(|| config.into())
}

/// The content kiln.toml plus `[image] name` and `tags`: what a worker builds.
pub fn full_toml(content: &str, image_name: &str, tags: &[String]) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(content).map_err(|e| e.to_string())?;
    let image = doc
        .entry("image")
        .or_insert_with(|| toml::Table::new().into());
    let image = image
        .as_table_mut()
        .ok_or_else(|| "[image] is not a table".to_string())?;
    image.insert("name".into(), image_name.into());
    image.insert("tags".into(), string_list(tags));
    Ok(toml::to_string(&doc).expect("a TOML table serialises"))
}

fn string_list(items: &[String]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| s.clone().into()).collect())
}

fn string_map(m: &BTreeMap<String, String>) -> toml::Value {
    let mut t = toml::Table::new();
    for (k, v) in m {
        t.insert(k.clone(), v.clone().into());
    }
    t.into()
}

fn packages_table(packages: &[String], channels: Option<&[String]>) -> toml::Value {
    let mut t = toml::Table::new();
    if let Some(ch) = channels {
        t.insert("channels".into(), string_list(ch));
    }
    t.insert("packages".into(), string_list(packages));
    t.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> SpecInput {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn package_lines_survive_verbatim() {
        let pip = vec![
            "numpy>=1.2".to_string(),
            "pkg[extra]".to_string(),
            "torch+cu118".to_string(),
            "tomli; python_version < '3.11'".to_string(),
            "we\"ird\\name".to_string(),
            "multi'quote\"s".to_string(),
        ];
        let conda = vec![
            "conda-forge::numpy==1.17*".to_string(),
            "python=3.12".to_string(),
        ];
        let apt = vec!["libc6 (>= 2.36)".to_string()];
        let i = input(serde_json::json!({
            "name": "demo",
            "packages": {"pip": pip, "conda": conda, "apt": apt},
            "channels": ["conda-forge"],
            "config": {"env": {"A": "x=y \"q\""}, "cmd": ["sh", "-c", "echo 'hi'"]},
        }));
        let r = i.render(Some("127.0.0.1:5000/team/demo")).unwrap();
        let spec = kiln_spec::Spec::parse(&r.toml, Path::new("kiln.toml")).unwrap();
        assert_eq!(spec.pip.unwrap().packages, pip);
        let c = spec.conda.unwrap();
        assert_eq!(c.packages, conda);
        assert_eq!(c.channels, vec!["conda-forge".to_string()]);
        assert_eq!(spec.apt.unwrap().packages, apt);
        assert_eq!(spec.config.env["A"], "x=y \"q\"");
        assert_eq!(
            spec.config.cmd.unwrap(),
            vec!["sh".to_string(), "-c".into(), "echo 'hi'".into()]
        );

        let full = full_toml(
            &r.toml,
            "127.0.0.1:5000/team/demo",
            &["r1-abcdef01".into(), "latest".into()],
        )
        .unwrap();
        let spec = kiln_spec::Spec::parse(&full, Path::new("kiln.toml")).unwrap();
        assert_eq!(spec.image.name.unwrap().0, "127.0.0.1:5000/team/demo");
        let tags: Vec<_> = spec.image.tags.iter().map(|t| t.0.clone()).collect();
        assert_eq!(tags, ["r1-abcdef01", "latest"]);
        assert_eq!(spec.pip.unwrap().packages, pip);
    }

    #[test]
    fn content_hash_ignores_the_name_and_is_stable() {
        let a = input(serde_json::json!({"name": "a", "config": {"env": {"K": "v"}}}));
        let b = input(serde_json::json!({"name": "b", "config": {"env": {"K": "v"}}}));
        let c = input(serde_json::json!({"name": "a", "config": {"env": {"K": "w"}}}));
        let (ra, rb, rc) = (
            a.render(None).unwrap(),
            b.render(None).unwrap(),
            c.render(None).unwrap(),
        );
        assert_eq!(ra.content_hash, rb.content_hash);
        assert_ne!(ra.content_hash, rc.content_hash);
        assert_eq!(ra.content_hash.len(), 64);
    }

    #[test]
    fn cli_errors_come_through() {
        let bad_env = input(serde_json::json!({"name": "a", "config": {"env": {"A=B": "v"}}}));
        let e = bad_env.render(None).unwrap_err();
        assert!(e.contains("invalid variable name `A=B`"), "{e}");

        let bad_workdir = input(serde_json::json!({"name": "a", "config": {"workdir": "rel"}}));
        assert!(bad_workdir.render(None).is_err());

        let bad_base = input(serde_json::json!({"base": "oci:/etc"}));
        assert!(bad_base
            .render(None)
            .unwrap_err()
            .contains("no local files"));
        let bad_channel = input(serde_json::json!({"channels": ["/srv/channel"]}));
        assert!(bad_channel
            .render(None)
            .unwrap_err()
            .contains("no local files"));
        let ok_channel = input(
            serde_json::json!({"channels": ["https://127.0.0.1:9/c", "conda-forge"], "packages": {"conda": ["x"]}}),
        );
        ok_channel.render(None).unwrap();
    }

    #[test]
    fn types() {
        let ok = input(
            serde_json::json!({"name": "a", "type": "image", "image": "127.0.0.1:5000/x/y:1"}),
        );
        let r = ok.render(Some("127.0.0.1:5000/team/a")).unwrap();
        assert!(r.no_reuse && r.toml.contains("[prebuilt]"), "{}", r.toml);
        assert_eq!(
            input(serde_json::json!({"name": "a"})).kind(),
            TYPE_PACKAGES
        );
        assert!(
            !input(serde_json::json!({"name": "a"}))
                .render(None)
                .unwrap()
                .no_reuse
        );

        let err = |j: serde_json::Value| input(j).render(None).unwrap_err();
        for t in ["python-env", "dockerfile"] {
            let e = err(serde_json::json!({"name": "a", "type": t}));
            assert!(e.contains("needs `source`") && e.contains(t), "{e}");
        }
        let e = err(serde_json::json!({"name": "a", "source": "https://git.invalid/a/b"}));
        assert!(e.contains("`source` belongs to"), "{e}");
        assert!(err(serde_json::json!({"type": "nope"})).contains("unknown type `nope`"));
        let e = err(
            serde_json::json!({"type": "image", "image": "127.0.0.1:5000/x:1", "packages": {"pip": ["a"]}}),
        );
        assert!(e.contains("packages cannot be given"), "{e}");
        let e = err(
            serde_json::json!({"type": "image", "image": "127.0.0.1:5000/x:1", "base": "127.0.0.1:5000/b", "config": {"user": "u"}}),
        );
        assert!(e.contains("base, config cannot be given"), "{e}");
        assert!(err(serde_json::json!({"type": "image"})).contains("needs `image`"));
        assert!(
            err(serde_json::json!({"type": "image", "image": "oci:/etc"}))
                .contains("no local files")
        );
        let e = err(serde_json::json!({"image": "127.0.0.1:5000/x:1"}));
        assert!(e.contains("belongs to"), "{e}");

        // A Git source is kept, checked, and not part of the content.
        let g = input(
            serde_json::json!({"name": "a", "git": {"url": "https://git.invalid/t/a.git", "ref": "main"}}),
        );
        let plain = input(serde_json::json!({"name": "a"}));
        assert_eq!(
            g.render(None).unwrap().content_hash,
            plain.render(None).unwrap().content_hash
        );
        let back: SpecInput = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back.git.unwrap().git_ref.as_deref(), Some("main"));
        assert!(err(serde_json::json!({"git": {"url": "nope"}})).contains("git url"));
        assert!(
            err(serde_json::json!({"git": {"url": "https://git.invalid/t/a", "ref": " "}}))
                .contains("git ref")
        );
        assert!(serde_json::from_value::<SpecInput>(
            serde_json::json!({"git": {"url": "u", "branch": "x"}})
        )
        .is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<SpecInput, _> =
            serde_json::from_value(serde_json::json!({"name": "a", "bogus": 1}));
        assert!(r.is_err());
    }

    #[test]
    fn names() {
        for ok in ["a", "0", "my-image.v2", &"a".repeat(MAX_NAME_LEN)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "A",
            "-a",
            ".a",
            "a/b",
            "a_b",
            "a b",
            "é",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
