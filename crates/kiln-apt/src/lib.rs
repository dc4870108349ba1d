//! `[apt]`: resolve Debian packages natively and install them as layers.
//!
//! spec → sources (spec / base image / host) → signed indexes ([`repo`]) →
//! solve with the base's dpkg status as installed ([`solve`]) → download and
//! verify `.deb`s → unpack ([`deb`]) → layers plus a dpkg database and the
//! common maintainer-script effects done natively ([`install`]).

mod accounts;
pub mod cert_hash;
mod control;
mod deb;
mod error;
mod install;
mod ldconfig;
mod repo;
pub mod scripts;
mod shells;
mod solve;
mod sources;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use control::{parse_dep, parse_paragraphs, Dep, Relation, Version};
use kiln_core::digest::Digest;
use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_fs::rootfs::Rootfs;
use kiln_spec::sections::{AptSection, Bootstrap, SourceEntry};
use kiln_store::cache::Cache;
use kiln_store::http::Http;
use sources::Source;

pub use error::{AptError, Hostile, IndexProblem, KeyringProblem};
pub use install::{layer_groups, layer_groups_counted, AptReport};
pub use repo::Package;

/// The keyring used when a source names none.
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What will be installed.
#[derive(Debug)]
pub struct AptPlan {
    pub(crate) arch: String,
    /// Foreign architectures dpkg must know (`/var/lib/dpkg/arch`): the
    /// base's and those of packages asked for as `name:ARCH`.
    pub(crate) foreign_archs: Vec<String>,
    pub(crate) bootstrap: Option<Bootstrap>,
    /// A bootstrap's sources and keyrings, written into the image so that
    /// its own apt can update (empty otherwise: a base keeps its sources).
    pub(crate) image_sources: Vec<sources::ImageSource>,
    /// Packages to install, sorted by name; their `.deb`s are in the cache.
    pub packages: Vec<Package>,
    /// The signed indexes the packages were resolved from (none for a
    /// locked plan).
    pub kept: Option<KeptIndexes>,
}

/// The signed indexes an apt plan resolved from: each source (its URI
/// without credentials, and suite) with the digest of its `InRelease`, in
/// the plan's order. The same inputs on the same image with the same
/// `InRelease` files read the same `Packages` (named by hash there), so
/// they resolve to the same packages ([`kept_indexes_hold`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptIndexes(Vec<(String, Digest)>);

/// Whether a plan of `section` on `fs` would read the same signed indexes
/// as `kept` now: the same sources (from the section and the image), each
/// `InRelease` revalidated as a plan fetches it, verified against its
/// keyring as it stands, and the same bytes.
pub fn kept_indexes_hold(
    kept: &KeptIndexes,
    section: &AptSection,
    spec_dir: &Path,
    fs: &Rootfs,
    scratch: bool,
    http: &Http,
    cache: &Cache,
) -> Result<bool> {
    let srcs = sources::distinct(resolve_sources(section, fs, scratch)?);
    if srcs.len() != kept.0.len() {
        return Ok(false);
    }
    let keyrings = srcs
        .iter()
        .map(|s| keyring_for(s, section, fs, spec_dir))
        .collect::<Result<Vec<_>>>()?;
    let now = srcs
        .par_iter()
        .zip(keyrings.par_iter())
        .map(|(s, k)| Ok((source_label(s), repo::signed_release(s, k, http, cache)?.0)))
        .collect::<Result<Vec<_>>>()?;
    Ok(now == kept.0)
}

/// A source as [`KeptIndexes`] names it.
fn source_label(s: &sources::Source) -> String {
    format!("{} {}", kiln_core::url::strip_credentials(&s.uri), s.suite)
}

/// Debian's name for an OCI architecture.
pub fn debian_arch(p: &Platform) -> Result<&'static str> {
    kiln_core::Arch::from_platform(p)
        .ok()
        .and_then(|a| a.debian())
        .ok_or_else(|| {
            AptError::NoDebianArch {
                platform: p.to_string(),
            }
            .into()
        })
}

/// Every architecture Debian builds for (a `name:ARCH` request must name one).
fn debian_archs() -> impl Iterator<Item = &'static str> {
    kiln_core::Arch::all().filter_map(|a| a.debian())
}

