//! System users and groups that packages create, added to `/etc/passwd` and
//! `/etc/group` without running anything: `adduser --system`,
//! `addgroup --system`, `useradd -r`, `groupadd -r` lines of postinst
//! scripts, and `sysusers.d` files (`u` and `g` lines) the packages ship.

/// `/etc/passwd` and `/etc/group`, as lines.
pub(crate) struct Accounts {
    pub(crate) passwd: Vec<String>,
    pub(crate) group: Vec<String>,
}

/// What one command or sysusers line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Group {
        name: String,
        gid: Option<u32>,
    },
    User {
        name: String,
        uid: Option<u32>,
        /// An existing group by name; `None` with `own_group` false means nogroup.
        group: Option<String>,
        own_group: bool,
        home: String,
        shell: String,
    },
}

const NOLOGIN: &str = "/usr/sbin/nologin";

fn field(line: &str, n: usize) -> Option<&str> {
    line.split(':').nth(n)
}

impl Accounts {
    fn has_user(&self, name: &str) -> bool {
        self.passwd.iter().any(|l| field(l, 0) == Some(name))
    }

    fn gid_of(&self, name: &str) -> Option<u32> {
        self.group
            .iter()
            .find(|l| field(l, 0) == Some(name))
            .and_then(|l| field(l, 2))
            .and_then(|s| s.parse().ok())
    }

    /// The lowest free system id (100–999) in `lines`' third field.
    fn free_id(lines: &[String], wanted: Option<u32>) -> u32 {
        let taken = |id: u32| lines.iter().any(|l| field(l, 2) == Some(&id.to_string()));
        if let Some(w) = wanted.filter(|w| !taken(*w)) {
            return w;
        }
        (100..1000).find(|id| !taken(*id)).unwrap_or(999)
    }

    fn add_group(&mut self, name: &str, gid: Option<u32>) -> u32 {
        if let Some(g) = self.gid_of(name) {
            return g;
        }
        let gid = Self::free_id(&self.group, gid);
        self.group.push(format!("{name}:x:{gid}:"));
        gid
    }

    /// Apply one request; returns a line for the report when something was added.
    pub(crate) fn apply(&mut self, r: &Request) -> Option<String> {
        match r {
            Request::Group { name, gid } => {
                if self.gid_of(name).is_some() {
                    return None;
                }
                self.add_group(name, *gid);
                Some(format!("system group {name}"))
            }
            Request::User {
                name,
                uid,
                group,
                own_group,
                home,
                shell,
            } => {
                if self.has_user(name) {
                    return None;
                }
                let gid = if *own_group {
                    self.add_group(name, *uid)
                } else {
                    group
                        .as_deref()
                        .and_then(|g| self.gid_of(g))
                        .unwrap_or(65534)
                };
                let uid = Self::free_id(&self.passwd, *uid);
                self.passwd
                    .push(format!("{name}:x:{uid}:{gid}::{home}:{shell}"));
                Some(format!("system user {name}"))
            }
        }
    }
}

/// Requests in a maintainer script (only `--system`/`-r` ones: others need a person).
pub(crate) fn from_script(script: &str) -> Vec<Request> {
    let mut out = Vec::new();
    for line in script.replace("\\\n", " ").lines() {
        // A command ends at a shell operator or a redirection.
        let words: Vec<&str> = line
            .split_whitespace()
            .take_while(|w| {
                !(w.starts_with("||")
                    || w.starts_with("&&")
                    || w.starts_with(';')
                    || w.starts_with('|')
                    || w.contains('>'))
            })
            .collect();
        for (at, w) in words.iter().enumerate() {
            let cmd = w.rsplit('/').next().unwrap_or(w);
            if matches!(cmd, "adduser" | "addgroup" | "useradd" | "groupadd") {
                if let Some(r) = parse_command(cmd, &words[at + 1..]) {
                    out.push(r);
                }
                break;
            }
        }
    }
    out
}

