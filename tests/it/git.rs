//! Git sources as build contexts and Dockerfiles: repositories made with
//! the git CLI, served as local paths, `file://` and over smart HTTP by
//! `git http-backend` on loopback; docker's `URL#REF:DIR`, forge page URLs
//! (`…/tree/REF/DIR`, `…/-/tree/REF/DIR`, `…/blob/REF/FILE`), a missing
//! ref, the cache by commit id with the server gone, and credentials.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

/// A repository with two branches and a tag:
/// - `main~1` (`first`): `app/hello.txt` says "v0";
/// - `main` (also tag `v1`, annotated): `app/Dockerfile` copying
///   `app/hello.txt` ("v1") to `/hello.txt`, and `bin/tool` (mode 0755);
/// - `feature/x` (one more commit): `app/hello.txt` says "feature".
///
/// Published under ROOT as `org/repo(.git)` and `group/sub/repo(.git)`.
struct Repo {
    root: PathBuf,
    /// `main~1`: no ref points at it.
    first: String,
    main: String,
    feature: String,
}

fn make_repo(ws: &Workspace) -> Repo {
    let work = ws.join("work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    ws.write(
        "work/app/Dockerfile",
        "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY --chmod=0755 tool.sh /usr/bin/tool\n",
    );
    ws.write_mode("work/app/tool.sh", "#!/bin/sh\necho tool\n", 0o755);
    ws.write("work/README", "a test repository\n");
    ws.write("work/app/hello.txt", "v0\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "v0"]);
    let first = git(&work, &["rev-parse", "HEAD"]).stdout.trim().to_string();
    ws.write("work/app/hello.txt", "v1\n");
    git(&work, &["commit", "--quiet", "-am", "v1"]);
    git(&work, &["tag", "-a", "v1", "-m", "release 1"]);
    git(&work, &["checkout", "--quiet", "-b", "feature/x"]);
    ws.write("work/app/hello.txt", "feature\n");
    git(&work, &["commit", "--quiet", "-am", "feature"]);
    git(&work, &["checkout", "--quiet", "main"]);
    let rev = |r: &str| git(&work, &["rev-parse", r]).stdout.trim().to_string();
    let (main, feature) = (rev("main"), rev("feature/x"));
    let root = ws.join("srv");
    publish_repo(&work, &root, "org/repo");
    publish_repo(&work, &root, "group/sub/repo");
    Repo {
        root,
        first,
        main,
        feature,
    }
}

/// `kiln build CONTEXT [ARGS] -o oci:NAME --json` with CACHE as KILN_CACHE.
fn build_git(ws: &Workspace, cache: &Path, context: &str, args: &[&str], name: &str) -> Value {
    let out = format!("oci:{name}");
    let r = ws
        .kiln()
        .env("KILN_CACHE", cache)
        .args(["build", "--json", context])
        .args(args)
        .args(["-o", &out])
        .run_ok();
    let v = r.json();
    check_build_json(&v);
    v
}

/// `/hello.txt` of the image in WS/NAME, through umoci.
fn hello_in(ws: &Workspace, name: &str) -> String {
    let rootfs = umoci_unpack(&ws.join(name), "latest", &ws.join(format!("{name}-bundle")));
    fs::read_to_string(rootfs.join("hello.txt")).unwrap()
}

fn fetched_commit(v: &Value) -> String {
    v["dockerfile"]["git"][0]["commit"]
        .as_str()
        .unwrap_or_else(|| panic!("no fetched commit in {v}"))
        .to_string()
}

#[test]
fn git_context_from_local_path_and_file_url() {
    let ws = Workspace::new("git-local");
    let repo = make_repo(&ws);
    let cache = ws.join("cache");
    let bare = repo.root.join("org/repo.git");

    let url = format!("file://{}#v1:app", bare.display());
    let v = build_git(&ws, &cache, &url, &[], "by-url");
    assert_eq!(
        fetched_commit(&v),
        repo.main,
        "the tag peels to main's commit"
    );
    assert_eq!(hello_in(&ws, "by-url"), "v1\n");
    let rootfs = ws.join("by-url-bundle/rootfs");
    assert_mode_owner(&rootfs, "/usr/bin/tool", 0o755, 0, 0);

    // --explain works on a Git context too (no --dockerfile needed).
    let r = ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .args(["build", &url, "--explain"])
        .run_ok();
    assert!(
        r.stdout.contains("COPY hello.txt /hello.txt"),
        "{}",
        r.describe()
    );

    let path = format!("{}#feature/x:app", bare.display());
    let v = build_git(&ws, &cache, &path, &[], "by-path");
    assert_eq!(fetched_commit(&v), repo.feature);
    assert_eq!(hello_in(&ws, "by-path"), "feature\n");

    // The tree in the cache is named by the commit and has git's modes.
    let tree = cache.join("git-trees-v1").join(&repo.main);
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(tree.join(p)).unwrap().permissions().mode() & 0o7777
    };
    assert_eq!(mode("app/tool.sh"), 0o755);
    assert_eq!(mode("app/hello.txt"), 0o644);
    assert!(
        !tree.join(".git").exists(),
        "no repository metadata in the tree"
    );
}

