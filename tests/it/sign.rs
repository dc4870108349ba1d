//! `kiln sign`, `kiln verify` and `kiln build --push --sign` against the
//! loopback registry, with keys made by openssl and signatures checked by
//! openssl from what curl and skopeo read back: cosign's format (the
//! `sha256-<hex>.sig` tag, the simple signing payload, the DER signature
//! annotation), the OCI referrer, several signers, and verification that
//! fails for another key, a moved tag, a copied signature and no signature.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// An ECDSA P-256 key pair made by openssl: `key` PKCS#8 PEM, `sec1` the
/// same key as openssl ecparam writes it (parameters, then EC PRIVATE
/// KEY), `public` SPKI PEM.
struct Keys {
    key: PathBuf,
    sec1: PathBuf,
    public: PathBuf,
}

fn openssl(args: &[&str]) -> Run {
    tool("openssl").args(args).run_ok()
}

fn keypair(ws: &Workspace, name: &str) -> Keys {
    let p = |ext: &str| ws.join(format!("{name}.{ext}"));
    let (sec1, key, public) = (p("ec.pem"), p("key"), p("pub"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-out",
        &s(&sec1),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &s(&sec1),
        "-out",
        &s(&key),
    ]);
    openssl(&["ec", "-in", &s(&key), "-pubout", "-out", &s(&public)]);
    Keys { key, sec1, public }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `curl -sf URL` against the registry: the bytes.
fn curl(reg: &Registry, repo: &str, what: &str, accept: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{repo}/{what}", reg.host());
    let out = tool("curl")
        .args(["-sf", "-H", &format!("Accept: {accept}"), &url])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {url}: {:?}", out.status);
    out.stdout
}

fn manifest(reg: &Registry, repo: &str, reference: &str) -> Value {
    let accept = format!("{MT_MANIFEST}, {MT_INDEX}");
    serde_json::from_slice(&curl(reg, repo, &format!("manifests/{reference}"), &accept)).unwrap()
}

/// cosign's tag of DIGEST: `sha256-<hex>.sig`.
fn sig_tag(digest: &str) -> String {
    format!("sha256-{}.sig", digest.strip_prefix("sha256:").unwrap())
}

/// `kiln verify REF --key PUB --json` (any exit code).
fn verify(ws: &Workspace, reference: &str, public: &Path) -> Run {
    ws.kiln()
        .args(["verify", reference, "--key", path(public), "--json"])
        .run()
}

/// Check one signature layer with openssl alone: the payload blob (read
/// with curl) verifies against the annotation's DER signature with
/// PUBLIC, and names DIGEST. Returns the payload.
fn openssl_verify(
    ws: &Workspace,
    reg: &Registry,
    repo: &str,
    layer: &Value,
    public: &Path,
    digest: &str,
) -> Value {
    assert_eq!(layer["mediaType"], SIMPLE_SIGNING, "{layer}");
    let payload = curl(reg, repo, &format!("blobs/{}", s(layer, "digest")), "*/*");
    let n = digest_of(&payload);
    let payload_file = ws.write(&format!("payload-{}", &n[7..19]), &payload);
    let b64 = ws.write(
        &format!("sig-{}.b64", &n[7..19]),
        s(&layer["annotations"], SIG_ANNOTATION),
    );
    let der = ws.join(format!("sig-{}.der", &n[7..19]));
    openssl(&["base64", "-d", "-A", "-in", path(&b64), "-out", path(&der)]);
    let out = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        path(public),
        "-signature",
        path(&der),
        path(&payload_file),
    ]);
    assert_eq!(out.stdout.trim(), "Verified OK", "{}", out.describe());
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["critical"]["type"], "cosign container image signature");
    assert_eq!(v["critical"]["image"]["docker-manifest-digest"], digest);
    assert_eq!(v["optional"], Value::Null);
    v
}

