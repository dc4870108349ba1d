//! The CI templates: the GitHub Action (action.yml), an example workflow
//! using it (ci/github-workflow-example.yml) and the GitLab template
//! (ci/kiln.gitlab-ci.yml). Both templates are thin wrappers around one
//! script, ci/kiln-build.sh. The files are validated against GitLab's CI
//! schema and GitHub's workflow schema (Python `jsonschema`, as in
//! workspace.rs), and their steps are run the way the runners run them —
//! `${{ inputs.* }}` and GitLab variables substituted, the same shell text —
//! pushing to the harness registry with basic auth, checked with skopeo.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::*;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A YAML file as JSON (PyYAML's safe loader).
#[track_caller]
fn yaml(path: &Path) -> Value {
    Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .run_ok()
        .json()
}

fn action() -> Value {
    yaml(&repo_root().join("action.yml"))
}

fn gitlab_job() -> Value {
    let doc = yaml(&repo_root().join("ci/kiln.gitlab-ci.yml"));
    doc[".kiln-build"].clone()
}

/// `${{ … }}` expressions in TEXT, trimmed.
fn expressions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${{") {
        let after = &rest[i + 3..];
        let j = after.find("}}").expect("unclosed ${{ expression");
        out.push(after[..j].trim().to_string());
        rest = &after[j + 2..];
    }
    out
}

// ---- structure and schemas --------------------------------------------------

#[test]
fn templates_are_valid_and_wrap_the_one_script() {
    // The example workflow, under GitHub's workflow schema.
    let example = repo_root().join("ci/github-workflow-example.yml");
    assert_valid("github-workflow.json", &example);

    // GitLab's schema accepts anything under a hidden key, so also check the
    // job made visible (the shape a job that `extends:` it gets).
    let gitlab = repo_root().join("ci/kiln.gitlab-ci.yml");
    assert_valid("gitlab-ci.json", &gitlab);
    let ws = Workspace::new("ci-schema");
    let text = fs::read_to_string(&gitlab).unwrap();
    assert!(text.contains("\n.kiln-build:\n"));
    let visible = ws.write(
        "visible.yml",
        text.replace("\n.kiln-build:\n", "\nkiln-build:\n"),
    );
    assert_valid("gitlab-ci.json", &visible);
    let user = ws.write(
        "user.yml",
        format!(
            "{text}\nbuild-image:\n  extends: .kiln-build\n  variables:\n    KILN_SPEC: app/kiln.toml\n"
        ),
    );
    assert_valid("gitlab-ci.json", &user);

    // action.yml (no schema among the fixtures): a composite action whose
    // one step runs the script, inputs passed through env only.
    let a = action();
    assert_eq!(s(&a["runs"], "using"), "composite");
    let steps = a["runs"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{a}");
    let step = &steps[0];
    assert_eq!(s(step, "id"), "build");
    assert!(
        step["shell"].is_string(),
        "composite run steps need a shell"
    );
    let run = s(step, "run");
    assert!(run.contains("ci/kiln-build.sh"), "{run}");
    assert!(
        expressions(run).is_empty(),
        "run: must not paste expressions into the shell text: {run}"
    );
    let env = step["env"].as_object().unwrap();
    assert_eq!(
        env["KILN_REGISTRY_USERNAME"],
        "${{ inputs.registry-username }}"
    );
    assert_eq!(
        env["KILN_REGISTRY_PASSWORD"],
        "${{ inputs.registry-password }}"
    );
    let inputs = a["inputs"].as_object().unwrap();
    for v in env.values().chain([&step["working-directory"]]) {
        for e in expressions(v.as_str().unwrap()) {
            if let Some(name) = e.strip_prefix("inputs.") {
                assert!(inputs.contains_key(name), "undeclared input {name}");
            } else {
                assert_eq!(e, "github.action_path");
            }
        }
    }
    for (name, i) in inputs {
        assert!(
            i["description"].is_string(),
            "input {name} lacks a description"
        );
    }
    assert_eq!(
        a["outputs"]["digest"]["value"],
        "${{ steps.build.outputs.digest }}"
    );

    // The example passes only inputs the action declares.
    let wf = yaml(&example);
    let uses_action = wf["jobs"]["build"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["uses"].as_str().is_some_and(|u| u.contains("/kiln@")))
        .expect("the example uses the kiln action")
        .clone();
    for k in uses_action["with"].as_object().unwrap().keys() {
        assert!(inputs.contains_key(k), "example passes unknown input {k}");
    }

    // The GitLab job: the same script, GitLab's registry credentials by default.
    let job = gitlab_job();
    let script = job["script"].as_array().unwrap();
    assert_eq!(script.len(), 1);
    assert!(script[0].as_str().unwrap().contains("ci/kiln-build.sh"));
    assert_eq!(
        job["variables"]["KILN_REGISTRY_USERNAME"],
        "$CI_REGISTRY_USER"
    );
    assert_eq!(
        job["variables"]["KILN_REGISTRY_PASSWORD"],
        "$CI_REGISTRY_PASSWORD"
    );
}

// ---- running them ----------------------------------------------------------

/// A workspace with a one-file spec for `reg`'s REPO.
fn push_workspace(reg: &Registry, label: &str) -> (Workspace, String) {
    let ws = Workspace::new(label);
    let repo = unique_repo(label);
    simple_push_spec(&ws, &reg.repo(&repo), &["latest"]);
    (ws, repo)
}

/// The digest the registry holds for REPO:latest (read with credentials).
fn registry_digest(reg: &Registry, repo: &str) -> String {
    let creds = format!("--creds={AUTH_USER}:{AUTH_PASSWORD}");
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        &creds,
        "--format",
        "{{.Digest}}",
        &reg.docker_ref(repo, "latest"),
    ])
    .ok()
    .stdout
    .trim()
    .to_string()
}