#[test]
fn git_context_over_smart_http() {
    let ws = Workspace::new("git-http");
    let repo = make_repo(&ws);
    let cache = ws.join("cache");
    let server = GitServer::start(&repo.root);

    // docker's syntax: branch, tag, commit id, each with a subdirectory.
    let v = build_git(
        &ws,
        &cache,
        &format!("{}#main:app", server.url("org/repo.git")),
        &[],
        "branch",
    );
    assert_eq!(fetched_commit(&v), repo.main);
    assert_eq!(hello_in(&ws, "branch"), "v1\n");
    let v = build_git(
        &ws,
        &cache,
        &format!("{}#v1:app", server.url("org/repo.git")),
        &[],
        "tag",
    );
    assert_eq!(fetched_commit(&v), repo.main);
    let by_id = format!("{}#{}:app", server.url("org/repo.git"), repo.feature);
    let v = build_git(&ws, &cache, &by_id, &[], "commit");
    assert_eq!(fetched_commit(&v), repo.feature);
    assert_eq!(hello_in(&ws, "commit"), "feature\n");

    // Each fetch asked for one commit, without history (protocol v2's `deepen 1`).
    let posts = server.posts.lock().unwrap().clone();
    let fetches: Vec<String> = posts
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .filter(|b| b.contains("command=fetch"))
        .collect();
    assert!(!fetches.is_empty(), "no fetch request was seen");
    for f in &fetches {
        assert!(f.contains("deepen 1"), "a fetch without depth 1: {f}");
    }

    // A commit no ref points at (fetched by id, shallow).
    let old = format!("{}#{}:app", server.url("org/repo.git"), repo.first);
    let v = build_git(&ws, &cache, &old, &[], "old");
    assert_eq!(fetched_commit(&v), repo.first);
    assert_eq!(hello_in(&ws, "old"), "v0\n");

    // Forge page URLs: a ref with a slash (split by the remote's refs) and
    // a GitLab-style nested group; a blob URL names the Dockerfile itself.
    let v = build_git(
        &ws,
        &cache,
        &server.url("org/repo/tree/feature/x/app"),
        &[],
        "github",
    );
    assert_eq!(fetched_commit(&v), repo.feature);
    assert_eq!(hello_in(&ws, "github"), "feature\n");
    let v = build_git(
        &ws,
        &cache,
        &server.url("group/sub/repo/-/tree/main/app"),
        &[],
        "gitlab",
    );
    assert_eq!(fetched_commit(&v), repo.main);
    assert_eq!(hello_in(&ws, "gitlab"), "v1\n");
    let blob = server.url("org/repo/blob/main/app/Dockerfile");
    let v = build_git(&ws, &cache, &blob, &[], "blob");
    assert_eq!(fetched_commit(&v), repo.main);
    // `--dockerfile URL` with the same file.
    let v = build_git(&ws, &cache, "--dockerfile", &[&blob], "df-url");
    assert_eq!(fetched_commit(&v), repo.main);
    assert_eq!(hello_in(&ws, "df-url"), "v1\n");

    // The same commit gives the same image whatever URL named it.
    let digest = |n: &str| Layout::open(ws.join(n)).manifest("latest").0;
    assert_eq!(digest("branch"), digest("gitlab"));
    assert_eq!(digest("commit"), digest("github"));

    // A missing ref: a clear input error naming it, nothing written.
    let missing = format!("{}#nope:app", server.url("org/repo.git"));
    expect_failure_with(
        &ws,
        ws.kiln()
            .env("KILN_CACHE", &cache)
            .args(["build", &missing, "-o", "oci:never"]),
        2,
        &["no branch, tag or commit `nope`", "/org/repo.git"],
    );
    expect_failure_with(
        &ws,
        ws.kiln().env("KILN_CACHE", &cache).args([
            "build",
            &format!("{}#main:nodir", server.url("org/repo.git")),
            "-o",
            "oci:never",
        ]),
        2,
        &["`nodir` is not in commit"],
    );

    // With the server gone, a commit id already fetched needs no network.
    let server_url = server.url("org/repo.git");
    drop(server);
    let v = build_git(&ws, &cache, &by_id, &[], "offline");
    assert_eq!(fetched_commit(&v), repo.feature);
    assert_eq!(digest("offline"), digest("commit"));
    let v = build_git(&ws, &cache, &by_id, &["--offline"], "offline-flag");
    assert_eq!(fetched_commit(&v), repo.feature);
    assert_eq!(digest("offline-flag"), digest("commit"));
    // A branch must be resolved on the remote: offline, a clear refusal.
    let branch = format!("{}#main:app", server_url);
    expect_failure_with(
        &ws,
        ws.kiln().env("KILN_CACHE", &cache).args([
            "build",
            "--offline",
            &branch,
            "-o",
            "oci:never",
        ]),
        3,
        &["offline", "is not in the cache"],
    );
}

