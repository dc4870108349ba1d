//! Image signatures in cosign's format, so that `cosign verify --key` accepts
//! what `kiln sign` writes, and `kiln verify` what cosign signed with a key.
//!
//! A signature is ECDSA P-256 with SHA-256 (ASN.1 DER, base64) over cosign's
//! "simple signing" payload, a small JSON document naming the repository and
//! the signed manifest's digest. The payload is a blob; the signature is the
//! `dev.cosignproject.cosign/signature` annotation of the layer descriptor
//! that points at it. Each signature is stored twice:
//!
//! - under cosign's tag `sha256-<hex>.sig`: an image manifest whose layers
//!   are the signatures of that digest (several signers append layers), with
//!   the image config cosign writes (`rootfs.diff_ids` = the payloads);
//! - as an OCI 1.1 referrer of the signed manifest (`artifactType`
//!   [`SIGNATURE_ARTIFACT_TYPE`], the empty config), with the referrers tag
//!   schema where the registry has no referrers API, as SBOMs are.
//!
//! Verification fails closed: the signed digest is resolved first, and a
//! signature counts only when it verifies with the key *and* its payload
//! names that very digest (a signature copied onto another image does not).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::Reference;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde::Serialize;
use serde_json::{json, Value};

use crate::manifest::{canonical_json, media_type_of, OCI_CONFIG, OCI_MANIFEST};
use crate::output::push::{digest_ref, push_referrer, EMPTY_MEDIA_TYPE};
use crate::registry::Registry;
use crate::SignError;
use kiln_core::digest::Digest;
use kiln_core::error::{ErrorKind, Result};
use kiln_spec::source::ImageSource;

/// The media type of a payload layer (cosign's simple signing).
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `artifactType` of a signature referrer.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// `critical.type` of every simple signing payload.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// The `created` times of the `.sig` image's config: go-containerregistry's
/// zero time, as cosign writes in its history, so the same signatures always
/// make the same config.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// Payloads are a few hundred bytes; a larger blob is not one.
const MAX_PAYLOAD: u64 = 1 << 20;

/// A private signing key, read from a file (which errors name; its bytes
/// are never shown).
pub struct PrivateKey {
    key: SigningKey,
    path: PathBuf,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.path.display())
    }
}

impl PrivateKey {
    /// The base64 DER signature of `payload`. ECDSA here is deterministic
    /// (RFC 6979): the same key and payload give the same signature, so a
    /// repeated `kiln sign` adds nothing.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: Signature = self.key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: *self.key.verifying_key(),
            path: self.path.clone(),
        }
    }
}

/// A public key to verify with, read from a file.
pub struct PublicKey {
    key: VerifyingKey,
    path: PathBuf,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.path.display())
    }
}

impl PublicKey {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `signature` (base64 DER, as in the annotation) is this key's
    /// signature of `payload`; `Err` says why not.
    pub fn check(&self, payload: &[u8], signature: &str) -> std::result::Result<(), String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| "the signature annotation is not base64".to_string())?;
        let sig = Signature::from_der(&der)
            .map_err(|_| "the signature is not an ASN.1 DER ECDSA signature".to_string())?;
        // (r, s) and (r, n-s) are both valid; other signers need not make s low.
        let sig = sig.normalize_s().unwrap_or(sig);
        self.key
            .verify(payload, &sig)
            .map_err(|_| "the signature does not verify with this key".to_string())
    }
}

/// A key file's text and its PEM label (`PRIVATE KEY`, ...). The text is
/// wiped from memory when dropped.
fn read_pem(path: &Path, private: bool) -> Result<(Zeroizing<String>, String)> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|source| SignError::KeyUnreadable {
            path: path.to_path_buf(),
            source,
        })?,
    );
    let bad = |problem: &str| SignError::KeyFormat {
        path: path.to_path_buf(),
        problem: problem.to_string(),
        private,
    };
    let text = Zeroizing::new(
        std::str::from_utf8(&bytes)
            .map_err(|_| bad("not a PEM file"))?
            .to_string(),
    );
    let label = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
        })
        .ok_or_else(|| bad("not a PEM file (no BEGIN line)"))?
        .to_string();
    Ok((text, label))
}

