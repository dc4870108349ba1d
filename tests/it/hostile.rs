//! A hostile corpus, generated here: specs that reach outside their
//! context, OCI layouts and docker-archives that lie about their contents,
//! and wheels that contradict themselves. Each case must fail with exit
//! code 2 and a message naming the culprit, write nothing into the
//! workspace (no output, no leftovers), and never panic.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::*;

/// One hostile input: what to write into a fresh workspace, and a fragment
/// the error must contain.
struct Case {
    name: String,
    fragment: String,
    make: Box<dyn Fn(&Workspace)>,
}

fn case(name: &str, fragment: &str, make: impl Fn(&Workspace) + 'static) -> Case {
    Case {
        name: name.into(),
        fragment: fragment.into(),
        make: Box::new(make),
    }
}

const FILE: &str = "[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n";

fn spec_cases() -> Vec<Case> {
    let spec = |name: &str, body: &'static str, fragment: &str| {
        case(name, fragment, move |ws: &Workspace| {
            ws.spec(body);
        })
    };
    vec![
        case(
            "files: absolute source",
            "outside the build context",
            |ws| {
                ws.spec("[image]\n[[files]]\nsrc = \"/etc/passwd\"\ndst = \"/p\"\n");
            },
        ),
        case("files: .. climbs out", "outside the build context", |ws| {
            ws.spec(&format!(
                "[image]\n[[files]]\nsrc = \"{}/etc/passwd\"\ndst = \"/p\"\n",
                [".."; 16].join("/")
            ));
        }),
        case(
            "files: symlinked directory leads out",
            "outside the build context",
            |ws| {
                ws.symlink("etc-link", "/etc");
                ws.spec("[image]\n[[files]]\nsrc = \"etc-link/passwd\"\ndst = \"/p\"\n");
            },
        ),
        spec(
            "files: mode above 07777",
            "[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/h\"\nmode = \"17777\"\n",
            "invalid mode",
        ),
        spec(
            "files: uid above 32 bits",
            "[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/h\"\nowner = \"4294967296:0\"\n",
            "invalid owner",
        ),
        spec(
            "files: setuid without allow-setid",
            "[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/h\"\nmode = \"4755\"\n",
            "allow-setid",
        ),
        spec(
            "files: relative destination",
            "[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"etc/h\"\n",
            "dst",
        ),
        spec("spec: unknown key", "[image]\nnmae = \"x\"\n", "nmae"),
        spec(
            "spec: unknown architecture",
            "[image]\nplatforms = [\"linux/sparc\"]\n",
            "sparc",
        ),
        spec(
            "spec: empty oci: base",
            "[image]\nbase = \"oci:\"\n",
            "oci:",
        ),
        spec("spec: not TOML", "[image\n", "kiln.toml"),
    ]
}

/// A valid one-layer amd64 layout at `ws/base`, tagged `v1`.
fn layout(ws: &Workspace) -> HandmadeImage {
    let layer = make_tar(&[
        Item::Dir("etc/", 0o755),
        Item::File("etc/base", b"base\n", 0o644),
    ]);
    write_oci_layout(&ws.join("base"), "v1", "amd64", &[layer])
}

fn blob(ws: &Workspace, digest: &str) -> std::path::PathBuf {
    ws.join("base/blobs/sha256").join(&digest[7..])
}

fn on_layout(ws: &Workspace) {
    ws.spec(&format!(
        "[image]\nbase = \"oci:base:v1\"\nplatforms = [\"linux/amd64\"]\n{FILE}"
    ));
}

