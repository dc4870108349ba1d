//! The package sections of kiln.toml (`[apt]`, `[pip]`, `[conda]`): plain
//! data, parsed with the rest of the spec. The resolvers read them; they do
//! not own them, so the spec never depends on a resolver.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `[apt]` table of kiln.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSection {
    #[serde(default)]
    pub packages: Vec<String>,
    /// A file with one package per line (relative to the spec), joining `packages`.
    #[serde(rename = "packages-file")]
    pub packages_file: Option<String>,
    /// Its lines, once read ([`crate::Spec::read_package_files`]).
    #[serde(skip)]
    pub listed: Vec<Listed>,
    /// One-line (`deb [signed-by=…] URI SUITE COMP…`) or table form.
    #[serde(default)]
    pub sources: Vec<SourceEntry>,
    /// Bootstrap a Debian system on a `scratch` base: `minbase` or `essential`.
    pub bootstrap: Option<Bootstrap>,
    /// Suite for a bootstrap whose sources come from the host (default `bookworm`).
    pub suite: Option<String>,
    /// Keyring for sources that name none (default: Debian's archive keyring).
    pub keyring: Option<String>,
    /// Locales to generate, as `/etc/locale.gen` lines (`en_US.UTF-8` or
    /// `de_DE.UTF-8 UTF-8`); `locales` joins the packages.
    #[serde(default)]
    pub locales: Vec<String>,
    /// `LANG` of the image (`/etc/default/locale` and the config's env):
    /// one of `locales`, or `C.UTF-8`.
    pub lang: Option<String>,
    /// `kiln lock --upgrade PKG`: versions to keep from the previous lock
    /// (name → version) for packages not being upgraded.
    #[serde(skip)]
    pub pinned: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootstrap {
    Minbase,
    Essential,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SourceEntry {
    Line(String),
    Table {
        uri: String,
        suites: Vec<String>,
        #[serde(default)]
        components: Vec<String>,
        #[serde(rename = "signed-by")]
        signed_by: Option<String>,
    },
}

fn default_true() -> bool {
    true
}

fn default_target() -> String {
    "system".into()
}

/// The `[pip]` table of kiln.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipSection {
    /// PEP 508 requirements: `"requests[socks]>=2.31"`, `"tomli; python_version < '3.11'"`.
    #[serde(default)]
    pub packages: Vec<String>,
    /// A file with one requirement per line (relative to the spec), joining `packages`.
    pub packages_file: Option<String>,
    /// Its lines, once read ([`crate::Spec::read_package_files`]).
    #[serde(skip)]
    pub listed: Vec<Listed>,
    /// pip-format requirements files, relative to the spec's directory.
    #[serde(default)]
    pub requirements: Vec<String>,
    /// Primary simple-API index URL (overrides PIP_INDEX_URL and pip.conf).
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub extra_index: Vec<String>,
    /// Wheelhouse directories (relative to the spec) or URLs of pages listing wheels.
    #[serde(default)]
    pub find_links: Vec<String>,
    /// `"system"` or an absolute venv path such as `"/opt/venv"`.
    #[serde(default = "default_target")]
    pub target: String,
    /// Allow pre-releases for every package.
    #[serde(default)]
    pub prerelease: bool,
    /// Ignore pip's configuration files and `PIP_*` variables (like `pip --isolated`).
    #[serde(default)]
    pub isolated: bool,
    /// Use only `find-links` (like `pip --no-index`).
    #[serde(default)]
    pub no_index: bool,
    /// Compile what is installed to bytecode (PEP 552 unchecked-hash
    /// `.pyc`s) with the image's Python, as pip does: without them every
    /// import by a non-root user compiles again.
    #[serde(default = "default_true")]
    pub compile: bool,
    /// Also compile the standard library and the distribution's
    /// `dist-packages` files that have no `.pyc` (Debian ships none).
    #[serde(default)]
    pub compile_stdlib: bool,
    /// Requirement lines from elsewhere (an environment.yml `pip:` list):
    /// `(origin, directory relative paths resolve against, lines)`.
    #[serde(skip)]
    pub inline: Vec<(String, std::path::PathBuf, String)>,
    /// `kiln lock --upgrade PKG`: versions to keep from the previous lock
    /// (name → version), applied as constraints.
    #[serde(skip)]
    pub pinned: BTreeMap<String, String>,
}

