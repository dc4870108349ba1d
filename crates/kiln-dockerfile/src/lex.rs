//! Words and variables: BuildKit's word processing for the instructions that
//! expand (`$VAR`, `${VAR}`, `${VAR:-x}`, `${VAR-x}`, `${VAR:+x}`, `${VAR+x}`,
//! `${VAR:?msg}`, quotes, the Dockerfile's escape character), and a small
//! POSIX shell tokeniser for `RUN` lines: words, quotes, `\`, `&&` chains.
//! Anything else a shell would interpret (`;`, `||`, pipes, redirections,
//! subshells, command substitution) is refused by name, never guessed at.

/// What a variable name stands for when a word is expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Var {
    /// Set (possibly to the empty string).
    Set(String),
    /// Declared (`ARG NAME` without a value) but not set: expands to nothing.
    Unset,
    /// Not declared in the Dockerfile: it may come from the base image's
    /// environment, which this translation does not read.
    Unknown,
}

/// Looks a variable up.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Var;

/// Split a Dockerfile argument string into words at unquoted whitespace,
/// keeping quotes and escapes (for `ENV a=b c="d e"` pairs; each value is
/// then processed with [`word`]).
pub(crate) fn split_raw(s: &str, escape: char) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == escape && q == '"' {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => {
                cur.push(c);
                if c == escape {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else if c == '"' || c == '\'' {
                    quote = Some(c);
                }
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// One word, BuildKit style: quotes removed, escapes applied, variables
/// expanded. Whitespace is kept.
pub(crate) fn word(s: &str, escape: char, vars: Lookup) -> Result<String, String> {
    let mut l = Lexer::new(s, escape, vars, false);
    let w = l.dockerfile_word(None)?;
    Ok(w)
}

/// A here-document's text with `$NAME`, `${NAME}`, `${NAME:-x}` and
/// `${NAME-x}` expanded; quotes stay as written, `\$` is a literal `$`
/// (BuildKit's COPY/ADD here-documents with an unquoted delimiter).
pub(crate) fn expand_text(s: &str, escape: char, vars: Lookup) -> Result<String, String> {
    let value = |name: &str| match vars(name) {
        Var::Set(v) => Some(v),
        Var::Unset | Var::Unknown => None,
    };
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == escape && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if chars.get(i + 1) == Some(&'{') {
            let end = chars[i + 2..]
                .iter()
                .position(|&c| c == '}')
                .ok_or_else(|| "unterminated ${ in the here-document".to_string())?;
            let inner: String = chars[i + 2..i + 2 + end].iter().collect();
            let (name, default) = match inner.split_once(":-").or_else(|| inner.split_once('-')) {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (inner.clone(), None),
            };
            if name.is_empty() || !name.chars().all(name_char) {
                return Err(format!(
                    "`${{{inner}}}` in the here-document is not a variable"
                ));
            }
            let v = value(&name).filter(|v| !(v.is_empty() && inner.contains(":-")));
            out.push_str(&v.or(default).unwrap_or_default());
            i += 3 + end;
            continue;
        }
        let len = chars[i + 1..].iter().take_while(|&&c| name_char(c)).count();
        if len == 0 {
            out.push('$');
            i += 1;
            continue;
        }
        let name: String = chars[i + 1..i + 1 + len].iter().collect();
        out.push_str(&value(&name).unwrap_or_default());
        i += 1 + len;
    }
    Ok(out)
}

/// Several words (EXPOSE, VOLUME, COPY sources): split at unquoted
/// whitespace, then processed like [`word`].
pub(crate) fn words(s: &str, escape: char, vars: Lookup) -> Result<Vec<String>, String> {
    split_raw(s, escape)?
        .iter()
        .map(|w| word(w, escape, vars))
        .collect()
}

/// A `RUN` line in shell form, as simple commands joined by `&&`. Line
/// continuations must already be removed.
pub(crate) fn shell_commands(s: &str, vars: Lookup) -> Result<Vec<Vec<String>>, String> {
    let mut l = Lexer::new(s, '\\', vars, true);
    l.shell()
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: Lookup<'a>,
    /// POSIX shell rules (RUN) instead of Dockerfile word rules.
    shell: bool,
}

impl<'a> Lexer<'a> {
    fn new(s: &str, escape: char, vars: Lookup<'a>, shell: bool) -> Self {
        Lexer {
            chars: s.chars().collect(),
            pos: 0,
            escape,
            vars,
            shell,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    /// A Dockerfile word up to the end, or up to an unquoted, unescaped
    /// `stop` (consumed), for the words inside `${NAME:-word}`.
    fn dockerfile_word(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                if stop.is_some() {
                    return Err("missing `}` in a variable expansion".into());
                }
                return Ok(out);
            };
            self.pos += 1;
            if Some(c) == stop {
                return Ok(out);
            }
            match c {
                '\'' => loop {
                    match self.peek() {
                        None => return Err("unterminated ' quote".into()),
                        Some('\'') => {
                            self.pos += 1;
                            break;
                        }
                        Some(ch) => {
                            out.push(ch);
                            self.pos += 1;
                        }
                    }
                },
                '"' => self.double_quoted(&mut out)?,
                '$' => self.dollar(&mut out)?,
                c if c == self.escape => match self.peek() {
                    Some(n) => {
                        out.push(n);
                        self.pos += 1;
                    }
                    None => out.push(c),
                },
                c => out.push(c),
            }
        }
    }

    /// After an opening `"`: up to the closing one.
    fn double_quoted(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated \" quote".into());
            };
            self.pos += 1;
            match c {
                '"' => return Ok(()),
                '$' => self.dollar(out)?,
                '`' if self.shell => {
                    return Err("command substitution (`…`) is not a simple command".into())
                }
                c if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape || n == '`' => {
                        out.push(n);
                        self.pos += 1;
                    }
                    Some('\n') if self.shell => self.pos += 1,
                    _ => out.push(c),
                },
                c => out.push(c),
            }
        }
    }

    /// After a `$`: a name, `${…}`, or a literal `$`.
    fn dollar(&mut self, out: &mut String) -> Result<(), String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let name = self.name();
                if name.is_empty() {
                    return Err("bad substitution: `${` without a variable name".into());
                }
                let value = self.lookup(&name);
                let Some(op) = self.peek() else {
                    return Err(format!("missing `}}` after `${{{name}`"));
                };
                self.pos += 1;
                if op == '}' {
                    out.push_str(&self.required(&name, value)?);
                    return Ok(());
                }
                let colon = op == ':';
                let op = if colon {
                    let o = self.peek();
                    self.pos += 1;
                    o
                } else {
                    Some(op)
                };
                let (mods, ok) = match op {
                    Some(o @ ('-' | '+' | '?')) => (o, true),
                    _ => (' ', false),
                };
                if !ok {
                    return Err(format!(
                        "`${{{name}…}}`: only ${{VAR}}, ${{VAR:-word}}, ${{VAR-word}}, ${{VAR:+word}}, ${{VAR+word}} and ${{VAR:?message}} are supported"
                    ));
                }
                let w = self.dockerfile_or_shell_word_until_brace()?;
                // With `:`, an empty value counts as unset.
                let set = match &value {
                    Var::Set(v) => !(colon && v.is_empty()),
                    Var::Unset => false,
                    Var::Unknown => {
                        return Err(unknown(&name));
                    }
                };
                match mods {
                    '-' => {
                        if set {
                            out.push_str(&self.required(&name, value)?);
                        } else {
                            out.push_str(&w);
                        }
                    }
                    '+' => {
                        if set {
                            out.push_str(&w);
                        }
                    }
                    _ => {
                        if set {
                            out.push_str(&self.required(&name, value)?);
                        } else {
                            return Err(format!(
                                "{name}: {}",
                                if w.is_empty() { "is not set" } else { &w }
                            ));
                        }
                    }
                }
                Ok(())
            }
            Some('(') if self.shell => {
                Err("command substitution `$(…)` is not a simple command".into())
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                let value = self.lookup(&name);
                out.push_str(&self.required(&name, value)?);
                Ok(())
            }
            Some(c) if self.shell && (c.is_ascii_digit() || "?$!#@*-".contains(c)) => Err(format!(
                "the shell parameter `${c}` cannot be expanded without running a shell"
            )),
            _ => {
                out.push('$');
                Ok(())
            }
        }
    }

    /// The word of `${NAME:-word}`, up to its `}`.
    fn dockerfile_or_shell_word_until_brace(&mut self) -> Result<String, String> {
        self.dockerfile_word(Some('}'))
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    fn lookup(&self, name: &str) -> Var {
        (self.vars)(name)
    }

    fn required(&self, name: &str, v: Var) -> Result<String, String> {
        match v {
            Var::Set(s) => Ok(s),
            Var::Unset => Ok(String::new()),
            Var::Unknown => Err(unknown(name)),
        }
    }

    /// Simple commands separated by `&&`.
    fn shell(&mut self) -> Result<Vec<Vec<String>>, String> {
        let mut commands = vec![Vec::new()];
        loop {
            while matches!(self.peek(), Some(' ' | '\t')) {
                self.pos += 1;
            }
            let Some(c) = self.peek() else { break };
            match c {
                '#' => break,
                '&' if self.peek_at(1) == Some('&') => {
                    self.pos += 2;
                    if commands.last().is_some_and(Vec::is_empty) {
                        return Err("`&&` without a command before it".into());
                    }
                    commands.push(Vec::new());
                }
                '\n' | ';' => return Err("`;` or a new line (a command list)".into()),
                '|' if self.peek_at(1) == Some('|') => return Err("`||`".into()),
                '|' => return Err("a pipe `|`".into()),
                '&' => return Err("a background job `&`".into()),
                '<' | '>' => return Err(format!("a redirection `{c}`")),
                '(' | ')' => return Err("a subshell `( … )`".into()),
                '`' => return Err("command substitution (`…`)".into()),
                _ => {
                    let w = self.shell_word()?;
                    let cmd = commands.last_mut().expect("never empty");
                    if cmd.is_empty() && (w == "{" || w == "}" || w == "!") {
                        return Err(format!("`{w}` (a compound command)"));
                    }
                    cmd.push(w);
                }
            }
        }
        if commands.last().is_some_and(Vec::is_empty) {
            if commands.len() == 1 {
                return Ok(Vec::new());
            }
            return Err("`&&` without a command after it".into());
        }
        Ok(commands)
    }

    /// One shell word: up to unquoted whitespace or an operator.
    fn shell_word(&mut self) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => break,
                '`' => return Err("command substitution (`…`)".into()),
                '\'' => {
                    self.pos += 1;
                    loop {
                        match self.peek() {
                            None => return Err("unterminated ' quote".into()),
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(ch) => {
                                out.push(ch);
                                self.pos += 1;
                            }
                        }
                    }
                }
                '"' => {
                    self.pos += 1;
                    self.double_quoted(&mut out)?;
                }
                '$' => {
                    self.pos += 1;
                    self.dollar(&mut out)?;
                }
                '\\' => {
                    self.pos += 1;
                    match self.peek() {
                        Some('\n') => self.pos += 1,
                        Some(n) => {
                            out.push(n);
                            self.pos += 1;
                        }
                        None => out.push('\\'),
                    }
                }
                c => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        Ok(out)
    }
}

