//! Shared helpers for kiln's integration tests.
//!
//! Everything here drives real tools (`docker-registry`, `skopeo`, `umoci`,
//! `oci-image-tool`, `chroot`) over loopback only. A missing tool is a test
//! FAILURE with a message saying which Debian package provides it; `make test`
//! installs them.
//!
//! Scratch space lives under `$CARGO_TARGET_TMPDIR/kiln-it/<pid>/`. A
//! [`Workspace`] is removed when its test passes and kept (path printed) when it
//! fails; leftovers of finished test processes are removed by the next run.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// `$CARGO_TARGET_TMPDIR/kiln-it/<pid>`; created once per test process.
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-it");
        fs::create_dir_all(&base).expect("create scratch base");
        // Remove what test processes that no longer run left behind.
        if let Ok(rd) = fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Ok(pid) = name.parse::<u32>() {
                    if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let root = base.join(std::process::id().to_string());
        fs::create_dir_all(&root).expect("create scratch root");
        root
    })
}

/// A new, empty, uniquely named directory under the scratch root.
pub fn unique_dir(label: &str) -> PathBuf {
    let p = scratch_root().join(format!("{label}-{}", next_id()));
    fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    p
}

/// A path under the scratch root that does not exist yet.
pub fn unique_path(label: &str) -> PathBuf {
    scratch_root().join(format!("{label}-{}", next_id()))
}

/// A repository name that no other test (in any test binary) uses.
pub fn unique_repo(label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("kiln-it/{clean}-{}-{}", std::process::id(), next_id())
}

/// Per-test working directory. Removed on drop unless the test is failing
/// (then it is kept and its path printed) or `KILN_TEST_KEEP` is set.
pub struct Workspace {
    path: PathBuf,
}

impl Workspace {
    pub fn new(label: &str) -> Workspace {
        Workspace {
            path: unique_dir(label),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Write a file (parents created) and set its permission bits.
    pub fn write_mode(&self, rel: &str, contents: impl AsRef<[u8]>, mode: u32) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Write a file with mode 0644.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        self.write_mode(rel, contents, 0o644)
    }

    pub fn mkdir(&self, rel: &str, mode: u32) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    pub fn symlink(&self, rel: &str, target: &str) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        std::os::unix::fs::symlink(target, &p).unwrap();
        p
    }

    /// Write `kiln.toml` (or another name) in the workspace.
    pub fn spec(&self, toml: &str) -> PathBuf {
        self.write("kiln.toml", toml)
    }

    /// `kiln` with cwd = this workspace and a fresh cache.
    pub fn kiln(&self) -> Command {
        let mut c = kiln();
        c.current_dir(&self.path);
        c
    }

    /// Names of the entries directly in the workspace, sorted.
    pub fn listing(&self) -> Vec<String> {
        list_dir(&self.path)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KILN_TEST_KEEP").is_some() {
            eprintln!("kiln tests: keeping workspace {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// Guard against hangs only (never an assertion on speed).
fn command_timeout() -> Duration {
    let secs = std::env::var("KILN_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// The kiln binary under test, with `KILN_CACHE` pointing at a fresh empty
/// directory (override with `.env("KILN_CACHE", ..)`), no registry
/// credentials from the environment, an empty `DOCKER_CONFIG` and no
/// `SOURCE_DATE_EPOCH` (so the contract's default of 0 applies).
pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("KILN_CACHE", unique_dir("cache"))
        .env("DOCKER_CONFIG", unique_dir("docker-config"))
        .env_remove("KILN_REGISTRY_USERNAME")
        .env_remove("KILN_REGISTRY_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("REGISTRY_AUTH_FILE");
    c
}

/// Result of a finished command.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.what, self.status, self.stdout, self.stderr
        )
    }

    /// Panic unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert!(self.status.success(), "command failed\n{}", self.describe());
        self
    }

    /// Panic unless the command exited with `code`.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Run {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}\n{}",
            self.describe()
        );
        self
    }

    /// Panic unless stderr contains `fragment` (case-insensitive).
    #[track_caller]
    pub fn stderr_has(self, fragment: &str) -> Run {
        assert!(
            self.stderr
                .to_lowercase()
                .contains(&fragment.to_lowercase()),
            "stderr should contain {fragment:?}\n{}",
            self.describe()
        );
        self
    }

    /// stdout parsed as exactly one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e})\n{}", self.describe()))
    }
}

