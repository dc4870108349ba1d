//! What the pip stage can fail with, by cause. Public functions return
//! [`kiln_core::Result`]; the cause travels inside it and is found again with
//! `err.downcast_ref::<PipError>()`.
//!
//! URLs in these errors are stored already redacted
//! ([`kiln_store::http::redact`]): no message shows credentials.
//!
//! Requirement text (a requirements-file line or a piece of one) reaches a
//! message only through [`quote`]: lines of the files the spec names are
//! quoted redacted and cut to [`QUOTED_CHARS`] characters; lines of files
//! those include (`-r`, `-c`) are named (`file:line`), never quoted.

use std::path::PathBuf;

use kiln_core::digest::Digest;
use kiln_core::error::{Classify, ErrorKind};

/// At most this many file names are listed when no wheel fits.
const FILES_SHOWN: usize = 12;

/// At most this many characters of requirement text appear in a message.
pub(crate) const QUOTED_CHARS: usize = 200;

/// Whose requirement text it is, which decides whether a message may quote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The spec's own: `[pip] packages`, a requirements file it names, an
    /// environment file's `pip:` list, kiln.lock.
    Spec,
    /// A file a requirements file includes (`-r`, `-c`), which may be any
    /// file at all: its lines are named (`file:line`), never quoted.
    Included,
}

/// Requirement text as a message may show it: `None` when it is not the
/// spec's own ([`Owner::Included`]), else [`cut`].
pub(crate) fn quote(text: &str, owner: Owner) -> Option<String> {
    (owner == Owner::Spec).then(|| cut(text))
}

/// Text from a file as every message quotes it: credentials redacted,
/// control characters escaped, and at most [`QUOTED_CHARS`] characters
/// (cut on a character boundary, `…` appended when cut).
pub(crate) fn cut(text: &str) -> String {
    let redacted = kiln_core::url::redact(text);
    let mut out = String::new();
    let mut chars = 0;
    for c in redacted.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        let n = piece.chars().count();
        if chars + n > QUOTED_CHARS {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        chars += n;
    }
    out
}

/// What a message says in place of text it does not quote.
const NOT_QUOTED: &str =
    "(not quoted: the file is included by another requirements file, not named in the spec)";

/// `` `text` `` for quoted text, [`NOT_QUOTED`] otherwise.
fn quoted(text: &Option<String>) -> String {
    match text {
        Some(t) => format!("`{t}`"),
        None => NOT_QUOTED.to_string(),
    }
}

