//! `[conda]` end to end against channels built here (see `conda_channel`),
//! served from a `file://` directory and from a loopback HTTP server. The
//! images are unpacked with umoci and checked file by file; the shell script
//! with a replaced prefix runs under chroot with busybox as `/bin/sh`.
//!
//! Tools: `umoci`, `busybox` (package `busybox-static`), `chroot`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::conda_channel::*;
use serde_json::Value;

/// Bytes of the binary file: the placeholder sits inside NUL-terminated data.
fn binary_blob() -> Vec<u8> {
    let mut b = vec![0x7f, b'E', b'L', b'F', 0, 1, 2, 3];
    b.extend_from_slice(PLACEHOLDER.as_bytes());
    b.extend_from_slice(b"/lib\0tail\0");
    b
}

fn packages() -> Vec<Pkg> {
    let mut libbase1 = pkg(
        "libbase",
        "1.0",
        &[],
        vec![
            file("lib/old-only.txt", b"only in 1.0\n"),
            file("share/libbase/version", b"1.0\n"),
        ],
    );
    libbase1.format = Format::TarBz2;
    let mut libbase2 = pkg(
        "libbase",
        "2.0",
        &[],
        vec![
            File {
                placeholder: Some("text"),
                ..file(
                    "etc/libbase.conf",
                    format!("root={PLACEHOLDER}/lib\n").as_bytes(),
                )
            },
            File {
                placeholder: Some("binary"),
                ..file("lib/libbase.bin", &binary_blob())
            },
            file("share/libbase/version", b"2.0\n"),
        ],
    );
    libbase2.format = Format::TarBz2;
    let libmid = pkg(
        "libmid",
        "1.0",
        &["libbase >=1.0"],
        vec![
            file("lib/libmid.so.1", b"not really a library\n"),
            link("lib/libmid.so", "libmid.so.1"),
        ],
    );
    let app = pkg(
        "app",
        "2.0",
        &["libmid"],
        vec![
            script(
                "bin/app",
                &format!("#!/bin/sh\necho \"app from {PLACEHOLDER}\"\n"),
            ),
            script("bin/.app-post-link.sh", "#!/bin/sh\necho linked\n"),
        ],
    );
    let python = fake_python("3.11.0");
    let mut hello = hello_py();
    hello.entry_points = vec!["hello-py = hello_mod:main".into()];
    hello.format = Format::TarBz2;
    let needs_glibc = pkg(
        "needs-glibc",
        "1.0",
        &["__glibc >=2.34"],
        vec![file("share/ok", b"ok\n")],
    );
    vec![libbase1, libbase2, libmid, app, python, hello, needs_glibc]
}

/// A fresh channel directory with every package.
/// The test channel published again without libbase 2.0.
fn publish_without_libbase_2(chan: &Path) {
    let older: Vec<_> = packages()
        .into_iter()
        .filter(|p| !(p.name == "libbase" && p.version == "2.0"))
        .collect();
    write_channel(chan, &older);
}

fn channel(ws: &Workspace) -> PathBuf {
    let dir = ws.join("channel");
    write_channel(&dir, &packages());
    dir
}

fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn spec(ws: &Workspace, base: &str, channel: &str, packages: &[&str], extra: &str) {
    let files = if ws.join("rootfs").exists() {
        "[[files]]\nsrc = \"rootfs\"\ndst = \"/\"\n"
    } else {
        ""
    };
    ws.spec(&format!(
        "[image]\ntags = [\"t\"]\nplatforms = [\"linux/amd64\"]\nbase = {base:?}\n{files}\n[conda]\nchannels = [{channel:?}]\npackages = {}\n{extra}",
        toml_list(packages)
    ));
}

