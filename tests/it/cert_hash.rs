//! kiln's OpenSSL subject hash against OpenSSL's own, for every certificate
//! Debian's ca-certificates ships on this machine (packages `ca-certificates`
//! and `openssl`, installed by `make test`). One `openssl rehash` over a copy
//! of them names each by its hash (`HASH.N` links), as c_rehash does for
//! /etc/ssl/certs: one process instead of one `openssl x509 -hash` each.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

#[test]
fn subject_hash_matches_openssl_for_every_system_ca() {
    let dir = std::path::Path::new("/usr/share/ca-certificates/mozilla");
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (install ca-certificates)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    assert!(files.len() > 50, "only {} certificates", files.len());

    let copies = unique_dir("cert-hash");
    for f in &files {
        fs::copy(f, copies.join(f.file_name().unwrap())).unwrap();
    }
    Command::new(require_tool("openssl"))
        .arg("rehash")
        .arg(&copies)
        .run_ok();
    // file name -> the hash OpenSSL linked it under.
    let mut want = BTreeMap::new();
    for e in fs::read_dir(&copies).unwrap() {
        let link = e.unwrap().path();
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let name = link.file_name().unwrap().to_str().unwrap().to_string();
        let (hash, _n) = name.split_once('.').unwrap();
        want.insert(target.file_name().unwrap().to_owned(), hash.to_string());
    }
    assert_eq!(
        want.len(),
        files.len(),
        "openssl rehash linked every certificate: {want:?}"
    );

    for f in &files {
        let got =
            kiln_apt::cert_hash::subject_hash(&fs::read(f).unwrap()).map(|h| format!("{h:08x}"));
        assert_eq!(
            got.as_deref(),
            Some(want[f.file_name().unwrap()].as_str()),
            "{}",
            f.display()
        );
    }
    fs::remove_dir_all(&copies).unwrap();
}