/// Run a command to completion, capturing its output (through files, so large
/// outputs cannot deadlock), with stdin closed.
pub fn run(cmd: &mut Command) -> Run {
    let what = format!("{cmd:?}");
    let dir = unique_dir("run");
    let out_p = dir.join("stdout");
    let err_p = dir.join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).unwrap())
        .stderr(fs::File::create(&err_p).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + command_timeout();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = fs::read_to_string(&err_p).unwrap_or_default();
            panic!("command hung and was killed: {what}\n--- stderr ---\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&fs::read(&out_p).unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&fs::read(&err_p).unwrap()).into_owned();
    let _ = fs::remove_dir_all(&dir);
    Run {
        what,
        status,
        stdout,
        stderr,
    }
}

pub trait CommandExt {
    /// Run and capture (any exit code).
    fn run(&mut self) -> Run;
    /// Run, capture and require exit code 0.
    fn run_ok(&mut self) -> Run;
}

impl CommandExt for Command {
    fn run(&mut self) -> Run {
        run(self)
    }
    #[track_caller]
    fn run_ok(&mut self) -> Run {
        run(self).ok()
    }
}

// ---------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------

fn package_for(tool: &str) -> &'static str {
    match tool {
        "docker-registry" => "docker-registry",
        "skopeo" => "skopeo",
        "umoci" => "umoci",
        "oci-image-tool" => "oci-image-tool",
        "htpasswd" => "apache2-utils",
        "busybox" => "busybox-static",
        "chroot" => "coreutils",
        "mkfifo" | "mknod" | "md5sum" => "coreutils",
        "gpg" | "gpgconf" => "gnupg",
        "dpkg" | "dpkg-deb" | "dpkg-query" => "dpkg",
        "dpkg-scanpackages" => "dpkg-dev",
        "openssl" => "openssl",
        "ldconfig" => "libc-bin",
        _ => "?",
    }
}

/// Absolute path of `tool` in PATH; panics (test failure, not a skip) if absent.
#[track_caller]
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(PathBuf::from),
    ) {
        let p = dir.join(tool);
        if let Ok(md) = fs::metadata(&p) {
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "required tool `{tool}` is not installed (Debian package `{}`); \
         `make test` installs it, or run `apt-get install -y {}`",
        package_for(tool),
        package_for(tool)
    );
}

pub fn tool(name: &str) -> Command {
    Command::new(require_tool(name))
}

/// `skopeo ARGS` (with `--insecure-policy`, so no policy.json is needed).
pub fn skopeo(args: &[&str]) -> Run {
    let mut c = tool("skopeo");
    c.arg("--insecure-policy").args(args);
    c.run()
}

fn tls_args(reference: &str) -> Vec<&'static str> {
    if reference.starts_with("docker://") {
        vec!["--tls-verify=false"]
    } else {
        vec![]
    }
}

/// `skopeo inspect REF` as JSON (adds `--tls-verify=false` for docker://).
#[track_caller]
pub fn skopeo_inspect(reference: &str) -> Value {
    let mut args = vec!["inspect"];
    args.extend(tls_args(reference));
    args.push(reference);
    skopeo(&args).ok().json()
}

/// `skopeo inspect --raw REF`: the manifest or index as stored.
#[track_caller]
pub fn skopeo_inspect_raw(reference: &str) -> Value {
    let mut args = vec!["inspect", "--raw"];
    args.extend(tls_args(reference));
    args.push(reference);
    skopeo(&args).ok().json()
}

/// `skopeo inspect --config REF`: the image config.
#[track_caller]
pub fn skopeo_inspect_config(reference: &str) -> Value {
    let mut args = vec!["inspect", "--config"];
    args.extend(tls_args(reference));
    args.push(reference);
    skopeo(&args).ok().json()
}

/// `skopeo copy SRC DST` (TLS verification off for docker:// ends).
#[track_caller]
pub fn skopeo_copy(src: &str, dst: &str) -> Run {
    skopeo_copy_with(&[], src, dst)
}

/// `skopeo copy EXTRA.. SRC DST` (TLS verification off for docker:// ends).
#[track_caller]
pub fn skopeo_copy_with(extra: &[&str], src: &str, dst: &str) -> Run {
    let mut args = vec!["copy"];
    args.extend_from_slice(extra);
    if src.starts_with("docker://") {
        args.push("--src-tls-verify=false");
    }
    if dst.starts_with("docker://") {
        args.push("--dest-tls-verify=false");
    }
    args.push(src);
    args.push(dst);
    skopeo(&args).ok()
}

/// `oci-image-tool validate --type image --ref name=TAG DIR`.
#[track_caller]
pub fn oci_validate(layout: &Path, tag: &str) {
    let mut c = tool("oci-image-tool");
    c.args(["validate", "--type", "image", "--ref"])
        .arg(format!("name={tag}"))
        .arg(layout);
    let r = c.run().ok();
    // oci-image-tool prints per-file verdicts; make sure nothing was reported invalid.
    let all = format!("{}{}", r.stdout, r.stderr).to_lowercase();
    assert!(
        !all.contains("invalid") && !all.contains("error"),
        "oci-image-tool reported a problem:\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// `umoci unpack --image DIR:TAG BUNDLE`; returns `BUNDLE/rootfs`.
#[track_caller]
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let mut c = tool("umoci");
    c.arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle);
    c.run_ok();
    let rootfs = bundle.join("rootfs");
    assert!(
        rootfs.is_dir(),
        "umoci produced no rootfs in {}",
        bundle.display()
    );
    rootfs
}

/// The runtime `config.json` umoci wrote into a bundle.
pub fn bundle_config(bundle: &Path) -> Value {
    read_json(&bundle.join("config.json"))
}

