//! Self-checks of the test harness and of the external tools it relies on.
//! These do not run kiln: when one of them fails, the problem is the machine
//! or tests/common, not the implementation.

use crate::common::*;
use std::fs;

/// The whiteout base used by build_base.rs, checked against the real tools
/// without kiln: oci-image-tool accepts it and umoci applies its whiteouts.
#[test]
fn handmade_layout_validates_and_umoci_applies_whiteouts() {
    let ws = Workspace::new("harness-layout");
    let dir = ws.join("base");
    let img = write_oci_layout(&dir, "v1", "amd64", &whiteout_base_layers());
    assert_eq!(img.layer_digests.len(), 2);
    oci_validate(&dir, "v1");
    let rootfs = umoci_unpack(&dir, "v1", &ws.join("bundle"));
    assert_eq!(fs::read_to_string(rootfs.join("a/keep")).unwrap(), "keep\n");
    assert_eq!(fs::read_to_string(rootfs.join("d/new")).unwrap(), "new\n");
    assert!(!exists_in(&rootfs, "/a/gone"));
    assert!(!exists_in(&rootfs, "/d/old"));
    assert!(!exists_in(&rootfs, "/a/.wh.gone"));
    let skopeo = skopeo_inspect(&format!("oci:{}:v1", dir.display()));
    assert_eq!(skopeo["Digest"], img.manifest_digest.as_str());
}

#[test]
fn registry_accepts_skopeo_pushes_and_logs_uploads() {
    let reg = Registry::shared();
    let ws = Workspace::new("harness-registry");
    let dir = ws.join("img");
    let img = write_oci_layout(
        &dir,
        "t",
        "amd64",
        &[make_tar(&[Item::File(
            "hello",
            b"hello from the harness\n",
            0o644,
        )])],
    );
    let repo = unique_repo("harness");
    assert!(reg.upload_posts(&repo).is_empty());
    skopeo_copy(
        &format!("oci:{}:t", dir.display()),
        &reg.docker_ref(&repo, "t"),
    );
    let inspected = skopeo_inspect(&reg.docker_ref(&repo, "t"));
    assert_eq!(inspected["Digest"], img.manifest_digest.as_str());
    // One layer + one config were uploaded.
    assert_eq!(reg.upload_posts(&repo).len(), 2, "{}", reg.log());
}

#[test]
fn auth_registry_requires_credentials() {
    let reg = Registry::shared_auth();
    assert_eq!(http_status(reg.port, "/v2/"), Some(401));
    let ws = Workspace::new("harness-auth");
    let dir = ws.join("img");
    write_oci_layout(
        &dir,
        "t",
        "amd64",
        &[make_tar(&[Item::File("x", b"x", 0o644)])],
    );
    let repo = unique_repo("harness-auth");
    let src = format!("oci:{}:t", dir.display());
    let dst = reg.docker_ref(&repo, "t");
    let anon = skopeo(&["copy", "--dest-tls-verify=false", &src, &dst]);
    assert!(!anon.status.success(), "anonymous push must fail");
    let creds = format!("{AUTH_USER}:{AUTH_PASSWORD}");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dst,
    ])
    .ok();
}

#[test]
fn fake_server_and_closed_port() {
    let fake = FakeServer::start("500 Internal Server Error");
    assert_eq!(http_status(fake.port, "/v2/"), Some(500));
    assert_eq!(http_status(closed_port(), "/v2/"), None);
}

#[test]
fn rfc3339_and_sorting_helpers() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert!(same_instant(
        "1970-01-01T00:00:00.000Z",
        "1970-01-01T00:00:00Z"
    ));
    assert!(same_instant(
        "1970-01-01T00:00:00+00:00",
        "1970-01-01T00:00:00Z"
    ));

    let sorted = tar_entries(&make_tar(&[
        Item::Dir("app/", 0o755),
        Item::File("app/a", b"", 0o644),
        Item::Dir("app/sub/", 0o755),
        Item::File("app/sub/z", b"", 0o644),
        Item::File("app/sub-x", b"", 0o644),
    ]));
    assert_sorted(&sorted);
    let unsorted = tar_entries(&make_tar(&[
        Item::File("b", b"", 0o644),
        Item::File("a", b"", 0o644),
    ]));
    assert!(std::panic::catch_unwind(|| assert_sorted(&unsorted)).is_err());
}

#[test]
fn base64_helper() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
}

/// `skopeo inspect --raw` prints the stored bytes exactly (tests rely on
/// hashing them), and a hand-made index selects per platform.
#[test]
fn skopeo_raw_bytes_and_handmade_index() {
    let ws = Workspace::new("harness-index");
    let dir = ws.join("idx");
    let (digest, imgs) = write_oci_index_layout(
        &dir,
        "m",
        &[
            ("amd64", vec![make_tar(&[Item::File("a", b"amd64", 0o644)])]),
            ("arm64", vec![make_tar(&[Item::File("a", b"arm64", 0o644)])]),
        ],
    );
    let src = format!("oci:{}:m", dir.display());
    let raw = skopeo(&["inspect", "--raw", &src]).ok();
    assert_eq!(digest_of(raw.stdout.as_bytes()), digest);
    let arm = skopeo(&["--override-arch", "arm64", "inspect", &src])
        .ok()
        .json();
    // skopeo reports the index digest but the selected platform's content.
    assert_eq!(arm["Digest"], digest.as_str());
    assert_eq!(strs(&arm["Layers"]), imgs[1].layer_digests);
    assert_eq!(arm["Architecture"], "arm64");
}
