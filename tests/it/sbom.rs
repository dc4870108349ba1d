//! SBOMs: an SPDX 2.3 JSON document per image platform, written beside OCI
//! layout outputs and pushed as an OCI 1.1 referrer.
//!
//! The image is built hermetically: a hand-made Debian-like base (a dpkg
//! status, a Python, a dist-info, a conda-meta record) from an OCI layout,
//! two `.deb`s from a signed `file://` repository made here, and two wheels
//! from a local wheelhouse. The SBOM is checked against what the unpacked
//! image really holds, validated with `pyspdxtools` (PyPI's spdx-tools;
//! `make spdx-validator` installs it into `target/spdx-venv`), and found in
//! the test registry through the referrers tag schema.
//!
//! Tools: `dpkg-deb` (dpkg), `gpg`/`gpgconf` (gnupg), `umoci`, `skopeo`,
//! `oci-image-tool`, `docker-registry`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

const SPDX: &str = "application/spdx+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

// ---------------------------------------------------------------------------
// Fixture: base layout, apt repository, wheelhouse
// ---------------------------------------------------------------------------

/// `dpkg-deb --build` a package with one file; returns its path.
fn build_deb(
    name: &str,
    version: &str,
    arch: &str,
    extra: &str,
    file: &str,
    out: &Path,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tree = unique_dir(&format!("debtree-{name}"));
    let ctl = tree.join("DEBIAN");
    fs::create_dir_all(&ctl).unwrap();
    fs::set_permissions(&ctl, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        ctl.join("control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: kiln tests <t@example.invalid>\nPriority: optional\nSection: misc\n{extra}Description: {name} for kiln's SBOM tests\n test package\n"
        ),
    )
    .unwrap();
    let p = tree.join(file.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, format!("{name} {version}\n")).unwrap();
    fs::create_dir_all(out).unwrap();
    let deb = out.join(format!("{name}_{version}_{arch}.deb"));
    Command::new(require_tool("dpkg-deb"))
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb)
        .run_ok();
    let _ = fs::remove_dir_all(&tree);
    deb
}

/// A signed repository under DIR (suite `stable`, component `main`, amd64)
/// holding DEBS; returns the keyring that verifies it.
fn write_repo(dir: &Path, debs: &[PathBuf]) -> PathBuf {
    let mut packages = String::new();
    for deb in debs {
        let name = deb.file_name().unwrap().to_str().unwrap();
        let fields = Command::new(require_tool("dpkg-deb"))
            .arg("--field")
            .arg(deb)
            .run_ok()
            .stdout;
        let bytes = fs::read(deb).unwrap();
        packages.push_str(fields.trim_end());
        packages.push_str(&format!(
            "\nFilename: pool/main/{name}\nSize: {}\nSHA256: {}\n\n",
            bytes.len(),
            sha256_hex(&bytes)
        ));
    }
    let bin = dir.join("dists/stable/main/binary-amd64");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("Packages"), &packages).unwrap();
    let release = format!(
        "Origin: kiln-test\nSuite: stable\nCodename: stable\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: amd64\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
        sha256_hex(packages.as_bytes()),
        packages.len()
    );
    let dist = dir.join("dists/stable");
    fs::write(dist.join("Release"), release).unwrap();

    let home = new_signing_home("sbom-gnupg");
    sign_release(&dist, &home);
    let keyring = dir.join("keyring.gpg");
    gpg(
        &home,
        &["--yes", "--output", keyring.to_str().unwrap(), "--export"],
    );
    stop_agent(&home);
    keyring
}

