//! `[[run]]` and a Dockerfile's other RUN lines: real commands (busybox)
//! run in kiln's unprivileged sandbox, each adding what it changed as a
//! layer: new files, whiteouts for removals, the user and directory asked
//! for, no network with `none`, the same digest every time.

use std::fs;

use crate::common::*;

const SPEC: &str = r#"
[image]
tags = ["t"]
[[files]]
src = "rootfs/"
dst = "/"
[[run]]
command = "mkdir -p /data && echo hi > /data/x && rm /etc/gone && id -u > /data/uid && pwd > /data/pwd"
workdir = "/work"
[[run]]
command = ["/bin/sh", "-c", "id > /tmp/id; echo $HOME > /tmp/home; echo $GREETING > /tmp/greeting"]
user = "app"
env = { GREETING = "hello" }
[[files]]
src = "late.txt"
dst = "/late.txt"
[config]
cmd = ["/bin/sh"]
"#;

#[test]
fn run_steps_become_layers_of_what_they_changed() {
    let ws = Workspace::new("run-steps");
    busybox_rootfs_with_app(&ws);
    ws.write("late.txt", "copied after the commands\n");
    ws.spec(SPEC);
    let r = run(ws
        .kiln()
        .args(["build", "--json", "--quiet", "-o", "oci:out"]))
    .ok();
    let digest = r.json()["digest"].as_str().unwrap().to_string();
    let rootfs = umoci_unpack(&ws.join("out"), "t", &ws.join("bundle"));
    let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap();
    assert_eq!(read("data/x"), "hi\n");
    assert_eq!(read("data/uid"), "0\n");
    assert_eq!(read("data/pwd"), "/work\n");
    assert!(rootfs.join("work").is_dir());
    assert!(
        !exists_in(&rootfs, "/etc/gone"),
        "the removal is a whiteout"
    );
    assert!(read("tmp/id").starts_with("uid=1000(app) gid=1000(app)"));
    assert_eq!(read("tmp/home"), "/home/app\n");
    assert_eq!(read("tmp/greeting"), "hello\n");
    assert_mode_owner(&rootfs, "/tmp/id", 0o644, 1000, 1000);
    assert_eq!(read("late.txt"), "copied after the commands\n");
    // Nothing of the sandbox's own: no host resolv.conf, no mount points.
    assert!(!exists_in(&rootfs, "/etc/resolv.conf"));
    assert!(!exists_in(&rootfs, "/proc"));
    // One layer per [[files]] entry and per command, in spec order.
    let layers = r.json()["layers"].as_array().unwrap().len();
    assert_eq!(layers, 4, "{}", r.stdout);
    let config = Layout::open(ws.join("out")).config("t");
    let created_by: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        created_by.iter().any(|c| c.contains("kiln run: [[run]] 2")),
        "{created_by:?}"
    );

    // The same inputs, another cache and one thread: the same digest.
    let again = run(ws
        .kiln()
        .env("RAYON_NUM_THREADS", "1")
        .args(["build", "--json", "--quiet", "-o", "oci:out2", "--cache"])
        .arg(ws.join("other-cache")))
    .ok();
    assert_eq!(again.json()["digest"].as_str().unwrap(), digest);
}

#[test]
fn a_failing_command_names_its_step_and_writes_nothing() {
    let ws = Workspace::new("run-fails");
    busybox_rootfs_with_app(&ws);
    ws.spec(
        r#"
[image]
tags = ["t"]
[[files]]
src = "rootfs/"
dst = "/"
[[run]]
command = "echo half > /half; echo cannot go on >&2; exit 3"
"#,
    );
    expect_failure(
        &ws,
        &["build", "--quiet", "-o", "oci:out"],
        2,
        &[
            "[[run]] 1",
            "exit status: 3",
            "cannot go on",
            "nothing was written",
        ],
    );
}

