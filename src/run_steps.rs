//! `[[run]]`: the spec's commands (a Dockerfile's RUN lines that are not
//! package installs), each run in kiln's sandbox over the tree assembled so
//! far and turned into a layer of what it changed, in order with the
//! `[[files]]` layers they follow.
//!
//! All the commands share one tree on disk, written from the image's
//! layers (each command still its own layer); a `[[files]]` layer is
//! written into it in its turn. Only for the host's platform: the check
//! runs before anything is fetched.

use serde_json::Value;

use kiln_core::digest::Digest;
use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_core::progress::Progress;
use kiln_fs::layer::{Compression, Entry, EntryKind, LayerBlob, LayerGroup};
use kiln_fs::rootfs::Rootfs;
use kiln_fs::sandbox::{RunSpec, Sandbox, DEFAULT_PATH};
use kiln_oci::image::ProcessDefaults;
use kiln_spec::spec::{Network, Spec};
use kiln_store::{Cache, CacheBucket};

use crate::BuildError;

/// Proxy variables passed from the host to commands with its network.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
];

/// Refuse `[[run]]` for any platform but the host's.
pub(crate) fn check_host(spec: &Spec, platforms: &[Platform]) -> Result<()> {
    let Some(step) = spec.run.first() else {
        return Ok(());
    };
    for p in platforms {
        if !p.is_host() {
            return Err(BuildError::RunForeignPlatform {
                step: step.describe(0),
                platform: p.to_string(),
                host: Platform::host().to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// A layer of `[[files]]` or `[[run]]`, in spec order: to build (with
/// the key a `[[run]]` step's layer is remembered by, once built), or a
/// command's layer remembered from an earlier build.
pub(crate) enum Planned {
    Build(LayerGroup, Option<Digest>),
    Remembered(LayerBlob, String, Digest),
}

/// The layers of `[[files]]` and `[[run]]`, in spec order, applied to `fs`
/// (the view the SBOM reads, contents kept as `keep` says) as they are
/// made. `file_groups` are the `[[files]]` entries' layers; `layers` opens
/// the tar streams of the image so far (base, then the package stages),
/// from which the commands' tree is written to disk, streaming (opened
/// only then: each is read ahead on a thread of its own).
///
/// A command is remembered as docker remembers a RUN: by what it is (its
/// argv, environment, user, directory and network) and everything under
/// it (`under`: the image so far and how its layers are written; then
/// each `[[files]]` layer's content and each command before it). When
/// every command is remembered, no tree is written and none runs; from
/// the first that is not, the tree is written with what came before it
/// and the commands run from there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn groups(
    spec: &Spec,
    base_config: &Value,
    layers: &dyn Fn() -> Result<Vec<Box<dyn std::io::Read>>>,
    file_groups: &[LayerGroup],
    fs: &mut Rootfs,
    keep: &dyn Fn(&str) -> bool,
    network: Option<Network>,
    cache: &Cache,
    progress: &Progress,
    under: RunsUnder,
) -> Result<Vec<Planned>> {
    // The base's Env, User and WorkingDir: what a command inherits when
    // its step does not say.
    let base = ProcessDefaults::of(&base_config["config"]);
    let slots = slots(spec, file_groups.len());
    let tmp = cache.bucket(CacheBucket::Tmp);
    let mut out: Vec<Planned> = Vec::new();
    let first = spec.run.first().map(|s| s.describe(0)).unwrap_or_default();
    let mut chain = under.key;
    // The tree, written at the first command not remembered.
    let mut sb: Option<Sandbox> = None;
    // What the tree must have on top of `layers` when it is written.
    let mut pending: Vec<Pending> = Vec::new();
    for (slot, steps) in slots.into_iter().enumerate() {
        for i in steps {
            let step = &spec.run[i];
            let label = step.describe(i);
            let argv = step.argv();
            let mut env = base.env.clone();
            for (k, v) in &step.env {
                env.retain(|(name, _)| name != k);
                env.push((k.clone(), v.clone()));
            }
            if !env.iter().any(|(k, _)| k == "PATH") {
                env.push(("PATH".into(), DEFAULT_PATH.into()));
            }
            let network = step.network.or(network).unwrap_or_default();
            let run = RunSpec {
                argv: argv.clone(),
                env,
                user: step.user.clone().or_else(|| base.user.clone()),
                workdir: step
                    .workdir
                    .as_ref()
                    .map(|w| w.0.clone())
                    .or_else(|| base.workdir.clone()),
                network,
            };
            chain = step_key(&chain, &run);
            let created_by = created_by(&label);
            if under.reuse {
                if let Some(blob) = kiln_fs::layer::remembered(cache, &chain) {
                    let read = || kiln_fs::layer::open_layer(cache, &blob);
                    fs.apply_layer(read()?, keep)?;
                    match &mut sb {
                        Some(sb) => sb.apply_layer(read()?)?,
                        None => pending.push(Pending::Layer(blob.clone())),
                    }
                    out.push(Planned::Remembered(blob, created_by, chain.clone()));
                    continue;
                }
            }
            if under.plan_only {
                // A plan stops at the first command that would run.
                return Ok(out);
            }
            let sb = match &mut sb {
                Some(sb) => sb,
                None => {
                    let spinner = progress.spinner(&format!("writing the tree for {first}"));
                    let mut tree = Sandbox::from_layers(layers()?, &tmp, &first)?;
                    for p in pending.drain(..) {
                        match p {
                            Pending::Layer(blob) => {
                                tree.apply_layer(kiln_fs::layer::open_layer(cache, &blob)?)?
                            }
                            Pending::Files(entries) => write_entries(&mut tree, &entries)?,
                        }
                    }
                    spinner.finish_and_clear();
                    sb.insert(tree)
                }
            };
            let mut run = run;
            if network == Network::Host {
                // The host's proxy settings reach the command (as docker
                // passes its configured proxies as build args); they are
                // never part of the image, nor of what it is remembered by.
                for k in PROXY_VARS {
                    if let Ok(v) = std::env::var(k) {
                        if !run.env.iter().any(|(name, _)| name == k) {
                            run.env.push((k.to_string(), v));
                        }
                    }
                }
            }
            let spinner = progress.spinner(&format!("running {label}"));
            let output = sb.run(&run)?;
            spinner.finish_and_clear();
            if !output.status.success() {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                return Err(BuildError::RunFailed {
                    step: label,
                    command: shorten(&argv.join(" ")),
                    status: output.status,
                    output: tail.join("\n"),
                }
                .into());
            }
            let entries = sb.take_changes()?;
            fs.apply_entries(&entries, keep);
            out.push(Planned::Build(
                LayerGroup::new(created_by, entries),
                Some(chain.clone()),
            ));
        }
        if let Some(group) = file_groups.get(slot) {
            let dst = spec.files.get(slot).map(|f| f.dst.relative()).unwrap_or("");
            let mut entries = group.entries.clone();
            fs.adopt_parents(dst, &mut entries);
            // Its content (as the layer it makes) is under what follows.
            let content =
                kiln_fs::layer::layer_key(&entries, &group.parts, under.mtime, under.compression)?;
            chain = Digest::of(format!("{chain}\nfiles {content}").as_bytes());
            match &mut sb {
                Some(sb) => write_entries(sb, &entries)?,
                None => pending.push(Pending::Files(entries.clone())),
            }
            fs.apply_entries(&entries, keep);
            out.push(Planned::Build(
                LayerGroup::new(group.label.clone(), entries),
                None,
            ));
        }
    }
    Ok(out)
}

/// What `[[run]]` steps are remembered under: the image so far and how
/// its layers are written (see [`groups`]), and whether remembered ones
/// may be taken (not with `--no-cache`). With `plan_only` (`kiln build
/// --dry-run`), [`groups`] stops at the first command that would run.
pub(crate) struct RunsUnder {
    pub(crate) key: Digest,
    pub(crate) mtime: u64,
    pub(crate) compression: Compression,
    pub(crate) reuse: bool,
    pub(crate) plan_only: bool,
}

impl RunsUnder {
    /// Over the image whose layers' diff_ids are `diff_ids` (lowest
    /// first), written with `mtime` and `compression`.
    pub(crate) fn new(
        diff_ids: impl IntoIterator<Item = String>,
        mtime: u64,
        compression: Compression,
        reuse: bool,
    ) -> RunsUnder {
        let mut head = format!(
            "kiln-run/1 {} layers/{} {compression:?} {mtime}\n",
            env!("CARGO_PKG_VERSION"),
            kiln_fs::layer::ENCODING
        );
        for d in diff_ids {
            head.push_str(&d);
            head.push('\n');
        }
        RunsUnder {
            key: Digest::of(head.as_bytes()),
            mtime,
            compression,
            reuse,
            plan_only: false,
        }
    }
}

/// What the commands' layers are called, in the order they run.
pub(crate) fn labels(spec: &Spec, files: usize) -> Vec<String> {
    slots(spec, files)
        .into_iter()
        .flatten()
        .map(|i| created_by(&spec.run[i].describe(i)))
        .collect()
}

/// The commands (their indexes in `spec.run`) that run before each of the
/// `files` `[[files]]` layers, and after the last: the order they run in.
fn slots(spec: &Spec, files: usize) -> Vec<Vec<usize>> {
    let mut slots = vec![Vec::new(); files + 1];
    for (i, step) in spec.run.iter().enumerate() {
        if let Some(slot) = slots.get_mut(step.after_files.unwrap_or(files)) {
            slot.push(i);
        }
    }
    slots
}

/// The history line of the layer the command `label` makes.
fn created_by(label: &str) -> String {
    format!("kiln run: {label}")
}

/// The key of a command run over what `under` names.
fn step_key(under: &Digest, run: &RunSpec) -> Digest {
    let mut h = format!("{under}\nrun {:?}\n", run.argv);
    for (k, v) in &run.env {
        h.push_str(&format!("env {k:?}={v:?}\n"));
    }
    h.push_str(&format!(
        "user {:?} workdir {:?} network {:?}\n",
        run.user, run.workdir, run.network
    ));
    Digest::of(h.as_bytes())
}

/// What the tree must get, in order, once it is written.
enum Pending {
    Layer(LayerBlob),
    Files(Vec<Entry>),
}

/// A command as messages quote it: at most 200 characters.
fn shorten(command: &str) -> String {
    match command.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &command[..i]),
        None => command.to_string(),
    }
}

/// Put a `[[files]]` layer into a sandbox's tree (so later commands see
/// it), and forget it as a change: it is a layer of its own already.
fn write_entries(sb: &mut Sandbox, entries: &[Entry]) -> Result<()> {
    use kiln_core::error::IoContext;
    use std::os::unix::fs::PermissionsExt;
    let root = sb.root().to_path_buf();
    for e in entries {
        let dst = root.join(e.path.trim_start_matches('/'));
        let io = || format!("writing {}", dst.display());
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).io_context(io)?;
        }
        match &e.kind {
            EntryKind::Dir => std::fs::create_dir_all(&dst).io_context(io)?,
            EntryKind::Symlink { target } => {
                let _ = std::fs::remove_file(&dst);
                std::os::unix::fs::symlink(target, &dst).io_context(io)?;
            }
            EntryKind::File { src, .. } => {
                let _ = std::fs::remove_file(&dst);
                std::fs::copy(src, &dst).io_context(io)?;
            }
            EntryKind::Data(bytes) => {
                let _ = std::fs::remove_file(&dst);
                std::fs::write(&dst, bytes.as_slice()).io_context(io)?;
            }
            EntryKind::Spooled(s) => {
                let _ = std::fs::remove_file(&dst);
                let mut out = std::fs::File::create(&dst).io_context(io)?;
                std::io::copy(&mut s.reader().io_context(io)?, &mut out).io_context(io)?;
            }
        }
        if !matches!(e.kind, EntryKind::Symlink { .. }) {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(e.mode))
                .io_context(io)?;
            let _ = std::os::unix::fs::lchown(&dst, Some(e.uid as u32), Some(e.gid as u32));
        }
    }
    sb.take_changes()?;
    Ok(())
}
