//! What Debian's tzdata and locales packages configure when installed,
//! done by kiln for the image (their maintainer scripts are not run): the
//! time zone (`/etc/localtime`, `/etc/timezone`) and the locales of
//! `[apt] locales` (`/etc/locale.gen`, compiled by `locale-gen`'s steps).
//! Each is one layer of its own, with kiln's fixed metadata.
//!
//! Locales are compiled with the image's own `localedef` in kiln's sandbox
//! (so only for the host's platform) into `/usr/lib/locale/locale-archive`:
//! compiled in a fixed order, the archive is byte-for-byte the same from
//! run to run. The result is remembered in the cache by the versions of
//! `libc-bin` and `locales` and the list, so a warm build does not compile.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_core::platform::Platform;
use kiln_core::progress::Progress;
use kiln_core::{Classify, ErrorKind};
use kiln_fs::layer::{Entry, EntryKind, LayerGroup, Tree};
use kiln_fs::sandbox::{Network, RunSpec, Sandbox, DEFAULT_PATH};
use kiln_oci::base::PlatformImage;
use kiln_oci::blobs::Blobs;
use kiln_oci::image::NewLayer;
use kiln_spec::lock::{Lock, LockedPlatform};
use kiln_spec::spec::Spec;
use kiln_store::{Cache, CacheBucket};

/// Where Debian's locales package lists what `localedef` can compile.
const SUPPORTED: &str = "usr/share/i18n/SUPPORTED";
/// The header the locales package's postinst writes.
const LOCALE_GEN_HEADER: &str =
    "# This file lists locales that you wish to have built. You can find a list
# of valid supported locales at /usr/share/i18n/SUPPORTED, and you can add
# user defined locales to /usr/local/share/i18n/SUPPORTED. If you change
# this file, you need to rerun locale-gen.
#

";
/// What the layer may hold: the files `locale-gen` and `update-locale`
/// write (and the directories on their way).
const OUTPUTS: &[&str] = &[
    "etc/locale.gen",
    "etc/default/locale",
    "usr/lib/locale/locale-archive",
];

#[derive(Debug, thiserror::Error)]
pub enum LocaleError {
    /// `[apt] locales` for a platform kiln cannot run programs of.
    #[error(
        "[apt] locales for {platform}: locales are compiled with the image's own localedef, \
         which runs only for the host's platform ({host}; kiln does not emulate); build \
         {platform} on such a machine, or drop [apt] locales (a locked build finds a layer \
         compiled before in the cache)"
    )]
    ForeignPlatform { platform: String, host: String },
    /// A name the image's locales package does not list.
    #[error("[apt] locales: `{locale}` is not in the image's /usr/share/i18n/SUPPORTED{hint}")]
    Unsupported { locale: String, hint: String },
    /// The image has no locales package data.
    #[error("[apt] locales: the image has no /usr/share/i18n/SUPPORTED (is the locales package installed?)")]
    NoLocalesPackage,
    /// localedef failed.
    #[error("[apt] locales: `{command}` failed ({status}); its last output:\n{output}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

impl Classify for LocaleError {
    fn kind(&self) -> ErrorKind {
        match self {
            // Checked against SUPPORTED first: unexpected.
            LocaleError::Failed { .. } => ErrorKind::Internal,
            _ => ErrorKind::Input,
        }
    }
}

impl From<LocaleError> for kiln_core::Error {
    fn from(e: LocaleError) -> Self {
        kiln_core::Error::typed(e)
    }
}