/// A pure-Python wheel; returns its file name.
fn write_wheel(dir: &Path, name: &str, version: &str, meta: &str) -> String {
    let module = name.replace('-', "_");
    let file = format!("{module}-{version}-py3-none-any.whl");
    let di = format!("{module}-{version}.dist-info");
    let members: Vec<(String, Vec<u8>, u32)> = [
        (format!("{module}/__init__.py"), "VERSION = 1\n".to_string()),
        (
            format!("{di}/METADATA"),
            format!("Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{meta}"),
        ),
        (
            format!("{di}/WHEEL"),
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".into(),
        ),
    ]
    .into_iter()
    .map(|(p, d)| (p, d.into_bytes(), 0o644))
    .collect();
    fs::write(dir.join(&file), wheel_zip(&members)).unwrap();
    file
}

const BASE_STATUS: &str = "\
Package: base-files
Status: install ok installed
Priority: required
Architecture: amd64
Version: 12.4+deb12u5
Description: base files

Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library

Package: python3.11-minimal
Status: install ok installed
Priority: optional
Architecture: amd64
Source: python3.11
Version: 3.11.2-6+deb12u2
Description: minimal Python
";

const ZLIB_SHA256: &str = "5a8ca3d1c8d6e9b6b8a3f0f0b8f1c1a3e2d4c5b6a7980a1b2c3d4e5f60718293";

/// The base image's only layer.
fn base_layer() -> Vec<u8> {
    let conda = format!(
        r#"{{"name":"zlib","version":"1.3","build":"h4ab18f5_1","channel":"https://channels.example.invalid/conda-forge","subdir":"linux-64","sha256":"{ZLIB_SHA256}","license":"Zlib","fn":"zlib-1.3-h4ab18f5_1.conda"}}"#
    );
    make_tar(&[
        Item::Dir("etc/", 0o755),
        Item::File("etc/debian_version", b"12.5\n", 0o644),
        Item::File(
            "etc/os-release",
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
            0o644,
        ),
        Item::Dir("opt/", 0o755),
        Item::Dir("opt/conda/", 0o755),
        Item::Dir("opt/conda/conda-meta/", 0o755),
        Item::File(
            "opt/conda/conda-meta/zlib-1.3-h4ab18f5_1.json",
            conda.as_bytes(),
            0o644,
        ),
        Item::Dir("usr/", 0o755),
        Item::Dir("usr/bin/", 0o755),
        Item::File("usr/bin/python3.11", b"\x7fELF fake\n", 0o755),
        Item::Dir("usr/lib/", 0o755),
        Item::Dir("usr/lib/python3.11/", 0o755),
        Item::File("usr/lib/python3.11/os.py", b"# os\n", 0o644),
        Item::Dir("usr/lib/python3/", 0o755),
        Item::Dir("usr/lib/python3/dist-packages/", 0o755),
        Item::Dir("usr/lib/python3/dist-packages/six-1.16.0.dist-info/", 0o755),
        Item::File(
            "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nLicense: MIT\n",
            0o644,
        ),
        Item::Dir("var/", 0o755),
        Item::Dir("var/lib/", 0o755),
        Item::Dir("var/lib/dpkg/", 0o755),
        Item::Dir("var/lib/dpkg/info/", 0o755),
        Item::File("var/lib/dpkg/status", BASE_STATUS.as_bytes(), 0o644),
    ])
}

/// Everything the builds share, made once per test process.
struct Fixture {
    dir: PathBuf,
    keyring: PathBuf,
    base_manifest: String,
    /// .deb / wheel file name → sha256 hex.
    files: BTreeMap<String, String>,
}

