//! `application/x-www-form-urlencoded` bodies, and the spec form's fields
//! to and from the API's [`SpecInput`].

use std::collections::BTreeMap;

use crate::spec_input::{ConfigInput, Packages, SpecInput, TYPE_PACKAGES};

/// The types the form offers: (value, label).
pub(crate) const TYPES: &[(&str, &str)] = &[
    (
        "packages",
        "packages: a base plus apt, pip and conda packages",
    ),
    ("image", "image: an existing image, used as it is"),
    (
        "python-env",
        "python-env: a requirements.txt or environment.yml in Git",
    ),
    (
        "dockerfile",
        "dockerfile: a folder with a Dockerfile in Git",
    ),
];

/// A decoded form body (fields in order; the first of a name wins).
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn parse(body: &[u8]) -> Form {
        let mut fields = Vec::new();
        for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            fields.push((decode(k), decode(v)));
        }
        Form(fields)
    }

    /// A field's value; `""` when absent.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `+` is a space, `%XX` a byte; bytes that are not UTF-8 become U+FFFD.
fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex_val(s[i + 1]), hex_val(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The spec form's fields as text, as the user typed them (kept on errors).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SpecForm {
    pub name: String,
    /// The spec's type (`packages`, `image`, `python-env`, `dockerfile`).
    pub kind: String,
    /// With type `image`: the registry reference.
    pub image: String,
    /// With types `python-env` and `dockerfile`: the Git URL.
    pub source: String,
    pub base: String,
    pub apt: String,
    pub pip: String,
    pub conda: String,
    pub channels: String,
    pub env: String,
    pub user: String,
    pub workdir: String,
    pub entrypoint: String,
    pub cmd: String,
    pub labels: String,
}

/// The textarea fields: (name, label, hint).
pub(crate) const TEXTAREAS: &[(&str, &str, &str)] = &[
    ("apt", "apt packages", "one per line"),
    ("pip", "pip packages", "one per line"),
    ("conda", "conda packages", "one per line"),
    (
        "channels",
        "conda channels",
        "one per line, highest priority first",
    ),
    ("env", "Environment", "KEY=VALUE, one per line"),
    ("entrypoint", "Entrypoint", "one argument per line"),
    ("cmd", "Command", "one argument per line"),
    ("labels", "Labels", "KEY=VALUE, one per line"),
];

impl SpecForm {
    pub(crate) fn new_default() -> SpecForm {
        SpecForm {
            kind: TYPE_PACKAGES.into(),
            base: "scratch".into(),
            ..SpecForm::default()
        }
    }

    pub(crate) fn from_form(f: &Form) -> SpecForm {
        SpecForm {
            name: f.get("name").trim().to_string(),
            kind: match f.get("type").trim() {
                "" => TYPE_PACKAGES.to_string(),
                t => t.to_string(),
            },
            image: f.get("image").trim().to_string(),
            source: f.get("source").trim().to_string(),
            base: f.get("base").to_string(),
            apt: f.get("apt").to_string(),
            pip: f.get("pip").to_string(),
            conda: f.get("conda").to_string(),
            channels: f.get("channels").to_string(),
            env: f.get("env").to_string(),
            user: f.get("user").to_string(),
            workdir: f.get("workdir").to_string(),
            entrypoint: f.get("entrypoint").to_string(),
            cmd: f.get("cmd").to_string(),
            labels: f.get("labels").to_string(),
        }
    }

    /// The form prefilled from a stored revision.
    pub(crate) fn from_input(name: &str, i: &SpecInput) -> SpecForm {
        let lines = |v: &[String]| v.join("\n");
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let c = &i.config;
        SpecForm {
            name: name.to_string(),
            kind: i.kind().to_string(),
            image: i.image.clone().unwrap_or_default(),
            source: i.source.clone().unwrap_or_default(),
            base: i.base.clone(),
            apt: lines(&i.packages.apt),
            pip: lines(&i.packages.pip),
            conda: lines(&i.packages.conda),
            channels: lines(&i.channels),
            env: pairs(&c.env),
            user: c.user.clone().unwrap_or_default(),
            workdir: c.workdir.clone().unwrap_or_default(),
            entrypoint: c.entrypoint.as_deref().map(lines).unwrap_or_default(),
            cmd: c.cmd.as_deref().map(lines).unwrap_or_default(),
            labels: pairs(&c.labels),
        }
    }

