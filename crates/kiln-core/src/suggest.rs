//! What to say when a requested package does not exist: close names from
//! the index ("did you mean `build-essential`?") and, for a version that
//! does not exist, the versions that do. Shared by apt, pip and conda so
//! the three report missing packages the same way.

use std::fmt;

/// At most this many close names per missing package.
const MAX_NAMES: usize = 3;
/// At most this many versions listed; the rest are counted.
const MAX_VERSIONS: usize = 10;

/// Names among `known` close to `wanted`, best first (at most three).
///
/// Jaro-Winkler favours shared prefixes (`numpyy` → `numpy`), which suits
/// package names; a small edit distance catches transpositions in short
/// names. Case and `-`/`_`/`.` differences count as equal.
pub fn close_names<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let w = fold(wanted);
    let mut scored: Vec<(f64, &str)> = Vec::new();
    for k in known {
        let f = fold(k);
        if f == w && k == wanted {
            continue;
        }
        let jw = strsim::jaro_winkler(&w, &f);
        let lev = strsim::levenshtein(&w, &f);
        let close = f == w || jw >= 0.9 || (lev <= 2 && w.len().min(f.len()) >= 4) || lev <= 1;
        if close {
            scored.push((if f == w { 2.0 } else { jw }, k));
        }
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let mut out: Vec<String> = Vec::new();
    for (_, k) in scored {
        if !out.iter().any(|o| o == k) {
            out.push(k.to_string());
        }
        if out.len() == MAX_NAMES {
            break;
        }
    }
    out
}

fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// One requested package that cannot be found, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// As requested (`build-esential`, `numpy==9.9`).
    pub request: String,
    /// Where it was written when not in kiln.toml itself (`apt.txt:3`).
    pub at: Option<String>,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// No package has this name; close names that do exist.
    Name { suggestions: Vec<String> },
    /// The name exists, not at the requested version.
    Version {
        name: String,
        /// Every version there is, newest first.
        versions: Vec<String>,
    },
}

impl Missing {
    pub fn name(request: &str, suggestions: Vec<String>) -> Missing {
        Missing {
            request: request.to_string(),
            at: None,
            problem: Problem::Name { suggestions },
        }
    }

    pub fn version(request: &str, name: &str, versions: Vec<String>) -> Missing {
        Missing {
            request: request.to_string(),
            at: None,
            problem: Problem::Version {
                name: name.to_string(),
                versions,
            },
        }
    }

    pub fn at(mut self, at: Option<&str>) -> Missing {
        self.at = at.map(String::from);
        self
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.request)?;
        if let Some(at) = &self.at {
            write!(f, " ({at})")?;
        }
        match &self.problem {
            Problem::Name { suggestions } => {
                write!(f, ": no such package")?;
                if !suggestions.is_empty() {
                    let names: Vec<String> = suggestions.iter().map(|s| format!("`{s}`")).collect();
                    write!(f, "; did you mean {}?", names.join(" or "))?;
                }
                Ok(())
            }
            Problem::Version { name, versions } => write!(
                f,
                ": no such version; {name} has {}",
                version_list(versions)
            ),
        }
    }
}

/// `2.1, 2.0, … and 14 more` (the input newest first).
pub fn version_list(versions: &[String]) -> String {
    let shown: Vec<&str> = versions
        .iter()
        .take(MAX_VERSIONS)
        .map(String::as_str)
        .collect();
    let mut s = shown.join(", ");
    if versions.len() > MAX_VERSIONS {
        s.push_str(&format!(" and {} more", versions.len() - MAX_VERSIONS));
    }
    s
}

/// Every missing request, one per line (`  - …`), for an error message.
pub fn lines(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("\n  - {m}"))
        .collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let known = [
            "build-essential",
            "busybox",
            "numpy",
            "pandas",
            "python3",
            "python3-numpy",
            "curl",
        ];
        assert_eq!(close_names("build-esential", known), ["build-essential"]);
        assert_eq!(close_names("numpyy", known)[0], "numpy");
        assert_eq!(close_names("pyhton3", known)[0], "python3");
        assert_eq!(close_names("crul", known), ["curl"]);
        assert!(close_names("zzzzqqq", known).is_empty());
        assert!(close_names("tensorflow", known).is_empty());
        // Spelling differences pip and conda ignore.
        assert_eq!(close_names("Build_Essential", known), ["build-essential"]);
    }

    #[test]
    fn versions_are_cut_with_a_count() {
        let v: Vec<String> = (1..=13).rev().map(|n| format!("1.{n}")).collect();
        assert_eq!(
            version_list(&v),
            "1.13, 1.12, 1.11, 1.10, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4 and 3 more"
        );
        let m = Missing::version("numpy==9.9", "numpy", vec!["2.0".into(), "1.26.4".into()]);
        assert_eq!(
            m.to_string(),
            "`numpy==9.9`: no such version; numpy has 2.0, 1.26.4"
        );
        let m = Missing::name("crul", vec!["curl".into(), "carl".into()]).at(Some("apt.txt:3"));
        assert_eq!(
            m.to_string(),
            "`crul` (apt.txt:3): no such package; did you mean `curl` or `carl`?"
        );
    }
}