/// Load a private key: PEM PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE
/// KEY`), or cosign's encrypted key file with the password in
/// `COSIGN_PASSWORD`; ECDSA P-256. Encrypted PKCS#8 is refused with a
/// message naming the formats that work.
pub fn load_private_key(path: &Path) -> Result<PrivateKey> {
    let password = std::env::var_os("COSIGN_PASSWORD").map(|p| {
        use std::os::unix::ffi::OsStringExt;
        Zeroizing::new(p.into_vec())
    });
    load_private_key_with(path, password.as_deref().map(Vec::as_slice))
}

/// [`load_private_key`] with the password of an encrypted cosign key given.
pub fn load_private_key_with(path: &Path, password: Option<&[u8]>) -> Result<PrivateKey> {
    let (text, label) = read_pem(path, true)?;
    let bad = |problem: String| SignError::KeyFormat {
        path: path.to_path_buf(),
        problem,
        private: true,
    };
    let block = first_block(&text, &label);
    let key = match label.as_str() {
        "PRIVATE KEY" => SigningKey::from_pkcs8_pem(&block).map_err(|_| {
            bad("a PKCS#8 key that is not an ECDSA P-256 key, or is damaged".into())
        })?,
        // `openssl ecparam -genkey` writes the curve's parameters before
        // the key unless told -noout.
        "EC PRIVATE KEY" | "EC PARAMETERS" => {
            let block = first_block(&text, "EC PRIVATE KEY");
            if block.is_empty() {
                return Err(bad("holds EC parameters but no key".into()).into());
            }
            p256::SecretKey::from_sec1_pem(&block)
                .map(SigningKey::from)
                .map_err(|_| {
                    bad("a SEC1 key that is not on the P-256 curve, or is damaged".into())
                })?
        }
        "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
            let Some(password) = password else {
                return Err(bad(format!(
                    "an encrypted cosign key ({label}) needs its password in COSIGN_PASSWORD \
                     (empty for none)"
                ))
                .into());
            };
            let der = decrypt_cosign_key(&pem_body(&block), password).map_err(bad)?;
            SigningKey::from_pkcs8_der(&der)
                .map_err(|_| bad("an encrypted cosign key that is not an ECDSA P-256 key".into()))?
        }
        "ENCRYPTED PRIVATE KEY" => {
            return Err(bad(
                "an encrypted PKCS#8 key (ENCRYPTED PRIVATE KEY) is not supported; decrypt it \
                 first: openssl pkcs8 -in KEY -out plain.pem"
                    .into(),
            )
            .into())
        }
        "PUBLIC KEY" => {
            return Err(bad("a public key; signing needs the private key".into()).into())
        }
        other => return Err(bad(format!("a PEM `{other}` block, not a private key")).into()),
    };
    Ok(PrivateKey {
        key,
        path: path.to_path_buf(),
    })
}

/// Load a public key: PEM SPKI (`PUBLIC KEY`), ECDSA P-256.
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let (text, label) = read_pem(path, false)?;
    let bad = |problem: String| SignError::KeyFormat {
        path: path.to_path_buf(),
        problem,
        private: false,
    };
    let key = match label.as_str() {
        "PUBLIC KEY" => VerifyingKey::from_public_key_pem(&first_block(&text, &label))
            .map_err(|_| bad("a public key that is not ECDSA P-256, or is damaged".into()))?,
        l if l.contains("PRIVATE KEY") => return Err(bad(
            "a private key; verify takes the public key (openssl ec -in KEY -pubout -out key.pub)"
                .into(),
        )
        .into()),
        other => return Err(bad(format!("a PEM `{other}` block, not a public key")).into()),
    };
    Ok(PublicKey {
        key,
        path: path.to_path_buf(),
    })
}