fn layout_cases() -> Vec<Case> {
    let tamper = |name: &str, fragment: &str, f: fn(&Workspace, &HandmadeImage)| {
        case(name, fragment, move |ws: &Workspace| {
            let img = layout(ws);
            f(ws, &img);
            on_layout(ws);
        })
    };
    vec![
        tamper("layout: index.json is not JSON", "index.json", |ws, _| {
            fs::write(ws.join("base/index.json"), "{not json").unwrap();
        }),
        tamper("layout: no oci-layout file", "oci-layout", |ws, _| {
            fs::remove_file(ws.join("base/oci-layout")).unwrap();
        }),
        tamper("layout: manifest blob missing", "sha256:", |ws, img| {
            fs::remove_file(blob(ws, &img.manifest_digest)).unwrap();
        }),
        tamper("layout: manifest blob altered", "sha256:", |ws, img| {
            fs::write(blob(ws, &img.manifest_digest), "{}").unwrap();
        }),
        tamper("layout: config blob missing", "sha256:", |ws, img| {
            fs::remove_file(blob(ws, &img.config_digest)).unwrap();
        }),
        tamper("layout: config is not JSON", "config", |ws, img| {
            rewrite_config(ws, img, |_| json!("not an object"));
        }),
        tamper(
            "layout: layer blob missing",
            &String::from("sha256:"),
            |ws, img| {
                fs::remove_file(blob(ws, &img.layer_digests[0])).unwrap();
            },
        ),
        tamper("layout: layer blob altered", "sha256:", |ws, img| {
            fs::write(blob(ws, &img.layer_digests[0]), gzip(b"not the layer")).unwrap();
        }),
        tamper("layout: more diff_ids than layers", "diff_id", |ws, img| {
            rewrite_config(ws, img, |mut c| {
                c["rootfs"]["diff_ids"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(format!("sha256:{}", "0".repeat(64))));
                c
            });
        }),
        tamper(
            "layout: a diff_id that is not the layer's",
            "diff_id",
            |ws, img| {
                rewrite_config(ws, img, |mut c| {
                    c["rootfs"]["diff_ids"][0] = json!(format!("sha256:{}", "1".repeat(64)));
                    c
                });
            },
        ),
        tamper(
            "layout: layer size of 2^62",
            "descriptor says",
            |ws, img| {
                rewrite_manifest(ws, img, |mut m| {
                    m["layers"][0]["size"] = json!(1u64 << 62);
                    m
                });
            },
        ),
        tamper(
            "layout: layer blob is a symlink to /dev/zero",
            "symlink",
            |ws, img| {
                let p = blob(ws, &img.layer_digests[0]);
                fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
            },
        ),
        tamper("layout: manifest blob is a FIFO", "FIFO", |ws, img| {
            let p = blob(ws, &img.manifest_digest);
            fs::remove_file(&p).unwrap();
            let status = std::process::Command::new("mkfifo")
                .arg(&p)
                .status()
                .unwrap();
            assert!(status.success());
        }),
        tamper(
            "layout: index.json is a symlink to a host file",
            "symlink",
            |ws, _| {
                let p = ws.join("base/index.json");
                fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
            },
        ),
        case("layout: tag that does not exist", "nope", |ws| {
            layout(ws);
            ws.spec(&format!("[image]\nbase = \"oci:base:nope\"\n{FILE}"));
        }),
        case("layout: platform the base lacks", "arm64", |ws| {
            layout(ws);
            ws.spec(&format!(
                "[image]\nbase = \"oci:base:v1\"\nplatforms = [\"linux/arm64\"]\n{FILE}"
            ));
        }),
        case("layout: not a directory", "base", |ws| {
            ws.write("base", "a file, not a layout");
            on_layout(ws);
        }),
    ]
}

/// Replace the config's JSON in the layout, re-pointing the manifest and
/// the index at the new blobs, so only the content lies.
fn rewrite_config(ws: &Workspace, img: &HandmadeImage, f: impl Fn(Value) -> Value) {
    let config = read_json(&blob(ws, &img.config_digest));
    let bytes = serde_json::to_vec(&f(config)).unwrap();
    let config_digest = digest_of(&bytes);
    fs::write(blob(ws, &config_digest), &bytes).unwrap();
    rewrite_manifest(ws, img, |mut manifest| {
        manifest["config"]["digest"] = json!(config_digest);
        manifest["config"]["size"] = json!(bytes.len());
        manifest
    });
}

