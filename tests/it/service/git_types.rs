//! The `python-env` and `dockerfile` spec types: sources in a real Git
//! repository served over smart HTTP on loopback (`git http-backend`),
//! named by the URLs a forge's file and folder pages show; each job fetches
//! the commit, says which in its log, and builds and pushes the image.

use serde_json::json;

use super::{Service, ADMIN, VIEWER};
use crate::common::*;

/// A repository with a Dockerfile's folder and a Python environment folder
/// (a requirements.txt that installs a wheel kept beside it).
fn repo(ws: &Workspace) -> (GitServer, String) {
    let work = ws.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    ws.write(
        "work/images/app/Dockerfile",
        "FROM scratch\nCOPY hello.txt /hello.txt\nLABEL team=ds\n",
    );
    ws.write("work/images/app/hello.txt", "hello from git\n");
    tinywheel_env(ws, "work/envs/py");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "images"]);
    let commit = git(&work, &["rev-parse", "HEAD"]).stdout.trim().to_string();
    let root = ws.join("srv");
    publish_repo(&work, &root, "org/repo");
    (GitServer::start(&root), commit)
}

#[test]
fn service_builds_python_envs_and_dockerfiles_from_git() {
    let ws = Workspace::new("svc-git");
    let (server, commit) = repo(&ws);

    // The configured default base: a Python base in the registry.
    python_base(&ws);
    let base = format!("{}/svc-git-base/py:v1", Registry::shared().host());
    ws.write(
        "base.toml",
        format!(
            "[image]\nname = \"{}\"\ntags = [\"v1\"]\nbase = \"oci:py:v1\"\n",
            base.trim_end_matches(":v1")
        ),
    );
    run(ws.kiln().args(["build", "base.toml", "--push", "--quiet"])).ok();
    let svc = Service::start("svc-git", &[("KILN_SERVE_PYTHON_BASE", base.as_str())], 1);

    // python-env: the URL of the requirements.txt's page.
    let url = server.url("org/repo/blob/main/envs/py/requirements.txt");
    let rootfs = build_and_pull(
        &svc,
        &ws,
        json!({"name": "pyenv", "type": "python-env", "source": url}),
        &commit,
    );
    assert!(
        rootfs
            .join("usr/lib/python3/dist-packages/tinywheel/__init__.py")
            .exists()
            || exists_under(&rootfs, "tinywheel/__init__.py"),
        "tinywheel is not in the image"
    );

    // dockerfile: the URL of the folder's page.
    let url = server.url("org/repo/tree/main/images/app");
    let rootfs = build_and_pull(
        &svc,
        &ws,
        json!({"name": "app", "type": "dockerfile", "source": url}),
        &commit,
    );
    let config = skopeo_inspect_config(&format!("docker://{}:latest", svc.image("app")));
    assert_eq!(config["config"]["Labels"]["team"], "ds", "{config}");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "hello from git\n"
    );
    // Nothing of the service's own spec in the image.
    assert!(!rootfs.join("kiln.toml").exists());

    // A URL of a folder that does not exist: the job fails, saying so.
    let url = server.url("org/repo/tree/main/images/nope");
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "nope", "type": "dockerfile", "source": url}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json()["job"]["id"].as_i64().unwrap();
    let j = svc.wait_job(job);
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("images/nope"), "{j}");

    // Bad input is refused before anything is queued.
    let r = svc.send(
        "POST",
        "/api/v1/specs",
        Some(ADMIN),
        &json!({"name": "bad", "type": "python-env", "source": "/srv/repo#main:req.txt"}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("no local files"), "{}", r.body);
}

/// Create SPEC, wait for its job to succeed having fetched COMMIT, and
/// unpack the pushed image; returns its rootfs.
fn build_and_pull(
    svc: &Service,
    ws: &Workspace,
    spec: serde_json::Value,
    commit: &str,
) -> std::path::PathBuf {
    let name = spec["name"].as_str().unwrap().to_string();
    let r = svc.send("POST", "/api/v1/specs", Some(ADMIN), &spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json()["job"]["id"].as_i64().unwrap();
    let j = svc.wait_job(job);
    let log = svc
        .get(&format!("/api/v1/jobs/{job}/log"), Some(VIEWER))
        .body;
    assert_eq!(j["state"], "succeeded", "{j}\n{log}");
    assert!(log.contains(&format!("at commit {commit}")), "{log}");
    let pulled = ws.join(format!("{name}-oci"));
    skopeo_copy(
        &format!("docker://{}:latest", svc.image(&name)),
        &format!("oci:{}:x", pulled.display()),
    );
    umoci_unpack(&pulled, "x", &ws.join(format!("{name}-bundle")))
}

/// Whether any path under ROOT ends with SUFFIX.
fn exists_under(root: &std::path::Path, suffix: &str) -> bool {
    walk(root)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(suffix))
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