/// The base64 between a PEM block's BEGIN and END lines, joined.
fn pem_body(block: &str) -> Zeroizing<String> {
    Zeroizing::new(
        block
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && !l.is_empty())
            .collect(),
    )
}

/// cosign's encrypted key (go-securesystemslib's `encrypted` format): the
/// PEM body is base64 of `{"kdf":{"name":"scrypt","params":{"N","r","p"},
/// "salt"},"cipher":{"name":"nacl/secretbox","nonce"},"ciphertext"}`; the
/// key is scrypt(password, salt) and the ciphertext a NaCl secretbox around
/// the PKCS#8 DER key. `Err` says what is wrong, never with key bytes.
fn decrypt_cosign_key(
    body: &str,
    password: &[u8],
) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    use crypto_secretbox::aead::{Aead, KeyInit};

    #[derive(serde::Deserialize)]
    struct Envelope {
        kdf: Kdf,
        cipher: Cipher,
        ciphertext: String,
    }
    #[derive(serde::Deserialize)]
    struct Kdf {
        name: String,
        params: KdfParams,
        salt: String,
    }
    #[derive(serde::Deserialize)]
    struct KdfParams {
        #[serde(rename = "N")]
        n: u64,
        r: u32,
        p: u32,
    }
    #[derive(serde::Deserialize)]
    struct Cipher {
        name: String,
        nonce: String,
    }

    let b64 = base64::engine::general_purpose::STANDARD;
    let damaged = || "a damaged encrypted cosign key".to_string();
    let json = b64.decode(body).map_err(|_| damaged())?;
    let env: Envelope = serde_json::from_slice(&json).map_err(|_| damaged())?;
    if env.kdf.name != "scrypt" || env.cipher.name != "nacl/secretbox" {
        return Err(format!(
            "an encrypted cosign key with {} and {}; kiln reads scrypt and nacl/secretbox",
            env.kdf.name, env.cipher.name
        ));
    }
    // N is a power of two; cosign uses 2^15 or 2^16. Far larger would be a
    // way to make kiln spend gigabytes.
    let n = env.kdf.params.n;
    if !n.is_power_of_two() || n > 1 << 20 {
        return Err(format!("an encrypted cosign key with scrypt N={n}"));
    }
    let params = scrypt::Params::new(
        n.trailing_zeros() as u8,
        env.kdf.params.r,
        env.kdf.params.p,
        32,
    )
    .map_err(|_| damaged())?;
    let salt = b64.decode(&env.kdf.salt).map_err(|_| damaged())?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, &salt, &params, key.as_mut()).map_err(|_| damaged())?;
    let nonce = b64.decode(&env.cipher.nonce).map_err(|_| damaged())?;
    if nonce.len() != 24 {
        return Err(damaged());
    }
    let ciphertext = b64.decode(&env.ciphertext).map_err(|_| damaged())?;
    let cipher =
        crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(key.as_ref()));
    cipher
        .decrypt(crypto_secretbox::Nonce::from_slice(&nonce), ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| {
            "an encrypted cosign key that COSIGN_PASSWORD does not open (wrong password, or damaged)"
                .to_string()
        })
}

/// The first PEM block labelled `label` in `text`, BEGIN to END lines.
fn first_block(text: &str, label: &str) -> Zeroizing<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        return Zeroizing::new(String::new());
    };
    let stop = text[start..]
        .find(&end)
        .map_or(text.len(), |i| start + i + end.len());
    Zeroizing::new(format!("{}\n", &text[start..stop]))
}

/// cosign's simple signing payload for `digest` in `docker_reference`
/// (`registry/repository`): compact JSON with sorted keys, as cosign
/// serialises it (its Go structs declare the fields in that order).
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    canonical_json(&json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    }))
}

