//! `environment.yml`: name, channels, dependencies and a `pip:` list.

use std::path::Path;

use rattler_conda_types::{EnvironmentYaml, MatchSpecOrSubSection};

use kiln_core::error::{Error, Result};

/// The parts of an environment file kiln uses, as text (parsed later with
/// the spec's channel configuration).
#[derive(Debug, Default)]
pub struct Environment {
    pub name: Option<String>,
    pub channels: Vec<String>,
    pub dependencies: Vec<String>,
    /// Requirement lines of the `pip:` subsection.
    pub pip: Vec<String>,
}

pub fn read(path: &Path) -> Result<Environment> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("[conda] environment {}: {e}", path.display())))?;
    parse(&text).map_err(|e| e.context(format!("[conda] environment {}", path.display())))
}

pub fn parse(text: &str) -> Result<Environment> {
    let env = EnvironmentYaml::from_yaml_str(text)
        .map_err(|e| Error::input(format!("not a valid environment file: {e}")))?;
    let mut out = Environment {
        name: env.name,
        channels: env.channels.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    for d in env.dependencies {
        match d {
            MatchSpecOrSubSection::MatchSpec(m) => out.dependencies.push(m.to_string()),
            MatchSpecOrSubSection::SubSection(key, lines) if key == "pip" => out.pip.extend(lines),
            MatchSpecOrSubSection::SubSection(key, _) => {
                return Err(Error::input(format!(
                    "dependencies: unsupported subsection `{key}:` (only `pip:` is)"
                )))
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
        assert_eq!(env.name.as_deref(), Some("demo"));
        assert_eq!(env.channels, ["conda-forge", "./local"]);
        assert_eq!(env.dependencies.len(), 2);
        assert!(env.dependencies[0].starts_with("python"));
        assert_eq!(env.pip, ["requests==2.31.0", "--find-links ./wheels"]);
        assert!(parse("dependencies: [\"numpy >=>= 1\"]").is_err());
    }
}