fn build(ws: &Workspace, out: &str) -> crate::common::Run {
    ws.kiln()
        .env("KILN_CACHE", ws.join("cache"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .args(["build", "kiln.toml", "-o", &format!("oci:{out}"), "--json"])
        .run()
}

fn conda_report(v: &Value) -> &Value {
    let a = v["conda"]
        .as_array()
        .unwrap_or_else(|| panic!("conda in {v}"));
    assert_eq!(a.len(), 1, "{v}");
    &a[0]
}

fn names(list: &Value) -> Vec<String> {
    strs(list)
        .iter()
        .map(|s| {
            let s = s.split("::").nth(1).unwrap_or(s);
            s.to_string()
        })
        .collect()
}

/// The channel's `app` runs in the image, its placeholder replaced.
#[track_caller]
fn app_runs(rootfs: &Path) {
    let run = chroot_run(rootfs, &["/opt/conda/bin/app"]);
    assert_eq!(
        run.stdout.trim(),
        "app from /opt/conda",
        "{}",
        run.describe()
    );
}

fn unpack(ws: &Workspace, layout: &str) -> PathBuf {
    umoci_unpack(&ws.join(layout), "t", &ws.join(format!("{layout}-bundle")))
}

/// Every `conda-meta/*.json` parses as a prefix record (the format conda
/// and micromamba read) and lists files that exist.
fn conda_meta(rootfs: &Path) -> Vec<rattler_conda_types::PrefixRecord> {
    let dir = rootfs.join("opt/conda/conda-meta");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let r = rattler_conda_types::PrefixRecord::from_path(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for f in &r.files {
                let abs = rootfs.join("opt/conda").join(f);
                assert!(
                    abs.symlink_metadata().is_ok(),
                    "{} lists {} which is missing",
                    p.display(),
                    f.display()
                );
            }
            assert!(r.package_tarball_full_path.is_none() && r.extracted_package_dir.is_none());
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name().as_normalized().cmp(b.name().as_normalized()));
    out
}

#[test]
fn installs_from_a_file_channel_with_placeholders_noarch_and_meta() {
    let ws = Workspace::new("conda-file");
    let chan = channel(&ws);
    busybox_rootfs(&ws);
    spec(
        &ws,
        "scratch",
        &format!("file://{}", chan.display()),
        &["app", "hello-py", "python=3.11", "libbase=2"],
        "",
    );
    let v = build(&ws, "out").ok().json();
    check_build_json(&v);
    let r = conda_report(&v);
    let mut installed = names(&r["installed"]);
    installed.sort();
    assert_eq!(
        installed,
        [
            "app-2.0-h0_0",
            "hello-py-0.1-py_0",
            "libbase-2.0-h0_0",
            "libmid-1.0-h0_0",
            "python-3.11.0-h0_0"
        ]
    );
    assert!(
        strs(&r["scripts_skipped"]).contains(&"app: post-link script not run".to_string()),
        "{r}"
    );
    assert_eq!(r["subdir"], "linux-64");

    let rootfs = unpack(&ws, "out");
    // Text placeholder replaced, and the script runs.
    let conf = fs::read_to_string(rootfs.join("opt/conda/etc/libbase.conf")).unwrap();
    assert_eq!(conf, "root=/opt/conda/lib\n");
    app_runs(&rootfs);
    // Binary placeholder replaced in place, NUL-padded to the same length.
    let bin = fs::read(rootfs.join("opt/conda/lib/libbase.bin")).unwrap();
    assert_eq!(bin.len(), binary_blob().len());
    let at = bin
        .windows(15)
        .position(|w| w == b"/opt/conda/lib\0")
        .expect("new prefix");
    assert!(!bin
        .windows(PLACEHOLDER.len())
        .any(|w| w == PLACEHOLDER.as_bytes()));
    assert!(bin[at..].windows(5).any(|w| w == b"tail\0"));
    // Only what the packages and kiln's conda-meta put there.
    assert!(!rootfs.join("opt/conda/CACHEDIR.TAG").exists());
    // Symlinks kept.
    assert_eq!(
        fs::read_link(rootfs.join("opt/conda/lib/libmid.so")).unwrap(),
        Path::new("libmid.so.1")
    );
    // noarch: python went to the environment's site-packages, with an entry point.
    assert!(rootfs
        .join("opt/conda/lib/python3.11/site-packages/hello_mod/__init__.py")
        .is_file());
    let ep = fs::read_to_string(rootfs.join("opt/conda/bin/hello-py")).unwrap();
    assert!(ep.starts_with("#!/opt/conda/bin/python3.11"), "{ep}");
    assert!(ep.contains("hello_mod"), "{ep}");
    // conda-meta: one record per package, complete, and a history block.
    let meta = conda_meta(&rootfs);
    let meta_names: Vec<String> = meta
        .iter()
        .map(|r| r.name().as_normalized().to_string())
        .collect();
    assert_eq!(
        meta_names,
        ["app", "hello-py", "libbase", "libmid", "python"]
    );
    let app = &meta[0];
    assert_eq!(app.requested_specs, ["app"]);
    assert!(app.files.iter().any(|f| f == Path::new("bin/app")));
    let hello = &meta[1];
    assert!(hello
        .files
        .iter()
        .any(|f| f == Path::new("lib/python3.11/site-packages/hello_mod/__init__.py")));
    let history = fs::read_to_string(rootfs.join("opt/conda/conda-meta/history")).unwrap();
    assert!(
        history.starts_with("==> 1970-01-01 00:00:00 <=="),
        "{history}"
    );
    assert!(history.contains("::app-2.0-h0_0\n"), "{history}");
    assert!(history.contains("# update specs:"), "{history}");

    // Same inputs, same image.
    let again = build(&ws, "out2").ok().json();
    assert_eq!(again["digest"], v["digest"]);

    // libbase 2 → 1: the small packages' layer is built again, the other
    // four packages' compressed parts copied from the cache; a cold cache
    // builds the same image, and it runs.
    let chan = format!("file://{}", chan.display());
    spec(
        &ws,
        "scratch",
        &chan,
        &["app", "hello-py", "python=3.11", "libbase=1"],
        "",
    );
    let bumped = build(&ws, "out3").ok().json();
    assert_eq!(bumped["summary"]["layers_built"], 1, "{bumped}");
    assert_eq!(bumped["summary"]["layer_parts_copied"], 4, "{bumped}");
    let cold = ws
        .kiln()
        .env("KILN_CACHE", ws.join("cold-cache"))
        .args(["build", "kiln.toml", "-o", "oci:out4", "--json"])
        .run()
        .ok()
        .json();
    assert_eq!(cold["summary"]["layer_parts_copied"], 0, "{cold}");
    assert_eq!(cold["digest"], bumped["digest"]);
    let rootfs = unpack(&ws, "out3");
    app_runs(&rootfs);
    let meta: Vec<String> = conda_meta(&rootfs)
        .iter()
        .map(|r| r.repodata_record.package_record.version.to_string())
        .collect();
    assert_eq!(meta[2], "1.0", "libbase 1.0 in conda-meta: {meta:?}");
}

#[test]
fn installs_over_http_from_a_loopback_channel() {
    let ws = Workspace::new("conda-http");
    let chan = channel(&ws);
    let server = FileServer::start(&chan);
    spec(
        &ws,
        "scratch",
        &format!("http://127.0.0.1:{}/", server.port),
        &["libmid"],
        "",
    );
    let v = build(&ws, "out").ok().json();
    let mut installed = names(&conda_report(&v)["installed"]);
    installed.sort();
    assert_eq!(installed, ["libbase-2.0-h0_0", "libmid-1.0-h0_0"]);
    let rootfs = unpack(&ws, "out");
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/conda/share/libbase/version")).unwrap(),
        "2.0\n"
    );
    assert_eq!(conda_meta(&rootfs).len(), 2);
    // Again with the same cache: each repodata.json is revalidated, not
    // fetched again (a 304, no body), the pins and stages the first build
    // kept are taken, and the image is the same.
    let before = server
        .not_modified
        .load(std::sync::atomic::Ordering::SeqCst);
    let again = build(&ws, "again").ok().json();
    let after = server
        .not_modified
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        after >= before + 2,
        "linux-64 and noarch revalidated ({before} -> {after})"
    );
    assert_eq!(again["digest"], v["digest"]);
    assert_eq!(v["stages_reused"], 0, "{v}");
    assert_eq!(again["stages_reused"], 1, "{again}");
    // The channel published again without libbase 2.0: another repodata,
    // solved again.
    publish_without_libbase_2(&chan);
    let third = build(&ws, "third").ok().json();
    assert_eq!(third["stages_reused"], 0, "{third}");
    let mut installed = names(&conda_report(&third)["installed"]);
    installed.sort();
    assert_eq!(installed, ["libbase-1.0-h0_0", "libmid-1.0-h0_0"]);
}

