//! GitLab's and GitHub's CI schemas (`../shared/fixtures/ci-schemas`, or
//! `$KILN_CI_SCHEMAS`) and the Python `jsonschema` + PyYAML that validate
//! documents against them (the Makefile's target/spdx-venv): for the
//! pipelines `kiln ci generate` writes and for the CI templates.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CommandExt, Run};

/// The directory holding gitlab-ci.json and github-workflow.json.
pub fn schemas() -> PathBuf {
    let dir = std::env::var_os("KILN_CI_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // `../shared` beside the project root, else where this
            // machine keeps it for clones made elsewhere.
            let beside =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/ci-schemas");
            if beside.is_dir() {
                beside
            } else {
                PathBuf::from("/work/shared/fixtures/ci-schemas")
            }
        });
    assert!(
        dir.join("gitlab-ci.json").is_file() && dir.join("github-workflow.json").is_file(),
        "CI schemas not found in {} (set KILN_CI_SCHEMAS to a directory with gitlab-ci.json and github-workflow.json)",
        dir.display()
    );
    dir
}

/// Python with `jsonschema` and PyYAML: $KILN_CI_PYTHON, the Makefile's
/// target/spdx-venv, or `python3` on PATH if it has both.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_CI_PYTHON") {
        return p.into();
    }
    let has_modules = |p: &Path| {
        Command::new(p)
            .args(["-c", "import jsonschema, yaml"])
            .run()
            .status
            .success()
    };
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spdx-venv/bin/python");
    if venv.is_file() && has_modules(&venv) {
        return venv;
    }
    let system = PathBuf::from("python3");
    assert!(
        has_modules(&system),
        "Python's jsonschema and PyYAML are not installed; `make spdx-validator` (part of `make test`) installs them into target/spdx-venv"
    );
    system
}

const VALIDATE: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
doc = yaml.safe_load(open(sys.argv[2]))
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print("/".join(map(str, e.path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;

/// Validate a document (read as YAML, which JSON is) against SCHEMA (a
/// file name in [`schemas`]).
#[track_caller]
pub fn assert_valid(schema: &str, doc: &Path) {
    let r: Run = Command::new(python())
        .args(["-c", VALIDATE])
        .arg(schemas().join(schema))
        .arg(doc)
        .run();
    assert!(
        r.status.success(),
        "{} does not validate against {schema}:\n{}\n{}",
        doc.display(),
        r.describe(),
        std::fs::read_to_string(doc).unwrap_or_default()
    );
}
