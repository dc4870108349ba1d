//! The same Dockerfile built by kiln and by `buildah bud` (Debian's buildah,
//! `--storage-driver vfs --isolation chroot`), FROM the same base in the
//! loopback registry: the two root filesystems must hold the same paths,
//! with the same types, modes, owners, contents and link targets.
//!
//! Ignored, and why: what buildah's chroot isolation leaves behind that is
//! no part of the Dockerfile — the mount points it makes for a RUN (`/dev`,
//! `/proc`, `/sys`, `/run` and what it binds there) and the files it writes
//! for networking (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`) when
//! the base had none; kiln binds the host's read-only and never keeps them.
//! kiln's image is then run under podman (runc, cgroupfs, vfs: what works
//! on these machines) as its USER.
//!
//! Directory mtimes and the layer split are not compared (kiln clamps every
//! mtime; buildah keeps the RUN's). Here-documents are left out: Debian
//! 12's buildah (1.28) predates them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// What a path is, as far as the comparison goes.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// File contents' length and a hash, or a link's target.
    what: String,
}

fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
        let (kind, what) = if md.file_type().is_symlink() {
            ("symlink", fs::read_link(&p).unwrap().display().to_string())
        } else if md.is_dir() {
            ("dir", String::new())
        } else if md.is_file() {
            let data = fs::read(&p).unwrap();
            ("file", format!("{} {}", data.len(), sha256_hex(&data)))
        } else {
            ("other", String::new())
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                what,
            },
        );
        if md.is_dir() && !md.file_type().is_symlink() {
            walk(root, &p, out);
        }
    }
}

/// Paths buildah's chroot isolation leaves that are no part of the build.
fn runtime_leftover(path: &str) -> bool {
    ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|d| path == *d || path.starts_with(&format!("{d}/")))
        || ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"].contains(&path)
}

#[test]
fn a_dockerfile_builds_the_same_tree_as_buildah() {
    let buildah = require_tool("buildah");
    let reg = Registry::shared();
    let ws = Workspace::new("buildah-parity");

    // The base: busybox with an account database, pushed to the registry.
    busybox_rootfs_with_app(&ws);
    let base = reg.repo(&unique_repo("parity-base"));
    ws.write(
        "base.toml",
        format!("[image]\nname = \"{base}\"\ntags = [\"v1\"]\n[[files]]\nsrc = \"rootfs/\"\ndst = \"/\"\n"),
    );
    run(ws.kiln().args(["build", "base.toml", "--push", "--quiet"])).ok();

    // The context and a Dockerfile with every kind of step kiln runs.
    ws.write("ctx/app.sh", "#!/bin/sh\necho app\n");
    ws.write("ctx/conf/app.toml", "port = 8080\n");
    let mut tar = Command::new("tar");
    tar.current_dir(ws.join("ctx")).args([
        "--owner=0",
        "--group=0",
        "--mtime=@0",
        "-czf",
        "tools.tar.gz",
        "conf",
    ]);
    assert!(tar.status().unwrap().success());
    ws.write(
        "ctx/Dockerfile",
        format!(
            "FROM {base}:v1\n\
             ARG WHO=parity\n\
             ENV APP_HOME=/srv/app\n\
             RUN mkdir -p $APP_HOME/data && echo \"built by $WHO\" > $APP_HOME/who && rm /etc/gone\n\
             COPY app.sh /srv/app/app.sh\n\
             COPY --chown=1000:1000 --chmod=0640 conf/ /etc/app/\n\
             ADD tools.tar.gz /opt/tools\n\
             RUN chmod 0750 /srv/app/app.sh && chown -R 1000:1000 /srv/app/data && ln -s /srv/app/app.sh /bin/app\n\
             RUN mkdir -p /var/lib/app; echo state > /var/lib/app/state | cat; true\n\
             USER app\n\
             RUN echo mine > /srv/app/data/mine\n\
             CMD [\"/srv/app/app.sh\"]\n"
        ),
    );

    // kiln.
    run(ws.kiln().args([
        "build",
        "--dockerfile",
        "ctx/Dockerfile",
        "ctx",
        "--quiet",
        "-o",
        "oci:kiln-out",
    ]))
    .ok();
    let kiln_root = umoci_unpack(&ws.join("kiln-out"), "latest", &ws.join("kiln-bundle"));

    // buildah, with its own storage in the workspace.
    let store = ws.join("bstore");
    let runroot = ws.join("brun");
    let bud = |args: &[&str]| {
        let mut c = Command::new(&buildah);
        c.arg("--root")
            .arg(&store)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    };
    let tag = format!("{}/parity-buildah:latest", reg.host());
    bud(&[
        "bud",
        "--isolation",
        "chroot",
        "--tls-verify=false",
        "--network",
        "host",
        "-f",
        ws.join("ctx/Dockerfile").to_str().unwrap(),
        "-t",
        &tag,
        ws.join("ctx").to_str().unwrap(),
    ])
    .run_ok();
    bud(&[
        "push",
        &tag,
        &format!("oci:{}:latest", ws.join("buildah-out").display()),
    ])
    .run_ok();
    let buildah_root = umoci_unpack(
        &ws.join("buildah-out"),
        "latest",
        &ws.join("buildah-bundle"),
    );

    let k = tree(&kiln_root);
    let b: BTreeMap<String, Node> = tree(&buildah_root)
        .into_iter()
        .filter(|(p, _)| !runtime_leftover(p) || k.contains_key(p))
        .collect();
    let mut differences = Vec::new();
    for (path, node) in &b {
        match k.get(path) {
            None => differences.push(format!("only buildah: {path} {node:?}")),
            Some(n) if n != node => {
                differences.push(format!("{path}: kiln {n:?}, buildah {node:?}"))
            }
            Some(_) => {}
        }
    }
    for (path, node) in &k {
        if !b.contains_key(path) {
            differences.push(format!("only kiln: {path} {node:?}"));
        }
    }
    // The comparison saw what the Dockerfile made.
    let mine = &k["/srv/app/data/mine"];
    assert_eq!((mine.uid, mine.gid), (1000, 1000), "{mine:?}");
    assert!(!k.contains_key("/etc/gone"));
    assert!(k.contains_key("/opt/tools/conf/app.toml"), "{:?}", k.keys());
    assert!(
        differences.is_empty(),
        "kiln and buildah disagree on {} paths:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // Both images run the same command.
    let kc = Layout::open(ws.join("kiln-out")).config("latest");
    let bc = Layout::open(ws.join("buildah-out")).config("latest");
    for key in ["Cmd", "User", "WorkingDir"] {
        assert_eq!(kc["config"][key], bc["config"][key], "{key}");
    }
    let _ = bud(&["rmi", "--all", "--force"]).output();

    // kiln's image runs under podman: its CMD, as its USER.
    let image = format!("oci:{}:latest", ws.join("kiln-out").display());
    let pod = |args: &[&str]| podman_run(&ws.join("pstore"), &image, args);
    // (Its CMD, /srv/app/app.sh, is root's 0750 file: user app may not
    // run it, under podman as under docker.)
    assert_eq!(pod(&["sh", "-c", "id -un"]).trim(), "app");
    assert_eq!(pod(&["sh", "-c", "cat /srv/app/data/mine"]).trim(), "mine");
    assert_eq!(
        pod(&["sh", "-c", "cat /srv/app/who"]).trim(),
        "built by parity"
    );
}
