use std::path::Path;

use super::*;

struct Ctx {
    dir: tempfile::TempDir,
}

impl Ctx {
    fn new(files: &[(&str, &str)]) -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        Ctx { dir }
    }

    fn ok(&self, df: &str, args: &[(&str, &str)]) -> Translation {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let opts = Options {
            build_args: args,
            base: None,
            ..Options::default()
        };
        translate(df, Path::new("Dockerfile"), self.dir.path(), &opts)
            .unwrap_or_else(|e| panic!("{e}\n---\n{df}"))
    }

    fn err(&self, df: &str) -> (DockerfileError, String) {
        let e = translate(
            df,
            Path::new("Dockerfile"),
            self.dir.path(),
            &Options::default(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let msg = e.to_string();
        let typed = e
            .downcast_ref::<DockerfileError>()
            .unwrap_or_else(|| panic!("not a DockerfileError: {e}"));
        let copy = match typed {
            DockerfileError::Syntax {
                line,
                column,
                message,
                ..
            } => DockerfileError::Syntax {
                path: "Dockerfile".into(),
                line: *line,
                column: *column,
                message: message.clone(),
            },
            other => DockerfileError::Invalid {
                path: "Dockerfile".into(),
                line: other.line(),
                instruction: format!("{other:?}"),
                message: String::new(),
            },
        };
        (copy, msg)
    }
}

fn ctx() -> Ctx {
    Ctx::new(&[])
}

#[test]
fn metadata_instructions_become_config() {
    let t = ctx().ok(
        "# syntax=docker/dockerfile:1\nFROM scratch\nENV A=1 B=\"two words\"\nENV LEGACY value with spaces\nLABEL org.x=\"y z\" other=1\nUSER 1000:1000\nWORKDIR /app\nWORKDIR sub\nEXPOSE 8080 53/udp\nVOLUME [\"/data\"]\nVOLUME /cache /more\nSTOPSIGNAL SIGINT\n",
        &[],
    );
    let c = &t.spec.config;
    assert_eq!(c.env["A"], "1");
    assert_eq!(c.env["B"], "two words");
    assert_eq!(c.env["LEGACY"], "value with spaces");
    assert_eq!(c.labels["org.x"], "y z");
    assert_eq!(c.user.as_ref().unwrap().0, "1000:1000");
    assert_eq!(c.workdir.as_ref().unwrap().0, "/app/sub");
    let ports: Vec<_> = c.exposed_ports.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(ports, ["8080/tcp", "53/udp"]);
    let vols: Vec<_> = c.volumes.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(vols, ["/data", "/cache", "/more"]);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(t.spec.image.base, "scratch");
    assert_eq!(t.explained[0].treatment, Treatment::Directive);
    assert!(t.explained.iter().all(|e| e.line > 0));
}

#[test]
fn args_and_env_expand_with_buildkit_semantics() {
    let df = "ARG BASE=scratch\nARG TAG\nFROM ${BASE}\nARG VERSION=1.0\nARG UNSET\nARG BASE\nENV V=${VERSION} D=${UNSET:-dflt} P=${VERSION:+set} Q=${UNSET:+set} B=$BASE\nENV W=$V-x\nLABEL v=\"${VERSION}\" lit='$VERSION'\nWORKDIR /opt/${VERSION}\n";
    let t = ctx().ok(df, &[]);
    let env = &t.spec.config.env;
    assert_eq!(env["V"], "1.0");
    assert_eq!(env["D"], "dflt");
    assert_eq!(env["P"], "set");
    assert_eq!(env["Q"], "");
    assert_eq!(
        env["B"], "scratch",
        "ARG BASE in the stage takes the global value"
    );
    assert_eq!(env["W"], "1.0-x", "ENV is visible to later instructions");
    assert_eq!(t.spec.config.labels["v"], "1.0");
    assert_eq!(t.spec.config.labels["lit"], "$VERSION");
    assert_eq!(t.spec.config.workdir.as_ref().unwrap().0, "/opt/1.0");
    // --build-arg overrides the defaults, before and after FROM.
    let t = ctx().ok(df, &[("VERSION", "2.5"), ("UNSET", "u"), ("NOT_USED", "x")]);
    assert_eq!(t.spec.config.env["V"], "2.5");
    assert_eq!(t.spec.config.env["D"], "u");
    assert_eq!(t.spec.config.env["Q"], "set");
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert!(t.warnings[0].contains("NOT_USED"));
    let t = ctx().ok("ARG IMG=scratch\nFROM $IMG\n", &[("IMG", "oci:base:v1")]);
    assert_eq!(t.spec.image.base, "oci:base:v1");
    // ENV wins over ARG of the same name.
    let t = ctx().ok("FROM scratch\nARG X=arg\nENV X=env\nLABEL x=$X\n", &[]);
    assert_eq!(t.spec.config.labels["x"], "env");
}

#[test]
fn undeclared_variables_on_a_real_base_are_refused() {
    let (e, msg) = ctx().err("FROM oci:base\nENV PATH=/opt/bin:$PATH\n");
    assert_eq!(e.line(), 2);
    assert!(msg.contains("`$PATH` is not defined"), "{msg}");
    assert!(msg.contains("Dockerfile line 2: ENV"), "{msg}");
    // On scratch there is no environment: it is empty.
    let t = ctx().ok("FROM scratch\nENV PATH=/opt/bin:$PATH\n", &[]);
    assert_eq!(t.spec.config.env["PATH"], "/opt/bin:");
}

#[test]
fn cmd_and_entrypoint_exec_and_shell_forms() {
    let t = ctx().ok(
        "FROM scratch\nCMD [\"app\", \"--flag\"]\nENTRYPOINT /bin/run \\\n  --x \"$HOME\"\n",
        &[],
    );
    assert_eq!(t.spec.config.cmd.as_deref().unwrap(), ["app", "--flag"]);
    assert_eq!(
        t.spec.config.entrypoint.as_deref().unwrap(),
        ["/bin/sh", "-c", "/bin/run   --x \"$HOME\""]
    );
    let t = ctx().ok(
        "FROM scratch\nSHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\nCMD echo hi\n",
        &[],
    );
    assert_eq!(
        t.spec.config.cmd.as_deref().unwrap(),
        ["/bin/bash", "-o", "pipefail", "-c", "echo hi"]
    );
    let entry = t
        .explained
        .iter()
        .find(|e| e.instruction.starts_with("CMD"))
        .unwrap();
    assert_eq!(entry.treatment, Treatment::Config);
}

#[test]
fn escape_directive_changes_continuations() {
    let t = ctx().ok(
        "# escape=`\nFROM scratch\nENV A=x`\n  B=y\nCMD run `\n  this\n",
        &[],
    );
    assert_eq!(t.spec.config.env["B"], "y");
    assert_eq!(t.spec.config.cmd.as_deref().unwrap()[2], "run   this");
}

#[test]
fn package_installs_become_native_stages() {
    let c = Ctx::new(&[
        ("requirements.txt", "requests\n"),
        ("app/req-dev.txt", "pytest\n"),
    ]);
    let t = c.ok(
        "FROM scratch\n\
         RUN apt-get update && \\\n    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\\n      python3 'libgreet=1.0' curl:amd64 \\\n && apt-get clean && rm -rf /var/lib/apt/lists/*\n\
         WORKDIR /app\n\
         COPY requirements.txt .\n\
         COPY app/ /src/\n\
         RUN pip install --no-cache-dir -U \"numpy>=1.26\" -r requirements.txt --index-url http://127.0.0.1:9/simple --extra-index-url http://127.0.0.1:9/extra\n\
         RUN python3 -m pip install --requirement /src/req-dev.txt && pip cache purge\n",
        &[],
    );
    let apt = t.spec.apt.as_ref().unwrap();
    assert_eq!(apt.packages, ["python3", "libgreet=1.0", "curl:amd64"]);
    let pip = t.spec.pip.as_ref().unwrap();
    assert_eq!(pip.packages, ["numpy>=1.26"]);
    assert_eq!(pip.requirements, ["requirements.txt", "app/req-dev.txt"]);
    assert_eq!(pip.index.as_deref(), Some("http://127.0.0.1:9/simple"));
    assert_eq!(pip.extra_index, ["http://127.0.0.1:9/extra"]);
    assert_eq!(pip.target, "system");
    let kinds: Vec<_> = t
        .explained
        .iter()
        .filter(|e| e.line == 2)
        .map(|e| e.treatment)
        .collect();
    assert_eq!(
        kinds,
        [
            Treatment::Dropped,
            Treatment::Apt,
            Treatment::Dropped,
            Treatment::Dropped
        ]
    );
    assert_eq!(t.spec.files.len(), 2);
    assert_eq!(t.spec.files[0].dst.0, "/app/requirements.txt");
}

#[test]
fn conda_installs_and_pip_into_the_environment() {
    let t = ctx().ok(
        "FROM scratch\nRUN micromamba install -y -n base -c conda-forge -c bioconda python=3.12 'numpy>=1.26,<2' && micromamba clean --all --yes\nRUN conda create -y -p /opt/conda -c conda-forge scipy && conda clean -afy\nRUN pip install requests\n",
        &[],
    );
    let conda = t.spec.conda.as_ref().unwrap();
    assert_eq!(conda.channels, ["conda-forge", "bioconda"]);
    assert_eq!(conda.packages, ["python=3.12", "numpy>=1.26,<2", "scipy"]);
    assert_eq!(conda.prefix, "/opt/conda");
    assert_eq!(t.spec.pip.as_ref().unwrap().target, "/opt/conda");
    let t = ctx().ok("FROM scratch\nRUN /opt/venv/bin/pip install x\n", &[]);
    assert_eq!(t.spec.pip.as_ref().unwrap().target, "/opt/venv");
    let t = ctx().ok(
        "FROM scratch\nENV PIP_INDEX_URL=http://127.0.0.1:9/simple\nRUN pip3 install x\n",
        &[],
    );
    assert_eq!(
        t.spec.pip.as_ref().unwrap().index.as_deref(),
        Some("http://127.0.0.1:9/simple")
    );
}

#[test]
fn run_variables_expand_from_arg_and_env() {
    let t = ctx().ok(
        "FROM scratch\nARG PY=3.12\nENV PKG=numpy\nRUN conda install -y -c conda-forge python=${PY} \"$PKG\"\n",
        &[("PY", "3.11")],
    );
    assert_eq!(
        t.spec.conda.as_ref().unwrap().packages,
        ["python=3.11", "numpy"]
    );
}

#[test]
fn exec_form_run_is_one_command() {
    let t = ctx().ok(
        "FROM scratch\nRUN [\"apt-get\", \"install\", \"-y\", \"a b\"]\n",
        &[],
    );
    assert_eq!(t.spec.apt.unwrap().packages, ["a b"]);
}

#[test]
fn other_run_lines_run_in_the_sandbox_and_say_why() {
    let c = ctx();
    for (df, line, needle) in [
        (
            "FROM scratch\nRUN useradd x\n",
            2,
            "`useradd x` is not a package install",
        ),
        (
            "FROM scratch\n\nRUN apt-get update && mkdir -p /x\n",
            3,
            "`mkdir -p /x`",
        ),
        (
            "FROM scratch\nRUN apt-get update; apt-get install -y x\n",
            2,
            "`;`",
        ),
        (
            "FROM scratch\nRUN curl http://127.0.0.1/x | sh\n",
            2,
            "pipe",
        ),
        (
            "FROM scratch\nRUN apt-get install -y x || true\n",
            2,
            "`||`",
        ),
        (
            "FROM scratch\nRUN echo $(id) > /x\n",
            2,
            "command substitution",
        ),
        ("FROM scratch\nRUN (cd /x)\n", 2, "subshell"),
        (
            "FROM scratch\nRUN apt-get install -y -o Foo=1 x\n",
            2,
            "`-o`",
        ),
        ("FROM scratch\nRUN pip install --user x\n", 2, "`--user`"),
        (
            "FROM scratch\nRUN pip install ./local\n",
            2,
            "not paths or URLs",
        ),
        (
            "FROM scratch\nRUN conda install -n other x\n",
            2,
            "named environment `other`",
        ),
        (
            "FROM scratch\nRUN apt-get remove x\n",
            2,
            "`apt-get remove x`",
        ),
        ("FROM scratch\nRUN rm -rf /tmp/x\n", 2, "`rm -rf /tmp/x`"),
        ("FROM scratch\nRUN FOO=1 apt-get install x\n", 2, "`FOO=…`"),
    ] {
        let t = c.ok(df, &[]);
        assert_eq!(t.spec.run.len(), 1, "{df}\n{}", t.toml);
        let step = &t.spec.run[0];
        assert!(
            step.describe(0).ends_with(&format!("line {line}: RUN")),
            "{df}: {:?}",
            step.label
        );
        let e = t
            .explained
            .iter()
            .find(|e| e.line == line)
            .unwrap_or_else(|| panic!("{df}: {:?}", t.explained));
        assert_eq!(e.treatment, Treatment::Sandboxed, "{df}");
        assert!(e.detail.contains(needle), "{df}: {}", e.detail);
        // The whole line, as written, runs through the shell.
        assert_eq!(step.argv()[..2], ["/bin/sh", "-c"], "{df}");
    }
}

#[test]
fn sandboxed_runs_carry_the_state_of_their_line() {
    let c = Ctx::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let t = c.ok(
        "FROM scratch\nARG V=1\nENV E=x\nCOPY a.txt /a\nUSER 1000:1000\nWORKDIR /w\n\
         SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\n\
         RUN --network=none echo $V | tee /tmp/v\nCOPY b.txt /b\nRUN [\"/bin/touch\", \"/t\"]\n",
        &[],
    );
    assert_eq!(t.spec.run.len(), 2, "{}", t.toml);
    let first = &t.spec.run[0];
    assert_eq!(
        first.argv(),
        ["/bin/bash", "-o", "pipefail", "-c", "echo $V | tee /tmp/v"]
    );
    assert_eq!(first.env.get("V").map(String::as_str), Some("1"));
    assert_eq!(first.env.get("E").map(String::as_str), Some("x"));
    assert_eq!(first.user.as_deref(), Some("1000:1000"));
    assert_eq!(first.workdir.as_ref().map(|w| w.0.as_str()), Some("/w"));
    assert_eq!(first.network, Some(kiln_spec::spec::Network::None));
    assert_eq!(first.after_files, Some(1));
    let second = &t.spec.run[1];
    assert_eq!(second.argv(), ["/bin/touch", "/t"]);
    assert_eq!(second.after_files, Some(2));
    assert_eq!(second.network, None);
}

#[test]
fn native_installs_after_a_sandboxed_line_say_they_come_first() {
    let t = ctx().ok(
        "FROM scratch\nRUN useradd app\nRUN apt-get install -y hello\n",
        &[],
    );
    assert_eq!(t.spec.apt.as_ref().unwrap().packages, ["hello"]);
    let e = t.explained.iter().find(|e| e.line == 3).unwrap();
    assert_eq!(e.treatment, Treatment::Apt);
    assert!(
        e.detail.contains("native stages come first"),
        "{}",
        e.detail
    );
}

#[test]
fn package_stages_must_come_in_kilns_order() {
    let (e, msg) = ctx().err("FROM scratch\nRUN pip install x\nRUN apt-get install -y y\n");
    assert_eq!(e.line(), 3);
    assert!(
        msg.contains("apt packages after pip packages (line 2)"),
        "{msg}"
    );
    let (_, msg) = ctx().err("FROM scratch\nRUN pip install x && conda install -c c y\n");
    assert!(msg.contains("conda packages after pip"), "{msg}");
    ctx().ok("FROM scratch\nRUN apt-get install -y a\nRUN conda install -c c b\nRUN pip install c\nRUN apt-get clean\n", &[]);
}

#[test]
fn requirements_must_come_from_an_earlier_copy() {
    let c = Ctx::new(&[("requirements.txt", "x\n")]);
    let (e, msg) =
        c.err("FROM scratch\nRUN pip install -r /requirements.txt\nCOPY requirements.txt /\n");
    assert_eq!(e.line(), 2);
    assert!(msg.contains("earlier COPY"), "{msg}");
    let t = c.ok(
        "FROM scratch\nCOPY . /src\nRUN pip install -r/src/requirements.txt\n",
        &[],
    );
    assert_eq!(t.spec.pip.unwrap().requirements, ["requirements.txt"]);
}

#[test]
fn copy_becomes_files_entries() {
    let c = Ctx::new(&[
        ("a.txt", "a"),
        ("b.txt", "b"),
        ("dir/x", "x"),
        ("dir/sub/y", "y"),
    ]);
    let t = c.ok(
        "FROM scratch\nCOPY --chown=1000:1001 --chmod=0640 a.txt /etc/a.conf\nCOPY a.txt b.txt /multi\nCOPY dir /opt/dir\nCOPY --chown=7 dir/x /x/\nADD b.txt /added\nCOPY --link ./dir/../a.txt /linked\n",
        &[],
    );
    let f: Vec<_> = t
        .spec
        .files
        .iter()
        .map(|f| {
            (
                f.src.as_str(),
                f.dst.0.as_str(),
                f.mode.map(|m| m.0),
                f.owner.map(|o| (o.uid, o.gid)),
            )
        })
        .collect();
    assert_eq!(
        f,
        [
            ("a.txt", "/etc/a.conf", Some(0o640), Some((1000, 1001))),
            ("a.txt", "/multi/a.txt", None, None),
            ("b.txt", "/multi/b.txt", None, None),
            ("dir", "/opt/dir", None, None),
            ("dir/x", "/x/x", None, Some((7, 7))),
            ("b.txt", "/added", None, None),
            ("a.txt", "/linked", None, None),
        ]
    );
    assert!(
        t.explained
            .iter()
            .filter(|e| e.treatment == Treatment::Files)
            .count()
            == 7
    );
    assert!(t.toml.contains("[[files]]"), "{}", t.toml);
}

#[test]
fn copy_refusals_name_the_line() {
    let c = Ctx::new(&[
        ("a.txt", "a"),
        ("secret.txt", "s"),
        ("dir/keep", "k"),
        ("dir/x.log", "l"),
        (".dockerignore", "secret.txt\n**/*.log\n"),
        ("arch.tar.gz", "\x1f\u{8b}"),
    ]);
    for (df, line, needle) in [
        (
            "FROM scratch\nCOPY missing.txt /m\n",
            2,
            "`missing.txt` not found in the build context",
        ),
        (
            "FROM scratch\nCOPY ../a.txt /m\n",
            2,
            "outside the build context",
        ),
        (
            "FROM scratch\nCOPY secret.txt /s\n",
            2,
            "excluded by .dockerignore",
        ),
        ("FROM scratch\nCOPY *.txt /d/\n", 2, "wildcard"),
        (
            "FROM scratch\nCOPY --chown=app a.txt /a\n",
            2,
            "user or group name",
        ),
        (
            "FROM scratch\nCOPY --chmod=u+x a.txt /a\n",
            2,
            "symbolic mode",
        ),
        (
            "FROM scratch\nADD --checksum=md5:00 http://127.0.0.1/x /x\n",
            2,
            "sha256:HEX",
        ),
        (
            "FROM scratch\nCOPY --checksum=sha256:00 a.txt /x\n",
            2,
            "--checksum",
        ),
        (
            "FROM scratch\nCOPY a.txt /etc/apt/sources.list.d/x.list\n",
            2,
            "package-manager configuration",
        ),
        ("FROM oci:b\nCOPY a.txt rel\n", 2, "no WORKDIR"),
        (
            "FROM scratch AS one\nFROM scratch\nCOPY --from=two /x /x\n",
            3,
            "COPY --from: no stage `two` before this line (earlier stages: one)",
        ),
        (
            "FROM scratch\n\nCOPY --from=img /x /x\n",
            3,
            "COPY --from: no stage `img`",
        ),
        ("FROM scratch\nCOPY --from=0 /x /x\n", 2, "no stage `0`"),
        (
            "FROM scratch AS a\nFROM a\nADD --from=a /x /x\n",
            3,
            "ADD --from",
        ),
        (
            "FROM scratch AS a\nFROM scratch\nARG S=a\nCOPY --from=$S /x /x\n",
            4,
            "naming a stage through a stage's ARG",
        ),
    ] {
        let (e, msg) = c.err(df);
        assert_eq!(e.line(), line, "{df}: {msg}");
        assert!(msg.contains(needle), "{df}: {msg}");
    }
    // .dockerignore does not matter for a directory it excludes nothing in.
    c.ok("FROM scratch\nCOPY a.txt /a\n", &[]);
}

#[test]
fn other_instructions_are_refused() {
    let c = ctx();
    for (df, line, needle) in [
        (
            "FROM scratch\nHEALTHCHECK --interval=soon CMD true\n",
            2,
            "not a duration",
        ),
        (
            "FROM scratch\nHEALTHCHECK --bogus=1 CMD true\n",
            2,
            "the option --bogus",
        ),
        ("FROM scratch\nONBUILD RUN x\n", 2, "ONBUILD"),
        ("FROM scratch\nMAINTAINER me\n", 2, "MAINTAINER"),
        ("FROM scratch\nEXPOSE 8000-8010\n", 2, "port range"),
        ("FROM scratch\nVOLUME data\n", 2, "absolute path"),
        ("FROM scratch\nUSER \"a b\"\n", 2, "invalid user"),
        (
            "FROM scratch\nRUN --security=insecure apt-get install x\n",
            2,
            "--security",
        ),
        ("FROM scratch\nARG TARGETARCH\n", 2, "TARGETARCH"),
    ] {
        let (e, msg) = c.err(df);
        assert_eq!(e.line(), line, "{df}: {msg}");
        assert!(msg.contains(needle), "{df}: {msg}");
    }
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let (e, msg) = ctx().err("FROM scratch\nFOO bar\n");
    assert!(
        matches!(e, DockerfileError::Syntax { line: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with("Dockerfile:2:1: unknown instruction"),
        "{msg}"
    );
    let (e, _) = ctx().err("COPY a /b\n");
    assert_eq!(e.line(), 1);
}

#[test]
fn explain_lists_every_refusal_and_the_table_names_treatments() {
    let c = ctx();
    let e = explain(
        "FROM scratch\nRUN --security=insecure a\nENV A=1\nONBUILD RUN x\n",
        Path::new("Dockerfile"),
        c.dir.path(),
        &Options::default(),
    );
    assert_eq!(e.errors.len(), 2);
    assert!(e.toml.is_none());
    let t = table(&e.explained);
    assert!(t.contains("refused"), "{t}");
    assert!(t.contains("[config] env A=1"), "{t}");
    let lines: Vec<usize> = e.explained.iter().map(|x| x.line).collect();
    assert_eq!(lines, [1, 2, 3, 4]);
}

#[test]
fn the_platform_option_of_from() {
    let t = ctx().ok("FROM --platform=linux/arm64 scratch\n", &[]);
    assert_eq!(t.spec.platforms().len(), 1);
    let (_, msg) = ctx().err("FROM --platform=linux/nope scratch\n");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn mangled_dockerfiles_never_panic() {
    let c = Ctx::new(&[("a", "a")]);
    let seeds: &[&[u8]] = &[
        b"# escape=`\nARG A=1\nFROM scratch AS s\nENV B=${A:-x} C=\"$A\"\nLABEL a=b\nCOPY --chown=1:1 a /a\nRUN apt-get update && apt-get install -y 'x' \\\n  y && pip install -r /a\nCMD [\"a\"]\nENTRYPOINT a b\nEXPOSE 80/udp\nVOLUME /v\nWORKDIR w\nUSER 1\n",
    ];
    for m in kiln_core::mutate::mutants(seeds, 2000) {
        let _ = explain(
            &String::from_utf8_lossy(&m),
            Path::new("Dockerfile"),
            c.dir.path(),
            &Options::default(),
        );
    }
}

#[test]
fn the_base_config_fills_undeclared_variables_and_the_workdir() {
    let c = Ctx::new(&[("a.txt", "a")]);
    let seen = std::cell::RefCell::new(Vec::new());
    let lookup = |image: &str, _: Option<&str>| {
        seen.borrow_mut().push(image.to_string());
        Ok(Some(BaseConfig {
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            workdir: Some("/home/app".into()),
        }))
    };
    let opts = Options {
        build_args: Vec::new(),
        base: Some(&lookup),
        ..Options::default()
    };
    let t = translate(
        "FROM oci:b:v1\nENV PATH=/opt/conda/bin:$PATH X=${NOPE:-d}$NOPE\nCOPY a.txt rel/\n",
        Path::new("Dockerfile"),
        c.dir.path(),
        &opts,
    )
    .unwrap();
    assert_eq!(seen.borrow().as_slice(), ["oci:b:v1"]);
    assert_eq!(t.spec.config.env["PATH"], "/opt/conda/bin:/usr/bin:/bin");
    assert_eq!(
        t.spec.config.env["X"], "d",
        "undeclared and not in the base: empty"
    );
    assert_eq!(t.spec.files[0].dst.0, "/home/app/rel/a.txt");
    // scratch is never looked up.
    translate(
        "FROM scratch\n",
        Path::new("Dockerfile"),
        c.dir.path(),
        &opts,
    )
    .unwrap();
    assert_eq!(seen.borrow().len(), 1);

    let failing = |_: &str, _: Option<&str>| -> kiln_core::Result<Option<BaseConfig>> {
        Err(kiln_core::Error::network("registry unreachable"))
    };
    let opts = Options {
        build_args: Vec::new(),
        base: Some(&failing),
        ..Options::default()
    };
    let e = translate(
        "ARG X\nFROM r.invalid/a:1\nENV A=1\n",
        Path::new("Dockerfile"),
        c.dir.path(),
        &opts,
    )
    .unwrap_err();
    assert_eq!(
        e.kind(),
        kiln_core::ErrorKind::Network,
        "the cause's kind is kept"
    );
    assert_eq!(
        e.to_string(),
        "Dockerfile line 2: FROM r.invalid/a:1: registry unreachable"
    );
    // Unavailable (offline): strict again.
    let offline = |_: &str, _: Option<&str>| Ok(None);
    let opts = Options {
        build_args: Vec::new(),
        base: Some(&offline),
        ..Options::default()
    };
    let e = translate(
        "FROM r.invalid/a:1
ENV P=$PATH
",
        Path::new("Dockerfile"),
        c.dir.path(),
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("`$PATH` is not defined"), "{e}");
}

#[test]
fn dockerignore_cuts_directory_copies_into_pieces() {
    let c = Ctx::new(&[
        ("Dockerfile", "x"),
        (".dockerignore", ".git\n**/*.log\nDockerfile\n"),
        (".git/HEAD", "h"),
        ("src/main.py", "m"),
        ("src/debug.log", "l"),
        ("src/pkg/a.py", "a"),
        ("README", "r"),
    ]);
    let t = c.ok("FROM scratch\nCOPY . /app\n", &[]);
    let f: Vec<_> = t
        .spec
        .files
        .iter()
        .map(|f| (f.src.as_str(), f.dst.0.as_str()))
        .collect();
    assert_eq!(
        f,
        [
            (".dockerignore", "/app/.dockerignore"),
            ("README", "/app/README"),
            ("src/main.py", "/app/src/main.py"),
            ("src/pkg", "/app/src/pkg"),
        ]
    );
    let e = t.explained.iter().find(|e| e.line == 2).unwrap();
    assert!(e.detail.contains("4 layers"), "{}", e.detail);
    // Without exclusions inside, a directory stays one entry.
    let t = c.ok("FROM scratch\nCOPY src/pkg /pkg\n", &[]);
    assert_eq!(t.spec.files.len(), 1);
    // Too many pieces are refused.
    let many: Vec<(String, String)> = (0..70)
        .flat_map(|i| {
            [
                (format!("d/s{i:02}/a"), "a".to_string()),
                (format!("d/s{i:02}/x.log"), "l".to_string()),
            ]
        })
        .collect();
    let mut files: Vec<(&str, &str)> = many.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    files.push((".dockerignore", "**/*.log\n"));
    let (e, msg) = Ctx::new(&files).err("FROM scratch\nCOPY d /d\n");
    assert_eq!(e.line(), 2);
    assert!(msg.contains("at most 64"), "{msg}");
}

#[test]
fn find_links_map_to_urls_or_copied_directories() {
    let c = Ctx::new(&[
        ("requirements.txt", "x\n"),
        ("wheels/x-1-py3-none-any.whl", ""),
    ]);
    let t = c.ok(
        "FROM scratch\nCOPY wheels /w\nRUN pip install --no-index -f /w --find-links=http://127.0.0.1:9/links x\n",
        &[],
    );
    let pip = t.spec.pip.unwrap();
    assert_eq!(pip.find_links, ["wheels", "http://127.0.0.1:9/links"]);
    assert!(pip.no_index);
    let (e, msg) = c.err("FROM scratch\nRUN pip install --no-index --find-links /w x\n");
    assert_eq!(e.line(), 2);
    assert!(msg.contains("`pip install --find-links /w`"), "{msg}");
    let (_, msg) = c.err("FROM scratch\nCOPY requirements.txt /w\nRUN pip install -f /w x\n");
    assert!(msg.contains("is not a directory"), "{msg}");
}

#[test]
fn a_file_copied_onto_a_known_directory_goes_into_it() {
    let c = Ctx::new(&[("run.sh", "#!/bin/sh\n"), ("conf/a", "a")]);
    let t = c.ok(
        "FROM scratch\nCOPY run.sh /usr/local/bin\nWORKDIR /app\nCOPY run.sh /app\nCOPY conf /etc/conf\nCOPY run.sh /etc/conf\nCOPY run.sh /renamed\n",
        &[],
    );
    let dsts: Vec<_> = t.spec.files.iter().map(|f| f.dst.0.as_str()).collect();
    assert_eq!(
        dsts,
        [
            "/usr/local/bin/run.sh",
            "/app/run.sh",
            "/etc/conf",
            "/etc/conf/run.sh",
            "/renamed"
        ]
    );
}

#[test]
fn healthchecks_become_docker_healthchecks() {
    let t = ctx().ok(
        "FROM scratch\nHEALTHCHECK --interval=30s --timeout=3s --start-period=1m --retries=2 \\\n  CMD curl -f http://localhost/ || exit 1\n",
        &[],
    );
    let h = t.spec.config.healthcheck.as_ref().expect("a healthcheck");
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]);
    assert_eq!(h.interval.unwrap().nanos, 30_000_000_000);
    assert_eq!(h.timeout.unwrap().nanos, 3_000_000_000);
    assert_eq!(h.start_period.unwrap().nanos, 60_000_000_000);
    assert_eq!(h.retries, Some(2));
    let t = ctx().ok(
        "FROM scratch\nHEALTHCHECK CMD [\"/bin/check\", \"-q\"]\n",
        &[],
    );
    assert_eq!(
        t.spec.config.healthcheck.unwrap().test,
        ["CMD", "/bin/check", "-q"]
    );
    let t = ctx().ok("FROM scratch\nHEALTHCHECK NONE\n", &[]);
    assert_eq!(t.spec.config.healthcheck.unwrap().test, ["NONE"]);
}

#[test]
fn here_document_runs_are_scripts_in_the_sandbox() {
    let t = ctx().ok(
        "FROM scratch\nRUN <<EOF\nset -e\necho one > /one\nEOF\nRUN <<-'PY'\n#!/usr/bin/env python3\nprint(1)\nPY\n",
        &[],
    );
    assert_eq!(t.spec.run.len(), 2, "{}", t.toml);
    assert_eq!(
        t.spec.run[0].argv(),
        ["/bin/sh", "-c", "set -e\necho one > /one\n"]
    );
    assert_eq!(
        t.spec.run[1].argv(),
        ["/usr/bin/env", "python3", "-c", "print(1)\n"]
    );
}

/// Translate every stage the target needs, with stage images at `oci:/stages/N`.
fn stages(c: &Ctx, df: &str, target: Option<&str>) -> Stages {
    let image = |i: usize| format!("oci:/stages/{i}:latest");
    let opts = Options {
        target: target.map(String::from),
        stage_image: Some(&image),
        ..Options::default()
    };
    translate_stages(df, Path::new("Dockerfile"), c.dir.path(), &opts)
        .unwrap_or_else(|e| panic!("{e}\n---\n{df}"))
}

#[test]
fn multi_stage_builds_translate_the_stages_the_target_needs() {
    let c = Ctx::new(&[("a.txt", "a")]);
    let df = "ARG V=1\nFROM scratch AS tools\nENV T=$V\nCOPY a.txt /a\n\
              FROM scratch AS unused\nRUN exit 1\n\
              FROM tools AS build\nWORKDIR /w\nRUN echo $T > /out\n\
              FROM scratch\nCOPY --from=build /out /usr/bin/\nCOPY --from=0 /a /etc/a\n\
              COPY --from=registry.example.com/img:1 /b /b\n";
    let s = stages(&c, df, None);
    let labels: Vec<&str> = s.stages.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        ["tools", "build", "3"],
        "the unused stage is not translated"
    );
    // FROM <stage>: the stage's image, and its ENV is known to the next stage.
    let build = &s.stages[1];
    assert_eq!(build.spec.image.base, "oci:/stages/0:latest");
    assert_eq!(build.spec.run.len(), 1, "{}", build.toml);
    let last = &s.stages[2].spec;
    let f: Vec<_> = last
        .files
        .iter()
        .map(|f| (f.from.as_deref(), f.src.as_str(), f.dst.0.as_str(), f.into))
        .collect();
    assert_eq!(
        f,
        [
            (Some("oci:/stages/2:latest"), "/out", "/usr/bin", true),
            (Some("oci:/stages/0:latest"), "/a", "/etc/a", false),
            (Some("registry.example.com/img:1"), "/b", "/b", false),
        ]
    );
    assert!(s.explained.iter().all(|e| e.line <= 1 || e.stage.is_some()));

    // --target: that stage and what it needs; an unknown one is refused.
    let s = stages(&c, df, Some("build"));
    let labels: Vec<&str> = s.stages.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["tools", "build"]);
    let opts = Options {
        target: Some("nope".into()),
        ..Options::default()
    };
    let e = translate_stages(df, Path::new("Dockerfile"), c.dir.path(), &opts).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string()
            .contains("no stage named `nope` (named stages: tools, unused, build)"),
        "{e}"
    );

    // --explain shows every stage, the unused one marked, with a prefix.
    let e = explain(
        df,
        Path::new("Dockerfile"),
        c.dir.path(),
        &Options::default(),
    );
    assert!(e.errors.is_empty(), "{:?}", e.errors);
    assert_eq!(e.stage_specs.len(), 2);
    let table = table(&e.explained);
    assert!(table.contains("[unused (not built)]"), "{table}");
    assert!(
        table.contains("[build]") && table.contains("[3]"),
        "{table}"
    );
}

