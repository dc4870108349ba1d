//! `kiln build --dockerfile`: a Dockerfile translated to kiln's own stages
//! (config, `[[files]]`, native apt), `--explain`, and refusals that name
//! the line and write nothing.

use std::fs;

use serde_json::Value;

use crate::common::*;

/// A one-layer handmade base tagged `v1` in WS/base (Env PATH and
/// BASE_ENV, Cmd ["/bin/sh"], a label), with an app directory its user owns.
fn handmade_base(ws: &Workspace) -> HandmadeImage {
    let tar = make_tar(&[
        Item::Dir("etc/", 0o755),
        Item::File("etc/os-release", b"ID=handmade\n", 0o644),
        Item::OwnedDir("srv/", 0o750, 0, 1000),
        Item::OwnedDir("srv/app/", 0o2770, 1000, 1000),
    ]);
    write_oci_layout(&ws.join("base"), "v1", "amd64", &[tar])
}

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=oci:base:v1
FROM ${BASE}
ARG VERSION=0.1
ENV APP_HOME=/srv/app \
    APP_VERSION=${VERSION} PATH=/opt/app/bin:$PATH
LABEL org.opencontainers.image.version="${VERSION}" team="data science"
WORKDIR /srv/app
COPY app.txt .
COPY --chown=1000:1000 --chmod=0640 conf/ /etc/app/
USER 1000:1000
EXPOSE 8080 53/udp
STOPSIGNAL SIGINT
CMD ["./run", "--port", "8080"]
"#;

fn context(ws: &Workspace) {
    handmade_base(ws);
    ws.write("Dockerfile", DOCKERFILE);
    ws.write("app.txt", "hello from the context\n");
    ws.write("conf/app.toml", "port = 8080\n");
    ws.write("conf/extra/x.conf", "x\n");
    ws.write("conf/old.bak", "stale\n");
    ws.write(".dockerignore", "**/*.bak\nout*\n");
}

