//! The command line people expect: shell completions and the man page,
//! no hidden command ever suggested, `kiln lock --upgrade` that cannot take
//! the spec for a package, `--offline` misses that name the command to
//! run, docker-archive names, and a meaningful, reproducible `created`.

use std::fs;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    let bin = env!("CARGO_BIN_EXE_kiln");
    let r = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{bin}' completions bash) && complete -p kiln && \
             COMP_WORDS=(kiln bu) COMP_CWORD=1 COMP_LINE='kiln bu' COMP_POINT=7 && \
             _kiln kiln bu kiln && echo \"words: ${{COMPREPLY[*]}}\""
        ))
        .run_ok();
    assert!(
        r.stdout.contains("-F _kiln") && r.stdout.contains(" kiln\n"),
        "{}",
        r.describe()
    );
    assert!(r.stdout.contains("words: build"), "{}", r.describe());
    for shell in ["zsh", "fish"] {
        let r = kiln().args(["completions", shell]).run_ok();
        assert!(r.stdout.contains("build"), "{shell}: {}", r.describe());
    }
    kiln()
        .args(["completions", "tcsh"])
        .run()
        .code_is(2)
        .stderr_has("possible values");
}

#[test]
fn man_pages_render_with_man() {
    let ws = Workspace::new("cli-man");
    let page = ws.write("kiln.1", kiln().arg("man").run_ok().stdout);
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .run_ok();
    for word in [
        "kiln-build(1)",
        "kiln-lock(1)",
        "completions",
        "OCI image assembler",
    ] {
        assert!(
            rendered.stdout.contains(word),
            "{word}\n{}",
            rendered.stdout
        );
    }
    // `--dir`, as `make install` uses it: a page per command, `build` with its options.
    kiln().args(["man", "--dir"]).arg(ws.join("man1")).run_ok();
    let pages = list_dir(&ws.join("man1"));
    for p in [
        "kiln.1",
        "kiln-build.1",
        "kiln-lock.1",
        "kiln-cache-export.1",
    ] {
        assert!(pages.iter().any(|x| x == p), "{p} in {pages:?}");
    }
    let build = Command::new("man")
        .arg("-l")
        .arg(ws.join("man1/kiln-build.1"))
        .env("MANPAGER", "cat")
        .run_ok();
    for word in ["kiln-build", "--output", "--tag", "--offline"] {
        assert!(build.stdout.contains(word), "{word}\n{}", build.stdout);
    }
    assert!(!pages.iter().any(|p| p.contains("run-script")), "{pages:?}");
}

#[test]
fn hidden_commands_are_never_suggested() {
    for typo in ["run", "run-script", "__run"] {
        let r = kiln().arg(typo).run().code_is(2);
        assert!(
            r.stderr.contains("unrecognized subcommand") && !r.stderr.contains("__run-script"),
            "{}",
            r.describe()
        );
    }
    // Ordinary commands are still suggested.
    kiln()
        .arg("buld")
        .run()
        .code_is(2)
        .stderr_has("similar subcommand exists: 'build'");
    let help = kiln().arg("--help").run_ok();
    assert!(!help.stdout.contains("__run-script"), "{}", help.stdout);
    let bash = kiln().args(["completions", "bash"]).run_ok();
    assert!(!bash.stdout.contains("__run-script"));
}

const SCRATCH: &str =
    "[image]\ntags = [\"t\"]\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n";

#[test]
fn lock_upgrade_takes_package_names_only() {
    let ws = Workspace::new("cli-upgrade");
    ws.write("t2/hello.txt", "hello\n");
    ws.write("t2/kiln.toml", SCRATCH);
    // The spec path given to --upgrade: refused, nothing written.
    let r = expect_failure(
        &ws,
        &["lock", "--upgrade", "t2/kiln.toml"],
        2,
        &["--upgrade takes package names", "t2/kiln.toml", "--spec"],
    );
    assert!(!r.stderr.contains("not found"), "{}", r.describe());
    assert!(!ws.join("t2/kiln.lock").exists());
    // An existing file not ending in .toml is refused too.
    expect_failure(
        &ws,
        &["lock", "t2/kiln.toml", "--upgrade", "numpy", "t2/hello.txt"],
        2,
        &["`t2/hello.txt` looks like a spec file"],
    );
    // Both forms of the spec at once: a usage error.
    expect_failure(
        &ws,
        &["lock", "t2/kiln.toml", "--spec", "t2/kiln.toml"],
        2,
        &["cannot be used with"],
    );
    // --spec after --upgrade is unambiguous.
    let v = ws
        .kiln()
        .args(["lock", "--json", "--upgrade", "--spec", "t2/kiln.toml"])
        .run_ok()
        .json();
    assert_eq!(v["status"], "written", "{v}");
    let lock = fs::read_to_string(ws.join("t2/kiln.lock")).unwrap();
    assert!(lock.contains("resolved-at = \""), "{lock}");
}

/// The config `created` of TAG in an OCI layout.
fn created(dir: &std::path::Path, tag: &str) -> String {
    s(&Layout::open(dir).config(tag), "created").to_string()
}

/// `resolved-at` of a kiln.lock.
fn resolved_at(lock: &std::path::Path) -> String {
    let v: toml::Value = toml::from_str(&fs::read_to_string(lock).unwrap()).unwrap();
    v["resolved-at"].as_str().unwrap().to_string()
}