#[test]
fn network_none_has_only_loopback_and_host_sees_the_hosts_resolver() {
    let ws = Workspace::new("run-network");
    busybox_rootfs_with_app(&ws);
    ws.spec(
        r#"
[image]
tags = ["t"]
[[files]]
src = "rootfs/"
dst = "/"
[[run]]
command = "cat /proc/net/dev > /net-none"
network = "none"
[[run]]
command = "cat /etc/resolv.conf > /resolv 2>/dev/null || echo none > /resolv; echo \"$HTTPS_PROXY\" > /proxy"
[[run]]
command = "echo \"${HTTPS_PROXY:-unset}\" > /proxy-none"
network = "none"
"#,
    );
    run(ws
        .kiln()
        .env("HTTPS_PROXY", "http://proxy.example.invalid:3128")
        .args(["build", "--quiet", "-o", "oci:out"]))
    .ok();
    let rootfs = umoci_unpack(&ws.join("out"), "t", &ws.join("bundle"));
    let net = fs::read_to_string(rootfs.join("net-none")).unwrap();
    let devices: Vec<&str> = net
        .lines()
        .filter_map(|l| l.split_once(':').map(|(d, _)| d.trim()))
        .filter(|d| !d.contains('|'))
        .collect();
    assert_eq!(devices, ["lo"], "{net}");
    let resolv = fs::read_to_string(rootfs.join("resolv")).unwrap();
    match fs::read_to_string("/etc/resolv.conf") {
        Ok(host) => assert_eq!(resolv, host),
        Err(_) => assert_eq!(resolv, "none\n"),
    }
    assert!(!exists_in(&rootfs, "/etc/resolv.conf"));
    // The host's proxy reaches commands with its network, not the image.
    assert_eq!(
        fs::read_to_string(rootfs.join("proxy")).unwrap(),
        "http://proxy.example.invalid:3128\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("proxy-none")).unwrap(),
        "unset\n"
    );
    let config = Layout::open(ws.join("out")).config("t");
    assert!(
        !config.to_string().contains("proxy.example.invalid"),
        "{config}"
    );
}

#[test]
fn commands_for_another_platform_are_refused_before_anything_is_fetched() {
    let ws = Workspace::new("run-foreign");
    let other = if cfg!(target_arch = "x86_64") {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    ws.spec(&format!(
        "[image]\nbase = \"registry.example.invalid/none:1\"\nplatforms = [\"{other}\"]\n[[run]]\ncommand = \"true\"\nlabel = \"Dockerfile line 4: RUN\"\n"
    ));
    expect_failure(
        &ws,
        &["build", "--quiet", "-o", "oci:out"],
        2,
        &["Dockerfile line 4: RUN", other, "does not emulate"],
    );
    // The same from a Dockerfile: the line is named, nothing is fetched.
    ws.write(
        "Dockerfile",
        format!("FROM --platform={other} registry.example.invalid/none:1\nRUN useradd app\n"),
    );
    expect_failure(
        &ws,
        &[
            "build",
            "--dockerfile",
            "Dockerfile",
            "--offline",
            "--quiet",
            "-o",
            "oci:out",
        ],
        2,
        &["Dockerfile line 2: RUN", other, "does not emulate"],
    );
}

#[test]
fn a_dockerfile_runs_its_other_commands_in_the_sandbox() {
    let ws = Workspace::new("run-dockerfile");
    busybox_rootfs_with_app(&ws);
    // The busybox tree as a base image first.
    ws.write(
        "base.toml",
        "[image]\ntags = [\"v1\"]\n[[files]]\nsrc = \"rootfs/\"\ndst = \"/\"\n\
         [[files]]\nsrc = \"home/\"\ndst = \"/home/app\"\nowner = \"1000:1000\"\n",
    );
    ws.write("home/.profile", "PS1=app\n");
    run(ws
        .kiln()
        .args(["build", "base.toml", "--quiet", "-o", "oci:base"]))
    .ok();
    ws.write("app.sh", "#!/bin/sh\necho app\n");
    ws.write(
        "Dockerfile",
        "FROM oci:base:v1\nARG WHO=builder\nENV APP=/srv/app\n\
         RUN mkdir -p $APP && echo \"built by $WHO\" > $APP/who && rm /etc/gone \\\n  && echo 'export APP' >> /home/app/.profile\n\
         COPY app.sh /srv/app/app.sh\n\
         RUN chmod 0750 /srv/app/app.sh && chown 1000:1000 /srv/app/app.sh\n\
         RUN <<EOF\nset -e\necho from a here-document > /srv/app/doc\nEOF\n\
         RUN cat <<'EOT' > /srv/app/conf && sh <<EOF2\n$HOME stays\nEOT\necho second >> /srv/app/conf\nEOF2\n\
         USER app\nWORKDIR /tmp\nRUN id -un > whoami\n\
         HEALTHCHECK --interval=5s --retries=2 CMD /srv/app/app.sh\n\
         CMD [\"/srv/app/app.sh\"]\n",
    );
    let explain = run(ws
        .kiln()
        .args(["build", "--dockerfile", "Dockerfile", "--explain"]))
    .ok();
    assert!(explain.stdout.contains("sandboxed"), "{}", explain.stdout);
    // Here-documents after a command keep the lines as written.
    let v = run(ws
        .kiln()
        .args(["build", "--dockerfile", "Dockerfile", "--explain", "--json"]))
    .ok()
    .json();
    let line_of = |part: &str| {
        v["explain"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| s(e, "instruction").contains(part))
            .unwrap_or_else(|| panic!("{part} in {v}"))["line"]
            .as_u64()
    };
    assert_eq!(line_of("cat <<'EOT' > /srv/app/conf"), Some(12), "{v}");
    assert_eq!(line_of("USER app"), Some(17), "{v}");
    assert_eq!(line_of("WORKDIR /tmp"), Some(18), "{v}");
    let r = run(ws.kiln().args([
        "build",
        "--dockerfile",
        "Dockerfile",
        "--build-arg",
        "WHO=ci",
        "--json",
        "--quiet",
        "-o",
        "oci:out",
    ]))
    .ok();
    assert!(r.json()["digest"].as_str().is_some());
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/app/who")).unwrap(),
        "built by ci\n"
    );
    assert!(!exists_in(&rootfs, "/etc/gone"));
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/app/doc")).unwrap(),
        "from a here-document\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/app/conf")).unwrap(),
        "$HOME stays\nsecond\n"
    );
    assert_mode_owner(&rootfs, "/srv/app/app.sh", 0o750, 1000, 1000);
    // A base file a command changed keeps the base's owner.
    assert_eq!(
        fs::read_to_string(rootfs.join("home/app/.profile")).unwrap(),
        "PS1=app\nexport APP\n"
    );
    assert_mode_owner(&rootfs, "/home/app/.profile", 0o644, 1000, 1000);
    let config = Layout::open(ws.join("out")).config("latest");
    let hc = &config["config"]["Healthcheck"];
    assert_eq!(
        hc["Test"],
        serde_json::json!(["CMD-SHELL", "/srv/app/app.sh"])
    );
    assert_eq!(hc["Interval"], 5_000_000_000u64);
    assert_eq!(hc["Retries"], 2);
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/whoami")).unwrap(),
        "app\n"
    );
    // The image runs: its CMD, in a chroot.
    let out = chroot_run(&rootfs, &["/srv/app/app.sh"]).ok();
    assert_eq!(out.stdout.trim(), "app");
}

