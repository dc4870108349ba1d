//! The Dockerfile frontend: a Dockerfile becomes kiln's own build
//! description (kiln.toml text, parsed by the same strict parser as a
//! written spec), plus an account of what kiln did with every instruction.
//!
//! One spec per stage (split at each FROM; only the stages the target
//! needs, through `FROM <stage>` and `COPY --from`, are translated; the
//! caller builds them in order, see [`translate_stages`]). In a stage,
//! metadata instructions become `[config]`, `COPY`/`ADD` of
//! context files become `[[files]]`, and `RUN` lines made only of package
//! installs (`apt-get install`, `pip install`, `conda install`, chained with
//! `&&`) become the native `[apt]`, `[pip]` and `[conda]` stages; their
//! usual clean-ups are dropped. Any other `RUN` line becomes a `[[run]]`
//! step that runs as written in kiln's sandbox (see `run`). `COPY --from`
//! becomes `[[files]] from` (an earlier stage's image, or an image
//! reference). `ADD` of URLs or archives, `HEALTHCHECK`, `ONBUILD` are
//! refused naming the line, before anything is built.
//!
//! Parsing is `parse-dockerfile`; word splitting and BuildKit's variable
//! expansion are in [`lex`](crate::lex), `.dockerignore` in `ignore`.

mod error;
mod git;
mod heredoc;
mod ignore;
mod lex;
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use parse_dockerfile::{Command, Instruction, JsonOrStringArray, Source};
use serde::Serialize;

use kiln_spec::spec::{AbsPath, Mode, Owner, Port, Spec, User};

pub use error::DockerfileError;
pub use git::{git_inputs, Fetched as GitFetched, GitInputs, GitPins};
use lex::Var;

/// The name the translated spec stands at: relative paths in it (the
/// `[[files]]` sources, requirements files) are relative to the context.
pub const SPEC_NAME: &str = "Dockerfile.kiln.toml";

/// The Dockerfile a context holds when none is named.
pub const DEFAULT_NAME: &str = "Dockerfile";

/// Where the translated spec of `context` stands (it is never written).
pub fn spec_path(context: &Path) -> PathBuf {
    context.join(SPEC_NAME)
}

/// What kiln did with one instruction (one command, for `RUN` lines).
#[derive(Debug, Clone, Serialize)]
pub struct Explained {
    /// The stage (its name, else its index) in a multi-stage Dockerfile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// 1-based line of the Dockerfile (0: not from a line).
    pub line: usize,
    /// The instruction as written (first line; for RUN, the command).
    pub instruction: String,
    pub treatment: Treatment,
    /// What it became, in kiln's terms.
    pub detail: String,
}

/// The kinds of treatment, as `--explain` and `--json` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Treatment {
    /// A parser directive.
    Directive,
    /// `ARG`: a variable for expansion.
    Variable,
    /// `FROM`: the spec's base.
    Base,
    /// `[config]` metadata.
    Config,
    /// A `[[files]]` entry (one layer).
    Files,
    /// The native apt stage.
    Apt,
    /// The native pip stage.
    Pip,
    /// The native conda stage.
    Conda,
    /// A no-op in kiln's pipeline (`apt-get update`, cache clean-ups).
    Dropped,
    /// A `[[run]]` step: run as written in kiln's sandbox.
    Sandboxed,
    /// Not translated: the build is refused.
    Refused,
}

impl Treatment {
    pub fn name(self) -> &'static str {
        match self {
            Treatment::Directive => "directive",
            Treatment::Variable => "variable",
            Treatment::Base => "base",
            Treatment::Config => "config",
            Treatment::Files => "files",
            Treatment::Apt => "apt",
            Treatment::Pip => "pip",
            Treatment::Conda => "conda",
            Treatment::Dropped => "dropped",
            Treatment::Sandboxed => "sandboxed",
            Treatment::Refused => "refused",
        }
    }
}

/// What a translation needs from the base image: its environment (for
/// `$VAR`s the Dockerfile does not declare, e.g. `ENV PATH=/x:$PATH`) and
/// its working directory (for relative paths before any WORKDIR).
#[derive(Debug, Clone, Default)]
pub struct BaseConfig {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
}

/// Reads [`BaseConfig`] for a `FROM` image reference (kiln's base syntax)
/// and its `--platform`, if any; `None` when it cannot be read here (e.g.
/// a registry base with `--offline`), which leaves the translation strict.
pub type BaseLookup<'a> = &'a dyn Fn(&str, Option<&str>) -> kiln_core::Result<Option<BaseConfig>>;

/// Where the image of stage N (0-based) of a multi-stage Dockerfile will
/// be, in kiln's base syntax (`oci:DIR:TAG`): later stages name it as
/// their base (`FROM stage`) or in `[[files]] from` (`COPY --from`).
pub type StageImage<'a> = &'a dyn Fn(usize) -> String;

/// Inputs of a translation besides the Dockerfile and its context.
#[derive(Default)]
pub struct Options<'a> {
    /// `--build-arg NAME=VALUE`, in order.
    pub build_args: Vec<(String, String)>,
    /// How to read the base's config; without it, an undeclared variable
    /// or a relative path before WORKDIR on a non-scratch base is refused.
    pub base: Option<BaseLookup<'a>>,
    /// `--target NAME`: the stage to build [default: the last].
    pub target: Option<String>,
    /// Where earlier stages' images will be [default: `stage:NAME`, for
    /// translations that are only shown].
    pub stage_image: Option<StageImage<'a>>,
    /// Image names that stand for other references (a workspace's
    /// `target:NAME` → that member's image), in FROM and COPY --from.
    pub aliases: Vec<(String, String)>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("build_args", &self.build_args)
            .field("base", &self.base.is_some())
            .field("target", &self.target)
            .field("stage_image", &self.stage_image.is_some())
            .finish()
    }
}

/// A translated Dockerfile.
#[derive(Debug)]
pub struct Translation {
    /// The spec, parsed from [`Translation::toml`] at [`spec_path`].
    pub spec: Spec,
    /// The generated kiln.toml.
    pub toml: String,
    pub explained: Vec<Explained>,
    /// Things worth saying that do not stop the build (unused build args).
    pub warnings: Vec<String>,
}

/// Everything `--explain` shows: each instruction's treatment, every
/// refusal (not only the first) and, when nothing was refused, the spec.
#[derive(Debug)]
pub struct Explanation {
    pub explained: Vec<Explained>,
    pub errors: Vec<kiln_core::Error>,
    pub warnings: Vec<String>,
    /// The target stage's spec.
    pub toml: Option<String>,
    /// The specs of the stages the target needs, built before it (label, spec).
    pub stage_specs: Vec<(String, String)>,
}

/// One stage of a multi-stage translation, to be built in this order.
#[derive(Debug)]
pub struct StageSpec {
    /// 0-based position among the Dockerfile's FROMs.
    pub index: usize,
    /// `FROM … AS name`, lower-cased.
    pub name: Option<String>,
    /// The name, else the index (as `--explain` shows it).
    pub label: String,
    pub spec: Spec,
    pub toml: String,
}

/// A translated Dockerfile, stage by stage: the stages the target needs,
/// in build order, the target last.
#[derive(Debug)]
pub struct Stages {
    pub stages: Vec<StageSpec>,
    /// Every translated instruction (all stages).
    pub explained: Vec<Explained>,
    pub warnings: Vec<String>,
}

