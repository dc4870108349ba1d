//! `kiln build --push` against a real registry on loopback: tags, idempotent
//! pushes, multi-platform indexes, loopback hosts, and authentication.

use crate::common::*;

#[test]
fn push_twice_uploads_nothing_the_second_time() {
    let reg = Registry::shared();
    let repo = unique_repo("twice");
    let ws = Workspace::new("push-twice");
    simple_push_spec(&ws, &reg.repo(&repo), &["1.0", "latest"]);

    let first = build_json(&ws, &["--push"]);
    let nblobs = first["layers"].as_array().unwrap().len() as u64 + 1; // + config
    let push = &first["push"];
    let reference = s(push, "reference");
    assert!(
        reference == format!("{}:1.0", reg.repo(&repo))
            || reference == format!("{}:latest", reg.repo(&repo)),
        "push.reference {reference}"
    );
    assert_eq!(push["digest"], first["digest"]);
    assert_eq!(
        push["blobs_uploaded"], nblobs,
        "fresh repo: every blob uploaded: {push}"
    );
    assert_eq!(push["blobs_skipped"], 0);
    assert_eq!(push["blobs_mounted"], 0);
    let posts_after_first = reg.upload_posts(&repo);
    // The SBOM referrer's blobs (the SBOM, the empty config) come on top.
    assert_eq!(push["referrer_blobs_uploaded"], 2, "{push}");
    assert_eq!(
        posts_after_first.len() as u64,
        nblobs + 2,
        "registry log: {posts_after_first:#?}"
    );

    for tag in ["1.0", "latest"] {
        let sk = skopeo_inspect(&reg.docker_ref(&repo, tag));
        assert_eq!(sk["Digest"], first["digest"], "tag {tag}");
    }
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}", reg.repo(&repo)),
    ])
    .ok()
    .json();
    let mut tags = strs(&tags["Tags"]);
    tags.sort();
    // Plus the referrers tag schema's index of the image's SBOM.
    let referrers_tag = format!("sha256-{}", &s(&first, "digest")[7..]);
    assert_eq!(tags, ["1.0", "latest", referrers_tag.as_str()]);

    // Second push, from a fresh cache: everything is already there. The
    // layer it builds goes out as soon as it is built (the push's early
    // uploads), which is one HEAD (it is there: no upload); then one HEAD
    // per tag and one for the SBOM referrer (by its digest) tell, and no
    // other blob is checked.
    let cache = unique_dir("push-twice-cache");
    let push_with_cache = || {
        let out = ws
            .kiln()
            .env("KILN_CACHE", &cache)
            .args(["build", "--json", "--push"])
            .run_ok();
        out.json()
    };
    let before = reg.repo_requests(&repo).len();
    let second = push_with_cache();
    check_build_json(&second);
    let requests = reg.repo_requests(&repo);
    let built = nblobs - 1;
    assert_eq!(
        (requests.len() - before) as u64,
        built + 3,
        "the built layer, two tags and one referrer: {:#?}",
        &requests[before..]
    );
    let heads = requests[before..]
        .iter()
        .filter(|r| r.contains("HEAD") && r.contains("/blobs/"))
        .count() as u64;
    assert_eq!(heads, built, "{:#?}", &requests[before..]);
    // Third push, from that cache: it saw the referrer there, and a
    // manifest by digest does not change; only the tags are asked for.
    // (The layer is reused, and this cache knows the repository has it.)
    let before = reg.repo_requests(&repo).len();
    let third = push_with_cache();
    let requests = reg.repo_requests(&repo);
    assert_eq!(
        requests.len() - before,
        2,
        "one HEAD per tag: {:#?}",
        &requests[before..]
    );
    assert_eq!(third["push"]["up_to_date"], true, "{third}");
    assert_eq!(
        third["push"]["referrer_manifests"],
        second["push"]["referrer_manifests"]
    );
    assert_eq!(second["digest"], first["digest"]);
    let push = &second["push"];
    assert_eq!(push["digest"], first["digest"]);
    assert_eq!(push["up_to_date"], true, "{push}");
    assert_eq!(push["blobs_uploaded"], 0, "{push}");
    assert_eq!(push["blobs_mounted"], 0, "{push}");
    assert_eq!(push["blobs_skipped"], 0, "{push}");
    assert!(nblobs > 0);
    assert_eq!(push["tags"], first["push"]["tags"], "{push}");
    assert_eq!(
        reg.upload_posts(&repo),
        posts_after_first,
        "the second push must not start any blob upload"
    );
    assert_eq!(
        skopeo_inspect(&reg.docker_ref(&repo, "latest"))["Digest"],
        first["digest"]
    );
}