    /// A field's text by its form name.
    pub(crate) fn field(&self, name: &str) -> &str {
        match name {
            "name" => &self.name,
            "type" => &self.kind,
            "image" => &self.image,
            "source" => &self.source,
            "base" => &self.base,
            "apt" => &self.apt,
            "pip" => &self.pip,
            "conda" => &self.conda,
            "channels" => &self.channels,
            "env" => &self.env,
            "user" => &self.user,
            "workdir" => &self.workdir,
            "entrypoint" => &self.entrypoint,
            "cmd" => &self.cmd,
            "labels" => &self.labels,
            _ => "",
        }
    }

    /// The API's input (not yet validated: [`SpecInput::render`] does
    /// that): the form's fields over `input` (what the form does not show,
    /// such as an edited spec's Git repository for webhooks, is kept).
    pub(crate) fn apply(&self, mut input: SpecInput) -> Result<SpecInput, String> {
        let base = self.base.trim();
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let args = |s: &str| Some(arg_lines(s)).filter(|a| !a.is_empty());
        input.name = Some(self.name.clone());
        input.kind =
            Some(self.kind.trim().to_string()).filter(|k| !k.is_empty() && k != TYPE_PACKAGES);
        input.image = opt(&self.image);
        input.source = opt(&self.source);
        input.base = if base.is_empty() { "scratch" } else { base }.to_string();
        input.packages = Packages {
            apt: item_lines(&self.apt),
            pip: item_lines(&self.pip),
            conda: item_lines(&self.conda),
        };
        input.channels = item_lines(&self.channels);
        input.config = ConfigInput {
            env: pair_lines("Environment", &self.env)?,
            user: opt(&self.user),
            workdir: opt(&self.workdir),
            entrypoint: args(&self.entrypoint),
            cmd: args(&self.cmd),
            labels: pair_lines("Labels", &self.labels)?,
        };
        Ok(input)
    }

    /// A new spec's input.
    #[cfg(test)]
    pub(crate) fn to_input(&self) -> Result<SpecInput, String> {
        self.apply(SpecInput::default())
    }
}

/// Non-empty lines, trimmed (package lines, channels).
fn item_lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Non-blank lines kept as typed (arguments may have spaces).
fn arg_lines(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// `KEY=VALUE` lines (the value kept as typed, the key trimmed).
fn pair_lines(what: &str, s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in s.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("{what}, line {}: `{line}` is not KEY=VALUE", n + 1));
        };
        let k = k.trim();
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("{what}: `{k}` is set twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_bodies() {
        let f = Form::parse(b"a=1+2%3D3&b=%3Cscript%3E&c&a=ignored&d=%zz%4&e=%C3%A9");
        assert_eq!(f.get("a"), "1 2=3");
        assert_eq!(f.get("b"), "<script>");
        assert_eq!(f.get("c"), "");
        assert_eq!(f.get("d"), "%zz%4");
        assert_eq!(f.get("e"), "é");
        assert_eq!(f.get("missing"), "");
    }

    #[test]
    fn spec_form_round_trips() {
        let form = SpecForm {
            name: "demo".into(),
            base: " scratch ".into(),
            pip: "numpy>=1.2\r\n\r\n  tomli; python_version < '3.11'  \n".into(),
            env: "A=x=y \"q\"\nB=\n".into(),
            cmd: "sh\n-c\necho 'hi there'\n".into(),
            labels: "org.example.x=1".into(),
            ..SpecForm::default()
        };
        let i = form.to_input().unwrap();
        assert_eq!(i.base, "scratch");
        assert_eq!(
            i.packages.pip,
            ["numpy>=1.2", "tomli; python_version < '3.11'"]
        );
        assert_eq!(i.config.env["A"], "x=y \"q\"");
        assert_eq!(i.config.env["B"], "");
        assert_eq!(
            i.config.cmd.as_deref().unwrap(),
            ["sh", "-c", "echo 'hi there'"]
        );
        assert!(i.config.entrypoint.is_none() && i.config.user.is_none());
        let back = SpecForm::from_input("demo", &i);
        assert_eq!(back.to_input().unwrap(), i);

        let bad = SpecForm {
            env: "A=1\nnot a pair".into(),
            ..SpecForm::default()
        };
        assert_eq!(
            bad.to_input().unwrap_err(),
            "Environment, line 2: `not a pair` is not KEY=VALUE"
        );
        let twice = SpecForm {
            labels: "a=1\na=2".into(),
            ..SpecForm::default()
        };
        assert!(twice.to_input().unwrap_err().contains("set twice"));
    }
}