/// Why the pip stage failed.
#[derive(Debug, thiserror::Error)]
pub enum PipError {
    // --- the image's interpreter and the target ---
    /// No `python3.N` with its standard library under any of `prefixes`.
    #[error(
        "[pip] needs a Python interpreter in the image; none found at {} \
         (use a base image with Python, e.g. a Debian base with python3 installed)",
        prefixes.iter().map(|p| format!("{p}/bin/python3.N with {p}/lib/python3.N/os.py")).collect::<Vec<_>>().join(" or ")
    )]
    NoInterpreter {
        /// Interpreter prefixes searched, in order (`/usr/local`, `/usr`, or the conda prefix).
        prefixes: Vec<String>,
    },
    /// `[pip] target` is neither `system`, a conda prefix nor an absolute venv path.
    #[error(
        "[pip] target = \"{target}\": expected \"system\" or an absolute venv path such as \"/opt/venv\""
    )]
    InvalidTarget { target: String },

    // --- requirements and where packages come from ---
    /// A requirement (spec entry or requirements-file line) does not parse.
    #[error(
        "{origin}: {}{}{}",
        match (*wheel_path, requirement.is_some()) {
            (true, true) => "",
            (true, false) => "invalid wheel path or URL ",
            (false, _) => "invalid requirement ",
        },
        quoted(requirement),
        detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    InvalidRequirement {
        /// `[pip] packages`, `kiln.lock`, or `file:line`.
        origin: String,
        /// The requirement, [`quote`]d (`None`: not the spec's own).
        requirement: Option<String>,
        /// The parser's complaint, [`quote`]d (it may repeat the text).
        detail: Option<String>,
        /// Written as a bare wheel path or URL.
        wheel_path: bool,
    },
    /// `--hash=` with another algorithm than sha256.
    #[error(
        "{origin}: {}only sha256 hashes are supported",
        token.as_ref().map(|t| format!("`{t}`: ")).unwrap_or_default()
    )]
    UnsupportedHash {
        origin: String,
        /// The `--hash=` option, [`quote`]d.
        token: Option<String>,
    },
    /// A requirements file cannot be read.
    #[error("[pip] requirements file {}: {detail}", path.display())]
    RequirementsFile { path: PathBuf, detail: String },
    /// A conda environment file given where pip requirements files go.
    #[error(
        "[pip] requirements file {} is a conda environment file, not a pip requirements file: \
         give it as `[conda] environment = \"{name}\"` (an environment.yml with only a `pip:` \
         list installs into the image's Python) or build it with `kiln build --environment FILE`",
        path.display()
    )]
    CondaEnvironment { path: PathBuf, name: String },
    /// A requirements file that is not text: named with the line of the
    /// first bad byte; the bytes are not shown.
    #[error(
        "[pip] requirements file {}:{line}: {problem}; requirements files are UTF-8 text",
        path.display()
    )]
    RequirementsNotText {
        path: PathBuf,
        line: usize,
        /// `not valid UTF-8`, `a NUL byte (a binary file?)`.
        problem: &'static str,
    },
    /// `-r`/`-c` nest deeper than any sane set of files (a cycle).
    #[error(
        "{}: requirements files include each other too deeply (a cycle?)",
        path.display()
    )]
    RequirementsTooDeep { path: PathBuf },
    /// `-e`: an editable install points into a source tree.
    #[error(
        "{origin}: {}an image has no editable installs (they point into a source tree, which is not in the image); \
         require the project without `-e` (`name @ {}` builds a wheel of it, which is installed)",
        target.as_ref().map(|t| format!("`-e {t}`: ")).unwrap_or_default(),
        target.as_deref().unwrap_or("PATH")
    )]
    Editable {
        origin: String,
        /// What follows `-e`, [`quote`]d.
        target: Option<String>,
    },
    /// pip's hash-checking mode (a `--hash` on any requirement, or
    /// `--require-hashes`): every requirement needs a hash and an `==` pin
    /// (URL requirements: a hash); each line that has not is named.
    #[error(
        "[pip] hash-checking mode is on ({why}), and like pip kiln then needs every requirement pinned with `==` and given a `--hash`:{}{}\n  \
         add the hashes (`pip-compile --generate-hashes`, or `pip hash` of each file) or remove every `--hash` and `--require-hashes`",
        unhashed.iter().map(|o| format!("\n  - {o}: no `--hash`")).collect::<String>(),
        unpinned.iter().map(|o| format!("\n  - {o}: not pinned with `==`")).collect::<String>()
    )]
    HashMode {
        /// `req.txt:3 has a --hash`, `--require-hashes at req.txt:1`.
        why: String,
        /// Where each requirement without a hash was written.
        unhashed: Vec<String>,
        /// Where each hashed requirement without an `==` pin was written.
        unpinned: Vec<String>,
    },
    /// Hash-checking mode, and packages the requirements pull in have no
    /// hash: each as a line to add (with the hash the source gives), as pip
    /// prints them.
    #[error(
        "[pip] hash-checking mode is on, and like pip kiln then needs a hash for every package it downloads; \
         these dependencies have none. After checking them, add lines like these to the requirements file:{}",
        lines.iter().map(|l| format!("\n    {l}")).collect::<String>()
    )]
    UnhashedDependencies {
        /// `name==version --hash=sha256:…`.
        lines: Vec<String>,
    },
    /// A requirements-file option kiln does not implement.
    #[error(
        "{origin}: unsupported option {}in a requirements file; {}",
        option.as_ref().map(|o| format!("`{o}` ")).unwrap_or_default(),
        if *no_binary {
            "only `kiln build` builds from source: remove it (wheels are used)"
        } else {
            "remove it (kiln reads -r, -c, -i/--index-url, --extra-index-url, -f/--find-links, --no-index, --pre, --require-hashes; \
             --trusted-host, --prefer-binary, --only-binary and --use-feature are accepted and ignored)"
        }
    )]
    UnsupportedOption {
        origin: String,
        /// [`quote`]d.
        option: Option<String>,
        /// `--no-binary`, which asks for source builds.
        no_binary: bool,
    },
    /// A path or `file:` URL that does not exist here: typically a freeze
    /// from a conda environment (`name @ file:///croot/…`).
    #[error(
        "{origin}: {} does not exist here (a path from the machine the list was made on, as `pip freeze` writes for packages conda installed); \
         replace the line by `{name}=={}`{}",
        path.as_ref().map(|p| format!("`{p}`")).unwrap_or_else(|| format!("the path {NOT_QUOTED}")),
        version.as_deref().unwrap_or("VERSION"),
        if version.is_none() { " (the version installed there: `pip show` it)" } else { "" }
    )]
    MissingLocalPath {
        origin: String,
        /// Normalised project name.
        name: String,
        /// [`quote`]d.
        path: Option<String>,
        /// The version the file name gives, when it gives one.
        version: Option<String>,
    },
    /// A requirement only a source build can satisfy: a VCS URL, a local
    /// project directory, an sdist.
    #[error(
        "{origin}: {} {what}: {hint}",
        text.as_ref().map(|t| format!("`{t}`")).unwrap_or_else(|| format!("the requirement {NOT_QUOTED}"))
    )]
    NeedsSourceBuild {
        origin: String,
        /// The requirement, [`quote`]d.
        text: Option<String>,
        /// `is a VCS requirement`, `is a local project directory`...
        what: &'static str,
        /// What to do instead, with the user's names and pins.
        hint: String,
    },
    /// A URL or path requirement that is not a wheel (an sdist, a directory...).
    #[error(
        "{origin}: {} is not a wheel, nor an sdist (`.tar.gz`, `.zip`) or a project directory that `kiln build` builds \
         (for the host's architecture): build a wheel with `pip wheel --no-deps` into a `find-links` directory",
        url.as_ref().map(|u| format!("`{u}`")).unwrap_or_else(|| format!("the requirement's URL {NOT_QUOTED}"))
    )]
    NotAWheel {
        origin: String,
        /// [`quote`]d (so redacted).
        url: Option<String>,
    },
    /// An sdist or source tree for an image of another architecture: the
    /// backend runs in the image, so kiln builds only for the host's.
    #[error(
        "[pip] {requirement} needs a wheel built from source, and kiln builds from source only for images of the host's \
         architecture ({host}; this image is {platform}): build the wheel on a {platform} machine \
         (`pip wheel --no-deps … -w wheelhouse/`) and add the directory to `find-links`"
    )]
    BuildForeign {
        requirement: String,
        platform: String,
        host: String,
    },
    /// The PEP 517 backend failed: its status and last lines of output.
    #[error(
        "[pip] building a wheel of {project} failed: the backend {status}; its last output:\n{output}\n  \
         fix the build (it runs with the image's Python and no network) or provide a wheel in a `find-links` directory"
    )]
    BuildFailed {
        project: String,
        /// `exited with 1`, `was killed by signal 9`.
        status: String,
        output: String,
    },
    /// The backend succeeded but left no wheel (or several).
    #[error("[pip] building a wheel of {project}: the backend left {count} wheels, not one")]
    BuildNoWheel { project: String, count: usize },
    /// An sdist that cannot be unpacked or whose pyproject.toml is invalid.
    #[error("[pip] {sdist}: not a usable source distribution: {detail}")]
    BadSdist { sdist: String, detail: String },
    /// A `--locked` rebuild made another wheel than the lock records.
    #[error(
        "[pip] kiln.lock records the wheel built from {sdist} as sha256:{locked}, but building it again made sha256:{built} \
         (the build is not reproducible); `kiln lock --upgrade {name}` records the new one"
    )]
    BuiltWheelDiffers {
        name: String,
        sdist: String,
        locked: String,
        built: String,
    },
    /// This command has nothing to run a build backend with.
    #[error(
        "[pip] {requirement} needs a wheel built from source, which {why}; `kiln build` and `kiln lock` build it"
    )]
    NoBuilder {
        requirement: String,
        /// `a dry run does not do`.
        why: &'static str,
    },
    /// No index and no `find-links`: `no-index` was set, or nothing names
    /// an index and this kiln has no default one (built without the
    /// `pypi-default` feature).
    #[error(
        "[pip] no package source: {}",
        if *no_index {
            "`no-index` is set but there is no `find-links` directory"
        } else {
            "no index is configured and this kiln was built without a default one (feature `pypi-default`); \
             name one with `[pip] index`, `--index-url`, PIP_INDEX_URL or pip.conf, or give `find-links`"
        }
    )]
    NoPackageSource {
        /// `no-index` was asked for (else no index was configured).
        no_index: bool,
    },
    /// A find-links directory cannot be listed.
    #[error("[pip] find-links {}: {detail}", path.display())]
    FindLinks { path: PathBuf, detail: String },

    // --- indexes ---
    /// An index answered with a PEP 691 page that does not parse.
    #[error("{url}: malformed simple-API JSON: {detail}")]
    MalformedIndexPage {
        /// Redacted.
        url: String,
        detail: String,
    },
    /// No index or find-links location knows the project.
    #[error(
        "[pip] package `{name}` was not found on {}; check the name, or set `index`/`find-links`",
        if sources.is_empty() { "any configured source".to_string() } else { sources.join(", ") }
    )]
    PackageNotFound {
        name: String,
        /// Indexes then find-links locations asked, redacted.
        sources: Vec<String>,
    },

    /// Requested packages no source has, or not at the requested
    /// version: every one, with close names or the versions there are.
    #[error(
        "[pip] {} not found on {}:{}",
        if missing.len() == 1 { "1 requested package".to_string() } else { format!("{} requested packages", missing.len()) },
        if sources.is_empty() { "any configured source".to_string() } else { sources.join(", ") },
        kiln_core::suggest::lines(missing)
    )]
    UnknownPackages {
        missing: Vec<kiln_core::suggest::Missing>,
        /// Indexes then find-links locations asked, redacted.
        sources: Vec<String>,
    },

    /// Requirements that cannot be met, found before resolving: every one
    /// at once (missing names and versions, versions whose wheels all need
    /// another Python, versions without a wheel for the image, pins that
    /// contradict each other), with what to do.
    #[error(
        "[pip] {} cannot be installed on {target}:{}{}",
        if problems.len() == 1 { "1 requirement".to_string() } else { format!("{} requirements", problems.len()) },
        problems.iter().map(|p| format!("\n  - {p}")).collect::<String>(),
        problem_hints(problems, tags, sources)
    )]
    CannotInstall {
        problems: Vec<RequirementProblem>,
        /// `CPython 3.11.2 on x86_64 (glibc 2.36)`.
        target: String,
        /// Summary of the compatible tags, most preferred first.
        tags: String,
        /// Indexes then find-links locations asked, redacted.
        sources: Vec<String>,
    },
    /// A `Requires-Dist` of a distribution's metadata does not parse.
    #[error("[pip] {dist}: invalid Requires-Dist `{requirement}`: {detail}")]
    InvalidRequiresDist {
        /// `name version`.
        dist: String,
        /// As the metadata has it, [`cut`].
        requirement: String,
        /// The parser's complaint, [`cut`].
        detail: String,
    },
    /// An extra name that is not a valid PEP 685 name.
    #[error("[pip] {name}[{extra}]: {detail}")]
    InvalidExtra {
        name: String,
        extra: String,
        detail: String,
    },
    /// PubGrub proved that no set of versions satisfies the requirements.
    #[error("[pip] your requirements cannot be satisfied on {target}:\n{explanation}")]
    Unsatisfiable {
        /// `CPython 3.11.2 on x86_64 (glibc 2.36)`.
        target: String,
        /// PubGrub's derivation in words, one line per step.
        explanation: String,
    },
    /// The picked file's sha256 is not one the `--hash` options allow.
    #[error(
        "[pip] hash mismatch for `{name}`: {filename} has sha256:{actual}, the requirements allow only {}; \
         update the --hash values or pin the version they were made for",
        allowed.iter().map(|a| format!("sha256:{a}")).collect::<Vec<_>>().join(", ")
    )]
    HashMismatch {
        name: String,
        filename: String,
        /// Hex sha256 the index gives for the file.
        actual: String,
        /// Hex sha256 values the requirements allow.
        allowed: Vec<String>,
    },

    // --- distributions ---
    /// Core metadata without `Name` or `Version`.
    #[error("metadata has no Name or Version field")]
    IncompleteMetadata,
    /// A file name that does not follow the wheel naming convention.
    #[error("`{filename}` is not a valid wheel file name")]
    InvalidWheelName { filename: String },
    /// A wheel kiln refuses to read or install.
    #[error("wheel {wheel}{problem}")]
    BadWheel {
        /// The wheel's file name.
        wheel: String,
        problem: WheelProblem,
    },
    /// An entry point that is not `module:function`.
    #[error("entry point `{spec}` is not `module:function`")]
    InvalidEntryPoint { spec: String },

    // --- kiln itself ---
    /// uv refused the marker environment built for the target.
    #[error("building the marker environment: {detail}")]
    MarkerEnvironment { detail: String },
    /// The resolver picked a version it has no file for.
    #[error("{}", if *resolved { format!("resolved {name} {version} without a file") } else { format!("no file for {name} {version}") })]
    NoFile {
        name: String,
        version: String,
        /// Found after resolution (else while reading metadata).
        resolved: bool,
    },
    /// `layer_groups` ran on a wheel `plan` did not download.
    #[error("wheel {filename} ({sha256}) is not in the cache; run plan first")]
    NotInCache { filename: String, sha256: Digest },
}