/// `[conda]` over `[apt]`, unlocked: the second build takes the pins and
/// stages the first kept (apt's InRelease and conda's repodata both
/// revalidated), and a channel published again is solved again on the
/// image apt made.
#[test]
fn conda_over_apt_takes_the_kept_pins_until_the_channel_publishes() {
    let ws = Workspace::new("conda-over-apt-kept");
    let chan = channel(&ws);
    let server = FileServer::start(&chan);
    let apt = crate::apt_hermetic::shared();
    ws.spec(&format!(
        "[image]\ntags = [\"t\"]\nplatforms = [\"linux/amd64\"]\n\n[apt]\npackages = [\"hello\"]\nsources = [{:?}]\n\n[conda]\nchannels = [{:?}]\npackages = [\"libmid\"]\n",
        apt.source_line(),
        format!("http://127.0.0.1:{}/", server.port),
    ));
    let first = build(&ws, "out").ok().json();
    assert_eq!(first["stages_reused"], 0, "{first}");
    let mut installed = names(&conda_report(&first)["installed"]);
    installed.sort();
    assert_eq!(installed, ["libbase-2.0-h0_0", "libmid-1.0-h0_0"]);
    let second = build(&ws, "again").ok().json();
    assert_eq!(second["stages_reused"], 1, "{second}");
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["apt"], first["apt"]);
    assert_eq!(second["conda"], first["conda"]);
    let rootfs = unpack(&ws, "again");
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/conda/share/libbase/version")).unwrap(),
        "2.0\n"
    );
    assert!(rootfs.join("var/lib/dpkg/status").is_file());
    // The channel without libbase 2.0: solved again, over the same apt.
    publish_without_libbase_2(&chan);
    let third = build(&ws, "third").ok().json();
    assert_eq!(third["stages_reused"], 0, "{third}");
    assert_eq!(third["apt"], first["apt"]);
    let mut installed = names(&conda_report(&third)["installed"]);
    installed.sort();
    assert_eq!(installed, ["libbase-1.0-h0_0", "libmid-1.0-h0_0"]);
    assert_ne!(third["digest"], first["digest"]);
}

