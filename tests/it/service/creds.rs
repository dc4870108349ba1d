//! Registry credentials of the `_json_key` kind (a service-account key as
//! the password: one line of JSON with quotes, slashes and `\n` escapes)
//! against a registry with htpasswd authentication: the build pushes with
//! them, and they appear in no API answer, job log or database file.

use super::*;

#[test]
fn service_pushes_with_json_key_credentials_and_never_shows_them() {
    // Shorter than a real key (htpasswd takes at most 256 characters), the
    // same shape: quotes, slashes, `\n` escapes, an `@`.
    let key_marker = "MIIEvQIBADANBgkqhkiG9w0secret";
    let password = format!(
        r#"{{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----\n{key_marker}\n-----END PRIVATE KEY-----\n","client_email":"ci@kiln.example.invalid"}}"#
    );
    let registry = Registry::start(Some(("_json_key", &password)));
    let host = registry.host();
    let svc = Service::start(
        "svc-json-key",
        &[
            ("KILN_REGISTRY_ENDPOINT", host.as_str()),
            ("KILN_REGISTRY_USERNAME", "_json_key"),
            ("KILN_REGISTRY_PASSWORD", password.as_str()),
        ],
        1,
    );
    let spec = json!({"name": "keyed", "config": {"env": {"K": "v"}}});
    let r = svc.send("POST", "/api/v1/specs", Some(ADMIN), &spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["job"]["id"].as_i64().unwrap();
    let job = svc.wait_job(id);
    let log = svc
        .get(&format!("/api/v1/jobs/{id}/log"), Some(VIEWER))
        .body;
    assert_eq!(job["state"], "succeeded", "{job}\nlog:\n{log}");

    // The registry holds it, reachable with the same credentials only.
    let image = format!("{host}/{}/keyed", svc.prefix);
    let creds = format!("_json_key:{password}");
    let inspected = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{image}:latest"),
    ]);
    assert_eq!(inspected.code(), Some(0), "{}", inspected.stderr);
    assert!(
        inspected.stdout.contains(s(&job, "digest")),
        "{}",
        inspected.stdout
    );
    let anonymous = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{image}:latest"),
    ]);
    assert_ne!(anonymous.code(), Some(0), "the registry must require auth");

    // Never in clear: API answers, the log, the database and its WAL.
    let answers = [
        svc.get("/api/v1/specs", Some(VIEWER)).body,
        svc.get("/api/v1/specs/keyed", Some(VIEWER)).body,
        svc.get(&format!("/api/v1/jobs/{id}"), Some(VIEWER)).body,
        log,
        svc.get("/", Some(VIEWER)).body,
        svc.get("/openapi.json", Some(VIEWER)).body,
    ];
    for a in &answers {
        assert!(!a.contains(key_marker), "the key leaked: {a}");
    }
    for entry in walk(&svc.data) {
        if entry.is_file() {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(key_marker),
                "the key is in {}",
                entry.display()
            );
        }
    }
}

/// Every path below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
