//! Workspaces (first increment of issue 16): many kiln.toml members in one
//! repository, built and released together.
//!
//! `kiln-workspace.toml` at the repository root:
//!
//! ```toml
//! [workspace]
//! members = ["science/*"]          # dirs each holding a kiln.toml
//! compat = ["compat/*"]            # dirs each holding a kiln-compat.toml
//! registry = "registry.example.invalid/team"
//! tags = ["{version}", "{version}-{count}-{hash}"]   # the default
//! label-prefix = "kiln"                              # the default
//! ```
//!
//! A member's target name is its directory name (or `[release] target`);
//! `[image] base = "target:NAME"` builds on another member's science image.
//! Every member's science image goes to `{registry}/sci/{target}`; members
//! with `[release] image/version` form image+version groups whose final
//! member (the one nothing else in the group builds on) is released as
//! `{registry}/rel/{image}:{version}`, with the compat layers of
//! `[release] compat` (and their `includes`) on top.
//!
//! What is here: loading and validating all of that ([`Workspace::load`]),
//! input hashes and change detection, the build plan ([`plan::Plan`]), the
//! specs each planned image is built from ([`assemble`]) and CI pipelines
//! generated from the plan ([`ci`]). Running the plan (`kiln build
//! --workspace`) is the builder's (the `kiln` crate's `workspace_build`).
//!
//! Dependencies: none that kiln does not already build. Git is driven
//! through the `git` CLI ([`git`]); globs are a small matcher ([`glob`]);
//! GitLab pipelines are written as JSON, which is YAML 1.2 ([`ci`]).

pub mod assemble;
pub mod ci;
mod error;
pub mod git;
pub mod glob;
pub mod hash;
pub mod plan;
mod workspace;

pub use error::WorkspaceError;
pub use workspace::{
    compare_versions, Base, Compat, CompatLayer, Member, Release, TagScheme, Workspace,
    COMPAT_FILE, WORKSPACE_FILE,
};

/// Load the workspace at `path` (its kiln-workspace.toml, or a directory at
/// or under its root) and plan it: every member, or with `since` those
/// changed since that Git ref and their dependents.
pub fn plan_at(
    path: &std::path::Path,
    since: Option<&str>,
) -> kiln_core::error::Result<(Workspace, plan::Plan)> {
    let file = if path.is_file() {
        path.to_path_buf()
    } else {
        Workspace::discover(path)?
    };
    let ws = Workspace::load(&file)?;
    let head = git::head(&ws.root)?;
    let plan = match since {
        None => plan::compute(&ws, &head, None)?,
        Some(r) => {
            let changed = git::changed_since(&ws.root, r)?;
            plan::compute(&ws, &head, Some((r, &changed)))?
        }
    };
    Ok((ws, plan))
}

#[cfg(test)]
mod tests;
