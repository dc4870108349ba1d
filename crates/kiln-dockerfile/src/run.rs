//! `RUN` lines: a line whose `&&`-joined commands are all package installs
//! kiln does natively (apt, pip, conda) or clean-ups that are no-ops in
//! kiln's pipeline becomes the native stages; any other line becomes a
//! `[[run]]` step, run as written in kiln's sandbox over the tree built so
//! far (with the ENV, ARGs, USER, WORKDIR and SHELL in force at that line).
//! Native stages install before every sandboxed step, as kiln's pipeline
//! does; `--explain` says so.

use parse_dockerfile::{Command, RunInstruction};

use crate::error::DockerfileError;
use crate::lex;
use crate::{Translator, Treatment};

/// Pipeline order of the native stages.
const APT: u8 = 0;
const CONDA: u8 = 1;
const PIP: u8 = 2;

fn stage_name(rank: u8) -> &'static str {
    match rank {
        APT => "apt",
        CONDA => "conda",
        _ => "pip",
    }
}

/// What one command becomes.
enum Action {
    Dropped(String),
    Apt {
        packages: Vec<String>,
        recommends: bool,
    },
    Pip(PipInstall),
    Conda(CondaInstall),
}

#[derive(Default)]
struct PipInstall {
    packages: Vec<String>,
    /// As written (image paths), mapped to the context later.
    requirements: Vec<String>,
    index: Option<String>,
    extra_index: Vec<String>,
    /// URLs, or directories in the image (mapped to the context later).
    find_links: Vec<String>,
    no_index: bool,
    prerelease: bool,
    /// `/opt/venv/bin/pip …`: the environment it installs into.
    target: Option<String>,
}

#[derive(Default)]
struct CondaInstall {
    channels: Vec<String>,
    prefix: Option<String>,
    packages: Vec<String>,
}

/// Why a command is not taken (the message's parenthesis).
type Refusal = Option<String>;

/// A `[[run]]` entry of the translated spec.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct RunDraft {
    command: CommandDraft,
    #[serde(skip_serializing_if = "Option::is_none")]
    shell: Option<Vec<String>>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    env: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workdir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    after_files: usize,
    label: String,
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum CommandDraft {
    Shell(String),
    Exec(Vec<String>),
}