/// Before anything is fetched: locales for another platform than the
/// host's only when a locked build finds them compiled in the cache.
pub(crate) fn check_host(
    spec: &Spec,
    images: &[PlatformImage],
    lock: Option<&Lock>,
    cache: &Cache,
) -> Result<()> {
    if requested(spec).is_empty() {
        return Ok(());
    }
    for img in images.iter().filter(|i| !i.platform.is_host()) {
        let cached = lock
            .and_then(|l| l.platform(&img.platform.to_string()))
            .and_then(|pins| Memo::read(cache, &key(spec, img, pins)));
        if cached.is_none() {
            return Err(LocaleError::ForeignPlatform {
                platform: img.platform.to_string(),
                host: Platform::host().to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// The layers for one platform, after its package stages: the time zone
/// (when `[image] timezone` is set, or `Etc/UTC` on a bootstrap), then the
/// locales. `stage_layers` are the stages' layers over `img`'s; without
/// `reuse` (`--check-reproducible`'s second build) locales compile again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn groups(
    spec: &Spec,
    img: &PlatformImage,
    blobs: &Blobs,
    stage_layers: &[NewLayer],
    pins: &LockedPlatform,
    cache: &Cache,
    progress: &Progress,
    reuse: bool,
) -> Result<Vec<LayerGroup>> {
    let mut out = Vec::new();
    let bootstrap = spec.apt.as_ref().is_some_and(|a| a.bootstrap.is_some());
    let tz = match &spec.image.timezone {
        Some(t) => Some(t.0.as_str()),
        None if bootstrap => Some("Etc/UTC"),
        None => None,
    };
    if let Some(tz) = tz {
        out.push(LayerGroup::new(format!("kiln timezone {tz}"), timezone(tz)));
    }
    let wanted = requested(spec);
    if wanted.is_empty() {
        return Ok(out);
    }
    let key = key(spec, img, pins);
    let entries = match Memo::read(cache, &key).filter(|_| reuse) {
        Some(entries) => entries,
        None => {
            if !img.platform.is_host() {
                return Err(LocaleError::ForeignPlatform {
                    platform: img.platform.to_string(),
                    host: Platform::host().to_string(),
                }
                .into());
            }
            let spinner = progress.spinner(&format!("locales: compiling for {}", img.platform));
            let entries = compile(spec, img, blobs, stage_layers, cache)?;
            spinner.finish_and_clear();
            Memo::write(cache, &key, &entries);
            entries
        }
    };
    let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
    out.push(LayerGroup::new(
        format!("kiln apt locales {}", names.join(" ")),
        entries,
    ));
    Ok(out)
}

/// `/etc/localtime` → the zone, and `/etc/timezone`, as tzdata's postinst makes them.
fn timezone(tz: &str) -> Vec<Entry> {
    let mut tree = Tree::default();
    tree.add_parents("etc/localtime");
    tree.insert(Entry {
        path: "etc/localtime".into(),
        kind: EntryKind::Symlink {
            target: format!("/usr/share/zoneinfo/{tz}"),
        },
        mode: 0o777,
        uid: 0,
        gid: 0,
    });
    tree.insert(Entry::data(
        "etc/timezone",
        format!("{tz}\n").into_bytes(),
        0o644,
    ));
    tree.into_sorted()
}

/// `[apt] locales` as `(name, charset)`, sorted and without repeats (a
/// charset not given is looked up in the image's SUPPORTED: `None`).
fn requested(spec: &Spec) -> Vec<(String, Option<String>)> {
    let Some(apt) = &spec.apt else {
        return Vec::new();
    };
    let set: BTreeSet<(String, Option<String>)> = apt
        .locales
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next().map(String::from)))
        })
        .collect();
    set.into_iter().collect()
}

/// What the compiled locales depend on: localedef (libc-bin), the
/// sources and charmaps (locales), the list and LANG. A package the base
/// had is named by the base's manifest.
fn key(spec: &Spec, img: &PlatformImage, pins: &LockedPlatform) -> Digest {
    let mut text = format!("kiln locales v1 archive\nplatform {}\n", img.platform);
    for name in ["libc-bin", "locales"] {
        match pins.apt.iter().find(|p| p.name == name) {
            Some(p) => text.push_str(&format!("{name} {} {}\n", p.version, p.arch)),
            None => text.push_str(&format!(
                "{name} from base {}\n",
                img.manifest_digest
                    .as_ref()
                    .map_or("scratch".to_string(), |d| d.to_string())
            )),
        }
    }
    for (name, charset) in requested(spec) {
        text.push_str(&format!(
            "locale {name} {}\n",
            charset.as_deref().unwrap_or("-")
        ));
    }
    if let Some(lang) = spec.apt.as_ref().and_then(|a| a.lang.as_deref()) {
        text.push_str(&format!("lang {lang}\n"));
    }
    Digest::of(text.as_bytes())
}

/// The SUPPORTED lines (`NAME CHARSET`), as the postinst reads them:
/// lines starting with a letter, trailing blanks dropped, sorted bytewise,
/// no repeats.
fn supported_lines(text: &str) -> Vec<String> {
    let set: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
        .map(|l| l.trim_end().to_string())
        .collect();
    set.into_iter().collect()
}

