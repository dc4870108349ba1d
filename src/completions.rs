//! `kiln completions SHELL` and `kiln man`: shell completion scripts and
//! man pages generated from the clap definition, so they never drift from
//! the options kiln really takes.

use std::io::Write;
use std::path::Path;

use clap_complete::Shell;
use kiln_core::error::{IoContext, Result};

/// The completion script for `shell` on stdout (`source <(kiln completions bash)`).
pub fn print(shell: Shell, mut cmd: clap::Command) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kiln", &mut out);
    write_stdout(&out)
}

/// Without `dir`: kiln(1) as roff on stdout (`kiln man | man -l -`). With
/// `dir`: kiln.1 and a kiln-COMMAND.1 per subcommand written there, as
/// `make install` puts them in share/man/man1.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> Result<()> {
    let cmd = cmd.name("kiln").bin_name("kiln");
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .io_context(|| "rendering the man page".into())?;
            write_stdout(&out)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).io_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .io_context(|| format!("writing man pages to {}", dir.display()))
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|_| stdout.flush())
        .io_context(|| "writing to stdout".into())
}
