//! `[pip]` builds wheels of sdists with the project's PEP 517 backend, run
//! by the image's own Python in kiln's sandbox: an in-tree backend from a
//! find-links directory (hermetic for pip; the python3 base comes from apt
//! through the host's apt configuration, as in pip_image), a failing
//! backend, docopt from the real index (setuptools), and a foreign
//! architecture (refused before anything is fetched). Bytecode is off
//! (`compile = false`) where it is not the subject: tests/it/bytecode.rs
//! covers it, and it would double the sandbox work here.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_core::Platform;
use kiln_fs::Rootfs;
use kiln_pip::{BuildJob, PipError, PipSection, WheelBuilder};
use kiln_store::{Cache, Http};

use crate::common::*;

/// Debian's python3 image, bootstrapped once for the whole run and shared
/// with other modules (`oci:DIR:py`).
fn python_base() -> String {
    debian_python3().reference()
}

/// An in-tree PEP 517 backend writing `hello-1.0-py3-none-any.whl` (which
/// requires `dep`), with fixed zip times; `fail` makes it print and exit 3.
fn backend(fail: bool) -> String {
    let body = if fail {
        "    import sys\n    print(\"backend says: no compiler here\")\n    sys.exit(3)\n"
    } else {
        ""
    };
    format!(
        r#"import base64, hashlib, os, zipfile

def _line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (path, digest, len(data))

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
{body}    files = {{
        "hello/__init__.py": open("hello/__init__.py", "rb").read(),
        "hello-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hello\nVersion: 1.0\nRequires-Dist: dep>=1\n",
        "hello-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }}
    record = [_line(p, d) for p, d in files.items()] + ["hello-1.0.dist-info/RECORD,,"]
    files["hello-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    name = "hello-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for p, d in files.items():
            info = zipfile.ZipInfo(p, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, d)
    return name
"#
    )
}

/// `wheelhouse/` in `ws`: hello-1.0.tar.gz (an sdist with the in-tree
/// backend) and dep-1.0's wheel.
fn wheelhouse(ws: &Workspace, fail: bool) -> PathBuf {
    let src = ws.join("src/hello-1.0");
    ws.write(
        "src/hello-1.0/pyproject.toml",
        "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n",
    );
    ws.write("src/hello-1.0/backend.py", backend(fail));
    ws.write(
        "src/hello-1.0/hello/__init__.py",
        "import dep\nGREETING = 'hello from an sdist ' + dep.NAME\n",
    );
    ws.write(
        "src/hello-1.0/PKG-INFO",
        "Metadata-Version: 2.1\nName: hello\nVersion: 1.0\n",
    );
    let wh = ws.join("wheelhouse");
    std::fs::create_dir_all(&wh).unwrap();
    let st = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-czf",
        ])
        .arg(wh.join("hello-1.0.tar.gz"))
        .arg("-C")
        .arg(src.parent().unwrap())
        .arg("hello-1.0")
        .status()
        .unwrap();
    assert!(st.success());
    let dep = wheel_zip(&[
        (
            "dep/__init__.py".into(),
            b"NAME = 'and dep'\n".to_vec(),
            0o644,
        ),
        (
            "dep-1.0.dist-info/METADATA".into(),
            b"Metadata-Version: 2.1\nName: dep\nVersion: 1.0\n".to_vec(),
            0o644,
        ),
        (
            "dep-1.0.dist-info/WHEEL".into(),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ]);
    std::fs::write(wh.join("dep-1.0-py3-none-any.whl"), dep).unwrap();
    wh
}

fn sdist_spec(ws: &Workspace) {
    ws.spec(&format!(
        "[image]\ntags = [\"app\"]\nbase = \"{}\"\n[pip]\ncompile = false\npackages = [\"hello\"]\nfind-links = [\"wheelhouse\"]\nno-index = true\nisolated = true\n",
        python_base()
    ));
}

fn build(ws: &Workspace, out: &Path, extra: &[&str]) -> Run {
    run(ws
        .kiln()
        .args(["build", "--json"])
        .args(extra)
        .arg("-o")
        .arg(format!("oci:{}", out.display())))
}

#[test]
fn an_sdist_with_an_in_tree_backend_is_built_installed_and_locked() {
    let ws = Workspace::new("pip-sdist");
    wheelhouse(&ws, false);
    sdist_spec(&ws);
    let out = ws.join("out");
    let r = build(&ws, &out, &[]).ok();
    let installed = strs(&r.json()["pip"][0]["installed"]);
    assert!(
        installed.contains(&"hello 1.0".to_string()) && installed.contains(&"dep 1.0".to_string()),
        "{installed:?}"
    );
    let digest = r.json()["digest"].as_str().unwrap().to_string();

    let rootfs = umoci_unpack(&out, "app", &ws.join("bundle"));
    let imported = chroot_run(
        &rootfs,
        &["python3", "-c", "import hello; print(hello.GREETING)"],
    )
    .ok();
    assert!(
        imported.stdout.contains("hello from an sdist and dep"),
        "{}",
        imported.describe()
    );
    // Installed as pip would: the built wheel's METADATA and an INSTALLER.
    let dist_info = std::fs::read_dir(rootfs.join("usr/local/lib"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("dist-packages/hello-1.0.dist-info"))
        .find(|p| p.is_dir())
        .expect("hello's dist-info");
    assert!(dist_info.join("METADATA").is_file());

    // Built again (another empty cache): the same image.
    let again = build(&ws, &ws.join("out2"), &[]).ok();
    assert_eq!(again.json()["digest"].as_str().unwrap(), digest);

    // Locked: the lock names the sdist and the built wheel; a `--locked`
    // build with an empty cache builds the wheel again, which must be the
    // one the lock records (kiln refuses another), and gives one image
    // every time (its date is the lock's, so not the unlocked digest).
    run(ws.kiln().args(["lock"])).ok();
    let lock = std::fs::read_to_string(ws.join("kiln.lock")).unwrap();
    assert!(
        lock.contains("hello-1.0.tar.gz") && lock.contains("hello-1.0-py3-none-any.whl"),
        "{lock}"
    );
    assert!(lock.contains("sdist"), "{lock}");
    let locked = build(&ws, &ws.join("out3"), &["--locked"]).ok();
    let installed = strs(&locked.json()["pip"][0]["installed"]);
    assert!(
        installed.contains(&"hello 1.0".to_string()),
        "{installed:?}"
    );
    let locked_again = build(&ws, &ws.join("out4"), &["--locked"]).ok();
    assert_eq!(
        locked_again.json()["digest"].as_str().unwrap(),
        locked.json()["digest"].as_str().unwrap()
    );
    let rootfs = umoci_unpack(&ws.join("out3"), "app", &ws.join("bundle3"));
    chroot_run(&rootfs, &["python3", "-c", "import hello"]).ok();
}

#[test]
fn a_failing_backend_shows_its_status_and_output_and_writes_nothing() {
    let ws = Workspace::new("pip-sdist-fail");
    wheelhouse(&ws, true);
    sdist_spec(&ws);
    let out = ws.join("out");
    let r = build(&ws, &out, &[]).code_is(2);
    assert!(
        r.stderr.contains("building a wheel of hello") && r.stderr.contains("exited with 3"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("backend says: no compiler here"),
        "{}",
        r.describe()
    );
    assert!(!out.exists(), "an output was written");
    assert!(!ws.join("kiln.lock").exists());
}

#[test]
fn docopt_from_the_index_builds_with_setuptools() {
    let ws = Workspace::new("pip-sdist-docopt");
    ws.spec(&format!(
        "[image]\ntags = [\"docopt\"]\nbase = \"{}\"\n[pip]\npackages = [\"docopt==0.6.2\"]\n",
        python_base()
    ));
    let out = ws.join("out");
    let r = build(&ws, &out, &[]).ok();
    let installed = strs(&r.json()["pip"][0]["installed"]);
    assert!(
        installed.contains(&"docopt 0.6.2".to_string()),
        "{installed:?}"
    );
    let rootfs = umoci_unpack(&out, "docopt", &ws.join("bundle"));
    let imported = chroot_run(
        &rootfs,
        &["python3", "-c", "import docopt; print(docopt.__version__)"],
    )
    .ok();
    assert!(imported.stdout.contains("0.6.2"), "{}", imported.describe());
}

/// Never called: the build must be refused first.
struct NoBuilds;

impl WheelBuilder for NoBuilds {
    fn build_wheel(&self, job: &BuildJob<'_>) -> kiln::Result<()> {
        panic!("asked to build {}", job.project)
    }
}

#[test]
fn an_sdist_for_a_foreign_architecture_is_refused_before_fetching() {
    let host = Platform::host();
    let foreign = Platform::linux(if host.arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    });
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wheelhouse");
    std::fs::create_dir_all(&wh).unwrap();
    // Not even an archive: fetching and unpacking it would fail otherwise.
    std::fs::write(wh.join("hello-1.0.tar.gz"), b"not fetched").unwrap();
    let mut fs = Rootfs::default();
    fs.insert_file("/usr/bin/python3.11", b"\x7fELF");
    fs.insert_file("/usr/lib/python3.11/os.py", b"");
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let plan = |packages: &[&str], req: Option<&str>| {
        let mut section = PipSection {
            packages: packages.iter().map(|p| p.to_string()).collect(),
            find_links: vec![wh.to_string_lossy().into_owned()],
            no_index: true,
            isolated: true,
            ..Default::default()
        };
        if let Some(text) = req {
            std::fs::write(dir.path().join("req.txt"), text).unwrap();
            section.requirements = vec!["req.txt".into()];
        }
        kiln_pip::plan_building(
            &section,
            dir.path(),
            &fs,
            &foreign,
            &Http::new().unwrap(),
            &cache,
            kiln_pip::Hooks {
                builder: Some(&NoBuilds),
                ..Default::default()
            },
        )
        .unwrap_err()
    };
    let fetched = || {
        std::fs::read_dir(dir.path().join("cache/blobs/sha256"))
            .unwrap()
            .count()
    };

    // A source requirement: refused as such, naming it.
    let err = plan(&["hello @ ./wheelhouse/hello-1.0.tar.gz"], None);
    assert_eq!(err.kind(), kiln::ErrorKind::Input, "{err}");
    assert!(
        matches!(err.downcast_ref::<PipError>(), Some(PipError::BuildForeign { requirement, platform, .. })
            if requirement.contains("hello @ ") && platform == &foreign.to_string()),
        "{err:?}"
    );
    let m = err.to_string();
    assert!(
        m.contains("needs a wheel built from source")
            && m.contains(&format!("this image is {foreign}")),
        "{m}"
    );
    // `--no-binary` likewise.
    let err = plan(&[], Some("--no-binary hello\nhello\n"));
    assert!(
        matches!(err.downcast_ref::<PipError>(), Some(PipError::BuildForeign { requirement, .. })
            if requirement.contains("hello")),
        "{err:?}"
    );
    // An index sdist is no candidate there: the missing wheel is named.
    let err = plan(&["hello"], None);
    assert_eq!(err.kind(), kiln::ErrorKind::Input, "{err}");
    let m = err.to_string();
    assert!(
        m.contains("`hello`: no wheel of hello 1.0 fits this image; there is only hello-1.0.tar.gz (an sdist is built only by `kiln build` for the host's architecture)"),
        "{m}"
    );
    assert_eq!(fetched(), 0, "something was fetched");
}

#[test]
fn no_binary_a_named_directory_and_a_git_url_are_built() {
    let ws = Workspace::new("pip-sdist-forms");
    let wh = wheelhouse(&ws, false);
    // A wheel of hello too, which `--no-binary hello` leaves aside.
    let wheel = wheel_zip(&[
        (
            "hello/__init__.py".into(),
            b"GREETING = 'hello from a wheel'\n".to_vec(),
            0o644,
        ),
        (
            "hello-1.0.dist-info/METADATA".into(),
            b"Metadata-Version: 2.1\nName: hello\nVersion: 1.0\n".to_vec(),
            0o644,
        ),
        (
            "hello-1.0.dist-info/WHEEL".into(),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ]);
    std::fs::write(wh.join("hello-1.0-py3-none-any.whl"), wheel).unwrap();
    ws.write("req.txt", "--no-binary hello\nhello==1.0\n");
    let spec = |pip: &str| {
        format!(
            "[image]\ntags = [\"app\"]\nbase = \"{}\"\n[pip]\ncompile = false\n{pip}\nfind-links = [\"wheelhouse\"]\nno-index = true\nisolated = true\n",
            python_base()
        )
    };
    let greeting = |out: &str| {
        let rootfs = umoci_unpack(&ws.join(out), "app", &ws.join(format!("bundle-{out}")));
        chroot_run(
            &rootfs,
            &["python3", "-c", "import hello; print(hello.GREETING)"],
        )
        .ok()
        .stdout
    };

    ws.spec(&spec("requirements = [\"req.txt\"]"));
    build(&ws, &ws.join("nb"), &[]).ok();
    assert!(greeting("nb").contains("hello from an sdist"));

    // Without `--no-binary`, the wheel.
    ws.write("req.txt", "hello==1.0\n");
    build(&ws, &ws.join("wh"), &[]).ok();
    assert!(greeting("wh").contains("hello from a wheel"));

    // `name @ ./dir`: the source tree itself is built.
    ws.spec(&spec("packages = [\"hello @ ./src/hello-1.0\"]"));
    let r = build(&ws, &ws.join("dir"), &[]).ok();
    let installed = strs(&r.json()["pip"][0]["installed"]);
    assert!(
        installed.contains(&"hello 1.0".to_string()),
        "{installed:?}"
    );
    assert!(greeting("dir").contains("hello from an sdist and dep"));

    // `name @ git+URL@REF`: fetched by commit, built, and locked at the commit.
    let repo = ws.join("repo");
    copy_dir(&ws.join("src/hello-1.0"), &repo);
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "hello"]);
    ws.spec(&spec(&format!(
        "packages = [\"hello @ git+file://{}@main\"]",
        repo.display()
    )));
    build(&ws, &ws.join("git"), &[]).ok();
    assert!(greeting("git").contains("hello from an sdist and dep"));
    run(ws.kiln().args(["lock"])).ok();
    let lock = std::fs::read_to_string(ws.join("kiln.lock")).unwrap();
    let commit = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    assert!(
        lock.contains(&format!("git+file://{}@{commit}", repo.display())),
        "{lock}"
    );
    build(&ws, &ws.join("git-locked"), &["--locked"]).ok();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
