//! The `kiln` command line: parses arguments and hands off to the library.

use std::path::PathBuf;
use std::process::ExitCode;

mod completions;

use clap::{CommandFactory, Parser, Subcommand};

use kiln::build::{self, BuildOptions, LockMode, LockOptions};
use kiln::{BuildError, Error};
use kiln_core::progress::Progress;
use kiln_fs::layer::tree::SourceScope;
use kiln_fs::layer::Compression;
use kiln_spec::source::{ImageSource, OutputTarget};
use kiln_store::Cache;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Daemonless, native OCI image assembler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    /// Machine-readable JSON on stdout (errors too, as {"error": ...}).
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Registry (HOST[:PORT]) to reach over plain HTTP; loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]", global = true)]
    insecure_registries: Vec<String>,
    /// Cache directory [default: $KILN_CACHE or ~/.cache/kiln].
    #[arg(long, value_name = "DIR", global = true)]
    cache: Option<PathBuf>,
}

/// `kiln build --workspace`: the plan's members, built in order.
#[derive(clap::Args)]
struct WorkspaceArgs {
    /// Build a workspace: SPEC|CONTEXT is kiln-workspace.toml or a directory
    /// at or under its root [default: .]; every planned member is built
    /// (members whose content tag is in the registry are only tagged).
    /// Without --push, images go to layouts under --output DIR
    /// [default: kiln-out]: sci/TARGET and rel/IMAGE/VERSION.
    #[arg(long, conflicts_with_all = ["dockerfile", "requirements", "environment", "tag", "explain", "dry_run", "check_reproducible"])]
    workspace: bool,
    /// With --workspace: only the members changed since REF (and their dependents).
    #[arg(long, value_name = "REF", requires = "workspace")]
    since: Option<String>,
    /// With --workspace: only these members of the plan (their bases must
    /// be built already). Repeatable. Moving tags are then left to --move-tags.
    #[arg(long, value_name = "TARGET", requires = "workspace")]
    only: Vec<String>,
    /// With --workspace: point the moving tags ({version}) of the planned
    /// releases at the images built for them; build nothing.
    #[arg(long, requires = "workspace")]
    move_tags: bool,
    /// With --workspace: members built at the same time where the graph allows.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 2)]
    jobs: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented kiln.toml from flags, or from requirements.txt,
    /// environment.yml and package-list files (apt.txt) in DIR.
    Init {
        /// Where kiln.toml is written [default: .].
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Base image [default: scratch].
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// Repository to push to (`registry/repo`).
        #[arg(long, value_name = "REPO")]
        name: Option<String>,
        /// A Debian package. Repeatable.
        #[arg(long = "apt", value_name = "PKG")]
        apt: Vec<String>,
        /// A Python requirement. Repeatable.
        #[arg(long = "pip", value_name = "REQ")]
        pip: Vec<String>,
        /// A conda MatchSpec. Repeatable.
        #[arg(long = "conda", value_name = "SPEC")]
        conda: Vec<String>,
        /// A file to use (instead of looking in DIR): requirements*.txt,
        /// environment.yml, or a one-package-per-line list (apt unless named
        /// for pip/conda); KIND=FILE picks the kind (apt, pip, conda,
        /// requirements, environment). Repeatable.
        #[arg(long = "from", value_name = "[KIND=]FILE")]
        from: Vec<String>,
        /// Replace an existing kiln.toml.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Build the image described by a spec (default ./kiln.toml).
    Build {
        /// The spec file [default: kiln.toml]; a directory: its kiln.toml,
        /// else its Dockerfile (the directory the context); with
        /// --dockerfile, the build context [default: the Dockerfile's
        /// directory]; a Git URL
        /// (`URL#REF:DIR`, a forge tree/blob URL) is a Dockerfile context.
        #[arg(value_name = "SPEC|CONTEXT")]
        spec: Option<PathBuf>,
        /// Build from a Dockerfile instead of a spec (translated to kiln's
        /// own stages; see --explain); a path or a Git URL.
        #[arg(long, value_name = "PATH|URL")]
        dockerfile: Option<PathBuf>,
        /// A Dockerfile ARG value, NAME=VALUE (NAME alone: from the environment). Repeatable.
        #[arg(long = "build-arg", value_name = "NAME=VALUE")]
        build_args: Vec<String>,
        /// With --dockerfile: show what kiln does with each instruction and
        /// the generated kiln.toml, and build nothing.
        #[arg(long)]
        explain: bool,
        /// With a multi-stage Dockerfile: the stage to build [default: the
        /// last]; only the stages it needs are built.
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// Output: oci:DIR or docker-archive:FILE (repeatable; default oci:kiln-out unless --push).
        #[arg(long, short, value_name = "TARGET")]
        output: Vec<String>,
        /// A name for docker-archive outputs (their RepoTags), instead of
        /// `[image] name` with every tag; NAME alone takes every `[image] tags`. Repeatable.
        #[arg(long = "tag", short = 't', value_name = "NAME[:TAG]")]
        tag: Vec<String>,
        /// Push to [image] name with every tag.
        #[arg(long)]
        push: bool,
        /// With --push: sign the pushed image (its index or manifest digest)
        /// with this ECDSA P-256 private key (PEM), in cosign's format.
        #[arg(
            long,
            value_name = "KEY",
            requires = "push",
            conflicts_with = "workspace"
        )]
        sign: Option<PathBuf>,
        /// Layer compression: gzip or zstd, optionally with :LEVEL (gzip's
        /// default level is 1, the fastest; gzip:6 is ~8% smaller, 1.7× slower).
        #[arg(long, default_value = "gzip", value_name = "ALGO[:LEVEL]")]
        compression: String,
        /// Make no SBOM (by default an SPDX JSON per platform goes beside OCI
        /// layout outputs and is pushed as a referrer of each manifest).
        #[arg(long)]
        no_sbom: bool,
        /// Fail unless kiln.lock exists and matches the spec (shows the difference).
        #[arg(long)]
        locked: bool,
        /// The lock to read [default: kiln.lock beside the spec; NAME.kiln.lock
        /// beside a Dockerfile NAME; ./Dockerfile.kiln.lock for a Git context].
        #[arg(long, value_name = "FILE")]
        lockfile: Option<PathBuf>,
        /// Like --locked: never resolve, build exactly what kiln.lock pins.
        #[arg(long)]
        frozen: bool,
        /// Use no network at all: everything must be in the cache (see `kiln fetch`, `kiln cache import`).
        #[arg(long)]
        offline: bool,
        /// Build a second time (one thread, scratch output) and fail if the digests differ.
        #[arg(long)]
        check_reproducible: bool,
        /// Take nothing an earlier build made: run every `[[run]]` step (a
        /// Dockerfile's RUN lines) and every package stage again, compress
        /// every layer again. Downloads still come from the cache.
        #[arg(long)]
        no_cache: bool,
        /// Run the apt packages' maintainer scripts (preinst, postinst) in an
        /// unprivileged namespace chroot and add their changes as a layer;
        /// the image must be the host's architecture.
        #[arg(long)]
        run_scripts: bool,
        /// Let `[[files]]` sources lie outside the spec's directory (the
        /// build context), e.g. absolute paths or symlinks that leave it.
        #[arg(long)]
        allow_outside_context: bool,
        /// Resolve (from kiln.lock when it matches) and print the plan:
        /// stages, packages, layers built or reused, outputs; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// A line per package added (name, version, ecosystem; downloaded or cached).
        #[arg(long, short)]
        verbose: bool,
        /// The network of `[[run]]` steps (a Dockerfile's RUN lines) that
        /// name none: host (default, like docker) or none.
        #[arg(long, value_name = "host|none")]
        network: Option<kiln_spec::spec::Network>,
        #[command(flatten)]
        env: EnvArgs,
        /// Take a locked build's package stages from this image's stage
        /// records (pushed beside it by kiln) when they match: its layers
        /// are reused, no package is fetched. Repeatable.
        #[arg(long = "cache-from", value_name = "REF")]
        cache_from: Vec<String>,
        #[command(flatten)]
        ws: Box<WorkspaceArgs>,
        #[command(flatten)]
        common: Common,
    },
    /// Resolve every package stage and write kiln.lock beside the spec.
    Lock {
        /// The spec file [default: kiln.toml].
        #[arg(value_name = "SPEC", conflicts_with = "spec_opt")]
        spec: Option<PathBuf>,
        /// The spec file, unambiguous after `--upgrade` (same as the positional SPEC).
        #[arg(long = "spec", value_name = "SPEC")]
        spec_opt: Option<PathBuf>,
        /// Re-resolve even when the lock still matches the spec: everything,
        /// or only the packages named (the others keep their locked versions).
        /// Takes package names only: give the spec first or with --spec.
        #[arg(long, value_name = "PKG", num_args = 0..)]
        upgrade: Option<Vec<String>>,
        /// Lock a Dockerfile build (SPEC is then its context, a path or a
        /// Git URL): its base, packages and Git commits.
        #[arg(long, value_name = "PATH|URL")]
        dockerfile: Option<PathBuf>,
        /// A Dockerfile ARG value, NAME=VALUE (as for `kiln build`). Repeatable.
        #[arg(long = "build-arg", value_name = "NAME=VALUE")]
        build_args: Vec<String>,
        /// With a multi-stage Dockerfile: the stage to lock [default: the last].
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// The lock to write [default: as `kiln build --lockfile`].
        #[arg(long, value_name = "FILE")]
        lockfile: Option<PathBuf>,
        #[command(flatten)]
        env: EnvArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Download everything kiln.lock names into the cache, verified.
    Fetch {
        #[arg(default_value = "kiln.toml")]
        spec: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Move what a lock needs between caches (export/import) or trim the cache (gc).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        #[command(flatten)]
        common: Common,
    },
    /// Run the build service: the HTTP API and build workers (see `kiln-service`).
    ///
    /// Environment: KILN_SERVE_ADMIN_TOKEN (required), KILN_SERVE_VIEWER_TOKEN,
    /// KILN_REGISTRY_ENDPOINT (HOST[:PORT], required with workers),
    /// KILN_REPO_PREFIX, KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD.
    Serve {
        /// ADDR:PORT to listen on (port 0: any free port; printed on stderr).
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Directory for the SQLite database, job directories and the build cache.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Database URL (sqlite://… or postgres://…) [default: sqlite://DIR/kiln.db?mode=rwc].
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Builds to run at once in this process (0: API only).
        #[arg(long, value_name = "N", default_value_t = 1)]
        workers: usize,
    },
    /// Run build workers only, taking jobs from a `kiln serve` database.
    Worker {
        /// Database URL (sqlite://… or postgres://…).
        #[arg(long, value_name = "URL")]
        database: String,
        /// Directory for job directories and the build cache [default: a temporary directory].
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Builds to run at once.
        #[arg(long, value_name = "N", default_value_t = 1)]
        workers: usize,
    },
    /// Plan a workspace build (kiln-workspace.toml): affected members in
    /// build order, the images and tags each produces, rebases.
    Plan {
        /// Only members whose inputs changed since this Git ref (and what builds on them).
        #[arg(long, value_name = "REF")]
        since: Option<String>,
        /// kiln-workspace.toml, or a directory at or under the workspace root.
        #[arg(long, value_name = "PATH", default_value = ".")]
        workspace: PathBuf,
        /// Also show input hashes and why each member is planned.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Generate CI pipelines for a workspace.
    Ci {
        #[command(subcommand)]
        action: CiAction,
        #[command(flatten)]
        common: Common,
    },
    /// Show an image's manifest and config: oci:DIR[:TAG], docker-archive:FILE or a registry reference.
    Inspect {
        reference: String,
        /// Platform to show for a multi-platform image (default: the host's).
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Compare two images: packages per ecosystem, layers, bytes a push of B sends where A is.
    Diff {
        /// The image compared against (oci:DIR[:TAG], docker-archive:FILE or a registry reference).
        a: String,
        /// The image compared.
        b: String,
        /// Platform to compare for multi-platform images (default: the host's).
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Why a package is in an image: its shortest dependency chains from what was requested.
    Why {
        /// oci:DIR[:TAG], docker-archive:FILE or a registry reference.
        image: String,
        /// The package's name (`libblas3`, `numpy`), or ECOSYSTEM:NAME (deb, pypi, conda).
        package: String,
        /// Platform for a multi-platform image (default: the host's).
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Sign an image in a registry (its index or manifest digest) with an
    /// ECDSA P-256 key, in cosign's format: a `sha256-<hex>.sig` tag and an
    /// OCI referrer, which `cosign verify --key` accepts.
    Sign {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:….
        reference: String,
        /// The private key: PEM, PKCS#8 (BEGIN PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Check that an image in a registry carries a signature by KEY that
    /// names its digest (cosign's format); exit 1 when none does.
    Verify {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:….
        reference: String,
        /// The public key: PEM (BEGIN PUBLIC KEY).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Put an image kiln built on a re-pinned base without rebuilding it:
    /// its first layers (its recorded base's) become NEW_BASE's, its own
    /// layers stay; pushed to its repository under --tag.
    Rebase {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:… (built by kiln on a base).
        image: String,
        /// The base to put it on (REGISTRY/REPO:TAG or @sha256:…).
        #[arg(long, value_name = "REF")]
        base: String,
        /// Tags to push the result under [default: IMAGE's tag]. Repeatable.
        #[arg(long = "tag", short = 't', value_name = "TAG")]
        tags: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Print a shell completion script: `source <(kiln completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write kiln.1 and a page per
    /// command into --dir: `kiln man | man -l -`.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The internal command `--run-scripts` re-executes kiln with to set up a
/// script's namespace. Parsed apart from [`Cli`] so that clap never offers
/// it as a suggestion (`kiln run` must not suggest it).
#[derive(Parser)]
#[command(name = "__run-script")]
struct RunScript {
    /// The second half, already inside the namespaces.
    #[arg(long)]
    inside: bool,
    /// host | none.
    #[arg(long, default_value = "none")]
    network: kiln_fs::sandbox::Network,
    /// USER: name or id, optionally :group (default root).
    #[arg(long)]
    user: Option<String>,
    /// The directory to start in.
    #[arg(long)]
    workdir: Option<String>,
    /// A host directory bound read-write at /.kiln-scratch (the tree is
    /// then mounted read-only).
    #[arg(long)]
    scratch: Option<PathBuf>,
    root: PathBuf,
    program: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `kiln __run-script ...` (see [`RunScript`]).
fn run_script(args: RunScript) -> ExitCode {
    let how = kiln_fs::sandbox::Inside {
        network: args.network,
        user: args.user,
        workdir: args.workdir,
        scratch: args.scratch,
    };
    let result = if args.inside {
        kiln_fs::sandbox::enter_and_exec(&args.root, &how, &args.program, &args.args)
    } else {
        kiln_fs::sandbox::namespace_stage(&args.root, &how, &args.program, &args.args)
            .map(|code| std::process::exit(code))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[derive(Subcommand)]
enum CiAction {
    /// Print a pipeline for the workspace plan on stdout.
    Generate {
        /// gitlab: a child pipeline (JSON, which is YAML 1.2); github: a
        /// matrix per dependency level for fromJSON; github-workflow: a
        /// workflow with those levels; json: the plan.
        #[arg(long, value_enum)]
        format: CiFormat,
        /// Only members whose inputs changed since this Git ref (and what builds on them).
        #[arg(long, value_name = "REF")]
        since: Option<String>,
        /// kiln-workspace.toml, or a directory at or under the workspace root.
        #[arg(long, value_name = "PATH", default_value = ".")]
        workspace: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CiFormat {
    Gitlab,
    Github,
    GithubWorkflow,
    Json,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Write every blob the locks need into a tar FILE (zstd when FILE ends in .zst).
    Export {
        file: PathBuf,
        /// A lock whose blobs to export (repeatable).
        #[arg(long, value_name = "PATH", default_value = "kiln.lock")]
        lock: Vec<PathBuf>,
    },
    /// Add the blobs of an export FILE to the cache, each verified.
    Import { file: PathBuf },
    /// Delete cache entries none of the locks needs.
    Gc {
        /// A lock whose blobs to keep (repeatable).
        #[arg(long, value_name = "PATH", default_value = "kiln.lock")]
        lock: Vec<PathBuf>,
        /// Report what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// glibc gives threads that allocate at once arenas of their own, up to 8
/// per core, and memory freed in one arena is not reused by another: with
/// download, unpack and compression pools a build's peak RSS grew with its
/// threads (a cold apt bootstrap: 167 MB, 133 MB with one arena a core on
/// 2 cores). One arena a core keeps the peak near what is live; a
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` setting still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    let set = |k: &str| std::env::var_os(k).is_some();
    if set("MALLOC_ARENA_MAX") || set("GLIBC_TUNABLES") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, cores.min(64) as libc::c_int);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__run-script")
    {
        return run_script(RunScript::parse_from(std::env::args_os().skip(1)));
    }
    // Every HTTP client (reqwest's, oci-client's, gix's) needs rustls's
    // provider; the constructors install it too, this covers any other path.
    kiln_store::http::tls();
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Build { common, .. }
        | Command::Init { common, .. }
        | Command::Inspect { common, .. }
        | Command::Diff { common, .. }
        | Command::Why { common, .. }
        | Command::Lock { common, .. }
        | Command::Fetch { common, .. }
        | Command::Cache { common, .. }
        | Command::Plan { common, .. }
        | Command::Ci { common, .. }
        | Command::Sign { common, .. }
        | Command::Verify { common, .. }
        | Command::Rebase { common, .. } => common.json,
        Command::Serve { .. }
        | Command::Worker { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => false,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let mut v = serde_json::json!({"error": {"kind": e.kind().name(), "message": e.to_string()}});
                // A push that stopped half-way: what is in the registry.
                if let Some(kiln_oci::RegistryError::PushIncomplete {
                    report, tags, step, ..
                }) = e.downcast_ref::<kiln_oci::RegistryError>()
                {
                    v["error"]["push"] = serde_json::json!({
                        "step": step,
                        "done": report,
                        "tags_not_written": tags.iter().filter(|t| !report.tags.contains(t)).collect::<Vec<_>>(),
                    });
                }
                println!("{v}");
            }
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn progress(common: &Common) -> Progress {
    if common.json {
        Progress::hidden()
    } else {
        Progress::new(common.quiet)
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("report serialises")
    );
}

fn cache_dir(common: &Common) -> PathBuf {
    common.cache.clone().unwrap_or_else(Cache::default_root)
}

fn run(cli: Cli) -> kiln::Result<()> {
    match cli.command {
        Command::Completions { shell } => completions::print(shell, Cli::command()),
        Command::Man { dir } => completions::man(Cli::command(), dir.as_deref()),
        Command::Init {
            dir,
            base,
            name,
            apt,
            pip,
            conda,
            from,
            force,
            common,
        } => {
            let report = kiln::init::init(&kiln::init::InitOptions {
                dir,
                name,
                base,
                apt,
                pip,
                conda,
                from,
                force,
            })?;
            if common.json {
                print_json(&report);
            } else if !common.quiet {
                for f in &report.from {
                    eprintln!("using {f}");
                }
                eprintln!("wrote {} ({})", report.path, report.sections.join(", "));
            }
            Ok(())
        }
        Command::Build {
            spec,
            dockerfile,
            build_args,
            explain,
            target,
            output,
            tag,
            push,
            sign,
            compression,
            no_sbom,
            locked,
            lockfile,
            frozen,
            offline,
            check_reproducible,
            no_cache,
            run_scripts,
            allow_outside_context,
            dry_run,
            verbose,
            network,
            env,
            cache_from,
            ws,
            common,
        } => {
            // What the flags set, for one build or each of a workspace's.
            let flags = BuildOptions {
                spec: PathBuf::new(),
                spec_text: None,
                outputs: Vec::new(),
                push,
                compression: Compression::parse(&compression).map_err(Error::Input)?,
                insecure_registries: common.insecure_registries.clone(),
                cache_dir: cache_dir(&common),
                epoch: build::epoch_from_env()?,
                created: build::source_date_epoch()?,
                archive_names: Vec::new(),
                sbom: !no_sbom,
                progress: progress(&common),
                lock_mode: if locked || frozen {
                    LockMode::Locked
                } else {
                    LockMode::Auto
                },
                offline,
                reuse: !no_cache,
                run_scripts,
                source_scope: if allow_outside_context {
                    SourceScope::Host
                } else {
                    SourceScope::Context
                },
                network,
                image_names: Vec::new(),
                cache_from,
                lock_file: lockfile.clone(),
            };
            if ws.workspace {
                let mut o = output;
                if o.len() > 1 {
                    return Err(Error::input(
                        "--workspace takes one --output DIR (the layouts' root)",
                    ));
                }
                let out = o.pop().map_or_else(
                    || PathBuf::from("kiln-out"),
                    |d| PathBuf::from(d.strip_prefix("oci:").unwrap_or(&d)),
                );
                let opts = kiln::workspace_build::WorkspaceOptions {
                    path: spec.unwrap_or_else(|| PathBuf::from(".")),
                    since: ws.since,
                    only: ws.only,
                    move_tags: ws.move_tags,
                    out,
                    jobs: ws.jobs,
                    log: !common.json && !common.quiet,
                    build: flags,
                };
                let report = kiln::workspace_build::build_workspace(&opts)?;
                if common.json {
                    print_json(&report);
                } else if !common.quiet {
                    eprint!("{}", kiln::workspace_build::render(&report, false));
                }
                return Ok(());
            }
            // A bad key fails before anything is built or pushed.
            let signer = sign
                .as_deref()
                .map(kiln_oci::sign::load_private_key)
                .transpose()?;
            let Some(src) = sources(
                Sources {
                    dockerfile,
                    spec,
                    env,
                    build_args,
                    explain,
                    target,
                    offline,
                    lockfile: lockfile.clone(),
                    locked: locked || frozen,
                    refresh_git: false,
                },
                &common,
            )?
            else {
                return Ok(());
            };
            let Source {
                spec,
                spec_text,
                mut explained,
                stages,
                lock_file,
                ..
            } = src;
            let opts = BuildOptions {
                spec,
                spec_text,
                outputs: output
                    .iter()
                    .map(|o| OutputTarget::parse(o))
                    .collect::<kiln::Result<_>>()?,
                archive_names: tag,
                image_names: stages.as_ref().map(|s| s.image_names()).unwrap_or_default(),
                lock_file,
                ..flags
            };
            if dry_run && stages.as_ref().is_some_and(|s| s.has_stages()) {
                return Err(Error::input(
                    "--dry-run of a Dockerfile target that needs other stages is not supported yet \
                     (--explain shows the translation)",
                ));
            }
            // A multi-stage Dockerfile: the stages the target needs, first.
            if let Some(s) = &stages {
                // Each stage from its pins in the target's lock.
                let pinned = stage_locks(opts.lock_file.as_deref(), &opts.spec)?;
                let built = s.build_stages(&opts, &pinned)?;
                if let Some(x) = explained.as_mut().filter(|_| !built.is_empty()) {
                    x["stages"] = serde_json::to_value(&built).expect("report serialises");
                }
                if !common.json && !common.quiet {
                    for b in &built {
                        eprintln!("stage {}: {}", b.stage, b.digest);
                    }
                }
            }
            if dry_run {
                let plan = build::dry_run(&opts)?;
                if common.json {
                    print_json(&plan);
                } else {
                    print!("{}", plan.render());
                }
                return Ok(());
            }
            let report = build::build(&opts)?;
            let signed = match (&signer, &report.push) {
                (Some(key), Some(p)) => Some(sign_pushed(p, key, &common)?),
                _ => None,
            };
            let repro = if check_reproducible {
                let r = build::check_reproducible(&opts, &report)?;
                if !r.reproducible {
                    return Err(BuildError::NotReproducible {
                        first: r.first,
                        second: r.second,
                        differing_layers: r.differing_layers,
                    }
                    .into());
                }
                Some(r)
            } else {
                None
            };
            if common.json {
                let mut v = serde_json::to_value(&report).expect("report serialises");
                if let Some(x) = &explained {
                    v["dockerfile"] = x.clone();
                }
                if let Some(r) = repro {
                    v["reproducible"] = serde_json::to_value(r).expect("report serialises");
                }
                if let Some(r) = &signed {
                    v["signature"] = serde_json::to_value(r).expect("report serialises");
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("report serialises")
                );
            } else if !common.quiet {
                for out in &report.outputs {
                    eprintln!("wrote {out}");
                }
                if let Some(p) = &report.push {
                    eprintln!(
                        "pushed {} ({} uploaded, {} mounted, {} already there)",
                        p.reference, p.blobs_uploaded, p.blobs_mounted, p.blobs_skipped
                    );
                    if p.referrers > 0 {
                        eprintln!("attached {} SBOM referrer(s)", p.referrers);
                    }
                    if let Some(r) = &signed {
                        eprintln!("signed {} ({})", r.digest, r.signature_tag);
                    }
                }
                eprint!("{}", report.summary.render(verbose));
                println!("{}", report.digest);
            } else {
                println!("{}", report.digest);
            }
            Ok(())
        }
        Command::Lock {
            spec,
            spec_opt,
            upgrade,
            dockerfile,
            build_args,
            target,
            lockfile,
            env,
            common,
        } => {
            build::check_upgrade_names(upgrade.as_deref().unwrap_or_default())?;
            let Some(src) = sources(
                Sources {
                    dockerfile,
                    spec: spec.or(spec_opt),
                    env,
                    build_args,
                    explain: false,
                    target,
                    offline: false,
                    lockfile,
                    locked: false,
                    refresh_git: upgrade.is_some(),
                },
                &common,
            )?
            else {
                return Ok(());
            };
            let mut lock = LockOptions {
                spec: src.spec,
                insecure_registries: common.insecure_registries.clone(),
                cache_dir: cache_dir(&common),
                progress: progress(&common),
                upgrade,
                spec_text: src.spec_text,
                lock_file: src.lock_file,
                git: src.fetched.iter().map(|f| f.pin()).collect(),
                image_names: Vec::new(),
                stages: Vec::new(),
            };
            // A target built on other stages: each stage is locked and
            // built first (the next one reads it); their locks go into the
            // target's.
            if let Some(s) = src.stages.as_ref().filter(|s| s.has_stages()) {
                let existing = stage_locks(lock.lock_file.as_deref(), &lock.spec)?;
                let build = BuildOptions {
                    insecure_registries: common.insecure_registries.clone(),
                    ..BuildOptions::defaults(
                        lock.spec.clone(),
                        lock.cache_dir.clone(),
                        Progress::hidden(),
                    )
                };
                lock.stages = s.lock_stages(&build, &lock, &existing)?;
                lock.image_names = s.image_names();
            }
            let report = build::lock(&lock)?;
            if common.json {
                print_json(&report);
            } else if !common.quiet {
                eprintln!(
                    "{} {}: {} platform(s), {} apt, {} conda, {} pip",
                    report.path,
                    report.status,
                    report.platforms,
                    report.apt,
                    report.conda,
                    report.pip
                );
            }
            Ok(())
        }
        Command::Fetch { spec, common } => {
            let report = build::fetch(&LockOptions::for_spec(
                spec,
                common.insecure_registries.clone(),
                cache_dir(&common),
                progress(&common),
            ))?;
            if common.json {
                print_json(&report);
            } else if !common.quiet {
                eprintln!(
                    "fetched {} base blob(s) and {} package(s), {} bytes",
                    report.base_blobs, report.artifacts, report.bytes
                );
            }
            Ok(())
        }
        Command::Cache { action, common } => {
            use kiln::cache_transfer as ct;
            let cache = Cache::open(cache_dir(&common))?;
            let (json, text) = match action {
                CacheAction::Export { file, lock } => {
                    let r = ct::export(&cache, &lock, &file)?;
                    (serde_json::to_value(&r), r.to_string())
                }
                CacheAction::Import { file } => {
                    let r = ct::import(&cache, &file)?;
                    (serde_json::to_value(&r), r.to_string())
                }
                CacheAction::Gc { lock, dry_run } => {
                    let r = ct::gc(&cache, &lock, dry_run)?;
                    (serde_json::to_value(&r), r.to_string())
                }
            };
            if common.json {
                print_json(&json.expect("report serialises"));
            } else {
                println!("{text}");
            }
            Ok(())
        }
        Command::Serve {
            listen,
            data,
            database,
            workers,
        } => kiln_service::serve(kiln_service::ServeOptions {
            listen,
            data,
            database,
            workers,
        }),
        Command::Worker {
            database,
            data,
            workers,
        } => kiln_service::worker(kiln_service::WorkerOptions {
            database,
            data,
            workers,
        }),
        Command::Plan {
            since,
            workspace,
            verbose,
            common,
        } => {
            let (_, plan) = kiln_workspace::plan_at(&workspace, since.as_deref())?;
            if common.json {
                print_json(&kiln_workspace::ci::plan_json(&plan));
            } else {
                print!("{}", plan.render_text(verbose));
            }
            Ok(())
        }
        Command::Ci {
            action:
                CiAction::Generate {
                    format,
                    since,
                    workspace,
                },
            ..
        } => {
            let (_, plan) = kiln_workspace::plan_at(&workspace, since.as_deref())?;
            let doc = match format {
                CiFormat::Gitlab => kiln_workspace::ci::gitlab(&plan),
                CiFormat::Github => kiln_workspace::ci::github(&plan),
                CiFormat::GithubWorkflow => kiln_workspace::ci::github_workflow(&plan),
                CiFormat::Json => kiln_workspace::ci::plan_json(&plan),
            };
            print_json(&doc);
            Ok(())
        }
        Command::Inspect {
            reference,
            platform,
            common,
        } => {
            let src = ImageSource::parse(&reference, std::path::Path::new("."))?;
            if matches!(src, ImageSource::Scratch) {
                return Err(BuildError::InspectScratch.into());
            }
            let platform = platform.map(|p| p.parse()).transpose()?;
            let cache = Cache::open(cache_dir(&common))?;
            let report = kiln_oci::inspect::inspect_detailed(
                &src,
                platform,
                &common.insecure_registries,
                &cache,
                kiln_sbom::MEDIA_TYPE,
                &kiln_sbom::file_name,
            )?;
            if common.json {
                print_json(&report);
            } else {
                print!("{}", kiln_oci::inspect::render(&report));
            }
            Ok(())
        }
        Command::Diff {
            a,
            b,
            platform,
            common,
        } => {
            let platform: Option<kiln_core::platform::Platform> =
                platform.map(|p| p.parse()).transpose()?;
            let cache = Cache::open(cache_dir(&common))?;
            let insecure = &common.insecure_registries;
            let a = kiln::packages::load(&a, platform.clone(), insecure, &cache)?;
            let b = kiln::packages::load(&b, platform, insecure, &cache)?;
            let report = kiln::diff::diff(&a, &b);
            if common.json {
                print_json(&report);
            } else {
                print!("{}", kiln::diff::render(&report));
            }
            Ok(())
        }
        Command::Why {
            image,
            package,
            platform,
            common,
        } => {
            let platform = platform.map(|p| p.parse()).transpose()?;
            let cache = Cache::open(cache_dir(&common))?;
            let c = kiln::packages::load(&image, platform, &common.insecure_registries, &cache)?;
            let report = kiln::why::why(&c, &package)?;
            if common.json {
                print_json(&report);
            } else {
                print!("{}", kiln::why::render(&report));
            }
            Ok(())
        }
        Command::Sign {
            reference,
            key,
            common,
        } => {
            let r = kiln_oci::sign::registry_reference(&reference)?;
            let key = kiln_oci::sign::load_private_key(&key)?;
            let report = kiln_oci::sign::sign_reference(&r, &common.insecure_registries, &key)?;
            if common.json {
                print_json(&report);
            } else if !common.quiet {
                let what = if report.already_signed {
                    "already signed"
                } else {
                    "signed"
                };
                eprintln!("{what} {} ({})", report.digest, report.signature_tag);
            }
            Ok(())
        }
        Command::Rebase {
            image,
            base,
            tags,
            common,
        } => {
            let report = kiln::rebase::rebase(&kiln::rebase::RebaseOptions {
                image,
                base,
                tags,
                insecure_registries: common.insecure_registries.clone(),
                cache_dir: cache_dir(&common),
                progress: progress(&common),
            })?;
            if common.json {
                print_json(&report);
            } else {
                if !common.quiet {
                    eprintln!(
                        "rebased {} from {} onto {} ({} of its own layers kept; {} blobs uploaded)",
                        report.image,
                        report.old_bases.join(", "),
                        report.new_base,
                        report.kept_layers.iter().sum::<usize>(),
                        report.push.blobs_uploaded
                    );
                }
                println!("{}", report.digest);
            }
            Ok(())
        }
        Command::Verify {
            reference,
            key,
            common,
        } => {
            let r = kiln_oci::sign::registry_reference(&reference)?;
            let key = kiln_oci::sign::load_public_key(&key)?;
            let report = kiln_oci::sign::verify_reference(&r, &common.insecure_registries, &key)?;
            if common.json {
                print_json(&report);
            } else if !common.quiet {
                eprintln!(
                    "verified {}: {} of {} signature(s) by {}",
                    report.digest,
                    report.verified.len(),
                    report.signatures_checked,
                    key.path().display()
                );
            }
            Ok(())
        }
    }
}

/// `kiln build --push --sign KEY`: sign the digest just pushed, under the
/// image's name.
fn sign_pushed(
    pushed: &kiln_oci::output::push::PushReport,
    key: &kiln_oci::sign::PrivateKey,
    common: &Common,
) -> kiln::Result<kiln_oci::sign::SignReport> {
    let tagged = kiln_oci::sign::registry_reference(&pushed.reference)?;
    let r = oci_client::Reference::with_digest(
        tagged.registry().into(),
        tagged.repository().into(),
        pushed.digest.clone(),
    );
    kiln_oci::sign::sign_reference(&r, &common.insecure_registries, key)
}

/// A spec whose `[image] dockerfile` names its Dockerfile.
struct SpecDockerfile {
    dockerfile: PathBuf,
    context: PathBuf,
    build_args: std::collections::BTreeMap<String, String>,
    /// The spec's `[image]` keys that apply to the Dockerfile's image.
    image: toml::Table,
}

/// Read the spec (when it exists) for `[image] dockerfile`.
fn spec_dockerfile(spec: Option<&std::path::Path>) -> kiln::Result<Option<SpecDockerfile>> {
    let path = spec.unwrap_or(std::path::Path::new("kiln.toml"));
    if path.is_dir() || !path.exists() {
        return Ok(None);
    }
    let parsed = kiln_spec::Spec::load(path)?;
    let Some(df) = parsed.image.dockerfile.clone() else {
        return Ok(None);
    };
    let table: toml::Table =
        toml::from_str(&parsed.text).map_err(|e| Error::input(e.to_string()))?;
    let mut image = table
        .get("image")
        .and_then(|i| i.as_table())
        .cloned()
        .unwrap_or_default();
    image.remove("dockerfile");
    image.remove("build-args");
    image.remove("context");
    let dir = parsed.dir();
    let context = match &parsed.image.context {
        Some(c) => dir.join(c),
        None => dir.clone(),
    };
    Ok(Some(SpecDockerfile {
        dockerfile: dir.join(df),
        context,
        build_args: parsed.image.build_args.clone(),
        image,
    }))
}

/// The translated spec with the outer spec's `[image]` keys on top.
fn overlay_image(text: &str, image: toml::Table) -> kiln::Result<String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| Error::input(e.to_string()))?;
    let target = doc
        .entry("image")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .ok_or_else(|| Error::input("the translated spec has no [image] table"))?;
    for (k, v) in image {
        target.insert(k, v);
    }
    toml::to_string(&doc).map_err(|e| Error::input(e.to_string()))
}

/// `kiln build --dockerfile`: the translated spec's path (in the context,
/// never written), its text and the explanation for `--json`; `None` when
/// `--explain` printed the translation and there is nothing to build.
/// The Dockerfile flags of `kiln build`.
struct DockerfileArgs<'a> {
    build_args: &'a [String],
    explain: bool,
    target: Option<String>,
    offline: bool,
}

/// The translated spec's path, its text, the explanation for `--json` and
/// the stages to build before it.
type DockerfileSpec = (
    PathBuf,
    String,
    serde_json::Value,
    kiln::dockerfile_build::Prepared,
);

/// The Dockerfile stages' locks in the target's lock (`lock_file`, else
/// kiln.lock beside `spec`); none when there is no lock yet.
fn stage_locks(
    lock_file: Option<&std::path::Path>,
    spec: &std::path::Path,
) -> kiln::Result<Vec<kiln_spec::lock::StageLock>> {
    let path = lock_file.map_or_else(|| kiln_spec::lock::path_for(spec), PathBuf::from);
    Ok(kiln_spec::lock::Lock::read(&path)?
        .map(|l| l.stages)
        .unwrap_or_default())
}

/// `--requirements`/`--environment`: an image from one environment file.
#[derive(clap::Args, Debug, Clone, Default)]
struct EnvArgs {
    /// Build from a requirements.txt alone (a file or a Git URL, a
    /// forge's file page included), installed on --base.
    #[arg(long, value_name = "FILE|URL", conflicts_with_all = ["dockerfile", "environment"])]
    requirements: Option<String>,
    /// Build from a conda environment.yml alone (a file or a Git URL).
    #[arg(long, value_name = "FILE|URL", conflicts_with = "dockerfile")]
    environment: Option<String>,
    /// With --requirements/--environment: the base image [environment: scratch].
    #[arg(long, value_name = "IMAGE")]
    base: Option<String>,
    /// With --requirements/--environment: the image's name (REGISTRY/REPO), for --push.
    #[arg(long, value_name = "REGISTRY/REPO")]
    name: Option<String>,
}

/// What a build or a lock reads, before any package is resolved.
struct Sources {
    dockerfile: Option<PathBuf>,
    /// The spec, or the context of a Dockerfile (a path or a Git URL).
    spec: Option<PathBuf>,
    /// `--requirements`/`--environment`: a spec made for that file.
    env: EnvArgs,
    build_args: Vec<String>,
    explain: bool,
    target: Option<String>,
    offline: bool,
    /// `--lockfile`.
    lockfile: Option<PathBuf>,
    /// `--locked`/`--frozen`: every Git source needs its commit in the lock.
    locked: bool,
    /// `kiln lock --upgrade`: resolve Git refs again instead of taking the
    /// locked commits.
    refresh_git: bool,
}

/// The spec to build: a file, or a Dockerfile's translation (with the
/// stages its target needs and the Git sources it came from).
struct Source {
    spec: PathBuf,
    spec_text: Option<String>,
    explained: Option<serde_json::Value>,
    stages: Option<kiln::dockerfile_build::Prepared>,
    fetched: Vec<kiln_dockerfile::GitFetched>,
    /// The lock when not kiln.lock beside the spec.
    lock_file: Option<PathBuf>,
}

/// `kiln build DIR`, as `docker build DIR` reads it: DIR's kiln.toml, else
/// DIR's Dockerfile with DIR as its context.
fn spec_in_dir(dir: PathBuf) -> kiln::Result<(Option<PathBuf>, Option<PathBuf>)> {
    let spec = dir.join("kiln.toml");
    if spec.is_file() {
        return Ok((Some(spec), None));
    }
    let dockerfile = dir.join(kiln_dockerfile::DEFAULT_NAME);
    if dockerfile.is_file() {
        return Ok((Some(dir), Some(dockerfile)));
    }
    Err(Error::input(format!(
        "{} is a directory with neither a kiln.toml nor a {}: name the spec file, \
         or the Dockerfile with --dockerfile",
        dir.display(),
        kiln_dockerfile::DEFAULT_NAME
    )))
}

/// Fetch Git sources (at the commits the lock pins, unless refreshing) and
/// translate a Dockerfile; `None` when `--explain` printed everything.
fn sources(src: Sources, common: &Common) -> kiln::Result<Option<Source>> {
    let Sources {
        dockerfile,
        spec,
        env,
        build_args,
        explain,
        target,
        offline,
        lockfile,
        locked,
        refresh_git,
    } = src;
    let (spec, dockerfile) = match (spec, dockerfile) {
        (Some(dir), None)
            if dir.is_dir() && env.requirements.is_none() && env.environment.is_none() =>
        {
            spec_in_dir(dir)?
        }
        other => other,
    };
    if (env.base.is_some() || env.name.is_some())
        && env.requirements.is_none()
        && env.environment.is_none()
    {
        return Err(Error::input(
            "--base and --name go with --requirements or --environment",
        ));
    }
    let is_git = |p: Option<&str>| p.is_some_and(kiln_git::GitSource::looks_like_git);
    let env_file = env.requirements.as_deref().or(env.environment.as_deref());
    let from_git = is_git(dockerfile.as_deref().and_then(|p| p.to_str()))
        || is_git(spec.as_deref().and_then(|p| p.to_str()))
        || is_git(env_file);
    // The lock of a Dockerfile or environment-file build (read first: it
    // pins the Git commits): beside a local Dockerfile, else in the current
    // directory for what came from Git.
    let explicit_lock = lockfile.clone();
    let lock_file = lockfile.or_else(|| {
        let name = match env_file {
            Some(f) => f.rsplit(['/', ':']).next().unwrap_or(f),
            None => kiln_dockerfile::DEFAULT_NAME,
        };
        match (&dockerfile, from_git) {
            (_, true) => Some(kiln_spec::lock::path_for_source(
                std::path::Path::new(name),
                true,
            )),
            (Some(df), false) => Some(kiln_spec::lock::path_for_source(df, false)),
            (None, false) => None,
        }
    });
    let locked_git = match (&lock_file, refresh_git) {
        (Some(path), false) if from_git => kiln_spec::lock::Lock::read(path)?
            .map(|l| l.git)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let pins = kiln_dockerfile::GitPins {
        pins: &locked_git,
        required: lock_file.as_deref().filter(|_| locked),
    };
    // `--requirements`/`--environment`: a spec made for that file.
    let mut env_fetched = Vec::new();
    let (spec, env_text) = match env_file {
        None => (spec, None),
        Some(_) => {
            let e = kiln::env_source::env_spec(
                &kiln::env_source::EnvRequest {
                    requirements: env.requirements.as_deref(),
                    environment: env.environment.as_deref(),
                    base: env.base.as_deref(),
                    name: env.name.as_deref(),
                },
                &cache_dir(common),
                offline,
                &pins,
            )?;
            env_fetched.extend(e.fetched);
            (Some(e.spec_path), Some(e.spec_text))
        }
    };
    // Git URLs (the context, the Dockerfile): fetched into the cache
    // and replaced by their trees there.
    let git = kiln_dockerfile::git_inputs(
        dockerfile.as_deref(),
        spec.as_deref(),
        &cache_dir(common),
        offline,
        &pins,
    )?;
    let (dockerfile, spec, mut fetched) = match git {
        Some(g) => (Some(g.dockerfile), g.context, g.fetched),
        None => (dockerfile, spec, Vec::new()),
    };
    fetched.extend(env_fetched);
    if !common.json && !common.quiet {
        for f in &fetched {
            eprintln!("git: {} at {}", f.url, f.commit);
        }
    }
    // `[image] dockerfile` in a spec: that Dockerfile, the spec's
    // directory as its context, under the spec's name and tags (and the
    // spec's own kiln.lock).
    let (dockerfile, spec, build_args, outer, lock_file) = match dockerfile {
        Some(df) => (Some(df), spec, build_args, None, lock_file),
        None => match spec_dockerfile(spec.as_deref())? {
            Some(s) => {
                let mut args: Vec<String> = s
                    .build_args
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                args.extend(build_args);
                // `--lockfile` wins over the spec's own kiln.lock.
                let own = explicit_lock
                    .clone()
                    .or_else(|| spec.as_deref().map(kiln_spec::lock::path_for));
                (
                    Some(s.dockerfile),
                    Some(s.context),
                    args,
                    Some(s.image),
                    own,
                )
            }
            None => (None, spec, build_args, None, lock_file),
        },
    };
    // Checked here, not by clap: a Git context brings its Dockerfile.
    if dockerfile.is_none() && (explain || !build_args.is_empty() || target.is_some()) {
        return Err(Error::input(
            "--explain, --build-arg and --target need a Dockerfile build: --dockerfile PATH|URL \
             or a Git context URL",
        ));
    }
    let (spec, spec_text, mut explained, stages) = match dockerfile {
        None => (
            spec.unwrap_or_else(|| PathBuf::from("kiln.toml")),
            env_text,
            None,
            None,
        ),
        Some(df) => {
            let args = DockerfileArgs {
                build_args: &build_args,
                explain,
                target,
                offline,
            };
            match dockerfile_spec(&df, spec, args, common)? {
                Some((path, toml, explained, stages)) => {
                    (path, Some(toml), Some(explained), Some(stages))
                }
                None => return Ok(None),
            }
        }
    };
    let spec_text = match (spec_text, outer) {
        (Some(text), Some(image)) => Some(overlay_image(&text, image)?),
        (text, _) => text,
    };
    if let Some(x) = explained.as_mut().filter(|_| !fetched.is_empty()) {
        x["git"] = serde_json::to_value(&fetched).expect("report serialises");
    }
    Ok(Some(Source {
        spec,
        spec_text,
        explained,
        stages,
        fetched,
        lock_file,
    }))
}

fn dockerfile_spec(
    dockerfile: &std::path::Path,
    context: Option<PathBuf>,
    args: DockerfileArgs,
    common: &Common,
) -> kiln::Result<Option<DockerfileSpec>> {
    let DockerfileArgs {
        build_args,
        explain,
        target,
        offline,
    } = args;
    let context = context.unwrap_or_else(|| match dockerfile.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    });
    if !context.is_dir() {
        return Err(Error::input(format!(
            "build context {} is not a directory",
            context.display()
        )));
    }
    let mut args = Vec::new();
    for a in build_args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => args.push((k.to_string(), v.to_string())),
            None if !a.is_empty() => {
                // Docker's `--build-arg NAME`: the value from the environment, if set.
                if let Ok(v) = std::env::var(a) {
                    args.push((a.clone(), v));
                }
            }
            _ => {
                return Err(Error::input(format!(
                    "--build-arg `{a}`: expected NAME=VALUE"
                )))
            }
        }
    }
    let text = kiln_dockerfile::read(dockerfile)?;
    // The base's Env and WorkingDir, for `$PATH`-like variables and relative
    // paths (BuildKit reads them too); a registry base is not read offline.
    let cache = cache_dir(common);
    let lookup = |image: &str, platform: Option<&str>| {
        kiln::dockerfile_build::base_config(
            image,
            platform,
            &context,
            offline,
            &common.insecure_registries,
            &cache,
        )
    };
    let opts = kiln_dockerfile::Options {
        build_args: args,
        base: Some(&lookup),
        target,
        ..Default::default()
    };
    if explain {
        let e = kiln_dockerfile::explain(&text, dockerfile, &context, &opts);
        if common.json {
            let mut v = serde_json::json!({
                "dockerfile": dockerfile.display().to_string(),
                "context": context.display().to_string(),
                "explain": e.explained,
                "warnings": e.warnings,
                "spec": e.toml,
                "stage_specs": e.stage_specs,
            });
            if let Some(first) = e.errors.first() {
                v["error"] =
                    serde_json::json!({"kind": first.kind().name(), "message": first.to_string()});
                v["errors"] = e.errors.iter().map(|x| x.to_string()).collect();
            }
            print_json(&v);
        } else {
            print!("{}", kiln_dockerfile::table(&e.explained));
            for w in &e.warnings {
                eprintln!("warning: {w}");
            }
            for (label, t) in &e.stage_specs {
                println!("\n# kiln.toml of stage `{label}` (built first):\n{t}");
            }
            if let Some(t) = &e.toml {
                println!("\n# kiln.toml ({}):\n{t}", kiln_dockerfile::SPEC_NAME);
            }
        }
        if let Some(first) = e.errors.first() {
            for x in &e.errors {
                eprintln!("error: {x}");
            }
            std::process::exit(first.exit_code());
        }
        return Ok(None);
    }
    let (t, stages) =
        kiln::dockerfile_build::translate(&text, dockerfile, &context, opts, &cache_dir(common))?;
    if !common.json {
        for w in &t.warnings {
            eprintln!("warning: {w}");
        }
    }
    let v = serde_json::json!({"explain": t.explained, "warnings": t.warnings});
    Ok(Some((
        kiln_dockerfile::spec_path(&context),
        t.toml,
        v,
        stages,
    )))
}
