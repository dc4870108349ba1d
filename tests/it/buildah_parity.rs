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

/// How a path outside buildah's runtime leftovers is compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Treat {
    /// Type, mode, owner, contents, link target.
    Compare,
    /// All but a file's contents.
    NotContents,
    /// Not at all (may be on one side only).
    Skip,
}

/// Every difference between kiln's tree `k` and buildah's `b`, as lines.
fn compare(
    k: &BTreeMap<String, Node>,
    b: &BTreeMap<String, Node>,
    treat: impl Fn(&str) -> Treat,
) -> Vec<String> {
    let treat = |p: &str| {
        if runtime_leftover(p) && !k.contains_key(p) {
            Treat::Skip
        } else {
            treat(p)
        }
    };
    let mut differences = Vec::new();
    for (path, node) in b {
        let how = treat(path);
        match k.get(path) {
            _ if how == Treat::Skip => {}
            None => differences.push(format!("only buildah: {path} {node:?}")),
            Some(n) if how == Treat::NotContents && n.kind == "file" => {
                if (n.kind, n.mode, n.uid, n.gid) != (node.kind, node.mode, node.uid, node.gid) {
                    differences.push(format!("{path}: kiln {n:?}, buildah {node:?}"))
                }
            }
            Some(n) if n != node => {
                differences.push(format!("{path}: kiln {n:?}, buildah {node:?}"))
            }
            Some(_) => {}
        }
    }
    for (path, node) in k {
        if !b.contains_key(path) && treat(path) != Treat::Skip {
            differences.push(format!("only kiln: {path} {node:?}"));
        }
    }
    differences
}

/// `kiln build --dockerfile ctx/Dockerfile ctx` into the layout `kiln-out`,
/// unpacked; `extra` are more build flags.
fn kiln_build(ws: &Workspace, extra: &[&str]) -> std::path::PathBuf {
    kiln_build_with_cache(ws, extra, &unique_dir("cache"))
}

/// [`kiln_build`] with the kiln cache CACHE.
fn kiln_build_with_cache(ws: &Workspace, extra: &[&str], cache: &Path) -> std::path::PathBuf {
    run(ws
        .kiln()
        .env("KILN_CACHE", cache)
        .args(["build", "--dockerfile", "ctx/Dockerfile", "ctx", "--quiet"])
        .args(extra)
        .args(["-o", "oci:kiln-out"]))
    .ok();
    umoci_unpack(&ws.join("kiln-out"), "latest", &ws.join("kiln-bundle"))
}

/// buildah with its own storage in the workspace.
struct Buildah {
    bin: std::path::PathBuf,
    store: std::path::PathBuf,
    runroot: std::path::PathBuf,
}