impl Fixture {
    fn repo_url(&self) -> String {
        format!("file://{}", self.dir.join("repo").display())
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = unique_dir("sbom-fixture");
        let base = write_oci_layout(&dir.join("base"), "base", "amd64", &[base_layer()]);
        let pool = dir.join("repo/pool/main");
        let debs = vec![
            build_deb(
                "hello",
                "1.0-1",
                "amd64",
                "Depends: greet-data\nSource: hello-src\n",
                "/usr/bin/hello",
                &pool,
            ),
            build_deb(
                "greet-data",
                "1.0+dfsg-2",
                "all",
                "",
                "/usr/share/greet/data.txt",
                &pool,
            ),
        ];
        let keyring = write_repo(&dir.join("repo"), &debs);
        let wheels = dir.join("wheels");
        fs::create_dir_all(&wheels).unwrap();
        let mut files = BTreeMap::new();
        for deb in &debs {
            files.insert(
                deb.file_name().unwrap().to_string_lossy().into_owned(),
                sha256_hex(&fs::read(deb).unwrap()),
            );
        }
        for w in [
            write_wheel(
                &wheels,
                "demo-app",
                "1.2.0",
                "License-Expression: MIT OR Apache-2.0\nRequires-Dist: tiny_lib>=0.3\n",
            ),
            write_wheel(
                &wheels,
                "tiny_lib",
                "0.3",
                "License: Proprietary; see LICENSE.txt\n",
            ),
        ] {
            files.insert(w.clone(), sha256_hex(&fs::read(wheels.join(&w)).unwrap()));
        }
        Fixture {
            dir,
            keyring,
            base_manifest: base.manifest_digest,
            files,
        }
    })
}

/// A workspace whose spec builds on the fixture's base with `[apt]` and
/// `[pip]` (and, with `name`, pushes to it).
fn workspace(label: &str, name: Option<&str>) -> Workspace {
    let f = fixture();
    let ws = Workspace::new(label);
    copy_dir(&f.dir.join("base"), &ws.join("base"));
    ws.write("app/hello.txt", "hello\n");
    let name = name
        .map(|n| format!("name = \"{n}\"\n"))
        .unwrap_or_default();
    ws.spec(&format!(
        r#"[image]
{name}tags = ["t"]
base = "oci:base:base"
platforms = ["linux/amd64"]

[apt]
packages = ["hello"]
sources = ["deb [signed-by={}] {} stable main"]

[pip]
packages = ["demo-app"]
find-links = ["{}"]
no-index = true
isolated = true

[[files]]
src = "app/hello.txt"
dst = "/app/hello.txt"
"#,
        f.keyring.display(),
        f.repo_url(),
        f.dir.join("wheels").display(),
    ));
    ws
}

// ---------------------------------------------------------------------------
// Reading SBOMs and images
// ---------------------------------------------------------------------------

/// purls of the SBOM's packages of one purl type (`deb`, `pypi`, `conda`).
fn purls(doc: &Value, ty: &str) -> BTreeSet<String> {
    packages(doc)
        .iter()
        .filter_map(purl_of)
        .filter(|u| u.starts_with(&format!("pkg:{ty}/")))
        .collect()
}

fn packages(doc: &Value) -> Vec<Value> {
    doc["packages"].as_array().expect("packages").clone()
}

fn purl_of(p: &Value) -> Option<String> {
    p["externalRefs"].as_array().and_then(|refs| {
        refs.iter()
            .find(|r| r["referenceType"] == "purl")
            .map(|r| s(r, "referenceLocator").to_string())
    })
}

#[track_caller]
fn package<'a>(doc: &'a Value, purl: &str) -> &'a Value {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| purl_of(p).as_deref() == Some(purl))
        .unwrap_or_else(|| panic!("no package {purl} in SBOM:\n{doc:#}"))
}

fn sha256_of(p: &Value) -> Option<String> {
    p["checksums"].as_array().and_then(|c| {
        c.iter()
            .find(|c| c["algorithm"] == "SHA256")
            .map(|c| s(c, "checksumValue").to_string())
    })
}

fn relationships(doc: &Value) -> BTreeSet<(String, String, String)> {
    doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                s(r, "spdxElementId").to_string(),
                s(r, "relationshipType").to_string(),
                s(r, "relatedSpdxElement").to_string(),
            )
        })
        .collect()
}

/// Percent-encoding as purls use it for versions (`+` → `%2B`; `:` stays).
fn purl_version(v: &str) -> String {
    v.replace('+', "%2B")
}

