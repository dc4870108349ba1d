//! Wheel → layer entries: scheme paths, entry-point scripts, rewritten RECORD, INSTALLER/REQUESTED/direct_url.json, venvs.

use std::collections::BTreeMap;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use kiln_core::error::{IoContext, Result};
use kiln_fs::layer::{Content, Entry, EntryKind};

use super::target::PythonTarget;
use super::wheel::{parse_entry_points, WheelFile};
use crate::{PipError, WheelProblem};

/// What the installer needs to know about one wheel besides its files.
pub(crate) struct InstallInfo<'a> {
    pub(crate) filename: &'a str,
    pub(crate) requested: bool,
    /// `direct_url.json` content for URL requirements.
    pub(crate) direct_url: Option<String>,
}

fn entry(path: &str, data: Content, exec: bool) -> Entry {
    Entry {
        path: path.trim_start_matches('/').to_string(),
        kind: data.kind(),
        mode: if exec { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
    }
}

/// `to` relative to directory `from` (both absolute, normalised).
fn relative(from_dir: &str, to: &str) -> String {
    let f: Vec<&str> = from_dir.split('/').filter(|s| !s.is_empty()).collect();
    let t: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; f.len() - common];
    parts.extend(&t[common..]);
    parts.join("/")
}

/// A RECORD line's hash of `data`: `sha256=<urlsafe base64>`.
pub(crate) fn record_hash(data: &[u8]) -> String {
    record_form(Sha256::new_with_prefix(data))
}

/// The RECORD form of a sha256 fed with a member's bytes.
pub(crate) fn record_form(h: Sha256) -> String {
    format!(
        "sha256={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
    )
}

/// [`record_hash`] of a member's content (a packed one streamed).
pub(crate) fn content_hash(data: &Content) -> std::io::Result<String> {
    match data {
        Content::Held(b) => Ok(record_hash(b)),
        Content::Spooled(s) => {
            let mut h = Sha256::new();
            std::io::copy(&mut s.reader()?, &mut h)?;
            Ok(record_form(h))
        }
    }
}

/// The console/GUI script pip would write for `module:attr`.
pub(crate) fn entry_point_script(shebang: &str, spec: &str) -> Result<Vec<u8>> {
    let spec = spec.split('[').next().unwrap_or(spec).trim();
    let invalid = || PipError::InvalidEntryPoint {
        spec: spec.to_string(),
    };
    let (module, attr) = spec.split_once(':').ok_or_else(invalid)?;
    let (module, attr) = (module.trim(), attr.trim());
    let valid = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|p| {
                !p.is_empty()
                    && p.chars().all(|c| c.is_alphanumeric() || c == '_')
                    && !p.starts_with(|c: char| c.is_ascii_digit())
            })
    };
    if !valid(module) || !valid(attr) {
        return Err(invalid().into());
    }
    let import = attr.split('.').next().unwrap_or(attr);
    Ok(format!(
        "{shebang}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {import}\nif __name__ == \"__main__\":\n    sys.argv[0] = re.sub(r\"(-script\\.pyw|\\.exe)?$\", \"\", sys.argv[0])\n    sys.exit({attr}())\n"
    )
    .into_bytes())
}

/// RECORD hash (`sha256=<urlsafe-b64>`) of each member, by member path.
pub(crate) type MemberHashes = BTreeMap<String, String>;

/// RECORD hashes of every member, computed in parallel.
#[cfg(test)]
pub(crate) fn member_hashes(files: &[WheelFile]) -> Result<MemberHashes> {
    use rayon::prelude::*;
    files
        .par_iter()
        .map(|f| {
            let hash = content_hash(&f.data).io_context(|| format!("reading {}", f.path))?;
            Ok((f.path.clone(), hash))
        })
        .collect()
}