/// One requirement [`PipError::CannotInstall`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequirementProblem {
    /// No source has the name, or not the version.
    Missing(kiln_core::suggest::Missing),
    /// A local version (`torch==2.3.1+cpu`) the sources do not have, where
    /// they have the public one.
    LocalVersion {
        /// As written ([`quote`]d; `None`: not the spec's own).
        request: Option<String>,
        /// Where it was written, when not in kiln.toml itself.
        at: Option<String>,
        name: String,
        /// `2.3.1`, which the sources have.
        public: String,
        /// `cpu`.
        local: String,
    },
    /// Every version that matches has wheels for the image only with a
    /// `Requires-Python` the image's Python does not meet.
    RequiresPython {
        at: Option<String>,
        name: String,
        /// The newest matching version.
        version: String,
        /// Its `Requires-Python`, `>=3.12`.
        requires_python: String,
        /// The image's, `3.11.2`.
        python: String,
        /// The newest version with a wheel for the image and its Python.
        newest: Option<String>,
    },
    /// Versions match, but none has a wheel for the image.
    NoWheel {
        request: Option<String>,
        at: Option<String>,
        name: String,
        /// The newest matching version.
        version: String,
        /// That version's files.
        files: Vec<String>,
    },
    /// Two requirements on one project that no version meets together.
    Conflict {
        name: String,
        /// `(specifier, where)` of each, as `==6.0.1`.
        requests: Vec<(String, Option<String>)>,
    },
}