impl Translator<'_> {
    pub(crate) fn run(&mut self, line: usize, r: &RunInstruction) -> Result<(), DockerfileError> {
        let mut network = None;
        for o in &r.options {
            let v = o
                .value
                .as_ref()
                .map(|v| v.value.to_string())
                .unwrap_or_default();
            match &*o.name.value {
                "mount" if v.split(',').any(|kv| kv == "type=cache") => {}
                "network" if ["host", "none", "default"].contains(&v.as_str()) => {
                    network = Some(if v == "none" { "none" } else { "host" }.to_string());
                }
                name => {
                    return Err(self.unsupported(
                        line,
                        &format!("RUN --{name}"),
                        format!(
                            "the option --{name}{}",
                            if v.is_empty() {
                                String::new()
                            } else {
                                format!("={v}")
                            }
                        ),
                    ))
                }
            }
        }
        if let Some(doc) = r.here_docs.first() {
            return self.here_doc(line, r, doc, network);
        }
        // Native when every command is a package install or a no-op
        // clean-up; otherwise the whole line runs in the sandbox.
        let (commands, script) = match &r.arguments {
            Command::Exec(a) => {
                let argv: Vec<String> = a.value.iter().map(|s| s.value.to_string()).collect();
                (Ok(vec![argv.clone()]), CommandDraft::Exec(argv))
            }
            Command::Shell(s) => {
                let text = lex::join_continuations(s.value, self.escape());
                let prog = self.shell().first().cloned().unwrap_or_default();
                let base = prog.rsplit('/').next().unwrap_or("");
                let commands = if ["sh", "bash", "dash", "ash", "zsh"].contains(&base) {
                    lex::shell_commands(&text, &|n| self.var(n))
                        .map_err(|reason| format!("{reason} needs a shell"))
                } else {
                    Err(format!("the SHELL is `{prog}`"))
                };
                (commands, CommandDraft::Shell(text.trim().to_string()))
            }
            _ => return Err(self.unsupported(line, "RUN", "this form of RUN")),
        };
        let native: Result<Vec<(String, Action)>, String> = commands.and_then(|commands| {
            commands
                .iter()
                .map(|words| {
                    let shown = kiln_core::url::redact(&words.join(" "));
                    classify(words).map(|a| (shown.clone(), a)).map_err(|why| {
                        let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
                        format!("`{shown}` is not a package install{why}")
                    })
                })
                .collect()
        });
        match native {
            Ok(actions) if !actions.is_empty() => {
                for (shown, action) in actions {
                    self.apply(line, shown, action)?;
                }
                Ok(())
            }
            Ok(_) => Err(self.invalid(line, "RUN", "no command")),
            Err(why) => self.sandboxed(line, script, network, why),
        }
    }

    /// `RUN <<EOF … EOF`: the document is a script, run by its `#!`
    /// interpreter when it names one, else by the SHELL (as BuildKit does).
    fn here_doc(
        &mut self,
        line: usize,
        r: &RunInstruction,
        doc: &parse_dockerfile::HereDoc,
        network: Option<String>,
    ) -> Result<(), DockerfileError> {
        let marker = match &r.arguments {
            Command::Shell(s) => s.value.trim().to_string(),
            _ => String::new(),
        };
        if r.here_docs.len() > 1 || marker.split_whitespace().count() > 1 {
            return Err(self.unsupported(
                line,
                "RUN",
                "a here-document with a command or another here-document on its line",
            ));
        }
        let script = doc.value.to_string();
        let argv = match script.strip_prefix("#!") {
            Some(rest) => {
                let (first, body) = rest.split_once('\n').unwrap_or((rest, ""));
                let mut argv: Vec<String> = first.split_whitespace().map(String::from).collect();
                if argv.is_empty() {
                    return Err(self.invalid(
                        line,
                        "RUN",
                        "the here-document's #! names no program",
                    ));
                }
                argv.push("-c".into());
                argv.push(body.to_string());
                argv
            }
            None => {
                let mut argv = self.shell().to_vec();
                argv.push(script);
                argv
            }
        };
        self.sandboxed(
            line,
            CommandDraft::Exec(argv),
            network,
            "a here-document script".into(),
        )
    }

    /// The whole line as a `[[run]]` step.
    fn sandboxed(
        &mut self,
        line: usize,
        script: CommandDraft,
        network: Option<String>,
        why: String,
    ) -> Result<(), DockerfileError> {
        let shown = match &script {
            CommandDraft::Shell(s) => s.clone(),
            CommandDraft::Exec(v) => format!("{v:?}"),
        };
        if matches!(&script, CommandDraft::Shell(s) if s.is_empty())
            || matches!(&script, CommandDraft::Exec(v) if v.is_empty())
        {
            return Err(self.invalid(line, "RUN", "no command"));
        }
        let shown = kiln_core::url::redact(&shown);
        // ARGs are in a RUN's environment (not the image's); ENV wins.
        let mut env: std::collections::BTreeMap<String, String> = self.set_args();
        env.extend(self.env.clone());
        let shell = (self.shell() != ["/bin/sh", "-c"]).then(|| self.shell().to_vec());
        let user = self.user();
        let workdir = self.workdir.clone();
        let after_files = self.files_so_far();
        let mut detail = format!(
            "[[run]] in the sandbox (user {}, workdir {}, network {})",
            user.as_deref().unwrap_or("root"),
            workdir.as_deref().unwrap_or("/"),
            network.as_deref().unwrap_or("host"),
        );
        if after_files > 0 {
            detail.push_str(&format!(", after the first {after_files} [[files]]"));
        }
        detail.push_str(&format!("; not native: {why}"));
        self.runs_seen = true;
        let label = format!("{} line {line}: RUN", self.path().display());
        self.add_run(RunDraft {
            command: script,
            shell,
            env,
            user,
            workdir,
            network,
            after_files,
            label,
        });
        self.push(line, shown, Treatment::Sandboxed, detail);
        Ok(())
    }

    fn order(&mut self, line: usize, rank: u8) -> Result<(), DockerfileError> {
        if let Some((last, last_line)) = self.last_stage {
            if rank < last {
                return Err(DockerfileError::Order {
                    path: self.path().to_path_buf(),
                    line,
                    stage: stage_name(rank),
                    earlier: stage_name(last),
                    earlier_line: last_line,
                });
            }
        }
        self.last_stage = Some((rank, line));
        Ok(())
    }

    fn apply(&mut self, line: usize, shown: String, action: Action) -> Result<(), DockerfileError> {
        match action {
            Action::Dropped(why) => self.push(line, shown, Treatment::Dropped, why),
            Action::Apt {
                packages,
                recommends,
            } => {
                self.order(line, APT)?;
                let mut detail = format!("[apt] packages += {packages:?} (native apt stage)");
                if recommends {
                    detail.push_str(
                        "; Recommends are not installed (as with --no-install-recommends)",
                    );
                }
                self.apt().packages.extend(packages);
                self.push(line, shown, Treatment::Apt, detail);
            }
            Action::Conda(c) => {
                self.order(line, CONDA)?;
                let conda = self.conda();
                if let (Some(new), Some(old)) = (&c.prefix, &conda.prefix) {
                    if new != old {
                        let (new, old) = (new.clone(), old.clone());
                        return Err(self.unsupported(
                            line,
                            "RUN",
                            format!("conda environments in two prefixes (`{old}` and `{new}`)"),
                        ));
                    }
                }
                let conda = self.conda();
                if c.prefix.is_some() {
                    conda.prefix = c.prefix.clone();
                }
                for ch in &c.channels {
                    if !conda.channels.contains(ch) {
                        conda.channels.push(ch.clone());
                    }
                }
                conda.packages.extend(c.packages.iter().cloned());
                let prefix = conda.prefix.clone().unwrap_or_else(|| "/opt/conda".into());
                self.push(
                    line,
                    shown,
                    Treatment::Conda,
                    format!(
                        "[conda] packages += {:?}, channels += {:?}, prefix {prefix} (native conda stage)",
                        c.packages, c.channels
                    ),
                );
            }
            Action::Pip(p) => {
                self.order(line, PIP)?;
                let mut requirements = Vec::new();
                for r in &p.requirements {
                    requirements.push(self.context_source(line, "-r", r, false)?);
                }
                let mut find_links = Vec::new();
                for f in &p.find_links {
                    if f.contains("://") {
                        find_links.push(f.clone());
                    } else {
                        find_links.push(self.context_source(line, "--find-links", f, true)?);
                    }
                }
                // Plain `pip` after a conda install is the environment's pip
                // (conda images put the prefix on PATH).
                let target = p.target.clone().or_else(|| {
                    self.has_conda().then(|| {
                        self.conda()
                            .prefix
                            .clone()
                            .unwrap_or_else(|| "/opt/conda".into())
                    })
                });
                let env_index = self.env.get("PIP_INDEX_URL").cloned();
                let env_extra: Vec<String> = self
                    .env
                    .get("PIP_EXTRA_INDEX_URL")
                    .map(|v| v.split_whitespace().map(String::from).collect())
                    .unwrap_or_default();
                let index = p.index.clone().or(env_index);
                let pip = self.pip();
                if let (Some(new), Some(old)) = (&target, &pip.target) {
                    if new != old {
                        let (new, old) = (new.clone(), old.clone());
                        return Err(self.unsupported(
                            line,
                            "RUN",
                            format!("pip installs into two environments (`{old}` and `{new}`)"),
                        ));
                    }
                }
                let pip = self.pip();
                if let (Some(new), Some(old)) = (&index, &pip.index) {
                    if new != old {
                        return Err(self.unsupported(
                            line,
                            "RUN",
                            "pip installs from two different --index-url values",
                        ));
                    }
                }
                let pip = self.pip();
                if index.is_some() {
                    pip.index = index;
                }
                for e in p.extra_index.iter().chain(&env_extra) {
                    if !pip.extra_index.contains(e) {
                        pip.extra_index.push(e.clone());
                    }
                }
                if target.is_some() {
                    pip.target = target.clone();
                }
                pip.prerelease |= p.prerelease;
                pip.no_index |= p.no_index;
                for f in &find_links {
                    if !pip.find_links.contains(f) {
                        pip.find_links.push(f.clone());
                    }
                }
                pip.packages.extend(p.packages.iter().cloned());
                pip.requirements.extend(requirements.iter().cloned());
                let mut detail = format!("[pip] packages += {:?}", p.packages);
                if !requirements.is_empty() {
                    detail.push_str(&format!(", requirements += {requirements:?}"));
                }
                if !find_links.is_empty() {
                    detail.push_str(&format!(
                        ", find-links += {:?}",
                        find_links
                            .iter()
                            .map(|f| kiln_core::url::redact(f))
                            .collect::<Vec<_>>()
                    ));
                }
                if p.no_index {
                    detail.push_str(", no-index");
                }
                if let Some(t) = &target {
                    detail.push_str(&format!(", target = {t:?}"));
                }
                detail.push_str(" (native pip stage)");
                self.push(line, shown, Treatment::Pip, detail);
            }
        }
        Ok(())
    }

    /// `pip install -r FILE` / `--find-links DIR`: the path must be in the
    /// image from an earlier COPY of the context; the spec names that
    /// context file (or directory).
    fn context_source(
        &self,
        line: usize,
        option: &str,
        file: &str,
        dir: bool,
    ) -> Result<String, DockerfileError> {
        let abs = self.absolute(line, "RUN", file)?;
        for c in self.copies.iter().rev() {
            let rel = if c.dst == abs {
                Some(String::new())
            } else if c.dir {
                let prefix = format!("{}/", c.dst.trim_end_matches('/'));
                abs.strip_prefix(&prefix).map(String::from)
            } else {
                None
            };
            let Some(rel) = rel else { continue };
            let src = match (c.src.as_str(), rel.is_empty()) {
                (s, true) => s.to_string(),
                (".", false) => rel,
                (s, false) => format!("{s}/{rel}"),
            };
            let host = self.context().join(&src);
            let ok = if dir { host.is_dir() } else { host.is_file() };
            if !ok {
                let kind = if dir { "directory" } else { "file" };
                return Err(self.invalid(
                    line,
                    "RUN",
                    format!("`pip install {option} {file}`: `{src}` is not a {kind} in the build context"),
                ));
            }
            return Ok(src);
        }
        Err(self.invalid(
            line,
            "RUN",
            format!(
                "`pip install {option} {file}`: {abs} does not come from an earlier COPY of the build context (kiln reads it from the context)"
            ),
        ))
    }
}