/// Lay one wheel out for `target`. `known` gives the RECORD hashes of members
/// (as the wheel's RECORD states them, see [`crate::wheel::verify`]); a
/// member it lacks, and every file kiln writes or rewrites, is hashed here.
pub(crate) fn wheel_entries(
    t: &PythonTarget,
    info: &InstallInfo,
    files: Vec<WheelFile>,
    known: &MemberHashes,
) -> Result<Vec<Entry>> {
    let wheel = info.filename;
    let dist_info = files
        .iter()
        .filter_map(|f| {
            let (dir, rest) = f.path.split_once('/')?;
            (dir.ends_with(".dist-info") && rest == "METADATA").then(|| dir.to_string())
        })
        .next()
        .ok_or_else(|| PipError::wheel(wheel, WheelProblem::NoMetadata))?;
    let data_dir = format!("{}.data", dist_info.trim_end_matches(".dist-info"));
    let dist_name = dist_info
        .trim_end_matches(".dist-info")
        .rsplit_once('-')
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    let site = t.scheme.purelib.clone();
    let shebang = t.shebang();

    // Absolute image path → (content, executable, RECORD hash if known).
    let mut out: BTreeMap<String, (Content, bool, Option<String>)> = BTreeMap::new();
    let mut put = |path: String, data: Content, exec: bool, hash: Option<&String>| -> Result<()> {
        if out
            .insert(path.clone(), (data, exec, hash.cloned()))
            .is_some()
        {
            return Err(PipError::wheel(wheel, WheelProblem::Conflict { path }));
        }
        Ok(())
    };
    let mut entry_points = None;
    for f in files {
        let hash = known.get(&f.path);
        if let Some(rest) = f.path.strip_prefix(&format!("{data_dir}/")) {
            let (key, sub) = rest.split_once('/').ok_or_else(|| {
                PipError::wheel(
                    wheel,
                    WheelProblem::UnexpectedMember {
                        member: f.path.clone(),
                    },
                )
            })?;
            match key {
                "purelib" => put(
                    format!("{}/{sub}", t.scheme.purelib),
                    f.data,
                    f.executable,
                    hash,
                )?,
                "platlib" => put(
                    format!("{}/{sub}", t.scheme.platlib),
                    f.data,
                    f.executable,
                    hash,
                )?,
                "data" => put(
                    format!("{}/{sub}", t.scheme.data),
                    f.data,
                    f.executable,
                    hash,
                )?,
                "headers" => put(
                    format!("{}/{dist_name}/{sub}", t.scheme.headers),
                    f.data,
                    false,
                    hash,
                )?,
                "scripts" => {
                    if sub.contains('/') {
                        return Err(PipError::wheel(
                            wheel,
                            WheelProblem::ScriptInSubdirectory {
                                script: sub.to_string(),
                            },
                        ));
                    }
                    let mut data = f.data.clone();
                    let mut hash = hash;
                    let bytes = f.bytes(wheel)?;
                    if bytes.starts_with(b"#!python") {
                        let nl = bytes
                            .iter()
                            .position(|b| *b == b'\n')
                            .unwrap_or(bytes.len());
                        let mut d = shebang.clone().into_bytes();
                        d.extend_from_slice(&bytes[nl..]);
                        data = d.into();
                        hash = None;
                    }
                    put(format!("{}/{sub}", t.scheme.scripts), data, true, hash)?
                }
                other => {
                    return Err(PipError::wheel(
                        wheel,
                        WheelProblem::UnknownDataDirectory {
                            dir: format!("{data_dir}/{other}"),
                        },
                    ))
                }
            }
            continue;
        }
        if let Some(name) = f.path.strip_prefix(&format!("{dist_info}/")) {
            match name {
                "RECORD" | "RECORD.jws" | "RECORD.p7s" | "INSTALLER" | "REQUESTED"
                | "direct_url.json" => continue,
                "entry_points.txt" => {
                    entry_points = Some(String::from_utf8_lossy(&f.bytes(wheel)?).into_owned())
                }
                _ => {}
            }
        }
        put(format!("{site}/{}", f.path), f.data, f.executable, hash)?;
    }
    if let Some(text) = entry_points {
        for (group, name, value) in parse_entry_points(&text) {
            if group != "console_scripts" && group != "gui_scripts" {
                continue;
            }
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(PipError::wheel(wheel, WheelProblem::BadScriptName { name }));
            }
            let script = entry_point_script(&shebang, &value)
                .map_err(|e| e.context(format!("wheel {wheel}")))?;
            put(
                format!("{}/{name}", t.scheme.scripts),
                script.into(),
                true,
                None,
            )?;
        }
    }
    let di = format!("{site}/{dist_info}");
    put(
        format!("{di}/INSTALLER"),
        b"kiln\n".to_vec().into(),
        false,
        None,
    )?;
    if info.requested {
        put(format!("{di}/REQUESTED"), Vec::new().into(), false, None)?;
    }
    if let Some(d) = &info.direct_url {
        put(
            format!("{di}/direct_url.json"),
            d.clone().into_bytes().into(),
            false,
            None,
        )?;
    }
    let record_path = format!("{di}/RECORD");
    let mut record = String::new();
    for (path, (data, _, hash)) in &out {
        let hash = match hash {
            Some(h) => h.clone(),
            None => content_hash(data).io_context(|| format!("reading {path} of {wheel}"))?,
        };
        let rel = relative(&site, path);
        let rel = if rel.contains(',') || rel.contains('"') {
            format!("\"{}\"", rel.replace('"', "\"\""))
        } else {
            rel
        };
        record.push_str(&format!("{rel},{hash},{}\n", data.len()));
    }
    record.push_str(&format!("{},,\n", relative(&site, &record_path)));
    out.insert(record_path, (record.into_bytes().into(), false, None));
    Ok(out
        .into_iter()
        .map(|(p, (d, x, _))| entry(&p, d, x))
        .collect())
}