/// Each request as its SUPPORTED line (`en_US.UTF-8` → `en_US.UTF-8 UTF-8`).
fn select(wanted: &[(String, Option<String>)], supported: &[String]) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for (name, charset) in wanted {
        let found = supported.iter().find(|line| {
            let mut w = line.split_whitespace();
            w.next() == Some(name.as_str())
                && charset
                    .as_deref()
                    .is_none_or(|c| w.next().is_some_and(|x| x.eq_ignore_ascii_case(c)))
        });
        match found {
            Some(line) => {
                out.insert(line.split_whitespace().collect::<Vec<_>>().join(" "));
            }
            None => {
                let near: Vec<&str> = supported
                    .iter()
                    .filter(|l| {
                        let lang = name.split(['.', '@', '_']).next().unwrap_or(name);
                        l.starts_with(lang)
                    })
                    .map(String::as_str)
                    .take(6)
                    .collect();
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!("; it lists {}", near.join(", "))
                };
                return Err(LocaleError::Unsupported {
                    locale: match charset {
                        Some(c) => format!("{name} {c}"),
                        None => name.clone(),
                    },
                    hint,
                }
                .into());
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// `/etc/locale.gen` as the locales package's postinst writes it: every
/// supported locale, commented out unless selected.
fn locale_gen(supported: &[String], selected: &[String]) -> String {
    let mut text = LOCALE_GEN_HEADER.to_string();
    for line in supported {
        let normal = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if selected.contains(&normal) {
            text.push_str(line);
        } else {
            text.push_str("# ");
            text.push_str(line);
        }
        text.push('\n');
    }
    text
}

/// Write the image's tree into the sandbox, write locale.gen, run
/// `localedef` for each selected locale as `locale-gen` does, and take
/// what changed.
fn compile(
    spec: &Spec,
    img: &PlatformImage,
    blobs: &Blobs,
    stage_layers: &[NewLayer],
    cache: &Cache,
) -> Result<Vec<Entry>> {
    let layers = crate::build::image_layers(img, blobs, stage_layers, cache)?;
    let tmp = cache.bucket(CacheBucket::Tmp);
    let mut sb = Sandbox::from_layers(layers, &tmp, "[apt] locales")?;
    let root = sb.root().to_path_buf();
    let supported =
        std::fs::read_to_string(root.join(SUPPORTED)).map_err(|_| LocaleError::NoLocalesPackage)?;
    let supported = supported_lines(&supported);
    let selected = select(&requested(spec), &supported)?;
    write(&root, "etc/locale.gen", &locale_gen(&supported, &selected))?;
    if let Some(lang) = spec.apt.as_ref().and_then(|a| a.lang.as_deref()) {
        write(
            &root,
            "etc/default/locale",
            &format!("#  File generated by update-locale\nLANG={lang}\n"),
        )?;
    }
    // locale-gen starts from an empty archive.
    let _ = std::fs::remove_file(root.join("usr/lib/locale/locale-archive"));
    for line in &selected {
        let (name, charset) = line.split_once(' ').unwrap_or((line, "UTF-8"));
        // locale-gen's input: the locale's own source if there is one,
        // else its name without charset (modifier kept).
        let base = name.split('.').next().unwrap_or(name);
        let base = base.split('@').next().unwrap_or(base);
        let at = name
            .split_once('@')
            .map_or(String::new(), |(_, m)| format!("@{m}"));
        let input = if root.join("usr/share/i18n/locales").join(name).exists() {
            name.to_string()
        } else {
            format!("{base}{at}")
        };
        let argv: Vec<String> = [
            "localedef",
            "-i",
            &input,
            "-c",
            "-f",
            charset,
            "-A",
            "/usr/share/locale/locale.alias",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let output = sb.run(&RunSpec {
            argv: argv.clone(),
            env: vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("LC_ALL".into(), "C".into()),
            ],
            user: None,
            workdir: Some("/".into()),
            network: Network::None,
        })?;
        // 1: warnings, the locale written all the same (`-c`).
        if !matches!(output.status.code(), Some(0) | Some(1)) {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            let lines: Vec<&str> = text.lines().collect();
            return Err(LocaleError::Failed {
                command: argv.join(" "),
                status: output.status,
                output: lines[lines.len().saturating_sub(20)..].join("\n"),
            }
            .into());
        }
    }
    let keep = |p: &str| {
        OUTPUTS
            .iter()
            .any(|o| *o == p || o.starts_with(&format!("{p}/")))
    };
    Ok(sb
        .changes()?
        .into_iter()
        .filter(|e| keep(&e.path))
        .collect())
}

fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    let path = root.join(rel);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).io_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(&path, text).io_context(|| format!("writing {}", path.display()))
}

