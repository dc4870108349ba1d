//! `kiln build --dockerfile`: a Dockerfile translated to kiln's own stages
//! (config, `[[files]]`, native apt), `--explain`, and refusals that name
//! the line and write nothing.

use std::fs;

use serde_json::Value;

use crate::common::*;

/// A one-layer handmade base tagged `v1` in WS/base (Env PATH and
/// BASE_ENV, Cmd ["/bin/sh"], a label).
fn handmade_base(ws: &Workspace) -> HandmadeImage {
    let tar = make_tar(&[
        Item::Dir("etc/", 0o755),
        Item::File("etc/os-release", b"ID=handmade\n", 0o644),
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

/// The apt tests' condition: the host's apt sources name a Debian mirror.
fn ensure_host_sources() {
    let has = std::path::Path::new("/etc/apt/sources.list.d")
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
        || fs::read_to_string("/etc/apt/sources.list")
            .map(|s| s.contains("deb "))
            .unwrap_or(false);
    assert!(
        has,
        "this test uses the host's apt sources to find a Debian mirror; none are configured"
    );
}

#[test]
fn dockerfile_apt_install_runs_natively() {
    ensure_host_sources();
    let ws = Workspace::new("dockerfile-apt");
    let cache = unique_dir("dockerfile-apt-cache");
    // A Debian base, bootstrapped by kiln from the host's sources.
    ws.spec("[image]\ntags = [\"base\"]\n[apt]\nbootstrap = \"minbase\"\n");
    run(ws.kiln().env("KILN_CACHE", &cache).args([
        "build",
        "--quiet",
        "--no-sbom",
        "-o",
        "oci:base",
    ]))
    .ok();
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
