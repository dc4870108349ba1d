//! `kiln build --workspace`: run a workspace plan with the builder.
//!
//! Each planned member is built as any spec is ([`build::build`]), from the
//! text [`kiln_workspace::assemble`] makes: the member's kiln.toml with the
//! workspace's base, name, tags and labels, and for a release, a spec whose
//! base is the science image and whose layers are the compat dirs'. So a
//! rebase resolves and fetches no science package: the science layers are
//! mounted (registry) or copied (layout) as any base's are.
//!
//! The registry is the shared cache: every image carries a content tag
//! (`in-` + its input hash), and a member whose tag is already there is not
//! built again, only tagged. Without `--push`, images go to OCI layouts
//! under the output directory (`sci/TARGET`, `rel/IMAGE/VERSION`), and a
//! layout whose label records the same hash is reused the same way.
//!
//! Moving tags (`{version}`) are written once every build of the run
//! succeeded, or by `--move-tags` (the last job of a generated pipeline):
//! a CI job for one member (`--only`) pushes its immutable tags only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::build::{self, BuildOptions, LockMode};
use kiln_core::error::{Error, Result};
use kiln_oci::output::push;
use kiln_oci::registry::Registry;
use kiln_spec::source::{ImageSource, OutputTarget};
use kiln_workspace::assemble::{self, ImageOverride};
use kiln_workspace::hash::MemberHashes;
use kiln_workspace::plan::{content_tag, Build, Kind, Plan};
use kiln_workspace::{Base, Workspace};

pub struct WorkspaceOptions {
    /// kiln-workspace.toml, or a directory at or under the workspace root.
    pub path: PathBuf,
    pub since: Option<String>,
    /// Only these targets of the plan (their `target:` bases must be built).
    pub only: Vec<String>,
    /// Point the moving tags of the planned releases at their content tags; build nothing.
    pub move_tags: bool,
    /// Where layouts go without `--push` (`sci/TARGET`, `rel/IMAGE/VERSION`).
    pub out: PathBuf,
    /// Members built at the same time (where the graph allows).
    pub jobs: usize,
    /// A line on stderr as each member is done.
    pub log: bool,
    /// Everything else, as for one build (`push`, cache, compression, ...).
    pub build: BuildOptions,
}

/// What happened to one image of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub image: String,
    /// A digest reference (pushed) or `oci:DIR` (layout).
    pub reference: String,
    pub digest: String,
    /// `built`, or `reused` (its content tag or layout was there already).
    pub status: &'static str,
    /// Tags written (pushed or in the layout).
    pub tags: Vec<String>,
    /// Blobs uploaded by the push (0 for a rebase's science layers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobs_uploaded: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_uploaded: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct MemberReport {
    pub target: String,
    pub kind: &'static str,
    pub science: Option<ImageReport>,
    pub release: Option<ImageReport>,
}

#[derive(Debug, Serialize)]
pub struct WorkspaceReport {
    pub summary: String,
    pub builds: Vec<MemberReport>,
    /// `IMAGE:TAG` moved to the run's releases.
    pub moved_tags: Vec<String>,
}