/// The compiled entries in the cache: their metadata here, their bytes as blobs.
#[derive(Serialize, Deserialize)]
struct Memo {
    entries: Vec<MemoEntry>,
}

#[derive(Serialize, Deserialize)]
struct MemoEntry {
    path: String,
    mode: u32,
    uid: u64,
    gid: u64,
    /// The file's blob (`sha256:…`); none for a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blob: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    symlink: Option<String>,
}

impl Memo {
    fn path(cache: &Cache, key: &Digest) -> std::path::PathBuf {
        cache.entry(CacheBucket::Locales, format!("{}.json", key.hex()))
    }

    /// The entries remembered for `key`, when every blob is still there.
    fn read(cache: &Cache, key: &Digest) -> Option<Vec<Entry>> {
        let m: Memo = serde_json::from_slice(&std::fs::read(Self::path(cache, key)).ok()?).ok()?;
        m.entries
            .into_iter()
            .map(|e| {
                let kind = match (e.blob, e.symlink) {
                    (Some(d), _) => EntryKind::Data(Arc::new(cache.read(&d).ok()?)),
                    (None, Some(target)) => EntryKind::Symlink { target },
                    (None, None) => EntryKind::Dir,
                };
                Some(Entry {
                    path: e.path,
                    kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                })
            })
            .collect()
    }

    /// Remember `entries` (best effort: a failure only costs a compile).
    fn write(cache: &Cache, key: &Digest, entries: &[Entry]) {
        let mut memo = Memo {
            entries: Vec::new(),
        };
        for e in entries {
            let (blob, symlink) = match &e.kind {
                EntryKind::Data(b) => match cache.put(b) {
                    Ok(d) => (Some(d), None),
                    Err(_) => return,
                },
                EntryKind::File { .. } | EntryKind::Spooled(_) => {
                    match e.kind.file_bytes().map(|b| b.map(|b| cache.put(&b))) {
                        Some(Ok(Ok(d))) => (Some(d), None),
                        _ => return,
                    }
                }
                EntryKind::Symlink { target } => (None, Some(target.clone())),
                EntryKind::Dir => (None, None),
            };
            memo.entries.push(MemoEntry {
                path: e.path.clone(),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                blob,
                symlink,
            });
        }
        if let Ok(json) = serde_json::to_vec(&memo) {
            kiln_store::cache::write_atomic(&Self::path(cache, key), &json);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locale_gen_uncomments_what_was_asked() {
        let supported = supported_lines(
            "de_DE ISO-8859-1\nen_US.UTF-8 UTF-8  \nde_DE.UTF-8 UTF-8\n# comment\nen_US ISO-8859-1\nen_US.UTF-8 UTF-8\n",
        );
        assert_eq!(
            supported,
            [
                "de_DE ISO-8859-1",
                "de_DE.UTF-8 UTF-8",
                "en_US ISO-8859-1",
                "en_US.UTF-8 UTF-8"
            ]
        );
        let wanted = vec![
            ("en_US.UTF-8".to_string(), None),
            ("de_DE.UTF-8".to_string(), Some("UTF-8".to_string())),
        ];
        let selected = select(&wanted, &supported).unwrap();
        assert_eq!(selected, ["de_DE.UTF-8 UTF-8", "en_US.UTF-8 UTF-8"]);
        let text = locale_gen(&supported, &selected);
        assert!(text.starts_with("# This file lists locales"), "{text}");
        assert!(text.ends_with(
            "\n# de_DE ISO-8859-1\nde_DE.UTF-8 UTF-8\n# en_US ISO-8859-1\nen_US.UTF-8 UTF-8\n"
        ));

        let e = select(&[("en_XX.UTF-8".into(), None)], &supported).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .contains("`en_XX.UTF-8` is not in the image's"),
            "{e}"
        );
        assert!(e.to_string().contains("en_US.UTF-8 UTF-8"), "{e}");
    }

    #[test]
    fn timezones_are_a_link_and_a_name() {
        let e = timezone("Europe/Berlin");
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/localtime", "etc/timezone"]);
        assert!(
            matches!(&e[1].kind, EntryKind::Symlink { target } if target == "/usr/share/zoneinfo/Europe/Berlin")
        );
        assert!(matches!(&e[2].kind, EntryKind::Data(b) if b.as_slice() == b"Europe/Berlin\n"));
    }
}