/// Run ARGS inside ROOTFS with chroot, a clean environment and a standard PATH.
pub fn chroot_run(rootfs: &Path, args: &[&str]) -> Run {
    let mut c = tool("chroot");
    c.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .arg(rootfs)
        .args(args);
    c.run()
}

/// Metadata of a path inside an unpacked rootfs, without following symlinks.
#[track_caller]
pub fn stat(rootfs: &Path, path_in_image: &str) -> fs::Metadata {
    let p = rootfs.join(path_in_image.trim_start_matches('/'));
    fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{} missing in rootfs: {e}", path_in_image))
}

/// Assert permission bits, uid and gid of a path in a rootfs.
#[track_caller]
pub fn assert_mode_owner(rootfs: &Path, path_in_image: &str, mode: u32, uid: u32, gid: u32) {
    let md = stat(rootfs, path_in_image);
    assert_eq!(
        md.permissions().mode() & 0o7777,
        mode,
        "mode of {path_in_image}: got {:o}, want {mode:o}",
        md.permissions().mode() & 0o7777
    );
    assert_eq!((md.uid(), md.gid()), (uid, gid), "owner of {path_in_image}");
}

pub fn exists_in(rootfs: &Path, path_in_image: &str) -> bool {
    fs::symlink_metadata(rootfs.join(path_in_image.trim_start_matches('/'))).is_ok()
}

// ---------------------------------------------------------------------------
// Digests, JSON
// ---------------------------------------------------------------------------

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

#[track_caller]
pub fn assert_digest(v: &Value) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("digest is not a string: {v}"));
    let hex = s
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {s:?} lacks sha256:"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "malformed digest {s:?}"
    );
    s.to_string()
}

#[track_caller]
pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `v[key]` as a string, panicking with context.
#[track_caller]
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key:?} is not a string in {v}"))
}

/// Strings of a JSON array.
#[track_caller]
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("not a string: {x}"))
                .to_string()
        })
        .collect()
}