#[test]
fn a_spec_can_name_its_dockerfile_and_keep_its_name_and_tags() {
    let ws = Workspace::new("spec-dockerfile");
    ws.write("images/app/hello.txt", "hello\n");
    ws.write(
        "images/app/Dockerfile",
        "FROM scratch\nARG GREETING=hi\nLABEL greeting=$GREETING\nCOPY hello.txt /hello.txt\n",
    );
    ws.spec(
        "[image]\nname = \"registry.example.com/acme/app\"\ntags = [\"1.0\", \"stable\"]\n\
         dockerfile = \"images/app/Dockerfile\"\ncontext = \"images/app\"\n\
         build-args = { GREETING = \"hello\" }\n",
    );
    run(ws.kiln().args(["build", "--quiet", "-o", "oci:out"])).ok();
    let layout = Layout::open(ws.join("out"));
    let mut tags = layout.tags();
    tags.sort();
    assert_eq!(tags, ["1.0", "stable"]);
    assert_eq!(
        layout.config("1.0")["config"]["Labels"]["greeting"],
        "hello"
    );
    let rootfs = umoci_unpack(&ws.join("out"), "1.0", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "hello\n"
    );
    // The spec's own sections cannot be mixed in.
    ws.spec("[image]\ndockerfile = \"images/app/Dockerfile\"\n[apt]\npackages = [\"x\"]\n");
    expect_failure(
        &ws,
        &["build", "--quiet", "-o", "oci:out2"],
        2,
        &["[image] dockerfile", "[apt] cannot be given with it"],
    );
}