/// Environment assignments before a command that change nothing kiln does.
const HARMLESS_ASSIGNMENTS: &[&str] = &[
    "DEBIAN_FRONTEND",
    "DEBCONF_NONINTERACTIVE_SEEN",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_ROOT_USER_ACTION",
    "PIP_PROGRESS_BAR",
];

fn classify(words: &[String]) -> Result<Action, Refusal> {
    let mut words = words;
    while let Some((first, rest)) = words.split_first() {
        match first.split_once('=') {
            Some((name, _))
                if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.is_empty() =>
            {
                if !HARMLESS_ASSIGNMENTS.contains(&name) {
                    return Err(Some(format!(
                        "the variable assignment `{name}=…` would change what runs"
                    )));
                }
                words = rest;
            }
            _ => break,
        }
    }
    let Some((prog, args)) = words.split_first() else {
        return Ok(Action::Dropped("a variable assignment only".into()));
    };
    let base = prog.rsplit('/').next().unwrap_or(prog);
    let env_of = |p: &str| {
        // `/opt/venv/bin/pip` → `/opt/venv`; system locations → none.
        p.rsplit_once("/bin/")
            .map(|(d, _)| d.to_string())
            .filter(|d| !d.is_empty() && d != "/usr" && d != "/usr/local")
    };
    match base {
        "apt-get" | "apt" => apt(args),
        "true" | ":" if args.is_empty() => Ok(Action::Dropped("does nothing".into())),
        "set"
            if args.iter().all(|a| {
                a.starts_with('-') && a[1..].chars().all(|c| "euxv".contains(c))
                    || a == "pipefail"
                    || a == "-o"
            }) =>
        {
            Ok(Action::Dropped("shell options; nothing runs".into()))
        }
        "rm" => rm(args),
        b if is_pip(b) => pip(args, prog.contains('/').then(|| env_of(prog)).flatten()),
        b if is_python(b) => match args {
            [m, p, rest @ ..] if m == "-m" && p == "pip" => {
                pip(rest, prog.contains('/').then(|| env_of(prog)).flatten())
            }
            _ => Err(None),
        },
        "conda" | "mamba" | "micromamba" => conda(args),
        _ => Err(None),
    }
}

