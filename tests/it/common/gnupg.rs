//! GnuPG for the tests' signed apt repositories: a signing key made for
//! the run, `InRelease` clear-signed with it, its agent stopped after.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{require_tool, short_dir, CommandExt, Run};

/// `gpg --batch --homedir HOME ARGS` (no passphrase, no pinentry).
pub fn gpg(home: &Path, args: &[&str]) -> Run {
    Command::new(require_tool("gpg"))
        .env("GNUPGHOME", home)
        .args(["--batch", "--no-tty", "--homedir"])
        .arg(home)
        .args(["--pinentry-mode", "loopback", "--passphrase", ""])
        .args(args)
        .run_ok()
}

/// A fresh GnuPG home holding one new ed25519 signing key (at a short
/// path: gpg-agent's sockets go in it).
pub fn new_signing_home(label: &str) -> PathBuf {
    let home = short_dir(label);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    gpg(
        &home,
        &[
            "--quick-gen-key",
            &format!("kiln test {label} <t@example.invalid>"),
            "ed25519",
            "sign",
            "never",
        ],
    );
    home
}

/// Clear-sign `dist/Release` into `dist/InRelease` with `gnupg`'s key.
pub fn sign_release(dist: &Path, gnupg: &Path) {
    let out = dist.join("InRelease");
    let release = dist.join("Release");
    gpg(
        gnupg,
        &[
            "--yes",
            "--digest-algo",
            "SHA256",
            "--output",
            out.to_str().unwrap(),
            "--clearsign",
            release.to_str().unwrap(),
        ],
    );
}

/// Stop the gpg-agent a GnuPG home started (best effort).
pub fn stop_agent(home: &Path) {
    let _ = Command::new(require_tool("gpgconf"))
        .env("GNUPGHOME", home)
        .args(["--kill", "gpg-agent"])
        .run();
}
