//! sdists and source trees: a wheel built by the project's own PEP 517
//! backend, then used like a downloaded one.
//!
//! kiln-pip does what needs no running: the sdist is fetched and unpacked,
//! `pyproject.toml`'s `[build-system]` read, its requirements resolved (as
//! wheels, for the image's Python) and unpacked into a build environment.
//! Running the backend is the caller's [`WheelBuilder`] (the CLI runs the
//! image's own Python in its sandbox), so this crate needs no sandbox. A
//! built wheel is kept in the cache by the sdist's sha256 and the target,
//! so a rebuild (or a `--locked` one) does not run the backend again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_core::platform::Platform;
use kiln_store::cache::{Cache, CacheBucket};

use crate::error::Owner;
use crate::PipError;

use super::index::{DistFile, IndexClient};
use super::tags::WheelName;
use super::target::PythonTarget;

/// PEP 517's fallback when `pyproject.toml` names no backend.
pub const LEGACY_BACKEND: &str = "setuptools.build_meta:__legacy__";
const LEGACY_REQUIRES: &[&str] = &["setuptools>=40.8.0", "wheel"];

/// One wheel for the caller's [`WheelBuilder`] to build. Paths are on the
/// host; the builder decides where they appear to the backend.
#[derive(Debug)]
pub struct BuildJob<'a> {
    /// `docopt 0.6.2` (or the requirement), for messages.
    pub project: &'a str,
    /// The image's interpreter (`/usr/bin/python3.11`).
    pub interpreter: &'a str,
    /// The unpacked project: the directory holding `pyproject.toml`/`setup.py`.
    pub source: &'a Path,
    /// The build requirements, unpacked (for `PYTHONPATH`).
    pub build_env: &'a Path,
    /// `module:object` of the PEP 517 backend.
    pub backend: &'a str,
    /// `backend-path`, relative to `source`.
    pub backend_path: &'a [String],
    /// Where exactly one `.whl` is to be left.
    pub out: &'a Path,
}

/// Runs a PEP 517 backend's `build_wheel`: implemented by the CLI over its sandbox.
pub trait WheelBuilder: Sync {
    /// Build one wheel into `job.out`; a failing backend is an error that
    /// shows its exit status and last lines of output.
    fn build_wheel(&self, job: &BuildJob<'_>) -> Result<()>;
}

/// `--no-binary`: projects whose wheels are ignored (built from the sdist).
#[derive(Clone, Debug, Default)]
pub(crate) struct NoBinary {
    pub(crate) all: bool,
    pub(crate) names: Vec<String>,
    /// Where it was first written (for the error when nothing can build).
    pub(crate) origin: Option<String>,
}

impl NoBinary {
    pub(crate) fn applies(&self, name: &str) -> bool {
        self.all || self.names.iter().any(|n| n == name)
    }

    /// `--no-binary a,b`, `:all:`, `:none:` (pip's syntax).
    pub(crate) fn add(&mut self, value: &str, origin: &str) {
        self.origin.get_or_insert_with(|| origin.to_string());
        for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            match v {
                ":all:" => self.all = true,
                ":none:" => {
                    self.all = false;
                    self.names.clear();
                }
                n => self.names.push(crate::normalize(n)),
            }
        }
    }
}

/// Whether a file name is a source distribution kiln can unpack.
pub(crate) fn is_sdist(filename: &str) -> bool {
    [".tar.gz", ".tgz", ".zip"]
        .iter()
        .any(|x| filename.ends_with(x))
}

/// A wheel built from an sdist or a source tree, in the cache.
#[derive(Clone, Debug)]
pub(crate) struct Built {
    pub(crate) filename: String,
    pub(crate) sha256: Digest,
    pub(crate) size: u64,
    /// Of the sdist; `None` for a directory or a Git source.
    pub(crate) sdist_sha256: Option<Digest>,
    /// A Git source at the commit it was built from
    /// (`git+URL@COMMIT#subdirectory=…`), as kiln.lock records it.
    pub(crate) pinned: Option<String>,
}

impl Built {
    pub(crate) fn version(&self) -> Option<String> {
        WheelName::parse(&self.filename).ok().map(|w| w.version)
    }
}

/// What a build is given: where the target is and what builds.
pub(crate) struct Builds<'a> {
    pub(crate) builder: &'a dyn WheelBuilder,
    pub(crate) client: &'a IndexClient<'a>,
    pub(crate) target: &'a PythonTarget,
    pub(crate) platform: &'a Platform,
    pub(crate) cache: &'a Cache,
    /// Built wheels by source URL. (No lock is held while building: a
    /// build resolves on the network pool, which may run another build.)
    done: Mutex<HashMap<String, Built>>,
}

