//! CI pipelines generated from a [`Plan`].
//!
//! - `gitlab`: a child pipeline for GitLab's `trigger: include:
//!   artifact:`. One job `build:TARGET` per planned member running `kiln
//!   build --workspace --only TARGET --push` (the contract of the workspace
//!   builder, which does not exist yet), `needs:` the jobs of its planned
//!   dependencies, so independent chains run in parallel; a final
//!   `move-tags` job that needs every release/rebase job and re-points the
//!   moving version tags (`kiln build --workspace --move-tags --only
//!   TARGET`); when nothing is affected, a single no-op job (a pipeline
//!   must have one). The document is written as JSON: JSON is YAML 1.2, and
//!   GitLab reads `.yml` files with a YAML 1.2-compatible parser, so the
//!   output is a valid `.gitlab-ci.yml` without a YAML serializer
//!   dependency (`serde_yaml` is unmaintained; the alternatives add
//!   compile time and their own quoting rules for no gain here).
//! - `github`: a matrix document for `fromJSON`: `{"depth": N, "levels":
//!   [{"include": [...]}, ...]}`; `levels[i]` is the matrix of the members
//!   at dependency depth `i` (their needs are all at lower depths), so a
//!   workflow runs one matrix job per level, each `needs:` the previous.
//!   Each entry holds `target`, `kind`, `image`, `tags` (space-separated),
//!   `needs` (space-separated), `input_hash` and `command`. Only levels
//!   that have members are present (an empty matrix is an error on GitHub).
//! - `github-workflow`: such a workflow with the levels written in
//!   literally (`strategy.matrix.include`), plus the `move-tags` job.
//! - `json`: the plan itself (`kiln plan --json`).

use serde_json::{json, Map, Value};

use crate::plan::{Kind, Plan};

/// The command a CI job runs for one member.
pub fn build_command(target: &str) -> String {
    format!("kiln build --workspace --only {target} --push")
}

/// The command that moves the version tags of the released members.
pub fn move_tags_command(targets: &[&str]) -> String {
    let only: Vec<String> = targets.iter().map(|t| format!("--only {t}")).collect();
    format!("kiln build --workspace --move-tags {}", only.join(" "))
}

pub fn gitlab_job_name(target: &str) -> String {
    format!("build:{target}")
}

fn releases(plan: &Plan) -> Vec<&str> {
    plan.builds
        .iter()
        .filter(|b| b.kind != Kind::Science)
        .map(|b| b.target.as_str())
        .collect()
}

/// The GitLab child pipeline (see the module docs).
pub fn gitlab(plan: &Plan) -> Value {
    let mut doc = Map::new();
    if plan.builds.is_empty() {
        doc.insert("stages".into(), json!(["build"]));
        doc.insert(
            "nothing-to-build".into(),
            json!({
                "stage": "build",
                "script": ["echo 'kiln plan: no workspace member is affected'"],
            }),
        );
        return Value::Object(doc);
    }
    let released = releases(plan);
    let mut stages = vec!["build"];
    if !released.is_empty() {
        stages.push("tags");
    }
    doc.insert("stages".into(), json!(stages));
    for b in &plan.builds {
        let needs: Vec<String> = b.needs.iter().map(|n| gitlab_job_name(n)).collect();
        doc.insert(
            gitlab_job_name(&b.target),
            json!({
                "stage": "build",
                "needs": needs,
                "variables": {
                    "KILN_TARGET": b.target,
                    "KILN_KIND": b.kind.name(),
                    "KILN_INPUT_HASH": b.input_hash,
                },
                "script": [build_command(&b.target)],
            }),
        );
    }
    if !released.is_empty() {
        let needs: Vec<String> = released.iter().map(|t| gitlab_job_name(t)).collect();
        doc.insert(
            "move-tags".into(),
            json!({
                "stage": "tags",
                "needs": needs,
                "script": [move_tags_command(&released)],
            }),
        );
    }
    Value::Object(doc)
}

/// The GitHub Actions matrix levels (see the module docs).
pub fn github(plan: &Plan) -> Value {
    let depth = plan.builds.iter().map(|b| b.depth + 1).max().unwrap_or(0);
    let levels: Vec<Value> = (0..depth)
        .map(|d| {
            let include: Vec<Value> = plan
                .builds
                .iter()
                .filter(|b| b.depth == d)
                .map(|b| {
                    json!({
                        "target": b.target,
                        "kind": b.kind.name(),
                        "image": b.image,
                        "tags": b.tags.join(" "),
                        "needs": b.needs.join(" "),
                        "input_hash": b.input_hash,
                        "command": build_command(&b.target),
                    })
                })
                .collect();
            json!({ "include": include })
        })
        .collect();
    json!({ "depth": depth, "levels": levels })
}

/// A GitHub Actions workflow running the plan: one matrix job per level.
pub fn github_workflow(plan: &Plan) -> Value {
    let matrix = github(plan);
    let mut jobs = Map::new();
    let checkout = json!({ "uses": "actions/checkout@v4", "with": { "fetch-depth": 0 } });
    let levels = matrix["levels"].as_array().cloned().unwrap_or_default();
    if levels.is_empty() {
        jobs.insert(
            "nothing-to-build".into(),
            json!({
                "runs-on": "ubuntu-latest",
                "steps": [{ "run": "echo 'kiln plan: no workspace member is affected'" }],
            }),
        );
    }
    for (i, level) in levels.iter().enumerate() {
        let mut job = json!({
            "name": format!("depth {i}: ${{{{ matrix.target }}}}"),
            "runs-on": "ubuntu-latest",
            "strategy": { "fail-fast": true, "matrix": level },
            "steps": [checkout, { "run": "${{ matrix.command }}" }],
        });
        if i > 0 {
            job["needs"] = json!([format!("level-{}", i - 1)]);
        }
        jobs.insert(format!("level-{i}"), job);
    }
    let released = releases(plan);
    if !released.is_empty() {
        let needs: Vec<String> = (0..levels.len()).map(|i| format!("level-{i}")).collect();
        jobs.insert(
            "move-tags".into(),
            json!({
                "runs-on": "ubuntu-latest",
                "needs": needs,
                "steps": [checkout, { "run": move_tags_command(&released) }],
            }),
        );
    }
    json!({
        "name": "kiln workspace",
        "on": { "workflow_dispatch": {} },
        "jobs": jobs,
    })
}

/// The plan itself as JSON (`kiln plan --json`).
pub fn plan_json(plan: &Plan) -> Value {
    serde_json::to_value(plan).expect("plan serialises")
}
