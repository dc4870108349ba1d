//! Network tests against the real Debian archive. The mirror is the one the
//! host's apt is configured with (kiln reads /etc/apt/sources.list{,.d}),
//! so no archive address is written here.

use std::fs;
use std::process::Command;

use crate::common::*;

/// One cache for this file's builds: the second build reuses the first's
/// downloads. The run's warm one (the shared Debian images' packages): no
/// test here is about a cold cache.
fn shared_cache() -> std::path::PathBuf {
    warm_cache()
}

#[test]
fn minbase_python_then_numpy_on_top() {
    ensure_host_sources();
    let ws = Workspace::new("apt-minbase");
    ws.spec(
        r#"
[image]
tags = ["base"]
[apt]
bootstrap = "minbase"
packages = ["python3", "ca-certificates", "curl"]
[config]
cmd = ["python3"]
"#,
    );
    let out = ws.join("out");
    let build = run(ws
        .kiln()
        .env("KILN_CACHE", shared_cache())
        .args(["build", "--json", "-o"])
        .arg(format!("oci:{}", out.display())))
    .ok();
    let report = build.json();
    let installed = strs(&report["apt"][0]["installed"]);
    assert!(
        installed.iter().any(|p| p.starts_with("python3 ")),
        "{installed:?}"
    );
    assert!(
        installed.iter().any(|p| p.starts_with("base-files ")),
        "{installed:?}"
    );

    let rootfs = umoci_unpack(&out, "base", &ws.join("bundle"));
    assert_eq!(
        chroot_run(&rootfs, &["/bin/sh", "-c", "echo ok"])
            .ok()
            .stdout
            .trim(),
        "ok"
    );
    chroot_run(&rootfs, &["python3", "-c", "import ssl, sqlite3, json"]).ok();
    assert!(chroot_run(&rootfs, &["curl", "--version"])
        .ok()
        .stdout
        .starts_with("curl "));
    assert!(chroot_run(&rootfs, &["getent", "passwd", "root"])
        .ok()
        .stdout
        .starts_with("root:"));
    let audit = chroot_run(&rootfs, &["dpkg", "--audit"]).ok();
    assert_eq!(
        audit.stdout.trim(),
        "",
        "dpkg --audit must print nothing\n{}",
        audit.describe()
    );
    let list = chroot_run(
        &rootfs,
        &["dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Package}\n"],
    )
    .ok();
    let rows: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(
        rows.len(),
        installed.len(),
        "dpkg knows every installed package"
    );
    for r in &rows {
        assert!(r.starts_with("ii "), "every dpkg -l row is ii: {r}");
    }
    chroot_run(&rootfs, &["apt-get", "check"]).ok();
    assert!(
        rootfs
            .join("etc/ssl/certs/ca-certificates.crt")
            .metadata()
            .unwrap()
            .len()
            > 10_000
    );
    // OpenSSL's hash links, as update-ca-certificates makes them: each
    // `<hash>.N` resolves to a certificate whose `openssl x509 -hash` is <hash>.
    let certs = rootfs.join("etc/ssl/certs");
    let mut links = 0;
    for e in fs::read_dir(&certs).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some((hash, _)) = name
            .split_once('.')
            .filter(|(h, n)| h.len() == 8 && n.parse::<u32>().is_ok())
        else {
            continue;
        };
        let target = fs::read_link(certs.join(&name)).unwrap();
        let pem = certs.join(&target);
        let pem = fs::read_link(&pem)
            .map(|t| rootfs.join(t.strip_prefix("/").unwrap()))
            .unwrap_or(pem);
        let r = Command::new(require_tool("openssl"))
            .args(["x509", "-hash", "-noout", "-in"])
            .arg(&pem)
            .run_ok();
        assert_eq!(r.stdout.trim(), hash, "{name} -> {}", target.display());
        links += 1;
    }
    assert!(links > 100, "{links} hash links");
    assert_ld_cache_matches_ldconfig(&rootfs);

    // The same image as a base, with numpy on top (needs the BLAS/LAPACK
    // alternatives) and the arm64 C library beside the native one (cross
    // libraries, as a multiarch cross toolchain installs them).
    let ws2 = Workspace::new("apt-numpy");
    ws2.spec(&format!(
        "[image]\ntags = [\"numpy\"]\nbase = \"oci:{}:base\"\n[apt]\npackages = [\"python3-numpy\", \"libc6:arm64\"]\n",
        out.display()
    ));
    let out2 = ws2.join("out");
    let build2 = run(ws2
        .kiln()
        .env("KILN_CACHE", shared_cache())
        .args(["build", "--json", "-o"])
        .arg(format!("oci:{}", out2.display())))
    .ok();
    let installed2 = strs(&build2.json()["apt"][0]["installed"]);
    assert!(
        installed2.iter().any(|p| p.starts_with("python3-numpy ")),
        "{installed2:?}"
    );
    assert!(
        !installed2.iter().any(|p| p.starts_with("python3 ")),
        "python3 is already in the base: {installed2:?}"
    );
    let rootfs2 = umoci_unpack(&out2, "numpy", &ws2.join("bundle"));
    let r = chroot_run(
        &rootfs2,
        &[
            "python3",
            "-c",
            "import numpy; print(numpy.dot(numpy.ones((3,3)), numpy.ones(3)))",
        ],
    )
    .ok();
    assert_eq!(r.stdout.trim(), "[3. 3. 3.]");
    assert!(
        installed2.iter().any(|p| p.starts_with("libc6:arm64 ")),
        "{installed2:?}"
    );
    let audit = chroot_run(&rootfs2, &["dpkg", "--audit"]).ok();
    assert_eq!(audit.stdout.trim(), "");
    chroot_run(&rootfs2, &["apt-get", "check"]).ok();
    assert_eq!(
        chroot_run(&rootfs2, &["dpkg", "--print-foreign-architectures"])
            .ok()
            .stdout
            .trim(),
        "arm64"
    );
    let libc = chroot_run(
        &rootfs2,
        &[
            "dpkg-query",
            "-W",
            "-f",
            "${db:Status-Abbrev}|${Version}\n",
            "libc6:amd64",
            "libc6:arm64",
        ],
    )
    .ok();
    let rows: Vec<&str> = libc.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{}", libc.describe());
    assert_eq!(rows[0], rows[1], "Multi-Arch: same at one version");
    assert!(rows[0].starts_with("ii "), "{rows:?}");
    let elf = fs::read(rootfs2.join("usr/lib/aarch64-linux-gnu/libc.so.6")).unwrap();
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "an aarch64 ELF"
    );
    // The base's cache, merged with numpy's BLAS/LAPACK libraries.
    assert_ld_cache_matches_ldconfig(&rootfs2);

    // `kiln why`: python3-numpy Depends on `libblas3 | libblas.so.3`; the
    // SBOM's DEPENDS_ON chain leads there from the requested package.
    let blas = installed2
        .iter()
        .map(|p| p.split(' ').next().unwrap())
        .find(|p| *p == "libblas3" || p.starts_with("libopenblas"))
        .expect("a BLAS was installed")
        .to_string();
    let image = format!("oci:{}:numpy", out2.display());
    let why = run(ws2.kiln().args(["why", &image, &blas, "--json"]))
        .ok()
        .json();
    assert!(s(&why, "packages_from").starts_with("sidecar "), "{why}");
    let chain: Vec<&str> = why["chains"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(l, "name"))
        .collect();
    assert_eq!(chain, ["python3-numpy", blas.as_str()], "{why}");
    assert_eq!(why["chains"][0][0]["requested"], true);
    let text = run(ws2.kiln().args(["why", &image, &blas])).ok().stdout;
    assert!(text.contains(&format!(" (requested) → {blas} ")), "{text}");
    assert_valid_spdx(&out2.join("sbom/linux-amd64.spdx.json"));
}

