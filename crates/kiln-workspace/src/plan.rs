//! The build plan: which members to build, as what, in which order, with
//! which images and tags.
//!
//! Without `--since` every member is in the plan (kind `science`, or
//! `release` for a final release image). With `--since REF` a member is in
//! it when a file among its science inputs changed in Git (or its
//! `target:` base is in it as a science build, or kiln-workspace.toml
//! changed): kind `science`/`release`; or, for a final release, when only
//! files of its compat dirs changed: kind `rebase` (the science image is
//! reused and only the compat layers are applied again).
//!
//! Tags: a release image gets the workspace's tag scheme (default
//! `{version}` and `{version}-{count}-{hash}`); the scheme's tags that name
//! no commit are "moving" tags, re-pointed by the pipeline's final job once
//! every release is pushed. A science image gets `in-<first 16 hex of its
//! science hash>` (content-addressed: a rebase finds its science image by
//! it) and `{count}-{hash}`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use kiln_core::error::Result;

use crate::error::WorkspaceError;
use crate::git::Head;
use crate::hash::{compat_inputs, member_hashes, member_inputs};
use crate::workspace::{Base, TagScheme, Workspace};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Build the member's science image.
    Science,
    /// Build the science image, apply compat, release it.
    Release,
    /// Reuse the science image; apply compat again and release.
    Rebase,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Science => "science",
            Kind::Release => "release",
            Kind::Rebase => "rebase",
        }
    }
}

