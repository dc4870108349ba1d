//! SPDX validation with pyspdxtools.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::CommandExt;

/// `pyspdxtools`: $KILN_PYSPDXTOOLS, target/spdx-venv (the Makefile's), or PATH.
pub fn pyspdxtools() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PYSPDXTOOLS") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spdx-venv/bin/pyspdxtools");
    if venv.is_file() {
        return venv;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("pyspdxtools").is_file() {
            return dir.join("pyspdxtools");
        }
    }
    panic!(
        "pyspdxtools (PyPI's spdx-tools) is not installed; `make spdx-validator` \
         (part of `make test`) installs it into target/spdx-venv"
    );
}

/// pyspdxtools parses and validates the document and finds nothing to report.
#[track_caller]
pub fn assert_valid_spdx(path: &Path) {
    let r = Command::new(pyspdxtools()).arg("-i").arg(path).run();
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        r.status.success() && !all.to_lowercase().contains("error") && !all.contains("issues"),
        "pyspdxtools rejects {}:\n{}",
        path.display(),
        r.describe()
    );
}