/// The image a payload is a signature of: its `docker-manifest-digest`
/// when it is a simple signing payload, and its `docker-reference`.
fn payload_subject(payload: &[u8]) -> std::result::Result<(String, String), String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|_| "the payload is not JSON".to_string())?;
    let critical = &v["critical"];
    if critical["type"].as_str() != Some(PAYLOAD_TYPE) {
        return Err(format!(
            "the payload's critical.type is not `{PAYLOAD_TYPE}`"
        ));
    }
    let digest = critical["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or("the payload names no docker-manifest-digest")?;
    let identity = critical["identity"]["docker-reference"]
        .as_str()
        .unwrap_or_default();
    Ok((digest.to_string(), identity.to_string()))
}

/// Check one signature of `digest`: the key signed `payload`, and the
/// payload names `digest`. Returns the payload's docker-reference.
pub fn check_signature(
    key: &PublicKey,
    payload: &[u8],
    signature: &str,
    digest: &Digest,
) -> std::result::Result<String, String> {
    key.check(payload, signature)?;
    let (named, identity) = payload_subject(payload)?;
    if named != digest.to_string() {
        return Err(format!(
            "a signature by this key is for {named}, not {digest}"
        ));
    }
    Ok(identity)
}

/// What `kiln sign` did.
#[derive(Clone, Debug, Serialize)]
pub struct SignReport {
    /// The reference as given.
    pub reference: String,
    /// The digest signed (the manifest or index the reference names).
    pub digest: String,
    /// The payload's `docker-reference`.
    pub docker_reference: String,
    /// cosign's signature tag, `registry/repo:sha256-<hex>.sig`.
    pub signature_tag: String,
    /// The manifest that tag names now.
    pub signature_manifest: String,
    /// The OCI 1.1 referrer holding the same signature.
    pub referrer: String,
    /// This key's signature of this digest was there already (nothing
    /// new under the tag).
    pub already_signed: bool,
}

/// One signature that verified.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    /// `tag` (cosign's `sha256-<hex>.sig`) or `referrer`.
    pub source: &'static str,
    /// The manifest it was found in.
    pub manifest: String,
    /// The payload's `docker-reference`.
    pub docker_reference: String,
}

/// What `kiln verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub reference: String,
    /// The digest the reference names, which the signatures name.
    pub digest: String,
    /// Signatures looked at (each distinct one once).
    pub signatures_checked: usize,
    pub verified: Vec<Verified>,
}

/// The registry reference `reference` names, or [`SignError::NotRegistry`].
pub fn registry_reference(reference: &str) -> Result<Reference> {
    match ImageSource::parse(reference, Path::new("."))? {
        ImageSource::Registry(r) => Ok(r),
        _ => Err(SignError::NotRegistry {
            reference: reference.to_string(),
        }
        .into()),
    }
}

/// `registry/repository` as cosign writes it in the payload (the registry
/// as resolved: Docker Hub's is `index.docker.io`).
fn docker_reference(r: &Reference) -> String {
    format!("{}/{}", r.resolve_registry(), r.repository())
}

/// cosign's signature tag of `digest` in `r`'s repository.
fn signature_tag(r: &Reference, digest: &Digest) -> Reference {
    Reference::with_tag(
        r.registry().into(),
        r.repository().into(),
        format!("sha256-{}.sig", digest.hex()),
    )
}

/// Upload `data` unless the repository has it.
fn ensure_blob(registry: &Registry, r: &Reference, data: &[u8]) -> Result<Digest> {
    let digest = Digest::of(data);
    if !registry.blob_exists(r, &digest)? {
        registry.push_blob_data(r, data.to_vec())?;
    }
    Ok(digest)
}

/// The image config of a `.sig` manifest with `layers`, in the shape
/// cosign writes (go-containerregistry's empty image plus one history
/// entry and one diff_id per payload layer), with zero times throughout.
fn signature_config(layers: &[Value]) -> Value {
    json!({
        "architecture": "",
        "created": ZERO_TIME,
        "history": layers.iter().map(|_| json!({"created": ZERO_TIME})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l["digest"].clone()).collect::<Vec<_>>(),
        },
        "config": {},
    })
}