#[test]
fn a_directory_argument_builds_its_spec_or_else_its_dockerfile() {
    let ws = Workspace::new("build-dir");
    ws.write("app/hello.txt", "hello\n");
    ws.write(
        "app/Dockerfile",
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    );
    // `kiln build app`, unpacked: the file at `path` in the image.
    let built = |name: &str, path: &str| {
        run(ws
            .kiln()
            .args(["build", "app", "--quiet", "-o"])
            .arg(format!("oci:out-{name}")))
        .ok();
        let rootfs = umoci_unpack(
            &ws.join(format!("out-{name}")),
            "latest",
            &ws.join(format!("bundle-{name}")),
        );
        (fs::read_to_string(rootfs.join(path)).ok(), rootfs)
    };
    // With only a Dockerfile there: the directory is its context.
    assert_eq!(built("df", "hello.txt").0.as_deref(), Some("hello\n"));
    // A kiln.toml in the directory comes first, its paths read from there.
    ws.write(
        "app/kiln.toml",
        "[[files]]\nsrc = \"hello.txt\"\ndst = \"/srv/hello.txt\"\n",
    );
    let (file, rootfs) = built("spec", "srv/hello.txt");
    assert_eq!(file.as_deref(), Some("hello\n"));
    assert!(!rootfs.join("hello.txt").exists());
    // Neither: said so, and nothing written.
    ws.write("empty/README", "nothing to build\n");
    expect_failure(
        &ws,
        &["build", "empty", "--quiet", "-o", "oci:out-none"],
        2,
        &["empty is a directory with neither a kiln.toml nor a Dockerfile"],
    );
}

#[test]
fn add_extracts_a_local_archive_and_copy_writes_a_here_document() {
    let ws = Workspace::new("add-archive");
    ws.write("tools/bin/tool", "#!/bin/sh\necho tool\n");
    ws.write("tools/share/readme", "read me\n");
    // A real gzip'd tar, made by tar itself.
    let mut tar = std::process::Command::new("tar");
    tar.current_dir(ws.join("tools"))
        .args(["--owner=1000", "--group=1000", "-czf"])
        .arg(ws.join("tools.tar.gz"))
        .args(["bin", "share"]);
    assert!(tar.status().unwrap().success());
    fs::remove_dir_all(ws.join("tools")).unwrap();
    ws.write(
        "Dockerfile",
        "FROM scratch\nARG WHO=kiln\nADD tools.tar.gz /opt/tools\n\
         COPY --chmod=0600 <<EOF /etc/motd\nbuilt by $WHO\nEOF\n",
    );
    run(ws.kiln().args([
        "build",
        "--dockerfile",
        "Dockerfile",
        "--quiet",
        "-o",
        "oci:out",
    ]))
    .ok();
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/tools/share/readme")).unwrap(),
        "read me\n"
    );
    assert_mode_owner(&rootfs, "/opt/tools/bin/tool", 0o644, 1000, 1000);
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "built by kiln\n"
    );
    assert_mode_owner(&rootfs, "/etc/motd", 0o600, 0, 0);
    assert!(!exists_in(&rootfs, "/opt/tools/tools.tar.gz"));

    // A hostile archive (a member climbing out) is refused, nothing written.
    let mut b = tar_bytes_with_raw_name("../../escape", b"x");
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&b).unwrap();
        e.finish().unwrap()
    };
    b.clear();
    ws.write("evil.tar.gz", gz);
    ws.write("Dockerfile.evil", "FROM scratch\nADD evil.tar.gz /opt/x\n");
    expect_failure(
        &ws,
        &[
            "build",
            "--dockerfile",
            "Dockerfile.evil",
            "--quiet",
            "-o",
            "oci:evil",
        ],
        2,
        &["evil.tar.gz", "leads outside"],
    );
}