/// Replace the manifest's JSON in the layout, re-pointing the index at it.
fn rewrite_manifest(ws: &Workspace, img: &HandmadeImage, f: impl Fn(Value) -> Value) {
    let manifest = f(read_json(&blob(ws, &img.manifest_digest)));
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let mdigest = digest_of(&mbytes);
    fs::write(blob(ws, &mdigest), &mbytes).unwrap();
    let mut index = read_json(&ws.join("base/index.json"));
    index["manifests"][0]["digest"] = json!(mdigest);
    index["manifests"][0]["size"] = json!(mbytes.len());
    fs::write(
        ws.join("base/index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A docker-archive of tar members (name, bytes).
fn archive(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Written raw so that hostile names (`..`) go in unchanged.
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn archive_cases() -> Vec<Case> {
    let layer = make_tar(&[Item::File("etc/x", b"x\n", 0o644)]);
    let diff = digest_of(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff]}, "config": {}
    }))
    .unwrap();
    let manifest = |config_name: &str, layers: &[&str]| {
        serde_json::to_vec(&json!([{"Config": config_name, "RepoTags": [], "Layers": layers}]))
            .unwrap()
    };
    let with = |name: &str, fragment: &str, members: Vec<(&'static str, Vec<u8>)>| {
        let bytes = archive(&members);
        case(name, fragment, move |ws: &Workspace| {
            ws.write("img.tar", &bytes);
            ws.spec(&format!(
                "[image]\nbase = \"docker-archive:img.tar\"\n{FILE}"
            ));
        })
    };
    let mut linked = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest("c.json", &["l.tar"])),
        ("c.json", config.clone()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        linked.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    linked.append_link(&mut h, "l.tar", "/etc/passwd").unwrap();
    let linked = linked.into_inner().unwrap();
    vec![
        case(
            "archive: layer member is a symlink to a host file",
            "symlink",
            move |ws| {
                ws.write("img.tar", &linked);
                ws.spec(&format!(
                    "[image]\nbase = \"docker-archive:img.tar\"\n{FILE}"
                ));
            },
        ),
        with("archive: not a tar", "img.tar", vec![]),
        case("archive: random bytes", "img.tar", |ws| {
            ws.write("img.tar", vec![0x42u8; 3000]);
            ws.spec(&format!(
                "[image]\nbase = \"docker-archive:img.tar\"\n{FILE}"
            ));
        }),
        with(
            "archive: no manifest.json",
            "manifest.json",
            vec![("c.json", config.clone()), ("l.tar", layer.clone())],
        ),
        with(
            "archive: manifest.json is not JSON",
            "manifest.json",
            vec![("manifest.json", b"[{".to_vec())],
        ),
        with(
            "archive: config missing",
            "c.json",
            vec![
                ("manifest.json", manifest("c.json", &["l.tar"])),
                ("l.tar", layer.clone()),
            ],
        ),
        with(
            "archive: layer missing",
            "l.tar",
            vec![
                ("manifest.json", manifest("c.json", &["l.tar"])),
                ("c.json", config.clone()),
            ],
        ),
        with(
            "archive: member climbs out",
            "..",
            vec![
                ("manifest.json", manifest("c.json", &["../l.tar"])),
                ("c.json", config.clone()),
                ("../l.tar", layer.clone()),
            ],
        ),
        with(
            "archive: more layers than diff_ids",
            "layer",
            vec![
                ("manifest.json", manifest("c.json", &["l.tar", "l.tar"])),
                ("c.json", config.clone()),
                ("l.tar", layer.clone()),
            ],
        ),
        with(
            "archive: two images",
            "image",
            vec![
                (
                    "manifest.json",
                    serde_json::to_vec(&json!([
                        {"Config": "c.json", "RepoTags": [], "Layers": ["l.tar"]},
                        {"Config": "c.json", "RepoTags": [], "Layers": ["l.tar"]}
                    ]))
                    .unwrap(),
                ),
                ("c.json", config.clone()),
                ("l.tar", layer.clone()),
            ],
        ),
    ]
}

/// Wheel members: path, content, unix mode.
type Members = Vec<(String, Vec<u8>, u32)>;

