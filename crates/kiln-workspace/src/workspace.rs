//! `kiln-workspace.toml`, its members and compat directories: parsed,
//! validated, and ordered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use kiln_core::error::Result;
use kiln_spec::sections::{AptSection, PipSection};
use kiln_spec::spec::{ConfigSection, FileEntry};
use kiln_spec::Spec;

use crate::error::WorkspaceError;
use crate::glob;

pub const WORKSPACE_FILE: &str = "kiln-workspace.toml";
pub const COMPAT_FILE: &str = "kiln-compat.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkspaceFile {
    workspace: WorkspaceTable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct WorkspaceTable {
    members: Vec<String>,
    #[serde(default)]
    compat: Vec<String>,
    registry: String,
    #[serde(default = "default_tags")]
    tags: Vec<String>,
    #[serde(default = "default_label_prefix")]
    label_prefix: String,
}

fn default_tags() -> Vec<String> {
    vec!["{version}".into(), "{version}-{count}-{hash}".into()]
}

fn default_label_prefix() -> String {
    "kiln".into()
}

/// The sections a compat layer may use (kiln.toml's own types).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompatFile {
    #[serde(default)]
    includes: Vec<String>,
    /// Shown as the release's `<prefix>.compat.version` label.
    version: Option<String>,
    #[serde(default)]
    config: ConfigSection,
    #[serde(default)]
    files: Vec<FileEntry>,
    apt: Option<AptSection>,
    pip: Option<PipSection>,
}

/// What a compat directory adds to a release.
#[derive(Debug)]
pub struct CompatLayer {
    pub config: ConfigSection,
    pub files: Vec<FileEntry>,
    pub apt: Option<AptSection>,
    pub pip: Option<PipSection>,
}

/// A compat directory (`kiln-compat.toml`), named by its directory name.
#[derive(Debug)]
pub struct Compat {
    pub name: String,
    pub dir: PathBuf,
    pub text: String,
    /// Other compat dirs applied before this one, in order.
    pub includes: Vec<String>,
    /// `version` of kiln-compat.toml, if set.
    pub version: Option<String>,
    pub layer: CompatLayer,
}

/// Where a member's base comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// `target:NAME`: another member's science image.
    Target(String),
    /// Anything the builder reads itself (`scratch`, a registry reference, `oci:`...).
    Other(String),
}

/// A member's `[release]`.
#[derive(Clone, Debug)]
pub struct Release {
    pub image: String,
    pub version: String,
    pub parsed: uv_pep440::Version,
    pub compat: Option<String>,
    /// The member released for this image+version (the others are stages).
    pub is_final: bool,
}

/// A directory with a kiln.toml, or a Dockerfile alone.
#[derive(Debug)]
pub struct Member {
    pub target: String,
    pub dir: PathBuf,
    /// Its kiln.toml; for a Dockerfile alone, `[image] dockerfile =
    /// "Dockerfile"` (never written).
    pub spec: Spec,
    pub base: Base,
    /// Other members whose files it imports (`[[files]] from =
    /// "target:NAME"`, a Dockerfile's `COPY --from=target:NAME`).
    pub imports: Vec<String>,
    /// The Dockerfile it is built from, if any.
    pub dockerfile: Option<PathBuf>,
    pub release: Option<Release>,
}

impl Member {
    /// The members it is built from: its base, then its imports, once each.
    pub fn deps(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Base::Target(b) = &self.base {
            out.push(b.clone());
        }
        for i in &self.imports {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        out
    }
}

/// What a Dockerfile builds on: the image of its last stage (followed
/// through stage names) and every `COPY --from=` image that is no stage.
/// A light scan of FROM and COPY lines, enough for the workspace graph;
/// the build itself parses the Dockerfile fully.
pub fn dockerfile_deps(text: &str) -> (String, Vec<String>) {
    let mut stages: BTreeMap<String, String> = BTreeMap::new();
    let mut last = String::from("scratch");
    let mut copies = Vec::new();
    let mut joined = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        let full = std::mem::take(&mut joined);
        let words: Vec<&str> = full.split_whitespace().collect();
        let Some(first) = words.first() else { continue };
        if first.eq_ignore_ascii_case("FROM") {
            let rest: Vec<&str> = words[1..]
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let Some(image) = rest.first() else { continue };
            let image = stages
                .get(&image.to_lowercase())
                .cloned()
                .unwrap_or_else(|| image.to_string());
            if let (Some(a), Some(name)) = (rest.get(1), rest.get(2)) {
                if a.eq_ignore_ascii_case("AS") {
                    stages.insert(name.to_lowercase(), image.clone());
                }
            }
            last = image;
        } else if first.eq_ignore_ascii_case("COPY") || first.eq_ignore_ascii_case("ADD") {
            for w in &words[1..] {
                if let Some(from) = w.strip_prefix("--from=") {
                    if !stages.contains_key(&from.to_lowercase()) {
                        copies.push(from.to_string());
                    }
                }
            }
        }
    }
    (last, copies)
}