/// A base image whose dpkg database says libc6 is VERSION.
fn glibc_base(ws: &Workspace, dir: &str, version: &str) {
    let status = format!(
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n"
    );
    let layer = make_tar(&[
        Item::Dir("var", 0o755),
        Item::Dir("var/lib", 0o755),
        Item::Dir("var/lib/dpkg", 0o755),
        Item::File("var/lib/dpkg/status", status.as_bytes(), 0o644),
    ]);
    write_oci_layout(&ws.join(dir), "v1", "amd64", &[layer]);
}

#[test]
fn glibc_virtual_package_comes_from_the_image() {
    let ws = Workspace::new("conda-glibc");
    let chan = format!("file://{}", channel(&ws).display());
    glibc_base(&ws, "bookworm", "2.36-9+deb12u4");
    spec(&ws, "oci:bookworm:v1", &chan, &["needs-glibc"], "");
    let v = build(&ws, "out").ok().json();
    assert!(
        strs(&conda_report(&v)["installed"])
            .iter()
            .any(|s| s.ends_with("needs-glibc-1.0-h0_0")),
        "{v}"
    );
    assert!(conda_report(&v)["virtual_packages"]
        .as_str()
        .unwrap()
        .contains("__glibc=2.36"));

    glibc_base(&ws, "buster", "2.28-10+deb10u2");
    spec(&ws, "oci:buster:v1", &chan, &["needs-glibc"], "");
    let run = build(&ws, "out-old").code_is(2);
    assert!(run.stderr.contains("__glibc"), "{}", run.describe());
    assert!(run.stderr.contains("__glibc=2.28"), "{}", run.describe());
    assert!(!ws.join("out-old").exists());

    // The spec can say what the target has.
    spec(
        &ws,
        "oci:buster:v1",
        &chan,
        &["needs-glibc"],
        "virtual-packages = { glibc = \"2.35\" }\n",
    );
    build(&ws, "out-override").ok();
}