/// Which base files' contents the apt stage reads.
pub fn keep_path(path: &str) -> bool {
    sources::keep_path(path)
        || shells::keep_path(path)
        || path == "/var/lib/dpkg/status"
        || path == "/var/lib/dpkg/arch"
        || path.starts_with("/var/lib/dpkg/status.d/")
        || path.starts_with("/var/lib/dpkg/alternatives/")
        || path == "/etc/ld.so.cache"
        || path == "/etc/ld.so.conf"
        || path.starts_with("/etc/ld.so.conf.d/")
        || (path.starts_with("/var/lib/dpkg/info/") && path.ends_with(".list"))
        || matches!(
            path,
            "/etc/passwd"
                | "/etc/group"
                | "/etc/shadow"
                | "/etc/gshadow"
                | "/etc/os-release"
                | "/usr/lib/os-release"
        )
}

/// Packages the base has installed (`status`, and distroless `status.d/`).
fn installed_packages(fs: &Rootfs) -> Vec<Package> {
    let mut texts = Vec::new();
    if let Some(b) = fs.read("/var/lib/dpkg/status") {
        texts.push(String::from_utf8_lossy(b).into_owned());
    }
    for name in fs.list("/var/lib/dpkg/status.d") {
        if let Some(b) = fs.read(&format!("/var/lib/dpkg/status.d/{name}")) {
            texts.push(String::from_utf8_lossy(b).into_owned());
        }
    }
    let mut out = Vec::new();
    for t in texts {
        for p in parse_paragraphs(&t) {
            let st = p.get("Status").unwrap_or("install ok installed");
            if !st.ends_with(" installed") {
                continue;
            }
            if let Ok(pkg) = Package::from_paragraph(&p, "", "installed", true) {
                out.push(pkg);
            }
        }
    }
    out
}

fn resolve_sources(section: &AptSection, fs: &Rootfs, scratch: bool) -> Result<Vec<Source>> {
    if !section.sources.is_empty() {
        let mut out = Vec::new();
        for s in &section.sources {
            match s {
                SourceEntry::Line(l) => {
                    out.extend(sources::parse_one_line(l).map_err(|e| e.context("[apt] sources"))?)
                }
                SourceEntry::Table {
                    uri,
                    suites,
                    components,
                    signed_by,
                } => {
                    for suite in suites {
                        out.push(Source {
                            uri: uri.trim_end_matches('/').to_string(),
                            suite: suite.clone(),
                            components: components.clone(),
                            signed_by: signed_by.clone(),
                            in_image: false,
                        });
                    }
                }
            }
        }
        return Ok(out);
    }
    if !scratch {
        let s = sources::from_rootfs(fs)?;
        if !s.is_empty() {
            return Ok(s);
        }
    }
    // A bootstrap (or a base without sources) uses the host's mirror for the chosen suite.
    let suite = section.suite.clone().unwrap_or_else(|| "bookworm".into());
    let host = sources::from_host(Path::new("/"))?;
    let picked: Vec<Source> = host
        .into_iter()
        .filter(|s| s.suite == suite || s.suite.starts_with(&format!("{suite}-")))
        .collect();
    if picked.is_empty() {
        return Err(AptError::NoSources { suite }.into());
    }
    Ok(picked)
}

/// The keyring path a source is checked with, as named.
fn keyring_path(src: &Source, section: &AptSection) -> String {
    src.signed_by
        .clone()
        .or_else(|| section.keyring.clone())
        .unwrap_or_else(|| DEFAULT_KEYRING.to_string())
}

/// A source's keyring file on the host (relative paths from the spec's directory).
fn read_keyring(src: &Source, path: &str, spec_dir: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let host = spec_dir.join(path);
    let bytes = std::fs::read(&host).map_err(|source| AptError::KeyringUnreadable {
        path: host.clone(),
        uri: src.uri.clone(),
        suite: src.suite.clone(),
        source,
    })?;
    Ok((host, bytes))
}

/// A bootstrap's sources for the image, each with its keyring's bytes.
fn image_sources(
    srcs: &[Source],
    section: &AptSection,
    spec_dir: &Path,
) -> Result<Vec<sources::ImageSource>> {
    srcs.iter()
        .map(|s| {
            let path = keyring_path(s, section);
            let (_, bytes) = read_keyring(s, &path, spec_dir)?;
            Ok(sources::ImageSource::new(s, path, bytes))
        })
        .collect()
}

