//! Member and compat globs: relative paths whose components may hold `*`
//! (any run of characters) and `?` (one character). Written here rather
//! than taken from the `glob` crate: this is all a workspace needs, and it
//! gives precise errors for what is refused (`**`, `[...]`, absolute paths,
//! `..`).

use std::path::{Path, PathBuf};

/// Check a glob; `Err(message)` says what is wrong with it.
pub fn validate(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("empty".into());
    }
    if glob.starts_with('/') {
        return Err("must be relative to the workspace root".into());
    }
    for part in glob.split('/') {
        match part {
            "" => return Err("empty path component".into()),
            ".." => return Err("`..` climbs out of the workspace".into()),
            p if p.contains("**") => {
                return Err("`**` is not supported (use one `*` per level)".into())
            }
            p if p.contains(['[', ']', '{', '}', '\\']) => {
                return Err("only `*` and `?` are supported".into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// Does one path component match one glob component?
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The directories under `root` that a (validated) glob matches, sorted.
/// Hidden directories match only a component that starts with `.`.
pub fn expand(root: &Path, glob: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut current = vec![root.to_path_buf()];
    for part in glob.split('/') {
        let mut next = Vec::new();
        for dir in &current {
            if !part.contains(['*', '?']) {
                let p = dir.join(part);
                if p.is_dir() {
                    next.push(p);
                }
                continue;
            }
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in rd {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && !part.starts_with('.') {
                    continue;
                }
                if entry.path().is_dir() && matches(part, &name) {
                    next.push(entry.path());
                }
            }
        }
        current = next;
    }
    current.sort();
    current.dedup();
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("*", "py"));
        assert!(matches("py-*", "py-3.12"));
        assert!(!matches("py-*", "r-4"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        for bad in ["", "/abs/*", "a/../b", "**/x", "sci/[ab]", "a//b", "{a,b}"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert!(validate("science/*").is_ok());
    }
}