fn is_pip(b: &str) -> bool {
    b == "pip"
        || b.strip_prefix("pip3").is_some_and(|v| {
            v.is_empty() || v.starts_with('.') && v[1..].chars().all(|c| c.is_ascii_digit())
        })
}

fn is_python(b: &str) -> bool {
    b == "python"
        || b.strip_prefix("python3").is_some_and(|v| {
            v.is_empty() || v.starts_with('.') && v[1..].chars().all(|c| c.is_ascii_digit())
        })
}

fn apt(args: &[String]) -> Result<Action, Refusal> {
    let mut sub = None;
    let mut packages = Vec::new();
    let mut recommends = true;
    for a in args {
        match a.as_str() {
            "-y"
            | "--yes"
            | "--assume-yes"
            | "-q"
            | "-qq"
            | "--quiet"
            | "-qy"
            | "-yq"
            | "-yqq"
            | "-qqy"
            | "--no-install-suggests" => {}
            "--no-install-recommends" => recommends = false,
            o if o.starts_with('-') => {
                return Err(Some(format!("the apt option `{o}` is not one kiln maps")))
            }
            w if sub.is_none() => sub = Some(w.to_string()),
            p => {
                if p.contains(['*', '?', '[', '/']) || p.ends_with(".deb") {
                    return Err(Some(format!(
                        "`{p}`: only package names, NAME=VERSION and NAME:ARCH are mapped"
                    )));
                }
                packages.push(p.to_string());
            }
        }
    }
    match sub.as_deref() {
        Some("update") if packages.is_empty() => Ok(Action::Dropped(
            "kiln reads the package indexes itself (signed, cached)".into(),
        )),
        Some("clean" | "autoclean") if packages.is_empty() => Ok(Action::Dropped(
            "kiln leaves no apt caches in the image".into(),
        )),
        Some("install") if !packages.is_empty() => Ok(Action::Apt {
            packages,
            recommends,
        }),
        Some("install") => Err(Some("no packages named".into())),
        _ => Err(None),
    }
}