/// --push with --output: the local copy and the pushed image are the same bytes.
#[test]
fn push_and_local_output_agree() {
    let reg = Registry::shared();
    let repo = unique_repo("push-local");
    let ws = Workspace::new("push-local");
    simple_push_spec(&ws, &reg.repo(&repo), &["v1"]);
    let v = build_json(
        &ws,
        &[
            "--push",
            "--output",
            "oci:out",
            "--output",
            "docker-archive:img.tar",
        ],
    );
    assert_outputs(&ws, &v, &["oci:out", "docker-archive:img.tar"]);
    let local = Layout::open(ws.join("out")).manifest("v1").0;
    assert_eq!(local, s(&v, "digest"));
    let remote = skopeo_inspect_raw(&reg.docker_ref(&repo, "v1"));
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reg.docker_ref(&repo, "v1"),
    ])
    .ok();
    assert_eq!(
        digest_of(raw.stdout.as_bytes()),
        local,
        "registry holds the very manifest bytes of the layout"
    );
    assert_eq!(remote["mediaType"], MT_MANIFEST);
    assert!(ws.join("img.tar").is_file());
}

#[test]
fn push_multi_platform_index() {
    let reg = Registry::shared();
    let repo = unique_repo("push-multi");
    let ws = Workspace::new("push-multi");
    ws.write("hello.txt", format!("hello {repo}\n"));
    ws.spec(&format!(
        r#"
[image]
name = "{}"
tags = ["m"]
platforms = ["linux/amd64", "linux/arm64"]

[[files]]
src = "hello.txt"
dst = "/hello.txt"
"#,
        reg.repo(&repo)
    ));
    let v = build_json(&ws, &["--push"]);
    assert_eq!(v["push"]["digest"], v["digest"]);
    let r = reg.docker_ref(&repo, "m");
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &r]).ok();
    assert_eq!(digest_of(raw.stdout.as_bytes()), s(&v, "digest"));
    let index = raw.json();
    assert_eq!(index["mediaType"], MT_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for m in v["manifests"].as_array().unwrap() {
        assert!(
            entries.iter().any(|e| e["digest"] == m["digest"]),
            "{m} in pushed index"
        );
    }
    for arch in ["amd64", "arm64"] {
        let sk = skopeo(&[
            "--override-arch",
            arch,
            "--override-os",
            "linux",
            "inspect",
            "--tls-verify=false",
            &r,
        ])
        .ok()
        .json();
        assert_eq!(sk["Architecture"], arch);
    }
}

/// Loopback registries are plain HTTP automatically, whatever the spelling
/// (`localhost`), and --insecure-registry is accepted for them too.
#[test]
fn localhost_and_insecure_registry_flag() {
    let reg = Registry::shared();
    let repo = unique_repo("localhost");
    let ws = Workspace::new("push-localhost");
    simple_push_spec(&ws, &format!("localhost:{}/{repo}", reg.port), &["lh"]);
    let v = build_json(&ws, &["--push"]);
    assert_eq!(
        skopeo_inspect(&reg.docker_ref(&repo, "lh"))["Digest"],
        v["digest"]
    );

    let repo2 = unique_repo("insecure-flag");
    let ws2 = Workspace::new("push-insecure-flag");
    simple_push_spec(&ws2, &reg.repo(&repo2), &["i"]);
    let v2 = build_json(&ws2, &["--push", "--insecure-registry", &reg.host()]);
    assert_eq!(
        skopeo_inspect(&reg.docker_ref(&repo2, "i"))["Digest"],
        v2["digest"]
    );
}

// ----------------------------------------------------------------------------
// Authentication (registry with htpasswd basic auth)
// ----------------------------------------------------------------------------

const WRONG_PASSWORD: &str = "Wr0ng-Passw0rd-must-not-leak-4e1f";

/// stderr/stdout must not contain the password, nor its base64 form in a
/// user:pass header.
#[track_caller]
fn assert_no_leak(r: &Run, password: &str) {
    let b64 = base64(format!("{AUTH_USER}:{password}").as_bytes());
    for (name, text) in [("stderr", &r.stderr), ("stdout", &r.stdout)] {
        assert!(
            !text.contains(password),
            "{name} leaks the password:\n{text}"
        );
        assert!(
            !text.contains(&b64),
            "{name} leaks the basic-auth header:\n{text}"
        );
    }
}

#[track_caller]
fn assert_auth_message(r: &Run) {
    let e = r.stderr.to_lowercase();
    assert!(
        [
            "auth",
            "401",
            "unauthorized",
            "credential",
            "denied",
            "password"
        ]
        .iter()
        .any(|w| e.contains(w)),
        "stderr should say authentication failed:\n{}",
        r.stderr
    );
}