impl Buildah {
    fn new(ws: &Workspace) -> Buildah {
        Buildah {
            bin: require_tool("buildah"),
            store: ws.join("bstore"),
            runroot: ws.join("brun"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.store)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    }

    /// `buildah bud --isolation chroot` of ctx/Dockerfile (with `extra`
    /// flags), pushed into the layout `buildah-out` and unpacked.
    fn bud(
        &self,
        ws: &Workspace,
        reg: &Registry,
        repo: &str,
        extra: &[&str],
    ) -> std::path::PathBuf {
        let tag = format!("{}/{repo}:latest", reg.host());
        let dockerfile = ws.join("ctx/Dockerfile");
        let ctx = ws.join("ctx");
        let mut args = vec![
            "bud",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--network",
            "host",
        ];
        args.extend_from_slice(extra);
        args.extend([
            "-f",
            dockerfile.to_str().unwrap(),
            "-t",
            &tag,
            ctx.to_str().unwrap(),
        ]);
        self.cmd(&args).run_ok();
        let out = format!("oci:{}:latest", ws.join("buildah-out").display());
        self.cmd(&["push", &tag, &out]).run_ok();
        umoci_unpack(
            &ws.join("buildah-out"),
            "latest",
            &ws.join("buildah-bundle"),
        )
    }

    fn remove_all(&self) {
        let _ = self.cmd(&["rmi", "--all", "--force"]).output();
    }
}

#[test]
fn a_dockerfile_builds_the_same_tree_as_buildah() {
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

    let kiln_root = kiln_build(&ws, &[]);
    let buildah = Buildah::new(&ws);
    let buildah_root = buildah.bud(&ws, reg, "parity-buildah", &[]);

    let k = tree(&kiln_root);
    let b = tree(&buildah_root);
    let differences = compare(&k, &b, |_| Treat::Compare);
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
    buildah.remove_all();

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

/// What the data-science Dockerfile's package managers leave that is no
/// part of what the image is (the list and the reasons are in the test's
/// doc comment).
fn bookkeeping(path: &str) -> Treat {
    const SKIP: &[&str] = &[
        "/var/log/dpkg.log",
        "/var/log/apt/history.log",
        "/var/log/apt/term.log",
        "/var/log/apt/eipp.log.xz",
        "/var/cache/apt/pkgcache.bin",
        "/var/cache/apt/srcpkgcache.bin",
        "/var/cache/apt/archives/lock",
        "/var/cache/apt/archives/partial",
        "/var/lib/apt/lists/partial",
        "/var/lib/apt/extended_states",
        "/var/cache/debconf/config.dat-old",
        "/var/cache/debconf/templates.dat-old",
        "/var/cache/ldconfig/aux-cache",
        "/var/lib/dpkg/lock",
        "/var/lib/dpkg/lock-frontend",
        "/var/lib/dpkg/status-old",
    ];
    let under = |d: &str| path.strip_prefix(d).is_some_and(|r| r.starts_with('/'));
    if SKIP.contains(&path)
        || under("/var/lib/dpkg/triggers")
        || under("/var/cache/apt/archives") && path.ends_with(".deb")
    {
        return Treat::Skip;
    }
    let site = "/usr/local/lib/python3.11/dist-packages/";
    let dist_info = |name: &str| {
        path.strip_prefix(site)
            .and_then(|r| r.split_once(".dist-info/"))
            .is_some_and(|(_, f)| f == name)
    };
    if path.ends_with(".pyc")
        || dist_info("RECORD")
        || dist_info("INSTALLER")
        || path == "/etc/ld.so.cache"
        || path == "/var/lib/dpkg/status"
    {
        return Treat::NotContents;
    }
    Treat::Compare
}

/// The paths a RECORD lists (its first column), sorted.
fn record_paths(file: &Path) -> Vec<String> {
    let mut paths: Vec<String> = fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(',').next())
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    paths.sort();
    paths
}

/// dpkg's status file as a set of paragraphs, each a set of fields (dpkg
/// writes its fields in its own order when it rewrites the file).
fn status_paragraphs(root: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    let mut out = BTreeMap::new();
    for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        let mut fields = BTreeMap::new();
        let mut last = String::new();
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                let v: &mut String = fields.get_mut(&last).unwrap();
                v.push('\n');
                v.push_str(line);
            } else if let Some((k, v)) = line.split_once(':') {
                last = k.to_string();
                fields.insert(last.clone(), v.trim_start().to_string());
            }
        }
        let key = format!("{}:{}", fields["Package"], fields["Architecture"]);
        out.insert(key, fields);
    }
    out
}