/// Load, plan and run.
pub fn build_workspace(opts: &WorkspaceOptions) -> Result<WorkspaceReport> {
    let (ws, plan) = kiln_workspace::plan_at(&opts.path, opts.since.as_deref())?;
    // Layout references are handed to builds whose specs stand elsewhere.
    let out = std::path::absolute(&opts.out)
        .map_err(|e| Error::input(format!("--output {}: {e}", opts.out.display())))?;
    let hashes = kiln_workspace::hash::member_hashes(&ws)?;
    for t in &opts.only {
        if !ws.members.contains_key(t) {
            return Err(Error::input(format!(
                "--only {t}: no such workspace member (members: {})",
                ws.members.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let builds: Vec<&Build> = plan
        .builds
        .iter()
        .filter(|b| opts.only.is_empty() || opts.only.contains(&b.target))
        .collect();
    let registry = match opts.build.push || opts.move_tags {
        false => None,
        true => {
            let probe = kiln_spec::reference::parse(&format!("{}/probe", ws.registry))
                .map_err(|e| Error::input(format!("registry `{}`: {e}", ws.registry)))?;
            Some(Registry::new(&opts.build.insecure_registries, &[&probe])?)
        }
    };
    let run = Run {
        ws: &ws,
        plan: &plan,
        hashes: &hashes,
        opts,
        registry: registry.as_ref(),
        out,
        science: Mutex::new(BTreeMap::new()),
    };
    let mut reports = Vec::new();
    if !opts.move_tags {
        let depth = builds.iter().map(|b| b.depth).max().unwrap_or(0);
        for level in 0..=depth {
            let todo: Vec<&Build> = builds
                .iter()
                .copied()
                .filter(|b| b.depth == level)
                .collect();
            reports.extend(run.level(&todo)?);
        }
    }
    // Moving tags: once everything of the run is in, or on request.
    let mut moved = Vec::new();
    if let Some(reg) = &registry {
        if opts.move_tags || opts.only.is_empty() {
            for b in builds.iter().filter(|b| b.kind != Kind::Science) {
                let from = push::tag_ref(&b.image, &content_tag(&b.input_hash))?;
                if reg.tag_digest(&from)?.is_none() {
                    return Err(Error::input(format!(
                        "--move-tags: {} is not in the registry; build {} first",
                        from.whole(),
                        b.target
                    )));
                }
                push::retag(reg, &from, &b.image, &b.moving_tags)?;
                moved.extend(b.moving_tags.iter().map(|t| format!("{}:{t}", b.image)));
            }
        }
    }
    Ok(WorkspaceReport {
        summary: plan.summary_line(),
        builds: reports,
        moved_tags: moved,
    })
}

struct Run<'a> {
    ws: &'a Workspace,
    plan: &'a Plan,
    hashes: &'a BTreeMap<String, MemberHashes>,
    opts: &'a WorkspaceOptions,
    registry: Option<&'a Registry>,
    /// `opts.out`, absolute.
    out: PathBuf,
    /// Science images of this run, by target: (reference for a base, shown name).
    science: Mutex<BTreeMap<String, (String, String)>>,
}

impl Run<'_> {
    /// Build one level of the graph, `jobs` at a time; the first failure
    /// stops the level (builds under way finish) and is returned.
    fn level(&self, todo: &[&Build]) -> Result<Vec<MemberReport>> {
        let next = Mutex::new(0usize);
        let results: Mutex<Vec<(usize, Result<MemberReport>)>> = Mutex::new(Vec::new());
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..self.opts.jobs.clamp(1, todo.len().max(1)) {
                s.spawn(|| loop {
                    if failed.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let i = {
                        let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(b) = todo.get(i) else { return };
                    let r = self.member(b);
                    if r.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, r));
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    fn member(&self, b: &Build) -> Result<MemberReport> {
        let science =
            match b.kind {
                Kind::Rebase => None,
                Kind::Science | Kind::Release => Some(self.science(b).map_err(|e| {
                    e.context(format!("workspace member {}: science image", b.target))
                })?),
            };
        let release = match b.kind {
            Kind::Science => None,
            Kind::Release | Kind::Rebase => Some(
                self.release(b)
                    .map_err(|e| e.context(format!("workspace member {}: release", b.target)))?,
            ),
        };
        let r = MemberReport {
            target: b.target.clone(),
            kind: b.kind.name(),
            science,
            release,
        };
        if self.opts.log {
            eprint!("{}", render_member(&r));
        }
        Ok(r)
    }

    fn push(&self) -> bool {
        self.opts.build.push
    }

    /// The commit tag of a science image (`{count}-{hash}`).
    fn commit_tag(&self) -> String {
        format!("{}-{}", self.plan.commit.count, self.plan.commit.hash)
    }

    fn science_layout(&self, target: &str) -> PathBuf {
        self.out.join("sci").join(target)
    }

    /// An image already made from the same inputs: its content tag in the
    /// registry, or a layout whose `<prefix>.input-hash` label matches.
    fn existing(&self, image: &str, hash: &str, layout: &Path) -> Result<Option<(String, String)>> {
        match self.registry {
            Some(reg) if self.push() => {
                let r = push::tag_ref(image, &content_tag(hash))?;
                Ok(reg.tag_digest(&r)?.map(|d| (format!("{image}@{d}"), d)))
            }
            _ => {
                if !layout.join("index.json").is_file() {
                    return Ok(None);
                }
                let src = ImageSource::Layout {
                    dir: layout.to_path_buf(),
                    tag: Some(content_tag(hash)),
                };
                let cache = kiln_store::Cache::open(&self.opts.build.cache_dir)?;
                let Ok(report) = kiln_oci::inspect::inspect(&src, None, &[], &cache) else {
                    return Ok(None);
                };
                let key = format!("{}.input-hash", self.ws.label_prefix);
                let same = report.labels.get(&key).and_then(|v| v.as_str()) == Some(hash);
                Ok(same.then(|| (layout_ref(layout, hash), report.digest.unwrap_or_default())))
            }
        }
    }

    /// The science image of `target` for a member built on it: from this
    /// run, else the registry's or the layout's image of its science hash.
    fn science_ref(&self, target: &str) -> Result<(String, String)> {
        if let Some(r) = self
            .science
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
        {
            return Ok(r.clone());
        }
        let hash = &self.hashes[target].science;
        let image = self.ws.science_image(target);
        let shown = format!("{image}:{}", content_tag(hash));
        match self.existing(&image, hash, &self.science_layout(target))? {
            Some((reference, _)) => Ok((reference, shown)),
            None => Err(Error::input(format!(
                "the science image of {target} ({shown}) is not {}: build it first \
                 (kiln build --workspace --only {target}{})",
                if self.push() {
                    "in the registry".to_string()
                } else {
                    format!("in {}", self.science_layout(target).display())
                },
                if self.push() { " --push" } else { "" },
            ))),
        }
    }

    /// An image already made from the same inputs: pushed, it gets `tags`
    /// (pointed at its content tag); in a layout it has them already.
    fn reused(
        &self,
        image: String,
        hash: &str,
        reference: String,
        digest: String,
        tags: &[String],
    ) -> Result<ImageReport> {
        let tags = match self.registry {
            Some(reg) if self.push() => {
                let from = push::tag_ref(&image, &content_tag(hash))?;
                push::retag(reg, &from, &image, tags)?.1
            }
            _ => Vec::new(),
        };
        Ok(ImageReport {
            image,
            reference,
            digest,
            status: "reused",
            tags,
            blobs_uploaded: None,
            bytes_uploaded: None,
        })
    }

    /// The member's last science image in the registry (the highest
    /// `{count}-{hash}` tag): its stage records serve as `--cache-from`,
    /// so a member whose packages did not change reuses their layers.
    fn previous(&self, image: &str) -> Result<Option<String>> {
        let Some(reg) = self.registry.filter(|_| self.push()) else {
            return Ok(None);
        };
        let tags = match reg.list_tags(&push::tag_ref(image, "latest")?) {
            Ok(t) => t,
            // A repository not pushed to yet.
            Err(_) => return Ok(None),
        };
        Ok(tags
            .iter()
            .filter_map(|t| {
                let (count, hash) = t.split_once('-')?;
                let n: u64 = count.parse().ok()?;
                hash.bytes()
                    .all(|b| b.is_ascii_hexdigit())
                    .then_some((n, t))
            })
            .max()
            .map(|(_, t)| format!("{image}:{t}")))
    }

    /// A Dockerfile member: translated with `target:NAME` standing for the
    /// members' images; the stages its last one needs are built first.
    fn dockerfile_opts(
        &self,
        m: &kiln_workspace::Member,
        df: &Path,
        o: &ImageOverride,
        aliases: Vec<(String, String)>,
        layout: &Path,
        mut names: Vec<(String, String)>,
    ) -> Result<(BuildOptions, crate::dockerfile_build::Prepared)> {
        let b = &self.opts.build;
        let context = m
            .spec
            .image
            .context
            .as_ref()
            .map_or_else(|| m.dir.clone(), |c| m.dir.join(c));
        let text = kiln_dockerfile::read(df)?;
        let lookup = |image: &str, platform: Option<&str>| {
            crate::dockerfile_build::base_config(
                image,
                platform,
                &context,
                b.offline,
                &b.insecure_registries,
                &b.cache_dir,
            )
        };
        let (t, prepared) = crate::dockerfile_build::translate(
            &text,
            df,
            &context,
            kiln_dockerfile::Options {
                build_args: m
                    .spec
                    .image
                    .build_args
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                base: Some(&lookup),
                aliases,
                ..Default::default()
            },
            &b.cache_dir,
        )
        .map_err(|e| e.context(format!("{}", df.display())))?;
        let spec = kiln_dockerfile::spec_path(&context);
        // The translation names its own base (a stage's layout, or the
        // member a `target:` FROM stands for).
        let o = ImageOverride { base: None, ..*o };
        let text = assemble::overlay(&spec, &t.toml, &o)?;
        names.extend(prepared.image_names());
        let opts = self.build_opts(spec, text, layout, names);
        prepared.build_stages(&opts, &[])?;
        Ok((opts, prepared))
    }

    fn build_opts(
        &self,
        spec: PathBuf,
        text: String,
        out: &Path,
        shown: Vec<(String, String)>,
    ) -> BuildOptions {
        let mut o = self.opts.build.clone();
        o.spec = spec;
        o.spec_text = Some(text);
        o.outputs = match self.push() {
            true => Vec::new(),
            false => vec![OutputTarget::Layout(out.to_path_buf())],
        };
        o.image_names = shown;
        o
    }

    fn science(&self, b: &Build) -> Result<ImageReport> {
        let m = &self.ws.members[&b.target];
        let image = self.ws.science_image(&b.target);
        let tags = vec![content_tag(&b.science_hash), self.commit_tag()];
        let layout = self.science_layout(&b.target);
        let shown = format!("{image}:{}", content_tag(&b.science_hash));
        let report = match self.existing(&image, &b.science_hash, &layout)? {
            Some((reference, digest)) => {
                self.reused(image, &b.science_hash, reference, digest, &tags)?
            }
            None => {
                // The members it builds on: `target:NAME` → their images.
                let mut aliases = Vec::new();
                let mut names = Vec::new();
                for d in m.deps() {
                    let (r, s) = self.science_ref(&d)?;
                    aliases.push((format!("target:{d}"), r.clone()));
                    names.push((r, s));
                }
                let base = match &m.base {
                    Base::Target(t) => aliases
                        .iter()
                        .find(|(a, _)| *a == format!("target:{t}"))
                        .map(|(_, r)| r.clone()),
                    Base::Other(_) => None,
                };
                let o = ImageOverride {
                    base: base.as_deref(),
                    name: &image,
                    tags: &tags,
                    labels: &b.science_labels,
                    imports: &aliases,
                };
                // A Dockerfile's earlier stages live in `_stages` until built on.
                let (mut opts, _stages) = match &m.dockerfile {
                    None => {
                        let text = assemble::member_spec(m, &o)?;
                        (
                            self.build_opts(m.spec.path.clone(), text, &layout, names),
                            None,
                        )
                    }
                    Some(df) => {
                        let (opts, stages) =
                            self.dockerfile_opts(m, df, &o, aliases.clone(), &layout, names)?;
                        (opts, Some(stages))
                    }
                };
                opts.cache_from.extend(self.previous(&image)?);
                self.built(&opts, image, &layout, tags, &b.science_hash)?
            }
        };
        self.science
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(b.target.clone(), (report.reference.clone(), shown));
        Ok(report)
    }

    fn release(&self, b: &Build) -> Result<ImageReport> {
        let version = b.version.clone().unwrap_or_default();
        let name = self.ws.members[&b.target]
            .release
            .as_ref()
            .map_or_else(|| b.target.clone(), |r| r.image.clone());
        let layout = self.out.join("rel").join(name).join(&version);
        // Moving tags wait for the end of the run (or `--move-tags`).
        let tags: Vec<String> = b
            .tags
            .iter()
            .filter(|t| !self.push() || !b.moving_tags.contains(t))
            .cloned()
            .collect();
        if let Some((reference, digest)) = self.existing(&b.image, &b.input_hash, &layout)? {
            return self.reused(b.image.clone(), &b.input_hash, reference, digest, &tags);
        }
        let (science, shown) = self.science_ref(&b.target)?;
        let text = assemble::release_spec(self.ws, b, &science, &tags)?;
        let mut opts = self.build_opts(
            assemble::release_spec_path(self.ws, &b.target),
            text,
            &layout,
            vec![(science, shown)],
        );
        // A release has no kiln.lock: its base is pinned by digest.
        opts.lock_mode = LockMode::Auto;
        self.built(&opts, b.image.clone(), &layout, tags, &b.input_hash)
    }

    fn built(
        &self,
        opts: &BuildOptions,
        image: String,
        layout: &Path,
        tags: Vec<String>,
        hash: &str,
    ) -> Result<ImageReport> {
        let r = build::build(opts)?;
        let reference = match self.push() {
            true => format!("{image}@{}", r.digest),
            false => layout_ref(layout, hash),
        };
        Ok(ImageReport {
            image,
            reference,
            digest: r.digest.clone(),
            status: "built",
            tags: r.push.as_ref().map_or(tags, |p| p.tags.clone()),
            blobs_uploaded: r.push.as_ref().map(|p| p.blobs_uploaded),
            bytes_uploaded: r.push.as_ref().map(|p| p.bytes_uploaded),
        })
    }
}

/// A layout's image of `hash`, by its content tag.
fn layout_ref(layout: &Path, hash: &str) -> String {
    format!("oci:{}:{}", layout.display(), content_tag(hash))
}

fn render_member(m: &MemberReport) -> String {
    let mut s = String::new();
    for (what, img) in [("science", &m.science), ("release", &m.release)] {
        if let Some(i) = img {
            s.push_str(&format!(
                "{:<8} {:<16} {what} {} {}\n",
                m.kind, m.target, i.status, i.reference
            ));
        }
    }
    s
}

/// The human-readable report (the members, then the moved tags and the summary).
pub fn render(r: &WorkspaceReport, members: bool) -> String {
    let mut s = String::new();
    for m in r.builds.iter().filter(|_| members) {
        s.push_str(&render_member(m));
    }
    for t in &r.moved_tags {
        s.push_str(&format!("moved    {t}\n"));
    }
    s.push_str(&r.summary);
    s.push('\n');
    s
}