fn parse_command(cmd: &str, args: &[&str]) -> Option<Request> {
    // `--system`, or for useradd/groupadd `-r` (also inside a cluster like `-rM`).
    let short_r = |a: &str| a.starts_with('-') && !a.starts_with("--") && a.contains('r');
    let system = args
        .iter()
        .any(|a| *a == "--system" || (cmd.ends_with("add") && short_r(a)));
    if !system {
        return None;
    }
    let mut name = None;
    let mut home = "/nonexistent".to_string();
    let mut shell = NOLOGIN.to_string();
    let mut group = None;
    let mut own_group = false;
    let mut uid = None;
    let mut is_group = matches!(cmd, "addgroup" | "groupadd");
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        let next = args
            .get(i + 1)
            .map(|s| s.trim_matches(|c| c == '"' || c == '\''));
        match a {
            "--home" | "-d" | "--home-dir" => {
                home = next.unwrap_or("/nonexistent").to_string();
                i += 1;
            }
            "--shell" | "-s" => {
                shell = next.unwrap_or(NOLOGIN).to_string();
                i += 1;
            }
            "--ingroup" | "-g" | "--gid" => {
                group = next.map(String::from);
                i += 1;
            }
            "--uid" | "-u" => {
                uid = next.and_then(|s| s.parse().ok());
                i += 1;
            }
            "--group" if cmd == "adduser" => {
                // `adduser --system --group NAME`: a user with its own group;
                // `adduser --group NAME` alone is addgroup.
                own_group = true;
            }
            "-U" | "--user-group" => own_group = true,
            "--gecos" | "--comment" | "-c" | "-K" | "--key" | "--firstuid" | "--lastuid" => i += 1,
            w if w.starts_with('-') || w.contains('$') => {}
            w => name = Some(w.trim_matches(|c| c == '"' || c == '\'').to_string()),
        }
        i += 1;
    }
    let name = name?;
    // `adduser --system --group NAME` with no user-only options is still a user.
    if cmd == "adduser" && !own_group && args.contains(&"--group") {
        is_group = true;
    }
    Some(if is_group {
        Request::Group { name, gid: uid }
    } else {
        Request::User {
            name,
            uid,
            group,
            own_group,
            home,
            shell,
        }
    })
}

/// Requests in a `sysusers.d` file: `g NAME ID` and `u NAME ID "GECOS" HOME SHELL`.
pub(crate) fn from_sysusers(text: &str) -> Vec<Request> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = split_quoted(line);
        let get = |n: usize| words.get(n).map(String::as_str).filter(|w| *w != "-");
        let (Some(kind), Some(name)) = (get(0), get(1)) else {
            continue;
        };
        let id = get(2).and_then(|s| s.split(':').next()?.parse().ok());
        match kind.trim_end_matches('!') {
            "g" => out.push(Request::Group {
                name: name.to_string(),
                gid: id,
            }),
            "u" => out.push(Request::User {
                name: name.to_string(),
                uid: id,
                group: None,
                own_group: true,
                home: get(4).unwrap_or("/").to_string(),
                shell: get(5).unwrap_or(NOLOGIN).to_string(),
            }),
            _ => {}
        }
    }
    out
}

/// Whitespace-separated words, `"double quoted"` ones kept whole.
fn split_quoted(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Accounts {
        Accounts {
            passwd: vec!["root:x:0:0:root:/root:/bin/bash".into()],
            group: vec!["root:x:0:".into(), "nogroup:x:65534:".into()],
        }
    }

    #[test]
    fn scripts_and_sysusers() {
        let mut a = base();
        let script = "#!/bin/sh\nset -e\naddgroup --system --quiet kilngrp\n\
            useradd -r -g kilngrp -d /var/lib/kilnd -s /bin/false kilnd || true\n\
            adduser --system --group --home /run/svc svc >/dev/null\n\
            groupadd --system other\nadduser alice\n";
        let reqs = from_script(script);
        assert_eq!(reqs.len(), 4, "{reqs:?}");
        for r in &reqs {
            a.apply(r);
        }
        let text = format!("{}\n{}", a.passwd.join("\n"), a.group.join("\n"));
        assert!(text.contains("kilngrp:x:100:"), "{text}");
        assert!(
            text.contains("kilnd:x:100:100::/var/lib/kilnd:/bin/false"),
            "{text}"
        );
        assert!(
            text.contains("svc:x:101:101::/run/svc:/usr/sbin/nologin"),
            "{text}"
        );
        assert!(text.contains("other:x:102:"), "{text}");
        assert!(!text.contains("alice"), "{text}");

        let sys = from_sysusers(
            "# comment\ng tss 120\nu tss 120:120 \"TPM software stack\" /var/lib/tpm -\nu! dnsmasq - \"dnsmasq\" /var/lib/misc\n",
        );
        assert_eq!(sys.len(), 3, "{sys:?}");
        for r in &sys {
            a.apply(r);
        }
        let text = format!("{}\n{}", a.passwd.join("\n"), a.group.join("\n"));
        assert!(
            text.contains("tss:x:120:120::/var/lib/tpm:/usr/sbin/nologin"),
            "{text}"
        );
        assert!(text.contains("dnsmasq:x:"), "{text}");
        // Applying again changes nothing.
        let before = (a.passwd.len(), a.group.len());
        for r in sys.iter().chain(&reqs) {
            assert!(a.apply(r).is_none());
        }
        assert_eq!(before, (a.passwd.len(), a.group.len()));
    }
}