#[test]
fn arm64_image_built_on_amd64() {
    ensure_host_sources();
    let ws = Workspace::new("apt-arm64");
    ws.spec(
        r#"
[image]
tags = ["arm"]
platforms = ["linux/arm64"]
[apt]
bootstrap = "essential"
packages = ["python3.11-minimal"]
"#,
    );
    let out = ws.join("out");
    run(ws
        .kiln()
        .env("KILN_CACHE", shared_cache())
        .args(["build", "--quiet", "-o"])
        .arg(format!("oci:{}", out.display())))
    .ok();
    let config = skopeo_inspect_config(&format!("oci:{}:arm", out.display()));
    assert_eq!(s(&config, "architecture"), "arm64");
    let rootfs = umoci_unpack(&out, "arm", &ws.join("bundle"));
    let elf = std::fs::read(rootfs.join("usr/bin/python3.11")).expect("python3.11 in the image");
    assert_eq!(&elf[..4], b"\x7fELF");
    // e_machine at offset 18: 0xB7 = EM_AARCH64.
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        0xB7,
        "python3.11 is an aarch64 binary"
    );
}

/// kiln's /etc/ld.so.cache lists exactly what the image's own ldconfig finds.
#[track_caller]
fn assert_ld_cache_matches_ldconfig(rootfs: &std::path::Path) {
    let listing = |cache: &str| -> std::collections::BTreeSet<String> {
        Command::new(require_tool("ldconfig"))
            .args(["-p", "-C"])
            .arg(rootfs.join(cache))
            .run_ok()
            .stdout
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("Cache generated by"))
            .map(|l| l.trim().to_string())
            .collect()
    };
    // -X: leave the links alone; the reference goes to its own file.
    chroot_run(
        rootfs,
        &["/sbin/ldconfig", "-X", "-C", "/tmp/reference.cache"],
    )
    .ok();
    let ours = listing("etc/ld.so.cache");
    let reference = listing("tmp/reference.cache");
    assert!(reference.len() > 50, "{reference:?}");
    assert_eq!(
        ours.difference(&reference).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in kiln's cache only"
    );
    assert_eq!(
        reference.difference(&ours).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in ldconfig's cache only"
    );
}