#[test]
fn git_private_repo_credentials_never_shown() {
    let ws = Workspace::new("git-private");
    let repo = make_repo(&ws);
    let server = GitServer::start_private(&repo.root);
    let url = format!("{}#main:app", server.url("org/repo.git"));

    let r = expect_failure_with(
        &ws,
        ws.kiln()
            .env_remove("KILN_GIT_PASSWORD")
            .env_remove("KILN_GIT_TOKEN")
            .args(["build", &url, "-o", "oci:never"]),
        4,
        &["authentication failed", "KILN_GIT_USERNAME"],
    );
    assert!(!r.stderr.contains(GIT_PASSWORD));

    // gitoxide sends credentials only over https: a clear refusal, and the
    // password never shows.
    let r = expect_failure_with(
        &ws,
        ws.kiln()
            .env("KILN_GIT_USERNAME", GIT_USER)
            .env("KILN_GIT_PASSWORD", GIT_PASSWORD)
            .args(["build", &url, "-o", "oci:never"]),
        4,
        &["only over https"],
    );
    assert!(!r.stderr.contains(GIT_PASSWORD), "{}", r.describe());

    // Credentials in the URL itself are never printed.
    let inline = format!(
        "http://{GIT_USER}:{GIT_PASSWORD}@127.0.0.1:{}/org/repo.git#nope",
        server.port
    );
    let r = expect_failure(
        &ws,
        &["build", &inline, "-o", "oci:never"],
        4,
        &["***@127.0.0.1"],
    );
    assert!(!r.stderr.contains(GIT_PASSWORD), "{}", r.describe());
}