fn unknown(name: &str) -> String {
    format!(
        "`${name}` is not defined in the Dockerfile (it may come from the base image's environment, which was not read)"
    )
}

/// The shell text of a RUN/CMD/ENTRYPOINT line with the Dockerfile's line
/// continuations (escape + optional blanks + newline) and the comment lines
/// inside them removed, as BuildKit hands it to the shell.
pub(crate) fn join_continuations(s: &str, escape: char) -> String {
    let mut out = String::new();
    let mut lines = s.split('\n').peekable();
    let mut first = true;
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if !first && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        first = false;
        let body = line.trim_end_matches([' ', '\t', '\r']);
        match body.strip_suffix(escape) {
            Some(b) if lines.peek().is_some() => out.push_str(b),
            _ => out.push_str(line.trim_end_matches('\r')),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Var {
        match name {
            "A" => Var::Set("alpha".into()),
            "E" => Var::Set(String::new()),
            "U" => Var::Unset,
            "SP" => Var::Set("x y".into()),
            _ => Var::Unknown,
        }
    }

    fn w(s: &str) -> Result<String, String> {
        word(s, '\\', &vars)
    }

    #[test]
    fn dockerfile_words_expand_like_buildkit() {
        assert_eq!(w("$A").unwrap(), "alpha");
        assert_eq!(w("${A}-x").unwrap(), "alpha-x");
        assert_eq!(w("pre${A}post").unwrap(), "prealphapost");
        assert_eq!(w("${U:-dflt}").unwrap(), "dflt");
        assert_eq!(w("${E:-dflt}").unwrap(), "dflt");
        assert_eq!(w("${E-dflt}").unwrap(), "");
        assert_eq!(w("${U-dflt}").unwrap(), "dflt");
        assert_eq!(w("${A:-dflt}").unwrap(), "alpha");
        assert_eq!(w("${A:+alt}").unwrap(), "alt");
        assert_eq!(w("${U:+alt}").unwrap(), "");
        assert_eq!(w("${E:+alt}").unwrap(), "");
        assert_eq!(w("${E+alt}").unwrap(), "alt");
        assert_eq!(w("${U:-${A}}").unwrap(), "alpha");
        assert_eq!(w("${U:-\"a b\"}").unwrap(), "a b");
        assert_eq!(w("'$A'").unwrap(), "$A");
        assert_eq!(w("\"$A b\"").unwrap(), "alpha b");
        assert_eq!(w("\\$A").unwrap(), "$A");
        assert_eq!(w("a$").unwrap(), "a$");
        assert_eq!(w("$U").unwrap(), "");
        assert!(w("${U:?must be set}").unwrap_err().contains("must be set"));
        assert!(w("$NOPE").unwrap_err().contains("`$NOPE` is not defined"));
        assert!(w("${A").is_err());
        assert!(w("${A#x}").unwrap_err().contains("only ${VAR}"));
        // Another escape character: backslashes are plain.
        assert_eq!(word("C:\\x`$A", '`', &vars).unwrap(), "C:\\x$A");
    }

    #[test]
    fn raw_split_keeps_quotes() {
        assert_eq!(
            split_raw("a=\"b c\" d='e f' g=h\\ i", '\\').unwrap(),
            vec!["a=\"b c\"", "d='e f'", "g=h\\ i"]
        );
        assert!(split_raw("a=\"b", '\\').is_err());
        assert_eq!(
            words("80 \"$A\"", '\\', &vars).unwrap(),
            vec!["80", "alpha"]
        );
    }

    fn sh(s: &str) -> Result<Vec<Vec<String>>, String> {
        shell_commands(s, &vars)
    }

    #[test]
    fn shell_commands_split_at_and_and() {
        assert_eq!(
            sh("apt-get update && apt-get install -y 'a b' \"c$A\" d\\ e").unwrap(),
            vec![
                vec!["apt-get", "update"],
                vec!["apt-get", "install", "-y", "a b", "calpha", "d e"]
            ]
        );
        assert_eq!(
            sh("a&&b # comment ; x").unwrap(),
            vec![vec!["a"], vec!["b"]]
        );
        assert_eq!(sh("").unwrap(), Vec::<Vec<String>>::new());
        for (bad, what) in [
            ("a; b", "`;`"),
            ("a || b", "`||`"),
            ("a | b", "pipe"),
            ("a > f", "redirection"),
            ("(a)", "subshell"),
            ("a $(b)", "command substitution"),
            ("a `b`", "command substitution"),
            ("a &", "background"),
            ("&& a", "without a command before"),
            ("a &&", "without a command after"),
            ("echo $NOPE", "`$NOPE` is not defined"),
            ("echo $1", "`$1`"),
            ("{ a; }", "compound"),
        ] {
            let e = sh(bad).unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn continuations_are_joined() {
        assert_eq!(
            join_continuations("a \\\n  b \\ \n# c\n  c", '\\'),
            "a   b   c"
        );
        assert_eq!(join_continuations("a `\n b", '`'), "a  b");
        assert_eq!(join_continuations("a \\", '\\'), "a \\");
    }
}