#[test]
fn created_is_the_newest_input_date() {
    let ws = Workspace::new("cli-created");
    ws.write("hello.txt", "hello\n");
    ws.spec(SCRATCH);
    // No lock, no base: nothing dates the inputs.
    let plain = build_json(&ws, &["-o", "oci:plain"]);
    assert_eq!(created(&ws.join("plain"), "t"), "1970-01-01T00:00:00Z");

    // A lock: its resolution time, the same for every build from it.
    ws.kiln().args(["lock"]).run_ok();
    let at = resolved_at(&ws.join("kiln.lock"));
    assert!(at.starts_with("20") && at.ends_with('Z'), "{at}");
    let cache_b = unique_dir("cache");
    let a = build_json(&ws, &["-o", "oci:a", "--locked"]);
    let b = ws
        .kiln()
        .env("KILN_CACHE", &cache_b)
        .args(["build", "--json", "-o", "oci:b", "--locked"])
        .run_ok()
        .json();
    assert_eq!(a["digest"], b["digest"], "the same lock, the same image");
    assert_ne!(a["digest"], plain["digest"]);
    assert_eq!(created(&ws.join("a"), "t"), at);
    let ann = Layout::open(ws.join("a")).manifest("t").1;
    assert_eq!(ann["annotations"]["org.opencontainers.image.created"], at);
    // Locking again with the same pins keeps the date (and the image).
    let again = ws
        .kiln()
        .args(["lock", "--json", "--upgrade"])
        .run_ok()
        .json();
    assert_eq!(again["status"], "unchanged", "{again}");
    assert_eq!(resolved_at(&ws.join("kiln.lock")), at);

    // SOURCE_DATE_EPOCH overrides.
    let e = ws
        .kiln()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--json", "-o", "oci:epoch", "--locked"])
        .run_ok()
        .json();
    assert_ne!(e["digest"], a["digest"]);
    assert_eq!(created(&ws.join("epoch"), "t"), "2023-11-14T22:13:20Z");

    // On a base: the base's created when it is the newest input.
    let ws2 = Workspace::new("cli-created-base");
    ws2.write("hello.txt", "on top\n");
    ws2.spec(&format!(
        "[image]\ntags = [\"t\"]\nbase = \"oci:{}:t\"\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/top.txt\"\n",
        ws.join("epoch").display()
    ));
    build_json(&ws2, &["-o", "oci:out"]);
    assert_eq!(created(&ws2.join("out"), "t"), "2023-11-14T22:13:20Z");
}

/// manifest.json of a docker-archive.
fn archive_manifest(path: &std::path::Path) -> Value {
    let r = Command::new("tar")
        .arg("-xOf")
        .arg(path)
        .arg("manifest.json")
        .run_ok();
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn docker_archive_repo_tags_from_the_name_or_tag_option() {
    let ws = Workspace::new("cli-archive");
    ws.write("hello.txt", "hello\n");
    ws.spec(SCRATCH);
    // No name: no RepoTags (as `docker save IMAGE-ID`).
    build_json(&ws, &["-o", "docker-archive:none.tar"]);
    let none = archive_manifest(&ws.join("none.tar"));
    assert!(none[0].get("RepoTags").is_none(), "{none}");
    build_json(
        &ws,
        &[
            "-o",
            "docker-archive:cli.tar",
            "--tag",
            "myapp",
            "-t",
            "registry.example.com:5000/team/app:dev",
        ],
    );
    assert_eq!(
        strs(&archive_manifest(&ws.join("cli.tar"))[0]["RepoTags"]),
        ["myapp:t", "registry.example.com:5000/team/app:dev"]
    );
    let sk = skopeo_inspect(&format!("docker-archive:{}", ws.join("cli.tar").display()));
    assert!(sk["Digest"].is_string(), "{sk}");

    ws.spec(&SCRATCH.replace(
        "[image]\n",
        "[image]\nname = \"registry.example.com/kiln/hello\"\n",
    ));
    build_json(&ws, &["-o", "docker-archive:named.tar"]);
    assert_eq!(
        strs(&archive_manifest(&ws.join("named.tar"))[0]["RepoTags"]),
        ["registry.example.com/kiln/hello:t"]
    );
    // --tag without a docker-archive output: bad input, not silently ignored.
    expect_failure(
        &ws,
        &["build", "-o", "oci:layout", "--tag", "myapp"],
        2,
        &["--tag names docker-archive outputs"],
    );
    // A bad name is bad input, found before anything is written.
    expect_failure(
        &ws,
        &["build", "-o", "docker-archive:bad.tar", "--tag", "Bad Name"],
        2,
        &["--tag `Bad Name`"],
    );
}

#[test]
fn offline_manifest_miss_names_the_commands_to_run() {
    let reg = Registry::shared();
    let repo = unique_repo("cli-offline");
    push_scratch_image(reg, &repo, "v1", &[("a.txt", "a\n")]);
    let ws = Workspace::new("cli-offline");
    let base = reg.docker_ref(&repo, "v1").replace("docker://", "");
    ws.spec(&format!("[image]\nbase = {base:?}\ntags = [\"t\"]\n"));
    expect_failure_with(
        &ws,
        ws.kiln().env("KILN_CACHE", unique_dir("cache")).args([
            "build",
            "--offline",
            "-o",
            "oci:out",
        ]),
        3,
        &["not in the cache", "kiln fetch", "kiln cache import"],
    );
}
