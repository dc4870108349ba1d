//! `.dockerignore`: patterns in Go `filepath.Match` syntax plus `**`, `!`
//! exceptions, the last matching pattern deciding; a path is excluded when
//! it or one of its parent directories is (moby's patternmatcher).

#[derive(Debug, Default)]
pub(crate) struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    pub(crate) fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, p) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let segs = clean(p);
            if segs.is_empty() {
                continue;
            }
            patterns.push((exception, segs));
        }
        Ignore { patterns }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `path` is relative to the context, `/`-separated.
    pub(crate) fn excluded(&self, path: &str) -> bool {
        let segs = clean(path);
        let mut excluded = false;
        for (exception, pat) in &self.patterns {
            let hit = (1..=segs.len()).any(|n| match_segs(pat, &segs[..n]));
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }
}

/// Path segments with `.`, empty and leading `/` removed, `..` applied.
fn clean(p: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

fn match_segs(pat: &[String], path: &[String]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| match_segs(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((s, prest)) => glob(p.as_bytes(), s.as_bytes()) && match_segs(rest, prest),
            None => false,
        },
    }
}

/// One segment: `*`, `?`, `[…]` (with `^`/`!` negation and ranges), `\` escapes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let mut i = 1;
            let negate = matches!(p.get(1), Some(b'^' | b'!'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (first || p[i] != b']') {
                first = false;
                let lo = p[i];
                if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
                    if lo <= c && c <= p[i + 2] {
                        matched = true;
                    }
                    i += 3;
                } else {
                    if lo == c {
                        matched = true;
                    }
                    i += 1;
                }
            }
            if i >= p.len() {
                return false; // unterminated class matches nothing
            }
            matched != negate && glob(&p[i + 1..], &s[1..])
        }
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_patterns() {
        let i = Ignore::parse("# c\n*.log\n/build\n**/tmp\n!keep.log\nsecret?.txt\n[ab].md\n");
        assert!(i.excluded("x.log"));
        assert!(!i.excluded("dir/x.log"), "* does not cross /");
        assert!(!i.excluded("keep.log"));
        assert!(i.excluded("build/out/a"), "a parent matches");
        assert!(i.excluded("a/b/tmp/c"));
        assert!(i.excluded("secret1.txt"));
        assert!(i.excluded("a.md") && !i.excluded("c.md"));
        assert!(!i.excluded("src/main.rs"));
        assert!(Ignore::parse("\n# only\n").is_empty());
    }
}