/// Paths whose removal is a no-op: kiln leaves no package-manager caches.
const CACHE_PATHS: &[&str] = &[
    "/var/lib/apt/lists",
    "/var/cache/apt",
    "/root/.cache/pip",
    "~/.cache/pip",
    "/opt/conda/pkgs",
];

fn rm(args: &[String]) -> Result<Action, Refusal> {
    let mut paths = 0;
    for a in args {
        if let Some(flags) = a.strip_prefix('-') {
            if flags.chars().all(|c| "rfRv".contains(c)) || a == "--recursive" || a == "--force" {
                continue;
            }
            return Err(None);
        }
        let cache = CACHE_PATHS
            .iter()
            .any(|p| a == p || a.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
        if !cache {
            return Err(None);
        }
        paths += 1;
    }
    if paths == 0 {
        return Err(None);
    }
    Ok(Action::Dropped(
        "package-manager caches: kiln leaves none in the image".into(),
    ))
}

/// `--opt=value` → (`--opt`, Some(`value`)); any other word is an option
/// name (or an argument) whose value, if any, is the next word.
fn split_option(word: &str) -> (&str, Option<&str>) {
    match word.split_once('=') {
        Some((o, v)) if word.starts_with("--") => (o, Some(v)),
        _ => (word, None),
    }
}

/// The value of option `name`: given inline, else the next word.
fn option_value<'a>(
    inline: Option<&str>,
    words: &mut impl Iterator<Item = &'a String>,
    name: &str,
) -> Result<String, Refusal> {
    match inline {
        Some(v) => Ok(v.to_string()),
        None => words
            .next()
            .cloned()
            .ok_or_else(|| Some(format!("`{name}` needs a value"))),
    }
}