impl std::fmt::Display for RequirementProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |at: &Option<String>| at.as_ref().map(|a| format!("{a}: ")).unwrap_or_default();
        match self {
            // `file:line: ` first, as the other problems here.
            RequirementProblem::Missing(m) => {
                let bare = kiln_core::suggest::Missing {
                    at: None,
                    ..m.clone()
                };
                write!(f, "{}{bare}", at(&m.at))
            }
            RequirementProblem::LocalVersion {
                request,
                at: w,
                name,
                public,
                local,
            } => write!(
                f,
                "{}{}: no such version: the sources have {name} {public} but not its local version `+{local}` \
                 (local versions come from the project's own wheel index: add it to `extra-index`, or require `{name}=={public}`)",
                at(w),
                request.as_ref().map(|r| format!("`{r}`")).unwrap_or_else(|| name.clone()),
            ),
            RequirementProblem::RequiresPython {
                at: w,
                name,
                version,
                requires_python,
                python,
                newest,
            } => {
                write!(
                    f,
                    "{}{name}=={version} requires Python {requires_python}; the image has Python {python}; ",
                    at(w)
                )?;
                match newest {
                    Some(n) => write!(f, "the newest {name} that supports it is {n}"),
                    None => write!(f, "no version of {name} supports it (use an image with a newer Python)"),
                }
            }
            RequirementProblem::NoWheel {
                request,
                at: w,
                name,
                version,
                files,
            } => {
                write!(
                    f,
                    "{}{}: no wheel of {name} {version} fits this image; there {} {}",
                    at(w),
                    request.as_ref().map(|r| format!("`{r}`")).unwrap_or_else(|| name.clone()),
                    if files.len() == 1 { "is only" } else { "are only" },
                    files_shown(files)
                )?;
                if files.iter().any(|x| !x.ends_with(".whl")) {
                    write!(f, " (an sdist is built only by `kiln build` for the host's architecture)")?;
                }
                Ok(())
            }
            RequirementProblem::Conflict { name, requests } => {
                let specs: Vec<String> = requests.iter().map(|(s, _)| format!("{name}{s}")).collect();
                let ats: Vec<&str> = requests.iter().filter_map(|(_, a)| a.as_deref()).collect();
                write!(f, "you require {}", specs.join(" and "))?;
                if !ats.is_empty() {
                    write!(f, " ({})", ats.join(", "))?;
                }
                write!(f, "; no version of {name} is both: keep one")
            }
        }
    }
}