#[test]
fn a_prefix_in_the_base_counts_as_installed() {
    let ws = Workspace::new("conda-base");
    let chan = format!("file://{}", channel(&ws).display());
    spec(&ws, "scratch", &chan, &["libbase=1.0"], "");
    build(&ws, "base1").ok();

    // Adding a package on top keeps what satisfies it.
    spec(&ws, "oci:base1:t", &chan, &["libmid"], "");
    let v = build(&ws, "kept").ok().json();
    let r = conda_report(&v);
    assert_eq!(names(&r["installed"]), ["libmid-1.0-h0_0"]);
    assert_eq!(names(&r["unchanged"]), ["libbase-1.0-h0_0"]);
    let rootfs = unpack(&ws, "kept");
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/conda/share/libbase/version")).unwrap(),
        "1.0\n"
    );
    let history = fs::read_to_string(rootfs.join("opt/conda/conda-meta/history")).unwrap();
    assert_eq!(history.matches("==> ").count(), 2, "{history}");

    // Asking for another version replaces it: old files and record go.
    spec(&ws, "oci:base1:t", &chan, &["libbase=2.0"], "");
    let v = build(&ws, "upgraded").ok().json();
    let r = conda_report(&v);
    assert_eq!(names(&r["replaced"]), ["libbase-1.0-h0_0"]);
    let rootfs = unpack(&ws, "upgraded");
    assert!(!rootfs.join("opt/conda/lib/old-only.txt").exists());
    assert!(!rootfs
        .join("opt/conda/conda-meta/libbase-1.0-h0_0.json")
        .exists());
    let meta = conda_meta(&rootfs);
    assert_eq!(meta.len(), 1);
    assert_eq!(
        meta[0].repodata_record.package_record.version.to_string(),
        "2.0"
    );
}