#[test]
fn wrong_password_exits_4_without_leaking_it() {
    let reg = Registry::shared_auth();
    let repo = unique_repo("auth-env");
    let ws = Workspace::new("push-auth-env");
    simple_push_spec(&ws, &reg.repo(&repo), &["a"]);
    let before = ws.listing();

    let r = ws
        .kiln()
        .env("KILN_REGISTRY_USERNAME", AUTH_USER)
        .env("KILN_REGISTRY_PASSWORD", WRONG_PASSWORD)
        .args(["build", "--push", "--output", "oci:out"])
        .run()
        .code_is(4);
    assert_no_leak(&r, WRONG_PASSWORD);
    assert_auth_message(&r);
    let after_failure = ws.listing();

    // No credentials at all: also an authentication failure.
    let r = ws.kiln().args(["build", "--push"]).run().code_is(4);
    assert_auth_message(&r);

    // The right password works, and is not printed either.
    let r = ws
        .kiln()
        .env("KILN_REGISTRY_USERNAME", AUTH_USER)
        .env("KILN_REGISTRY_PASSWORD", AUTH_PASSWORD)
        .args(["build", "--push", "--json"])
        .run_ok();
    assert_no_leak(&r, AUTH_PASSWORD);
    let v = r.json();
    let creds = format!("{AUTH_USER}:{AUTH_PASSWORD}");
    let sk = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &reg.docker_ref(&repo, "a"),
    ])
    .ok()
    .json();
    assert_eq!(sk["Digest"], v["digest"]);

    assert_eq!(
        after_failure, before,
        "the build that failed authentication must leave no output behind"
    );
}

#[test]
fn docker_config_credentials() {
    let reg = Registry::shared_auth();
    let repo = unique_repo("auth-config");
    let ws = Workspace::new("push-auth-config");
    simple_push_spec(&ws, &reg.repo(&repo), &["c"]);

    let bad = docker_config_dir(&reg.host(), AUTH_USER, WRONG_PASSWORD);
    let r = ws
        .kiln()
        .env("DOCKER_CONFIG", &bad)
        .args(["build", "--push"])
        .run()
        .code_is(4);
    assert_no_leak(&r, WRONG_PASSWORD);
    assert!(!ws.join("kiln-out").exists());

    let good = docker_config_dir(&reg.host(), AUTH_USER, AUTH_PASSWORD);
    let r = ws
        .kiln()
        .env("DOCKER_CONFIG", &good)
        .args(["build", "--push", "--json"])
        .run_ok();
    assert_no_leak(&r, AUTH_PASSWORD);
    assert_eq!(r.json()["push"]["digest"], r.json()["digest"]);
}

/// Pulling a base from a registry that needs auth uses the same credentials.
#[test]
fn base_from_auth_registry() {
    let reg = Registry::shared_auth();
    let base_repo = unique_repo("auth-base");
    let ws = Workspace::new("auth-base");
    simple_push_spec(&ws, &reg.repo(&base_repo), &["b"]);
    let base = ws
        .kiln()
        .env("KILN_REGISTRY_USERNAME", AUTH_USER)
        .env("KILN_REGISTRY_PASSWORD", AUTH_PASSWORD)
        .args(["build", "--push", "--json"])
        .run_ok()
        .json();

    let ws2 = Workspace::new("auth-derived");
    ws2.write("x.txt", "x\n");
    ws2.spec(&format!(
        "[image]\nbase = \"{}:b\"\n\n[[files]]\nsrc = \"x.txt\"\ndst = \"/x.txt\"\n",
        reg.repo(&base_repo)
    ));
    let r = ws2
        .kiln()
        .args(["build", "--output", "oci:out"])
        .run()
        .code_is(4);
    assert_auth_message(&r);
    assert!(!ws2.join("out").exists());
    let r = ws2
        .kiln()
        .env("KILN_REGISTRY_USERNAME", AUTH_USER)
        .env("KILN_REGISTRY_PASSWORD", WRONG_PASSWORD)
        .args(["build", "--output", "oci:out"])
        .run()
        .code_is(4);
    assert_no_leak(&r, WRONG_PASSWORD);
    let v = ws2
        .kiln()
        .env("KILN_REGISTRY_USERNAME", AUTH_USER)
        .env("KILN_REGISTRY_PASSWORD", AUTH_PASSWORD)
        .args(["build", "--json", "--output", "oci:out"])
        .run_ok()
        .json();
    let (_, manifest) = Layout::open(ws2.join("out")).manifest("latest");
    assert_eq!(manifest["layers"][0]["digest"], base["layers"][0]["digest"]);
    assert_eq!(manifest["layers"][1]["digest"], v["layers"][0]["digest"]);
}