/// What to do about [`PipError::CannotInstall`]'s problems: one `pip wheel`
/// line for every wheel missing (pins kept), the tags tried, the sources.
fn problem_hints(problems: &[RequirementProblem], tags: &str, sources: &[String]) -> String {
    let mut out = String::new();
    let pins: Vec<String> = problems
        .iter()
        .filter_map(|p| match p {
            RequirementProblem::NoWheel { name, version, .. } => Some(format!("{name}=={version}")),
            _ => None,
        })
        .collect();
    if !pins.is_empty() {
        out.push_str(&format!(
            "\n  no wheel fits and no sdist could be built here: build the wheels on a system like the image \
             (`pip wheel --no-deps {} -w wheelhouse/`) and add the directory to `find-links`\n  tags tried: {tags}",
            pins.join(" ")
        ));
    }
    if problems.iter().any(|p| {
        matches!(
            p,
            RequirementProblem::Missing(_) | RequirementProblem::LocalVersion { .. }
        )
    }) {
        out.push_str(&format!(
            "\n  sources: {}",
            if sources.is_empty() {
                "none configured".to_string()
            } else {
                sources.join(", ")
            }
        ));
    }
    out
}

/// What is wrong with a wheel (follows `wheel <file name>`).
#[derive(Debug, thiserror::Error)]
pub enum WheelProblem {
    /// The zip reader cannot open it.
    #[error(" is not a valid zip file: {0}")]
    NotZip(String),
    /// The zip's directory or a member cannot be read.
    #[error(": {0}")]
    Unreadable(String),
    #[error(" has no .dist-info/METADATA")]
    NoMetadata,
    /// A member name that could escape the install directory.
    #[error(": member `{}` {why}; refusing to install it", member.escape_default())]
    UnsafeName {
        member: String,
        /// `is an absolute path`, `contains `..` (path traversal)`...
        why: &'static str,
    },
    #[error(": member `{member}` is a symlink; wheels may only contain regular files")]
    Symlink { member: String },
    #[error(": member `{member}` appears twice")]
    Duplicate { member: String },
    /// A member kiln does not read: encrypted, another compression, sizes
    /// that cannot be right.
    #[error(": member `{member}`: {detail}")]
    UnsupportedMember { member: String, detail: String },
    /// A member's content does not inflate to what the directory declares.
    #[error(": reading `{member}`: {detail}")]
    Corrupt { member: String, detail: String },
    /// Two members (or a member and a file kiln writes) land on the same path.
    #[error(": two members install to {path}")]
    Conflict { path: String },
    /// A `.data/` member outside any scheme directory.
    #[error(": unexpected member `{member}`")]
    UnexpectedMember { member: String },
    #[error(": unknown data directory `{dir}`")]
    UnknownDataDirectory { dir: String },
    #[error(": script `{script}` is in a subdirectory")]
    ScriptInSubdirectory { script: String },
    #[error(": entry point name `{name}` is not a valid file name")]
    BadScriptName { name: String },
    /// More than one `*.dist-info` directory.
    #[error(": more than one .dist-info directory ({})", dirs.join(", "))]
    SeveralDistInfos { dirs: Vec<String> },
    #[error(": {dist_info}/RECORD is missing")]
    NoRecord { dist_info: String },
    /// A RECORD line that is not `path,algorithm=digest,size`.
    #[error(": RECORD line {line}: {detail}")]
    BadRecord { line: usize, detail: String },
    /// A member RECORD does not list.
    #[error(": member `{member}` is not listed in RECORD")]
    NotInRecord { member: String },
    /// RECORD lists a file the wheel does not hold.
    #[error(": RECORD lists `{member}`, which the wheel does not contain")]
    MissingMember { member: String },
    /// The WHEEL file's `Tag:` lines say another platform than the file name.
    #[error(": WHEEL says tags {}, the file name {}", wheel_tags.join(", "), name_tags.join(", "))]
    TagMismatch {
        wheel_tags: Vec<String>,
        name_tags: Vec<String>,
    },
    /// METADATA names another project or version than the file name.
    #[error(": METADATA is {metadata}, the file name says {file_name}")]
    NameMismatch { metadata: String, file_name: String },
}