/// Read a Dockerfile.
pub fn read(path: &Path) -> kiln_core::Result<String> {
    std::fs::read_to_string(path).map_err(|source| {
        DockerfileError::Unreadable {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Translate `text` (read from `dockerfile`, named in messages) with the
/// build context `context` and `--build-arg` values. The first refusal is
/// the error.
pub fn translate(
    text: &str,
    dockerfile: &Path,
    context: &Path,
    opts: &Options,
) -> kiln_core::Result<Translation> {
    let mut s = translate_stages(text, dockerfile, context, opts)?;
    let target = s.stages.pop().expect("a translation has a target stage");
    Ok(Translation {
        spec: target.spec,
        toml: target.toml,
        explained: s.explained,
        warnings: s.warnings,
    })
}

/// Translate the target stage and the stages it needs (through
/// `FROM <stage>` and `COPY --from=<stage>`), each into its own spec; the
/// first refusal is the error. Stages the target does not need are not
/// translated at all.
pub fn translate_stages(
    text: &str,
    dockerfile: &Path,
    context: &Path,
    opts: &Options,
) -> kiln_core::Result<Stages> {
    let (mut e, outs) = translate_all(text, dockerfile, context, opts, false);
    if !e.errors.is_empty() {
        return Err(e.errors.remove(0));
    }
    let mut stages = Vec::new();
    for o in outs {
        let toml = o.toml.expect("a translation without errors has a spec");
        let spec = Spec::parse(&toml, &spec_path(context))?;
        stages.push(StageSpec {
            index: o.index,
            name: o.name,
            label: o.label,
            spec,
            toml,
        });
    }
    Ok(Stages {
        stages,
        explained: e.explained,
        warnings: e.warnings,
    })
}

/// Translate, keeping every refusal (for `--explain`); every stage is
/// shown, those the target does not need marked as not built.
pub fn explain(text: &str, dockerfile: &Path, context: &Path, opts: &Options) -> Explanation {
    translate_all(text, dockerfile, context, opts, true).0
}

/// One stage's translation out of [`translate_all`].
struct StageOut {
    index: usize,
    name: Option<String>,
    label: String,
    toml: Option<String>,
}

/// A stage as the Dockerfile splits at its FROMs.
struct Slice {
    name: Option<String>,
    label: String,
    /// Its instructions: from its FROM to the next FROM.
    range: std::ops::Range<usize>,
    /// Earlier stages it names (FROM, COPY --from).
    deps: BTreeSet<usize>,
}

/// What a stage's translator knows of the other stages.
#[derive(Debug, Default, Clone)]
struct StageCtx {
    /// Its own index.
    index: usize,
    /// Lower-cased names of the earlier stages.
    names: BTreeMap<String, usize>,
    /// Every stage's label (name, else index).
    labels: Vec<String>,
    /// Every stage's image, in kiln's base syntax.
    images: Vec<String>,
    /// The earlier stages' resulting environment and working directory
    /// (None: not known, their base was not read).
    configs: Vec<Option<BaseConfig>>,
    /// The stages found to be needed before translating (only these are built).
    deps: BTreeSet<usize>,
}

/// Split, pick the stages the target needs and translate them (with
/// `all`, every stage, for `--explain`).
fn translate_all(
    text: &str,
    dockerfile: &Path,
    context: &Path,
    opts: &Options,
    all: bool,
) -> (Explanation, Vec<StageOut>) {
    let build_args = &opts.build_args;
    let original = text;
    let rewritten = heredoc::inline_run_heredocs(text);
    let text = rewritten.text.as_str();
    let mut t = Translator::new(text, dockerfile, context, build_args);
    t.lines = Some((&rewritten, original));
    t.base_lookup = opts.base;
    t.aliases = &opts.aliases;
    let df = match parse_dockerfile::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let err = DockerfileError::Syntax {
                path: dockerfile.to_path_buf(),
                line: rewritten.line(e.line()),
                column: e.column(),
                message: format!("{e:#}"),
            };
            let e = Explanation {
                explained: Vec::new(),
                errors: vec![err.into()],
                warnings: Vec::new(),
                toml: None,
                stage_specs: Vec::new(),
            };
            return (e, Vec::new());
        }
    };
    let dirs = &df.parser_directives;
    if let Some(esc) = &dirs.escape {
        t.escape = esc.value.value;
        let line = t.line_of(esc.span().start);
        t.explain(
            line,
            Treatment::Directive,
            format!("escape character `{}`", t.escape),
        );
    }
    if let Some(s) = &dirs.syntax {
        let line = t.line_of(s.span().start);
        t.explain(
            line,
            Treatment::Directive,
            format!(
                "ignored: kiln reads the Dockerfile itself (syntax `{}` is not fetched)",
                s.value.value
            ),
        );
    }
    if let Some(c) = &dirs.check {
        let line = t.line_of(c.span().start);
        t.explain(
            line,
            Treatment::Directive,
            "ignored: build checks are not run".into(),
        );
    }
    // The global ARGs (before the first FROM), then one stage per FROM.
    let is_from = |i: &Instruction| matches!(i, Instruction::From(_));
    let first_from = df
        .instructions
        .iter()
        .position(is_from)
        .unwrap_or(df.instructions.len());
    for ins in &df.instructions[..first_from] {
        if let Err(err) = t.instruction(ins) {
            let line = err.line();
            t.explain(line, Treatment::Refused, err.to_string());
            t.errors.push(err);
        }
    }
    let slices = split_stages(&t, &df.instructions, first_from);
    let multi = slices.len() > 1;
    let mut explained = std::mem::take(&mut t.explained);
    let mut errors: Vec<kiln_core::Error> = std::mem::take(&mut t.errors)
        .into_iter()
        .map(Into::into)
        .collect();
    let target = match &opts.target {
        _ if slices.is_empty() => None,
        None => Some(slices.len() - 1),
        Some(want) => {
            let w = want.to_lowercase();
            let found = slices.iter().position(|s| s.name.as_deref() == Some(&w));
            if found.is_none() {
                let names: Vec<&str> = slices.iter().filter_map(|s| s.name.as_deref()).collect();
                errors.push(
                    t.invalid(
                        0,
                        "--target",
                        format!(
                            "no stage named `{want}` (named stages: {})",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    )
                    .into(),
                );
            }
            found
        }
    };
    let mut needed = BTreeSet::new();
    let mut stack: Vec<usize> = target.into_iter().collect();
    while let Some(i) = stack.pop() {
        if needed.insert(i) {
            stack.extend(slices[i].deps.iter().copied());
        }
    }
    let images: Vec<String> = (0..slices.len())
        .map(|i| match opts.stage_image {
            Some(f) => f(i),
            None => format!("stage:{}", slices[i].label),
        })
        .collect();
    let mut used = t.used_args.clone();
    let mut configs: Vec<Option<BaseConfig>> = Vec::new();
    let mut outs = Vec::new();
    for (k, sl) in slices.iter().enumerate() {
        let need = needed.contains(&k);
        if !need && !all {
            configs.push(None);
            continue;
        }
        let mut st = Translator::new(text, dockerfile, context, build_args);
        st.lines = t.lines;
        st.base_lookup = opts.base;
        st.aliases = &opts.aliases;
        st.escape = t.escape;
        st.global_args = t.global_args.clone();
        st.stages = StageCtx {
            index: k,
            names: slices[..k]
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((s.name.clone()?, i)))
                .collect(),
            labels: slices.iter().map(|s| s.label.clone()).collect(),
            images: images.clone(),
            configs: configs.clone(),
            deps: sl.deps.clone(),
        };
        let mut fatal = None;
        for ins in &df.instructions[sl.range.clone()] {
            if let Err(err) = st.instruction(ins) {
                let line = err.line();
                st.explain(line, Treatment::Refused, err.to_string());
                st.errors.push(err);
            }
            if let Some(e) = st.fatal.take() {
                // The base could not be read: nothing after FROM can be translated.
                fatal = Some(e);
                break;
            }
        }
        used.extend(st.used_args.iter().cloned());
        let toml = if need && st.errors.is_empty() && fatal.is_none() {
            match st.finish() {
                Ok(s) => Some(s),
                Err(e) => {
                    st.errors.push(e);
                    None
                }
            }
        } else {
            None
        };
        configs.push(st.result_config());
        let label = if need {
            sl.label.clone()
        } else {
            format!("{} (not built)", sl.label)
        };
        for mut x in std::mem::take(&mut st.explained) {
            if multi {
                x.stage = Some(label.clone());
            }
            explained.push(x);
        }
        if need {
            let stop = fatal.is_some();
            errors.extend(fatal);
            errors.extend(st.errors.into_iter().map(Into::into));
            outs.push(StageOut {
                index: k,
                name: sl.name.clone(),
                label: sl.label.clone(),
                toml,
            });
            if stop {
                break;
            }
        }
    }
    explained.sort_by_key(|e| e.line);
    let mut warnings = Vec::new();
    for (k, _) in build_args {
        if !used.contains(k) {
            warnings.push(format!(
                "--build-arg {k} was not consumed: no ARG {k} in the Dockerfile"
            ));
        }
    }
    if !errors.is_empty() {
        outs.clear();
    }
    let toml = outs.last().and_then(|o| o.toml.clone());
    let stage_specs = outs
        .iter()
        .take(outs.len().saturating_sub(1))
        .filter_map(|o| Some((o.label.clone(), o.toml.clone()?)))
        .collect();
    let e = Explanation {
        explained,
        errors,
        warnings,
        toml,
        stage_specs,
    };
    (e, outs)
}

/// Split the instructions at each FROM (from `first_from` on) and find
/// which earlier stages each names (`FROM <stage>`, `COPY --from=<stage|index>`).
fn split_stages(t: &Translator, ins: &[Instruction], first_from: usize) -> Vec<Slice> {
    let globals = &t.global_args;
    let expand = |v: &str| {
        lex::word(v, t.escape, &|n| {
            globals.get(n).cloned().unwrap_or(Var::Unset)
        })
        .unwrap_or_else(|_| v.to_string())
        .to_lowercase()
    };
    let mut slices: Vec<Slice> = Vec::new();
    let mut start = first_from;
    while start < ins.len() {
        let end = ins[start + 1..]
            .iter()
            .position(|i| matches!(i, Instruction::From(_)))
            .map_or(ins.len(), |p| start + 1 + p);
        let Instruction::From(f) = &ins[start] else {
            unreachable!("stages start at FROM")
        };
        let index = slices.len();
        let name = f.as_.as_ref().map(|(_, n)| n.value.to_lowercase());
        let names: BTreeMap<&str, usize> = slices
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((s.name.as_deref()?, i)))
            .collect();
        let mut deps = BTreeSet::new();
        deps.extend(names.get(expand(&f.image.value).as_str()).copied());
        for i in &ins[start + 1..end] {
            let Instruction::Copy(c) = i else { continue };
            for o in &c.options {
                if &*o.name.value != "from" {
                    continue;
                }
                let Some(v) = &o.value else { continue };
                let v = expand(&v.value);
                match (names.get(v.as_str()), v.parse::<usize>()) {
                    (Some(&i), _) => {
                        deps.insert(i);
                    }
                    (None, Ok(i)) if i < index => {
                        deps.insert(i);
                    }
                    _ => {}
                }
            }
        }
        slices.push(Slice {
            label: name.clone().unwrap_or_else(|| index.to_string()),
            name,
            range: start..end,
            deps,
        });
        start = end;
    }
    slices
}

/// The explanation as a table (`kiln build --explain`).
pub fn table(explained: &[Explained]) -> String {
    let width = explained
        .iter()
        .map(|e| e.instruction.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(11, 48);
    // A multi-stage Dockerfile: each line starts with its stage.
    let stages = explained
        .iter()
        .filter_map(|e| e.stage.as_ref().map(|s| s.chars().count() + 2))
        .max()
        .map(|w| w.max(5));
    let stage = |e: &Explained| match (stages, &e.stage) {
        (Some(w), Some(s)) => format!("{:<w$}  ", format!("[{s}]")),
        (Some(w), None) => format!("{:<w$}  ", ""),
        (None, _) => String::new(),
    };
    let mut out = match stages {
        Some(w) => format!("{:<w$}  ", "STAGE"),
        None => String::new(),
    };
    out.push_str(&format!(
        "{:>4}  {:<width$}  {:<9}  WHAT KILN DOES\n",
        "LINE", "INSTRUCTION", "TREATMENT"
    ));
    for e in explained {
        let mut ins: String = e.instruction.chars().take(width).collect();
        if e.instruction.chars().count() > width {
            ins.pop();
            ins.push('…');
        }
        out.push_str(&stage(e));
        out.push_str(&format!(
            "{:>4}  {:<width$}  {:<9}  {}\n",
            e.line,
            ins,
            e.treatment.name(),
            e.detail
        ));
    }
    out
}

// ---------------------------------------------------------------------------

#[derive(Debug, Default, Serialize)]
struct Draft {
    image: ImageDraft,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<FileDraft>,
    config: ConfigDraft,
    #[serde(skip_serializing_if = "Option::is_none")]
    apt: Option<AptDraft>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conda: Option<CondaDraft>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pip: Option<PipDraft>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    run: Vec<run::RunDraft>,
}

#[derive(Debug, Default, Serialize)]
struct ImageDraft {
    base: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    platforms: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct FileDraft {
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    src: String,
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    extract: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(rename = "allow-setid", skip_serializing_if = "std::ops::Not::not")]
    allow_setid: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    into: bool,
}

impl FileDraft {
    /// An entry at `dst` with COPY's `--chown`/`--chmod` (setuid/setgid
    /// bits in `--chmod` are meant: the Dockerfile asked for them).
    fn to(dst: String, owner: Option<String>, mode: Option<Mode>) -> FileDraft {
        FileDraft {
            dst,
            mode: mode.map(|m| format!("{:04o}", m.0)),
            owner,
            allow_setid: mode.is_some_and(|m| m.0 & 0o6000 != 0),
            ..FileDraft::default()
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct ConfigDraft {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workdir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exposed_ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<HealthDraft>,
}

/// `[config.healthcheck]` of the translated spec.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
struct HealthDraft {
    test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
}

#[derive(Debug, Default, Serialize)]
struct AptDraft {
    packages: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
struct PipDraft {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    packages: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    requirements: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extra_index: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    find_links: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_index: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    prerelease: bool,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
struct CondaDraft {
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    channels: Vec<String>,
    packages: Vec<String>,
}

/// A file or directory an earlier COPY put into the image.
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    /// Absolute path in the image.
    pub(crate) dst: String,
    /// Path relative to the context (`.` for the context itself).
    pub(crate) src: String,
    pub(crate) dir: bool,
}

pub(crate) struct Translator<'a> {
    text: &'a str,
    /// When `text` is the Dockerfile rewritten for `RUN cmd <<EOF`: its
    /// line map and the text as written (for line numbers and quotes).
    lines: Option<(&'a heredoc::Rewritten, &'a str)>,
    path: PathBuf,
    context: PathBuf,
    build_args: BTreeMap<String, String>,
    pub(crate) used_args: BTreeSet<String>,
    escape: char,
    /// ARGs before the first FROM (for FROM, and `ARG NAME` in the stage).
    global_args: BTreeMap<String, Var>,
    /// ARGs of the stage.
    args: BTreeMap<String, Var>,
    /// ENVs of the stage (they win over ARGs of the same name).
    pub(crate) env: BTreeMap<String, String>,
    /// The base is `scratch`: an undeclared variable is simply empty.
    scratch: bool,
    base_lookup: Option<BaseLookup<'a>>,
    aliases: &'a [(String, String)],
    /// The base's environment and working directory, when read.
    base: Option<BaseConfig>,
    /// Reading the base failed: the translation stops.
    fatal: Option<kiln_core::Error>,
    from_line: Option<usize>,
    pub(crate) workdir: Option<String>,
    shell: Vec<String>,
    cmd_set: bool,
    pub(crate) copies: Vec<Copied>,
    /// Directories this Dockerfile made in the image (WORKDIR, COPY).
    known_dirs: BTreeSet<String>,
    ignore: Option<ignore::Ignore>,
    draft: Draft,
    /// The stage the last package install went to (apt 0, conda 1, pip 2) and its line.
    pub(crate) last_stage: Option<(u8, usize)>,
    /// A RUN line went to the sandbox: later native installs come before it.
    pub(crate) runs_seen: bool,
    explained: Vec<Explained>,
    errors: Vec<DockerfileError>,
    /// The other stages of a multi-stage Dockerfile.
    stages: StageCtx,
}

type Res<T> = Result<T, DockerfileError>;

impl<'a> Translator<'a> {
    fn new(
        text: &'a str,
        dockerfile: &Path,
        context: &Path,
        build_args: &[(String, String)],
    ) -> Self {
        Translator {
            text,
            lines: None,
            path: dockerfile.to_path_buf(),
            context: context.to_path_buf(),
            build_args: build_args.iter().cloned().collect(),
            used_args: BTreeSet::new(),
            escape: '\\',
            global_args: BTreeMap::new(),
            args: BTreeMap::new(),
            env: BTreeMap::new(),
            scratch: false,
            base_lookup: None,
            aliases: &[],
            base: None,
            fatal: None,
            from_line: None,
            workdir: None,
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
            copies: Vec::new(),
            known_dirs: BTreeSet::new(),
            ignore: None,
            draft: Draft::default(),
            last_stage: None,
            runs_seen: false,
            explained: Vec::new(),
            errors: Vec::new(),
            stages: StageCtx::default(),
        }
    }

    /// The environment and working directory the stage's image ends with
    /// (for a later `FROM <stage>`); None when its base was not read.
    fn result_config(&self) -> Option<BaseConfig> {
        let mut env = match (&self.base, self.scratch) {
            (Some(b), _) => b.env.clone(),
            (None, true) => Vec::new(),
            (None, false) => return None,
        };
        for (k, v) in &self.env {
            env.retain(|(x, _)| x != k);
            env.push((k.clone(), v.clone()));
        }
        let workdir = self
            .workdir
            .clone()
            .or_else(|| self.base.as_ref().and_then(|b| b.workdir.clone()));
        Some(BaseConfig { env, workdir })
    }

    /// An earlier stage named by `v` (its name, case-insensitive, or its index).
    fn stage_ref(&self, v: &str) -> Option<usize> {
        if let Some(&i) = self.stages.names.get(&v.to_lowercase()) {
            return Some(i);
        }
        v.parse::<usize>().ok().filter(|&i| i < self.stages.index)
    }

    /// The Dockerfile's line (as written) of byte `pos` of the parsed text.
    fn line_of(&self, pos: usize) -> usize {
        let line = self.text[..pos.min(self.text.len())].matches('\n').count() + 1;
        self.lines.map_or(line, |(r, _)| r.line(line))
    }

    /// Physical line `line` of the Dockerfile as written (an instruction's
    /// first line), without its continuation escape.
    fn source_line(&self, line: usize) -> String {
        let text = self.lines.map_or(self.text, |(_, original)| original);
        let first = text.lines().nth(line - 1).unwrap_or("").trim_end();
        let first = first.strip_suffix(self.escape).unwrap_or(first).trim_end();
        kiln_core::url::redact(first)
    }

    pub(crate) fn explain(&mut self, line: usize, treatment: Treatment, detail: String) {
        let instruction = if line == 0 {
            String::new()
        } else {
            self.source_line(line).trim_start().to_string()
        };
        self.push(line, instruction, treatment, detail);
    }

    pub(crate) fn push(
        &mut self,
        line: usize,
        instruction: String,
        treatment: Treatment,
        mut detail: String,
    ) {
        if self.runs_seen
            && matches!(
                treatment,
                Treatment::Apt | Treatment::Pip | Treatment::Conda
            )
        {
            detail.push_str(
                "; installed before the sandboxed RUN lines above it (kiln's native stages come first)",
            );
        }
        self.explained.push(Explained {
            stage: None,
            line,
            instruction,
            treatment,
            detail,
        });
    }

    /// The stage's ARGs that have a value (a RUN's environment has them).
    pub(crate) fn set_args(&self) -> BTreeMap<String, String> {
        self.args
            .iter()
            .filter_map(|(k, v)| match v {
                Var::Set(v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// The USER in force (set by this Dockerfile; else the base's applies).
    pub(crate) fn user(&self) -> Option<String> {
        self.draft.config.user.clone()
    }

    /// How many `[[files]]` entries the COPY/ADD lines so far made.
    pub(crate) fn files_so_far(&self) -> usize {
        self.draft.files.len()
    }

    pub(crate) fn add_run(&mut self, step: run::RunDraft) {
        self.draft.run.push(step);
    }

    pub(crate) fn invalid(
        &self,
        line: usize,
        instruction: &str,
        message: impl Into<String>,
    ) -> DockerfileError {
        DockerfileError::Invalid {
            path: self.path.clone(),
            line,
            instruction: instruction.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(
        &self,
        line: usize,
        instruction: &str,
        what: impl Into<String>,
    ) -> DockerfileError {
        DockerfileError::NotSupported {
            path: self.path.clone(),
            line,
            instruction: instruction.into(),
            what: what.into(),
        }
    }

    /// The variable lookup inside the stage: ENV, then ARG; else unknown
    /// (empty on a scratch base, which has no environment).
    pub(crate) fn var(&self, name: &str) -> Var {
        if let Some(v) = self.env.get(name) {
            return Var::Set(v.clone());
        }
        if let Some(v) = self.args.get(name) {
            return v.clone();
        }
        if let Some(b) = &self.base {
            // BuildKit: the base's environment, else empty.
            return match b.env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => Var::Set(v.clone()),
                None => Var::Unset,
            };
        }
        if self.scratch {
            Var::Unset
        } else {
            Var::Unknown
        }
    }

    fn expand(&self, line: usize, ins: &str, s: &str) -> Res<String> {
        lex::word(s, self.escape, &|n| self.var(n)).map_err(|m| self.invalid(line, ins, m))
    }

    fn expand_words(&self, line: usize, ins: &str, s: &str) -> Res<Vec<String>> {
        lex::words(s, self.escape, &|n| self.var(n)).map_err(|m| self.invalid(line, ins, m))
    }

    /// `KEY=VALUE …` (or the legacy `KEY VALUE`) of ENV and LABEL.
    fn pairs(&self, line: usize, ins: &str, s: &str) -> Res<Vec<(String, String)>> {
        let raw = lex::split_raw(s, self.escape).map_err(|m| self.invalid(line, ins, m))?;
        let Some(first) = raw.first() else {
            return Err(self.invalid(line, ins, "expected KEY=VALUE"));
        };
        if !first.contains('=') {
            // Legacy form: the rest of the line is the value.
            let value = s.trim_start()[first.len()..].trim();
            let key = self.expand(line, ins, first)?;
            return Ok(vec![(key, self.expand(line, ins, value)?)]);
        }
        raw.iter()
            .map(|w| {
                let Some((k, v)) = w.split_once('=') else {
                    return Err(self.invalid(line, ins, format!("`{w}`: expected KEY=VALUE")));
                };
                Ok((self.expand(line, ins, k)?, self.expand(line, ins, v)?))
            })
            .collect()
    }

    /// An absolute image path: relative ones are taken from WORKDIR.
    pub(crate) fn absolute(&self, line: usize, ins: &str, p: &str) -> Res<String> {
        let joined = if p.starts_with('/') {
            p.to_string()
        } else {
            let base_wd = self.base.as_ref().map(|b| {
                b.workdir
                    .clone()
                    .filter(|w| w.starts_with('/'))
                    .unwrap_or("/".into())
            });
            let wd = match (&self.workdir, self.scratch) {
                (Some(w), _) => w.clone(),
                (None, true) => "/".into(),
                (None, false) if base_wd.is_some() => base_wd.expect("checked"),
                (None, false) => {
                    return Err(self.invalid(
                        line,
                        ins,
                        format!(
                            "`{p}` is relative and no WORKDIR comes before it (the base image's working directory was not read); use an absolute path or set WORKDIR"
                        ),
                    ))
                }
            };
            format!("{}/{p}", wd.trim_end_matches('/'))
        };
        let mut parts: Vec<&str> = Vec::new();
        for s in joined.split('/') {
            match s {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    fn instruction(&mut self, ins: &Instruction) -> Res<()> {
        if let Instruction::From(f) = ins {
            return self.from(f);
        }
        if let Instruction::Arg(a) = ins {
            return self.arg(a);
        }
        let Some(_) = self.from_line else {
            unreachable!("the parser requires FROM before other instructions")
        };
        match ins {
            Instruction::Env(e) => {
                let line = self.line_of(e.env.span.start);
                let pairs = self.pairs(line, "ENV", &e.arguments.value)?;
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    if k.is_empty() || k.contains('=') {
                        return Err(self.invalid(
                            line,
                            "ENV",
                            format!("invalid variable name `{k}`"),
                        ));
                    }
                    shown.push(format!("{k}={v}"));
                    self.env.insert(k.clone(), v.clone());
                    self.draft.config.env.insert(k, v);
                }
                self.explain(
                    line,
                    Treatment::Config,
                    format!("[config] env {}", shown.join(" ")),
                );
            }
            Instruction::Label(l) => {
                let line = self.line_of(l.label.span.start);
                let pairs = self.pairs(line, "LABEL", &l.arguments.value)?;
                let n = pairs.len();
                self.draft.config.labels.extend(pairs);
                self.explain(line, Treatment::Config, format!("[config] labels ({n})"));
            }
            Instruction::User(u) => {
                let line = self.line_of(u.user.span.start);
                let v = self.expand(line, "USER", &u.arguments.value)?;
                User::from_str(&v).map_err(|m| self.invalid(line, "USER", m))?;
                self.explain(line, Treatment::Config, format!("[config] user = {v:?}"));
                self.draft.config.user = Some(v);
            }
            Instruction::Workdir(w) => {
                let line = self.line_of(w.workdir.span.start);
                let v = self.expand(line, "WORKDIR", &w.arguments.value)?;
                let abs = self.absolute(line, "WORKDIR", &v)?;
                self.explain(
                    line,
                    Treatment::Config,
                    format!("[config] workdir = {abs:?} (not created in the image; the runtime creates it)"),
                );
                self.workdir = Some(abs.clone());
                self.add_dir_and_parents(&abs);
                self.draft.config.workdir = Some(abs);
            }
            Instruction::Expose(e) => {
                let line = self.line_of(e.expose.span.start);
                let mut ports = Vec::new();
                for a in &e.arguments {
                    for p in self.expand_words(line, "EXPOSE", &a.value)? {
                        if p.split('/').next().is_some_and(|n| n.contains('-')) {
                            return Err(self.unsupported(
                                line,
                                "EXPOSE",
                                format!("the port range `{p}`"),
                            ));
                        }
                        let port =
                            Port::from_str(&p).map_err(|m| self.invalid(line, "EXPOSE", m))?;
                        ports.push(port.0);
                    }
                }
                self.explain(
                    line,
                    Treatment::Config,
                    format!("[config] exposed_ports {}", ports.join(" ")),
                );
                self.draft.config.exposed_ports.extend(ports);
            }
            Instruction::Volume(v) => {
                let line = self.line_of(v.volume.span.start);
                let raw: Vec<String> = match &v.arguments {
                    JsonOrStringArray::Json(a) => {
                        a.value.iter().map(|s| s.value.to_string()).collect()
                    }
                    JsonOrStringArray::String(a) => a.iter().map(|s| s.value.to_string()).collect(),
                };
                let mut vols = Vec::new();
                for r in raw {
                    for p in self.expand_words(line, "VOLUME", &r)? {
                        let abs =
                            AbsPath::from_str(&p).map_err(|m| self.invalid(line, "VOLUME", m))?;
                        vols.push(abs.0);
                    }
                }
                self.explain(
                    line,
                    Treatment::Config,
                    format!("[config] volumes {}", vols.join(" ")),
                );
                self.draft.config.volumes.extend(vols);
            }
            Instruction::Stopsignal(s) => {
                let line = self.line_of(s.stopsignal.span.start);
                let v = self.expand(line, "STOPSIGNAL", &s.arguments.value)?;
                self.explain(
                    line,
                    Treatment::Config,
                    format!("[config] stop_signal = {v:?}"),
                );
                self.draft.config.stop_signal = Some(v);
            }
            Instruction::Shell(s) => {
                let line = self.line_of(s.shell.span.start);
                self.shell = s.arguments.iter().map(|a| a.value.to_string()).collect();
                self.explain(
                    line,
                    Treatment::Config,
                    format!(
                        "shell for later shell-form CMD/ENTRYPOINT/RUN: {:?}",
                        self.shell
                    ),
                );
            }
            Instruction::Cmd(c) => {
                let line = self.line_of(c.cmd.span.start);
                let argv = self.command(line, "CMD", &c.arguments)?;
                self.explain(line, Treatment::Config, format!("[config] cmd = {argv:?}"));
                self.cmd_set = true;
                self.draft.config.cmd = Some(argv);
            }
            Instruction::Entrypoint(e) => {
                let line = self.line_of(e.entrypoint.span.start);
                let argv = self.command(line, "ENTRYPOINT", &e.arguments)?;
                let mut detail = format!("[config] entrypoint = {argv:?}");
                if !self.cmd_set {
                    detail.push_str(" (clears the base image's cmd, as Docker does)");
                }
                self.explain(line, Treatment::Config, detail);
                self.draft.config.entrypoint = Some(argv);
            }
            Instruction::Copy(c) => {
                let line = self.line_of(c.copy.span.start);
                self.copy(line, "COPY", &c.options, &c.src, &c.dest.value)?;
            }
            Instruction::Add(a) => {
                let line = self.line_of(a.add.span.start);
                self.copy(line, "ADD", &a.options, &a.src, &a.dest.value)?;
            }
            Instruction::Run(r) => {
                let line = self.line_of(r.run.span.start);
                self.run(line, r)?;
            }
            Instruction::Healthcheck(h) => {
                let line = self.line_of(h.healthcheck.span.start);
                self.healthcheck(line, h)?;
            }
            Instruction::Onbuild(o) => {
                let line = self.line_of(o.onbuild.span.start);
                return Err(self.unsupported(line, "ONBUILD", "a trigger for later builds"));
            }
            Instruction::Maintainer(m) => {
                let line = self.line_of(m.maintainer.span.start);
                return Err(self.unsupported(
                    line,
                    "MAINTAINER",
                    "the deprecated author field (use LABEL org.opencontainers.image.authors=…)",
                ));
            }
            other => {
                // `Instruction` is non-exhaustive: a new kind is refused.
                let line = self.line_of(instruction_start(other));
                return Err(self.unsupported(line, "instruction", "this instruction"));
            }
        }
        Ok(())
    }

    fn from(&mut self, f: &parse_dockerfile::FromInstruction) -> Res<()> {
        let line = self.line_of(f.from.span.start);
        if let Some(first) = self.from_line {
            return Err(self.unsupported(
                line,
                "FROM",
                format!("a multi-stage build (a second FROM; the first is on line {first})"),
            ));
        }
        self.from_line = Some(line);
        let globals = self.global_args.clone();
        let image = lex::word(&f.image.value, self.escape, &|n| {
            globals.get(n).cloned().unwrap_or(Var::Unset)
        })
        .map_err(|m| self.invalid(line, "FROM", m))?;
        if image.is_empty() {
            return Err(self.invalid(line, "FROM", "the image name is empty"));
        }
        for o in &f.options {
            match &*o.name.value {
                "platform" => {
                    let v = o
                        .value
                        .as_ref()
                        .map(|v| v.value.to_string())
                        .unwrap_or_default();
                    let v = lex::word(&v, self.escape, &|n| {
                        globals.get(n).cloned().unwrap_or(Var::Unset)
                    })
                    .map_err(|m| self.invalid(line, "FROM", m))?;
                    kiln_core::Platform::from_str(&v)
                        .map_err(|e| self.invalid(line, "FROM --platform", e.to_string()))?;
                    self.draft.image.platforms = vec![v];
                }
                other => {
                    return Err(self.unsupported(line, "FROM", format!("the option --{other}")));
                }
            }
        }
        if let Some(i) = self.stages.names.get(&image.to_lowercase()).copied() {
            // An earlier stage: its image, built first; its config is known.
            self.base = self.stages.configs.get(i).cloned().flatten();
            if let Some(w) = self.base.as_ref().and_then(|b| b.workdir.clone()) {
                self.add_dir_and_parents(&w);
            }
            let mut detail = format!(
                "[image] base = stage `{}` (built first, into a scratch OCI layout)",
                self.stages.labels[i]
            );
            if !self.draft.image.platforms.is_empty() {
                detail.push_str(&format!(", platforms = {:?}", self.draft.image.platforms));
            }
            self.draft.image.base = self.stages.images[i].clone();
            self.explain(line, Treatment::Base, detail);
            return Ok(());
        }
        let image = self.alias(&image);
        self.scratch = image == "scratch";
        if let (false, Some(lookup)) = (self.scratch, self.base_lookup) {
            let platform = self.draft.image.platforms.first().map(String::as_str);
            match lookup(&image, platform) {
                Ok(b) => {
                    if let Some(w) = b.as_ref().and_then(|b| b.workdir.clone()) {
                        self.add_dir_and_parents(&w);
                    }
                    self.base = b;
                }
                Err(e) => {
                    self.fatal = Some(
                        e.context(format!("{} line {line}: FROM {image}", self.path.display())),
                    );
                    return Ok(());
                }
            }
        }
        let detail = format!("[image] base = {image:?}");
        let mut detail = match &f.as_ {
            Some((_, name)) => format!("{detail} (stage `{}`)", name.value),
            None => detail,
        };
        if !self.draft.image.platforms.is_empty() {
            detail.push_str(&format!(", platforms = {:?}", self.draft.image.platforms));
        }
        self.draft.image.base = image;
        self.explain(line, Treatment::Base, detail);
        Ok(())
    }

    fn arg(&mut self, a: &parse_dockerfile::ArgInstruction) -> Res<()> {
        let line = self.line_of(a.arg.span.start);
        let raw = lex::split_raw(&a.arguments.value, self.escape)
            .map_err(|m| self.invalid(line, "ARG", m))?;
        let global = self.from_line.is_none();
        let mut shown = Vec::new();
        for w in raw {
            let (name, default) = match w.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (w.clone(), None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.invalid(line, "ARG", format!("invalid name `{name}`")));
            }
            if [
                "TARGETPLATFORM",
                "TARGETOS",
                "TARGETARCH",
                "TARGETVARIANT",
                "BUILDPLATFORM",
                "BUILDOS",
                "BUILDARCH",
                "BUILDVARIANT",
            ]
            .contains(&name.as_str())
                && default.is_none()
                && !self.build_args.contains_key(&name)
            {
                return Err(self.unsupported(
                    line,
                    "ARG",
                    format!("the automatic platform argument {name} (pass --build-arg {name}=…)"),
                ));
            }
            let value = if let Some(v) = self.build_args.get(&name) {
                self.used_args.insert(name.clone());
                Var::Set(v.clone())
            } else if let Some(d) = default {
                let v = if global {
                    let globals = self.global_args.clone();
                    lex::word(&d, self.escape, &|n| {
                        globals.get(n).cloned().unwrap_or(Var::Unset)
                    })
                    .map_err(|m| self.invalid(line, "ARG", m))?
                } else {
                    self.expand(line, "ARG", &d)?
                };
                Var::Set(v)
            } else if !global {
                self.global_args.get(&name).cloned().unwrap_or(Var::Unset)
            } else {
                Var::Unset
            };
            shown.push(match &value {
                Var::Set(v) => format!("{name}={v}"),
                _ => format!("{name} (unset)"),
            });
            if global {
                self.global_args.insert(name, value);
            } else {
                self.args.insert(name, value);
            }
        }
        let scope = if global { "for FROM" } else { "in this stage" };
        self.explain(
            line,
            Treatment::Variable,
            format!("{} {scope}; not in the image", shown.join(" ")),
        );
        Ok(())
    }

    /// CMD/ENTRYPOINT: exec form as is, shell form through SHELL.
    /// `HEALTHCHECK [--interval=…] CMD …` / `HEALTHCHECK NONE` →
    /// `[config.healthcheck]` (docker's `Healthcheck` in the image config).
    fn healthcheck(
        &mut self,
        line: usize,
        h: &parse_dockerfile::HealthcheckInstruction,
    ) -> Res<()> {
        use parse_dockerfile::HealthcheckArguments;
        let mut hc = HealthDraft::default();
        for o in &h.options {
            let name = o.name.value.to_string();
            let v = o
                .value
                .as_ref()
                .map(|v| v.value.to_string())
                .unwrap_or_default();
            let duration = |v: &str| -> Res<String> {
                kiln_spec::spec::Duration::from_str(v)
                    .map(|_| v.to_string())
                    .map_err(|m| self.invalid(line, &format!("HEALTHCHECK --{name}"), m))
            };
            match name.as_str() {
                "interval" => hc.interval = Some(duration(&v)?),
                "timeout" => hc.timeout = Some(duration(&v)?),
                "start-period" => hc.start_period = Some(duration(&v)?),
                "start-interval" => hc.start_interval = Some(duration(&v)?),
                "retries" => {
                    hc.retries = Some(v.parse().map_err(|_| {
                        self.invalid(
                            line,
                            "HEALTHCHECK --retries",
                            format!("`{v}` is not a count"),
                        )
                    })?)
                }
                other => {
                    return Err(self.unsupported(
                        line,
                        "HEALTHCHECK",
                        format!("the option --{other}"),
                    ))
                }
            }
        }
        hc.test = match &h.arguments {
            HealthcheckArguments::None { .. } => vec!["NONE".to_string()],
            HealthcheckArguments::Cmd { arguments, .. } => match arguments {
                Command::Exec(a) => std::iter::once("CMD".to_string())
                    .chain(a.value.iter().map(|s| s.value.to_string()))
                    .collect(),
                Command::Shell(s) => vec![
                    "CMD-SHELL".to_string(),
                    lex::join_continuations(s.value, self.escape),
                ],
                _ => return Err(self.unsupported(line, "HEALTHCHECK", "this form")),
            },
            _ => return Err(self.unsupported(line, "HEALTHCHECK", "this form")),
        };
        if hc.test.len() == 1 && hc.test[0] == "CMD" {
            return Err(self.invalid(line, "HEALTHCHECK", "CMD needs a command"));
        }
        self.explain(
            line,
            Treatment::Config,
            format!("[config.healthcheck] test = {:?}", hc.test),
        );
        self.draft.config.healthcheck = Some(hc);
        Ok(())
    }

    fn command(&self, line: usize, ins: &str, c: &Command) -> Res<Vec<String>> {
        match c {
            Command::Exec(a) => Ok(a.value.iter().map(|s| s.value.to_string()).collect()),
            Command::Shell(s) => {
                let mut v = self.shell.clone();
                v.push(lex::join_continuations(s.value, self.escape));
                Ok(v)
            }
            _ => Err(self.unsupported(line, ins, "this form of the instruction")),
        }
    }

    fn copy(
        &mut self,
        line: usize,
        ins: &str,
        options: &[parse_dockerfile::Flag],
        src: &[Source],
        dest: &str,
    ) -> Res<()> {
        let mut owner = None;
        let mut mode = None;
        let mut from = None;
        let mut checksum = None;
        for o in options {
            let v = o.value.as_ref().map(|v| v.value.to_string());
            match (&*o.name.value, v) {
                ("from", Some(v)) if ins == "COPY" => from = Some(v),
                ("from", _) => {
                    return Err(self.unsupported(
                        line,
                        &format!("{ins} --from"),
                        "ADD from another stage or image (use COPY --from)",
                    ))
                }
                ("chown", Some(v)) => {
                    let v = self.expand(line, ins, &v)?;
                    let spec = if v.contains(':') {
                        v.clone()
                    } else {
                        format!("{v}:{v}")
                    };
                    if !spec
                        .split(':')
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                    {
                        return Err(self.unsupported(
                            line,
                            &format!("{ins} --chown"),
                            format!("the user or group name in `{v}` (names need the image's /etc/passwd; use numeric UID:GID)"),
                        ));
                    }
                    let o = Owner::from_str(&spec).map_err(|m| self.invalid(line, ins, m))?;
                    owner = Some(format!("{}:{}", o.uid, o.gid));
                }
                ("chmod", Some(v)) => {
                    let v = self.expand(line, ins, &v)?;
                    if !v.chars().all(|c| c.is_digit(8)) {
                        return Err(self.unsupported(
                            line,
                            &format!("{ins} --chmod"),
                            format!("the symbolic mode `{v}` (use octal such as 0755)"),
                        ));
                    }
                    let m = Mode::from_str(&v).map_err(|m| self.invalid(line, ins, m))?;
                    mode = Some(m);
                }
                ("link", _) => {}
                ("checksum", Some(v)) if ins == "ADD" => {
                    let v = self.expand(line, ins, &v)?;
                    let hex = v.strip_prefix("sha256:").ok_or_else(|| {
                        self.unsupported(
                            line,
                            "ADD --checksum",
                            format!("the checksum `{v}` (sha256:HEX is read)"),
                        )
                    })?;
                    checksum = Some(hex.to_ascii_lowercase());
                }
                (name, _) => {
                    return Err(self.unsupported(
                        line,
                        &format!("{ins} --{name}"),
                        format!("the option --{name}"),
                    ));
                }
            }
        }
        if let Some(from) = from {
            return self.copy_from(line, &from, owner, mode, src, dest);
        }
        let mut srcs = Vec::new();
        let mut docs = Vec::new();
        for s in src {
            match s {
                Source::Path(p) => srcs.extend(self.expand_words(line, ins, &p.value)?),
                Source::HereDoc(d) => docs.push(d),
                _ => return Err(self.unsupported(line, ins, "this kind of source")),
            }
        }
        if !docs.is_empty() {
            if !srcs.is_empty() || docs.len() > 1 {
                return Err(self.unsupported(
                    line,
                    ins,
                    "a here-document together with other sources",
                ));
            }
            return self.copy_here_doc(line, ins, docs[0], owner, mode, dest);
        }
        let dest_raw = self.expand(line, ins, dest)?;
        let dest_abs = self.absolute(line, ins, &dest_raw)?;
        // Docker copies a file INTO an existing directory: the ones this
        // Dockerfile made (WORKDIR, COPY) and the usual system ones count.
        let dest_dir = dest_raw.ends_with('/')
            || dest_raw == "."
            || dest_raw.ends_with("/.")
            || srcs.len() > 1
            || self.known_dirs.contains(&dest_abs)
            || SYSTEM_DIRS.contains(&dest_abs.as_str());
        if [
            "/etc/apt",
            "/etc/pip.conf",
            "/etc/conda",
            "/root/.condarc",
            "/opt/conda/.condarc",
            "/root/.config/pip",
        ]
        .iter()
        .any(|p| dest_abs == *p || dest_abs.starts_with(&format!("{p}/")))
        {
            return Err(self.unsupported(
                line,
                ins,
                format!(
                    "copying into package-manager configuration (`{dest_abs}`): kiln's native stages read the base image's configuration, not [[files]]"
                ),
            ));
        }
        if self.ignore.is_none() {
            let text =
                std::fs::read_to_string(self.context.join(".dockerignore")).unwrap_or_default();
            self.ignore = Some(ignore::Ignore::parse(&text));
        }
        let remote = |s: &str| s.starts_with("http://") || s.starts_with("https://");
        if ins == "ADD" && srcs.iter().any(|s| remote(s)) {
            if srcs.len() > 1 {
                return Err(self.unsupported(line, ins, "a URL together with other sources"));
            }
            return self.add_url(line, &srcs[0], checksum, owner, mode, dest);
        }
        if checksum.is_some() {
            return Err(self.invalid(line, ins, "--checksum applies to a URL source"));
        }
        for s in srcs {
            if s.contains("://") || s.starts_with("git@") {
                return Err(if ins == "ADD" {
                    self.unsupported(
                        line,
                        ins,
                        format!("a remote source `{}`", kiln_core::url::redact(&s)),
                    )
                } else {
                    self.invalid(
                        line,
                        ins,
                        format!("`{s}`: COPY takes files from the build context, not URLs"),
                    )
                });
            }
            if s.contains(['*', '?', '[']) {
                return Err(self.unsupported(line, ins, format!("the wildcard source `{s}`")));
            }
            let mut parts: Vec<&str> = Vec::new();
            for p in s.split('/') {
                match p {
                    "" | "." => {}
                    ".." => {
                        if parts.pop().is_none() {
                            return Err(self.invalid(
                                line,
                                ins,
                                format!("`{s}` is outside the build context"),
                            ));
                        }
                    }
                    p => parts.push(p),
                }
            }
            let rel = if parts.is_empty() {
                ".".to_string()
            } else {
                parts.join("/")
            };
            let host = self.context.join(&rel);
            let meta = std::fs::metadata(&host).map_err(|e| {
                self.invalid(
                    line,
                    ins,
                    format!(
                        "`{s}` not found in the build context {}: {e}",
                        self.context.display()
                    ),
                )
            })?;
            let ignore = self.ignore.as_ref().expect("set above");
            if rel != "." && ignore.excluded(&rel) {
                return Err(self.invalid(line, ins, format!("`{s}` is excluded by .dockerignore")));
            }
            let dir = meta.is_dir();
            // A directory with entries .dockerignore excludes becomes its
            // largest subtrees (and files) that exclude nothing.
            let mut pieces = vec![(rel.clone(), dir)];
            let mut excluded_example = None;
            if dir && !ignore.is_empty() {
                if let Some(x) = first_excluded(ignore, &host, &rel) {
                    pieces = Vec::new();
                    collect_pieces(ignore, &host, &rel, &mut pieces);
                    if pieces.len() > MAX_PIECES {
                        return Err(self.unsupported(
                            line,
                            ins,
                            format!(
                                "copying the directory `{s}` while .dockerignore excludes entries in it (e.g. `{x}`): it would take {} [[files]] layers (at most {MAX_PIECES})",
                                pieces.len()
                            ),
                        ));
                    }
                    excluded_example = Some(x);
                }
            }
            // ADD extracts a local archive into the destination directory.
            let archive = ins == "ADD" && !dir && is_archive(&host);
            let dst_root = if dir || !dest_dir || archive {
                dest_abs.clone()
            } else {
                let base = rel.rsplit('/').next().unwrap_or(&rel);
                format!("{}/{base}", dest_abs.trim_end_matches('/'))
            };
            let mut shown = Vec::new();
            for (piece, piece_dir) in pieces {
                let dst = if piece == rel {
                    dst_root.clone()
                } else {
                    let under = if rel == "." {
                        piece.as_str()
                    } else {
                        &piece[rel.len() + 1..]
                    };
                    format!("{}/{under}", dst_root.trim_end_matches('/'))
                };
                AbsPath::from_str(&dst).map_err(|m| self.invalid(line, ins, m))?;
                shown.push(format!(
                    "src = {piece:?}, dst = {dst:?}{}",
                    if archive {
                        ", extract = true (the archive's members)"
                    } else {
                        ""
                    }
                ));
                self.copies.push(Copied {
                    dst: dst.clone(),
                    src: piece.clone(),
                    dir: piece_dir,
                });
                match (piece_dir, dst.rsplit_once('/')) {
                    (true, _) => self.add_dir_and_parents(&dst),
                    (false, Some((parent, _))) => self.add_dir_and_parents(parent),
                    (false, None) => {}
                }
                self.draft.files.push(FileDraft {
                    src: piece,
                    extract: archive,
                    ..FileDraft::to(dst, owner.clone(), mode)
                });
            }
            let mut detail = format!("[[files]] {}", shown.join("; "));
            if let Some(o) = &owner {
                detail.push_str(&format!(", owner = {o:?}"));
            }
            if let Some(m) = mode {
                detail.push_str(&format!(", mode = \"{:04o}\"", m.0));
            }
            match (&excluded_example, shown.len()) {
                (Some(x), n) => detail.push_str(&format!(
                    " ({n} layer{}: .dockerignore excludes entries such as `{x}`; on top of the package stages)",
                    if n == 1 { "" } else { "s" }
                )),
                (None, _) => detail.push_str(" (one layer, on top of the package stages)"),
            }
            self.explain(line, Treatment::Files, detail);
        }
        Ok(())
    }

    /// `ADD URL DEST`: a `[[files]] url` entry (a destination that is a
    /// directory gets the URL's last path segment as the file name, as
    /// docker does); `--checksum=sha256:HEX` is checked at build time.
    fn add_url(
        &mut self,
        line: usize,
        url: &str,
        checksum: Option<String>,
        owner: Option<String>,
        mode: Option<Mode>,
        dest: &str,
    ) -> Res<()> {
        let dest_raw = self.expand(line, "ADD", dest)?;
        let dest_abs = self.absolute(line, "ADD", &dest_raw)?;
        let into_dir = dest_raw.ends_with('/')
            || self.known_dirs.contains(&dest_abs)
            || SYSTEM_DIRS.contains(&dest_abs.as_str());
        let dst = if into_dir {
            let path = url.split(['?', '#']).next().unwrap_or(url);
            let name = path
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty() && !path.ends_with("//"));
            let Some(name) = name.filter(|_| path.matches('/').count() > 2) else {
                return Err(self.invalid(
                    line,
                    "ADD",
                    format!(
                        "`{}` names no file to put in {dest_abs}",
                        kiln_core::url::redact(url)
                    ),
                ));
            };
            format!("{}/{name}", dest_abs.trim_end_matches('/'))
        } else {
            dest_abs
        };
        AbsPath::from_str(&dst).map_err(|m| self.invalid(line, "ADD", m))?;
        if let Some((parent, _)) = dst.rsplit_once('/') {
            self.add_dir_and_parents(parent);
        }
        let mut detail = format!(
            "[[files]] url = {:?}, dst = {dst:?}",
            kiln_core::url::redact(url)
        );
        if let Some(c) = &checksum {
            detail.push_str(&format!(", sha256 = {c:?}"));
        } else {
            detail.push_str(" (no --checksum: the download is not pinned)");
        }
        self.explain(line, Treatment::Files, detail);
        self.draft.files.push(FileDraft {
            url: Some(url.to_string()),
            sha256: checksum,
            ..FileDraft::to(dst, owner, mode)
        });
        Ok(())
    }

    /// `COPY <<EOF /path` (and ADD): a file whose text is the document
    /// (variables expanded unless the delimiter is quoted, as BuildKit).
    fn copy_here_doc(
        &mut self,
        line: usize,
        ins: &str,
        doc: &parse_dockerfile::HereDoc,
        owner: Option<String>,
        mode: Option<Mode>,
        dest: &str,
    ) -> Res<()> {
        let text = if doc.expand {
            let vars = |n: &str| self.var(n);
            lex::expand_text(&doc.value, self.escape, &vars)
                .map_err(|m| self.invalid(line, ins, m))?
        } else {
            doc.value.to_string()
        };
        let dest_raw = self.expand(line, ins, dest)?;
        let dest_abs = self.absolute(line, ins, &dest_raw)?;
        if dest_raw.ends_with('/') {
            return Err(self.invalid(
                line,
                ins,
                "a here-document needs a file destination, not a directory",
            ));
        }
        AbsPath::from_str(&dest_abs).map_err(|m| self.invalid(line, ins, m))?;
        if let Some((parent, _)) = dest_abs.rsplit_once('/') {
            self.add_dir_and_parents(parent);
        }
        self.explain(
            line,
            Treatment::Files,
            format!(
                "[[files]] content ({} bytes), dst = {dest_abs:?} (one layer, on top of the package stages)",
                text.len()
            ),
        );
        self.draft.files.push(FileDraft {
            content: Some(text),
            ..FileDraft::to(dest_abs, owner, mode)
        });
        Ok(())
    }

    /// The reference an image name stands for ([`Options::aliases`]).
    fn alias(&self, image: &str) -> String {
        self.aliases
            .iter()
            .find(|(a, _)| a == image)
            .map_or_else(|| image.to_string(), |(_, r)| r.clone())
    }

    /// `COPY --from=<stage|index|image>`: `[[files]] from` entries, with
    /// sources taken from the root of that image (not WORKDIR), as docker.
    fn copy_from(
        &mut self,
        line: usize,
        from: &str,
        owner: Option<String>,
        mode: Option<Mode>,
        src: &[Source],
        dest: &str,
    ) -> Res<()> {
        let ins = "COPY --from";
        let v = self.expand(line, ins, from)?;
        let v = match self.stage_ref(&v) {
            Some(_) => v,
            None => self.alias(&v),
        };
        let (image, shown) = if let Some(i) = self.stage_ref(&v) {
            if !self.stages.deps.contains(&i) {
                return Err(self.unsupported(
                    line,
                    ins,
                    format!("`{from}`: naming a stage through a stage's ARG or ENV (name it, or use a global ARG)"),
                ));
            }
            (
                self.stages.images[i].clone(),
                format!("stage `{}`", self.stages.labels[i]),
            )
        } else if v.contains(['/', ':', '@']) {
            (v.clone(), format!("{:?}", kiln_core::url::redact(&v)))
        } else {
            let earlier: Vec<String> = self.stages.labels[..self.stages.index].to_vec();
            return Err(self.invalid(
                line,
                ins,
                format!(
                    "no stage `{v}` before this line (earlier stages: {}); to copy from an image, give its full reference (REGISTRY/REPO:TAG, oci:DIR:TAG)",
                    if earlier.is_empty() {
                        "none".to_string()
                    } else {
                        earlier.join(", ")
                    }
                ),
            ));
        };
        let mut srcs = Vec::new();
        for s in src {
            match s {
                Source::Path(p) => srcs.extend(self.expand_words(line, ins, &p.value)?),
                _ => return Err(self.unsupported(line, ins, "this kind of source")),
            }
        }
        let dest_raw = self.expand(line, ins, dest)?;
        let dest_abs = self.absolute(line, ins, &dest_raw)?;
        AbsPath::from_str(&dest_abs).map_err(|m| self.invalid(line, ins, m))?;
        let into = dest_raw.ends_with('/')
            || dest_raw == "."
            || dest_raw.ends_with("/.")
            || srcs.len() > 1
            || self.known_dirs.contains(&dest_abs)
            || SYSTEM_DIRS.contains(&dest_abs.as_str());
        for s in srcs {
            if s.contains(['*', '?', '[']) {
                return Err(self.unsupported(line, ins, format!("the wildcard source `{s}`")));
            }
            let mut parts: Vec<&str> = Vec::new();
            for p in s.split('/') {
                match p {
                    "" | "." => {}
                    ".." => {
                        parts.pop();
                    }
                    p => parts.push(p),
                }
            }
            let src_abs = format!("/{}", parts.join("/"));
            let mut detail =
                format!("[[files]] from = {shown}, src = {src_abs:?}, dst = {dest_abs:?}");
            if into {
                detail.push_str(" (into the directory)");
            }
            if let Some(o) = &owner {
                detail.push_str(&format!(", owner = {o:?}"));
            }
            if let Some(m) = mode {
                detail.push_str(&format!(", mode = \"{:04o}\"", m.0));
            }
            detail.push_str(" (one layer, on top of the package stages)");
            self.explain(line, Treatment::Files, detail);
            self.draft.files.push(FileDraft {
                from: Some(image.clone()),
                src: src_abs,
                into,
                ..FileDraft::to(dest_abs.clone(), owner.clone(), mode)
            });
        }
        match (into, dest_abs.rsplit_once('/')) {
            (true, _) => self.add_dir_and_parents(&dest_abs),
            (false, Some((parent, _))) => self.add_dir_and_parents(parent),
            (false, None) => {}
        }
        Ok(())
    }

    fn add_dir_and_parents(&mut self, dir: &str) {
        let mut d = dir.trim_end_matches('/').to_string();
        while !d.is_empty() {
            self.known_dirs.insert(d.clone());
            match d.rsplit_once('/') {
                Some((parent, _)) => d = parent.to_string(),
                None => break,
            }
        }
    }

    fn finish(&mut self) -> Res<String> {
        let draft = std::mem::take(&mut self.draft);
        toml::to_string(&draft).map_err(|e| DockerfileError::Invalid {
            path: self.path.clone(),
            line: 0,
            instruction: "(translation)".into(),
            message: format!("cannot write the translated spec: {e}"),
        })
    }

    pub(crate) fn apt(&mut self) -> &mut AptDraft {
        self.draft.apt.get_or_insert_with(AptDraft::default)
    }

    pub(crate) fn pip(&mut self) -> &mut PipDraft {
        self.draft.pip.get_or_insert_with(PipDraft::default)
    }

    pub(crate) fn conda(&mut self) -> &mut CondaDraft {
        self.draft.conda.get_or_insert_with(CondaDraft::default)
    }

    pub(crate) fn has_conda(&self) -> bool {
        self.draft.conda.is_some()
    }

    pub(crate) fn context(&self) -> &Path {
        &self.context
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn shell(&self) -> &[String] {
        &self.shell
    }

    pub(crate) fn escape(&self) -> char {
        self.escape
    }
}

fn instruction_start(i: &Instruction) -> usize {
    match i {
        Instruction::Add(x) => x.add.span.start,
        Instruction::Arg(x) => x.arg.span.start,
        Instruction::Cmd(x) => x.cmd.span.start,
        Instruction::Copy(x) => x.copy.span.start,
        Instruction::Entrypoint(x) => x.entrypoint.span.start,
        Instruction::Env(x) => x.env.span.start,
        Instruction::Expose(x) => x.expose.span.start,
        Instruction::From(x) => x.from.span.start,
        Instruction::Healthcheck(x) => x.healthcheck.span.start,
        Instruction::Label(x) => x.label.span.start,
        Instruction::Maintainer(x) => x.maintainer.span.start,
        Instruction::Onbuild(x) => x.onbuild.span.start,
        Instruction::Run(x) => x.run.span.start,
        Instruction::Shell(x) => x.shell.span.start,
        Instruction::Stopsignal(x) => x.stopsignal.span.start,
        Instruction::User(x) => x.user.span.start,
        Instruction::Volume(x) => x.volume.span.start,
        Instruction::Workdir(x) => x.workdir.span.start,
        _ => 0,
    }
}

/// Directories every Linux base has (FHS): `COPY file /usr/local/bin`
/// copies the file into them, as Docker does for an existing directory.
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/tmp",
    "/var",
    "/root",
    "/home",
    "/srv",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/share",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/local/lib",
    "/usr/local/share",
    "/var/lib",
    "/var/tmp",
];

/// At most this many `[[files]]` entries (layers) for one directory that
/// .dockerignore cuts into pieces.
const MAX_PIECES: usize = 64;

/// The largest subtrees and files under `dir` (context-relative `rel`) that
/// .dockerignore excludes nothing in, in name order.
fn collect_pieces(ignore: &ignore::Ignore, dir: &Path, rel: &str, out: &mut Vec<(String, bool)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let er = if rel == "." {
            name
        } else {
            format!("{rel}/{name}")
        };
        if ignore.excluded(&er) {
            continue;
        }
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && first_excluded(ignore, &e.path(), &er).is_some() {
            collect_pieces(ignore, &e.path(), &er, out);
        } else {
            out.push((er, is_dir));
        }
        if out.len() > MAX_PIECES {
            return;
        }
    }
}

/// The first entry under `dir` (context-relative `rel`) that .dockerignore excludes.
fn first_excluded(ignore: &ignore::Ignore, dir: &Path, rel: &str) -> Option<String> {
    let mut stack = vec![(dir.to_path_buf(), rel.to_string())];
    while let Some((d, r)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).ok()?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let er = if r == "." {
                name
            } else {
                format!("{r}/{name}")
            };
            if ignore.excluded(&er) {
                return Some(er);
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), er));
            }
        }
    }
    None
}

/// A tar or compressed file ADD would extract (by name or magic bytes).
fn is_archive(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if [
        ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".gz",
        ".bz2", ".xz",
    ]
    .iter()
    .any(|s| name.ends_with(s))
    {
        return true;
    }
    let mut bytes = Vec::new();
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    if std::io::Read::read_to_end(&mut std::io::Read::take(f, 512), &mut bytes).is_err() {
        return false;
    }
    bytes.starts_with(&[0x1f, 0x8b])
        || bytes.starts_with(b"BZh")
        || bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || bytes.get(257..262) == Some(b"ustar")
}

#[cfg(test)]
mod tests;