impl<'a> Builds<'a> {
    pub(crate) fn new(
        builder: &'a dyn WheelBuilder,
        client: &'a IndexClient<'a>,
        target: &'a PythonTarget,
        platform: &'a Platform,
        cache: &'a Cache,
    ) -> Self {
        Builds {
            builder,
            client,
            target,
            platform,
            cache,
            done: Mutex::new(HashMap::new()),
        }
    }

    /// The backend runs in the image, so only on the host's architecture.
    pub(crate) fn check_host(&self, requirement: &str) -> Result<()> {
        let host = Platform::host();
        if self.platform.arch != host.arch || self.platform.os != host.os {
            return Err(PipError::BuildForeign {
                requirement: requirement.to_string(),
                platform: self.platform.to_string(),
                host: host.to_string(),
            }
            .into());
        }
        Ok(())
    }

    pub(crate) fn get(&self, url: &str) -> Option<Built> {
        self.done.lock().unwrap().get(url).cloned()
    }

    /// The wheel of `file` (an sdist, a directory by `file:` URL, a
    /// `git+` URL), built once per source.
    pub(crate) fn build(&self, name: &str, file: &DistFile) -> Result<Built> {
        if let Some(b) = self.get(&file.url) {
            return Ok(b);
        }
        let what = format!("{name} ({})", file.filename);
        self.check_host(&what)?;
        let git = file
            .url
            .starts_with("git+")
            .then(|| fetch_git(&file.url, self.cache))
            .transpose()?;
        let dir = match &git {
            Some((d, _)) => Some(d.clone()),
            None => kiln_store::http::file_url_path(&file.url).filter(|p| p.is_dir()),
        };
        let sdist = match &dir {
            Some(_) => None,
            None => Some(self.client.download(file)?.0),
        };
        let pinned = git.map(|(_, p)| p);
        // A commit is as fixed as an sdist's sha256.
        let key = sdist
            .clone()
            .or_else(|| pinned.as_ref().map(|p| Digest::of(p.as_bytes())));
        let memo = key.as_ref().map(|d| self.memo_path(d));
        if let Some(mut b) = memo.as_ref().and_then(|m| self.remembered(m)) {
            b.sdist_sha256 = sdist;
            b.pinned = pinned;
            self.done
                .lock()
                .unwrap()
                .insert(file.url.clone(), b.clone());
            return Ok(b);
        }
        let mut built = self.run(&what, file, dir.as_deref(), sdist)?;
        built.pinned = pinned;
        if let Some(m) = &memo {
            let line = format!("{} {} {}\n", built.sha256, built.size, built.filename);
            kiln_store::cache::write_atomic(m, line.as_bytes());
        }
        self.done
            .lock()
            .unwrap()
            .insert(file.url.clone(), built.clone());
        Ok(built)
    }

    /// Where the wheel built from `sdist` for this target is recorded.
    fn memo_path(&self, sdist: &Digest) -> PathBuf {
        let t = self.target;
        let key = Digest::of(
            format!(
                "{sdist}|cp3{}|{}|{}|{}",
                t.minor, t.full_version, t.machine, t.libc
            )
            .as_bytes(),
        );
        self.cache.entry(CacheBucket::PipBuiltWheels, key.hex())
    }

    fn remembered(&self, memo: &Path) -> Option<Built> {
        let text = std::fs::read_to_string(memo).ok()?;
        let mut it = text.trim().splitn(3, ' ');
        let sha256: Digest = it.next()?.parse().ok()?;
        let size = it.next()?.parse().ok()?;
        let filename = it.next()?.to_string();
        self.cache.contains(&sha256).then_some(Built {
            filename,
            sha256,
            size,
            sdist_sha256: None,
            pinned: None,
        })
    }