/// Tag templates: `{version}`, `{count}` (commits on HEAD), `{hash}` (short hash).
#[derive(Clone, Debug)]
pub struct TagScheme(pub Vec<String>);

impl TagScheme {
    const PLACEHOLDERS: [&'static str; 3] = ["version", "count", "hash"];

    fn validate(templates: &[String]) -> std::result::Result<(), String> {
        if templates.is_empty() {
            return Err("at least one tag template is needed".into());
        }
        for t in templates {
            let mut rest = t.as_str();
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}') else {
                    return Err(format!("`{t}`: unclosed `{{`"));
                };
                let name = &rest[open + 1..open + close];
                if !Self::PLACEHOLDERS.contains(&name) {
                    return Err(format!(
                        "`{t}`: unknown placeholder `{{{name}}}` (known: {{version}}, {{count}}, {{hash}})"
                    ));
                }
                rest = &rest[open + close + 1..];
            }
            if rest.contains('}') {
                return Err(format!("`{t}`: stray `}}`"));
            }
        }
        Ok(())
    }

    /// Render every template; `Err` names a result that is not a valid tag.
    pub fn render(
        &self,
        version: &str,
        count: u64,
        hash: &str,
    ) -> std::result::Result<Vec<String>, String> {
        self.0
            .iter()
            .map(|t| {
                let tag = t
                    .replace("{version}", version)
                    .replace("{count}", &count.to_string())
                    .replace("{hash}", hash);
                if valid_tag(&tag) {
                    Ok(tag)
                } else {
                    Err(format!(
                        "`{t}` renders to `{tag}`, which is not a valid tag"
                    ))
                }
            })
            .collect()
    }

    /// The templates that name no commit: tags that move from build to build
    /// (`9.0`), as opposed to the immutable ones (`9.0-42-abc1234`).
    pub fn is_moving(template: &str) -> bool {
        !template.contains("{count}") && !template.contains("{hash}")
    }
}

/// OCI distribution tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Target and compat names: they become registry path components and CI job names.
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// Release image names: `/`-separated valid names.
fn valid_image(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(valid_name)
}

/// Versions as versions (PEP 440): `9.0 < 10.0`, `1.0rc1 < 1.0`.
pub fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let a = uv_pep440::Version::from_str(a).ok()?;
    let b = uv_pep440::Version::from_str(b).ok()?;
    Some(a.cmp(&b))
}

/// A loaded, validated workspace.
#[derive(Debug)]
pub struct Workspace {
    pub root: PathBuf,
    /// kiln-workspace.toml.
    pub file: PathBuf,
    pub text: String,
    pub registry: String,
    pub tags: TagScheme,
    pub label_prefix: String,
    pub members: BTreeMap<String, Member>,
    pub compat: BTreeMap<String, Compat>,
    /// Member targets, bases first; ties broken by name (deterministic).
    pub order: Vec<String>,
}