/// Sorted keys of a JSON object (`{}` and null give an empty list).
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`) of a Unix time, for `created`
/// checks. GNU `date` computes it, so the oracle is not kiln's own arithmetic.
pub fn rfc3339(epoch: i64) -> String {
    let out = Command::new("date")
        .env("LC_ALL", "C")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("running date");
    assert!(out.status.success(), "date failed for {epoch}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Two RFC 3339 timestamps denote the same instant (tolerates `.000`, `+00:00`).
pub fn same_instant(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> String {
        let s = s.replace("+00:00", "Z");
        match (s.find('.'), s.ends_with('Z')) {
            (Some(dot), true) if s[dot + 1..s.len() - 1].bytes().all(|c| c == b'0') => {
                format!("{}Z", &s[..dot])
            }
            _ => s,
        }
    }
    norm(a) == norm(b)
}

// ---------------------------------------------------------------------------
// OCI layouts on disk
// ---------------------------------------------------------------------------

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Read access to an OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    #[track_caller]
    pub fn open(dir: impl AsRef<Path>) -> Layout {
        let dir = dir.as_ref().to_path_buf();
        let marker = read_json(&dir.join("oci-layout"));
        assert_eq!(
            marker["imageLayoutVersion"],
            "1.0.0",
            "oci-layout of {}",
            dir.display()
        );
        Layout { dir }
    }

    pub fn index(&self) -> Value {
        read_json(&self.dir.join("index.json"))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest with algorithm");
        self.dir.join("blobs").join(alg).join(hex)
    }

    /// Blob bytes; asserts the content matches the digest.
    #[track_caller]
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let p = self.blob_path(digest);
        let b = fs::read(&p).unwrap_or_else(|e| panic!("blob {digest} missing from layout: {e}"));
        assert_eq!(
            digest_of(&b),
            digest,
            "blob {} content does not match its name",
            p.display()
        );
        b
    }

    #[track_caller]
    pub fn json_blob(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).expect("JSON blob")
    }

    /// The ref.name annotations in index.json, sorted.
    pub fn tags(&self) -> Vec<String> {
        let mut t: Vec<String> = self.index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["annotations"][REF_NAME].as_str().map(str::to_string))
            .collect();
        t.sort();
        t
    }

    /// The one index.json descriptor annotated with ref.name = TAG.
    #[track_caller]
    pub fn descriptor(&self, tag: &str) -> Value {
        let idx = self.index();
        let found: Vec<&Value> = idx["manifests"]
            .as_array()
            .expect("index.json manifests")
            .iter()
            .filter(|d| d["annotations"][REF_NAME] == tag)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one descriptor for tag {tag:?} in {idx:#}"
        );
        found[0].clone()
    }

    /// (digest, manifest) of the single-platform image tagged TAG.
    #[track_caller]
    pub fn manifest(&self, tag: &str) -> (String, Value) {
        let d = self.descriptor(tag);
        assert_eq!(
            d["mediaType"], MT_MANIFEST,
            "tag {tag} should name an image manifest"
        );
        let digest = s(&d, "digest").to_string();
        let m = self.json_blob(&digest);
        assert_eq!(
            d["size"].as_u64().unwrap(),
            self.blob(&digest).len() as u64,
            "descriptor size"
        );
        (digest, m)
    }

    /// Image config of the single-platform image tagged TAG.
    #[track_caller]
    pub fn config(&self, tag: &str) -> Value {
        let (_, m) = self.manifest(tag);
        self.json_blob(s(&m["config"], "digest"))
    }

    /// All layers of the single-platform image tagged TAG, in order:
    /// (descriptor, decoded tar entries).
    #[track_caller]
    pub fn layers(&self, tag: &str) -> Vec<(Value, Vec<TarEntry>)> {
        let (_, m) = self.manifest(tag);
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let blob = self.blob(s(l, "digest"));
                assert_eq!(l["size"].as_u64().unwrap(), blob.len() as u64, "layer size");
                (
                    l.clone(),
                    tar_entries(&decompress(&blob, s(l, "mediaType"))),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Layer tarballs
// ---------------------------------------------------------------------------

/// Undo a layer's compression according to its media type.
#[track_caller]
pub fn decompress(blob: &[u8], media_type: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        assert_eq!(&blob[..2], &[0x1f, 0x8b], "gzip layer lacks gzip magic");
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .expect("gunzip layer");
    } else if media_type.ends_with("+zstd") {
        assert_eq!(
            &blob[..4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "zstd layer lacks zstd magic"
        );
        out = zstd::stream::decode_all(blob).expect("unzstd layer");
    } else if media_type.ends_with(".tar") || media_type.ends_with("rootfs.diff.tar") {
        out = blob.to_vec();
    } else {
        panic!("unexpected layer media type {media_type}");
    }
    out
}

/// One entry of a layer tarball as a reader sees it.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Path as stored (long names and PAX paths resolved).
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub uname: String,
    pub gname: String,
    pub link: Option<String>,
    pub pax: BTreeMap<String, String>,
    pub content: Vec<u8>,
}

impl TarEntry {
    /// Path without leading `./` or `/` and without trailing `/`.
    pub fn clean_path(&self) -> String {
        let p = self.path.trim_start_matches("./").trim_start_matches('/');
        p.trim_end_matches('/').to_string()
    }
}

#[track_caller]
pub fn tar_entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in ar.entries().expect("read tar") {
        let mut e = e.expect("tar entry");
        let h = e.header().clone();
        let path = e.path().expect("entry path").to_string_lossy().into_owned();
        let link = e
            .link_name()
            .expect("link name")
            .map(|l| l.to_string_lossy().into_owned());
        let mut pax = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().expect("pax") {
            for x in exts {
                let x = x.expect("pax record");
                pax.insert(
                    x.key().unwrap_or("?").to_string(),
                    x.value().unwrap_or("?").to_string(),
                );
            }
        }
        let mut content = Vec::new();
        e.read_to_end(&mut content).expect("entry content");
        out.push(TarEntry {
            path,
            kind: h.entry_type(),
            mode: h.mode().expect("mode"),
            uid: h.uid().expect("uid"),
            gid: h.gid().expect("gid"),
            mtime: h.mtime().expect("mtime"),
            uname: h.username().ok().flatten().unwrap_or("").to_string(),
            gname: h.groupname().ok().flatten().unwrap_or("").to_string(),
            link,
            pax,
            content,
        });
    }
    out
}

/// Find an entry by clean path.
#[track_caller]
pub fn entry<'a>(entries: &'a [TarEntry], clean_path: &str) -> &'a TarEntry {
    entries
        .iter()
        .find(|e| e.clean_path() == clean_path)
        .unwrap_or_else(|| {
            let all: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
            panic!("no entry {clean_path:?} in layer; entries: {all:?}")
        })
}

/// Kiln's canonical entry order: every parent directory entry comes before its
/// children, and the direct children of each directory appear in byte order of
/// their names. (Both a full-path byte sort and a sorted depth-first walk satisfy
/// this.)
#[track_caller]
pub fn assert_sorted(entries: &[TarEntry]) {
    let paths: Vec<String> = entries.iter().map(|e| e.clean_path()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_child: BTreeMap<String, String> = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        assert!(
            seen.insert(p.clone(), i).is_none(),
            "duplicate entry {p:?} in {paths:?}"
        );
        let (parent, name) = match p.rsplit_once('/') {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (String::new(), p.clone()),
        };
        // A parent that has its own entry must come first.
        if !parent.is_empty() {
            if let Some(j) = paths.iter().position(|q| *q == parent) {
                assert!(
                    j < i,
                    "directory {parent:?} comes after its child {p:?}: {paths:?}"
                );
            }
        }
        if let Some(prev) = last_child.get(&parent) {
            assert!(
                prev.as_bytes() < name.as_bytes(),
                "entries of {parent:?} not sorted: {prev:?} before {name:?} in {paths:?}"
            );
        }
        last_child.insert(parent, name);
    }
}

/// What a hand-made layer contains.
pub enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

/// An uncompressed tarball (mtime 0, root-owned) of ITEMS in the given order.
pub fn make_tar(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match it {
            Item::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Item::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Item::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// What [`write_oci_layout`] wrote.
#[derive(Debug, Clone)]
pub struct HandmadeImage {
    pub manifest_digest: String,
    pub config_digest: String,
    /// Digests of the gzip layer blobs, in order.
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = digest_of(bytes);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
    d
}

/// Write the blobs of one linux image for ARCH whose layers are the given
/// uncompressed tarballs (stored gzip), with `Env=[PATH=…, BASE_ENV=from-base]`,
/// `Cmd=["/bin/sh"]` and a label; returns it and its manifest descriptor.
pub fn write_image_blobs(dir: &Path, arch: &str, layer_tars: &[Vec<u8>]) -> (HandmadeImage, Value) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layers = Vec::new();
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    for t in layer_tars {
        let gz = gzip(t);
        let d = write_blob(dir, &gz);
        layers.push(json!({"mediaType": MT_LAYER_GZIP, "digest": d, "size": gz.len()}));
        layer_digests.push(d);
        diff_ids.push(digest_of(t));
    }
    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "BASE_ENV=from-base"],
            "Cmd": ["/bin/sh"],
            "Labels": {"com.example.base": "handmade"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layer_tars.iter().map(|_| json!({"created": "1970-01-01T00:00:00Z", "created_by": "kiln tests"})).collect::<Vec<_>>()
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = write_blob(dir, &config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = write_blob(dir, &manifest_bytes);
    let desc = json!({
        "mediaType": MT_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_bytes.len(),
        "platform": {"architecture": arch, "os": "linux"}
    });
    (
        HandmadeImage {
            manifest_digest,
            config_digest,
            layer_digests,
            diff_ids,
        },
        desc,
    )
}

/// Point TAG in DIR/index.json at DESC (replacing an older TAG).
pub fn tag_in_layout(dir: &Path, tag: &str, desc: &Value) {
    let index_path = dir.join("index.json");
    let mut index = if index_path.exists() {
        read_json(&index_path)
    } else {
        json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []})
    };
    let mut desc = desc.clone();
    desc["annotations"] = json!({REF_NAME: tag});
    let list = index["manifests"].as_array_mut().unwrap();
    list.retain(|d| d["annotations"][REF_NAME] != tag);
    list.push(desc);
    fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

/// Write (or add a tag to) an OCI image layout at DIR holding one image (see
/// [`write_image_blobs`]).
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    arch: &str,
    layer_tars: &[Vec<u8>],
) -> HandmadeImage {
    let (img, desc) = write_image_blobs(dir, arch, layer_tars);
    tag_in_layout(dir, tag, &desc);
    img
}

/// Write a multi-platform image (an image index, tagged TAG) with one image
/// per (arch, layers). Returns the index digest and the images.
pub fn write_oci_index_layout(
    dir: &Path,
    tag: &str,
    images: &[(&str, Vec<Vec<u8>>)],
) -> (String, Vec<HandmadeImage>) {
    let mut descs = Vec::new();
    let mut imgs = Vec::new();
    for (arch, layers) in images {
        let (img, desc) = write_image_blobs(dir, arch, layers);
        descs.push(desc);
        imgs.push(img);
    }
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs});
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = write_blob(dir, &bytes);
    tag_in_layout(
        dir,
        tag,
        &json!({"mediaType": MT_INDEX, "digest": digest, "size": bytes.len()}),
    );
    (digest, imgs)
}

/// The two layers of the whiteout base: layer 1 has /a/keep, /a/gone, /d/old;
/// layer 2 deletes /a/gone (whiteout), makes /d opaque and adds /d/new.
pub fn whiteout_base_layers() -> Vec<Vec<u8>> {
    vec![
        make_tar(&[
            Item::Dir("a/", 0o755),
            Item::File("a/gone", b"gone\n", 0o644),
            Item::File("a/keep", b"keep\n", 0o644),
            Item::Dir("d/", 0o755),
            Item::File("d/old", b"old\n", 0o644),
        ]),
        make_tar(&[
            Item::Dir("a/", 0o755),
            Item::File("a/.wh.gone", b"", 0o644),
            Item::Dir("d/", 0o755),
            Item::File("d/.wh..wh..opq", b"", 0o644),
            Item::File("d/new", b"new\n", 0o644),
        ]),
    ]
}

// ---------------------------------------------------------------------------
// A real registry on loopback (Debian's docker-registry)
// ---------------------------------------------------------------------------

/// A `docker-registry serve` process on a random 127.0.0.1 port, storing into
/// a scratch directory and logging into a file. Stopped when dropped, and also
/// when the test process exits (a shell wrapper watches a pipe from us).
pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    child: Child,
    lifeline: Option<ChildStdin>,
}

static MARKERS: AtomicUsize = AtomicUsize::new(0);

impl Registry {
    /// The registry shared by every test of this test binary (plain HTTP, no auth).
    pub fn shared() -> &'static Registry {
        static SHARED: OnceLock<Registry> = OnceLock::new();
        SHARED.get_or_init(|| Registry::start(None))
    }

    /// A registry shared by this test binary that requires basic auth
    /// (htpasswd, bcrypt) for [`AUTH_USER`] / [`AUTH_PASSWORD`].
    pub fn shared_auth() -> &'static Registry {
        static SHARED: OnceLock<Registry> = OnceLock::new();
        SHARED.get_or_init(|| Registry::start(Some((AUTH_USER, AUTH_PASSWORD))))
    }

    /// Start a registry; with `auth`, htpasswd authentication for that user.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        require_tool("docker-registry");
        let dir = unique_dir("registry");
        let auth_yaml = match auth {
            None => String::new(),
            Some((user, pass)) => {
                let out = tool("htpasswd").args(["-Bbn", user, pass]).run_ok();
                let file = dir.join("htpasswd");
                fs::write(&file, out.stdout.trim()).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let mut last_log = String::new();
        for attempt in 0..20 {
            let port = free_port();
            let cfg = dir.join(format!("config-{attempt}.yml"));
            let log_path = dir.join(format!("registry-{attempt}.log"));
            fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            // The wrapper kills the registry as soon as our end of its stdin
            // closes: on drop, or when this process exits for any reason.
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(concat!(
                    // Background jobs of a non-interactive shell get /dev/null as
                    // stdin, so keep the pipe on fd 3 for the watcher.
                    "exec 3<&0; ",
                    r#"docker-registry serve "$1" >"$2" 2>&1 3<&- & pid=$!; "#,
                    "(cat <&3 >/dev/null; kill $pid 2>/dev/null) & ",
                    "exec 3<&-; wait $pid"
                ))
                .arg("sh")
                .arg(&cfg)
                .arg(&log_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start docker-registry");
            let lifeline = child.stdin.take();
            let start = Instant::now();
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    last_log = fs::read_to_string(&log_path).unwrap_or_default();
                    if last_log.contains("address already in use") {
                        break; // port collision: try another port
                    }
                    panic!("docker-registry exited ({st}) during start:\n{last_log}");
                }
                if matches!(http_status(port, "/v2/"), Some(200) | Some(401)) {
                    return Registry {
                        port,
                        dir,
                        log_path,
                        child,
                        lifeline,
                    };
                }
                if start.elapsed() > Duration::from_secs(60) {
                    drop(lifeline);
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer GET /v2/ on port {port}:\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start docker-registry on a free port:\n{last_log}");
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/REPO`
    pub fn repo(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    /// `docker://127.0.0.1:PORT/REPO:TAG` for skopeo.
    pub fn docker_ref(&self, repo: &str, tag: &str) -> String {
        format!("docker://{}/{repo}:{tag}", self.host())
    }

    /// The registry's log, complete up to now: sends a marker request and
    /// waits until its access-log line is written.
    pub fn log(&self) -> String {
        let marker = format!(
            "kiln-test-marker-{}",
            MARKERS.fetch_add(1, Ordering::SeqCst)
        );
        let _ = http_status(self.port, &format!("/v2/?{marker}"));
        let start = Instant::now();
        loop {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.contains(&marker) || start.elapsed() > Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Access-log lines of blob upload starts (`POST /v2/REPO/blobs/uploads/…`),
    /// including cross-repository mount attempts (`?mount=…&from=…`).
    pub fn upload_posts(&self, repo: &str) -> Vec<String> {
        let needle = format!("\"POST /v2/{repo}/blobs/uploads/");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    /// Upload starts that are not mount attempts.
    pub fn plain_upload_posts(&self, repo: &str) -> Vec<String> {
        self.upload_posts(repo)
            .into_iter()
            .filter(|l| !l.contains("mount="))
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.child.wait();
    }
}

pub const AUTH_USER: &str = "kiln-tester";
pub const AUTH_PASSWORD: &str = "s3cret-Pa55word-9f8e7d";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A 127.0.0.1 port with nothing listening (for "unreachable" cases).
pub fn closed_port() -> u16 {
    free_port()
}

/// Status code of a plain HTTP GET on 127.0.0.1:PORT, or None if unreachable.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback HTTP server answering every request with `status` (e.g.
/// "500 Internal Server Error") and an empty body. Stops when dropped.
pub struct FakeServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    pub fn start(status: &'static str) -> FakeServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 8192];
                    let mut req = Vec::new();
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = write!(
                        c,
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                });
            }
        });
        FakeServer { port, stop }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