/// The members of a consistent pure-Python wheel `evil 1.0`.
fn evil_members() -> Members {
    vec![
        ("evil/__init__.py".into(), b"X = 1\n".to_vec(), 0o644),
        (
            "evil-1.0.dist-info/METADATA".into(),
            b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n".to_vec(),
            0o644,
        ),
        (
            "evil-1.0.dist-info/WHEEL".into(),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ]
}

/// A zip written member by member, no RECORD added.
fn raw_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in members {
        z.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn wheel_cases() -> Vec<Case> {
    let with = |name: &str, fragment: &str, file: &'static str, bytes: Vec<u8>| {
        case(name, fragment, move |ws: &Workspace| {
            python_base(ws);
            ws.write(&format!("wheels/{file}"), &bytes);
            ws.spec(
                "[image]\nbase = \"oci:py:v1\"\n\n[pip]\npackages = [\"evil\"]\nfind-links = [\"wheels\"]\nno-index = true\n",
            );
        })
    };
    let name = "evil-1.0-py3-none-any.whl";
    let good = evil_members();
    let altered = |f: &dyn Fn(&mut Members)| {
        let mut m = good.clone();
        f(&mut m);
        m
    };
    // A RECORD for the good members, zipped with `members` (raw).
    let record: String = good
        .iter()
        .map(|(p, d, _)| format!("{p},{},{}\n", record_hash(d), d.len()))
        .chain(["evil-1.0.dist-info/RECORD,,\n".to_string()])
        .collect();
    let with_record = |members: &[(&str, &[u8])]| {
        let mut all = members.to_vec();
        all.push(("evil-1.0.dist-info/RECORD", record.as_bytes()));
        raw_zip(&all)
    };
    let meta: &[u8] = b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n";
    let wheel: &[u8] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    // Stored members, one altered after zipping: its CRC-32 no longer
    // holds. (A member that merely disagrees with its RECORD line is
    // installed, as pip and uv install it: see pip_hermetic.)
    let altered_after = {
        use std::io::Write;
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (n, d) in [
            ("evil/__init__.py", &b"X = 1\n"[..]),
            ("evil-1.0.dist-info/METADATA", meta),
            ("evil-1.0.dist-info/WHEEL", wheel),
            ("evil-1.0.dist-info/RECORD", record.as_bytes()),
        ] {
            z.start_file(n, stored).unwrap();
            z.write_all(d).unwrap();
        }
        let mut bytes = z.finish().unwrap().into_inner();
        let at = bytes.windows(6).position(|w| w == b"X = 1\n").unwrap();
        bytes[at + 4] = b'2';
        bytes
    };
    let unlisted = with_record(&[
        ("evil/__init__.py", b"X = 1\n"),
        ("evil/extra.py", b""),
        ("evil-1.0.dist-info/METADATA", meta),
        ("evil-1.0.dist-info/WHEEL", wheel),
    ]);
    let no_record = raw_zip(&[
        ("evil/__init__.py", b"X = 1\n"),
        ("evil-1.0.dist-info/METADATA", meta),
        ("evil-1.0.dist-info/WHEEL", wheel),
    ]);
    vec![
        with(
            "wheel: member altered after zipping",
            "`evil/__init__.py`: CRC-32 mismatch",
            name,
            altered_after,
        ),
        with("wheel: no RECORD", "RECORD", name, no_record),
        with(
            "wheel: member not in RECORD",
            "evil/extra.py",
            name,
            unlisted,
        ),
        with(
            "wheel: two .dist-info directories",
            ".dist-info",
            name,
            wheel_zip(&altered(&|m| {
                m.push((
                    "other-1.0.dist-info/METADATA".into(),
                    b"Name: other\n".to_vec(),
                    0o644,
                ))
            })),
        ),
        with(
            "wheel: WHEEL tag contradicts the file name",
            "WHEEL",
            name,
            wheel_zip(&altered(&|m| {
                m[2].1 = b"Wheel-Version: 1.0\nTag: cp311-cp311-manylinux_2_17_x86_64\n".to_vec()
            })),
        ),
        with(
            "wheel: METADATA names another project",
            "METADATA",
            name,
            wheel_zip(&altered(&|m| {
                m[1].1 = b"Metadata-Version: 2.1\nName: evil\nVersion: 9.9\n".to_vec()
            })),
        ),
        with(
            "wheel: member climbs out",
            "..",
            name,
            raw_zip(&[
                ("../../../../tmp/evil.py", b"pwned"),
                (
                    "evil-1.0.dist-info/METADATA",
                    b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n",
                ),
            ]),
        ),
        with(
            "wheel: absolute member",
            "absolute",
            name,
            raw_zip(&[
                ("/etc/evil", b"pwned"),
                (
                    "evil-1.0.dist-info/METADATA",
                    b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n",
                ),
            ]),
        ),
        with("wheel: duplicate member", "twice", name, {
            let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            use std::io::Write;
            for (n, d) in [
                ("evil/__init__.py", &b"X = 1\n"[..]),
                ("evil//__init__.py", &b"X = 2\n"[..]),
                (
                    "evil-1.0.dist-info/METADATA",
                    &b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n"[..],
                ),
            ] {
                z.start_file(n, zip::write::SimpleFileOptions::default())
                    .unwrap();
                z.write_all(d).unwrap();
            }
            z.finish().unwrap().into_inner()
        }),
        with(
            "wheel: not a zip",
            "evil-1.0-py3-none-any.whl",
            name,
            b"PK\x03\x04 not really".to_vec(),
        ),
    ]
}

#[test]
fn hostile_inputs_are_refused_naming_the_culprit() {
    let mut cases = spec_cases();
    cases.extend(layout_cases());
    cases.extend(archive_cases());
    cases.extend(wheel_cases());
    let mut failures = Vec::new();
    let total = cases.len();
    for c in &cases {
        let ws = Workspace::new("hostile");
        ws.write("hello.txt", "hello\n");
        (c.make)(&ws);
        let before = ws.listing();
        let cache = unique_dir("hostile-cache");
        let r = ws
            .kiln()
            .env("KILN_CACHE", &cache)
            .args(["build", "-o", "oci:out"])
            .run();
        let mut wrong = Vec::new();
        if r.code() != Some(2) {
            wrong.push(format!("exit {:?}, expected 2", r.code()));
        }
        if !r.stderr.to_lowercase().contains(&c.fragment.to_lowercase()) {
            wrong.push(format!("message lacks `{}`", c.fragment));
        }
        if r.stderr.contains("panicked") {
            wrong.push("panicked".into());
        }
        if ws.listing() != before {
            wrong.push("the workspace changed".into());
        }
        if Path::new("/tmp/evil.py").exists() || Path::new("/etc/evil").exists() {
            wrong.push("wrote outside".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}",
                c.name,
                wrong.join("; "),
                r.stderr.trim()
            ));
        }
    }
    eprintln!(
        "hostile: {} of {total} cases refused as required",
        total - failures.len()
    );
    assert!(total >= 40, "the corpus has {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} hostile cases misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `kill -9` at arbitrary moments of a build, then a rebuild on the same
/// cache: the rebuild gives the clean-cache digest and removes every
/// temporary the killed runs left (in the cache and beside the outputs).
#[test]
fn killed_builds_leave_nothing_behind_after_a_rebuild() {
    let ws = Workspace::new("kill9");
    ws.write("a.txt", "a\n");
    let big: Vec<u8> = (0..(24u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    ws.write("big.bin", big);
    ws.spec(
        "[image]\n[[files]]\nsrc = \"a.txt\"\ndst = \"/a\"\n\n[[files]]\nsrc = \"big.bin\"\ndst = \"/big\"\n",
    );
    let args = [
        "build",
        "-o",
        "oci:out",
        "-o",
        "docker-archive:img.tar",
        "--json",
    ];
    let clean = ws
        .kiln()
        .env("KILN_CACHE", unique_dir("kill-clean-cache"))
        .args(args)
        .run_ok()
        .json();
    fs::remove_dir_all(ws.join("out")).unwrap();
    fs::remove_file(ws.join("img.tar")).unwrap();

    let cache = unique_dir("kill-cache");
    const KILLS: u64 = 8;
    for i in 0..KILLS {
        let mut child = ws
            .kiln()
            .env("KILN_CACHE", &cache)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30 + 60 * i));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    let again = ws
        .kiln()
        .env("KILN_CACHE", &cache)
        .args(args)
        .run_ok()
        .json();
    assert_eq!(
        again["digest"], clean["digest"],
        "a rebuild after kills gives the clean digest"
    );
    let tmp = list_dir(&cache.join(kiln_store::CacheBucket::Tmp.dir_name()));
    assert!(tmp.is_empty(), "temporaries left in the cache: {tmp:?}");
    for b in kiln_store::CacheBucket::ALL {
        let dir = cache.join(b.dir_name());
        if dir.is_dir() {
            let left: Vec<String> = list_dir(&dir)
                .into_iter()
                .filter(|n| n.starts_with(".tmp"))
                .collect();
            assert!(
                left.is_empty(),
                "half-written memos left in {}: {left:?}",
                b.dir_name()
            );
        }
    }
    let beside: Vec<String> = list_dir(ws.path())
        .into_iter()
        .filter(|n| n.starts_with(".kiln-"))
        .collect();
    assert!(
        beside.is_empty(),
        "temporaries left beside the outputs: {beside:?}"
    );
    assert_cache_consistent(&cache);
    eprintln!("kill -9: {KILLS} killed builds, rebuild digest equal, 0 temporaries left");
}

/// A find-links page behind credentials in its URL: the password shows in
/// no message, report, lock (a locked build takes it from the spec again),
/// output or cache file.
#[test]
fn credentials_in_urls_are_never_written() {
    const SECRET: &str = "S3CRET-PW-4242";
    let served = Workspace::new("secret-index");
    served.write(
        "wheels/evil-1.0-py3-none-any.whl",
        wheel_zip(&evil_members()),
    );
    served.write(
        "wheels/index.html",
        "<html><body><a href=\"evil-1.0-py3-none-any.whl\">evil-1.0-py3-none-any.whl</a></body></html>\n",
    );
    let server = FileServer::start(served.path());
    let ws = Workspace::new("secret-build");
    python_base(&ws);
    ws.spec(&format!(
        "[image]\nbase = \"oci:py:v1\"\n\n[pip]\npackages = [\"evil\"]\nno-index = true\n\
         find-links = [\"http://kiln:{SECRET}@127.0.0.1:{}/wheels/index.html\"]\n",
        server.port
    ));
    let cache = unique_dir("secret-cache");
    let mut said = String::new();
    for args in [&["lock"][..], &["build", "-o", "oci:out", "--json"][..]] {
        let r = ws.kiln().env("KILN_CACHE", &cache).args(args).run_ok();
        said.push_str(&r.stdout);
        said.push_str(&r.stderr);
    }
    // An index behind credentials whose page gives hashes: its resolution
    // is kept (the second build takes it, and with it the first build's
    // pins and stages), and neither those nor the page's memo hold the
    // password.
    let wheel = fs::read(served.join("wheels/evil-1.0-py3-none-any.whl")).unwrap();
    served.write(
        "simple/evil/index.html",
        format!(
            "<a href=\"../../wheels/evil-1.0-py3-none-any.whl#sha256={}\">evil-1.0-py3-none-any.whl</a>\n",
            sha256_hex(&wheel)
        ),
    );
    let indexed = Workspace::new("secret-index-build");
    python_base(&indexed);
    indexed.spec(&format!(
        "[image]\nbase = \"oci:py:v1\"\n\n[pip]\ncompile = false\npackages = [\"evil\"]\n\
         index = \"http://kiln:{SECRET}@127.0.0.1:{}/simple\"\nisolated = true\n",
        server.port
    ));
    for (out, how, reused) in [("oci:one", "resolved", 0), ("oci:two", "kept", 1)] {
        let r = indexed
            .kiln()
            .env("KILN_CACHE", &cache)
            .args(["build", "-o", out, "--json"])
            .run_ok();
        assert_eq!(r.json()["pip"][0]["resolution"], how, "{}", r.stdout);
        assert_eq!(r.json()["stages_reused"], reused, "{}", r.stdout);
        said.push_str(&r.stdout);
        said.push_str(&r.stderr);
    }
    // A failing fetch names the URL too.
    served.write(
        "wheels/index.html",
        "<a href=\"missing-1.0-py3-none-any.whl\">x</a>",
    );
    let r = ws
        .kiln()
        .env("KILN_CACHE", unique_dir("secret-cache-2"))
        .args(["build", "-o", "oci:out2", "--json"])
        .run();
    said.push_str(&r.stdout);
    said.push_str(&r.stderr);
    assert!(
        !said.contains(SECRET),
        "a message shows the password:\n{said}"
    );
    let mut found = Vec::new();
    for root in [ws.path(), indexed.path(), cache.as_path()] {
        for e in walk(root) {
            // The user's own spec is where the credentials were written.
            if e == ws.join("kiln.toml") || e == indexed.join("kiln.toml") {
                continue;
            }
            let bytes = fs::read(&e).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let gunzipped = decompress_if_gzip(&bytes);
            if text.contains(SECRET) || String::from_utf8_lossy(&gunzipped).contains(SECRET) {
                found.push(e.display().to_string());
            }
        }
    }
    assert!(found.is_empty(), "files holding the password: {found:?}");
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn decompress_if_gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out);
    out
}