/// purls of every installed package in the rootfs's dpkg status.
fn dpkg_purls(rootfs: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(rootfs.join("var/lib/dpkg/status")).unwrap();
    let mut out = BTreeSet::new();
    for para in text.split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .map(str::trim)
        };
        if let (Some(name), Some(version), Some(arch), Some(status)) = (
            field("Package"),
            field("Version"),
            field("Architecture"),
            field("Status"),
        ) {
            if status.ends_with(" installed") {
                out.insert(format!(
                    "pkg:deb/debian/{name}@{}?arch={arch}",
                    purl_version(version)
                ));
            }
        }
    }
    out
}

/// purls of every `*.dist-info` in a `site-packages`/`dist-packages` of the rootfs.
fn dist_purls(rootfs: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let in_site = dir
                .file_name()
                .is_some_and(|n| n == "site-packages" || n == "dist-packages");
            if in_site && name.ends_with(".dist-info") {
                let meta = fs::read_to_string(p.join("METADATA")).unwrap();
                let get = |k: &str| {
                    meta.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                        .unwrap()
                        .trim()
                        .to_string()
                };
                let norm = get("Name").to_lowercase().replace(['_', '.'], "-");
                out.insert(format!("pkg:pypi/{norm}@{}", get("Version")));
            } else if p.is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(rootfs, &mut out);
    out
}

/// Plain HTTP/1.0 GET on the loopback registry: (status, body).
fn http_get(port: u16, path: &str, accept: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    (status, buf[split + 4..].to_vec())
}

