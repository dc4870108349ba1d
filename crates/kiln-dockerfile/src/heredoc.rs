//! `RUN cmd <<EOF` here-documents after a command (`RUN python3 <<EOF`,
//! `RUN cat <<EOT > /etc/app.conf`). BuildKit hands the command line and its
//! documents to the shell, which reads them. parse-dockerfile only reads a
//! here-document that starts the command (`RUN <<EOF`), so such a RUN is
//! rewritten into one before parsing: a script made of the command line and
//! its documents, run by the SHELL like every `RUN <<EOF` script without
//! `#!` — the same thing the shell would be given.
//!
//! The rewrite adds two lines per such RUN; [`Rewritten::line`] maps a line
//! of the rewritten text back to the Dockerfile's, so messages and
//! `--explain` name the lines the user wrote.

/// The text to parse, and where each of its lines came from.
pub(crate) struct Rewritten {
    pub(crate) text: String,
    /// Line `n` (1-based) of `text` is line `lines[n - 1]` of the original.
    lines: Vec<usize>,
}

impl Rewritten {
    /// The original line of `line` in the rewritten text.
    pub(crate) fn line(&self, line: usize) -> usize {
        line.checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .copied()
            .unwrap_or(line)
    }
}

/// One `<<WORD` (or `<<-WORD`, `<<'WORD'`, `<<"WORD"`) of a command line.
struct Doc {
    word: String,
    /// `<<-`: the delimiter line may be indented with tabs.
    strip_tabs: bool,
}

/// The here-documents a shell command line opens, in order.
fn docs(command: &str) -> Vec<Doc> {
    let b = command.as_bytes();
    let mut out = Vec::new();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            // `<<WORD`, not a here-string (`<<<`).
            None if c == b'<'
                && b.get(i + 1) == Some(&b'<')
                && b.get(i + 2) != Some(&b'<')
                && (i == 0 || b[i - 1] != b'<') =>
            {
                let mut j = i + 2;
                let strip_tabs = b.get(j) == Some(&b'-');
                if strip_tabs {
                    j += 1;
                }
                let q = b.get(j).copied().filter(|c| *c == b'\'' || *c == b'"');
                if q.is_some() {
                    j += 1;
                }
                let start = j;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j > start && q.is_none_or(|q| b.get(j) == Some(&q)) {
                    out.push(Doc {
                        word: command[start..j].to_string(),
                        strip_tabs,
                    });
                    i = j + usize::from(q.is_some());
                    continue;
                }
            }
            None => {}
        }
        i += 1;
    }
    out
}

/// `RUN [--flags] COMMAND` split after the flags: (`RUN --flags `, COMMAND).
fn split_run(line: &str) -> Option<(&str, &str)> {
    let body = line.trim_start();
    let head = body.get(..3)?;
    if !head.eq_ignore_ascii_case("RUN") || !body[3..].starts_with([' ', '\t']) {
        return None;
    }
    let mut at = line.len() - body.len() + 3;
    loop {
        let rest = &line[at..];
        let word_start = at + (rest.len() - rest.trim_start().len());
        let word = line[word_start..].split([' ', '\t']).next().unwrap_or("");
        if word.starts_with("--") {
            at = word_start + word.len();
        } else {
            return Some((&line[..word_start], &line[word_start..]));
        }
    }
}

/// Rewrite every `RUN command <<WORD` with its documents into `RUN <<KILN…`
/// (see the module docs); other lines are kept as they are.
pub(crate) fn inline_run_heredocs(text: &str) -> Rewritten {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(lines.len());
    let mut n = 0;
    let mut i = 0;
    let mut continued = false;
    while i < lines.len() {
        let line = lines[i];
        let content = line.trim_end_matches(['\n', '\r']);
        let rewrite = (!continued)
            .then(|| split_run(content))
            .flatten()
            .filter(|(_, command)| {
                !command.starts_with("<<") && !command.trim_end().ends_with('\\')
            })
            .map(|(head, command)| (head, command, docs(command)))
            .filter(|(_, _, docs)| !docs.is_empty());
        continued = content.ends_with('\\') || content.ends_with('`');
        let Some((head, command, docs)) = rewrite else {
            out.push_str(line);
            map.push(i + 1);
            i += 1;
            continue;
        };
        // The documents' lines, each up to its delimiter.
        let mut end = i + 1;
        let mut complete = true;
        for d in &docs {
            loop {
                let Some(l) = lines.get(end) else {
                    complete = false;
                    break;
                };
                end += 1;
                let l = l.trim_end_matches(['\n', '\r']);
                let l = if d.strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                if l == d.word {
                    break;
                }
            }
        }
        if !complete {
            // Left to the parser, which says what is wrong.
            out.push_str(line);
            map.push(i + 1);
            i += 1;
            continue;
        }
        let outer = loop {
            let w = format!("KILN_RUN_HEREDOC_{n}");
            n += 1;
            if !text.contains(&w) {
                break w;
            }
        };
        out.push_str(&format!("{head}<<{outer}\n{command}\n"));
        map.extend([i + 1, i + 1]);
        for (k, l) in lines.iter().enumerate().take(end).skip(i + 1) {
            out.push_str(l);
            if !l.ends_with('\n') {
                out.push('\n');
            }
            map.push(k + 1);
        }
        out.push_str(&outer);
        out.push('\n');
        map.push(end);
        i = end;
    }
    Rewritten {
        text: out,
        lines: map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_with_documents_become_scripts() {
        let df = "FROM scratch\nRUN --network=none python3 <<EOF\nprint(\"hi\")\nEOF\nRUN <<EOF\necho native\nEOF\nRUN cat <<'A' >/a <<-B\n$NOT\nA\nb\n\tB\nLABEL x=1\n";
        let r = inline_run_heredocs(df);
        assert_eq!(
            r.text,
            "FROM scratch\nRUN --network=none <<KILN_RUN_HEREDOC_0\npython3 <<EOF\nprint(\"hi\")\nEOF\nKILN_RUN_HEREDOC_0\nRUN <<EOF\necho native\nEOF\nRUN <<KILN_RUN_HEREDOC_1\ncat <<'A' >/a <<-B\n$NOT\nA\nb\n\tB\nKILN_RUN_HEREDOC_1\nLABEL x=1\n"
        );
        // LABEL is line 17 of the rewritten text and line 13 of the original.
        assert_eq!(r.line(1), 1);
        assert_eq!(r.line(2), 2);
        assert_eq!(r.line(3), 2);
        assert_eq!(r.line(6), 4);
        assert_eq!(r.line(17), 13);
        let parsed = parse_dockerfile::parse(&r.text).unwrap();
        assert_eq!(parsed.instructions.len(), 5);
    }

    #[test]
    fn what_is_not_a_document_is_left_alone() {
        for df in [
            "RUN echo '<<EOF'\n",
            "RUN a <<< word\n",
            "RUN a <<<word\n",
            "RUN x \\\n  <<EOF\n",
            "RUN python3 <<EOF\nno end\n",
            "COPY <<EOF /x\nhi\nEOF\n",
        ] {
            let r = inline_run_heredocs(df);
            assert_eq!(r.text, df);
            assert_eq!(r.line(1), 1);
        }
    }
}
