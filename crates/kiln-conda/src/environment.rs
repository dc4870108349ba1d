//! `environment.yml`: channels, dependencies and a `pip:` list (its `name`
//! does not matter to an image).

use std::path::Path;

use rattler_conda_types::{EnvironmentYaml, MatchSpecOrSubSection};

use kiln_core::error::Result;

use crate::CondaError;

/// The parts of an environment file kiln uses, as text (parsed later with
/// the spec's channel configuration).
#[derive(Debug, Default)]
pub(crate) struct Environment {
    pub(crate) channels: Vec<String>,
    pub(crate) dependencies: Vec<String>,
    /// Requirement lines of the `pip:` subsection.
    pub(crate) pip: Vec<String>,
}

pub(crate) fn read(path: &Path) -> Result<Environment> {
    let text =
        std::fs::read_to_string(path).map_err(|source| CondaError::EnvironmentUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
    parse(&text).map_err(|e| e.context(format!("[conda] environment {}", path.display())))
}

pub(crate) fn parse(text: &str) -> Result<Environment> {
    let env = EnvironmentYaml::from_yaml_str(text).map_err(|e| CondaError::BadEnvironment {
        reason: e.to_string(),
    })?;
    let mut out = Environment {
        channels: env.channels.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    for d in env.dependencies {
        match d {
            MatchSpecOrSubSection::MatchSpec(m) => out.dependencies.push(m.to_string()),
            MatchSpecOrSubSection::SubSection(key, lines) if key == "pip" => out.pip.extend(lines),
            MatchSpecOrSubSection::SubSection(key, _) => {
                return Err(CondaError::UnsupportedSubsection { key }.into())
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_channels_dependencies_and_pip() {
        let env = parse(
            "name: demo\nchannels:\n  - conda-forge\n  - ./local\ndependencies:\n  - python=3.12\n  - numpy>=1.26,<2\n  - pip:\n    - requests==2.31.0\n    - --find-links ./wheels\n",
        )
        .unwrap();
        assert_eq!(env.channels, ["conda-forge", "./local"]);
        assert_eq!(env.dependencies.len(), 2);
        assert!(env.dependencies[0].starts_with("python"));
        assert_eq!(env.pip, ["requests==2.31.0", "--find-links ./wheels"]);
        assert!(parse("dependencies: [\"numpy >=>= 1\"]").is_err());
    }

    #[test]
    fn only_pip_subsections() {
        let err = parse("dependencies:\n  - numpy\n  - npm:\n    - left-pad\n").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::UnsupportedSubsection { key }) if key == "npm"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "dependencies: unsupported subsection `npm:` (only `pip:` is)"
        );
        let err = parse("dependencies: {").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadEnvironment { .. })
            ),
            "{err:?}"
        );
        let err = read(Path::new("/nonexistent/environment.yml")).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::EnvironmentUnreadable { path, .. })
                    if path == Path::new("/nonexistent/environment.yml")
            ),
            "{err:?}"
        );
    }
}

#[cfg(test)]
mod mutation_tests {
    /// environment.yml never panics on mangled input.
    #[test]
    fn environment_files_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"name: ds\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - numpy>=1.26,<2\n  - pip:\n    - requests==2.31\n",
        ];
        for m in kiln_core::mutate::mutants(seeds, 3000) {
            let _ = super::parse(&String::from_utf8_lossy(&m));
        }
    }
}