fn build(ws: &Workspace, args: &[&str]) -> Value {
    let out = ws
        .kiln()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--json"])
        .args(args)
        .run_ok();
    let v = out.json();
    check_build_json(&v);
    v
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The SBOM lists every dpkg package and Python distribution of the final
/// image, with purls, the sha256 of what kiln installed, the base image as
/// an element, and the same bytes on every build.
#[test]
fn sbom_lists_the_final_image_and_is_deterministic() {
    let f = fixture();
    let ws = workspace("sbom-hermetic", None);
    let v = build(&ws, &["-o", "oci:out"]);
    let again = build(&ws, &["-o", "oci:out2"]);
    assert_eq!(again["digest"], v["digest"]);
    let digest = s(&v, "digest").to_string();

    // The report names the file; it sits beside the layout.
    let report = v["sbom"].as_array().expect("sbom in the build JSON");
    assert_eq!(report.len(), 1, "{v}");
    assert_eq!(report[0]["platform"], "linux/amd64");
    let paths = strs(&report[0]["paths"]);
    assert_eq!(paths.len(), 1, "{v}");
    let path = ws.join(&paths[0]);
    assert_eq!(path, ws.join("out/sbom/linux-amd64.spdx.json"));
    let bytes = fs::read(&path).unwrap();
    assert_eq!(digest_of(&bytes), s(&report[0], "digest"));
    let bytes2 = fs::read(ws.join("out2/sbom/linux-amd64.spdx.json")).unwrap();
    assert_eq!(bytes, bytes2, "two builds, the same SBOM bytes");
    assert_eq!(again["sbom"][0]["digest"], report[0]["digest"]);

    // The layout with its sbom/ directory is still a layout to every tool.
    oci_validate(&ws.join("out"), "t");
    assert_eq!(
        skopeo_inspect(&format!("oci:{}:t", ws.join("out").display()))["Digest"],
        digest.as_str()
    );
    let rootfs = umoci_unpack(&ws.join("out"), "t", &ws.join("bundle"));

    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["dataLicense"], "CC0-1.0");
    assert_eq!(doc["SPDXID"], "SPDXRef-DOCUMENT");
    assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        s(&doc, "documentNamespace").contains(hex),
        "namespace from the manifest digest: {}",
        doc["documentNamespace"]
    );

    // Every installed dpkg package and every dist-info of the image, nothing else.
    let debs = dpkg_purls(&rootfs);
    assert_eq!(debs.len(), 5, "3 base + 2 kiln packages: {debs:?}");
    assert_eq!(purls(&doc, "deb"), debs);
    let dists = dist_purls(&rootfs);
    assert_eq!(
        dists,
        BTreeSet::from([
            "pkg:pypi/demo-app@1.2.0".to_string(),
            "pkg:pypi/six@1.16.0".to_string(),
            "pkg:pypi/tiny-lib@0.3".to_string(),
        ])
    );
    assert_eq!(purls(&doc, "pypi"), dists);
    assert_eq!(
        purls(&doc, "conda"),
        BTreeSet::from([
            "pkg:conda/zlib@1.3?build=h4ab18f5_1&channel=conda-forge&subdir=linux-64&type=conda"
                .to_string()
        ])
    );

    // sha256 of what kiln installed; none claimed for base packages.
    let hello = package(&doc, "pkg:deb/debian/hello@1.0-1?arch=amd64");
    assert_eq!(
        sha256_of(hello).as_deref(),
        Some(f.files["hello_1.0-1_amd64.deb"].as_str())
    );
    assert_eq!(hello["versionInfo"], "1.0-1");
    let data = package(&doc, "pkg:deb/debian/greet-data@1.0%2Bdfsg-2?arch=all");
    assert_eq!(
        sha256_of(data).as_deref(),
        Some(f.files["greet-data_1.0+dfsg-2_all.deb"].as_str())
    );
    let demo = package(&doc, "pkg:pypi/demo-app@1.2.0");
    assert_eq!(
        sha256_of(demo).as_deref(),
        Some(f.files["demo_app-1.2.0-py3-none-any.whl"].as_str())
    );
    assert_eq!(demo["licenseDeclared"], "MIT OR Apache-2.0");
    let tiny = package(&doc, "pkg:pypi/tiny-lib@0.3");
    assert_eq!(
        sha256_of(tiny).as_deref(),
        Some(f.files["tiny_lib-0.3-py3-none-any.whl"].as_str())
    );
    let tiny_license = s(tiny, "licenseDeclared");
    assert!(tiny_license.starts_with("LicenseRef-"), "{tiny_license}");
    assert!(doc["hasExtractedLicensingInfos"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["licenseId"] == tiny_license
            && e["extractedText"] == "Proprietary; see LICENSE.txt"));
    let libc = package(&doc, "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64");
    assert_eq!(sha256_of(libc), None);
    assert_eq!(libc["licenseDeclared"], "NOASSERTION");
    let six = package(&doc, "pkg:pypi/six@1.16.0");
    assert_eq!(six["licenseDeclared"], "MIT");
    let zlib = package(
        &doc,
        "pkg:conda/zlib@1.3?build=h4ab18f5_1&channel=conda-forge&subdir=linux-64&type=conda",
    );
    assert_eq!(sha256_of(zlib).as_deref(), Some(ZLIB_SHA256));
    assert_eq!(zlib["licenseDeclared"], "Zlib");

    // The image, the base image and how everything relates.
    let all = packages(&doc);
    let image = all.iter().find(|p| p["SPDXID"] == "SPDXRef-Image").unwrap();
    assert_eq!(sha256_of(image).as_deref(), Some(hex));
    let base = all
        .iter()
        .find(|p| p["SPDXID"] == "SPDXRef-BaseImage")
        .unwrap();
    assert_eq!(base["versionInfo"], f.base_manifest.as_str());
    assert_eq!(
        sha256_of(base).as_deref(),
        f.base_manifest.strip_prefix("sha256:")
    );
    let rels = relationships(&doc);
    let has = |a: &str, t: &str, b: &str| rels.contains(&(a.into(), t.into(), b.into()));
    assert!(has("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image"));
    assert!(has("SPDXRef-Image", "DESCENDANT_OF", "SPDXRef-BaseImage"));
    let mut ids = BTreeSet::new();
    for p in &all {
        let id = s(p, "SPDXID");
        assert!(
            id.strip_prefix("SPDXRef-").is_some_and(|r| !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')),
            "SPDXID {id}"
        );
        assert!(ids.insert(id.to_string()), "duplicate SPDXID {id}");
        if id != "SPDXRef-Image" && id != "SPDXRef-BaseImage" {
            assert!(has("SPDXRef-Image", "CONTAINS", id), "image contains {id}");
        }
    }
    for (purl, from_base) in [
        ("pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64", true),
        ("pkg:pypi/six@1.16.0", true),
        ("pkg:deb/debian/hello@1.0-1?arch=amd64", false),
        ("pkg:pypi/demo-app@1.2.0", false),
    ] {
        assert_eq!(
            has(
                "SPDXRef-BaseImage",
                "CONTAINS",
                s(package(&doc, purl), "SPDXID")
            ),
            from_base,
            "base contains {purl}"
        );
    }
    // Sorted: packages after the two images come in (type, name) order.
    let names: Vec<String> = all[2..]
        .iter()
        .map(|p| {
            let u = purl_of(p).unwrap();
            let ty = u.split('/').next().unwrap().to_string();
            format!("{ty} {}", s(p, "name"))
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    // A real validator accepts it.
    assert_valid_spdx(&path);

    // --no-sbom: no directory, nothing reported, the same image.
    let none = build(&ws, &["--no-sbom", "-o", "oci:plain"]);
    assert_eq!(none["digest"], v["digest"]);
    assert_eq!(none["sbom"], serde_json::json!([]));
    assert!(!ws.join("plain/sbom").exists());
}

/// Pushed, the SBOM is a referrer of the image manifest; Debian's
/// docker-registry has no referrers API, so kiln writes the referrers tag
/// schema's `sha256-<hex>` index, and a second push changes nothing.
#[test]
fn sbom_is_pushed_as_a_referrer() {
    let reg = Registry::shared();
    let repo = unique_repo("sbom-push");
    let ws = workspace("sbom-push", Some(&reg.repo(&repo)));
    let v = build(&ws, &["--push", "-o", "oci:out"]);
    let digest = s(&v, "digest").to_string();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let push = &v["push"];
    assert_eq!(push["referrers"], 1, "{push}");
    assert_eq!(
        push["referrer_blobs_uploaded"], 2,
        "SBOM and empty config: {push}"
    );
    assert_eq!(push["referrer_tags_updated"], 1, "{push}");
    let referrer = s(&v["sbom"][0], "referrer").to_string();

    // The registry has no referrers API ...
    assert_eq!(
        http_get(
            reg.port,
            &format!("/v2/{repo}/referrers/{digest}"),
            MT_INDEX
        )
        .0,
        404
    );
    // ... so the tag schema's index lists the referrer.
    let index = skopeo_inspect_raw(&reg.docker_ref(&repo, &format!("sha256-{hex}")));
    assert_eq!(index["mediaType"], MT_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["artifactType"], SPDX);
    assert_eq!(entries[0]["mediaType"], MT_MANIFEST);
    assert_eq!(s(&entries[0], "digest"), referrer);

    // The artifact manifest: empty config, the SBOM, the image as subject.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}@{referrer}", reg.repo(&repo)),
    ])
    .ok();
    assert_eq!(digest_of(raw.stdout.as_bytes()), referrer);
    assert_eq!(entries[0]["size"], raw.stdout.len());
    let m = raw.json();
    assert_eq!(m["mediaType"], MT_MANIFEST);
    assert_eq!(m["artifactType"], SPDX);
    assert_eq!(m["config"]["mediaType"], EMPTY);
    assert_eq!(m["config"]["size"], 2);
    assert_eq!(m["config"]["digest"], digest_of(b"{}"));
    assert_eq!(m["subject"]["digest"], digest.as_str());
    assert_eq!(m["subject"]["mediaType"], MT_MANIFEST);
    let image_raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reg.docker_ref(&repo, "t"),
    ])
    .ok();
    assert_eq!(m["subject"]["size"], image_raw.stdout.len());
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], SPDX);

    // The SBOM blob is the document written beside the layout, and valid SPDX.
    let blob_digest = s(&layers[0], "digest");
    assert_eq!(blob_digest, s(&v["sbom"][0], "digest"));
    let (status, blob) = http_get(reg.port, &format!("/v2/{repo}/blobs/{blob_digest}"), "*/*");
    assert_eq!(status, 200);
    assert_eq!(digest_of(&blob), blob_digest);
    assert_eq!(
        blob,
        fs::read(ws.join("out/sbom/linux-amd64.spdx.json")).unwrap()
    );
    let doc: Value = serde_json::from_slice(&blob).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let image = package(
        &doc,
        &format!(
            "pkg:oci/{}@{digest}?arch=amd64&repository_url={}&tag=t",
            repo.rsplit('/').next().unwrap(),
            reg.repo(&repo)
        ),
    );
    assert_eq!(image["SPDXID"], "SPDXRef-Image");
    let (_, empty) = http_get(
        reg.port,
        &format!("/v2/{repo}/blobs/{}", digest_of(b"{}")),
        "*/*",
    );
    assert_eq!(empty, b"{}");

    // Pushing again uploads nothing and leaves one entry in the index.
    let posts = reg.upload_posts(&repo);
    let second = build(&ws, &["--push"]);
    assert_eq!(second["sbom"][0]["referrer"], referrer.as_str());
    assert_eq!(
        second["push"]["referrer_blobs_uploaded"], 0,
        "{}",
        second["push"]
    );
    assert_eq!(
        second["push"]["referrer_tags_updated"], 0,
        "{}",
        second["push"]
    );
    assert_eq!(reg.upload_posts(&repo), posts);
    let index = skopeo_inspect_raw(&reg.docker_ref(&repo, &format!("sha256-{hex}")));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
}