// ---------------------------------------------------------------------------
// kiln-level helpers shared by the test files
// ---------------------------------------------------------------------------

/// Run `kiln build --json ARGS` in WS and return the parsed JSON.
#[track_caller]
pub fn build_json(ws: &Workspace, args: &[&str]) -> Value {
    let out = ws.kiln().arg("build").arg("--json").args(args).run_ok();
    let v = out.json();
    check_build_json(&v);
    v
}

/// Shape checks for `kiln build --json` output that hold for every build.
#[track_caller]
pub fn check_build_json(v: &Value) {
    assert_digest(&v["digest"]);
    let manifests = v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("manifests array in {v}"));
    assert!(!manifests.is_empty(), "no manifests in {v}");
    for m in manifests {
        assert_digest(&m["digest"]);
        let p = s(m, "platform");
        assert!(p.starts_with("linux/"), "platform {p:?}");
    }
    if manifests.len() == 1 {
        assert_eq!(
            v["digest"], manifests[0]["digest"],
            "single platform: digest is the manifest's"
        );
    }
    for l in v["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("layers array in {v}"))
    {
        assert_digest(&l["digest"]);
        assert_digest(&l["diff_id"]);
        assert!(l["size"].as_u64().is_some(), "layer size in {l}");
        assert!(s(l, "media_type").starts_with("application/vnd.oci.image.layer.v1.tar"));
    }
    assert!(v["outputs"].is_array(), "outputs array in {v}");
    assert!(v.get("push").is_some(), "push key (object or null) in {v}");
}

