//! Workspaces (`kiln plan`, `kiln ci generate`): a Git repository with
//! three science members (`torch` builds on `base` via `target:`, `base`
//! on a registry reference, `legacy` on scratch), two compat dirs (`new`
//! includes `common`) and releases 9.0 and 10.0 of one image. Plans are
//! checked for each kind of change; generated pipelines are validated
//! against GitLab's CI schema and GitHub's workflow schema with Python's
//! `jsonschema` (`make spdx-validator` installs it into target/spdx-venv).

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::*;

const REGISTRY: &str = "registry.example.invalid/team";

fn git(dir: &Path, args: &[&str]) -> String {
    let r = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kiln test",
            "-c",
            "user.email=kiln@example.invalid",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .run();
    assert!(r.status.success(), "git {args:?}\n{}", r.describe());
    r.stdout.trim().to_string()
}

/// The repository, committed once.
fn repo() -> Workspace {
    let ws = Workspace::new("ws-git");
    ws.write(
        "kiln-workspace.toml",
        format!(
            "[workspace]\nmembers = [\"science/*\"]\ncompat = [\"compat/*\"]\nregistry = \"{REGISTRY}\"\n"
        ),
    );
    ws.write(
        "science/base/kiln.toml",
        "[image]\nbase = \"registry.example.invalid/debian:12\"\n\n[[files]]\nsrc = \"data\"\ndst = \"/opt/data\"\n",
    );
    ws.write("science/base/data/table.csv", "a,b\n1,2\n");
    ws.write(
        "science/torch/kiln.toml",
        "[image]\nbase = \"target:base\"\n\n[[files]]\nsrc = \"model.txt\"\ndst = \"/opt/model.txt\"\n\n\
         [release]\nimage = \"stack\"\nversion = \"10.0\"\ncompat = \"new\"\n",
    );
    ws.write("science/torch/model.txt", "weights v1\n");
    ws.write(
        "science/legacy/kiln.toml",
        "[[files]]\nsrc = \"legacy.txt\"\ndst = \"/legacy.txt\"\n\n\
         [release]\nimage = \"stack\"\nversion = \"9.0\"\ncompat = \"common\"\n",
    );
    ws.write("science/legacy/legacy.txt", "old\n");
    ws.write(
        "compat/common/kiln-compat.toml",
        "[config]\nenv = { LANG = \"C.UTF-8\" }\n\n[[files]]\nsrc = \"profile.sh\"\ndst = \"/etc/profile.d/kiln.sh\"\n",
    );
    ws.write("compat/common/profile.sh", "export A=1\n");
    ws.write(
        "compat/new/kiln-compat.toml",
        "includes = [\"common\"]\n\n[config]\nlabels = { \"org.example.compat\" = \"new\" }\n",
    );
    ws.write("README.md", "a workspace\n");
    git(ws.path(), &["init", "-q"]);
    commit(&ws, "initial");
    ws
}

fn commit(ws: &Workspace, message: &str) {
    git(ws.path(), &["add", "-A"]);
    git(ws.path(), &["commit", "-q", "-m", message]);
}

fn plan(ws: &Workspace, since: Option<&str>) -> Value {
    let mut c = ws.kiln();
    c.args(["plan", "--json"]);
    if let Some(s) = since {
        c.args(["--since", s]);
    }
    c.run_ok().json()
}