impl Default for PipSection {
    fn default() -> Self {
        PipSection {
            packages: Vec::new(),
            packages_file: None,
            listed: Vec::new(),
            requirements: Vec::new(),
            index: None,
            extra_index: Vec::new(),
            find_links: Vec::new(),
            target: default_target(),
            prerelease: false,
            isolated: false,
            no_index: false,
            compile: true,
            compile_stdlib: false,
            inline: Vec::new(),
            pinned: BTreeMap::new(),
        }
    }
}

fn default_prefix() -> String {
    "/opt/conda".into()
}

/// The `[conda]` table of kiln.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CondaSection {
    /// Absolute path of the environment in the image.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Names (resolved against the channel alias), `https://`/`file://` URLs
    /// or local directories (relative to the spec), highest priority first.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Where channel names point (default: `CONDA_CHANNEL_ALIAS`, else rattler's).
    pub channel_alias: Option<String>,
    /// What the channel name `defaults` stands for (conda's
    /// `default_channels`): names, URLs or directories. Else
    /// `CONDA_DEFAULT_CHANNELS` (comma-separated), else `pkgs/main` and
    /// `pkgs/r` under the channel alias.
    #[serde(default)]
    pub default_channels: Vec<String>,
    /// MatchSpecs: `numpy>=1.26,<2`, `python=3.12`, `conda-forge::numpy==1.26*`.
    #[serde(default)]
    pub packages: Vec<String>,
    /// A file with one MatchSpec per line (relative to the spec), joining `packages`.
    pub packages_file: Option<String>,
    /// Its lines, once read ([`crate::Spec::read_package_files`]).
    #[serde(skip)]
    pub listed: Vec<Listed>,
    /// An environment.yml (relative to the spec): its channels, dependencies
    /// and `pip:` list are added.
    pub environment: Option<String>,
    /// Virtual packages of the target: `glibc`, `linux`, `cuda`, `archspec`.
    #[serde(default)]
    pub virtual_packages: BTreeMap<String, String>,
    /// `strict` (default: a package comes from the first channel that has
    /// it) or `disabled`.
    #[serde(default)]
    pub channel_priority: Priority,
    /// `kiln lock --upgrade PKG`: `(name, version, build)` of the previous
    /// lock's packages to prefer (not force) for packages not being upgraded.
    #[serde(skip)]
    pub prefer: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    #[default]
    Strict,
    Disabled,
}

/// One package line of a `packages-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The package, without comment or surrounding blanks.
    pub text: String,
    /// `FILE:LINE` as the spec names the file, for messages.
    pub origin: String,
}

/// A section's requests in order, each with where it was written:
/// `packages` (origin `[apt] packages`), then the packages-file's lines.
pub fn requests<'a>(
    section: &str,
    packages: &'a [String],
    listed: &'a [Listed],
) -> Vec<(&'a str, String)> {
    let mut out: Vec<(&str, String)> = packages
        .iter()
        .map(|p| (p.as_str(), format!("[{section}] packages")))
        .collect();
    out.extend(listed.iter().map(|l| (l.text.as_str(), l.origin.clone())));
    out
}

/// The package lines of a packages-file's text: `#` starts a comment at
/// the start of a line or after a blank (pip's rule, so `url#sha256=`
/// fragments survive); blank lines are skipped.
pub fn package_lines(text: &str, file: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut end = line.len();
        for (i, c) in line.char_indices() {
            if c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace)) {
                end = i;
                break;
            }
        }
        let t = line[..end].trim();
        if !t.is_empty() {
            out.push(Listed {
                text: t.to_string(),
                origin: format!("{file}:{}", n + 1),
            });
        }
    }
    out
}

impl AptSection {
    /// `packages` then the packages-file's lines, each with its origin.
    pub fn requests(&self) -> Vec<(&str, String)> {
        requests("apt", &self.packages, &self.listed)
    }
}

impl PipSection {
    /// `packages` then the packages-file's lines, each with its origin.
    pub fn requests(&self) -> Vec<(&str, String)> {
        requests("pip", &self.packages, &self.listed)
    }
}

impl CondaSection {
    /// `packages` then the packages-file's lines, each with its origin.
    pub fn requests(&self) -> Vec<(&str, String)> {
        requests("conda", &self.packages, &self.listed)
    }
}

/// The `[release]` table of kiln.toml: a workspace member (see
/// kiln-workspace) released as `{registry}/rel/{image}:{version}`. The
/// builder ignores it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    /// Image name under the workspace registry's `rel/`.
    pub image: String,
    /// PEP 440 version (compared as a version, not as a string).
    pub version: String,
    /// The member's target name (default: its directory name).
    pub target: Option<String>,
    /// A compat directory's name, applied on top for the release.
    pub compat: Option<String>,
}
