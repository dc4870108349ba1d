//! The static kiln binary (.cargo/config.toml links glibc statically;
//! reqwest resolves names with hickory-dns): copied alone into an empty
//! directory it runs under chroot — no dynamic loader, no shared libraries,
//! no NSS modules, no /etc — prints its version, builds a scratch image with
//! the same digest as outside, and pushes to a registry it finds by name.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

fn kiln_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kiln"))
}

/// An empty directory holding only the kiln binary, as `/kiln`: a hard
/// link, so no file is ever open for writing in this process (a copy's
/// write handle, inherited for a moment by a process another test thread
/// forks, makes the exec fail with ETXTBSY). Across filesystems (the
/// scratch space on a tmpfs, the build on disk) `cp` copies it: the write
/// handle is then only ever in that process.
fn bare_root(ws: &Workspace) -> PathBuf {
    let root = ws.mkdir("root", 0o755);
    if fs::hard_link(kiln_bin(), root.join("kiln")).is_err() {
        tool("cp")
            .arg("--")
            .arg(kiln_bin())
            .arg(root.join("kiln"))
            .run_ok();
    }
    assert_eq!(list_dir(&root), ["kiln"]);
    root
}

/// `chroot ROOT /kiln ARGS` with only ENV set (no PATH, no HOME).
fn chroot_kiln(root: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = tool("chroot");
    c.env_clear()
        .envs(env.iter().copied())
        .arg(root)
        .arg("/kiln")
        .args(args);
    c.run()
}

/// Segment types in the ELF64 program header table.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect()
}

#[test]
fn binary_has_no_program_interpreter() {
    const PT_INTERP: u32 = 3;
    let types = program_header_types(&fs::read(kiln_bin()).unwrap());
    assert!(!types.is_empty(), "no program headers");
    assert!(
        !types.contains(&PT_INTERP),
        "{} asks for a dynamic loader (PT_INTERP); .cargo/config.toml should link it with +crt-static",
        kiln_bin().display()
    );
}

#[test]
fn version_runs_alone_in_an_empty_root() {
    let ws = Workspace::new("static-version");
    let root = bare_root(&ws);
    let r = chroot_kiln(&root, &[], &["--version"]).ok();
    assert_eq!(
        r.stdout.trim(),
        format!("kiln {}", env!("CARGO_PKG_VERSION")),
        "{}",
        r.describe()
    );
    assert_eq!(list_dir(&root), ["kiln"], "--version wrote nothing");
}

const SPEC: &str = "[image]\nname = \"static/hello\"\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/srv/hello.txt\"\n\n[config]\ncmd = [\"/srv/hello.txt\"]\n";

#[test]
fn builds_a_scratch_image_in_an_empty_root() {
    let ws = Workspace::new("static-build");
    let root = bare_root(&ws);
    fs::write(root.join("kiln.toml"), SPEC).unwrap();
    fs::write(root.join("hello.txt"), "hello from an empty root\n").unwrap();

    let r = chroot_kiln(
        &root,
        &[],
        &[
            "build",
            "--json",
            "--cache",
            "/cache",
            "/kiln.toml",
            "-o",
            "oci:/out",
        ],
    )
    .ok();
    let inside = r.json();
    check_build_json(&inside);

    // The image is complete and holds the file.
    let layout = root.join("out");
    oci_validate(&layout, "latest");
    let rootfs = umoci_unpack(&layout, "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/hello.txt")).unwrap(),
        "hello from an empty root\n"
    );

    // Same spec and file, built by the same binary outside the chroot: the
    // same digest (nothing of the host leaks into the image).
    let outside = ws
        .kiln()
        .current_dir(&root)
        .args(["build", "--json", "kiln.toml", "-o"])
        .arg(format!("oci:{}", ws.join("out-host").display()))
        .run_ok()
        .json();
    assert_eq!(inside["digest"], outside["digest"]);
}

/// The host's CA bundle (Debian's ca-certificates).
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[test]
fn pushes_by_host_name_from_an_empty_root() {
    // `localhost` is resolved by hickory (no /etc/hosts, no NSS in the
    // root) and the registry's basic auth comes from the environment.
    let reg = Registry::shared_auth();
    let repo = unique_repo("static-push");
    let name = format!("localhost:{}/{repo}", reg.port);
    let ws = Workspace::new("static-push");
    let root = bare_root(&ws);
    fs::write(root.join("kiln.toml"), SPEC.replace("static/hello", &name)).unwrap();
    fs::write(root.join("hello.txt"), format!("pushed to {repo}\n")).unwrap();
    let args = [
        "build",
        "--json",
        "--cache",
        "/cache",
        "/kiln.toml",
        "--push",
    ];
    let creds = [
        ("KILN_REGISTRY_USERNAME", AUTH_USER),
        ("KILN_REGISTRY_PASSWORD", AUTH_PASSWORD),
    ];

    // Registry clients are made with TLS set up even for a plain-HTTP
    // registry; with no CA certificates at all kiln says so (no panic).
    let r = chroot_kiln(&root, &creds, &args);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains("CA certificates") && !r.stderr.contains("panicked"),
        "{}",
        r.describe()
    );

    // A CA bundle outside /etc, named by SSL_CERT_FILE, and /dev/random and
    // /dev/urandom (which every container runtime provides): the random DNS
    // query ids of hickory come from getrandom, which in a static glibc
    // binary cannot find glibc's getrandom() through dlsym and reads the
    // devices instead.
    ws.mkdir("root/dev", 0o755);
    for (dev, minor) in [("random", "8"), ("urandom", "9")] {
        tool("mknod")
            .arg(root.join("dev").join(dev))
            .args(["c", "1", minor])
            .run_ok();
    }
    fs::copy(HOST_CA_BUNDLE, root.join("ca.pem"))
        .unwrap_or_else(|e| panic!("{HOST_CA_BUNDLE}: {e} (Debian package ca-certificates)"));
    let mut env = creds.to_vec();
    env.push(("SSL_CERT_FILE", "/ca.pem"));
    let r = chroot_kiln(&root, &env, &args).ok();
    let v = r.json();
    check_build_json(&v);
    assert!(
        !r.stdout.contains(AUTH_PASSWORD) && !r.stderr.contains(AUTH_PASSWORD),
        "the password was printed\n{}",
        r.describe()
    );

    // What the registry holds under the tag is what kiln reported.
    let creds = format!("--creds={AUTH_USER}:{AUTH_PASSWORD}");
    let digest = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &creds,
        "--format",
        "{{.Digest}}",
        &reg.docker_ref(&repo, "latest"),
    ])
    .ok();
    assert_eq!(digest.stdout.trim(), s(&v, "digest"));
}