fn invalid(path: &Path, key: &str, message: impl Into<String>) -> kiln_core::Error {
    WorkspaceError::Invalid {
        path: path.to_path_buf(),
        key: key.into(),
        message: message.into(),
    }
    .into()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| {
        WorkspaceError::Unreadable {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

impl Workspace {
    /// Find kiln-workspace.toml in `start` or the nearest directory above it.
    pub fn discover(start: &Path) -> Result<PathBuf> {
        let start = std::path::absolute(start).map_err(|source| WorkspaceError::Unreadable {
            path: start.to_path_buf(),
            source,
        })?;
        let mut dir = Some(start.as_path());
        while let Some(d) = dir {
            if d.join(WORKSPACE_FILE).is_file() {
                return Ok(d.join(WORKSPACE_FILE));
            }
            dir = d.parent();
        }
        Err(WorkspaceError::Unreadable {
            path: start.join(WORKSPACE_FILE),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {WORKSPACE_FILE} here or in a parent directory"),
            ),
        }
        .into())
    }

    /// Load `kiln-workspace.toml` and everything it names.
    pub fn load(file: &Path) -> Result<Workspace> {
        let text = read(file)?;
        let parsed: WorkspaceFile = toml::from_str(&text).map_err(|e| WorkspaceError::Parse {
            path: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let root = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let root = root
            .canonicalize()
            .map_err(|source| WorkspaceError::Unreadable {
                path: root.to_path_buf(),
                source,
            })?;
        let ws = parsed.workspace;
        if ws.members.is_empty() {
            return Err(invalid(file, "members", "no member globs"));
        }
        let registry = ws.registry.trim_end_matches('/').to_string();
        if registry.is_empty()
            || registry.contains("://")
            || registry.split('/').skip(1).any(|c| !valid_name(c))
            || registry.split('/').next().is_none_or(|h| h.is_empty())
        {
            return Err(invalid(
                file,
                "registry",
                format!(
                    "`{}`: expected HOST[:PORT][/prefix] (lower-case path)",
                    ws.registry
                ),
            ));
        }
        TagScheme::validate(&ws.tags).map_err(|m| invalid(file, "tags", m))?;
        if !ws
            .label_prefix
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(invalid(
                file,
                "label-prefix",
                format!(
                    "`{}`: expected dotted words, e.g. `org.example.kiln`",
                    ws.label_prefix
                ),
            ));
        }

        let compat = load_compat(&root, file, &ws.compat)?;
        let members = load_members(&root, file, &ws.members, &compat)?;
        let order = topological(&members)?;
        let mut ws = Workspace {
            root,
            file: file.to_path_buf(),
            text,
            registry,
            tags: TagScheme(ws.tags),
            label_prefix: ws.label_prefix,
            members,
            compat,
            order,
        };
        ws.mark_finals()?;
        Ok(ws)
    }

    /// Compat dirs in the order they are applied for `name`: includes first
    /// (depth first, in order), each once, then `name` itself.
    pub fn compat_chain(&self, name: &str) -> Vec<String> {
        fn go(ws: &Workspace, name: &str, out: &mut Vec<String>) {
            if out.iter().any(|n| n == name) {
                return;
            }
            if let Some(c) = ws.compat.get(name) {
                for i in &c.includes {
                    go(ws, i, out);
                }
            }
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
        let mut out = Vec::new();
        go(self, name, &mut out);
        out
    }

    /// Members whose base is `target` (direct dependents), sorted.
    pub fn dependents(&self, target: &str) -> Vec<&str> {
        self.members
            .values()
            .filter(|m| m.deps().iter().any(|d| d == target))
            .map(|m| m.target.as_str())
            .collect()
    }

    /// The version a release's compat layers are labelled with: the last
    /// dir of `chain` that sets `version`, else the chain hash's first 12 hex.
    pub fn compat_version(&self, chain: &[String], hash: &str) -> String {
        chain
            .iter()
            .rev()
            .find_map(|c| self.compat.get(c).and_then(|c| c.version.clone()))
            .unwrap_or_else(|| hash[..12.min(hash.len())].to_string())
    }

    pub fn science_image(&self, target: &str) -> String {
        format!("{}/sci/{target}", self.registry)
    }

    pub fn release_image(&self, image: &str) -> String {
        format!("{}/rel/{image}", self.registry)
    }

    /// Exactly one final member per image+version; compat only there.
    fn mark_finals(&mut self) -> Result<()> {
        let mut groups: BTreeMap<(String, uv_pep440::Version), Vec<String>> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(r) = &m.release {
                groups
                    .entry((r.image.clone(), r.parsed.clone()))
                    .or_default()
                    .push(m.target.clone());
            }
        }
        for ((image, _), group) in groups {
            let finals: Vec<String> = group
                .iter()
                .filter(|t| {
                    !self
                        .dependents(t)
                        .iter()
                        .any(|d| group.iter().any(|g| g == d))
                })
                .cloned()
                .collect();
            let version = self.members[&group[0]]
                .release
                .as_ref()
                .map(|r| r.version.clone())
                .unwrap_or_default();
            if finals.len() != 1 {
                return Err(WorkspaceError::SeveralFinals {
                    image,
                    version,
                    finals,
                }
                .into());
            }
            let final_member = finals[0].clone();
            for t in &group {
                let release = self.members.get_mut(t).and_then(|m| m.release.as_mut());
                let Some(r) = release else { continue };
                r.is_final = *t == final_member;
                if !r.is_final && r.compat.is_some() {
                    return Err(WorkspaceError::CompatNotFinal {
                        member: t.clone(),
                        image,
                        version,
                        final_member,
                    }
                    .into());
                }
            }
        }
        Ok(())
    }
}

fn expand_globs(root: &Path, file: &Path, key: &str, globs: &[String]) -> Result<Vec<PathBuf>> {
    let mut dirs = BTreeSet::new();
    for g in globs {
        glob::validate(g).map_err(|message| WorkspaceError::BadGlob {
            path: file.to_path_buf(),
            glob: g.clone(),
            message,
        })?;
        let found = glob::expand(root, g).map_err(|e| WorkspaceError::BadGlob {
            path: file.to_path_buf(),
            glob: g.clone(),
            message: format!("cannot list directories: {e}"),
        })?;
        if found.is_empty() {
            return Err(WorkspaceError::BadGlob {
                path: file.to_path_buf(),
                glob: g.clone(),
                message: format!("{key}: matches no directory"),
            }
            .into());
        }
        dirs.extend(found);
    }
    Ok(dirs.into_iter().collect())
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn load_compat(root: &Path, file: &Path, globs: &[String]) -> Result<BTreeMap<String, Compat>> {
    let mut out: BTreeMap<String, Compat> = BTreeMap::new();
    for dir in expand_globs(root, file, "compat", globs)? {
        let name = dir_name(&dir);
        let path = dir.join(COMPAT_FILE);
        if !path.is_file() {
            return Err(invalid(
                file,
                "compat",
                format!("{}: no {COMPAT_FILE}", dir.display()),
            ));
        }
        if !valid_name(&name) {
            return Err(invalid(
                &path,
                "compat",
                format!("`{name}`: compat dir names are lower-case letters, digits, `.`, `_`, `-`"),
            ));
        }
        if let Some(first) = out.get(&name) {
            return Err(invalid(
                file,
                "compat",
                format!(
                    "two compat dirs are named `{name}`: {} and {}",
                    first.dir.display(),
                    dir.display()
                ),
            ));
        }
        let text = read(&path)?;
        let parsed: CompatFile = toml::from_str(&text).map_err(|e| WorkspaceError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for f in &parsed.files {
            if !dir.join(&f.src).exists() {
                return Err(invalid(
                    &path,
                    "files",
                    format!("source `{}` does not exist", f.src),
                ));
            }
        }
        out.insert(
            name.clone(),
            Compat {
                name,
                dir,
                text,
                includes: parsed.includes,
                version: parsed.version,
                layer: CompatLayer {
                    config: parsed.config,
                    files: parsed.files,
                    apt: parsed.apt,
                    pip: parsed.pip,
                },
            },
        );
    }
    let known = out.keys().cloned().collect::<Vec<_>>().join(", ");
    for c in out.values() {
        for i in &c.includes {
            if !out.contains_key(i) {
                return Err(WorkspaceError::UnknownCompat {
                    member: format!("compat {}", c.name),
                    name: i.clone(),
                    known: known.clone(),
                }
                .into());
            }
        }
    }
    let edges: BTreeMap<String, Vec<String>> = out
        .values()
        .map(|c| (c.name.clone(), c.includes.clone()))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        return Err(WorkspaceError::CompatCycle { cycle }.into());
    }
    Ok(out)
}

fn load_members(
    root: &Path,
    file: &Path,
    globs: &[String],
    compat: &BTreeMap<String, Compat>,
) -> Result<BTreeMap<String, Member>> {
    let mut out: BTreeMap<String, Member> = BTreeMap::new();
    for dir in expand_globs(root, file, "members", globs)? {
        let spec_path = dir.join("kiln.toml");
        let spec = if spec_path.is_file() {
            Spec::load(&spec_path)?
        } else if dir.join("Dockerfile").is_file() {
            Spec::parse("[image]\ndockerfile = \"Dockerfile\"\n", &spec_path)?
        } else {
            return Err(WorkspaceError::MissingSpec { dir }.into());
        };
        let dockerfile = spec.image.dockerfile.as_ref().map(|d| dir.join(d));
        // A Dockerfile's base and imports are in it; a spec's in its sections.
        let (base_text, import_refs) = match &dockerfile {
            Some(df) => dockerfile_deps(&read(df)?),
            None => (
                spec.image.base.trim().to_string(),
                spec.files.iter().filter_map(|f| f.from.clone()).collect(),
            ),
        };
        let imports: Vec<String> = import_refs
            .iter()
            .filter_map(|r| r.trim().strip_prefix("target:").map(String::from))
            .collect();
        let target = spec
            .release
            .as_ref()
            .and_then(|r| r.target.clone())
            .unwrap_or_else(|| dir_name(&dir));
        if !valid_name(&target) {
            return Err(invalid(
                &spec_path,
                "target",
                format!("`{target}`: target names are lower-case letters, digits, `.`, `_`, `-` (set [release] target)"),
            ));
        }
        if let Some(first) = out.get(&target) {
            return Err(WorkspaceError::DuplicateTarget {
                target,
                first: first.dir.clone(),
                second: dir,
            }
            .into());
        }
        let base = match base_text.strip_prefix("target:") {
            Some(name) => Base::Target(name.to_string()),
            None => Base::Other(base_text.clone()),
        };
        let release = match &spec.release {
            None => None,
            Some(r) => {
                let parsed = uv_pep440::Version::from_str(&r.version).map_err(|e| {
                    WorkspaceError::BadVersion {
                        member: target.clone(),
                        version: r.version.clone(),
                        message: e.to_string(),
                    }
                })?;
                if !valid_image(&r.image) {
                    return Err(invalid(
                        &spec_path,
                        "[release] image",
                        format!("`{}`: expected lower-case path components", r.image),
                    ));
                }
                if let Some(c) = &r.compat {
                    if !compat.contains_key(c) {
                        return Err(WorkspaceError::UnknownCompat {
                            member: target.clone(),
                            name: c.clone(),
                            known: compat.keys().cloned().collect::<Vec<_>>().join(", "),
                        }
                        .into());
                    }
                }
                Some(Release {
                    image: r.image.clone(),
                    version: r.version.clone(),
                    parsed,
                    compat: r.compat.clone(),
                    is_final: false,
                })
            }
        };
        out.insert(
            target.clone(),
            Member {
                target,
                dir,
                spec,
                base,
                imports,
                dockerfile,
                release,
            },
        );
    }
    let known = out.keys().cloned().collect::<Vec<_>>().join(", ");
    for m in out.values() {
        for name in m.deps() {
            if !out.contains_key(&name) {
                return Err(WorkspaceError::UnknownTarget {
                    member: m.target.clone(),
                    name,
                    known: known.clone(),
                }
                .into());
            }
        }
    }
    Ok(out)
}

/// A cycle in a graph (node → the nodes it needs), as `a -> b -> a`; the
/// first one found visiting nodes in name order.
pub(crate) fn find_cycle(edges: &BTreeMap<String, Vec<String>>) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Visiting,
        Done,
    }
    fn visit(
        n: &str,
        edges: &BTreeMap<String, Vec<String>>,
        state: &mut BTreeMap<String, State>,
        stack: &mut Vec<String>,
    ) -> Option<String> {
        match state.get(n) {
            Some(State::Done) => return None,
            Some(State::Visiting) => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle.join(" -> "));
            }
            None => {}
        }
        state.insert(n.to_string(), State::Visiting);
        stack.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), State::Done);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, edges, &mut state, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// Kahn's algorithm; among the ready members the smallest name goes first.
fn topological(members: &BTreeMap<String, Member>) -> Result<Vec<String>> {
    let edges: BTreeMap<String, Vec<String>> = members
        .values()
        .map(|m| (m.target.clone(), m.deps()))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        return Err(WorkspaceError::TargetCycle { cycle }.into());
    }
    Ok(topo_sort(&edges))
}

/// Deterministic topological order of an acyclic graph (node → needs).
pub(crate) fn topo_sort(edges: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut pending: BTreeMap<&str, usize> = edges
        .iter()
        .map(|(n, needs)| {
            (
                n.as_str(),
                needs.iter().filter(|x| edges.contains_key(*x)).count(),
            )
        })
        .collect();
    let mut ready: BTreeSet<&str> = pending
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut order = Vec::new();
    while let Some(n) = ready.pop_first() {
        order.push(n.to_string());
        pending.remove(n);
        for (m, needs) in edges {
            if needs.iter().any(|x| x == n) {
                if let Some(c) = pending.get_mut(m.as_str()) {
                    *c -= 1;
                    if *c == 0 {
                        ready.insert(m.as_str());
                    }
                }
            }
        }
    }
    order
}