/// (target, kind, needs) of each build, in plan order.
fn builds(plan: &Value) -> Vec<(String, String, Vec<String>)> {
    plan["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["target"].as_str().unwrap().to_string(),
                b["kind"].as_str().unwrap().to_string(),
                b["needs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn b(target: &str, kind: &str, needs: &[&str]) -> (String, String, Vec<String>) {
    (
        target.to_string(),
        kind.to_string(),
        needs.iter().map(|s| s.to_string()).collect(),
    )
}

#[test]
fn workspace_plan_without_since_has_every_member() {
    let ws = repo();
    let p = plan(&ws, None);
    assert_eq!(
        builds(&p),
        [
            b("base", "science", &[]),
            b("legacy", "release", &[]),
            b("torch", "release", &["base"]),
        ]
    );
    let short = git(ws.path(), &["rev-parse", "--short", "HEAD"]);
    let torch = &p["builds"][2];
    assert_eq!(torch["image"], format!("{REGISTRY}/rel/stack"));
    let content = format!("in-{}", &torch["input_hash"].as_str().unwrap()[..16]);
    assert_eq!(
        torch["tags"],
        json!(["10.0", format!("10.0-1-{short}"), content])
    );
    assert_eq!(torch["compat"], json!(["common", "new"]));
    let base = &p["builds"][0];
    assert_eq!(base["image"], format!("{REGISTRY}/sci/base"));
    assert_eq!(base["tags"][1], format!("1-{short}"));
    assert_eq!(base["input_hash"].as_str().unwrap().len(), 64);
    assert_eq!(p["summary"]["science_builds"], 3);
    assert_eq!(p["summary"]["compat_rebases"], 0);
    // The same plan every time.
    assert_eq!(plan(&ws, None), p);
    // Text: build order, every image with its tags, the summary line.
    let text = ws.kiln().args(["plan", "-v"]).run_ok().stdout;
    let pos = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} not in\n{text}"));
    assert!(
        pos("science  base") < pos("release  legacy")
            && pos("release  legacy") < pos("release  torch")
    );
    pos(&format!("{REGISTRY}/rel/stack:10.0-1-{short}"));
    pos(&format!("{REGISTRY}/rel/stack:9.0\n"));
    pos("input hash ");
    assert!(
        text.ends_with("3 science builds, 0 compat rebases\n"),
        "{text}"
    );
}

#[test]
fn workspace_plan_follows_changes() {
    let ws = repo();
    // Nothing changed since HEAD.
    let p = plan(&ws, Some("HEAD"));
    assert_eq!(builds(&p), []);
    assert_eq!(p["summary"]["total"], 0);
    // A file outside every member's inputs.
    ws.write("README.md", "more\n");
    assert_eq!(builds(&plan(&ws, Some("HEAD"))), []);

    // A science leaf (working tree, uncommitted).
    ws.write("science/torch/model.txt", "weights v2\n");
    assert_eq!(
        builds(&plan(&ws, Some("HEAD"))),
        [b("torch", "release", &[])]
    );
    commit(&ws, "torch v2");
    assert_eq!(builds(&plan(&ws, Some("HEAD"))), []);
    assert_eq!(
        builds(&plan(&ws, Some("HEAD~1"))),
        [b("torch", "release", &[])]
    );

    // A middle science member (a new, untracked file in its [[files]] dir):
    // it and what builds on it.
    ws.write("science/base/data/more.csv", "c\n");
    let p = plan(&ws, Some("HEAD"));
    assert_eq!(
        builds(&p),
        [b("base", "science", &[]), b("torch", "release", &["base"])]
    );
    assert_eq!(p["summary"]["science_builds"], 2);
    commit(&ws, "more data");

    // Only a compat include: every release using it is a rebase.
    ws.write("compat/common/profile.sh", "export A=2\n");
    let p = plan(&ws, Some("HEAD"));
    assert_eq!(
        builds(&p),
        [b("legacy", "rebase", &[]), b("torch", "rebase", &[])]
    );
    assert_eq!(p["summary"]["science_builds"], 0);
    assert_eq!(p["summary"]["compat_rebases"], 2);
    let text = ws.kiln().args(["plan", "--since", "HEAD"]).run_ok().stdout;
    assert!(
        text.contains("reuses ") && text.ends_with("0 science builds, 2 compat rebases\n"),
        "{text}"
    );
    // Only the compat dir of one release.
    commit(&ws, "profile");
    ws.write(
        "compat/new/kiln-compat.toml",
        "includes = [\"common\"]\n\n[config]\nlabels = { \"org.example.compat\" = \"newer\" }\n",
    );
    assert_eq!(
        builds(&plan(&ws, Some("HEAD"))),
        [b("torch", "rebase", &[])]
    );
}

#[test]
fn workspace_plan_errors() {
    // Not a Git repository.
    // (GIT_CEILING_DIRECTORIES: the scratch space may itself lie in a
    // repository, which git would otherwise find.)
    let ws = repo();
    std::fs::remove_dir_all(ws.join(".git")).unwrap();
    let r = ws
        .kiln()
        .env("GIT_CEILING_DIRECTORIES", ws.path().parent().unwrap())
        .arg("plan")
        .run()
        .code_is(2);
    assert!(
        r.stderr.contains("not a git repository"),
        "{}",
        r.describe()
    );
    // An unknown ref.
    let ws = repo();
    expect_failure(
        &ws,
        &["plan", "--since", "no-such-ref"],
        2,
        &["no-such-ref", "not a commit"],
    );
    // No workspace file.
    let plain = Workspace::new("ws-none");
    expect_failure(&plain, &["plan"], 2, &["kiln-workspace.toml"]);
    // A plain build of a member on `target:` says what to do instead.
    let r = ws
        .kiln()
        .current_dir(ws.join("science/torch"))
        .args(["build", "--output", "oci:out"])
        .run()
        .code_is(2);
    assert!(
        r.stderr
            .contains("base `target:base` is a workspace member; build it with the workspace"),
        "{}",
        r.describe()
    );
}

// ---- CI pipelines ----------------------------------------------------------

fn generate(ws: &Workspace, format: &str, since: Option<&str>, file: &str) -> Value {
    let mut c = ws.kiln();
    c.args(["ci", "generate", "--format", format]);
    if let Some(s) = since {
        c.args(["--since", s]);
    }
    let out = c.run_ok().stdout;
    let path = ws.join(file);
    std::fs::write(&path, &out).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// The GitLab jobs' `needs:` are the plan's graph.
#[track_caller]
fn assert_gitlab_needs(doc: &Value, plan: &Value) {
    let mut releases = Vec::new();
    for (target, kind, needs) in builds(plan) {
        let job = &doc[format!("build:{target}")];
        assert_eq!(
            job["script"],
            json!([format!("kiln build --workspace --only {target} --push")])
        );
        let want: Vec<String> = needs.iter().map(|n| format!("build:{n}")).collect();
        assert_eq!(job["needs"], json!(want), "needs of {target}");
        if kind != "science" {
            releases.push(format!("build:{target}"));
        }
    }
    let jobs = doc
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("build:"))
        .count();
    assert_eq!(jobs, builds(plan).len());
    if releases.is_empty() {
        assert!(doc.get("move-tags").is_none());
    } else {
        assert_eq!(doc["move-tags"]["needs"], json!(releases));
    }
}

#[test]
fn workspace_ci_pipelines_validate() {
    let ws = repo();
    // Everything.
    let all = plan(&ws, None);
    let gl = generate(&ws, "gitlab", None, "all.gitlab-ci.yml");
    assert_valid("gitlab-ci.json", &ws.join("all.gitlab-ci.yml"));
    assert_gitlab_needs(&gl, &all);
    assert_eq!(gl["build:torch"]["needs"], json!(["build:base"]));
    let gh = generate(&ws, "github", None, "all.matrix.json");
    assert_eq!(gh["depth"], 2);
    let level = |i: usize| -> Vec<String> {
        gh["levels"][i]["include"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["target"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(level(0), ["base", "legacy"]);
    assert_eq!(level(1), ["torch"]);
    generate(&ws, "github-workflow", None, "all.workflow.yml");
    assert_valid("github-workflow.json", &ws.join("all.workflow.yml"));
    // The matrix embedded by hand the way the docs say (fromJSON of a
    // level from a planning job's output) validates too.
    let mut jobs = serde_json::Map::new();
    jobs.insert(
        "plan".into(),
        json!({
            "runs-on": "ubuntu-latest",
            "outputs": { "matrix": "${{ steps.plan.outputs.matrix }}" },
            "steps": [
                { "uses": "actions/checkout@v4", "with": { "fetch-depth": 0 } },
                { "id": "plan", "run": "echo \"matrix=$(kiln ci generate --format github --since origin/main)\" >> \"$GITHUB_OUTPUT\"" }
            ]
        }),
    );
    for i in 0..2 {
        let needs = if i == 0 {
            json!(["plan"])
        } else {
            json!(["plan", format!("level-{}", i - 1)])
        };
        jobs.insert(
            format!("level-{i}"),
            json!({
                "needs": needs,
                "runs-on": "ubuntu-latest",
                "strategy": { "matrix": format!("${{{{ fromJSON(needs.plan.outputs.matrix).levels[{i}] }}}}") },
                "steps": [{ "run": "${{ matrix.command }}" }]
            }),
        );
    }
    std::fs::write(
        ws.join("fromjson.workflow.yml"),
        serde_json::to_string_pretty(&json!({ "on": "push", "jobs": jobs })).unwrap(),
    )
    .unwrap();
    assert_valid("github-workflow.json", &ws.join("fromjson.workflow.yml"));
    // The plan format is the plan.
    assert_eq!(generate(&ws, "json", None, "plan.json"), all);

    // A middle member changed: its dependent needs it.
    ws.write("science/base/data/table.csv", "a,b\n3,4\n");
    let p = plan(&ws, Some("HEAD"));
    let gl = generate(&ws, "gitlab", Some("HEAD"), "mid.gitlab-ci.yml");
    assert_valid("gitlab-ci.json", &ws.join("mid.gitlab-ci.yml"));
    assert_gitlab_needs(&gl, &p);
    assert!(gl.get("build:legacy").is_none());
    commit(&ws, "data");

    // Only compat: rebases, no needs, the tag job after them.
    ws.write("compat/common/profile.sh", "export A=3\n");
    let p = plan(&ws, Some("HEAD"));
    let gl = generate(&ws, "gitlab", Some("HEAD"), "compat.gitlab-ci.yml");
    assert_valid("gitlab-ci.json", &ws.join("compat.gitlab-ci.yml"));
    assert_gitlab_needs(&gl, &p);
    assert_eq!(gl["build:torch"]["variables"]["KILN_KIND"], "rebase");
    commit(&ws, "compat");

    // Nothing: one no-op job; an empty matrix set and a workflow that still validates.
    let gl = generate(&ws, "gitlab", Some("HEAD"), "none.gitlab-ci.yml");
    assert_valid("gitlab-ci.json", &ws.join("none.gitlab-ci.yml"));
    let mut keys: Vec<&String> = gl.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["nothing-to-build", "stages"]);
    let gh = generate(&ws, "github", Some("HEAD"), "none.matrix.json");
    assert_eq!(gh, json!({ "depth": 0, "levels": [] }));
    generate(&ws, "github-workflow", Some("HEAD"), "none.workflow.yml");
    assert_valid("github-workflow.json", &ws.join("none.workflow.yml"));
}

/// The repository of `repo()` on real images: `base` and `legacy` on a
/// busybox image in the test registry, pushing there.
fn build_repo(reg: &Registry) -> Workspace {
    let bb = Workspace::new("ws-busybox");
    busybox_rootfs(&bb);
    bb.spec(&format!(
        "[image]\nname = \"{}\"\ntags = [\"1\"]\n\n[[files]]\nsrc = \"rootfs\"\ndst = \"/\"\n",
        reg.repo("base/busybox")
    ));
    bb.kiln().args(["build", "--push", "--no-sbom"]).run_ok();
    let ws = repo();
    let busybox = reg.repo("base/busybox:1");
    ws.write(
        "kiln-workspace.toml",
        format!(
            "[workspace]\nmembers = [\"science/*\"]\ncompat = [\"compat/*\"]\nregistry = \"{}\"\n",
            reg.repo("team")
        ),
    );
    for member in ["base", "legacy"] {
        let path = format!("science/{member}/kiln.toml");
        let text = std::fs::read_to_string(ws.join(&path)).unwrap();
        let text = text.replace("registry.example.invalid/debian:12", &busybox);
        let text = match member {
            "legacy" => format!("[image]\nbase = \"{busybox}\"\n\n{text}"),
            _ => text,
        };
        ws.write(&path, text);
    }
    commit(&ws, "on the test registry");
    ws
}

fn ws_build(ws: &Workspace, cache: &Path, args: &[&str]) -> Value {
    let mut c = ws.kiln();
    c.env("KILN_CACHE", cache)
        .args(["build", "--workspace", "--push", "--json"])
        .args(args);
    c.run_ok().json()
}

/// (target, kind, science status, release status) of each member built.
fn outcomes(v: &Value) -> Vec<(String, String, String, String)> {
    let status = |x: &Value| x["status"].as_str().unwrap_or("-").to_string();
    v["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["target"].as_str().unwrap().to_string(),
                b["kind"].as_str().unwrap().to_string(),
                status(&b["science"]),
                status(&b["release"]),
            )
        })
        .collect()
}

fn o(t: &str, k: &str, s: &str, r: &str) -> (String, String, String, String) {
    (t.into(), k.into(), s.into(), r.into())
}

#[test]
fn workspace_build_pushes_reuses_and_rebases() {
    let reg = Registry::start(None);
    let ws = build_repo(&reg);
    let cache = unique_dir("ws-cache");
    let team = reg.repo("team");

    // Everything: science images, releases, then the moving tags.
    let v = ws_build(&ws, &cache, &[]);
    assert_eq!(
        outcomes(&v),
        [
            o("base", "science", "built", "-"),
            o("legacy", "release", "built", "built"),
            o("torch", "release", "built", "built"),
        ]
    );
    assert_eq!(
        strs(&v["moved_tags"]),
        [
            format!("{team}/rel/stack:9.0"),
            format!("{team}/rel/stack:10.0")
        ]
    );
    let short = git(ws.path(), &["rev-parse", "--short", "HEAD"]);
    let tags = skopeo_inspect(&reg.docker_ref("team/rel/stack", "10.0"));
    let mut listed = strs(&tags["RepoTags"]);
    listed.retain(|t| !t.starts_with("sha256-"));
    listed.sort();
    assert_eq!(listed.len(), 6, "{listed:?}");
    for t in [
        "9.0",
        "10.0",
        &format!("10.0-2-{short}"),
        &format!("9.0-2-{short}"),
    ] {
        assert!(listed.iter().any(|l| l == t), "{t} not in {listed:?}");
    }
    // Labels: the breadcrumb trail down the graph, inherited from the base.
    let cfg = skopeo_inspect_config(&reg.docker_ref("team/rel/stack", "10.0"));
    let labels = &cfg["config"]["Labels"];
    assert_eq!(labels["kiln.trail"], "base > torch > compat common + new");
    assert_eq!(labels["kiln.science.torch.version"], "10.0");
    assert_eq!(
        labels["kiln.science.base.version"].as_str().unwrap().len(),
        12
    );
    assert_eq!(labels["kiln.release"], "stack:10.0");
    assert_eq!(labels["org.example.compat"], "new");
    assert_eq!(env_map(&cfg["config"])["LANG"], "C.UTF-8");
    let torch = &v["builds"][2];
    assert_eq!(
        labels["kiln.input-hash"],
        plan(&ws, None)["builds"][2]["input_hash"]
    );
    // `kiln inspect` shows the trail.
    let shown = ws
        .kiln()
        .args(["inspect", &format!("{team}/rel/stack:10.0")])
        .run_ok()
        .stdout;
    assert!(
        shown.contains("trail: base > torch > compat common + new"),
        "{shown}"
    );
    // The release runs: its science files, its base's, its compat file.
    let out = podman_run(
        &ws.join("pstore"),
        &format!("docker://{team}/rel/stack:10.0"),
        &[
            "sh",
            "-c",
            "cat /opt/model.txt /opt/data/table.csv /etc/profile.d/kiln.sh",
        ],
    );
    assert_eq!(out, "weights v1\na,b\n1,2\nexport A=1\n");

    // Again, on an empty cache (another runner): nothing is built, nothing
    // uploaded; the registry is the cache.
    let before = reg.plain_upload_posts("team/sci/base").len()
        + reg.plain_upload_posts("team/sci/torch").len()
        + reg.plain_upload_posts("team/rel/stack").len();
    let v = ws_build(&ws, &unique_dir("ws-cache-2"), &[]);
    assert_eq!(
        outcomes(&v),
        [
            o("base", "science", "reused", "-"),
            o("legacy", "release", "reused", "reused"),
            o("torch", "release", "reused", "reused"),
        ]
    );
    let after = reg.plain_upload_posts("team/sci/base").len()
        + reg.plain_upload_posts("team/sci/torch").len()
        + reg.plain_upload_posts("team/rel/stack").len();
    assert_eq!(before, after);

    // Only a compat include changed: two rebases. No science image is built
    // or uploaded to; each release keeps its science layers and gets one
    // new layer, the compat file.
    let old = skopeo_inspect_raw(&reg.docker_ref("team/rel/stack", "10.0"));
    ws.write("compat/common/profile.sh", "export A=2\n");
    commit(&ws, "compat");
    let sci_puts = |r: &Registry| {
        r.log()
            .lines()
            .filter(|l| l.contains("\"PUT /v2/team/sci/") || l.contains("\"POST /v2/team/sci/"))
            .count()
    };
    let sci_before = sci_puts(&reg);
    let v = ws_build(&ws, &unique_dir("ws-cache-3"), &["--since", "HEAD~1"]);
    assert_eq!(
        outcomes(&v),
        [
            o("legacy", "rebase", "-", "built"),
            o("torch", "rebase", "-", "built"),
        ]
    );
    assert_eq!(
        sci_puts(&reg),
        sci_before,
        "a rebase wrote to a science repository"
    );
    let new = skopeo_inspect_raw(&reg.docker_ref("team/rel/stack", "10.0"));
    let digests = |m: &Value| -> Vec<String> {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let (old_l, new_l) = (digests(&old), digests(&new));
    assert_eq!(old_l.len(), new_l.len());
    let differ: Vec<_> = old_l.iter().zip(&new_l).filter(|(a, b)| a != b).collect();
    assert_eq!(
        differ.len(),
        1,
        "only the compat file's layer changes: {differ:?}"
    );
    // Each release uploads its config and, unless the other release (same
    // repository, same compat layer) did first, the compat layer.
    for b in v["builds"].as_array().unwrap() {
        let n = b["release"]["blobs_uploaded"].as_u64().unwrap();
        assert!((1..=2).contains(&n), "{b}");
    }
    let out = podman_run(
        &ws.join("pstore"),
        &format!("docker://{team}/rel/stack:10.0"),
        &["sh", "-c", "cat /etc/profile.d/kiln.sh"],
    );
    assert_eq!(out, "export A=2\n");

    // A middle science member: it and its dependent rebuild, legacy not.
    ws.write("science/base/data/more.csv", "c\n");
    commit(&ws, "more data");
    let v = ws_build(&ws, &cache, &["--since", "HEAD~1"]);
    assert_eq!(
        outcomes(&v),
        [
            o("base", "science", "built", "-"),
            o("torch", "release", "built", "built"),
        ]
    );
    // A CI job for one member pushes its immutable tags only; the final job
    // moves the version tags.
    ws.write("science/torch/model.txt", "weights v3\n");
    commit(&ws, "torch v3");
    let head = git(ws.path(), &["rev-parse", "--short", "HEAD"]);
    let v = ws_build(&ws, &cache, &["--since", "HEAD~1", "--only", "torch"]);
    assert_eq!(outcomes(&v), [o("torch", "release", "built", "built")]);
    assert_eq!(strs(&v["moved_tags"]), Vec::<String>::new());
    let pinned = skopeo_inspect_raw(&reg.docker_ref("team/rel/stack", &format!("10.0-5-{head}")));
    let moving = skopeo_inspect_raw(&reg.docker_ref("team/rel/stack", "10.0"));
    assert_ne!(pinned, moving);
    let v = ws_build(&ws, &cache, &["--since", "HEAD~1", "--move-tags"]);
    assert_eq!(strs(&v["moved_tags"]), [format!("{team}/rel/stack:10.0")]);
    let moving = skopeo_inspect_raw(&reg.docker_ref("team/rel/stack", "10.0"));
    assert_eq!(pinned, moving);
    let _ = torch;
}

#[test]
fn workspace_build_to_layouts() {
    // No registry: science images and releases go to layouts, dependents
    // build on their base's layout, and a second run reuses them.
    let reg = Registry::shared();
    let ws = build_repo(reg);
    // A Dockerfile member on one member, copying a file of another (two
    // dependencies), and a spec member importing a file the same way.
    ws.write(
        "science/tools/Dockerfile",
        "FROM target:base AS build\nRUN [\"sh\", \"-c\", \"echo built > /opt/built.txt\"]\n\n\
         FROM build\nCOPY --from=target:legacy /legacy.txt /opt/legacy-copy.txt\n",
    );
    ws.write(
        "science/extra/kiln.toml",
        "[[files]]\nfrom = \"target:tools\"\nsrc = \"/opt/built.txt\"\ndst = \"/built.txt\"\n",
    );
    commit(&ws, "a Dockerfile member");
    let p = plan(&ws, None);
    assert_eq!(
        builds(&p),
        [
            b("base", "science", &[]),
            b("legacy", "release", &[]),
            b("tools", "science", &["base", "legacy"]),
            b("extra", "science", &["tools"]),
            b("torch", "release", &["base"]),
        ]
    );
    // Built level by level: base and legacy, then tools and torch, then extra.
    let v = ws
        .kiln()
        .args(["build", "--workspace", "--json", "-o", "out"])
        .run_ok()
        .json();
    assert_eq!(
        outcomes(&v),
        [
            o("base", "science", "built", "-"),
            o("legacy", "release", "built", "built"),
            o("tools", "science", "built", "-"),
            o("torch", "release", "built", "built"),
            o("extra", "science", "built", "-"),
        ]
    );
    let tools = Layout::open(ws.join("out/sci/tools"));
    let tag = format!(
        "in-{}",
        &p["builds"][2]["science_hash"].as_str().unwrap()[..16]
    );
    let files: Vec<String> = tools
        .layers(&tag)
        .iter()
        .flat_map(|(_, entries)| entries.iter().map(|e| e.clean_path()))
        .collect();
    for f in [
        "opt/built.txt",
        "opt/legacy-copy.txt",
        "opt/data/table.csv",
        "bin/busybox",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} not in {files:?}");
    }
    let extra = Layout::open(ws.join("out/sci/extra"));
    let tag = format!(
        "in-{}",
        &p["builds"][3]["science_hash"].as_str().unwrap()[..16]
    );
    let (_, entries) = &extra.layers(&tag)[0];
    assert_eq!(entry(entries, "built.txt").content, b"built\n");
    let rel = Layout::open(ws.join("out/rel/stack/10.0"));
    let mut tags = rel.tags();
    tags.sort();
    assert!(tags.contains(&"10.0".to_string()), "{tags:?}");
    let cfg = rel.config("10.0");
    assert_eq!(
        cfg["config"]["Labels"]["kiln.trail"],
        "base > torch > compat common + new"
    );
    // No host path in the image: the science base is named by its content tag.
    let (_, manifest) = rel.manifest("10.0");
    let base_name = manifest["annotations"]["org.opencontainers.image.base.name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        base_name.ends_with(&format!(
            "/sci/torch:in-{}",
            &plan(&ws, None)["builds"][4]["science_hash"]
                .as_str()
                .unwrap()[..16]
        )),
        "{base_name}"
    );
    let v2 = ws
        .kiln()
        .args(["build", "--workspace", "--json", "-o", "out"])
        .run_ok()
        .json();
    assert_eq!(
        outcomes(&v2),
        [
            o("base", "science", "reused", "-"),
            o("legacy", "release", "reused", "reused"),
            o("tools", "science", "reused", "-"),
            o("torch", "release", "reused", "reused"),
            o("extra", "science", "reused", "-"),
        ]
    );
    assert_eq!(
        v2["builds"][3]["release"]["digest"],
        v["builds"][3]["release"]["digest"]
    );
    // --only a member whose base was never built names what to do.
    let other = build_repo(reg);
    let r = other
        .kiln()
        .args(["build", "--workspace", "--only", "torch", "-o", "out"])
        .run();
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("the science image of base") && r.stderr.contains("--only base"),
        "{}",
        r.stderr
    );
}