fn keyring_for(
    src: &Source,
    section: &AptSection,
    fs: &Rootfs,
    spec_dir: &Path,
) -> Result<Vec<pgp::composed::SignedPublicKey>> {
    let path = keyring_path(src, section);
    if src.in_image {
        if let Some(b) = fs.read(&path) {
            return repo::load_keyring(b, &format!("{path} (in the base image)"));
        }
        // Images often trust keys in trusted.gpg.d; fall back to those.
        let mut keys = Vec::new();
        for name in fs.list("/etc/apt/trusted.gpg.d") {
            if let Some(b) = fs.read(&format!("/etc/apt/trusted.gpg.d/{name}")) {
                keys.extend(repo::load_keyring(b, &name).unwrap_or_default());
            }
        }
        if !keys.is_empty() {
            return Ok(keys);
        }
    }
    let (host, bytes) = read_keyring(src, &path, spec_dir)?;
    repo::load_keyring(&bytes, &host.display().to_string())
}

/// Foreign architectures the base's dpkg already knows.
fn base_foreign_archs(fs: &Rootfs, native: &str) -> Vec<String> {
    fs.read("/var/lib/dpkg/arch")
        .map(|b| {
            String::from_utf8_lossy(b)
                .split_whitespace()
                .filter(|a| *a != native)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Parse a request: `name`, `name=version`, `name:arch` (a foreign arch is
/// kept on the dep; the native one, `any` and `native` are dropped).
fn parse_request(s: &str, arch: &str) -> Result<Dep> {
    let bad = |detail: String| AptError::BadRequest {
        request: s.to_string(),
        detail,
    };
    let (head, version) = match s.split_once('=') {
        Some((h, v)) => (
            h.trim(),
            Some(Version::parse(v).ok_or_else(|| bad(format!("bad version in `{s}`")))?),
        ),
        None => (s.trim(), None),
    };
    let mut d = parse_dep(head).map_err(bad)?;
    if let Some(a) = d.arch.take() {
        if a != arch && !matches!(a.as_str(), "all" | "any" | "native") {
            if kiln_core::Arch::from_debian(&a).is_none() {
                return Err(AptError::NotDebianArch {
                    request: s.to_string(),
                    arch: a,
                    known: debian_archs().map(String::from).collect(),
                }
                .into());
            }
            d.arch = Some(a);
        }
    }
    d.constraint = version.map(|v| (Relation::Eq, v));
    Ok(d)
}

/// Resolve the section against the base (`fs`) and the signed indexes,
/// and download every `.deb` (verified) into the cache.
pub fn plan(
    section: &AptSection,
    spec_dir: &Path,
    fs: &Rootfs,
    platform: &Platform,
    scratch: bool,
    http: &Http,
    cache: &Cache,
) -> Result<AptPlan> {
    let arch = debian_arch(platform)?;
    if section.bootstrap.is_some() && !scratch {
        return Err(AptError::BootstrapNeedsScratch.into());
    }
    // `packages`, then the packages-file's lines (named `apt.txt:3`).
    let asked: Vec<(String, Option<String>)> = section
        .requests()
        .into_iter()
        .map(|(s, origin)| (s.to_string(), (!origin.starts_with('[')).then_some(origin)))
        .collect();
    let mut requests: Vec<Vec<Dep>> = asked
        .iter()
        .map(|(s, at)| {
            parse_request(s, arch)
                .map(|d| vec![d])
                .map_err(|e| match at {
                    Some(at) => e.context(at),
                    None => e,
                })
        })
        .collect::<Result<_>>()?;
    // Indexes are read for the native and every requested foreign arch.
    let mut archs: Vec<String> = vec![arch.to_string()];
    for d in requests.iter().flatten() {
        if let Some(a) = &d.arch {
            if !archs.contains(a) {
                archs.push(a.clone());
            }
        }
    }
    archs[1..].sort();
    let srcs = sources::distinct(resolve_sources(section, fs, scratch)?);
    let keyrings = srcs
        .iter()
        .map(|s| keyring_for(s, section, fs, spec_dir))
        .collect::<Result<Vec<_>>>()?;
    // `[apt] pinned` leaves out every other version of a pinned name.
    let keep = |name: &str, version: &str| section.pinned.get(name).is_none_or(|v| v == version);
    let indexes: Vec<repo::SourceIndex> = srcs
        .par_iter()
        .zip(keyrings.par_iter())
        .map(|(s, k)| repo::load_source(s, k, &archs, &keep, http, cache))
        .collect::<Result<_>>()?;
    let kept = srcs
        .iter()
        .zip(&indexes)
        .map(|(s, i)| Some((source_label(s), i.release.clone()?)))
        .collect::<Option<Vec<_>>>()
        .map(KeptIndexes);
    let catalog = repo::Catalog::new(indexes);
    let installed = installed_packages(fs);
    if let Some(b) = section.bootstrap {
        let minbase = b == Bootstrap::Minbase;
        let mut names: Vec<String> = installed
            .iter()
            .filter(|p| p.essential || (minbase && p.priority == "required"))
            .map(|p| p.name.clone())
            .collect();
        names.extend(catalog.bootstrap_names(minbase));
        if minbase {
            names.push("apt".into());
        }
        names.sort();
        names.dedup();
        requests.extend(names.into_iter().map(|name| {
            vec![Dep {
                name,
                arch: None,
                constraint: None,
            }]
        }));
    }
    // `[apt] locales` are generated with the image's own localedef.
    if !section.locales.is_empty() && !requests.iter().flatten().any(|d| d.name == "locales") {
        requests.push(vec![Dep {
            name: "locales".into(),
            arch: None,
            constraint: None,
        }]);
    }
    if requests.is_empty() {
        return Err(AptError::NothingRequested.into());
    }
    // Only the packages the requests can reach are parsed (a suite has
    // ~60k, a solve meets a few thousand); the solver's choice is the same.
    let mut universe = installed;
    universe.extend(catalog.reachable(requests.iter().flatten().map(|d| d.name.as_str()), cache)?);
    let chosen = solve::solve_asked(&universe, arch, &requests, &asked, &|a| {
        catalog.names_at(a, arch)
    })?;
    drop(catalog);
    let packages: Vec<Package> = chosen.into_iter().map(|i| universe[i].clone()).collect();
    // Download in parallel, each verified against the signed index.
    kiln_store::http::on_network_pool(|| {
        packages
            .par_iter()
            .map(|p| {
                let d = p.sha256.clone().expect("indexed packages carry sha256");
                http.download_artifact(&p.url, Some(&d), cache)
                    .map(|_| ())
                    .map_err(|e| e.context(format!("apt: downloading {} {}", p.name, p.version)))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    let foreign_archs = foreign_archs(fs, arch, &packages);
    let image_sources = match section.bootstrap {
        Some(_) => image_sources(&srcs, section, spec_dir)?,
        None => Vec::new(),
    };
    Ok(AptPlan {
        arch: arch.to_string(),
        foreign_archs,
        bootstrap: section.bootstrap,
        image_sources,
        packages,
        kept,
    })
}

/// The plan a lock pins: each `.deb` fetched by URL and checked against
/// the locked sha256 (a cache hit needs no network), its control data read
/// from the package itself. No repository index is read.
pub fn plan_locked(
    section: &AptSection,
    spec_dir: &Path,
    pins: &[kiln_spec::lock::AptPin],
    fs: &Rootfs,
    platform: &Platform,
    http: &Http,
    cache: &Cache,
) -> Result<AptPlan> {
    let arch = debian_arch(platform)?;
    // The lock holds URLs without credentials; the configured sources (the
    // spec's, the base's, the host's) put theirs back. Best effort: a locked
    // build from the cache needs no source at all.
    let configured: Vec<String> = resolve_sources(section, fs, false)
        .map(|s| s.into_iter().map(|s| s.uri).collect())
        .unwrap_or_default();
    // Each package is unpacked as soon as it is in: the CPU work overlaps
    // the other transfers.
    let mut packages: Vec<Package> = kiln_store::http::on_network_pool(|| {
        pins.par_iter()
            .map(|pin| {
                let what = format!("apt: locked {} {}", pin.name, pin.version);
                let d: Digest = pin.sha256.clone();
                let url = kiln_core::url::with_credentials(&pin.url, &configured);
                http.download(&url, Some(&d), cache)
                    .map_err(|e| e.context(&what))?;
                let control = deb::control_file(cache, &d, &what)?;
                let bad = |detail: String| AptError::BadDeb {
                    package: what.clone(),
                    detail,
                };
                let control = String::from_utf8_lossy(&control).into_owned();
                let para = control::parse_paragraphs(&control)
                    .into_iter()
                    .next()
                    .ok_or_else(|| bad("empty control file".into()))?;
                let mut p = Package::from_paragraph(&para, "", &pin.suite, false)
                    .map_err(|e| bad(format!("control file: {e}")))?;
                if p.name != pin.name || p.version.to_string() != pin.version {
                    return Err(AptError::LockMismatch {
                        locked_name: pin.name.clone(),
                        locked_version: pin.version.clone(),
                        url: pin.url.clone(),
                        name: p.name,
                        version: p.version.to_string(),
                    }
                    .into());
                }
                p.url = pin.url.clone();
                p.sha256 = Some(d);
                p.size = pin.size;
                Ok(p)
            })
            .collect::<Result<_>>()
    })?;
    packages.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    // The image names the sources it was built from: the configured ones
    // (read, not fetched).
    let image_sources = match section.bootstrap {
        Some(_) => image_sources(&resolve_sources(section, fs, true)?, section, spec_dir)?,
        None => Vec::new(),
    };
    Ok(AptPlan {
        arch: arch.to_string(),
        foreign_archs: foreign_archs(fs, arch, &packages),
        bootstrap: section.bootstrap,
        image_sources,
        packages,
        kept: None,
    })
}

/// The base's foreign architectures plus those of the packages to install.
fn foreign_archs(fs: &Rootfs, native: &str, packages: &[Package]) -> Vec<String> {
    let mut out: std::collections::BTreeSet<String> =
        base_foreign_archs(fs, native).into_iter().collect();
    out.extend(
        packages
            .iter()
            .filter(|p| repo::effective_arch(&p.arch, native) != native)
            .map(|p| p.arch.clone()),
    );
    out.into_iter().collect()
}

/// What a lock records for an apt plan.
pub fn pins(plan: &AptPlan) -> Vec<kiln_spec::lock::AptPin> {
    plan.packages
        .iter()
        .filter_map(|p| {
            Some(kiln_spec::lock::AptPin {
                name: p.name.clone(),
                version: p.version.to_string(),
                arch: p.arch.clone(),
                suite: p.suite.clone(),
                url: kiln_core::url::strip_credentials(&p.url),
                sha256: p.sha256.clone()?,
                size: p.size,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(e: &kiln_core::Error) -> &AptError {
        e.downcast_ref::<AptError>().expect("an apt error")
    }

    #[test]
    fn requests_name_package_version_and_architecture() {
        let d = parse_request("libc6:i386=2.36-9", "amd64").unwrap();
        assert_eq!(d.to_string(), "libc6:i386 (= 2.36-9)");
        assert_eq!(parse_request("bash:amd64", "amd64").unwrap().arch, None);

        let e = parse_request("bash=", "amd64").unwrap_err();
        assert!(
            matches!(cause(&e), AptError::BadRequest { request, .. } if request == "bash="),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "[apt] packages: bad version in `bash=`");
        let e = parse_request("b@d", "amd64").unwrap_err();
        assert!(matches!(cause(&e), AptError::BadRequest { .. }), "{e:?}");

        let e = parse_request("hello:sparc64", "amd64").unwrap_err();
        assert!(
            matches!(cause(&e), AptError::NotDebianArch { arch, known, .. }
                if arch == "sparc64" && known.iter().any(|k| k == "ppc64el")),
            "{e:?}"
        );
        assert!(e
            .to_string()
            .starts_with("[apt] packages: `hello:sparc64`: `sparc64` is not a Debian architecture (one of amd64, arm64,"));
        assert_eq!(e.kind(), kiln_core::ErrorKind::Input);
    }

    #[test]
    fn platforms_without_a_debian_port_are_refused() {
        let p = Platform {
            os: "linux".into(),
            arch: "arm".into(),
            variant: Some("v6".into()),
        };
        let e = debian_arch(&p).unwrap_err();
        assert!(
            matches!(cause(&e), AptError::NoDebianArch { platform } if platform == "linux/arm/v6"),
            "{e:?}"
        );
        assert_eq!(debian_arch(&Platform::linux("arm64")).unwrap(), "arm64");
    }

    #[test]
    fn locks_record_package_urls_without_credentials() {
        let para = &control::parse_paragraphs(
            "Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\n",
        )[0];
        let mut p = Package::from_paragraph(para, "", "bookworm", false).unwrap();
        p.url = "https://user:s3cret@mirror.example.invalid/debian/pool/main/h/hello/hello_2.10-3_amd64.deb".into();
        p.sha256 = Some(Digest::of(b"deb"));
        let plan = AptPlan {
            arch: "amd64".into(),
            foreign_archs: vec![],
            bootstrap: None,
            image_sources: vec![],
            packages: vec![p],
            kept: None,
        };
        let pinned = pins(&plan);
        assert_eq!(
            pinned[0].url,
            "https://mirror.example.invalid/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
        );
        // A locked build takes the credentials again from the configured source.
        let sources = vec!["https://user:s3cret@mirror.example.invalid/debian".to_string()];
        assert_eq!(
            kiln_core::url::with_credentials(&pinned[0].url, &sources),
            plan.packages[0].url
        );
    }
}