/// A shell command as the test's kiln runs it (fresh cache, no ambient
/// credentials), but with the environment below added.
fn shell(script: &str, cwd: &Path, env: &BTreeMap<String, String>) -> Run {
    let mut c = Command::new("sh");
    c.arg("-e")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env("KILN_CACHE", unique_dir("cache"))
        .env("DOCKER_CONFIG", unique_dir("docker-config"))
        .env_remove("KILN_REGISTRY_USERNAME")
        .env_remove("KILN_REGISTRY_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("GITHUB_OUTPUT")
        .env("KILN_RETRY_DEADLINE", "8")
        .envs(env);
    c.run()
}

/// Run action.yml's step as a runner does: `${{ inputs.X }}` from WITH (or
/// the input's default), `${{ github.action_path }}` = this repository, the
/// step's env, `run:` under its shell in its working directory.
fn run_action(ws: &Workspace, with: &[(&str, &str)]) -> (Run, String) {
    let a = action();
    let step = &a["runs"]["steps"][0];
    let with: BTreeMap<&str, &str> = with.iter().copied().collect();
    let eval = |text: &str| -> String {
        let mut out = text.to_string();
        for e in expressions(text) {
            let value = if e == "github.action_path" {
                repo_root().display().to_string()
            } else {
                let name = e.strip_prefix("inputs.").unwrap();
                let default = a["inputs"][name]["default"].as_str().unwrap_or("");
                with.get(name).copied().unwrap_or(default).to_string()
            };
            // Exactly as written in the file: `${{ expr }}`.
            out = out.replace(&format!("${{{{ {e} }}}}"), &value);
        }
        assert!(!out.contains("${{"), "unevaluated expression in {text}");
        out
    };
    let mut env: BTreeMap<String, String> = step["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), eval(v.as_str().unwrap())))
        .collect();
    let output = ws.join("github-output");
    fs::write(&output, "").unwrap();
    env.insert("GITHUB_OUTPUT".into(), output.display().to_string());
    env.insert(
        "GITHUB_ACTION_PATH".into(),
        repo_root().display().to_string(),
    );
    assert_eq!(s(step, "shell"), "sh", "run as `sh -e`");
    let cwd = ws.join(eval(s(step, "working-directory")));
    let r = shell(s(step, "run"), &cwd, &env);
    (r, fs::read_to_string(&output).unwrap())
}

#[test]
fn github_action_pushes_with_the_given_credentials() {
    let reg = Registry::shared_auth();
    let (ws, repo) = push_workspace(reg, "ci-action");
    let bin = env!("CARGO_BIN_EXE_kiln");
    let (r, output) = run_action(
        &ws,
        &[
            ("kiln", bin),
            ("registry-username", AUTH_USER),
            ("registry-password", AUTH_PASSWORD),
        ],
    );
    let r = r.ok();
    assert!(
        !r.stdout.contains(AUTH_PASSWORD) && !r.stderr.contains(AUTH_PASSWORD),
        "the password was printed\n{}",
        r.describe()
    );
    let digest = registry_digest(reg, &repo);
    assert_digest(&Value::String(digest.clone()));
    assert_eq!(output.trim(), format!("digest={digest}"), "GITHUB_OUTPUT");
    assert_eq!(r.stdout.trim().lines().last(), Some(digest.as_str()));
    let report: Value =
        serde_json::from_slice(&fs::read(ws.join("kiln-report.json")).unwrap()).unwrap();
    assert_eq!(s(&report, "digest"), digest);

    // A wrong password: kiln's auth exit code through the action, the
    // password still not shown.
    let (ws2, _) = push_workspace(reg, "ci-action-denied");
    let (r, output) = run_action(
        &ws2,
        &[
            ("kiln", bin),
            ("registry-username", AUTH_USER),
            ("registry-password", "not-the-Pa55word-1234"),
        ],
    );
    let r = r.code_is(4);
    assert!(
        !r.stderr.contains("not-the-Pa55word-1234"),
        "{}",
        r.describe()
    );
    assert!(output.is_empty(), "no digest output on failure: {output}");
}

/// A Git repository holding kiln's CI script on branch `main`, standing in
/// for kiln's repository that the GitLab job clones.
fn kiln_source_repo() -> Workspace {
    let ws = Workspace::new("ci-kiln-src");
    let script = ws.join("ci/kiln-build.sh");
    fs::create_dir_all(script.parent().unwrap()).unwrap();
    fs::copy(repo_root().join("ci/kiln-build.sh"), &script).unwrap();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(ws.path())
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
            .run_ok();
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "kiln"]);
    ws
}

