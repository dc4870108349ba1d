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

use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_core::progress::Progress;
use kiln_fs::layer::{Entry, EntryKind, LayerGroup};
use kiln_fs::rootfs::Rootfs;
use kiln_fs::sandbox::{RunSpec, Sandbox, DEFAULT_PATH};
use kiln_oci::image::ProcessDefaults;
use kiln_spec::spec::{Network, RunStep, Spec};
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

/// The layers of `[[files]]` and `[[run]]`, in spec order, applied to `fs`
/// (the view the SBOM reads, contents kept as `keep` says) as they are
/// made. `file_groups` are the `[[files]]` entries' layers; `layers` the
/// tar streams of the image so far (base, then the package stages), from
/// which the commands' tree is written to disk, streaming.
#[allow(clippy::too_many_arguments)]
pub(crate) fn groups(
    spec: &Spec,
    base_config: &Value,
    layers: Vec<Box<dyn std::io::Read + '_>>,
    file_groups: &[LayerGroup],
    fs: &mut Rootfs,
    keep: &dyn Fn(&str) -> bool,
    network: Option<Network>,
    cache: &Cache,
    progress: &Progress,
) -> Result<Vec<LayerGroup>> {
    // The base's Env, User and WorkingDir: what a command inherits when
    // its step does not say.
    let base = ProcessDefaults::of(&base_config["config"]);
    let after = |step: &RunStep| step.after_files.unwrap_or(file_groups.len());
    let tmp = cache.bucket(CacheBucket::Tmp);
    let mut out: Vec<LayerGroup> = Vec::new();
    let first = spec.run.first().map(|s| s.describe(0)).unwrap_or_default();
    let spinner = progress.spinner(&format!("writing the tree for {first}"));
    let mut sb = Sandbox::from_layers(layers, &tmp, &first)?;
    spinner.finish_and_clear();
    for slot in 0..=file_groups.len() {
        for (i, step) in spec.run.iter().enumerate() {
            if after(step) != slot {
                continue;
            }
            let label = step.describe(i);
            let spinner = progress.spinner(&format!("running {label}"));
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
            if network == Network::Host {
                // The host's proxy settings reach the command (as docker
                // passes its configured proxies as build args); they are
                // never part of the image.
                for k in PROXY_VARS {
                    if let Ok(v) = std::env::var(k) {
                        if !env.iter().any(|(name, _)| name == k) {
                            env.push((k.to_string(), v));
                        }
                    }
                }
            }
            let output = sb.run(&RunSpec {
                argv: argv.clone(),
                env,
                user: step.user.clone().or_else(|| base.user.clone()),
                workdir: step
                    .workdir
                    .as_ref()
                    .map(|w| w.0.clone())
                    .or_else(|| base.workdir.clone()),
                network,
            })?;
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
            out.push(LayerGroup::new(format!("kiln run: {label}"), entries));
        }
        if let Some(group) = file_groups.get(slot) {
            let dst = spec.files.get(slot).map(|f| f.dst.relative()).unwrap_or("");
            let mut entries = group.entries.clone();
            fs.adopt_parents(dst, &mut entries);
            write_entries(&mut sb, &entries)?;
            fs.apply_entries(&entries, keep);
            out.push(LayerGroup::new(group.label.clone(), entries));
        }
    }
    Ok(out)
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