#[test]
fn dockerfile_on_an_oci_layout_base() {
    let ws = Workspace::new("dockerfile-base");
    context(&ws);
    let args = ["--dockerfile", "Dockerfile", "--build-arg", "VERSION=2.0"];
    let v = build_json(&ws, &[&args[..], &["-o", "oci:out"]].concat());
    let explained = v["dockerfile"]["explain"].as_array().unwrap();
    assert!(
        explained.iter().any(|e| e["treatment"] == "files"),
        "{explained:?}"
    );

    let layout = Layout::open(ws.join("out"));
    let (digest, _) = layout.manifest("latest");
    assert_eq!(digest, s(&v, "digest"));
    let config = layout.config("latest");
    let c = &config["config"];
    let env = env_map(c);
    assert_eq!(
        env["APP_VERSION"], "2.0",
        "--build-arg overrides the default"
    );
    assert_eq!(env["APP_HOME"], "/srv/app");
    assert_eq!(env["BASE_ENV"], "from-base", "the base's env is kept");
    assert!(
        env["PATH"].starts_with("/opt/app/bin:/") && env["PATH"].contains("/usr/bin"),
        "$PATH expands from the base's environment: {env:?}"
    );
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], "2.0");
    assert_eq!(c["Labels"]["team"], "data science");
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(strs(&c["Cmd"]), ["./run", "--port", "8080"]);
    let ports = keys(&c["ExposedPorts"]);
    assert_eq!(ports, ["53/udp", "8080/tcp"]);

    // Base layer, one for `COPY app.txt`, and `COPY conf/` in the two
    // pieces .dockerignore leaves (`conf/old.bak` is excluded).
    let layers = layout.layers("latest");
    assert_eq!(layers.len(), 4);
    let app = entry(&layers[1].1, "srv/app/app.txt");
    assert_eq!(app.content, b"hello from the context\n");
    assert_eq!((app.uid, app.gid, app.mode & 0o7777), (0, 0, 0o644));
    // The directories the copy lands in are the base's, kept as they are
    // (docker and buildah leave an existing destination alone), not reset
    // to root's 0755.
    for (dir, owner) in [("srv", (0, 1000, 0o750)), ("srv/app", (1000, 1000, 0o2770))] {
        let d = entry(&layers[1].1, dir);
        assert_eq!((d.uid, d.gid, d.mode & 0o7777), owner, "{dir}");
    }
    let conf = entry(&layers[2].1, "etc/app/app.toml");
    assert_eq!(conf.content, b"port = 8080\n");
    assert_eq!(
        (conf.uid, conf.gid, conf.mode & 0o7777),
        (1000, 1000, 0o640)
    );
    let extra = entry(&layers[3].1, "etc/app/extra/x.conf");
    assert_eq!(
        (extra.uid, extra.gid, extra.mode & 0o7777),
        (1000, 1000, 0o640)
    );
    for (_, entries) in &layers {
        assert!(entries.iter().all(|e| !e.path.ends_with("old.bak")));
    }
    oci_validate(&ws.join("out"), "latest");
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/app/app.txt")).unwrap(),
        "hello from the context\n"
    );
    assert!(
        rootfs.join("etc/os-release").exists(),
        "base files are there"
    );

    // The same inputs give the same image.
    let again = build_json(&ws, &[&args[..], &["-o", "oci:out2"]].concat());
    assert_eq!(s(&again, "digest"), s(&v, "digest"));
    // The translated spec is never written into the context.
    assert!(!ws.join("Dockerfile.kiln.toml").exists());
    // An explicit context directory works from anywhere.
    let r = run(kiln()
        .current_dir("/")
        .args(["build", "--json", "--quiet", "--dockerfile"])
        .arg(ws.join("Dockerfile"))
        .args(["--build-arg", "VERSION=2.0", "-o"])
        .arg(format!("oci:{}", ws.join("out3").display()))
        .arg(ws.path()))
    .ok();
    // Same layers (the manifest differs: a layout base's name is its path
    // as the spec resolves it, here absolute).
    assert_eq!(r.json()["layers"], v["layers"]);
}