    /// Unpack, set up the build environment, run the backend, keep the wheel.
    fn run(
        &self,
        what: &str,
        file: &DistFile,
        dir: Option<&Path>,
        sdist: Option<Digest>,
    ) -> Result<Built> {
        let tmp = self.cache.bucket(CacheBucket::Tmp);
        let work = tempfile::Builder::new()
            .prefix(&kiln_store::cache::temp_prefix("sdist-build"))
            .tempdir_in(&tmp)
            .io_context(|| format!("making a build directory in {}", tmp.display()))?;
        let source = match (dir, &sdist) {
            (Some(d), _) => d.to_path_buf(),
            (None, Some(d)) => unpack(&self.cache.blob_path(d), &file.filename, work.path())?,
            (None, None) => unreachable!("an sdist is downloaded"),
        };
        let system = read_build_system(&source, &file.filename)?;
        let env = work.path().join("env");
        std::fs::create_dir_all(&env).io_context(|| format!("creating {}", env.display()))?;
        self.build_env(what, &system.requires, &env)?;
        let out = work.path().join("out");
        std::fs::create_dir_all(&out).io_context(|| format!("creating {}", out.display()))?;
        self.builder.build_wheel(&BuildJob {
            project: what,
            interpreter: &self.target.interpreter,
            source: &source,
            build_env: &env,
            backend: &system.backend,
            backend_path: &system.backend_path,
            out: &out,
        })?;
        let wheels: Vec<PathBuf> = std::fs::read_dir(&out)
            .io_context(|| format!("reading {}", out.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        let [wheel] = wheels.as_slice() else {
            return Err(PipError::BuildNoWheel {
                project: what.to_string(),
                count: wheels.len(),
            }
            .into());
        };
        let filename = wheel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        WheelName::parse(&filename)?;
        let bytes = std::fs::read(wheel).io_context(|| format!("reading {}", wheel.display()))?;
        let sha256 = self.cache.put(&bytes)?;
        Ok(Built {
            filename,
            sha256,
            size: bytes.len() as u64,
            sdist_sha256: sdist,
            pinned: None,
        })
    }

    /// Resolve `requires` as wheels for the image and unpack them into `env`.
    fn build_env(&self, what: &str, requires: &[String], env: &Path) -> Result<()> {
        if requires.is_empty() {
            return Ok(());
        }
        let origin = format!("[pip] build requirements of {what}");
        let roots = requires
            .iter()
            .map(|r| super::spec::parse_requirement(r, env, &origin, Owner::Spec))
            .collect::<Result<Vec<_>>>()?;
        let markers = super::markers::environment(self.target)?;
        let provider = super::resolve::Provider::new(
            self.client,
            self.target,
            markers,
            roots,
            &[],
            false,
            None,
        )?;
        provider.check_roots(&|| self.client.project_names())?;
        let resolved = super::resolve::resolve(&provider).map_err(|e| e.context(&origin))?;
        for r in resolved {
            let Some(f) = r.file else { continue };
            let (d, _) = self.client.download(&f)?;
            let files = super::wheel::read_wheel(&self.cache.blob_path(&d), &f.filename, None)?;
            for wf in files {
                // `x.data/purelib/…` and `platlib/…` go to the top; other
                // `.data` parts (scripts, headers) are not needed to import.
                let Some(path) = env_path(&wf.path) else {
                    continue;
                };
                let dst = env.join(path);
                if let Some(p) = dst.parent() {
                    std::fs::create_dir_all(p)
                        .io_context(|| format!("creating {}", p.display()))?;
                }
                std::fs::write(&dst, wf.bytes(&f.filename)?)
                    .io_context(|| format!("writing {}", dst.display()))?;
            }
        }
        Ok(())
    }
}

/// Where a wheel member goes in a build environment: `x.data/purelib/…`
/// and `platlib/…` at the top, other `.data` parts (scripts, headers) not
/// at all (nothing imports them).
fn env_path(member: &str) -> Option<&str> {
    match member.split_once('/') {
        Some((top, rest)) if top.ends_with(".data") => match rest.split_once('/') {
            Some(("purelib" | "platlib", p)) => Some(p),
            _ => None,
        },
        _ => Some(member),
    }
}

/// pip's `git+URL[@REV][#subdirectory=DIR]` fetched by kiln-git: the
/// project directory, and the URL at the fetched commit.
fn fetch_git(url: &str, cache: &Cache) -> Result<(PathBuf, String)> {
    let (repo, rev, subdir) = split_git_url(url);
    let spec = format!("{repo}#{}:{}", rev.unwrap_or(""), subdir.unwrap_or(""));
    let src = kiln_git::GitSource::parse(&spec)?;
    let c = kiln_git::fetch(&src, cache, &kiln_git::FetchOptions::default())?;
    let mut pinned = format!("git+{repo}@{}", c.commit);
    if let Some(d) = subdir {
        pinned.push_str(&format!("#subdirectory={d}"));
    }
    Ok((c.dir, pinned))
}

/// `git+https://u@host/r.git@v1#subdirectory=p&egg=x` → (`https://u@host/r.git`, `v1`, `p`).
pub(crate) fn split_git_url(url: &str) -> (&str, Option<&str>, Option<&str>) {
    let url = url.strip_prefix("git+").unwrap_or(url);
    let (base, fragment) = url.split_once('#').unwrap_or((url, ""));
    let subdir = fragment
        .split('&')
        .find_map(|kv| kv.strip_prefix("subdirectory="))
        .filter(|d| !d.is_empty());
    // The revision is an `@` after the host (not the `user@` before it).
    let path_at = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[path_at..]
        .find('/')
        .map(|i| path_at + i)
        .unwrap_or(base.len());
    match base[path_start..].rsplit_once('@') {
        Some((p, rev)) if !rev.is_empty() => (&base[..path_start + p.len()], Some(rev), subdir),
        _ => (base, None, subdir),
    }
}

/// `[build-system]` of a project, with PEP 517's defaults.
#[derive(Debug, PartialEq)]
pub(crate) struct BuildSystem {
    pub(crate) requires: Vec<String>,
    pub(crate) backend: String,
    pub(crate) backend_path: Vec<String>,
}

pub(crate) fn read_build_system(source: &Path, sdist: &str) -> Result<BuildSystem> {
    #[derive(serde::Deserialize)]
    struct Pyproject {
        #[serde(rename = "build-system")]
        build_system: Option<Section>,
    }
    #[derive(serde::Deserialize)]
    struct Section {
        requires: Option<Vec<String>>,
        #[serde(rename = "build-backend")]
        build_backend: Option<String>,
        #[serde(rename = "backend-path", default)]
        backend_path: Vec<String>,
    }
    let path = source.join("pyproject.toml");
    let section = match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str::<Pyproject>(&text)
                .map_err(|e| PipError::BadSdist {
                    sdist: sdist.to_string(),
                    detail: format!("pyproject.toml: {}", e.message()),
                })?
                .build_system
        }
        Err(_) => None,
    };
    let legacy = || LEGACY_REQUIRES.iter().map(|s| s.to_string()).collect();
    Ok(match section {
        None => BuildSystem {
            requires: legacy(),
            backend: LEGACY_BACKEND.into(),
            backend_path: Vec::new(),
        },
        Some(s) => BuildSystem {
            requires: s.requires.unwrap_or_else(legacy),
            backend: s.build_backend.unwrap_or_else(|| LEGACY_BACKEND.into()),
            backend_path: s.backend_path,
        },
    })
}