/// The layers of an existing `.sig` manifest; refuses anything else.
fn signature_layers(bytes: &[u8], r: &Reference) -> Result<(Value, Vec<Value>)> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    match v.get("layers").and_then(Value::as_array) {
        Some(layers) if v.get("manifests").is_none() => {
            let layers = layers.clone();
            Ok((v, layers))
        }
        _ => Err(SignError::SignatureTagNotManifest {
            reference: r.whole(),
        }
        .into()),
    }
}

/// Sign the manifest or index `reference` names with `key`, under its
/// repository: cosign's `.sig` tag (our layer appended unless the same
/// signature is there) and an OCI 1.1 referrer.
pub fn sign(registry: &Registry, reference: &Reference, key: &PrivateKey) -> Result<SignReport> {
    let (subject, digest) = registry.pull_manifest(reference)?;
    let identity = docker_reference(reference);
    let payload = payload(&identity, &digest);
    let signature = key.sign(&payload);
    let payload_digest = ensure_blob(registry, reference, &payload)?;
    let layer = json!({
        "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
        "digest": payload_digest.to_string(),
        "size": payload.len(),
        "annotations": {SIGNATURE_ANNOTATION: signature},
    });

    // cosign's tag: the signatures of this digest, one layer each.
    let tag = signature_tag(reference, &digest);
    let existing = registry.pull_manifest_opt(&tag)?;
    let (mut manifest, mut layers, old_digest) = match &existing {
        Some((bytes, d)) => {
            let (v, layers) = signature_layers(bytes, &tag)?;
            (v, layers, Some(d.clone()))
        }
        None => (
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST}),
            Vec::new(),
            None,
        ),
    };
    let already_signed = layers.iter().any(|l| {
        l["digest"] == layer["digest"]
            && l["annotations"][SIGNATURE_ANNOTATION].as_str() == Some(signature.as_str())
    });
    let signature_manifest = match old_digest.filter(|_| already_signed) {
        Some(d) => d,
        None => {
            layers.push(layer.clone());
            let config = canonical_json(&signature_config(&layers));
            let config_digest = ensure_blob(registry, reference, &config)?;
            manifest["config"] = json!({
                "mediaType": OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            });
            manifest["layers"] = Value::Array(layers);
            let bytes = canonical_json(&manifest);
            let media_type = manifest["mediaType"]
                .as_str()
                .unwrap_or(OCI_MANIFEST)
                .to_string();
            registry.push_manifest(&tag, &bytes, &media_type)?;
            Digest::of(&bytes)
        }
    };

    // The same signature as an OCI 1.1 referrer of the signed manifest.
    let empty = ensure_blob(registry, reference, b"{}")?;
    let referrer = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty.to_string(), "size": 2},
        "layers": [layer],
        "subject": {
            "mediaType": media_type_of(&subject),
            "digest": digest.to_string(),
            "size": subject.len(),
        },
    });
    let (referrer, _) = push_referrer(
        registry,
        reference,
        &digest,
        &canonical_json(&referrer),
        SIGNATURE_ARTIFACT_TYPE,
        None,
    )?;

    Ok(SignReport {
        reference: reference.whole(),
        digest: digest.to_string(),
        docker_reference: identity,
        signature_tag: tag.whole(),
        signature_manifest: signature_manifest.to_string(),
        referrer: referrer.to_string(),
        already_signed,
    })
}

/// [`sign`] with a registry client of its own (plain HTTP for loopback
/// registries and those in `insecure`).
pub fn sign_reference(
    reference: &Reference,
    insecure: &[String],
    key: &PrivateKey,
) -> Result<SignReport> {
    sign(&Registry::new(insecure, &[reference])?, reference, key)
}

/// [`verify`] with a registry client of its own.
pub fn verify_reference(
    reference: &Reference,
    insecure: &[String],
    key: &PublicKey,
) -> Result<VerifyReport> {
    verify(&Registry::new(insecure, &[reference])?, reference, key)
}