/// Several platforms: one SBOM and one referrer per platform manifest.
#[test]
fn multi_platform_push_gets_one_referrer_per_manifest() {
    let reg = Registry::shared();
    let repo = unique_repo("sbom-multi");
    let ws = Workspace::new("sbom-multi");
    ws.write("hello.txt", format!("hello {repo}\n"));
    ws.spec(&format!(
        "[image]\nname = \"{}\"\ntags = [\"m\"]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n",
        reg.repo(&repo)
    ));
    let v = build(&ws, &["--push", "-o", "oci:out"]);
    assert_eq!(v["push"]["referrers"], 2, "{}", v["push"]);
    let sboms = v["sbom"].as_array().unwrap();
    assert_eq!(sboms.len(), 2);
    assert!(ws.join("out/sbom/linux-amd64.spdx.json").is_file());
    assert!(ws.join("out/sbom/linux-arm64.spdx.json").is_file());
    for (m, sb) in v["manifests"].as_array().unwrap().iter().zip(sboms) {
        assert_eq!(m["platform"], sb["platform"]);
        let md = s(m, "digest");
        let index = skopeo_inspect_raw(&reg.docker_ref(
            &repo,
            &format!("sha256-{}", md.strip_prefix("sha256:").unwrap()),
        ));
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{index}");
        assert_eq!(entries[0]["digest"], sb["referrer"]);
        let art = skopeo_inspect_raw(&format!(
            "docker://{}@{}",
            reg.repo(&repo),
            s(sb, "referrer")
        ));
        assert_eq!(art["subject"]["digest"], md);
        let arch = s(m, "platform").rsplit('/').next().unwrap().to_string();
        let file = ws.join(format!("out/sbom/linux-{arch}.spdx.json"));
        let doc = read_json(&file);
        assert_eq!(
            doc["packages"].as_array().unwrap().len(),
            1,
            "only the image"
        );
        assert_valid_spdx(&file);
    }
}