/// A one-member tar whose name is written as given (no sanitising).
fn tar_bytes_with_raw_name(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    let raw = name.as_bytes();
    h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn add_downloads_urls_checks_their_sums_and_keeps_them_for_offline_builds() {
    let ws = Workspace::new("add-url");
    ws.write("srv/tool.cfg", "verbose = true\n");
    let server = FileServer::start(&ws.join("srv"));
    let url = format!("http://127.0.0.1:{}/tool.cfg", server.port);
    let sum = sha256_hex(b"verbose = true\n");
    ws.write(
        "Dockerfile",
        format!("FROM scratch\nADD --checksum=sha256:{sum} {url} /etc/\nADD {url} /opt/copy.cfg\n"),
    );
    let build = |extra: &[&str], out: &str| {
        let mut c = ws.kiln();
        c.args([
            "build",
            "--dockerfile",
            "Dockerfile",
            "--quiet",
            "--json",
            "-o",
        ])
        .arg(format!("oci:{out}"))
        .arg("--cache")
        .arg(ws.join("cache"))
        .args(extra);
        run(&mut c).ok().json()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let digest = build(&[], "out");
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/tool.cfg")).unwrap(),
        "verbose = true\n"
    );
    assert_mode_owner(&rootfs, "/etc/tool.cfg", 0o600, 0, 0);
    assert!(exists_in(&rootfs, "/opt/copy.cfg"));
    // Offline, with the server gone: the kept download, the same image.
    drop(server);
    assert_eq!(build(&["--offline"], "out-offline"), digest);

    // A wrong sum: refused before anything is written.
    let server = FileServer::start(&ws.join("srv"));
    let url = format!("http://127.0.0.1:{}/tool.cfg", server.port);
    ws.write(
        "Dockerfile.bad",
        format!(
            "FROM scratch\nADD --checksum=sha256:{} {url} /etc/x\n",
            "0".repeat(64)
        ),
    );
    expect_failure(
        &ws,
        &[
            "build",
            "--dockerfile",
            "Dockerfile.bad",
            "--quiet",
            "-o",
            "oci:bad",
        ],
        2,
        &["tool.cfg", &sum, "nothing was written"],
    );
}

/// `kiln build --json` of the workspace's spec with the cache `cache` into
/// the OCI layout `out` (both in the workspace).
fn build_in(ws: &Workspace, cache: &str, out: &str, extra: &[&str]) -> serde_json::Value {
    run(ws
        .kiln()
        .env("KILN_CACHE", ws.join(cache))
        .args(["build", "--json", "--quiet", "-o"])
        .arg(format!("oci:{}", ws.join(out).display()))
        .args(extra))
    .ok()
    .json()
}

/// `kiln build --dry-run --json` of the workspace's spec with the cache
/// `cache` (in the workspace).
fn plan_in(ws: &Workspace, cache: &str) -> serde_json::Value {
    run(ws
        .kiln()
        .env("KILN_CACHE", ws.join(cache))
        .args(["build", "--dry-run", "--json"]))
    .ok()
    .json()
}

/// A warm build whose package stages are unchanged takes them whole, with
/// `[[run]]` steps after them as without: from the pins an unlocked build
/// kept, and from a lock; the command over the same layers is remembered,
/// and the image is the cold one.
#[test]
fn run_steps_follow_package_stages_taken_whole() {
    let ws = Workspace::new("run-after-stages");
    ws.write("rootfs/usr/bin/python3.11", "#!/bin/sh\n");
    ws.write("rootfs/usr/lib/python3.11/os.py", "");
    ws.write(
        "rootfs/var/lib/dpkg/status",
        "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n",
    );
    busybox_base(&ws);
    let di = "tiny-1.0.dist-info";
    let members: Vec<(String, Vec<u8>, u32)> = [
        ("tiny/__init__.py".to_string(), "V = 1\n".to_string()),
        (
            format!("{di}/METADATA"),
            "Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\n".into(),
        ),
        (
            format!("{di}/WHEEL"),
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".into(),
        ),
    ]
    .into_iter()
    .map(|(p, d)| (p, d.into_bytes(), 0o644))
    .collect();
    ws.write("wheels/tiny-1.0-py3-none-any.whl", wheel_zip(&members));
    ws.spec(
        "[image]\nbase = \"oci:base:v1\"\ntags = [\"t\"]\n\
         [pip]\npackages = [\"tiny\"]\nfind-links = [\"wheels\"]\nno-index = true\ncompile = false\n\
         [[run]]\ncommand = \"ls /usr/lib/python3.11/site-packages > /listing\"\n",
    );
    let build = |out: &str, extra: &[&str]| build_in(&ws, "cache", out, extra);
    let cold = build("out1", &[]);
    assert_eq!(cold["stages_reused"], 0, "{cold}");
    let rootfs = umoci_unpack(&ws.join("out1"), "t", &ws.join("bundle"));
    assert_eq!(
        fs::read_to_string(rootfs.join("listing")).unwrap(),
        "tiny\ntiny-1.0.dist-info\n"
    );
    assert_eq!(cold["summary"]["commands_run"], 1, "{cold}");
    let kept = build("out2", &[]);
    assert_eq!(kept["stages_reused"], 1, "{kept}");
    // The command over the same layers is remembered, not run.
    assert_eq!(kept["summary"]["commands_run"], 0, "{kept}");
    assert_eq!(kept["summary"]["commands_remembered"], 1, "{kept}");
    assert_eq!(kept["pip"][0]["resolution"], "kept", "{kept}");
    assert_eq!(kept["digest"], cold["digest"]);
    run(ws
        .kiln()
        .env("KILN_CACHE", ws.join("cache"))
        .args(["lock", "--quiet"]))
    .ok();
    // The plan says so too.
    let plan = plan_in(&ws, "cache");
    assert_eq!(plan["platforms"][0]["stages_reused"], true, "{plan}");
    assert_eq!(
        plan["platforms"][0]["commands"],
        serde_json::json!([{"created_by": "kiln run: [[run]] 1", "action": "remembered"}]),
        "{plan}"
    );
    let locked = build("out3", &[]);
    assert_eq!(locked["stages_reused"], 1, "{locked}");
    // (A lock dates the image by itself: the layers are the cold ones.)
    assert_eq!(locked["layers"], cold["layers"], "{locked}");
    // The command's layer follows the stages' each time.
    for b in [&kept, &locked] {
        let created: Vec<&str> = b["summary"]["platforms"][0]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["created_by"].as_str())
            .collect();
        let runs: Vec<&&str> = created
            .iter()
            .filter(|c| c.starts_with("kiln run"))
            .collect();
        assert_eq!(runs.len(), 1, "{b}");
        assert_eq!(created.last(), runs.last().copied(), "{b}");
    }
}