/// `--run-scripts`: every maintainer script of a real minbase system runs
/// in kiln's namespace (base-files' `chown root:mail /var/mail` included),
/// and the image still works.
#[test]
fn minbase_with_maintainer_scripts_run() {
    ensure_host_sources();
    let ws = Workspace::new("apt-run-scripts");
    ws.spec("[image]\ntags = [\"s\"]\n[apt]\nbootstrap = \"minbase\"\npackages = [\"python3\"]\n");
    let out = ws.join("out");
    let build = run(ws
        .kiln()
        .env("KILN_CACHE", shared_cache())
        .args(["build", "--run-scripts", "--json", "-o"])
        .arg(format!("oci:{}", out.display())))
    .ok();
    let report = build.json();
    let ran = strs(&report["apt"][0]["ran_scripts"]);
    assert!(
        ran.iter().any(|s| s == "base-files: postinst configure"),
        "{ran:?}"
    );
    assert!(ran.len() > 30, "{ran:?}");
    assert!(strs(&report["apt"][0]["skipped_scripts"]).is_empty());
    let rootfs = umoci_unpack(&out, "s", &ws.join("bundle"));
    chroot_run(&rootfs, &["python3", "-c", "import ssl, sqlite3, json"]).ok();
    let audit = chroot_run(&rootfs, &["dpkg", "--audit"]).ok();
    assert_eq!(audit.stdout.trim(), "", "{}", audit.describe());
    chroot_run(&rootfs, &["apt-get", "check"]).ok();
    // Run as root, kiln maps ids to themselves: the script's chown holds.
    let uid = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() == Some(0) {
        let mail = chroot_run(&rootfs, &["stat", "-c", "%G", "/var/mail"]).ok();
        assert_eq!(mail.stdout.trim(), "mail");
    }
}
