//! The `kiln` command line: parses arguments and hands off to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kiln::build::{self, BuildOptions};
use kiln::cache::Cache;
use kiln::layer::Compression;
use kiln::progress::Progress;
use kiln::source::{ImageSource, OutputTarget};
use kiln::Error;

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

#[derive(Subcommand)]
enum Command {
    /// Build the image described by a spec (default ./kiln.toml).
    Build {
        /// The spec file.
        #[arg(default_value = "kiln.toml")]
        spec: PathBuf,
        /// Output: oci:DIR or docker-archive:FILE (repeatable; default oci:kiln-out unless --push).
        #[arg(long, short, value_name = "TARGET")]
        output: Vec<String>,
        /// Push to [image] name with every tag.
        #[arg(long)]
        push: bool,
        /// Layer compression: gzip or zstd, optionally with :LEVEL.
        #[arg(long, default_value = "gzip", value_name = "ALGO[:LEVEL]")]
        compression: String,
        /// Make no SBOM (by default an SPDX JSON per platform goes beside OCI
        /// layout outputs and is pushed as a referrer of each manifest).
        #[arg(long)]
        no_sbom: bool,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Build { common, .. } | Command::Inspect { common, .. } => common.json,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let v = serde_json::json!({"error": {"kind": e.kind(), "message": e.to_string()}});
                println!("{v}");
            }
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn cache_dir(common: &Common) -> PathBuf {
    common.cache.clone().unwrap_or_else(Cache::default_root)
}

fn run(cli: Cli) -> kiln::Result<()> {
    match cli.command {
        Command::Build {
            spec,
            output,
            push,
            compression,
            no_sbom,
            common,
        } => {
            let opts = BuildOptions {
                spec,
                outputs: output
                    .iter()
                    .map(|o| OutputTarget::parse(o))
                    .collect::<kiln::Result<_>>()?,
                push,
                compression: Compression::parse(&compression).map_err(Error::Input)?,
                insecure_registries: common.insecure_registries.clone(),
                cache_dir: cache_dir(&common),
                epoch: build::epoch_from_env()?,
                sbom: !no_sbom,
                progress: if common.json {
                    Progress::hidden()
                } else {
                    Progress::new(common.quiet)
                },
            };
            let report = build::build(&opts)?;
            if common.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
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
                }
                println!("{}", report.digest);
            } else {
                println!("{}", report.digest);
            }
            Ok(())
        }
        Command::Inspect {
            reference,
            platform,
            common,
        } => {
            let src = ImageSource::parse(&reference, std::path::Path::new("."))?;
            if matches!(src, ImageSource::Scratch) {
                return Err(Error::input("`scratch` is not an image to inspect"));
            }
            let platform = platform.map(|p| p.parse()).transpose()?;
            let cache = Cache::open(cache_dir(&common))?;
            let report =
                kiln::inspect::inspect(&src, platform, &common.insecure_registries, &cache)?;
            if common.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                );
            } else {
                println!("reference: {}", report.reference);
                if let Some(d) = &report.digest {
                    println!("digest:    {d}");
                }
                println!("platform:  {}", report.platform);
                if let Some(c) = &report.created {
                    println!("created:   {c}");
                }
                println!("layers:    {}", report.layers.len());
                for l in &report.layers {
                    println!("  {} {:>12} {}", l.digest, l.size, l.media_type);
                }
                println!(
                    "config:    {}",
                    serde_json::to_string_pretty(&report.config).expect("json")
                );
            }
            Ok(())
        }
    }
}