fn files_shown(files: &[String]) -> String {
    if files.is_empty() {
        return "(none)".to_string();
    }
    let mut s = files[..files.len().min(FILES_SHOWN)].join(", ");
    if files.len() > FILES_SHOWN {
        s.push_str(&format!(" and {} more", files.len() - FILES_SHOWN));
    }
    s
}

impl Classify for PipError {
    fn kind(&self) -> ErrorKind {
        match self {
            PipError::MalformedIndexPage { .. } => ErrorKind::Network,
            PipError::MarkerEnvironment { .. }
            | PipError::NoFile { .. }
            | PipError::NotInCache { .. } => ErrorKind::Internal,
            PipError::NoInterpreter { .. }
            | PipError::InvalidTarget { .. }
            | PipError::InvalidRequirement { .. }
            | PipError::UnsupportedHash { .. }
            | PipError::RequirementsFile { .. }
            | PipError::CondaEnvironment { .. }
            | PipError::RequirementsNotText { .. }
            | PipError::RequirementsTooDeep { .. }
            | PipError::Editable { .. }
            | PipError::HashMode { .. }
            | PipError::UnhashedDependencies { .. }
            | PipError::MissingLocalPath { .. }
            | PipError::NeedsSourceBuild { .. }
            | PipError::UnsupportedOption { .. }
            | PipError::NotAWheel { .. }
            | PipError::NoPackageSource { .. }
            | PipError::FindLinks { .. }
            | PipError::PackageNotFound { .. }
            | PipError::UnknownPackages { .. }
            | PipError::CannotInstall { .. }
            | PipError::InvalidRequiresDist { .. }
            | PipError::InvalidExtra { .. }
            | PipError::Unsatisfiable { .. }
            | PipError::HashMismatch { .. }
            | PipError::IncompleteMetadata
            | PipError::InvalidWheelName { .. }
            | PipError::BadWheel { .. }
            | PipError::InvalidEntryPoint { .. }
            | PipError::BuildForeign { .. }
            | PipError::BuildFailed { .. }
            | PipError::BuildNoWheel { .. }
            | PipError::BadSdist { .. }
            | PipError::BuiltWheelDiffers { .. }
            | PipError::NoBuilder { .. } => ErrorKind::Input,
        }
    }
}

