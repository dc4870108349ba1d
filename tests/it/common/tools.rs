//! External tools: finding them (`require_tool`), skopeo, oci-image-tool, umoci and chroot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{read_json, CommandExt, Run};

fn package_for(tool: &str) -> &'static str {
    match tool {
        "docker-registry" => "docker-registry",
        "skopeo" => "skopeo",
        "umoci" => "umoci",
        "oci-image-tool" => "oci-image-tool",
        "htpasswd" => "apache2-utils",
        "busybox" => "busybox-static",
        "chroot" => "coreutils",
        "mkfifo" | "mknod" | "md5sum" => "coreutils",
        "gpg" | "gpgconf" => "gnupg",
        "dpkg" | "dpkg-deb" | "dpkg-query" => "dpkg",
        "dpkg-scanpackages" => "dpkg-dev",
        "openssl" => "openssl",
        "git" => "git",
        "curl" => "curl",
        "ldconfig" => "libc-bin",
        _ => "?",
    }
}

/// Absolute path of `tool` in PATH; panics (test failure, not a skip) if absent.
#[track_caller]
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(PathBuf::from),
    ) {
        let p = dir.join(tool);
        if let Ok(md) = fs::metadata(&p) {
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "required tool `{tool}` is not installed (Debian package `{}`); \
         `make test` installs it, or run `apt-get install -y {}`",
        package_for(tool),
        package_for(tool)
    );
}

pub fn tool(name: &str) -> Command {
    Command::new(require_tool(name))
}

/// `skopeo ARGS` (with `--insecure-policy`, so no policy.json is needed).
pub fn skopeo(args: &[&str]) -> Run {
    let mut c = tool("skopeo");
    c.arg("--insecure-policy").args(args);
    c.run()
}

/// `skopeo inspect REF` as JSON (adds `--tls-verify=false` for docker://).
#[track_caller]
pub fn skopeo_inspect(reference: &str) -> Value {
    skopeo_inspect_with(&[], reference)
}

/// `skopeo inspect --raw REF`: the manifest or index as stored.
#[track_caller]
pub fn skopeo_inspect_raw(reference: &str) -> Value {
    skopeo_inspect_with(&["--raw"], reference)
}

/// `skopeo inspect --config REF`: the image config.
#[track_caller]
pub fn skopeo_inspect_config(reference: &str) -> Value {
    skopeo_inspect_with(&["--config"], reference)
}

/// `skopeo inspect FLAGS.. REF` as JSON (`--tls-verify=false` for docker://).
#[track_caller]
fn skopeo_inspect_with(flags: &[&str], reference: &str) -> Value {
    let mut args = vec!["inspect"];
    args.extend_from_slice(flags);
    if reference.starts_with("docker://") {
        args.push("--tls-verify=false");
    }
    args.push(reference);
    skopeo(&args).ok().json()
}

/// `skopeo copy SRC DST` (TLS verification off for docker:// ends).
#[track_caller]
pub fn skopeo_copy(src: &str, dst: &str) -> Run {
    skopeo_copy_with(&[], src, dst)
}

/// `skopeo copy EXTRA.. SRC DST` (TLS verification off for docker:// ends).
#[track_caller]
pub fn skopeo_copy_with(extra: &[&str], src: &str, dst: &str) -> Run {
    let mut args = vec!["copy"];
    args.extend_from_slice(extra);
    if src.starts_with("docker://") {
        args.push("--src-tls-verify=false");
    }
    if dst.starts_with("docker://") {
        args.push("--dest-tls-verify=false");
    }
    args.push(src);
    args.push(dst);
    skopeo(&args).ok()
}

/// `oci-image-tool validate --type image --ref name=TAG DIR`.
#[track_caller]
pub fn oci_validate(layout: &Path, tag: &str) {
    let mut c = tool("oci-image-tool");
    c.args(["validate", "--type", "image", "--ref"])
        .arg(format!("name={tag}"))
        .arg(layout);
    let r = c.run().ok();
    // oci-image-tool prints per-file verdicts; make sure nothing was reported invalid.
    let all = format!("{}{}", r.stdout, r.stderr).to_lowercase();
    assert!(
        !all.contains("invalid") && !all.contains("error"),
        "oci-image-tool reported a problem:\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// `umoci raw unpack --image DIR:TAG BUNDLE/rootfs`; returns `BUNDLE/rootfs`.
/// umoci checks every blob's digest and applies the layers' whiteouts. The
/// raw form skips what only `umoci repack` needs: the mtree of the rootfs,
/// which hashes every file again (a quarter of umoci's time here), and the
/// runtime config (`umoci_bundle` where a test reads it).
#[track_caller]
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(bundle).unwrap();
    tool("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&rootfs)
        .run_ok();
    unpacked_rootfs(bundle)
}

/// `umoci unpack --image DIR:TAG BUNDLE`: a runtime bundle, with the
/// `config.json` umoci derives from the image config; returns `BUNDLE/rootfs`.
#[track_caller]
pub fn umoci_bundle(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    tool("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .run_ok();
    unpacked_rootfs(bundle)
}

/// `BUNDLE/rootfs`, which umoci must have made.
#[track_caller]
fn unpacked_rootfs(bundle: &Path) -> PathBuf {
    let rootfs = bundle.join("rootfs");
    assert!(
        rootfs.is_dir(),
        "umoci produced no rootfs in {}",
        bundle.display()
    );
    rootfs
}

/// The runtime `config.json` `umoci_bundle` wrote into a bundle.
pub fn bundle_config(bundle: &Path) -> Value {
    read_json(&bundle.join("config.json"))
}

/// Run ARGS inside ROOTFS with chroot, a clean environment and a standard PATH.
pub fn chroot_run(rootfs: &Path, args: &[&str]) -> Run {
    let mut c = tool("chroot");
    c.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .arg(rootfs)
        .args(args);
    c.run()
}

/// `podman run --rm IMAGE ARGS…` (runc, cgroupfs, vfs storage in a new
/// directory under `store`: what works unprivileged here); its stdout.
#[track_caller]
pub fn podman_run(store: &Path, image: &str, args: &[&str]) -> String {
    let podman = require_tool("podman");
    // A store is tied to its run root: a new pair each run.
    fs::create_dir_all(store).unwrap();
    let root = tempfile::tempdir_in(store).unwrap();
    // podman wants a short run root (at most 50 characters).
    let prun = tempfile::tempdir().unwrap();
    let mut c = Command::new(&podman);
    c.arg("--root")
        .arg(root.path())
        .arg("--runroot")
        .arg(prun.path())
        .args(["--storage-driver", "vfs", "--runtime", "runc"])
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
        .args(["run", "--rm", "--network", "host"])
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=1000:1000",
        ]);
    if image.starts_with("docker://127.0.0.1:") {
        c.arg("--tls-verify=false");
    }
    c.arg(image).args(args);
    c.run_ok().stdout
}