/// `kiln build --requirements URL`: a forge file page's address, the file
/// fetched at its commit and installed on `--base` with the wheel kept
/// beside it (`--find-links wheels`); a local file works the same way.
#[test]
fn requirements_from_a_git_url_install_on_a_base() {
    let ws = Workspace::new("git-requirements");
    let work = ws.join("env-work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    tinywheel_env(&ws, "env-work/envs/py");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "env"]);
    let commit = git(&work, &["rev-parse", "HEAD"]).stdout.trim().to_string();
    let root = ws.join("env-srv");
    publish_repo(&work, &root, "org/envs");
    let server = GitServer::start(&root);
    python_base(&ws);
    let base = format!("oci:{}:v1", ws.join("py").display());

    let url = server.url("org/envs/blob/main/envs/py/requirements.txt");
    let r = run(ws.kiln().args([
        "build",
        "--requirements",
        &url,
        "--base",
        &base,
        "--json",
        "--quiet",
        "-o",
        "oci:out",
    ]))
    .ok();
    let installed = strs(&r.json()["pip"][0]["installed"]);
    assert!(
        installed.iter().any(|p| p.starts_with("tinywheel ")),
        "{installed:?}"
    );
    let run_stderr = run(ws.kiln().args([
        "build",
        "--requirements",
        &url,
        "--base",
        &base,
        "-o",
        "oci:out2",
    ]))
    .ok()
    .stderr;
    assert!(run_stderr.contains(&commit), "{run_stderr}");
    let rootfs = umoci_unpack(&ws.join("out"), "latest", &ws.join("bundle"));
    let mut found = false;
    for e in walkdir_files(&rootfs) {
        found |= e.ends_with("tinywheel/__init__.py");
    }
    assert!(found, "tinywheel is not in the image");

    // The same from the local file; without --base, a clear error.
    let local = work.join("envs/py/requirements.txt");
    run(ws.kiln().args([
        "build",
        "--requirements",
        local.to_str().unwrap(),
        "--base",
        &base,
        "--quiet",
        "-o",
        "oci:out3",
    ]))
    .ok();
    expect_failure(
        &ws,
        &[
            "build",
            "--requirements",
            local.to_str().unwrap(),
            "-o",
            "oci:out4",
        ],
        2,
        &["--requirements needs --base"],
    );

    // `kiln lock --requirements URL` pins the commit (in
    // ./requirements.txt.kiln.lock); a locked build takes it after main
    // moved on to a requirements file that asks for a missing version.
    run(ws
        .kiln()
        .args(["lock", "--requirements", &url, "--base", &base]))
    .ok();
    let lock = fs::read_to_string(ws.join("requirements.txt.kiln.lock")).unwrap();
    assert!(lock.contains(&commit) && lock.contains("[[git]]"), "{lock}");
    ws.write(
        "env-work/envs/py/requirements.txt",
        "--no-index\n--find-links wheels\ntinywheel==9.9\n",
    );
    git(
        &work,
        &["commit", "--quiet", "-am", "a version that is not there"],
    );
    let bare = root.join("org/envs.git");
    git(&work, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
    let r = run(ws.kiln().args([
        "build",
        "--requirements",
        &url,
        "--base",
        &base,
        "--locked",
        "--json",
        "-o",
        "oci:locked",
    ]))
    .ok();
    assert_eq!(r.json()["lock"], "used");
    assert!(strs(&r.json()["pip"][0]["installed"]).contains(&"tinywheel 1.0".to_string()));
}

fn walkdir_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walkdir_files(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// kiln.lock pins a Git context at its commit: later builds fetch that
/// commit although the branch moved, `kiln lock --upgrade` moves the pin,
/// and `--locked` without a pin is refused before anything is fetched.
#[test]
fn git_commits_are_pinned_in_the_lock() {
    let ws = Workspace::new("git-lock");
    let repo = make_repo(&ws);
    let cache = ws.join("cache");
    let bare = repo.root.join("org/repo.git");
    let url = format!("file://{}#main:app", bare.display());

    let r = ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .args(["build", &url, "--locked", "-o", "oci:none"])
        .run()
        .code_is(2);
    assert!(
        r.stderr
            .contains("Dockerfile.kiln.lock records no commit for this Git source"),
        "{}",
        r.describe()
    );
    assert!(!ws.join("none").exists());
    assert!(!cache.join("git-trees-v1").join(&repo.main).exists());

    let r = ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .args(["lock", &url, "--json"])
        .run_ok();
    assert_eq!(r.json()["status"], "written", "{}", r.describe());
    let lock_path = ws.join("Dockerfile.kiln.lock");
    let lock: toml::Value = toml::from_str(&fs::read_to_string(&lock_path).unwrap()).unwrap();
    let pins = lock["git"].as_array().unwrap();
    assert_eq!(pins.len(), 1, "{lock}");
    assert_eq!(pins[0]["commit"].as_str(), Some(repo.main.as_str()));
    assert_eq!(pins[0]["path"].as_str(), Some("app"));
    assert!(pins[0]["url"].as_str().unwrap().ends_with("#main:app"));

    // main moves on.
    let work = ws.join("work");
    ws.write("work/app/hello.txt", "v2\n");
    git(&work, &["commit", "--quiet", "-am", "v2"]);
    git(&work, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
    let moved = git(&work, &["rev-parse", "main"]).stdout.trim().to_string();

    // Locked or not, a build takes the pinned commit.
    let v = build_git(&ws, &cache, &url, &["--locked"], "locked");
    assert_eq!(fetched_commit(&v), repo.main);
    assert_eq!(v["lock"], "used");
    assert_eq!(hello_in(&ws, "locked"), "v1\n");
    let v = build_git(&ws, &cache, &url, &[], "auto");
    assert_eq!(fetched_commit(&v), repo.main);
    assert_eq!(hello_in(&ws, "auto"), "v1\n");
    // Offline too: the pinned tree is in the cache.
    let v = build_git(&ws, &cache, &url, &["--locked", "--offline"], "offline");
    assert_eq!(fetched_commit(&v), repo.main);

    // `kiln lock` keeps the pin; `--upgrade` resolves the branch again.
    let r = ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .args(["lock", &url, "--json"])
        .run_ok();
    assert_eq!(r.json()["status"], "unchanged");
    let r = ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .args(["lock", &url, "--upgrade", "--json"])
        .run_ok();
    assert_eq!(r.json()["status"], "updated", "{}", r.describe());
    let lock = fs::read_to_string(&lock_path).unwrap();
    assert!(
        lock.contains(&moved) && !lock.contains(&repo.main),
        "{lock}"
    );
    let v = build_git(&ws, &cache, &url, &["--locked"], "upgraded");
    assert_eq!(fetched_commit(&v), moved);
    assert_eq!(hello_in(&ws, "upgraded"), "v2\n");

    // `--lockfile` puts the lock elsewhere.
    ws.kiln()
        .env("KILN_CACHE", &cache)
        .args(["lock", &url, "--lockfile", "locks/app.lock"])
        .run_ok();
    assert!(ws.join("locks/app.lock").is_file());
}