#[test]
fn build_push_sign_is_cosign_format_and_verifies() {
    let reg = Registry::shared();
    let repo = unique_repo("signed-build");
    let ws = Workspace::new("sign-build");
    let keys = keypair(&ws, "a");
    simple_push_spec(&ws, &reg.repo(&repo), &["1.0"]);

    let v = build_json(&ws, &["--push", "--sign", path(&keys.key)]);
    let digest = s(&v, "digest").to_string();
    let sig = &v["signature"];
    assert_eq!(sig["digest"], digest, "{sig}");
    assert_eq!(sig["docker_reference"], reg.repo(&repo));
    assert_eq!(sig["already_signed"], false);
    assert_eq!(
        skopeo_inspect(&reg.docker_ref(&repo, "1.0"))["Digest"],
        digest,
        "the signed digest is the pushed one"
    );

    let ok = verify(&ws, &format!("{}:1.0", reg.repo(&repo)), &keys.public).ok();
    let report = ok.json();
    assert_eq!(report["digest"], digest, "{report}");
    assert!(
        !report["verified"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // cosign's tag, as skopeo and curl read it: an OCI image manifest with
    // cosign's config and one simple signing layer per signature.
    let tag = sig_tag(&digest);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reg.docker_ref(&repo, &tag),
    ])
    .ok()
    .json();
    assert_eq!(raw["mediaType"], MT_MANIFEST);
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = raw["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{raw}");
    assert_eq!(
        s(&raw["config"], "digest"),
        s(&manifest(reg, &repo, &tag)["config"], "digest")
    );
    let config: Value = serde_json::from_slice(&curl(
        reg,
        &repo,
        &format!("blobs/{}", s(&raw["config"], "digest")),
        "*/*",
    ))
    .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0], layers[0]["digest"],
        "{config}"
    );
    let payload = openssl_verify(&ws, reg, &repo, &layers[0], &keys.public, &digest);
    assert_eq!(
        payload["critical"]["identity"]["docker-reference"],
        reg.repo(&repo)
    );

    // The same signature as an OCI referrer (the referrers tag schema's
    // index on this registry, which has no referrers API).
    let index = manifest(reg, &repo, &format!("sha256-{}", &digest[7..]));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == SIG_ARTIFACT)
        .unwrap_or_else(|| panic!("no signature referrer in {index}"));
    assert_eq!(entry["digest"], sig["referrer"]);
    let referrer = manifest(reg, &repo, s(entry, "digest"));
    assert_eq!(referrer["subject"]["digest"], digest);
    assert_eq!(
        referrer["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(referrer["layers"][0], layers[0], "the same signature layer");
}

#[test]
fn sign_a_pushed_image_with_several_keys() {
    let reg = Registry::shared();
    let repo = unique_repo("sign-later");
    let ws = Workspace::new("sign-later");
    let (a, b, stranger) = (keypair(&ws, "a"), keypair(&ws, "b"), keypair(&ws, "c"));
    let pushed = push_scratch_image(reg, &repo, "v1", &[("f.txt", "sign me later\n")]);
    let digest = s(&pushed, "digest").to_string();
    let reference = format!("{}:v1", reg.repo(&repo));

    // SEC1 with the curve parameters first, as `openssl ecparam -genkey` writes.
    let signed = ws
        .kiln()
        .args(["sign", &reference, "--key", path(&a.sec1), "--json"])
        .run_ok()
        .json();
    assert_eq!(signed["digest"], digest, "{signed}");
    assert_eq!(signed["already_signed"], false);
    assert_eq!(
        verify(&ws, &reference, &a.public).ok().json()["digest"],
        digest
    );

    let wrong = verify(&ws, &reference, &stranger.public)
        .code_is(1)
        .stderr_has(&format!(
            "no signature of {digest} verifies with {}",
            path(&stranger.public)
        ))
        .stderr_has("does not verify with this key");
    assert_eq!(wrong.json()["error"]["kind"], "verification");

    // A second signer appends a layer; signing again with the first key
    // (PKCS#8 this time) adds nothing: the signature is deterministic.
    ws.kiln()
        .args(["sign", &reference, "--key", path(&b.key)])
        .run_ok();
    let again = ws
        .kiln()
        .args(["sign", &reference, "--key", path(&a.key), "--json"])
        .run_ok()
        .json();
    assert_eq!(again["already_signed"], true, "{again}");
    let sigs = manifest(reg, &repo, &sig_tag(&digest));
    let layers = sigs["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{sigs}");
    openssl_verify(&ws, reg, &repo, &layers[0], &a.public, &digest);
    openssl_verify(&ws, reg, &repo, &layers[1], &b.public, &digest);
    for k in [&a, &b] {
        let r = verify(&ws, &format!("{}@{digest}", reg.repo(&repo)), &k.public)
            .ok()
            .json();
        assert_eq!(r["signatures_checked"], 2, "{r}");
        assert_eq!(r["verified"].as_array().unwrap().len(), 1, "{r}");
    }
}

#[test]
fn a_moved_tag_or_a_copied_signature_fails_verification() {
    let reg = Registry::shared();
    let repo = unique_repo("sign-tamper");
    let ws = Workspace::new("sign-tamper");
    let keys = keypair(&ws, "k");
    simple_push_spec(&ws, &reg.repo(&repo), &["prod"]);
    let first = build_json(&ws, &["--push", "--sign", path(&keys.key)]);
    let signed = s(&first, "digest").to_string();
    let reference = format!("{}:prod", reg.repo(&repo));
    verify(&ws, &reference, &keys.public).ok();

    // Another image pushed under the same tag, unsigned.
    ws.write("payload/hello.txt", "something else\n");
    let second = build_json(&ws, &["--push"]);
    let moved = s(&second, "digest").to_string();
    assert_ne!(moved, signed);
    assert_eq!(
        skopeo_inspect(&reg.docker_ref(&repo, "prod"))["Digest"],
        moved
    );
    verify(&ws, &reference, &keys.public)
        .code_is(1)
        .stderr_has(&format!("no signature of {moved}"));

    // A valid signature copied under the new digest's tag: it verifies with
    // the key, but names the old digest.
    let sig_manifest = curl(
        reg,
        &repo,
        &format!("manifests/{}", sig_tag(&signed)),
        MT_MANIFEST,
    );
    let file = ws.write("copied.json", &sig_manifest);
    let url = format!(
        "http://{}/v2/{repo}/manifests/{}",
        reg.host(),
        sig_tag(&moved)
    );
    tool("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {MT_MANIFEST}"),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", path(&file)))
        .arg(&url)
        .run_ok();
    verify(&ws, &reference, &keys.public)
        .code_is(1)
        .stderr_has(&format!("is for {signed}, not {moved}"));

    // The signed image itself still verifies by digest.
    let r = verify(&ws, &format!("{}@{signed}", reg.repo(&repo)), &keys.public)
        .ok()
        .json();
    assert_eq!(r["digest"], signed);
}

#[test]
fn unsigned_images_and_unusable_keys_fail_clearly() {
    let reg = Registry::shared();
    let repo = unique_repo("unsigned");
    let ws = Workspace::new("unsigned");
    let keys = keypair(&ws, "k");
    let pushed = push_scratch_image(reg, &repo, "v1", &[("u.txt", "unsigned\n")]);
    let digest = s(&pushed, "digest").to_string();
    let reference = format!("{}:v1", reg.repo(&repo));

    let r = verify(&ws, &reference, &keys.public)
        .code_is(1)
        .stderr_has(&format!("no signature of {digest}"))
        .stderr_has(&sig_tag(&digest))
        .stderr_has("kiln sign");
    assert_eq!(r.json()["error"]["kind"], "verification");

    // Keys the wrong way round, encrypted, or not keys: bad input, named by path.
    ws.kiln()
        .args(["verify", &reference, "--key", path(&keys.key)])
        .run()
        .code_is(2)
        .stderr_has("verify takes the public key");
    ws.kiln()
        .args(["sign", &reference, "--key", path(&keys.public)])
        .run()
        .code_is(2)
        .stderr_has("signing needs the private key");
    let enc = ws.join("enc.key");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        path(&keys.key),
        "-passout",
        "pass:secret",
        "-out",
        path(&enc),
    ]);
    ws.kiln()
        .args(["sign", &reference, "--key", path(&enc)])
        .run()
        .code_is(2)
        .stderr_has("is not supported")
        .stderr_has("BEGIN EC PRIVATE KEY");
    // cosign's encrypted key file: the password comes from COSIGN_PASSWORD.
    let cosign_key = ws.write(
        "cosign.key",
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nbm90IGEga2V5\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
    );
    ws.kiln()
        .args(["sign", &reference, "--key", path(&cosign_key)])
        .env_remove("COSIGN_PASSWORD")
        .run()
        .code_is(2)
        .stderr_has("needs its password in COSIGN_PASSWORD");
    ws.kiln()
        .args(["sign", &reference, "--key", path(&cosign_key)])
        .env("COSIGN_PASSWORD", "")
        .run()
        .code_is(2)
        .stderr_has("a damaged encrypted cosign key");
    let body = std::fs::read_to_string(&keys.key).unwrap();
    let secret_line = body.lines().nth(1).unwrap();
    let r = ws
        .kiln()
        .args(["verify", &reference, "--key", path(&keys.key)])
        .run();
    assert!(
        !r.stderr.contains(secret_line),
        "key material in {}",
        r.describe()
    );
    ws.kiln()
        .args(["verify", "oci:somewhere", "--key", path(&keys.public)])
        .run()
        .code_is(2)
        .stderr_has("signatures live in a registry");
    // --sign goes with --push; nothing is built.
    ws.spec("[image]\nname = \"registry.example.com/x\"\n");
    ws.kiln()
        .args(["build", "--sign", path(&keys.key)])
        .run()
        .code_is(2)
        .stderr_has("--push");
    // Nothing was signed along the way.
    assert_eq!(
        tool("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!(
                    "http://{}/v2/{repo}/manifests/{}",
                    reg.host(),
                    sig_tag(&digest)
                ),
            ])
            .run_ok()
            .stdout,
        "404"
    );
}