#[test]
fn add_extracts_local_archives_and_copy_takes_here_documents() {
    let c = Ctx::new(&[("app.txt", "a")]);
    // A gzip member: what `is_archive` recognises by its first bytes too.
    std::fs::write(c.dir.path().join("tools.tar.gz"), [0x1f, 0x8b, 8, 0]).unwrap();
    let t = c.ok(
        "FROM scratch\nARG WHO=kiln\nADD tools.tar.gz /opt/tools\n\
         COPY <<EOF /etc/motd\nhello $WHO ${MISSING:-there}\nEOF\n\
         COPY <<'RAW' /etc/raw\nkeep $WHO\nRAW\n",
        &[],
    );
    let files = &t.spec.files;
    assert_eq!(files.len(), 3, "{}", t.toml);
    assert!(files[0].extract, "{}", t.toml);
    assert_eq!(files[0].src, "tools.tar.gz");
    assert_eq!(files[0].dst.0, "/opt/tools");
    assert_eq!(files[1].content.as_deref(), Some("hello kiln there\n"));
    assert_eq!(files[1].dst.0, "/etc/motd");
    assert_eq!(files[2].content.as_deref(), Some("keep $WHO\n"));
    // COPY of an archive copies the file as it is.
    let t = c.ok("FROM scratch\nCOPY tools.tar.gz /opt/\n", &[]);
    assert!(!t.spec.files[0].extract);
    assert_eq!(t.spec.files[0].dst.0, "/opt/tools.tar.gz");
}

#[test]
fn add_of_a_url_downloads_it_at_build_time() {
    let t = ctx().ok(
        "FROM scratch\nADD --checksum=sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789 \
         https://files.example.com/dl/tool-1.0.tar.gz?x=1 /opt/\nADD http://files.example.com/cfg /etc/tool.cfg\n",
        &[],
    );
    let f = &t.spec.files;
    assert_eq!(
        f[0].url.as_deref(),
        Some("https://files.example.com/dl/tool-1.0.tar.gz?x=1")
    );
    assert_eq!(f[0].dst.0, "/opt/tool-1.0.tar.gz");
    assert_eq!(
        f[0].sha256.as_deref(),
        Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
    );
    assert!(
        !f[0].extract,
        "a downloaded archive is not extracted (docker)"
    );
    assert_eq!(f[1].dst.0, "/etc/tool.cfg");
    assert_eq!(f[1].sha256, None);
    let e = t.explained.iter().find(|e| e.line == 3).unwrap();
    assert!(e.detail.contains("not pinned"), "{}", e.detail);
}