#[test]
fn environment_yml_with_a_pip_section() {
    let ws = Workspace::new("conda-env");
    let chan = channel(&ws);
    // A wheel in a local wheelhouse, for the `pip:` list.
    let members: Vec<(String, Vec<u8>, u32)> = [
        ("tinywheel/__init__.py", "X = 1\n"),
        (
            "tinywheel-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: tinywheel\nVersion: 1.0\n",
        ),
        (
            "tinywheel-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
    ]
    .iter()
    .map(|(p, d)| (p.to_string(), d.as_bytes().to_vec(), 0o644))
    .collect();
    ws.write(
        "env/wheels/tinywheel-1.0-py3-none-any.whl",
        wheel_zip(&members),
    );
    ws.write(
        "env/environment.yml",
        format!(
            "name: demo\nchannels:\n  - file://{}\ndependencies:\n  - python=3.11\n  - hello-py\n  - pip:\n    - --no-index\n    - --find-links ./wheels\n    - tinywheel==1.0\n",
            chan.display()
        ),
    );
    ws.spec("[image]\ntags = [\"t\"]\nplatforms = [\"linux/amd64\"]\n\n[conda]\nenvironment = \"env/environment.yml\"\n");
    let v = build(&ws, "out").ok().json();
    let pip = v["pip"].as_array().unwrap();
    assert_eq!(pip.len(), 1, "{v}");
    assert_eq!(pip[0]["python"], "/opt/conda/bin/python3.11");
    assert_eq!(strs(&pip[0]["installed"]), ["tinywheel 1.0"]);
    let rootfs = unpack(&ws, "out");
    let site = rootfs.join("opt/conda/lib/python3.11/site-packages");
    assert!(site.join("tinywheel/__init__.py").is_file());
    assert!(site.join("tinywheel-1.0.dist-info/INSTALLER").is_file());
    assert!(site.join("hello_mod/__init__.py").is_file());
    assert_eq!(v["stages_reused"], 0, "{v}");

    // Again: the conda solve and the `pip:` list's resolution both hold,
    // so the pins and stages the first build kept are taken.
    let again = build(&ws, "again").ok().json();
    assert_eq!(again["stages_reused"], 1, "{again}");
    assert_eq!(again["pip"][0]["resolution"], "kept", "{again}");
    assert_eq!(again["digest"], v["digest"]);
    // Another file in the `pip:` list's wheelhouse: its listing changed,
    // so the list is resolved again (to the same pin here).
    ws.write(
        "env/wheels/othertool-1.0-py3-none-any.whl",
        wheel_zip(&members),
    );
    let third = build(&ws, "third").ok().json();
    assert_eq!(third["stages_reused"], 0, "{third}");
    assert_eq!(strs(&third["pip"][0]["installed"]), ["tinywheel 1.0"]);
    assert_eq!(third["digest"], v["digest"]);
}

/// An environment.yml with only a `pip:` list (what people export for a
/// plain Python image) installs into the image's own Python, and a
/// requirements list that names it says what it is.
#[test]
fn environment_yml_with_only_pip_goes_to_the_image_python() {
    let ws = Workspace::new("conda-env-pip-only");
    python_base(&ws);
    tinywheels(&ws, &["1.0"]);
    ws.write(
        "environment.yml",
        "name: ds-env
channels:
  - defaults
dependencies:
  - pip:
    - --no-index
    - --find-links ./wheels
    - tinywheel==1.0
",
    );
    ws.spec("[image]\ntags = [\"t\"]\nbase = \"oci:py:v1\"\n\n[conda]\nenvironment = \"environment.yml\"\n");
    let v = build(&ws, "out").ok().json();
    let pip = v["pip"].as_array().unwrap();
    assert_eq!(pip.len(), 1, "{v}");
    assert_eq!(pip[0]["python"], "/usr/bin/python3.11", "{v}");
    assert_eq!(strs(&pip[0]["installed"]), ["tinywheel 1.0"]);
    let rootfs = unpack(&ws, "out");
    assert!(rootfs
        .join("usr/lib/python3.11/site-packages/tinywheel/__init__.py")
        .is_file());
    // Nothing for conda to install: no prefix, no conda layer, no channel read.
    assert!(!rootfs.join("opt/conda").exists());
    assert!(v["conda"].as_array().is_none_or(|a| a.is_empty()), "{v}");

    // The same file given to `[pip] requirements`: named for what it is.
    ws.spec("[image]\ntags = [\"t\"]\nbase = \"oci:py:v1\"\n\n[pip]\nrequirements = [\"environment.yml\"]\n");
    let r = build(&ws, "out2").code_is(2);
    assert!(
        r.stderr
            .contains("environment.yml is a conda environment file")
            && r.stderr.contains("[conda] environment"),
        "{}",
        r.describe()
    );
    assert!(!ws.join("out2").exists());
}

#[test]
fn bad_requests_fail_clearly_and_write_nothing() {
    let ws = Workspace::new("conda-errors");
    let chan_dir = channel(&ws);
    let chan = format!("file://{}", chan_dir.display());
    let cases: &[(&[&str], &str, &str)] = &[
        (&["nosuchpkg"], "", "`nosuchpkg`: no such package"),
        (&["app >=>= 1"], "", "not a valid MatchSpec"),
        (
            &["libmid", "libbase<1"],
            "",
            "`libbase<1`: no such version; libbase has 2.0, 1.0",
        ),
        // Versions that exist but do not fit together: the solver explains.
        (&["app", "needs-glibc"], "", "cannot be installed together"),
    ];
    for (pkgs, extra, want) in cases {
        spec(&ws, "scratch", &chan, pkgs, extra);
        let run = build(&ws, "out").code_is(2);
        assert!(run.stderr.contains(want), "{pkgs:?}: {}", run.describe());
        assert!(!ws.join("out").exists());
    }
    // A channel that does not exist.
    spec(
        &ws,
        "scratch",
        &format!("file://{}/nowhere", ws.path().display()),
        &["app"],
        "",
    );
    let run = build(&ws, "out").code_is(2);
    assert!(
        run.stderr.contains("no repodata.json"),
        "{}",
        run.describe()
    );
    // An archive that no longer matches its repodata sha256.
    let archive = chan_dir.join("linux-64/libmid-1.0-h0_0.conda");
    let mut bytes = fs::read(&archive).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&archive, bytes).unwrap();
    spec(&ws, "scratch", &chan, &["libmid"], "");
    let run = build(&ws, "out").code_is(2);
    assert!(run.stderr.contains("libmid"), "{}", run.describe());
    assert!(
        run.stderr.contains("mismatch") || run.stderr.contains("sha256"),
        "{}",
        run.describe()
    );
    assert!(!ws.join("out").exists());
}