/// A command is remembered as docker caches a RUN: by what it is and all
/// that is under it. Run again, nothing runs and the image is the same;
/// a `[[files]]` layer under a command changed, or the command itself,
/// runs that command and those after it, over the tree with the layers
/// remembered before it; `--no-cache` runs them all.
#[test]
fn a_command_is_remembered_until_what_is_under_it_changes() {
    let ws = Workspace::new("run-remembered");
    busybox_rootfs(&ws);
    ws.write("a.txt", "first\n");
    let spec = |second: &str| {
        format!(
            "[image]\ntags = [\"t\"]\n[[files]]\nsrc = \"rootfs/\"\ndst = \"/\"\n\
             [[run]]\ncommand = \"echo one > /one\"\nafter-files = 1\n\
             [[files]]\nsrc = \"a.txt\"\ndst = \"/a.txt\"\n\
             [[run]]\ncommand = \"cat /one /a.txt > /b{second}\"\n"
        )
    };
    ws.spec(&spec(""));
    let build = |out: &str, extra: &[&str]| {
        let v = build_in(&ws, "cache", out, extra);
        let s = &v["summary"];
        let counts = (
            s["commands_run"].as_u64(),
            s["commands_remembered"].as_u64(),
        );
        let rootfs = umoci_unpack(&ws.join(out), "t", &ws.join(format!("{out}-bundle")));
        let b = fs::read_to_string(rootfs.join("b")).unwrap_or_default();
        (v, counts, b)
    };
    let (cold, counts, b) = build("out1", &[]);
    assert_eq!(counts, (Some(2), Some(0)), "{cold}");
    assert_eq!(b, "one\nfirst\n");
    let (again, counts, _) = build("out2", &[]);
    assert_eq!(counts, (Some(0), Some(2)), "{again}");
    assert_eq!(again["digest"], cold["digest"]);
    // The file under the second command changed: the first is remembered
    // (its /one is in the tree the second runs over), the second runs; the
    // plan says so first, and writes nothing.
    ws.write("a.txt", "second\n");
    let plan = plan_in(&ws, "cache");
    let actions: Vec<&str> = plan["platforms"][0]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["action"].as_str())
        .collect();
    assert_eq!(actions, ["remembered", "run"], "{plan}");
    let (changed, counts, b) = build("out3", &[]);
    assert_eq!(counts, (Some(1), Some(1)), "{changed}");
    assert_eq!(b, "one\nsecond\n");
    // The command changed: it runs; the image is what a cold cache gives.
    ws.spec(&spec(" && echo more >> /b"));
    let (edited, counts, b) = build("out4", &[]);
    assert_eq!(counts, (Some(1), Some(1)), "{edited}");
    assert_eq!(b, "one\nsecond\nmore\n");
    let fresh = build_in(&ws, "cold-cache", "out5", &[]);
    assert_eq!(fresh["digest"], edited["digest"]);
    // --no-cache: every command runs again, to the same image.
    let (forced, counts, _) = build("out6", &["--no-cache"]);
    assert_eq!(counts, (Some(2), Some(0)), "{forced}");
    assert_eq!(forced["digest"], edited["digest"]);
}