fn pip(args: &[String], target: Option<String>) -> Result<Action, Refusal> {
    let mut sub: Option<&str> = None;
    let mut p = PipInstall {
        target,
        ..PipInstall::default()
    };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (opt, inline) = split_option(a);
        let mut value = |name: &str| option_value(inline, &mut it, name);
        match opt {
            "-U"
            | "--upgrade"
            | "--no-cache-dir"
            | "-q"
            | "--quiet"
            | "-qq"
            | "-v"
            | "--verbose"
            | "--disable-pip-version-check"
            | "--no-warn-script-location"
            | "--break-system-packages"
            | "--prefer-binary"
            | "--no-input"
            | "--compile"
            | "--no-compile" => {}
            "--root-user-action" | "--progress-bar" | "--upgrade-strategy" | "--only-binary" => {
                value(opt)?;
            }
            "--pre" => p.prerelease = true,
            "--no-index" => p.no_index = true,
            "-f" | "--find-links" => p.find_links.push(value(opt)?),
            "-r" | "--requirement" => p.requirements.push(value(opt)?),
            "-i" | "--index-url" => p.index = Some(value(opt)?),
            "--extra-index-url" => p.extra_index.push(value(opt)?),
            o if o.starts_with("-r") && o.len() > 2 && !o.starts_with("--") => {
                p.requirements.push(o[2..].to_string())
            }
            o if o.starts_with('-') => {
                return Err(Some(format!("the pip option `{o}` is not one kiln maps")))
            }
            w if sub.is_none() => sub = Some(w),
            w => rest.push(w.to_string()),
        }
    }
    match sub {
        Some("install") => {}
        Some("cache") if rest == ["purge"] => {
            return Ok(Action::Dropped(
                "kiln keeps no pip cache in the image".into(),
            ))
        }
        _ => return Err(None),
    }
    for r in rest {
        if r.contains("://")
            || r.starts_with(['.', '/', '~'])
            || r.ends_with(".whl")
            || r.ends_with(".tar.gz")
            || r.ends_with(".zip")
        {
            return Err(Some(format!(
                "`{}`: only requirement specifiers and -r files are mapped, not paths or URLs",
                kiln_core::url::redact(&r)
            )));
        }
        p.packages.push(r);
    }
    if p.packages.is_empty() && p.requirements.is_empty() {
        return Err(Some("nothing to install".into()));
    }
    Ok(Action::Pip(p))
}

fn conda(args: &[String]) -> Result<Action, Refusal> {
    let mut sub: Option<&str> = None;
    let mut c = CondaInstall::default();
    let mut it = args.iter();
    let mut named_base = false;
    while let Some(a) = it.next() {
        let (opt, inline) = split_option(a);
        let mut value = |name: &str| option_value(inline, &mut it, name);
        match opt {
            "-y"
            | "--yes"
            | "-q"
            | "--quiet"
            | "--override-channels"
            | "--strict-channel-priority"
            | "-a"
            | "--all"
            | "-f"
            | "--force-pkgs-dirs"
            | "-afy"
            | "-ay"
            | "-yaf"
            | "-tipsy"
            | "-tipy"
            | "--tarballs"
            | "--index-cache"
            | "--packages" => {}
            "-c" | "--channel" => {
                let ch = value(opt)?;
                if !c.channels.contains(&ch) {
                    c.channels.push(ch);
                }
            }
            "-n" | "--name" => {
                let n = value(opt)?;
                if n != "base" {
                    return Err(Some(format!(
                        "the named environment `{n}` (only base or -p PREFIX are mapped)"
                    )));
                }
                named_base = true;
            }
            "-p" | "--prefix" => {
                let pfx = value(opt)?;
                if !pfx.starts_with('/') {
                    return Err(Some(format!("the prefix `{pfx}` is not absolute")));
                }
                c.prefix = Some(pfx.trim_end_matches('/').to_string());
            }
            o if o.starts_with('-') => {
                return Err(Some(format!("the conda option `{o}` is not one kiln maps")))
            }
            w if sub.is_none() => sub = Some(w),
            w => c.packages.push(w.to_string()),
        }
    }
    match sub {
        Some("clean") if c.packages.is_empty() => Ok(Action::Dropped(
            "kiln keeps no conda package cache in the image".into(),
        )),
        Some("install" | "create") => {
            if c.packages.is_empty() {
                return Err(Some("nothing to install".into()));
            }
            if sub == Some("create") && c.prefix.is_none() && !named_base {
                return Err(Some("`create` needs -n base or -p PREFIX".into()));
            }
            Ok(Action::Conda(c))
        }
        _ => Err(None),
    }
}