#[test]
fn hostile_packages_are_refused() {
    let ws = Workspace::new("conda-hostile");
    let mut escape = pkg(
        "escape",
        "1.0",
        &[],
        vec![link("lib/evil", "../../../../../etc/shadow")],
    );
    escape.format = Format::TarBz2;
    write_channel(&ws.join("channel"), &[escape]);
    let chan = format!("file://{}", ws.join("channel").display());
    spec(&ws, "scratch", &chan, &["escape"], "");
    let run = build(&ws, "out").code_is(2);
    assert!(run.stderr.contains("outside"), "{}", run.describe());
    assert!(!ws.join("out").exists());
    // Nothing half-extracted is left for the next build to trust.
    let pkgs = ws.join("cache/conda-pkgs");
    if pkgs.exists() {
        for e in fs::read_dir(&pkgs).unwrap() {
            let p = e.unwrap().path();
            assert!(
                !p.join(".kiln-complete").exists(),
                "{} was kept",
                p.display()
            );
        }
    }
}

#[test]
fn clobbered_paths_are_reported() {
    let ws = Workspace::new("conda-clobber");
    let mut pkgs = packages();
    pkgs.push(pkg(
        "clash",
        "1.0",
        &[],
        vec![
            file("share/libbase/version", b"clash\n"),
            file("share/pip-owned.txt", b"conda\n"),
        ],
    ));
    write_channel(&ws.join("channel"), &pkgs);
    // A base whose prefix holds a file no conda package owns (as pip leaves them).
    let layer = make_tar(&[
        Item::Dir("opt", 0o755),
        Item::Dir("opt/conda", 0o755),
        Item::Dir("opt/conda/conda-meta", 0o755),
        Item::Dir("opt/conda/share", 0o755),
        Item::File("opt/conda/share/pip-owned.txt", b"pip\n", 0o644),
    ]);
    write_oci_layout(&ws.join("base"), "v1", "amd64", &[layer]);
    let chan = format!("file://{}", ws.join("channel").display());
    spec(&ws, "oci:base:v1", &chan, &["clash", "libbase=2"], "");
    let v = build(&ws, "out").ok().json();
    let clobbered = strs(&conda_report(&v)["clobbered"]);
    assert!(
        clobbered.contains(&"/opt/conda/share/libbase/version: clash, libbase".to_string()),
        "{clobbered:?}"
    );
    assert!(
        clobbered.iter().any(|c| c.starts_with(
            "/opt/conda/share/pip-owned.txt: clash overwrites a file no conda package owns"
        )),
        "{clobbered:?}"
    );
}

/// A wheelhouse `WS/wheels` with `tinywheel` at each version.
fn tinywheels(ws: &Workspace, versions: &[&str]) {
    for v in versions {
        ws.write(
            &format!("wheels/tinywheel-{v}-py3-none-any.whl"),
            tinywheel(v),
        );
    }
}

/// `[pip]` over the conda prefix's Python, from the wheelhouse only.
const PIP_OVER_CONDA: &str =
    "[pip]\ntarget = \"/opt/conda\"\nno-index = true\nfind-links = [\"wheels\"]\npackages-file = \"pip.txt\"\n";