impl From<PipError> for kiln_core::Error {
    fn from(e: PipError) -> Self {
        kiln_core::Error::typed(e)
    }
}

impl PipError {
    /// A wheel problem as a [`kiln_core::Error`].
    pub(crate) fn wheel(wheel: &str, problem: WheelProblem) -> kiln_core::Error {
        PipError::BadWheel {
            wheel: wheel.to_string(),
            problem,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_kinds() {
        let files: Vec<String> = (0..14).map(|i| format!("f{i}.tar.gz")).collect();
        let e = PipError::CannotInstall {
            problems: vec![RequirementProblem::NoWheel {
                request: Some("x>=1".into()),
                at: None,
                name: "x".into(),
                version: "1.0".into(),
                files,
            }],
            target: "CPython 3.11.2 on x86_64 (glibc 2.36)".into(),
            tags: "t".into(),
            sources: Vec::new(),
        };
        let m = e.to_string();
        assert!(m.starts_with("[pip] 1 requirement cannot be installed on CPython 3.11.2 on x86_64 (glibc 2.36):\n  - `x>=1`: no wheel of x 1.0 fits this image; there are only f0.tar.gz, "), "{m}");
        assert!(
            m.contains("f11.tar.gz and 2 more (an sdist is built only by `kiln build` for the host's architecture)\n"),
            "{m}"
        );
        assert!(
            m.contains("`pip wheel --no-deps x==1.0 -w wheelhouse/`"),
            "{m}"
        );
        assert!(m.ends_with("\n  tags tried: t"), "{m}");
        assert!(!m.contains("f12"), "{m}");
        assert_eq!(e.kind(), ErrorKind::Input);

        let e = PipError::PackageNotFound {
            name: "nope".into(),
            sources: Vec::new(),
        };
        assert!(e
            .to_string()
            .contains("not found on any configured source;"));
        let e = PipError::InvalidRequirement {
            origin: "o".into(),
            requirement: Some("r".into()),
            detail: Some("d".into()),
            wheel_path: false,
        };
        assert_eq!(e.to_string(), "o: invalid requirement `r`: d");
        let e = PipError::InvalidRequirement {
            origin: "o:3".into(),
            requirement: None,
            detail: None,
            wheel_path: true,
        };
        assert_eq!(
            e.to_string(),
            format!("o:3: invalid wheel path or URL {NOT_QUOTED}")
        );
        let e = PipError::BadWheel {
            wheel: "w.whl".into(),
            problem: WheelProblem::UnsafeName {
                member: "a\tb".into(),
                why: "is an absolute path",
            },
        };
        assert_eq!(
            e.to_string(),
            "wheel w.whl: member `a\\tb` is an absolute path; refusing to install it"
        );
        let e = PipError::NoFile {
            name: "a".into(),
            version: "1".into(),
            resolved: true,
        };
        assert_eq!(e.to_string(), "resolved a 1 without a file");
        assert_eq!(e.kind(), ErrorKind::Internal);
        let e = PipError::MalformedIndexPage {
            url: "u".into(),
            detail: "d".into(),
        };
        assert_eq!(kiln_core::Error::from(e).kind(), ErrorKind::Network);
    }

    #[test]
    fn quotes_are_cut_to_200_chars() {
        let long = "x".repeat(5000);
        let q = quote(&long, Owner::Spec).unwrap();
        assert_eq!(q, format!("{}…", "x".repeat(QUOTED_CHARS)));
        assert_eq!(q.chars().count(), QUOTED_CHARS + 1);
        // Exactly the limit: nothing cut, nothing appended.
        let exact = "y".repeat(QUOTED_CHARS);
        assert_eq!(cut(&exact), exact);
        assert_eq!(cut("short"), "short");
        // Multibyte characters around the cut: cut between characters.
        for pad in 195..=201 {
            for wide in ["é", "€", "𝄞", "語"] {
                let text = format!("{}{}", "a".repeat(pad), wide.repeat(20));
                let q = cut(&text);
                assert!(q.chars().count() <= QUOTED_CHARS + 1, "{pad} {wide}");
                assert!(q.ends_with('…'), "{pad} {wide}");
                assert!(text.starts_with(q.trim_end_matches('…')), "{pad} {wide}");
            }
        }
        // Not the spec's: not quoted at all.
        assert_eq!(quote("anything", Owner::Included), None);
        // Credentials and control characters.
        assert_eq!(
            cut("demo @ https://u:s3cret@h.invalid/demo.whl"),
            "demo @ https://***@h.invalid/demo.whl"
        );
        assert_eq!(cut("a\u{1b}[31mb\tc"), "a\\u{1b}[31mb\\tc");
        // An escape counts as what it shows.
        let escapes = "\u{7}".repeat(100);
        let q = cut(&escapes);
        assert!(
            q.chars().count() <= QUOTED_CHARS + 1 && q.ends_with('…'),
            "{q}"
        );
    }

    #[test]
    fn not_text_names_file_and_line() {
        let e = PipError::RequirementsNotText {
            path: "/spec/req.txt".into(),
            line: 3,
            problem: "is not valid UTF-8",
        };
        assert_eq!(
            e.to_string(),
            "[pip] requirements file /spec/req.txt:3: is not valid UTF-8; requirements files are UTF-8 text"
        );
        assert_eq!(e.kind(), ErrorKind::Input);
    }
}