/// One member to build.
#[derive(Clone, Debug, Serialize)]
pub struct Build {
    pub target: String,
    pub kind: Kind,
    /// The image pushed (no tag): `{registry}/sci/{target}` or `{registry}/rel/{image}`.
    pub image: String,
    pub tags: Vec<String>,
    /// Targets of this plan that must be built first.
    pub needs: Vec<String>,
    pub input_hash: String,
    pub science_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compat_hash: Option<String>,
    /// For releases and rebases: the science image (with its content tag) they start from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub science_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The tags of `tags` that the final pipeline job moves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moving_tags: Vec<String>,
    /// Compat dirs applied, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compat: Vec<String>,
    /// 0 when `needs` is empty, else one more than the deepest need.
    pub depth: usize,
    /// Labels the image carries (a release: its science image's and its own).
    pub labels: BTreeMap<String, String>,
    /// Labels of the science image (a science build: the same as `labels`).
    pub science_labels: BTreeMap<String, String>,
    /// Why it is in the plan (`kiln plan -v`).
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// `science` + `release` builds: a science image is built.
    pub science_builds: usize,
    pub compat_rebases: usize,
    pub releases: usize,
    pub total: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub commit: CommitInfo,
    pub builds: Vec<Build>,
    pub summary: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommitInfo {
    pub count: u64,
    pub hash: String,
}

/// The content tag of an image: `in-` and the first 16 hex of its hash. A
/// build whose tag is already in the registry is not built again.
pub fn content_tag(hash: &str) -> String {
    format!("in-{}", &hash[..16.min(hash.len())])
}

/// The science targets from the root of `target`'s base chain down to it.
pub fn trail(ws: &Workspace, target: &str) -> Vec<String> {
    let mut chain = vec![target.to_string()];
    let mut at = target;
    while let Some(Base::Target(b)) = ws.members.get(at).map(|m| &m.base) {
        if chain.iter().any(|c| c == b) {
            break;
        }
        chain.push(b.clone());
        at = b;
    }
    chain.reverse();
    chain
}

/// A science image's labels. Labels of its base (another member) are
/// inherited through the image config, so `<prefix>.science.<target>.*`
/// accumulate down the graph: the breadcrumb trail `kiln inspect` shows.
/// No commit or date: the same inputs give the same image.
pub fn science_labels(
    ws: &Workspace,
    target: &str,
    h: &crate::hash::MemberHashes,
) -> BTreeMap<String, String> {
    let p = &ws.label_prefix;
    let version = ws.members[target]
        .release
        .as_ref()
        .map_or_else(|| h.science[..12].to_string(), |r| r.version.clone());
    BTreeMap::from([
        (format!("{p}.target"), target.to_string()),
        (format!("{p}.input-hash"), h.science.clone()),
        (format!("{p}.science-hash"), h.science.clone()),
        (format!("{p}.science.{target}.version"), version),
        (format!("{p}.science.{target}.hash"), h.science.clone()),
        (format!("{p}.trail"), trail(ws, target).join(" > ")),
    ])
}

/// A release image's labels: its science image's, then its own.
fn release_labels(
    ws: &Workspace,
    target: &str,
    h: &crate::hash::MemberHashes,
    r: &crate::workspace::Release,
    compat: &[String],
    science: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let p = &ws.label_prefix;
    let mut labels = science.clone();
    labels.insert(format!("{p}.input-hash"), h.input.clone());
    labels.insert(format!("{p}.release"), format!("{}:{}", r.image, r.version));
    labels.insert(
        format!("{p}.science-image"),
        format!("{}:{}", ws.science_image(target), content_tag(&h.science)),
    );
    if let Some(c) = &h.compat {
        labels.insert(format!("{p}.compat"), compat.join(" + "));
        labels.insert(format!("{p}.compat.version"), ws.compat_version(compat, c));
        labels.insert(format!("{p}.compat-hash"), c.clone());
        let trail = format!(
            "{} > compat {}",
            trail(ws, target).join(" > "),
            compat.join(" + ")
        );
        labels.insert(format!("{p}.trail"), trail);
    }
    labels
}

/// Files of `changed` that are one of `inputs` or lie under one of them.
fn hits(inputs: &[PathBuf], changed: &[PathBuf]) -> Vec<PathBuf> {
    changed
        .iter()
        .filter(|c| inputs.iter().any(|i| c.starts_with(i)))
        .cloned()
        .collect()
}

/// Plan the workspace. `changed`: the files changed since `since` (absolute
/// paths), `None` to build every member.
pub fn compute(ws: &Workspace, head: &Head, changed: Option<(&str, &[PathBuf])>) -> Result<Plan> {
    let hashes = member_hashes(ws)?;
    let rel = |p: &PathBuf| {
        p.strip_prefix(&ws.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let ws_file = ws.root.join(crate::WORKSPACE_FILE);
    let ws_changed = changed.is_some_and(|(_, c)| c.contains(&ws_file));
    let mut builds: Vec<Build> = Vec::new();
    let mut science_built: BTreeSet<String> = BTreeSet::new();
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    for target in &ws.order {
        let m = &ws.members[target];
        let h = &hashes[target];
        let final_release = m.release.as_ref().filter(|r| r.is_final);
        let compat_chain = final_release
            .and_then(|r| r.compat.as_ref())
            .map(|c| ws.compat_chain(c))
            .unwrap_or_default();
        let mut sci_reasons = Vec::new();
        let mut compat_reasons = Vec::new();
        match changed {
            None => sci_reasons.push("every member is planned without --since".to_string()),
            Some((since, files)) => {
                if ws_changed {
                    sci_reasons.push(format!("{} changed since {since}", crate::WORKSPACE_FILE));
                }
                for f in hits(&member_inputs(m), files) {
                    sci_reasons.push(format!("{} changed since {since}", rel(&f)));
                }
                for d in m.deps() {
                    if science_built.contains(&d) {
                        sci_reasons.push(format!("target:{d}, which it builds on, is rebuilt"));
                    }
                }
                for c in &compat_chain {
                    for f in hits(&compat_inputs(ws, c), files) {
                        compat_reasons
                            .push(format!("compat {c}: {} changed since {since}", rel(&f)));
                    }
                }
            }
        }
        let kind = if !sci_reasons.is_empty() {
            if final_release.is_some() {
                Kind::Release
            } else {
                Kind::Science
            }
        } else if !compat_reasons.is_empty() {
            Kind::Rebase
        } else {
            continue;
        };
        if kind != Kind::Rebase {
            science_built.insert(target.clone());
        }
        let needs: Vec<String> = match kind {
            Kind::Rebase => Vec::new(),
            _ => m
                .deps()
                .into_iter()
                .filter(|d| science_built.contains(d))
                .collect(),
        };
        let d = needs.iter().map(|n| depth[n] + 1).max().unwrap_or(0);
        depth.insert(target.clone(), d);
        let science_tag = content_tag(&h.science);
        let science_tags = vec![
            science_tag.clone(),
            format!("{}-{}", head.count, head.short),
        ];
        let (image, tags, moving, version, science_image) = match final_release {
            Some(r) => {
                let tags = ws
                    .tags
                    .render(&r.version, head.count, &head.short)
                    .map_err(|message| WorkspaceError::Invalid {
                        path: ws.file.clone(),
                        key: "tags".into(),
                        message: format!("{target}: {message}"),
                    })?;
                let moving = ws
                    .tags
                    .0
                    .iter()
                    .zip(&tags)
                    .filter(|(t, _)| TagScheme::is_moving(t))
                    .map(|(_, tag)| tag.clone())
                    .collect();
                let mut tags = tags;
                tags.push(content_tag(&h.input));
                (
                    ws.release_image(&r.image),
                    tags,
                    moving,
                    Some(r.version.clone()),
                    Some(format!("{}:{science_tag}", ws.science_image(target))),
                )
            }
            None => (
                ws.science_image(target),
                science_tags,
                Vec::new(),
                None,
                None,
            ),
        };
        let science_labels = science_labels(ws, target, h);
        let labels = match final_release {
            None => science_labels.clone(),
            Some(r) => release_labels(ws, target, h, r, &compat_chain, &science_labels),
        };
        let mut reasons = sci_reasons;
        reasons.extend(compat_reasons);
        builds.push(Build {
            target: target.clone(),
            kind,
            image,
            tags,
            needs,
            input_hash: h.input.clone(),
            science_hash: h.science.clone(),
            compat_hash: h.compat.clone(),
            science_image,
            version,
            moving_tags: moving,
            compat: compat_chain,
            depth: d,
            labels,
            science_labels,
            reasons,
        });
    }
    let mut summary = Summary {
        total: builds.len(),
        ..Summary::default()
    };
    for b in &builds {
        match b.kind {
            Kind::Science => summary.science_builds += 1,
            Kind::Release => {
                summary.science_builds += 1;
                summary.releases += 1;
            }
            Kind::Rebase => {
                summary.compat_rebases += 1;
                summary.releases += 1;
            }
        }
    }
    Ok(Plan {
        since: changed.map(|(s, _)| s.to_string()),
        commit: CommitInfo {
            count: head.count,
            hash: head.short.clone(),
        },
        builds,
        summary,
    })
}

impl Plan {
    /// `N science builds, M compat rebases`.
    pub fn summary_line(&self) -> String {
        format!(
            "{} science build{}, {} compat rebase{}",
            self.summary.science_builds,
            if self.summary.science_builds == 1 {
                ""
            } else {
                "s"
            },
            self.summary.compat_rebases,
            if self.summary.compat_rebases == 1 {
                ""
            } else {
                "s"
            },
        )
    }

    /// The human-readable plan (`kiln plan`); `verbose` adds hashes and reasons.
    pub fn render_text(&self, verbose: bool) -> String {
        let mut s = String::new();
        match &self.since {
            Some(r) => s.push_str(&format!(
                "changes since {r} (HEAD {}, commit #{})\n",
                self.commit.hash, self.commit.count
            )),
            None => s.push_str(&format!(
                "every member (HEAD {}, commit #{})\n",
                self.commit.hash, self.commit.count
            )),
        }
        if self.builds.is_empty() {
            s.push_str("nothing to build\n");
        }
        for b in &self.builds {
            s.push_str(&format!("{:<8} {}", b.kind.name(), b.target));
            if !b.needs.is_empty() {
                s.push_str(&format!("  (needs {})", b.needs.join(", ")));
            }
            s.push('\n');
            for t in &b.tags {
                s.push_str(&format!("           {}:{t}\n", b.image));
            }
            if let Some(sci) = &b.science_image {
                let verb = if b.kind == Kind::Rebase {
                    "reuses"
                } else {
                    "builds"
                };
                s.push_str(&format!("           {verb} {sci}\n"));
            }
            if !b.compat.is_empty() {
                s.push_str(&format!("           compat: {}\n", b.compat.join(" + ")));
            }
            if verbose {
                s.push_str(&format!("           input hash {}\n", b.input_hash));
                for r in &b.reasons {
                    s.push_str(&format!("           because {r}\n"));
                }
            }
        }
        s.push_str(&self.summary_line());
        s.push('\n');
        s
    }
}