/// Issue 15: the data-science shape — apt installs Python and pip, pip
/// installs pinned packages into the system Python, a user, the app.
/// kiln installs the apt and pip lines natively (its own resolver and
/// clients), buildah runs apt-get and pip in its chroot; the trees must
/// still agree.
///
/// buildah's pip needs the CA of this machine's TLS-intercepting proxy
/// (only in the host's store): the host's bundle is bound read-only at
/// /run/host-ca.crt and named by the `PIP_CERT` build argument. kiln's
/// own clients use the system store, so the same Dockerfile serves both.
///
/// kiln builds with `--run-scripts`: the new packages' maintainer scripts
/// make what a dpkg install has — python3's py3compile (the standard
/// library's and dist-packages' pycs), readline-common's /etc/inputrc,
/// python3's /etc/python3/debian_config, ca-certificates' debconf
/// database. Without it those ~1,550 paths are only in buildah's image.
///
/// Not compared at all (package managers' logs, caches and bookkeeping,
/// none of them part of what the image is):
/// - /var/log/dpkg.log, /var/log/apt/{history,term}.log, eipp.log.xz: logs
///   of the run, timestamps and all;
/// - /var/cache/apt/{pkg,srcpkg}cache.bin, /var/cache/apt/archives/*.deb,
///   its `lock` and `partial/` (which apt re-owns to _apt 0700 when it
///   downloads): apt's download cache, which plain Debian keeps (only
///   docker's debian images configure it away); kiln downloads into its
///   own cache outside the image;
/// - /var/lib/apt/lists/partial: apt ships it, the Dockerfile's
///   `rm -rf /var/lib/apt/lists/*` removes it in buildah's image and kiln
///   drops that line as a no-op; apt's index scratch directory, made again
///   by the next `apt-get update`;
/// - /var/lib/apt/extended_states: apt's "automatically installed" marks
///   (for `apt autoremove`); kiln writes none (yet);
/// - /var/lib/dpkg/status-old, /var/cache/debconf/*.dat-old: the previous
///   database, kept as a backup; /var/lib/dpkg/lock, lock-frontend: locks;
/// - /var/lib/dpkg/triggers/: dpkg's trigger interests and pending
///   triggers; kiln runs their effects (ldconfig, update-ca-certificates,
///   update-shells) itself, and dpkg rebuilds the interests from
///   info/*.triggers when the directory is missing (buildah's lists the
///   base's debianutils and libc-bin, which kiln installed);
/// - /var/cache/ldconfig/aux-cache: ldconfig's cache of what it scanned.
///
/// Compared for type, mode and owner but not contents, and for meaning
/// below:
/// - `*.pyc`: kiln's pip stage writes PEP 552 unchecked-hash pycs, pip
///   timestamp ones; py3compile's embed the sources' mtimes, which kiln
///   clamps;
/// - a dist-info's INSTALLER (`kiln` or `pip`) and RECORD (its paths must
///   be the same);
/// - /etc/ld.so.cache: kiln writes it itself (its own string table, no
///   "generated by" note naming glibc's ldconfig); `ldconfig -p` must list
///   the same libraries;
/// - /var/lib/dpkg/status: dpkg rewrites every paragraph in its own field
///   order; each package's fields must be the same.
#[test]
fn a_data_science_dockerfile_builds_the_same_tree_as_buildah() {
    let reg = Registry::shared();
    let ws = Workspace::new("buildah-parity-ds");

    // The base: Debian minbase, bootstrapped by kiln from the host's apt
    // sources (which kiln writes into it, so apt-get finds the same
    // mirror): the run's shared one, copied as it is into the registry.
    let base = reg.repo(&unique_repo("parity-debian"));
    skopeo_copy(
        &debian_minbase().reference(),
        &format!("docker://{base}:v1"),
    );

    ws.write(
        "ctx/app.py",
        "import idna, six\n\nprint(six.__version__, idna.__version__)\n",
    );
    ws.write(
        "ctx/Dockerfile",
        format!(
            "FROM {base}:v1\n\
             ARG PIP_CERT\n\
             RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*\n\
             RUN pip install --no-cache-dir --break-system-packages six==1.16.0 idna==3.7\n\
             RUN useradd -m -u 1000 app && mkdir -p /srv/app/data && chown -R 1000:1000 /srv/app\n\
             COPY app.py /srv/app/\n\
             USER app\n\
             WORKDIR /srv/app\n"
        ),
    );

    // The two builds are independent (each its own output, storage and
    // cache): run side by side, as they mostly wait on the network. kiln's
    // cache is the run's warm one (the base's Debian packages).
    let buildah = Buildah::new(&ws);
    let (kiln_root, buildah_root) = std::thread::scope(|s| {
        let kiln = s.spawn(|| kiln_build_with_cache(&ws, &["--run-scripts"], &warm_cache()));
        let buildah_root = buildah.bud(
            &ws,
            reg,
            "parity-ds-buildah",
            &[
                "--volume",
                "/etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro",
                "--build-arg",
                "PIP_CERT=/run/host-ca.crt",
            ],
        );
        let kiln_root = kiln.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (kiln_root, buildah_root)
    });
    buildah.remove_all();

    let k = tree(&kiln_root);
    let b = tree(&buildah_root);
    let differences = compare(&k, &b, bookkeeping);
    // The comparison saw what the Dockerfile made.
    let site = "/usr/local/lib/python3.11/dist-packages";
    for p in [
        format!("{site}/six.py"),
        format!("{site}/idna/__init__.py"),
        "/usr/bin/python3".to_string(),
        "/srv/app/app.py".to_string(),
    ] {
        assert!(k.contains_key(&p), "{p} is not in kiln's image");
    }
    // The COPY into /srv/app left it as the RUN before had chowned it.
    for dir in ["/srv/app", "/srv/app/data"] {
        let d = &k[dir];
        assert_eq!((d.uid, d.gid), (1000, 1000), "{dir} {d:?}");
    }
    // What is compared for presence only is compared for meaning here.
    for di in ["six-1.16.0.dist-info", "idna-3.7.dist-info"] {
        let rec = format!("{}/{di}/RECORD", &site[1..]);
        assert_eq!(
            record_paths(&kiln_root.join(&rec)),
            record_paths(&buildah_root.join(&rec)),
            "{rec}"
        );
    }
    let (ks, bs) = (
        status_paragraphs(&kiln_root),
        status_paragraphs(&buildah_root),
    );
    let mut status_differences = Vec::new();
    for pkg in ks
        .keys()
        .chain(bs.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (kf, bf) = (ks.get(pkg), bs.get(pkg));
        let fields = kf.into_iter().chain(bf).flat_map(|f| f.keys());
        for field in fields.collect::<std::collections::BTreeSet<_>>() {
            let (kv, bv) = (kf.and_then(|f| f.get(field)), bf.and_then(|f| f.get(field)));
            if kv != bv {
                status_differences.push(format!("{pkg} {field}: kiln {kv:?}, buildah {bv:?}"));
            }
        }
    }
    assert!(
        status_differences.is_empty(),
        "dpkg's status differs:\n{}",
        status_differences.join("\n")
    );
    // (glibc's ldconfig also notes itself in the cache; kiln's does not.)
    let ld = |root: &Path| {
        let out = chroot_run(root, &["ldconfig", "-p"]).ok().stdout;
        let lines = out.lines().filter(|l| !l.starts_with("Cache generated by"));
        lines.map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(ld(&kiln_root), ld(&buildah_root), "ldconfig -p");
    assert!(
        differences.is_empty(),
        "kiln and buildah disagree on {} paths:\n{}",
        differences.len(),
        differences.join("\n")
    );
    let kc = Layout::open(ws.join("kiln-out")).config("latest");
    let bc = Layout::open(ws.join("buildah-out")).config("latest");
    for key in ["User", "WorkingDir", "Env"] {
        assert_eq!(kc["config"][key], bc["config"][key], "{key}");
    }

    // kiln's image runs under podman, as user app, in /srv/app.
    let image = format!("oci:{}:latest", ws.join("kiln-out").display());
    let out = podman_run(
        &ws.join("pstore"),
        &image,
        &[
            "sh",
            "-c",
            "id -un && python3 -c 'import six, idna; print(six.__version__)' && python3 app.py",
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["app", "1.16.0", "1.16.0 3.7"],
        "{out}"
    );
}