/// Run the `.kiln-build` job as a GitLab runner does: its variables (with
/// $VAR references expanded, OVERRIDES applied as a job that `extends:` it
/// would), then before_script and script in one `sh -e`, in CI_PROJECT_DIR.
fn run_gitlab_job(project: &Workspace, ci: &[(&str, &str)], overrides: &[(&str, &str)]) -> Run {
    let job = gitlab_job();
    let mut vars: Vec<(String, String)> = job["variables"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    for (k, v) in overrides {
        match vars.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => vars.push((k.to_string(), v.to_string())),
        }
    }
    let mut script = String::new();
    for (k, v) in &vars {
        assert!(
            !v.contains(['"', '`', '\\']),
            "variable {k} needs quoting in this test: {v}"
        );
        script.push_str(&format!("export {k}=\"{v}\"\n"));
    }
    for part in ["before_script", "script"] {
        for line in job[part].as_array().unwrap() {
            script.push_str(line.as_str().unwrap());
            script.push('\n');
        }
    }
    let mut env: BTreeMap<String, String> = ci
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert(
        "CI_PROJECT_DIR".into(),
        project.path().display().to_string(),
    );
    shell(&script, project.path(), &env)
}

#[test]
fn gitlab_job_clones_kiln_and_pushes_with_registry_credentials() {
    let reg = Registry::shared_auth();
    let (project, repo) = push_workspace(reg, "ci-gitlab");
    let src = kiln_source_repo();
    let bin = env!("CARGO_BIN_EXE_kiln");
    let r = run_gitlab_job(
        &project,
        // GitLab's own registry credentials, which the template maps.
        &[
            ("CI_REGISTRY_USER", AUTH_USER),
            ("CI_REGISTRY_PASSWORD", AUTH_PASSWORD),
        ],
        &[
            ("KILN", bin),
            (
                "KILN_REPOSITORY",
                &format!("file://{}", src.path().display()),
            ),
        ],
    )
    .ok();
    assert!(
        !r.stdout.contains(AUTH_PASSWORD) && !r.stderr.contains(AUTH_PASSWORD),
        "the password was printed\n{}",
        r.describe()
    );
    // The before_script cloned kiln's source into the default KILN_SOURCE.
    assert!(project.join(".kiln/ci/kiln-build.sh").is_file());

    let digest = registry_digest(reg, &repo);
    assert_eq!(r.stdout.trim().lines().last(), Some(digest.as_str()));
    // The artifacts the template declares are there.
    let job = gitlab_job();
    let dotenv = s(&job["artifacts"]["reports"], "dotenv");
    assert_eq!(
        fs::read_to_string(project.join(dotenv)).unwrap().trim(),
        format!("KILN_DIGEST={digest}")
    );
    for p in job["artifacts"]["paths"].as_array().unwrap() {
        assert!(project.join(p.as_str().unwrap()).is_file(), "artifact {p}");
    }
}

#[test]
fn script_builds_kiln_with_cargo_when_no_binary_is_given() {
    // cargo is replaced by a stand-in that records how it was called and
    // puts the kiln under test where `cargo build --release` would (a real
    // release build of kiln takes far too long for a test).
    let ws = Workspace::new("ci-cargo");
    ws.write(
        "kiln.toml",
        "[[files]]\nsrc = \"a.txt\"\ndst = \"/a.txt\"\n",
    );
    ws.write("a.txt", "a\n");
    let bin_dir = ws.mkdir("bin", 0o755);
    let target = ws.join("target");
    let stub = bin_dir.join("cargo");
    fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$(pwd -P) $*\" >{log}\nmkdir -p \"$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release\"\ncp {kiln} \"$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/kiln\"\n",
            log = ws.join("cargo.log").display(),
            kiln = env!("CARGO_BIN_EXE_kiln"),
        ),
    )
    .unwrap();
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env: BTreeMap<String, String> = [
        ("PATH", path),
        ("CARGO_TARGET_DIR", target.display().to_string()),
        ("KILN_PUSH", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let script = repo_root().join("ci/kiln-build.sh");
    let r = shell(&format!("'{}'", script.display()), ws.path(), &env).ok();
    assert_eq!(
        fs::read_to_string(ws.join("cargo.log")).unwrap().trim(),
        format!(
            "{} build --release --locked --bin kiln",
            repo_root().canonicalize().unwrap().display()
        )
    );
    let digest = r.stdout.trim().lines().last().unwrap().to_string();
    let report: Value =
        serde_json::from_slice(&fs::read(ws.join("kiln-report.json")).unwrap()).unwrap();
    assert_eq!(s(&report, "digest"), digest);
    oci_validate(&ws.join("kiln-out"), "latest");
}