/// The env of an image config as a map.
pub fn env_map(config: &Value) -> BTreeMap<String, String> {
    config["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Push a small scratch image with kiln to `reg/REPO:TAG` and return kiln's
/// JSON. `files` are (relative path, contents) placed under /base in the
/// image, each as its own layer.
#[track_caller]
pub fn push_scratch_image(reg: &Registry, repo: &str, tag: &str, files: &[(&str, &str)]) -> Value {
    let ws = Workspace::new("push-base");
    let mut spec = format!(
        "[image]\nname = \"{}\"\ntags = [\"{tag}\"]\n",
        reg.repo(repo)
    );
    for (rel, contents) in files {
        ws.write(&format!("files/{rel}"), contents);
        spec.push_str(&format!(
            "\n[[files]]\nsrc = \"files/{rel}\"\ndst = \"/base/{rel}\"\n"
        ));
    }
    ws.spec(&spec);
    build_json(&ws, &["--push"])
}

/// Every file in a kiln cache's blob store is named by the sha256 of its bytes.
#[track_caller]
pub fn assert_cache_consistent(cache: &Path) {
    let dir = cache.join("blobs/sha256");
    for name in list_dir(&dir) {
        let p = dir.join(&name);
        if p.is_file() && name.len() == 64 {
            assert_eq!(
                sha256_hex(&fs::read(&p).unwrap()),
                name,
                "cache blob {} is corrupt",
                p.display()
            );
        }
    }
}

/// `outputs` of kiln's JSON names exactly EXPECTED (as given on the command
/// line, e.g. "oci:out"); an absolute spelling of the same path is accepted.
#[track_caller]
pub fn assert_outputs(ws: &Workspace, v: &Value, expected: &[&str]) {
    let norm = |o: &str| -> (String, PathBuf) {
        let (transport, path) = o
            .split_once(':')
            .unwrap_or_else(|| panic!("output {o:?} lacks transport"));
        let p = Path::new(path);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            ws.join(p)
        };
        let abs = abs.canonicalize().unwrap_or(abs);
        (transport.to_string(), abs)
    };
    let got: Vec<(String, PathBuf)> = strs(&v["outputs"]).iter().map(|o| norm(o)).collect();
    let want: Vec<(String, PathBuf)> = expected.iter().map(|o| norm(o)).collect();
    assert_eq!(got, want, "outputs in {v}");
}

/// `layers` of kiln's build JSON are the layers this build made (one per
/// `[[files]]`, the same for every platform): the last ones of the manifest,
/// after the base's.
#[track_caller]
pub fn assert_json_layers_match_manifest(v: &Value, manifest: &Value) {
    let j = v["layers"].as_array().unwrap();
    let m = manifest["layers"].as_array().unwrap();
    assert!(
        j.len() <= m.len(),
        "layer count: json {v} manifest {manifest}"
    );
    for (a, b) in j.iter().zip(&m[m.len() - j.len()..]) {
        assert_eq!(a["digest"], b["digest"]);
        assert_eq!(a["size"], b["size"]);
        assert_eq!(a["media_type"], b["mediaType"]);
    }
}

/// Standard base64 (with padding), for docker config.json `auth` fields.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A DOCKER_CONFIG directory whose config.json holds USER:PASS for HOST.
pub fn docker_config_dir(host: &str, user: &str, pass: &str) -> PathBuf {
    let dir = unique_dir("docker-config");
    let auth = base64(format!("{user}:{pass}").as_bytes());
    fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&json!({"auths": {host: {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    dir
}

/// Write a spec for a one-file image named `reg_repo` (host/repo) with TAGS;
/// the file's content is unique to the repo, so no other test shares its blob.
pub fn simple_push_spec(ws: &Workspace, reg_repo: &str, tags: &[&str]) {
    ws.write("payload/hello.txt", format!("hello from {reg_repo}\n"));
    ws.write("payload/sub/data.txt", "data\n");
    let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
    ws.spec(&format!(
        "[image]\nname = \"{reg_repo}\"\ntags = [{}]\n\n[[files]]\nsrc = \"payload/\"\ndst = \"/srv\"\n\n[config]\ncmd = [\"/srv/hello.txt\"]\n",
        tags.join(", ")
    ));
}

/// Run `kiln ARGS` in WS expecting exit CODE with every FRAGMENT in stderr
/// (case-insensitive), a readable message (no panic), and nothing new in the
/// workspace (no output, no staging leftovers).
#[track_caller]
pub fn expect_failure(ws: &Workspace, args: &[&str], code: i32, fragments: &[&str]) -> Run {
    expect_failure_with(ws, ws.kiln().args(args), code, fragments)
}

/// Like [`expect_failure`] with a prepared command (extra env etc.).
#[track_caller]
pub fn expect_failure_with(
    ws: &Workspace,
    cmd: &mut Command,
    code: i32,
    fragments: &[&str],
) -> Run {
    let before = ws.listing();
    let mut r = cmd.run().code_is(code);
    for f in fragments {
        r = r.stderr_has(f);
    }
    assert!(
        !r.stderr.trim().is_empty(),
        "an error message on stderr is expected\n{}",
        r.describe()
    );
    assert!(
        !r.stderr.contains("panicked at") && !r.stderr.contains("RUST_BACKTRACE"),
        "kiln panicked instead of reporting an error\n{}",
        r.describe()
    );
    assert_eq!(
        ws.listing(),
        before,
        "a failed build must leave nothing behind\n{}",
        r.describe()
    );
    r
}

/// Copy a directory tree (files keep their permission bits; symlinks copied
/// as symlinks).
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            copy_dir(&e.path(), &to);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Replace every FROM with TO in the text file at PATH.
pub fn rewrite(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{} does not mention {from:?}",
        path.display()
    );
    fs::write(path, text.replace(from, to)).unwrap();
}

// ---------------------------------------------------------------------------
// Loopback file server (apt repositories, conda channels)
// ---------------------------------------------------------------------------

/// Serves the files under a directory over HTTP/1.1 on 127.0.0.1 (GET only,
/// 404 for anything else). Stops when dropped.
pub struct FileServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// `304 Not Modified` answers so far (the server sends `ETag`s and
    /// honours `If-None-Match`).
    pub not_modified: Arc<AtomicUsize>,
}

impl FileServer {
    pub fn start(root: &Path) -> FileServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let not_modified = Arc::new(AtomicUsize::new(0));
        let counter = not_modified.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = conn else { continue };
                let root = root.clone();
                let counter = counter.clone();
                std::thread::spawn(move || serve_one(c, &root, &counter));
            }
        });
        FileServer {
            port,
            stop,
            not_modified,
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_one(mut c: TcpStream, root: &Path, not_modified: &AtomicUsize) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut req = Vec::new();
    let mut buf = [0u8; 8192];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let body = if method == "GET" && !path.split('/').any(|s| s == "..") {
        fs::read(root.join(path.trim_start_matches('/')))
            .ok()
            .filter(|_| root.join(path.trim_start_matches('/')).is_file())
    } else {
        None
    };
    let etag = body.as_ref().map(|b| format!("\"{}\"", sha256_hex(b)));
    let conditional = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("if-none-match")
            .then(|| v.trim().to_string())
    });
    let _ = match body {
        Some(_) if conditional.is_some() && conditional == etag => {
            not_modified.fetch_add(1, Ordering::SeqCst);
            write!(
                c,
                "HTTP/1.1 304 Not Modified\r\nETag: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                etag.unwrap_or_default()
            )
        }
        Some(b) => {
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nETag: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                etag.unwrap_or_default(),
                b.len()
            );
            c.write_all(&b)
        }
        None => write!(
            c,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    };
    let _ = c.flush();
    let _ = c.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------