#[test]
fn explain_names_each_instructions_treatment() {
    let ws = Workspace::new("dockerfile-explain");
    context(&ws);
    ws.write(
        "Dockerfile.apt",
        "FROM oci:base:v1\nRUN apt-get update && \\\n    apt-get install -y --no-install-recommends hello \\\n && rm -rf /var/lib/apt/lists/*\nCOPY app.txt /app.txt\nCMD hello\n",
    );
    let before = ws.listing();
    let r = run(ws
        .kiln()
        .args(["build", "--dockerfile", "Dockerfile.apt", "--explain"]))
    .ok();
    let out = &r.stdout;
    for needle in [
        "LINE",
        "TREATMENT",
        "base",
        "[image] base = \"oci:base:v1\"",
        "dropped",
        "apt-get update",
        "[apt] packages += [\"hello\"]",
        "rm -rf /var/lib/apt/lists/*",
        "files",
        "[[files]] src = \"app.txt\", dst = \"/app.txt\"",
        "[config] cmd = [\"/bin/sh\", \"-c\", \"hello\"]",
        "# kiln.toml",
        "[apt]",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in\n{out}");
    }
    assert_eq!(ws.listing(), before, "--explain builds nothing");

    let r = run(ws
        .kiln()
        .args(["build", "--dockerfile", "Dockerfile", "--explain", "--json"]))
    .ok();
    let v = r.json();
    let rows: Vec<(u64, String)> = v["explain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), s(e, "treatment").to_string()))
        .collect();
    let want: Vec<(u64, &str)> = vec![
        (1, "directive"),
        (2, "variable"),
        (3, "base"),
        (4, "variable"),
        (5, "config"),
        (7, "config"),
        (8, "config"),
        (9, "files"),
        (10, "files"),
        (11, "config"),
        (12, "config"),
        (13, "config"),
        (14, "config"),
    ];
    let got: Vec<(u64, &str)> = rows.iter().map(|(l, t)| (*l, t.as_str())).collect();
    assert_eq!(got, want, "{v}");
    assert!(s(&v, "spec").contains("[[files]]"), "{v}");
    assert_eq!(ws.listing(), before);
}

#[test]
fn bad_dockerfiles_name_the_line_and_write_nothing() {
    let ws = Workspace::new("dockerfile-bad");
    handmade_base(&ws);
    ws.write("app.txt", "a\n");
    ws.write("Dockerfile.syntax", "FROM oci:base:v1\nFROBNICATE x\n");
    ws.write(
        "Dockerfile.run",
        "FROM oci:base:v1\nCOPY app.txt /app.txt\nRUN --security=insecure useradd x\n",
    );
    ws.write(
        "Dockerfile.missing",
        "FROM oci:base:v1\nCOPY missing.txt /m\n",
    );
    ws.write(
        "Dockerfile.from",
        "FROM oci:base:v1\nCOPY --from=build /etc/os-release /x\n",
    );
    ws.write(
        "Dockerfile.nobase",
        "ARG X=1\nFROM oci:nowhere:v1\nENV A=$X\n",
    );
    for (file, fragments) in [
        (
            "Dockerfile.syntax",
            &["Dockerfile.syntax:2:1", "unknown instruction"][..],
        ),
        (
            "Dockerfile.run",
            &["line 3", "RUN --security", "not supported yet"][..],
        ),
        (
            "Dockerfile.nobase",
            &["Dockerfile.nobase line 2: FROM oci:nowhere:v1"][..],
        ),
        (
            "Dockerfile.missing",
            &["line 2", "`missing.txt` not found"][..],
        ),
        (
            "Dockerfile.from",
            &["line 2", "COPY --from", "no stage `build` before this line"][..],
        ),
    ] {
        expect_failure(
            &ws,
            &["build", "--dockerfile", file, "-o", "oci:out"],
            2,
            fragments,
        );
    }
    // --json: the error object names the line too.
    let r = run(ws.kiln().args([
        "build",
        "--json",
        "--dockerfile",
        "Dockerfile.run",
        "-o",
        "oci:out",
    ]))
    .code_is(2);
    let v: Value = r.json();
    assert_eq!(v["error"]["kind"], "input");
    assert!(s(&v["error"], "message").contains("line 3"), "{v}");
    assert!(!ws.join("out").exists());
}

/// A Debian minbase bootstrapped by kiln from the host's sources (the run's
/// shared one, bootstrapped once), copied to the layout WS/base tagged
/// `base` (the Dockerfile's `FROM oci:base:base`); returns the cache for
/// the test's builds (the run's warm one, which the bootstrap filled).
fn debian_base(ws: &Workspace) -> std::path::PathBuf {
    ensure_host_sources();
    debian_minbase().copy_to(&ws.join("base"));
    warm_cache()
}

#[test]
fn dockerfile_apt_install_runs_natively() {
    let ws = Workspace::new("dockerfile-apt");
    let cache = debian_base(&ws);
    ws.write(
        "Dockerfile",
        "FROM oci:base:base\nRUN apt-get update && \\\n    apt-get install -y --no-install-recommends hello \\\n && rm -rf /var/lib/apt/lists/*\nCMD [\"hello\"]\n",
    );
    let r = run(ws.kiln().env("KILN_CACHE", &cache).args([
        "build",
        "--json",
        "--dockerfile",
        "Dockerfile",
        "-o",
        "oci:out",
    ]))
    .ok();
    let v = r.json();
    let installed = strs(&v["apt"][0]["installed"]);
    assert!(
        installed.iter().any(|p| p.starts_with("hello ")),
        "{installed:?}"
    );
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert!(rootfs.join("usr/bin/hello").is_file());
    assert_eq!(
        chroot_run(&rootfs, &["hello"]).ok().stdout.trim(),
        "Hello, world!"
    );
    let status = fs::read_to_string(rootfs.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: hello\n"), "dpkg knows it");
}

/// `pip install --no-index --find-links DIR -r FILE` with both copied from
/// the context: the native pip stage reads them from the context.
#[test]
fn dockerfile_pip_install_from_a_copied_wheelhouse() {
    let ws = Workspace::new("dockerfile-pip");
    python_base(&ws);
    let wheel = wheel_zip(&[
        ("tinywheel/__init__.py".into(), b"X = 1\n".to_vec(), 0o644),
        (
            "tinywheel-1.0.dist-info/METADATA".into(),
            b"Metadata-Version: 2.1\nName: tinywheel\nVersion: 1.0\n".to_vec(),
            0o644,
        ),
        (
            "tinywheel-1.0.dist-info/WHEEL".into(),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ]);
    ws.write("wheels/tinywheel-1.0-py3-none-any.whl", wheel);
    ws.write("requirements.txt", "tinywheel==1.0\n");
    ws.write(
        "Dockerfile",
        "FROM oci:py:v1\nCOPY wheels /wheels\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install --no-cache-dir --no-index \\\n      --find-links /wheels -r requirements.txt \\\n && pip cache purge\nCMD [\"python3.11\", \"-c\", \"import tinywheel\"]\n",
    );
    let v = build_json(&ws, &["--dockerfile", "Dockerfile", "-o", "oci:out"]);
    let installed = strs(&v["pip"][0]["installed"]);
    assert!(
        installed.iter().any(|w| w.starts_with("tinywheel 1.0")),
        "{installed:?}"
    );
    let layout = Layout::open(ws.join("out"));
    let layers = layout.layers("latest");
    let has = |suffix: &str| {
        layers
            .iter()
            .any(|(_, entries)| entries.iter().any(|e| e.clean_path().ends_with(suffix)))
    };
    assert!(
        has("-packages/tinywheel/__init__.py"),
        "the wheel is installed"
    );
    assert!(has("app/requirements.txt") && has("wheels/tinywheel-1.0-py3-none-any.whl"));
    let explained = v["dockerfile"]["explain"].as_array().unwrap();
    let treatments: Vec<&str> = explained
        .iter()
        .filter(|e| e["line"] == 5)
        .map(|e| s(e, "treatment"))
        .collect();
    assert_eq!(treatments, ["pip", "dropped"]);
}

/// The shape of a Dockerfile a notebook platform generates for an image
/// (PrimeHub's builder, docker-stacks' habits): `USER root`, a user made by
/// useradd, apt with clean-ups, conda from `-c conda-forge` (here a channel
/// served as a mirror through the channel alias), pip into the conda
/// environment, `fix-permissions`, then back to the notebook user. The
/// package lines become native stages; useradd and fix-permissions run in
/// the sandbox; the image runs under podman as the notebook user, who may
/// write into the environment.
#[test]
fn a_notebook_platform_dockerfile_with_apt_conda_and_pip() {
    use crate::conda_channel::{fake_python, hello_py, write_channel};
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::new("dockerfile-notebook");
    let cache = debian_base(&ws);

    // A `conda-forge` channel under a mirror directory (the alias).
    write_channel(
        &ws.join("mirror/conda-forge"),
        &[fake_python("3.11.0"), hello_py()],
    );
    ws.write(
        "wheels/tinywheel-1.0-py3-none-any.whl",
        wheel_zip(&[
            ("tinywheel/__init__.py".into(), b"X = 1\n".to_vec(), 0o644),
            (
                "tinywheel-1.0.dist-info/METADATA".into(),
                b"Metadata-Version: 2.1\nName: tinywheel\nVersion: 1.0\n".to_vec(),
                0o644,
            ),
            (
                "tinywheel-1.0.dist-info/WHEEL".into(),
                b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
                0o644,
            ),
        ]),
    );
    ws.write(
        "fix-permissions",
        "#!/bin/sh\n# Give the notebook group write access to each directory given.\nset -e\nfor d in \"$@\"; do\n  chgrp -R \"$NB_GID\" \"$d\"\n  chmod -R g+rwX \"$d\"\n  find \"$d\" -type d -exec chmod g+s {} +\ndone\n",
    );
    ws.write(
        "Dockerfile",
        r#"FROM oci:base:base
USER root
ENV NB_USER=jovyan NB_UID=1000 NB_GID=100 CONDA_DIR=/opt/conda
ENV PATH=$CONDA_DIR/bin:$PATH
COPY --chmod=0755 fix-permissions /usr/local/bin/fix-permissions
RUN useradd -m -s /bin/sh -N -u $NB_UID $NB_USER && \
    mkdir -p $CONDA_DIR && chown $NB_USER:$NB_GID $CONDA_DIR
RUN apt-get update && \
    apt-get install -y --no-install-recommends hello && \
    apt-get clean && rm -rf /var/lib/apt/lists/*
RUN conda install --quiet --yes -c conda-forge python=3.11 hello-py && \
    conda clean --all -f -y
COPY wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels tinywheel==1.0
RUN fix-permissions $CONDA_DIR && fix-permissions /home/$NB_USER
USER $NB_UID
WORKDIR /home/$NB_USER
"#,
    );
    let mirror = format!("file://{}/", ws.join("mirror").display());
    let r = run(ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .env("CONDA_CHANNEL_ALIAS", &mirror)
        .args([
            "build",
            "--json",
            "--dockerfile",
            "Dockerfile",
            "-o",
            "oci:out",
        ]))
    .ok();
    let v = r.json();

    // What kiln did with each line.
    let explained = v["dockerfile"]["explain"].as_array().unwrap();
    let on = |line: u64| -> Vec<&str> {
        explained
            .iter()
            .filter(|e| e["line"] == line)
            .map(|e| s(e, "treatment"))
            .collect()
    };
    assert_eq!(on(6), ["sandboxed"], "useradd: {explained:?}");
    assert!(
        on(8).contains(&"apt") && on(8).contains(&"dropped"),
        "{:?}",
        on(8)
    );
    assert!(
        on(11).contains(&"conda") && on(11).contains(&"dropped"),
        "{:?}",
        on(11)
    );
    assert_eq!(on(14), ["pip"]);
    assert_eq!(on(15), ["sandboxed"], "fix-permissions");
    assert!(strs(&v["apt"][0]["installed"])
        .iter()
        .any(|p| p.starts_with("hello ")));
    assert_eq!(strs(&v["pip"][0]["installed"]), ["tinywheel 1.0"]);
    assert_eq!(v["pip"][0]["python"], "/opt/conda/bin/python3.11");

    let config = Layout::open(ws.join("out")).config("latest");
    assert_eq!(config["config"]["User"], "1000");
    assert_eq!(config["config"]["WorkingDir"], "/home/jovyan");

    // The tree: every part where a docker build would put it, with the
    // owners and modes the sandboxed lines gave.
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    let site = "/opt/conda/lib/python3.11/site-packages";
    for p in [
        "/usr/bin/hello".to_string(),
        format!("{site}/hello_mod/__init__.py"),
        format!("{site}/tinywheel/__init__.py"),
        "/tmp/wheels/tinywheel-1.0-py3-none-any.whl".to_string(),
    ] {
        assert!(exists_in(&rootfs, &p), "{p}");
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("jovyan:x:1000:100::/home/jovyan:/bin/sh"),
        "{passwd}"
    );
    let m = stat(&rootfs, "/opt/conda");
    assert_eq!((m.uid(), m.gid()), (1000, 100));
    let m = stat(&rootfs, &format!("{site}/tinywheel/__init__.py"));
    assert_eq!(m.gid(), 100);
    assert_eq!(m.mode() & 0o070, 0o060, "group may read and write");
    let m = stat(&rootfs, &format!("{site}/tinywheel"));
    assert_ne!(m.mode() & 0o2000, 0, "directories keep the group (setgid)");
    let home = stat(&rootfs, "/home/jovyan");
    assert_eq!((home.uid(), home.gid()), (1000, 100));
    assert!(!exists_in(&rootfs, "/var/lib/apt/lists/lock"));

    // Under podman, as the notebook user: apt's program runs, the
    // environment is on PATH and writable by the user.
    let image = format!("oci:{}:latest", ws.join("out").display());
    let out = podman_run(
        &ws.join("pstore"),
        &image,
        &[
            "sh",
            "-c",
            "id -u; pwd; hello; command -v python3.11; touch /opt/conda/lib/python3.11/site-packages/mine && echo writable",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "1000",
            "/home/jovyan",
            "Hello, world!",
            "/opt/conda/bin/python3.11",
            "writable"
        ],
        "{out}"
    );
}

/// A Dockerfile build locks as a spec does: `kiln lock --dockerfile` writes
/// `Dockerfile.kiln.lock` beside it (a kiln.toml there keeps its own
/// kiln.lock) with the base and the packages; a `--locked` build takes
/// those pins although a newer wheel appeared; an edited Dockerfile makes
/// the lock stale, shown as a difference, and nothing is written.
#[test]
fn dockerfile_builds_lock_and_build_locked() {
    let ws = Workspace::new("dockerfile-lock");
    python_base(&ws);
    // The wheelhouse stands outside the context, as an index would.
    let house = unique_dir("dockerfile-lock-wheels");
    fs::write(
        house.join("tinywheel-1.0-py3-none-any.whl"),
        tinywheel("1.0"),
    )
    .unwrap();
    let dockerfile = format!(
        "FROM oci:py:v1\nRUN pip install --no-index --find-links file://{} tinywheel\n",
        house.display()
    );
    ws.write("Dockerfile", &dockerfile);
    let r = run(ws
        .kiln()
        .args(["lock", "--dockerfile", "Dockerfile", "--json"]))
    .ok();
    assert_eq!(r.json()["status"], "written", "{}", r.describe());
    let lock = fs::read_to_string(ws.join("Dockerfile.kiln.lock")).unwrap();
    assert!(
        lock.contains("name = \"tinywheel\"") && lock.contains("version = \"1.0\""),
        "{lock}"
    );
    assert!(!ws.join("kiln.lock").exists());
    // A spec naming the Dockerfile locks beside itself, or where
    // --lockfile says.
    ws.write("app.toml", "[image]\ndockerfile = \"Dockerfile\"\n");
    run(ws
        .kiln()
        .args(["lock", "app.toml", "--lockfile", "pins.lock"]))
    .ok();
    let pins = fs::read_to_string(ws.join("pins.lock")).unwrap();
    assert!(pins.contains("name = \"tinywheel\""), "{pins}");
    assert!(
        !ws.join("kiln.lock").exists(),
        "the spec's own lock is not written"
    );

    fs::write(
        house.join("tinywheel-1.1-py3-none-any.whl"),
        tinywheel("1.1"),
    )
    .unwrap();
    let locked = |out: &str| {
        run(ws.kiln().args([
            "build",
            "--json",
            "--dockerfile",
            "Dockerfile",
            "--locked",
            "-o",
            &format!("oci:{out}"),
        ]))
    };
    let v = locked("out").ok().json();
    assert_eq!(v["lock"], "used");
    assert_eq!(strs(&v["pip"][0]["installed"]), ["tinywheel 1.0"]);
    // Without --locked the matching lock is used too.
    let v = build_json(&ws, &["--dockerfile", "Dockerfile", "-o", "oci:auto"]);
    assert_eq!(strs(&v["pip"][0]["installed"]), ["tinywheel 1.0"]);

    // A config change leaves the pins valid; a changed requirement does not.
    ws.write("Dockerfile", format!("{dockerfile}ENV MODE=prod\n"));
    assert_eq!(locked("config").ok().json()["lock"], "used");
    ws.write(
        "Dockerfile",
        dockerfile.replace(" tinywheel\n", " 'tinywheel>=1'\n"),
    );
    let r = locked("stale").code_is(2);
    assert!(
        r.stderr.contains("tinywheel>=1"),
        "the difference names the change: {}",
        r.describe()
    );
    assert!(!ws.join("stale").exists());
    // Re-locking takes the newest wheel.
    run(ws.kiln().args(["lock", "--dockerfile", "Dockerfile"])).ok();
    let v = locked("relocked").ok().json();
    assert_eq!(strs(&v["pip"][0]["installed"]), ["tinywheel 1.1"]);
}

/// A target built on another stage of its Dockerfile locks that stage too:
/// `kiln lock` resolves and builds the stage, its pins go into the
/// target's lock (`[[stage]]`), the target's inputs name it `stage:NAME`
/// (never the scratch layout's path), and `--locked` builds every stage
/// from its pins although a newer wheel appeared.
#[test]
fn multi_stage_targets_lock_their_stages() {
    let ws = Workspace::new("dockerfile-lock-stages");
    python_base(&ws);
    let house = unique_dir("dockerfile-lock-stages-wheels");
    fs::write(
        house.join("tinywheel-1.0-py3-none-any.whl"),
        tinywheel("1.0"),
    )
    .unwrap();
    ws.write(
        "Dockerfile",
        format!(
            "FROM oci:py:v1 AS deps\nRUN pip install --no-index --find-links file://{} tinywheel\n\nFROM deps\nLABEL stage=final\n",
            house.display()
        ),
    );
    let lock = |extra: &[&str]| {
        run(ws
            .kiln()
            .args(["lock", "--dockerfile", "Dockerfile", "--json"])
            .args(extra))
        .ok()
        .json()
    };
    assert_eq!(lock(&[])["status"], "written");
    let text = fs::read_to_string(ws.join("Dockerfile.kiln.lock")).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let stages = parsed["stage"].as_array().unwrap();
    assert_eq!(stages.len(), 1, "{text}");
    assert_eq!(stages[0]["name"].as_str(), Some("deps"));
    assert!(text.contains("image.base = \"stage:deps\""), "{text}");
    assert!(
        !text.contains("stage-0"),
        "no scratch path in the lock: {text}"
    );
    assert!(text.contains("name = \"tinywheel\""), "{text}");
    assert_eq!(lock(&[])["status"], "unchanged");

    fs::write(
        house.join("tinywheel-1.1-py3-none-any.whl"),
        tinywheel("1.1"),
    )
    .unwrap();
    let v = build_json(
        &ws,
        &["--dockerfile", "Dockerfile", "--locked", "-o", "oci:locked"],
    );
    assert_eq!(v["lock"], "used");
    assert_eq!(s(&v["dockerfile"]["stages"][0], "stage"), "deps");
    let rootfs = umoci_unpack(&ws.join("locked"), "latest", &ws.join("locked-bundle"));
    let init = fs::read_to_string(
        rootfs.join("usr/local/lib/python3.11/dist-packages/tinywheel/__init__.py"),
    )
    .or_else(|_| {
        fs::read_to_string(rootfs.join("usr/lib/python3.11/site-packages/tinywheel/__init__.py"))
    })
    .unwrap();
    assert_eq!(init, "V = \"1.0\"\n");
    // Upgrading re-resolves the stage too.
    assert_eq!(lock(&["--upgrade"])["status"], "updated");
    assert!(fs::read_to_string(ws.join("Dockerfile.kiln.lock"))
        .unwrap()
        .contains("version = \"1.1\""));
}