/// A registry error that only means "not there".
fn is_not_found(e: &kiln_core::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::RegistryError>(),
        Some(crate::RegistryError::NotFound { .. })
    )
}

/// Verify that the manifest or index `reference` names carries a signature
/// by `key` that names its digest. Signatures are read from cosign's tag
/// and from the OCI referrers; any one that verifies is enough. Fails with
/// [`SignError::NoSignature`] or [`SignError::NotVerified`] otherwise.
pub fn verify(registry: &Registry, reference: &Reference, key: &PublicKey) -> Result<VerifyReport> {
    let (_, digest) = registry.pull_manifest(reference)?;
    let tag = signature_tag(reference, &digest);

    // (where, manifest digest, layer descriptor)
    let mut found: Vec<(&'static str, Digest, Value)> = Vec::new();
    if let Some((bytes, d)) = registry.pull_manifest_opt(&tag)? {
        let (_, layers) = signature_layers(&bytes, &tag)?;
        found.extend(layers.into_iter().map(|l| ("tag", d.clone(), l)));
    }
    let subject = digest_ref(reference, &digest);
    let referrers = match registry.referrers(&subject, SIGNATURE_ARTIFACT_TYPE) {
        Ok(list) => list,
        Err(e) if is_not_found(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    for m in referrers {
        let Ok(md) = m.parse::<Digest>() else {
            continue;
        };
        let (bytes, _) = registry.pull_manifest(&digest_ref(reference, &md))?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        for l in v["layers"].as_array().into_iter().flatten() {
            found.push(("referrer", md.clone(), l.clone()));
        }
    }
    if found.is_empty() {
        return Err(SignError::NoSignature {
            digest: digest.to_string(),
            repository: format!("{}/{}", reference.registry(), reference.repository()),
            tag: tag.whole(),
            artifact_type: SIGNATURE_ARTIFACT_TYPE,
        }
        .into());
    }

    let mut seen: Vec<(Value, Value)> = Vec::new();
    // Each distinct reason once, with how many signatures it is for.
    let mut reasons: Vec<(String, usize)> = Vec::new();
    let mut verified = Vec::new();
    for (source, manifest, layer) in found {
        let id = (
            layer["digest"].clone(),
            layer["annotations"][SIGNATURE_ANNOTATION].clone(),
        );
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let at = format!("{source} {manifest}");
        match check_layer(registry, reference, key, &layer, &digest)? {
            Ok(identity) => verified.push(Verified {
                source,
                manifest: manifest.to_string(),
                docker_reference: identity,
            }),
            Err(why) => {
                let r = format!("{at}: {why}");
                match reasons.iter_mut().find(|(x, _)| *x == r) {
                    Some((_, n)) => *n += 1,
                    None => reasons.push((r, 1)),
                }
            }
        }
    }
    if verified.is_empty() {
        return Err(SignError::NotVerified {
            digest: digest.to_string(),
            key: key.path.clone(),
            reasons: reasons
                .into_iter()
                .map(|(r, n)| {
                    if n > 1 {
                        format!("{r} ({n} signatures)")
                    } else {
                        r
                    }
                })
                .collect(),
        }
        .into());
    }
    Ok(VerifyReport {
        reference: reference.whole(),
        digest: digest.to_string(),
        signatures_checked: seen.len(),
        verified,
    })
}

/// Check one signature layer: `Ok(Err(why))` when it does not count;
/// `Err` only for registry failures that say nothing about the signature.
fn check_layer(
    registry: &Registry,
    reference: &Reference,
    key: &PublicKey,
    layer: &Value,
    digest: &Digest,
) -> Result<std::result::Result<String, String>> {
    if layer["mediaType"].as_str() != Some(SIMPLE_SIGNING_MEDIA_TYPE) {
        return Ok(Err(format!(
            "a layer of type {} is not a simple signing payload",
            layer["mediaType"]
        )));
    }
    let Some(signature) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else {
        return Ok(Err(format!(
            "a layer without the {SIGNATURE_ANNOTATION} annotation"
        )));
    };
    let Some(payload_digest) = layer["digest"]
        .as_str()
        .and_then(|d| d.parse::<Digest>().ok())
    else {
        return Ok(Err("a layer without a sha256 digest".into()));
    };
    let payload = match registry.pull_blob_data(reference, &payload_digest, MAX_PAYLOAD) {
        Ok(p) => p,
        Err(e)
            if matches!(e.kind(), ErrorKind::Network | ErrorKind::Auth) && !is_digest_error(&e) =>
        {
            return Err(e)
        }
        Err(e) => return Ok(Err(format!("payload {payload_digest}: {e}"))),
    };
    Ok(check_signature(key, &payload, signature, digest))
}

/// A blob whose bytes are not its digest (a registry fault, but also what
/// a tampered payload looks like): a reason, not a network failure.
fn is_digest_error(e: &kiln_core::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::RegistryError>(),
        Some(crate::RegistryError::Failed {
            source: oci_client::errors::OciDistributionError::DigestError(_),
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn keys(seed: u8) -> (PrivateKey, PublicKey) {
        let key = SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        let private = PrivateKey {
            key,
            path: PathBuf::from("test.key"),
        };
        let public = private.public_key();
        (private, public)
    }

    #[test]
    fn payload_is_cosigns_simple_signing_document() {
        let p = payload("registry.example.com/team/app", &digest('a'));
        assert_eq!(
            String::from_utf8(p).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"registry.example.com/team/app"}},"image":{{"docker-manifest-digest":"sha256:{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
                "a".repeat(64)
            )
        );
    }

    #[test]
    fn sign_then_verify_and_tampering_is_rejected() {
        let (private, public) = keys(7);
        let d = digest('a');
        let p = payload("registry.example.com/app", &d);
        let sig = private.sign(&p);
        assert_eq!(sig, private.sign(&p), "deterministic signatures");
        assert_eq!(
            check_signature(&public, &p, &sig, &d).unwrap(),
            "registry.example.com/app"
        );

        // A payload changed after signing.
        let mut tampered = p.clone();
        let i = tampered.iter().position(|&b| b == b'a').unwrap();
        tampered[i] = b'b';
        let why = check_signature(&public, &tampered, &sig, &d).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");

        // A signature changed (a bit of s flipped).
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(&sig)
            .unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        let bad = base64::engine::general_purpose::STANDARD.encode(&der);
        assert!(check_signature(&public, &p, &bad, &d).is_err());
        assert!(check_signature(&public, &p, "not base64!", &d)
            .unwrap_err()
            .contains("base64"));

        // A valid signature of another image: the tampered-tag case.
        let other = digest('b');
        let why = check_signature(&public, &p, &sig, &other).unwrap_err();
        assert!(
            why.contains(&d.to_string()) && why.contains(&other.to_string()),
            "{why}"
        );

        // Another key.
        let (_, stranger) = keys(9);
        assert!(check_signature(&stranger, &p, &sig, &d).is_err());

        // Not a simple signing payload, though signed.
        let junk = br#"{"critical":{"type":"something else"}}"#;
        let why = check_signature(&public, junk, &private.sign(junk), &d).unwrap_err();
        assert!(why.contains("critical.type"), "{why}");
    }

    #[test]
    fn high_s_signatures_verify_too() {
        let (private, public) = keys(3);
        let p = payload("r.example.com/x", &digest('c'));
        let der = base64::engine::general_purpose::STANDARD
            .decode(private.sign(&p))
            .unwrap();
        let sig = Signature::from_der(&der).unwrap();
        // Negate s: the other valid signature, which some signers produce.
        let (r, s) = sig.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(high.to_der().as_bytes());
        assert!(public.check(&p, &b64).is_ok());
    }

    #[test]
    fn key_files_in_every_supported_format_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
        let secret = p256::SecretKey::from(&key);
        let pkcs8 = dir.path().join("pkcs8.pem");
        std::fs::write(&pkcs8, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let sec1 = dir.path().join("sec1.pem");
        let sec1_text = secret.to_sec1_pem(LineEnding::LF).unwrap();
        // openssl ecparam -genkey without -noout writes the parameters first.
        std::fs::write(
            &sec1,
            format!(
                "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
                *sec1_text
            ),
        )
        .unwrap();
        let public = dir.path().join("key.pub");
        std::fs::write(
            &public,
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();

        let p = payload("r.example.com/x", &digest('d'));
        let pk = load_public_key(&public).unwrap();
        for path in [&pkcs8, &sec1] {
            let k = load_private_key(path).unwrap();
            assert!(pk.check(&p, &k.sign(&p)).is_ok(), "{}", path.display());
            // Debug output names the file, never the key.
            assert_eq!(format!("{k:?}"), format!("PrivateKey({})", path.display()));
        }

        // Wrong way round, missing, encrypted, not PEM: each says so, by path.
        let e = load_private_key(&public).unwrap_err();
        assert!(e.to_string().contains("a public key"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = load_public_key(&pkcs8).unwrap_err();
        assert!(e.to_string().contains("-pubout"), "{e}");
        let e = load_private_key(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read key file "), "{e}");
        let enc = dir.path().join("enc.key");
        std::fs::write(
            &enc,
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_private_key_with(&enc, None).unwrap_err().to_string();
        assert!(e.contains("needs its password in COSIGN_PASSWORD"), "{e}");
        let e = load_private_key_with(&enc, Some(b""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("damaged") && e.contains("BEGIN PRIVATE KEY"),
            "{e}"
        );
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello").unwrap();
        let e = load_public_key(&junk).unwrap_err().to_string();
        assert!(
            e.contains("not a PEM file") && e.contains("BEGIN PUBLIC KEY"),
            "{e}"
        );
        // No key material in any message.
        let text = std::fs::read_to_string(&pkcs8).unwrap();
        let body = text.lines().nth(1).unwrap();
        assert!(!load_public_key(&pkcs8)
            .unwrap_err()
            .to_string()
            .contains(body));
    }

    /// A key file as `cosign generate-key-pair` writes it (scrypt with
    /// cosign's parameters, NaCl secretbox, PKCS#8 inside), made here with
    /// the same primitives.
    fn cosign_encrypted(key: &SigningKey, password: &[u8]) -> String {
        use crypto_secretbox::aead::{Aead, KeyInit};
        let b64 = base64::engine::general_purpose::STANDARD;
        let (salt, nonce) = ([7u8; 32], [9u8; 24]);
        let params = scrypt::Params::new(15, 8, 1, 32).unwrap();
        let mut k = [0u8; 32];
        scrypt::scrypt(password, &salt, &params, &mut k).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let sealed = crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(&k))
            .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), der.as_bytes())
            .unwrap();
        let body = serde_json::to_vec(&json!({
            "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64.encode(salt)},
            "cipher": {"name": "nacl/secretbox", "nonce": b64.encode(nonce)},
            "ciphertext": b64.encode(sealed),
        }))
        .unwrap();
        let text = b64.encode(body);
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn cosign_encrypted_keys_open_with_their_password() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[11u8; 32].into()).unwrap();
        let path = dir.path().join("cosign.key");
        std::fs::write(&path, cosign_encrypted(&key, b"hunter2")).unwrap();
        let loaded = load_private_key_with(&path, Some(b"hunter2")).unwrap();
        assert_eq!(loaded.key.verifying_key(), key.verifying_key());
        let e = load_private_key_with(&path, Some(b"wrong")).unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn signature_config_lists_every_payload() {
        let layers = vec![
            json!({"digest": digest('a').to_string()}),
            json!({"digest": digest('b').to_string()}),
        ];
        let c = signature_config(&layers);
        assert_eq!(c["rootfs"]["diff_ids"][1], digest('b').to_string());
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(
            canonical_json(&c),
            canonical_json(&signature_config(&layers))
        );
    }
}