// SPDX validation
// ---------------------------------------------------------------------------

/// `pyspdxtools`: $KILN_PYSPDXTOOLS, target/spdx-venv (the Makefile's), or PATH.
pub fn pyspdxtools() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PYSPDXTOOLS") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spdx-venv/bin/pyspdxtools");
    if venv.is_file() {
        return venv;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("pyspdxtools").is_file() {
            return dir.join("pyspdxtools");
        }
    }
    panic!(
        "pyspdxtools (PyPI's spdx-tools) is not installed; `make spdx-validator` \
         (part of `make test`) installs it into target/spdx-venv"
    );
}

/// pyspdxtools parses and validates the document and finds nothing to report.
#[track_caller]
pub fn assert_valid_spdx(path: &Path) {
    let r = Command::new(pyspdxtools()).arg("-i").arg(path).run();
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        r.status.success() && !all.to_lowercase().contains("error") && !all.contains("issues"),
        "pyspdxtools rejects {}:\n{}",
        path.display(),
        r.describe()
    );
}

/// `WS/rootfs/bin/busybox` (busybox-static) and `bin/sh -> busybox`: a real
/// shell to copy into an image with `[[files]] src = "rootfs"`.
pub fn busybox_rootfs(ws: &Workspace) {
    let busybox = require_tool("busybox");
    ws.mkdir("rootfs/bin", 0o755);
    fs::copy(&busybox, ws.join("rootfs/bin/busybox")).unwrap();
    fs::set_permissions(
        ws.join("rootfs/bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    ws.symlink("rootfs/bin/sh", "busybox");
}
