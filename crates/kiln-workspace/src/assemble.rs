//! The specs a workspace build hands to the builder: a member's own
//! kiln.toml with the workspace's base, name, tags and labels put in, and
//! a release spec that is a science image plus its compat dirs.
//!
//! Both are kiln.toml text, so the builder needs no workspace knowledge:
//! a release is `base = <science image>` plus the compat dirs' `[config]`,
//! `[[files]]`, `[apt]` and `[pip]`. Nothing of the science image is
//! resolved or rebuilt; its layers stay where they are (in the registry
//! they are mounted, not uploaded), which is what makes a compat change a
//! rebase.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use kiln_core::error::Result;

use crate::error::WorkspaceError;
use crate::plan::Build;
use crate::workspace::{Member, Workspace, COMPAT_FILE};

/// What the workspace puts into a member's image section.
#[derive(Debug)]
pub struct ImageOverride<'a> {
    /// The base reference, for a `target:` base (else the member's own).
    pub base: Option<&'a str>,
    pub name: &'a str,
    pub tags: &'a [String],
    pub labels: &'a BTreeMap<String, String>,
    /// `target:NAME` → that member's image, for `[[files]] from`.
    pub imports: &'a [(String, String)],
}

fn parse(path: &Path, text: &str) -> Result<Table> {
    text.parse::<Table>().map_err(|e| {
        WorkspaceError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        }
        .into()
    })
}

fn table<'a>(t: &'a mut Table, key: &str) -> &'a mut Table {
    let v = t
        .entry(key.to_string())
        .or_insert_with(|| Value::Table(Table::new()));
    if !v.is_table() {
        *v = Value::Table(Table::new());
    }
    v.as_table_mut().expect("made a table above")
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.clone())).collect())
}

fn set_labels(doc: &mut Table, labels: &BTreeMap<String, String>) {
    let l = table(table(doc, "config"), "labels");
    for (k, v) in labels {
        l.insert(k.clone(), Value::String(v.clone()));
    }
}

/// A member's kiln.toml with the workspace's base, name, tags and labels
/// (the workspace's labels win over the member's own of the same key).
pub fn member_spec(m: &Member, o: &ImageOverride) -> Result<String> {
    overlay(&m.spec.path, &m.spec.text, o)
}

/// [`member_spec`] of any spec text (a translated Dockerfile's).
pub fn overlay(path: &Path, text: &str, o: &ImageOverride) -> Result<String> {
    let mut doc = parse(path, text)?;
    if let Some(Value::Array(files)) = doc.get_mut("files") {
        for f in files.iter_mut().filter_map(Value::as_table_mut) {
            let from = f.get("from").and_then(Value::as_str).map(str::trim);
            if let Some((_, r)) = o.imports.iter().find(|(a, _)| Some(a.as_str()) == from) {
                f.insert("from".into(), Value::String(r.clone()));
            }
        }
    }
    let image = table(&mut doc, "image");
    if let Some(b) = o.base {
        image.insert("base".into(), Value::String(b.to_string()));
    }
    image.insert("name".into(), Value::String(o.name.to_string()));
    image.insert("tags".into(), strings(o.tags));
    set_labels(&mut doc, o.labels);
    Ok(toml::to_string(&doc).expect("a parsed table serialises"))
}

/// Where a release spec stands: the workspace root, so every compat dir's
/// files are inside its context. The file is never written.
pub fn release_spec_path(ws: &Workspace, target: &str) -> PathBuf {
    ws.root.join(format!(".kiln-release-{target}.toml"))
}

/// Append the strings of `add` to the array `key` of `into`, once each.
fn append(into: &mut Table, key: &str, add: Vec<Value>) {
    let v = into
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    let arr = v.as_array_mut().expect("made an array above");
    for a in add {
        if !arr.contains(&a) {
            arr.push(a);
        }
    }
}

/// A path of a compat dir's file, relative to the workspace root.
fn rebase_path(rel: &Path, v: &Value) -> Value {
    match v.as_str() {
        Some(s) if !s.contains("://") => Value::String(rel.join(s).to_string_lossy().into_owned()),
        _ => v.clone(),
    }
}

/// Keys of `[apt]`/`[pip]` that name files of the compat dir.
const PATH_KEYS: [&str; 3] = ["packages-file", "requirements", "find-links"];
/// Keys of `[apt]`/`[pip]`/`[config]` whose arrays add up across compat dirs.
const LIST_KEYS: [&str; 7] = [
    "packages",
    "requirements",
    "find-links",
    "extra-index",
    "sources",
    "exposed-ports",
    "volumes",
];

/// Merge one compat section into the release's: lists add up, tables
/// (`env`, `labels`) merge key by key, anything else the later dir sets wins.
fn merge_section(into: &mut Table, add: &Table, rel: &Path, paths: bool) {
    for (k, v) in add {
        let v = match (paths && PATH_KEYS.contains(&k.as_str()), v) {
            (true, Value::Array(a)) => {
                Value::Array(a.iter().map(|x| rebase_path(rel, x)).collect())
            }
            (true, other) => rebase_path(rel, other),
            (false, other) => other.clone(),
        };
        match v {
            Value::Array(a) if LIST_KEYS.contains(&k.as_str()) => append(into, k, a),
            Value::Table(t) => {
                let sub = table(into, k);
                for (tk, tv) in t {
                    sub.insert(tk, tv);
                }
            }
            other => {
                into.insert(k.clone(), other);
            }
        }
    }
}

/// The release spec of a final member: `science` (a reference to its
/// science image) plus its compat dirs, in order, with the release's name,
/// tags and labels.
pub fn release_spec(ws: &Workspace, b: &Build, science: &str, tags: &[String]) -> Result<String> {
    let m = &ws.members[&b.target];
    let mut doc = Table::new();
    let image = table(&mut doc, "image");
    image.insert("base".into(), Value::String(science.to_string()));
    image.insert("name".into(), Value::String(b.image.clone()));
    image.insert("tags".into(), strings(tags));
    if let Some(p) = parse(&m.spec.path, &m.spec.text)?
        .get("image")
        .and_then(|i| i.get("platforms"))
    {
        image.insert("platforms".into(), p.clone());
    }
    let mut files = Vec::new();
    for name in &b.compat {
        let c = &ws.compat[name];
        let rel = c.dir.strip_prefix(&ws.root).unwrap_or(&c.dir).to_path_buf();
        let compat = parse(&c.dir.join(COMPAT_FILE), &c.text)?;
        for (section, v) in &compat {
            match (section.as_str(), v) {
                ("config", Value::Table(t)) => {
                    merge_section(table(&mut doc, "config"), t, &rel, false)
                }
                ("apt" | "pip", Value::Table(t)) => {
                    merge_section(table(&mut doc, section), t, &rel, true)
                }
                ("files", Value::Array(entries)) => {
                    for e in entries {
                        let mut e = e.clone();
                        if let Some(t) = e.as_table_mut() {
                            let local = !["from", "url", "content"]
                                .iter()
                                .any(|k| t.contains_key(*k));
                            if let (true, Some(src)) = (local, t.get("src").cloned()) {
                                t.insert("src".into(), rebase_path(&rel, &src));
                            }
                        }
                        files.push(e);
                    }
                }
                _ => {}
            }
        }
    }
    if !files.is_empty() {
        doc.insert("files".into(), Value::Array(files));
    }
    set_labels(&mut doc, &b.labels);
    Ok(toml::to_string(&doc).expect("a built table serialises"))
}
