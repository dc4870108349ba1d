//! `--run-scripts`: run the new packages' maintainer scripts as dpkg would
//! (every `preinst install`, then every `postinst configure`, dependencies
//! first) in a chroot of the assembled filesystem, with no network, in
//! kiln's unprivileged sandbox ([`kiln_fs::sandbox`]), and turn what they
//! changed into one more layer. Only when the image's architecture is the
//! host's: no emulation.

use std::collections::BTreeMap;
use std::path::Path;

use super::install::display_name;
use super::repo::Package;
use super::AptPlan;
use crate::AptError;
use kiln_core::error::Result;
use kiln_fs::layer::Entry;
use kiln_fs::rootfs::Rootfs;
use kiln_fs::sandbox::{Network, RunSpec, Sandbox, DEFAULT_PATH};

/// What running the scripts did.
pub struct ScriptRun {
    /// The layer: changed and new paths, whiteouts for removed ones.
    pub entries: Vec<Entry>,
    /// `package: script argument` in the order run.
    pub ran: Vec<String>,
}

/// Can scripts for an image of Debian architecture `arch` run here?
/// Checked before anything is resolved or downloaded.
pub fn check_host(arch: &str) -> Result<()> {
    let host = super::debian_arch(&kiln_core::platform::Platform::host())?;
    if arch != host {
        return Err(AptError::ForeignHost {
            image: arch.to_string(),
            host: host.to_string(),
        }
        .into());
    }
    Ok(())
}

/// Run the maintainer scripts of `plan` over `full` (the base with every
/// apt layer applied, contents kept). `tmp` is a scratch directory on a
/// filesystem that supports ownership; it is removed again.
pub fn run(plan: &AptPlan, full: &Rootfs, tmp: &Path, epoch: u64) -> Result<ScriptRun> {
    check_host(&plan.arch)?;
    let mut sandbox = Sandbox::materialize(full, tmp, "--run-scripts")?;
    let order = configure_order(&plan.packages);
    let mut ran = Vec::new();
    for (script, arg) in [("preinst", "install"), ("postinst", "configure")] {
        for &i in &order {
            let p = &plan.packages[i];
            let rel = format!("var/lib/dpkg/info/{}.{script}", p.info_name());
            if !sandbox.root().join(&rel).is_file() {
                continue;
            }
            let env = [
                ("PATH", DEFAULT_PATH),
                ("HOME", "/root"),
                ("LC_ALL", "C"),
                ("DEBIAN_FRONTEND", "noninteractive"),
                ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
                ("SOURCE_DATE_EPOCH", &epoch.to_string()),
                ("DPKG_MAINTSCRIPT_PACKAGE", &p.name),
                ("DPKG_MAINTSCRIPT_ARCH", &p.arch),
                ("DPKG_MAINTSCRIPT_NAME", script),
                ("DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT", "1"),
                ("DPKG_ADMINDIR", "/var/lib/dpkg"),
                ("DPKG_ROOT", ""),
            ];
            let out = sandbox.run(&RunSpec {
                argv: vec![format!("/{rel}"), arg.to_string(), String::new()],
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                user: None,
                workdir: None,
                network: Network::None,
            })?;
            let name = display_name(p, &plan.arch);
            if !out.status.success() {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                return Err(AptError::ScriptFailed {
                    package: name,
                    script: script.to_string(),
                    arg: arg.to_string(),
                    status: out.status,
                    output: tail.join("\n"),
                }
                .into());
            }
            ran.push(format!("{name}: {script} {arg}"));
        }
    }
    let entries = sandbox.changes()?;
    Ok(ScriptRun { entries, ran })
}

/// Dependencies first (dpkg's configure order); ties and cycles by name.
fn configure_order(packages: &[Package]) -> Vec<usize> {
    let by_name: BTreeMap<&str, Vec<usize>> =
        packages
            .iter()
            .enumerate()
            .fold(BTreeMap::new(), |mut m, (i, p)| {
                m.entry(p.name.as_str()).or_insert_with(Vec::new).push(i);
                for v in &p.provides {
                    m.entry(v.name.as_str()).or_insert_with(Vec::new).push(i);
                }
                m
            });
    let mut done = vec![false; packages.len()];
    let mut order = Vec::new();
    fn visit(
        i: usize,
        packages: &[Package],
        by_name: &BTreeMap<&str, Vec<usize>>,
        done: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if done[i] {
            return;
        }
        done[i] = true; // marked on entry: a cycle is broken here
        for group in &packages[i].depends {
            for d in group {
                for &j in by_name.get(d.name.as_str()).into_iter().flatten() {
                    visit(j, packages, by_name, done, order);
                }
            }
        }
        order.push(i);
    }
    for i in 0..packages.len() {
        visit(i, packages, &by_name, &mut done, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, depends: &str) -> Package {
        crate::repo::test_package(name, "1", "amd64", "no", depends)
    }

    #[test]
    fn dependencies_are_configured_first() {
        let p = vec![
            pkg("app", "lib | other, tool"),
            pkg("lib", "base"),
            pkg("base", ""),
            pkg("tool", "app"), // a cycle, broken deterministically
        ];
        let order: Vec<&str> = configure_order(&p)
            .into_iter()
            .map(|i| p[i].name.as_str())
            .collect();
        assert_eq!(order, ["base", "lib", "tool", "app"]);
    }

    #[test]
    fn scripts_run_only_for_the_host_architecture() {
        let e = check_host("not-the-host").unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<AptError>(),
                Some(AptError::ForeignHost { image, .. }) if image == "not-the-host"
            ),
            "{e:?}"
        );
        assert!(e
            .to_string()
            .contains("the image is not-the-host but this machine is"));
    }
}