/// Unpack an sdist under `into`; the project directory (its one top
/// directory, as sdists are made) is returned.
pub(crate) fn unpack(archive: &Path, filename: &str, into: &Path) -> Result<PathBuf> {
    let bad = |detail: String| PipError::BadSdist {
        sdist: filename.to_string(),
        detail,
    };
    let dst = into.join("src");
    std::fs::create_dir_all(&dst).io_context(|| format!("creating {}", dst.display()))?;
    let f = std::fs::File::open(archive).io_context(|| format!("opening {filename}"))?;
    if filename.ends_with(".zip") {
        let mut z = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
        z.extract(&dst).map_err(|e| bad(e.to_string()))?;
    } else {
        let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(f));
        let mut ar = tar::Archive::new(gz);
        ar.set_preserve_permissions(false);
        ar.set_preserve_mtime(false);
        ar.set_unpack_xattrs(false);
        // `unpack` refuses members that climb out of `dst`.
        ar.unpack(&dst).map_err(|e| bad(e.to_string()))?;
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(&dst)
        .io_context(|| format!("reading {}", dst.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    Ok(match entries.as_slice() {
        [one] if one.is_dir() => one.clone(),
        _ => dst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_system_defaults_and_in_tree_backends() {
        let d = tempfile::tempdir().unwrap();
        let legacy = read_build_system(d.path(), "x.tar.gz").unwrap();
        assert_eq!(legacy.backend, LEGACY_BACKEND);
        assert_eq!(legacy.requires, ["setuptools>=40.8.0", "wheel"]);
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n",
        )
        .unwrap();
        let s = read_build_system(d.path(), "x.tar.gz").unwrap();
        assert_eq!(
            s,
            BuildSystem {
                requires: vec![],
                backend: "backend".into(),
                backend_path: vec![".".into()]
            }
        );
        std::fs::write(d.path().join("pyproject.toml"), "[tool.x]\n").unwrap();
        assert_eq!(
            read_build_system(d.path(), "x.tar.gz").unwrap().backend,
            LEGACY_BACKEND
        );
        std::fs::write(d.path().join("pyproject.toml"), "[build-system\n").unwrap();
        let e = read_build_system(d.path(), "x.tar.gz").unwrap_err();
        assert!(e.to_string().contains("x.tar.gz"), "{e}");
    }

    #[test]
    fn git_urls_split_like_pip() {
        assert_eq!(
            split_git_url("git+https://u:t@h.invalid/o/r.git@v1.0#subdirectory=pkg&egg=x"),
            ("https://u:t@h.invalid/o/r.git", Some("v1.0"), Some("pkg"))
        );
        assert_eq!(
            split_git_url("git+https://h.invalid/o/r"),
            ("https://h.invalid/o/r", None, None)
        );
        assert_eq!(
            split_git_url("git+file:///srv/repo@main"),
            ("file:///srv/repo", Some("main"), None)
        );
    }

    /// Writes a fixed wheel and counts its calls.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl WheelBuilder for Counting {
        fn build_wheel(&self, job: &BuildJob<'_>) -> Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(job.backend, "backend");
            assert_eq!(job.backend_path, ["."]);
            assert!(job.source.join("pyproject.toml").is_file());
            std::fs::write(job.out.join("demo-1.0-py3-none-any.whl"), b"built").unwrap();
            Ok(())
        }
    }

    #[test]
    fn a_built_wheel_is_kept_by_sdist_and_target() {
        let d = tempfile::tempdir().unwrap();
        let wh = d.path().join("wh");
        std::fs::create_dir_all(&wh).unwrap();
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(wh.join("demo-1.0.tar.gz")).unwrap(),
            flate2::Compression::default(),
        );
        let mut b = tar::Builder::new(gz);
        let text =
            b"[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "demo-1.0/pyproject.toml", &text[..])
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();

        let cache = Cache::open(d.path().join("cache")).unwrap();
        let http = kiln_store::http::Http::new().unwrap();
        let client = IndexClient::new(&http, &cache, vec![], vec![crate::spec::file_url(&wh)]);
        let mut fs = kiln_fs::rootfs::Rootfs::default();
        fs.insert_file("/usr/bin/python3.11", b"");
        fs.insert_file("/usr/lib/python3.11/os.py", b"");
        let host = Platform::host();
        let target = PythonTarget::detect(&fs, &host, "system").unwrap();
        let file = client.files("demo").unwrap().unwrap()[0].clone();
        let counting = Counting(Default::default());
        let first = Builds::new(&counting, &client, &target, &host, &cache)
            .build("demo", &file)
            .unwrap();
        assert_eq!(first.filename, "demo-1.0-py3-none-any.whl");
        assert_eq!(first.sha256, Digest::of(b"built"));
        assert!(first.sdist_sha256.is_some());
        // Another run with the same cache: the backend is not run again.
        let again = Builds::new(&counting, &client, &target, &host, &cache)
            .build("demo", &file)
            .unwrap();
        assert_eq!(again.sha256, first.sha256);
        assert_eq!(again.sdist_sha256, first.sdist_sha256);
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn build_env_takes_the_importable_members() {
        assert_eq!(env_path("pkg/__init__.py"), Some("pkg/__init__.py"));
        assert_eq!(env_path("x-1.0.data/purelib/pkg/a.py"), Some("pkg/a.py"));
        assert_eq!(env_path("x-1.0.data/platlib/m.so"), Some("m.so"));
        assert_eq!(env_path("x-1.0.data/scripts/tool"), None);
        assert_eq!(env_path("pkg/x.data/y.py"), Some("pkg/x.data/y.py"));
    }

    #[test]
    fn no_binary_options() {
        let mut n = NoBinary::default();
        assert!(!n.applies("foo-bar"));
        n.add("Foo_Bar,baz", "req.txt:1");
        assert!(n.applies("foo-bar") && n.applies("baz") && !n.applies("qux"));
        n.add(":all:", "req.txt:2");
        assert!(n.applies("qux"));
        assert_eq!(n.origin.as_deref(), Some("req.txt:1"));
        n.add(":none:", "req.txt:3");
        assert!(!n.applies("foo-bar"));
    }

    #[test]
    fn unpack_finds_the_project_directory() {
        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("demo-1.0.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::default(),
        );
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "demo-1.0/setup.py", &b"x=1"[..])
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
        let out = tempfile::tempdir().unwrap();
        let root = unpack(&archive, "demo-1.0.tar.gz", out.path()).unwrap();
        assert!(root.ends_with("demo-1.0"));
        assert_eq!(std::fs::read(root.join("setup.py")).unwrap(), b"x=1");
    }
}
