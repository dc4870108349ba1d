//! `update-shells` (debianutils' postinst and its trigger on
//! `/usr/share/debianutils/shells.d`): `/etc/shells` lists the login
//! shells the packages declare, each also under its real path (`/bin/bash`
//! and `/usr/bin/bash` on merged /usr), and `/var/lib/shells.state`
//! remembers what was added, so an admin's removals stick. The same
//! algorithm as debianutils 5's shell script, so a kiln install leaves the
//! files dpkg does.

use kiln_fs::layer::{Entry, Tree};
use kiln_fs::rootfs::Rootfs;

use super::deb::{Deb, FileKind};
use super::install::AptReport;

const TEMPLATE: &str = "usr/share/debianutils/shells";
const PKG_DIR: &str = "usr/share/debianutils/shells.d";

/// Which base files' contents `update_shells` reads.
pub(crate) fn keep_path(path: &str) -> bool {
    path == "/etc/shells"
        || path == "/var/lib/shells.state"
        || path == "/usr/share/debianutils/shells"
        || path.starts_with("/usr/share/debianutils/shells.d/")
}

/// Regenerate `/etc/shells` and `/var/lib/shells.state` when a new package
/// ships the template or a `shells.d` file; nothing otherwise.
pub(crate) fn update_shells(
    debs: &[Deb],
    fs: &Rootfs,
    merged: bool,
    tree: &mut Tree,
    report: &mut AptReport,
) {
    let touched = debs.iter().any(|d| {
        d.files
            .iter()
            .any(|f| f.path == TEMPLATE || f.path.starts_with(&format!("{PKG_DIR}/")))
    });
    if !touched {
        return;
    }
    // The template and the shells.d files, new packages' over the base's,
    // shells.d in byte order of name (the script's C-collated glob).
    let new_file = |path: &str| {
        debs.iter().rev().find_map(|d| {
            d.files.iter().find_map(|f| match &f.kind {
                FileKind::File(b) if f.path == path => b
                    .bytes()
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
        })
    };
    let text = |path: &str| {
        new_file(path).or_else(|| {
            fs.read(&format!("/{path}"))
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
    };
    let mut names: Vec<String> = fs.list(&format!("/{PKG_DIR}"));
    for d in debs {
        for f in &d.files {
            if let Some(name) = f.path.strip_prefix(&format!("{PKG_DIR}/")) {
                if matches!(f.kind, FileKind::File(_)) && !name.contains('/') {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    let mut sources: Vec<String> = text(TEMPLATE).into_iter().collect();
    sources.extend(names.iter().filter_map(|n| text(&format!("{PKG_DIR}/{n}"))));
    let etc = fs
        .read("/etc/shells")
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let state = fs
        .read("/var/lib/shells.state")
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let source = etc.or_else(|| text(TEMPLATE)).unwrap_or_default();
    let (shells, new_state) = compute(&sources, &source, state.as_deref(), merged);
    tree.insert(Entry::data("etc/shells", shells.into_bytes(), 0o644));
    tree.insert(Entry::data(
        "var/lib/shells.state",
        new_state.into_bytes(),
        0o644,
    ));
    report
        .emulated
        .push("update-shells: /etc/shells, /var/lib/shells.state".into());
}

/// The script's algorithm: `sources` are the template and shells.d texts
/// in order, `etc` the current `/etc/shells` (or the template), `state`
/// the last state file. Returns the new `/etc/shells` and state.
fn compute(sources: &[String], etc: &str, state: Option<&str>, merged: bool) -> (String, String) {
    let first = |line: &str| line.split('#').next().unwrap_or("").to_string();
    let mut pkg: Vec<String> = Vec::new();
    for text in sources {
        for line in text.lines() {
            let line = first(line);
            if line.is_empty() {
                continue;
            }
            pkg.push(line.clone());
            // `dpkg-realpath` of the directory: on merged /usr, /bin and
            // /sbin are /usr/bin and /usr/sbin.
            let real = match merged {
                true if line.starts_with("/bin/") || line.starts_with("/sbin/") => {
                    format!("/usr{line}")
                }
                _ => line.clone(),
            };
            if real != line {
                pkg.push(real);
            }
        }
    }
    let state: Vec<String> = state
        .unwrap_or("")
        .lines()
        .map(first)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = String::new();
    let mut seen: Vec<String> = Vec::new();
    for line in etc.lines() {
        let shell = first(line);
        let keep = shell.is_empty() || pkg.contains(&shell) || !state.contains(&shell);
        if keep && (shell.is_empty() || !seen.contains(&shell)) {
            out.push_str(line);
            out.push('\n');
            seen.push(shell);
        }
    }
    let mut new_state = String::new();
    for shell in &pkg {
        new_state.push_str(shell);
        new_state.push('\n');
        if !seen.contains(shell) && !state.contains(shell) {
            out.push_str(shell);
            out.push('\n');
        }
    }
    (out, new_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE_TEXT: &str = "# /etc/shells: valid login shells\n/bin/sh\n";

    #[test]
    fn a_fresh_merged_system_lists_each_shell_at_both_paths() {
        let sources = [
            TEMPLATE_TEXT.to_string(),
            "/bin/bash\n/bin/rbash\n".to_string(),
            "/bin/dash\n".to_string(),
        ];
        let (etc, state) = compute(&sources, TEMPLATE_TEXT, None, true);
        assert_eq!(
            etc,
            "# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n\
             /bin/rbash\n/usr/bin/rbash\n/bin/dash\n/usr/bin/dash\n"
        );
        assert_eq!(etc.len(), 128, "debianutils 5.7's file on bookworm");
        assert_eq!(state, etc.split_once('\n').unwrap().1);
    }

    #[test]
    fn an_admins_removal_and_addition_are_kept() {
        let sources = [TEMPLATE_TEXT.to_string(), "/bin/bash\n".to_string()];
        let state = "/bin/sh\n/bin/bash\n";
        // The admin removed /bin/bash and added /opt/fish.
        let etc = "# /etc/shells: valid login shells\n/bin/sh\n/opt/fish\n";
        let (out, new_state) = compute(&sources, etc, Some(state), false);
        assert_eq!(out, etc);
        assert_eq!(new_state, "/bin/sh\n/bin/bash\n");
    }
}
