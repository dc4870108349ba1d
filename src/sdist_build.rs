//! `[pip]` wheels of sdists and source trees: the project's PEP 517
//! backend run by the image's own Python, in kiln's sandbox over the tree
//! assembled so far, without network.
//!
//! kiln-pip unpacks the source and its build requirements (see
//! `kiln_pip::WheelBuilder`); here both are copied into the sandbox's tree
//! under `/tmp/kiln-build/N/` and a small hook calls the backend's
//! `build_wheel`. The tree is written once per pip stage, when the first
//! build needs it, and dropped with the builder (nothing of it is a layer).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use kiln_core::error::{IoContext, Result};
use kiln_core::platform::Platform;
use kiln_fs::sandbox::{Network, RunSpec, Sandbox, DEFAULT_PATH};
use kiln_pip::{BuildJob, PipError, WheelBuilder};
use kiln_store::{Cache, CacheBucket};

/// The tree so far, as tar streams (see `Stages::tree`).
pub(crate) type TreeSource<'a> = &'a crate::stages::ImageSoFar<'a>;

/// What runs in the image: the backend named by `module:object`, imported
/// after `backend-path` (relative to the project) is put first on sys.path.
const HOOK: &str = r#"import importlib, json, os, sys
backend, paths, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path[:0] = [os.path.abspath(p) for p in paths]
module, _, attr = backend.partition(":")
obj = importlib.import_module(module)
for part in filter(None, attr.split(".")):
    obj = getattr(obj, part)
print("kiln: built", obj.build_wheel(os.path.abspath(out)))
"#;

/// `SOURCE_DATE_EPOCH` of every build, whatever the image's epoch, so a
/// wheel depends only on its source and the target (a `kiln lock` and a
/// later `--locked` build make the same); zip cannot hold times before 1980.
const BUILD_EPOCH: &str = "315532800";

/// Lines of a failed build's output shown.
const TAIL: usize = 30;

pub(crate) struct SandboxBuilder<'a> {
    tree: Option<TreeSource<'a>>,
    platform: &'a Platform,
    cache: &'a Cache,
    /// Written at the first build.
    sandbox: Mutex<Option<Sandbox>>,
    builds: AtomicUsize,
}

impl<'a> SandboxBuilder<'a> {
    /// `tree`: `None` where no image is assembled (`kiln build --dry-run`):
    /// a build is then an error.
    pub(crate) fn new(
        tree: Option<TreeSource<'a>>,
        platform: &'a Platform,
        cache: &'a Cache,
    ) -> Self {
        SandboxBuilder {
            tree,
            platform,
            cache,
            sandbox: Mutex::new(None),
            builds: AtomicUsize::new(0),
        }
    }
}

impl WheelBuilder for SandboxBuilder<'_> {
    fn build_wheel(&self, job: &BuildJob<'_>) -> Result<()> {
        let Some(tree) = self.tree else {
            return Err(PipError::NoBuilder {
                requirement: job.project.to_string(),
                why: "`kiln build --dry-run` does not do (it only resolves)",
            }
            .into());
        };
        let mut sandbox = self.sandbox.lock().unwrap();
        if sandbox.is_none() {
            let tmp = self.cache.bucket(CacheBucket::Tmp);
            *sandbox = Some(Sandbox::from_layers(
                tree(self.platform)?.readers,
                &tmp,
                "[pip] building wheels",
            )?);
        }
        let sb = sandbox.as_mut().expect("made above");
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        let inside = format!("/tmp/kiln-build/{n}");
        let host = sb.root().join(inside.trim_start_matches('/'));
        copy_tree(job.source, &host.join("src"))?;
        copy_tree(job.build_env, &host.join("env"))?;
        let out = host.join("out");
        std::fs::create_dir_all(&out).io_context(|| format!("creating {}", out.display()))?;
        std::fs::write(host.join("hook.py"), HOOK)
            .io_context(|| "writing the build hook".to_string())?;
        let env = [
            ("PATH", DEFAULT_PATH),
            ("HOME", inside.as_str()),
            ("PYTHONPATH", &format!("{inside}/env")),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("PYTHONHASHSEED", "0"),
            ("SOURCE_DATE_EPOCH", BUILD_EPOCH),
            ("LC_ALL", "C.UTF-8"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let paths = serde_json::to_string(job.backend_path).unwrap_or_else(|_| "[]".into());
        let output = sb.run(&RunSpec {
            argv: vec![
                job.interpreter.to_string(),
                format!("{inside}/hook.py"),
                job.backend.to_string(),
                paths,
                format!("{inside}/out"),
            ],
            env,
            user: None,
            workdir: Some(format!("{inside}/src")),
            network: Network::None,
        })?;
        if !output.status.success() {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL)..].join("\n");
            let _ = std::fs::remove_dir_all(&host);
            return Err(PipError::BuildFailed {
                project: job.project.to_string(),
                status: describe(&output.status),
                output: tail,
            }
            .into());
        }
        for e in std::fs::read_dir(&out).io_context(|| format!("reading {}", out.display()))? {
            let e = e.io_context(|| format!("reading {}", out.display()))?;
            let dst = job.out.join(e.file_name());
            std::fs::copy(e.path(), &dst).io_context(|| format!("copying {}", dst.display()))?;
        }
        let _ = std::fs::remove_dir_all(&host);
        Ok(())
    }
}

/// `exited with 1`, `was killed by signal 9`.
fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Copy a directory (files, their exec bits, symlinks) to `dst`.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |p: &Path| format!("copying {} into the build tree", p.display());
    std::fs::create_dir_all(dst).io_context(|| io(dst))?;
    for e in std::fs::read_dir(src).io_context(|| io(src))? {
        let e = e.io_context(|| io(src))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let md = std::fs::symlink_metadata(&from).io_context(|| io(&from))?;
        if md.is_dir() {
            copy_tree(&from, &to)?;
        } else if md.file_type().is_symlink() {
            let target = std::fs::read_link(&from).io_context(|| io(&from))?;
            std::os::unix::fs::symlink(target, &to).io_context(|| io(&to))?;
        } else if md.is_file() {
            std::fs::copy(&from, &to).io_context(|| io(&from))?;
            let mode = if md.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .io_context(|| io(&to))?;
        }
    }
    Ok(())
}
