//! kiln's OpenSSL subject hash against `openssl x509 -hash` itself, for every
//! certificate Debian's ca-certificates ships on this machine (packages
//! `ca-certificates` and `openssl`, installed by `make test`).

use std::process::Command;

use crate::common::*;

#[test]
fn subject_hash_matches_openssl_for_every_system_ca() {
    let dir = std::path::Path::new("/usr/share/ca-certificates/mozilla");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (install ca-certificates)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    files.sort();
    assert!(files.len() > 50, "only {} certificates", files.len());
    for f in files {
        let want = Command::new(require_tool("openssl"))
            .args(["x509", "-hash", "-noout", "-in"])
            .arg(&f)
            .run_ok()
            .stdout
            .trim()
            .to_string();
        let got = kiln_apt::cert_hash::subject_hash(&std::fs::read(&f).unwrap())
            .map(|h| format!("{h:08x}"));
        assert_eq!(got.as_deref(), Some(want.as_str()), "{}", f.display());
    }
}
