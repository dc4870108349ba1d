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
    assert_eq!(torch["tags"], json!(["10.0", format!("10.0-1-{short}")]));
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