/// The venv skeleton: `pyvenv.cfg`, `bin/python*` symlinks, `lib64 -> lib`.
pub(crate) fn venv_entries(t: &PythonTarget) -> Vec<Entry> {
    let Some(v) = &t.venv else { return Vec::new() };
    let home = t
        .interpreter
        .rsplit_once('/')
        .map(|(d, _)| d)
        .unwrap_or("/usr/bin");
    let cfg = format!(
        "home = {home}\ninclude-system-site-packages = false\nversion = {}\nexecutable = {}\n",
        t.full_version, t.interpreter
    );
    let p = v.path.trim_start_matches('/');
    let link = |path: String, target: &str| Entry {
        path,
        kind: EntryKind::Symlink {
            target: target.to_string(),
        },
        mode: 0o777,
        uid: 0,
        gid: 0,
    };
    let dir = |path: String| Entry {
        path,
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    vec![
        entry(&format!("{p}/pyvenv.cfg"), cfg.into_bytes().into(), false),
        dir(format!("{p}/bin")),
        link(format!("{p}/bin/python"), &t.interpreter),
        link(format!("{p}/bin/python3"), "python"),
        link(format!("{p}/bin/python3.{}", t.minor), "python"),
        dir(format!("{p}/include")),
        dir(format!("{p}/lib")),
        dir(format!("{p}/lib/python3.{}", t.minor)),
        dir(format!("{p}/lib/python3.{}/site-packages", t.minor)),
        link(format!("{p}/lib64"), "lib"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::platform::Platform;
    use kiln_fs::rootfs::Rootfs;

    fn target(venv: &str) -> PythonTarget {
        let mut fs = Rootfs::default();
        fs.insert_file("/usr/bin/python3.11", b"");
        fs.insert_file("/usr/lib/python3.11/os.py", b"");
        fs.insert_file("/etc/debian_version", b"12\n");
        PythonTarget::detect(&fs, &Platform::linux("amd64"), venv).unwrap()
    }

    fn wf(path: &str, data: &[u8]) -> WheelFile {
        WheelFile {
            path: path.into(),
            data: data.to_vec().into(),
            executable: false,
        }
    }

    #[test]
    fn scripts_record_installer() {
        let t = target("system");
        let files = vec![
            wf("demo/__init__.py", b"def main(): pass\n"),
            wf("demo-1.0.dist-info/METADATA", b"Name: demo\nVersion: 1.0\n"),
            wf("demo-1.0.dist-info/RECORD", b"stale"),
            wf(
                "demo-1.0.dist-info/entry_points.txt",
                b"[console_scripts]\ndemo-cli = demo:main\n",
            ),
            wf("demo-1.0.data/scripts/tool", b"#!python\nprint(1)\n"),
            wf("demo-1.0.data/headers/demo.h", b"int x;\n"),
        ];
        let info = InstallInfo {
            filename: "demo-1.0-py3-none-any.whl",
            requested: true,
            direct_url: None,
        };
        let e = wheel_entries(&t, &info, files.clone(), &MemberHashes::new()).unwrap();
        // Known member hashes (a kept copy) give the same files, the
        // rewritten `#!python` script included.
        let known = member_hashes(&files).unwrap();
        assert_eq!(known.len(), files.len());
        let same = wheel_entries(&t, &info, files.clone(), &known).unwrap();
        let content = |es: &[Entry]| {
            es.iter()
                .map(|x| {
                    let d = x.kind.file_bytes().unwrap().unwrap();
                    (x.path.clone(), d.into_owned(), x.mode)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(content(&e), content(&same));
        // Members in a spool: the same files and RECORD, the spooled ones
        // left in the spool.
        let dir = tempfile::tempdir().unwrap();
        let spool = kiln_fs::layer::Spool::new_in(dir.path()).unwrap();
        let spooled: Vec<WheelFile> = files
            .iter()
            .map(|f| WheelFile {
                data: Content::Spooled(spool.put(&f.bytes("w").unwrap()).unwrap()),
                ..f.clone()
            })
            .collect();
        let s = wheel_entries(&t, &info, spooled, &MemberHashes::new()).unwrap();
        assert_eq!(content(&e), content(&s));
        assert!(s.iter().any(|x| matches!(x.kind, EntryKind::Spooled(_))));
        let get = |p: &str| {
            e.iter()
                .find(|x| x.path == p)
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        let text = |p: &str| match &get(p).kind {
            EntryKind::Data(d) => String::from_utf8(d.to_vec()).unwrap(),
            EntryKind::Spooled(d) => String::from_utf8(d.read_all().unwrap()).unwrap(),
            _ => panic!(),
        };
        let site = "usr/local/lib/python3.11/dist-packages";
        assert!(text("usr/local/bin/demo-cli").starts_with("#!/usr/bin/python3.11\n"));
        assert!(text("usr/local/bin/demo-cli").contains("from demo import main"));
        assert_eq!(get("usr/local/bin/demo-cli").mode, 0o755);
        assert_eq!(
            text("usr/local/bin/tool"),
            "#!/usr/bin/python3.11\nprint(1)\n"
        );
        assert!(e
            .iter()
            .any(|x| x.path == "usr/local/include/python3.11/demo/demo.h"));
        assert_eq!(
            text(&format!("{site}/demo-1.0.dist-info/INSTALLER")),
            "kiln\n"
        );
        assert!(e
            .iter()
            .any(|x| x.path == format!("{site}/demo-1.0.dist-info/REQUESTED")));
        let record = text(&format!("{site}/demo-1.0.dist-info/RECORD"));
        assert!(record.contains("../../../bin/demo-cli,sha256="), "{record}");
        assert!(record.contains("demo/__init__.py,sha256="));
        assert!(record.ends_with("demo-1.0.dist-info/RECORD,,\n"));
        assert!(!record.contains("stale"));
    }

    /// The wheel problem `wheel_entries` reports for `files`.
    fn layout_error(files: Vec<WheelFile>) -> kiln_core::Error {
        let info = InstallInfo {
            filename: "demo-1.0-py3-none-any.whl",
            requested: false,
            direct_url: None,
        };
        wheel_entries(&target("system"), &info, files, &MemberHashes::new()).unwrap_err()
    }

    #[test]
    fn bad_layouts_name_the_wheel_and_member() {
        let meta = || wf("demo-1.0.dist-info/METADATA", b"Name: demo\nVersion: 1.0\n");
        let problem = |e: &kiln_core::Error| match e.downcast_ref::<PipError>() {
            Some(PipError::BadWheel { wheel, problem }) => {
                assert_eq!(wheel, "demo-1.0-py3-none-any.whl");
                format!("{problem:?}")
            }
            _ => panic!("{e:?}"),
        };
        let e = layout_error(vec![wf("demo/__init__.py", b"")]);
        assert_eq!(problem(&e), "NoMetadata");
        assert_eq!(
            e.to_string(),
            "wheel demo-1.0-py3-none-any.whl has no .dist-info/METADATA"
        );
        let e = layout_error(vec![meta(), wf("demo-1.0.data/junk/x", b"")]);
        assert!(matches!(
            e.downcast_ref::<PipError>(),
            Some(PipError::BadWheel { problem: WheelProblem::UnknownDataDirectory { dir }, .. }) if dir == "demo-1.0.data/junk"
        ));
        assert_eq!(
            e.to_string(),
            "wheel demo-1.0-py3-none-any.whl: unknown data directory `demo-1.0.data/junk`"
        );
        let e = layout_error(vec![meta(), wf("demo-1.0.data/stray", b"")]);
        assert!(problem(&e).starts_with("UnexpectedMember"), "{e}");
        let e = layout_error(vec![meta(), wf("demo-1.0.data/scripts/sub/x", b"")]);
        assert!(problem(&e).starts_with("ScriptInSubdirectory"), "{e}");
        // purelib and the root both put `demo/x.py` in site-packages.
        let e = layout_error(vec![
            meta(),
            wf("demo/x.py", b""),
            wf("demo-1.0.data/purelib/demo/x.py", b""),
        ]);
        assert!(
            matches!(
                e.downcast_ref::<PipError>(),
                Some(PipError::BadWheel { problem: WheelProblem::Conflict { path }, .. })
                    if path == "/usr/local/lib/python3.11/dist-packages/demo/x.py"
            ),
            "{e:?}"
        );
        let e = layout_error(vec![
            meta(),
            wf(
                "demo-1.0.dist-info/entry_points.txt",
                b"[console_scripts]\n.. = demo:main\n",
            ),
        ]);
        assert!(problem(&e).starts_with("BadScriptName"), "{e}");
        let e = layout_error(vec![
            meta(),
            wf(
                "demo-1.0.dist-info/entry_points.txt",
                b"[console_scripts]\nx = demo\n",
            ),
        ]);
        assert!(matches!(
            e.downcast_ref::<PipError>(),
            Some(PipError::InvalidEntryPoint { spec }) if spec == "demo"
        ));
        assert_eq!(
            e.to_string(),
            "wheel demo-1.0-py3-none-any.whl: entry point `demo` is not `module:function`"
        );
    }

    #[test]
    fn script_template_and_venv() {
        let s = String::from_utf8(
            entry_point_script("#!/opt/venv/bin/python", "pkg.cli:app.run [x]").unwrap(),
        )
        .unwrap();
        assert!(s.contains("from pkg.cli import app\n") && s.contains("sys.exit(app.run())"));
        for bad in ["os; import evil:x", "no_colon", "mod:", "1mod:f"] {
            let err = entry_point_script("#!x", bad).unwrap_err();
            assert!(
                matches!(
                    err.downcast_ref::<PipError>(),
                    Some(PipError::InvalidEntryPoint { .. })
                ),
                "{bad}: {err:?}"
            );
        }
        let t = target("/opt/venv");
        let v = venv_entries(&t);
        assert!(v.iter().any(|e| e.path == "opt/venv/pyvenv.cfg"));
        assert!(v.iter().any(|e| e.path == "opt/venv/bin/python"
            && matches!(&e.kind, EntryKind::Symlink { target } if target == "/usr/bin/python3.11")));
        assert_eq!(relative("/a/b/c", "/a/x"), "../../x");
    }
}
