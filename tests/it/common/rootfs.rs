//! Unpacked root filesystems: metadata checks, and a busybox rootfs to build images from.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{require_tool, run, Workspace};

/// Metadata of a path inside an unpacked rootfs, without following symlinks.
#[track_caller]
pub fn stat(rootfs: &Path, path_in_image: &str) -> fs::Metadata {
    let p = rootfs.join(path_in_image.trim_start_matches('/'));
    fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{} missing in rootfs: {e}", path_in_image))
}

/// Assert permission bits, uid and gid of a path in a rootfs.
#[track_caller]
pub fn assert_mode_owner(rootfs: &Path, path_in_image: &str, mode: u32, uid: u32, gid: u32) {
    let md = stat(rootfs, path_in_image);
    assert_eq!(
        md.permissions().mode() & 0o7777,
        mode,
        "mode of {path_in_image}: got {:o}, want {mode:o}",
        md.permissions().mode() & 0o7777
    );
    assert_eq!((md.uid(), md.gid()), (uid, gid), "owner of {path_in_image}");
}

pub fn exists_in(rootfs: &Path, path_in_image: &str) -> bool {
    fs::symlink_metadata(rootfs.join(path_in_image.trim_start_matches('/'))).is_ok()
}

/// `WS/rootfs/bin/busybox` (busybox-static) and `bin/sh -> busybox`: a real
/// shell to copy into an image with `[[files]] src = "rootfs"`.
pub fn busybox_rootfs(ws: &Workspace) {
    let busybox = require_tool("busybox");
    ws.mkdir("rootfs/bin", 0o755);
    fs::copy(&busybox, ws.join("rootfs/bin/busybox")).unwrap();
    fs::set_permissions(
        ws.join("rootfs/bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    ws.symlink("rootfs/bin/sh", "busybox");
}

/// [`busybox_rootfs`] (with whatever else is under `rootfs/`) as the OCI
/// layout `base:v1`: a real shell for commands to run in.
pub fn busybox_base(ws: &Workspace) {
    busybox_rootfs(ws);
    ws.write(
        "base.toml",
        "[image]\ntags = [\"v1\"]\n[[files]]\nsrc = \"rootfs/\"\ndst = \"/\"\n",
    );
    run(ws
        .kiln()
        .args(["build", "base.toml", "--quiet", "-o", "oci:base"]))
    .ok();
}

/// [`busybox_rootfs`] with an account database (root, and `app` as
/// 1000:1000 with home /home/app) and `/etc/gone`, a file for a command to
/// remove.
pub fn busybox_rootfs_with_app(ws: &Workspace) {
    busybox_rootfs(ws);
    ws.write(
        "rootfs/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    );
    ws.write("rootfs/etc/group", "root:x:0:\napp:x:1000:\n");
    ws.write("rootfs/etc/gone", "removed by a command\n");
}