/// `packages-file` for `[conda]` and `[pip]`: one package per line,
/// comments allowed, joining `packages`.
#[test]
fn packages_files_feed_conda_and_pip() {
    let ws = Workspace::new("conda-packages-file");
    let chan = format!("file://{}", channel(&ws).display());
    tinywheels(&ws, &["1.0", "1.1"]);
    ws.write(
        "conda.txt",
        "# the interpreter\npython=3.11\n\nhello-py  # a noarch package\n",
    );
    ws.write("pip.txt", "tinywheel==1.0\n");
    spec(
        &ws,
        "scratch",
        &chan,
        &["libmid"],
        &format!("packages-file = \"conda.txt\"\n\n{PIP_OVER_CONDA}"),
    );
    let v = build(&ws, "out").ok().json();
    let installed = names(&conda_report(&v)["installed"]);
    for want in ["hello-py", "libmid", "python"] {
        assert!(
            installed.iter().any(|n| n.starts_with(want)),
            "{want}: {installed:?}"
        );
    }
    let pip = v["pip"].as_array().unwrap();
    assert_eq!(strs(&pip[0]["installed"]), ["tinywheel 1.0"], "{v}");
}

/// Every missing conda and pip request in one error (exit code 2), with
/// close names and the versions that exist; nothing written.
#[test]
fn unknown_conda_and_pip_packages_are_all_named() {
    let ws = Workspace::new("conda-typos");
    let chan = format!("file://{}", channel(&ws).display());
    ws.write("conda.txt", "libmidd\n");
    spec(
        &ws,
        "scratch",
        &chan,
        &["ap", "libbase 9.9", "python=3.11"],
        "packages-file = \"conda.txt\"\n",
    );
    let run = build(&ws, "out").code_is(2);
    for want in [
        "[conda] 3 requested packages not found in the channels:",
        "`ap`: no such package; did you mean `app`?",
        "`libbase 9.9`: no such version; libbase has 2",
        "`libmidd` (conda.txt:1): no such package; did you mean `libmid`?",
    ] {
        assert!(run.stderr.contains(want), "{want}\n{}", run.describe());
    }
    assert!(!ws.join("out").exists());

    tinywheels(&ws, &["1.0", "1.1"]);
    ws.write("pip.txt", "tinywhel\ntinywheel==9.9\n");
    ws.write("conda.txt", "python=3.11\n");
    spec(
        &ws,
        "scratch",
        &chan,
        &[],
        &format!("packages-file = \"conda.txt\"\n\n{PIP_OVER_CONDA}"),
    );
    let run = build(&ws, "out").code_is(2);
    for want in [
        "[pip] 2 requested packages not found on file://",
        "`tinywhel` (pip.txt:1): no such package; did you mean `tinywheel`?",
        "`tinywheel==9.9` (pip.txt:2): no such version; tinywheel has 1.1, 1.0",
    ] {
        assert!(run.stderr.contains(want), "{want}\n{}", run.describe());
    }
    assert!(!ws.join("out").exists());
}

/// `kiln init` from an environment.yml and a conda.txt in the directory:
/// the spec it writes locks (and names both files); a second init refuses
/// to overwrite it.
#[test]
fn init_from_existing_files_writes_a_spec_that_locks() {
    let ws = Workspace::new("conda-init");
    let chan = channel(&ws);
    ws.write(
        "environment.yml",
        format!(
            "channels:\n  - file://{}\ndependencies:\n  - python=3.11\n",
            chan.display()
        ),
    );
    ws.write("conda.txt", "# the app\napp\n");
    let run = ws.kiln().args(["init", "--json"]).run_ok();
    let v = run.json();
    assert_eq!(strs(&v["sections"]), ["image", "conda"], "{v}");
    let spec = fs::read_to_string(ws.join("kiln.toml")).unwrap();
    assert!(spec.contains("environment = \"environment.yml\""), "{spec}");
    assert!(spec.contains("packages-file = \"conda.txt\""), "{spec}");
    assert!(spec.contains("# conda packages"), "{spec}");
    ws.kiln()
        .env("KILN_CACHE", ws.join("cache"))
        .args(["lock", "kiln.toml"])
        .run_ok();
    let lock = fs::read_to_string(ws.join("kiln.lock")).unwrap();
    for name in ["app", "libmid", "libbase", "python"] {
        assert!(
            lock.contains(&format!("name = \"{name}\"")),
            "{name}\n{lock}"
        );
    }
    let run = ws.kiln().args(["init", "--conda", "libbase"]).run();
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    assert!(
        run.stderr.contains("already exists; pass --force"),
        "{}",
        run.describe()
    );
    assert_eq!(fs::read_to_string(ws.join("kiln.toml")).unwrap(), spec);
}
