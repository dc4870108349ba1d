//! Failures: exit codes (2 bad input, 3 network/registry, 4 auth is in
//! push.rs), one readable message on stderr, and nothing left behind.

use crate::common::*;

/// A workspace with a valid one-file project, so that only the case under
/// test is wrong.
fn project(label: &str) -> Workspace {
    let ws = Workspace::new(label);
    ws.write("hello.txt", "hello\n");
    ws
}

const FILES: &str = "[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n";

#[test]
fn unknown_keys_name_file_line_and_key() {
    let cases: &[(&str, usize, &str)] = &[
        ("[image]\ntags = [\"x\"]\nnmae = \"oops\"\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n", 3, "nmae"),
        ("[image]\ntags = [\"x\"]\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n\n[[files]]\nsrc = \"hello.txt\"\ndest = \"/x\"\n", 10, "dest"),
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n\n[config]\ncmd = [\"x\"]\nentrypiont = [\"/bin/sh\"]\n", 8, "entrypiont"),
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n\n[imgae]\ntags = [\"x\"]\n", 6, "imgae"),
    ];
    for (spec, line, key) in cases {
        let ws = project("err-unknown-key");
        ws.spec(spec);
        let r = expect_failure(&ws, &["build", "--output", "oci:out"], 2, &[key]);
        assert!(
            r.stderr.contains(&format!("kiln.toml:{line}:"))
                || r.stderr.contains(&format!("kiln.toml:{line} ")),
            "message should name kiln.toml and line {line} for `{key}`:\n{}",
            r.stderr
        );
    }
}

#[test]
fn bad_values_name_file_line_and_key() {
    let cases: &[(&str, usize, &str)] = &[
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"relative\"\n", 4, "dst"),
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\nmode = \"999\"\n", 5, "mode"),
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\nmode = \"rw-r--r--\"\n", 5, "mode"),
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\nowner = \"root:root\"\n", 5, "owner"),
        ("[image]\nplatforms = [\"linux\"]\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n", 2, "platforms"),
        ("[image]\ntags = [\"has space\"]\n\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n", 2, "tags"),
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n\n[config]\nexposed_ports = [\"http\"]\n", 7, "exposed_ports"),
        ("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n\n[config]\nlabels = [\"a\"]\n", 7, "labels"),
    ];
    for (spec, line, key) in cases {
        let ws = project("err-bad-value");
        ws.spec(spec);
        let r = expect_failure(&ws, &["build", "--output", "oci:out"], 2, &[key]);
        assert!(
            r.stderr.contains(&format!("kiln.toml:{line}")),
            "message should name kiln.toml and line {line} for bad `{key}`:\n{}",
            r.stderr
        );
    }
}

#[test]
fn toml_syntax_error_and_missing_spec() {
    let ws = project("err-syntax");
    ws.spec(&format!("[image\ntags = [\"x\"]\n{FILES}"));
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &["kiln.toml:1"]);

    let ws = project("err-missing-spec");
    expect_failure(
        &ws,
        &["build", "nope/kiln.toml", "--output", "oci:out"],
        2,
        &["nope/kiln.toml"],
    );
    // No SPEC and no ./kiln.toml.
    expect_failure(&ws, &["build"], 2, &["kiln.toml"]);
}

#[test]
fn bad_flags() {
    let ws = project("err-flags");
    ws.spec(&format!("[image]\n{FILES}"));
    expect_failure(
        &ws,
        &["build", "--compression", "lz4", "--output", "oci:out"],
        2,
        &["lz4"],
    );
    expect_failure(&ws, &["build", "--output", "ftp:out"], 2, &["ftp"]);
    expect_failure(&ws, &["build", "--output", "out"], 2, &["out"]);
    expect_failure(&ws, &["build", "--frobnicate"], 2, &["frobnicate"]);
}

#[test]
fn missing_source_file() {
    let ws = project("err-missing-src");
    ws.spec("[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/hello.txt\"\n\n[[files]]\nsrc = \"nope.txt\"\ndst = \"/nope.txt\"\n");
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &["nope.txt"]);
    expect_failure(
        &ws,
        &["build", "--output", "docker-archive:img.tar"],
        2,
        &["nope.txt"],
    );
}

/// Device nodes, fifos and sockets cannot go into a layer.
#[test]
fn special_files_in_source_are_rejected() {
    for (name, make) in [
        ("a-fifo", "fifo"),
        ("a-socket", "socket"),
        ("a-device", "device"),
    ] {
        let ws = project("err-special");
        ws.write("dir/ok.txt", "ok\n");
        let p = ws.join(format!("dir/{name}"));
        match make {
            "fifo" => {
                tool("mkfifo").arg(&p).run_ok();
            }
            "socket" => {
                // mknod(2), not bind(2): a bound socket's path holds at
                // most 107 bytes, and the scratch root may be deeper.
                use rustix::fs::{mknodat, FileType, Mode, CWD};
                mknodat(CWD, &p, FileType::Socket, Mode::from_raw_mode(0o644), 0)
                    .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
            }
            _ => {
                tool("mknod").arg(&p).args(["c", "1", "3"]).run_ok();
            }
        }
        ws.spec("[image]\n[[files]]\nsrc = \"dir/\"\ndst = \"/dir\"\n");
        expect_failure(&ws, &["build", "--output", "oci:out"], 2, &[name]);
    }
}

#[test]
fn missing_local_bases() {
    let ws = project("err-missing-base");
    ws.spec(&format!("[image]\nbase = \"oci:/nonexistent\"\n\n{FILES}"));
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &["/nonexistent"]);

    // An existing layout without the requested tag.
    write_oci_layout(
        &ws.join("base"),
        "v1",
        "amd64",
        &[make_tar(&[Item::File("x", b"x", 0o644)])],
    );
    ws.spec(&format!("[image]\nbase = \"oci:base:v2\"\n\n{FILES}"));
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &["v2"]);

    ws.spec(&format!(
        "[image]\nbase = \"docker-archive:missing.tar\"\n\n{FILES}"
    ));
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &["missing.tar"]);

    // Not an archive at all.
    ws.write("garbage.tar", "this is not a tar archive\n".repeat(100));
    ws.spec(&format!(
        "[image]\nbase = \"docker-archive:garbage.tar\"\n\n{FILES}"
    ));
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &["garbage.tar"]);
}

/// A reachable registry without that repository or tag: bad input (2), not a
/// network failure.
#[test]
fn missing_registry_base_is_bad_input() {
    let reg = Registry::shared();
    let ws = project("err-registry-missing");
    let missing_repo = unique_repo("does-not-exist");
    ws.spec(&format!(
        "[image]\nbase = \"{}:v1\"\n\n{FILES}",
        reg.repo(&missing_repo)
    ));
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &[&missing_repo]);

    let repo = unique_repo("exists");
    push_scratch_image(reg, &repo, "v1", &[("f.txt", "f\n")]);
    ws.spec(&format!(
        "[image]\nbase = \"{}:v2\"\n\n{FILES}",
        reg.repo(&repo)
    ));
    expect_failure(&ws, &["build", "--output", "oci:out"], 2, &["v2"]);
}

#[test]
fn unreachable_registry_exits_3() {
    let host = format!("127.0.0.1:{}", closed_port());
    let ws = project("err-unreachable");
    ws.spec(&format!(
        "[image]\nbase = \"{host}/some/base:v1\"\n\n{FILES}"
    ));
    expect_failure(&ws, &["build", "--output", "oci:out"], 3, &[&host]);

    // Push target unreachable: the local output staged alongside must vanish too.
    ws.spec(&format!("[image]\nname = \"{host}/some/app\"\n\n{FILES}"));
    expect_failure(
        &ws,
        &[
            "build",
            "--push",
            "--output",
            "oci:out",
            "--output",
            "docker-archive:img.tar",
        ],
        3,
        &[&host],
    );
}

#[test]
fn registry_server_error_exits_3() {
    let fake = FakeServer::start("500 Internal Server Error");
    let ws = project("err-server-error");
    ws.spec(&format!(
        "[image]\nbase = \"{}/some/base:v1\"\n\n{FILES}",
        fake.host()
    ));
    expect_failure(&ws, &["build", "--output", "oci:out"], 3, &[]);
    ws.spec(&format!(
        "[image]\nname = \"{}/some/app\"\n\n{FILES}",
        fake.host()
    ));
    expect_failure(&ws, &["build", "--push", "--output", "oci:out"], 3, &[]);
}

#[test]
fn push_without_name_is_bad_input() {
    let ws = project("err-push-no-name");
    ws.spec(&format!("[image]\n{FILES}"));
    expect_failure(&ws, &["build", "--push"], 2, &["name"]);
}

/// What a user can get wrong about outputs and `--push` fails before any
/// network: the base and the push target here are a registry port nothing
/// listens on, so reaching the network would exit 3, not 2.
#[test]
fn output_and_push_mistakes_fail_before_the_network() {
    let port = closed_port();
    let ws = project("err-plan");
    ws.spec(&format!(
        "[image]\nname = \"127.0.0.1:{port}/plan/app\"\nbase = \"127.0.0.1:{port}/plan/base:1\"\n\
         platforms = [\"linux/amd64\", \"linux/arm64\"]\n\n{FILES}"
    ));
    // A docker-archive holds one platform; the spec asks for two. Also with
    // --push, the push must not happen first.
    for extra in [&[][..], &["--push"][..]] {
        let mut args = vec!["build", "-o", "docker-archive:img.tar"];
        args.extend_from_slice(extra);
        expect_failure(&ws, &args, 2, &["docker-archive:", "one platform", "2"]);
    }
    // A user name without a password is a mistake, not anonymous access.
    expect_failure_with(
        &ws,
        ws.kiln()
            .env("KILN_REGISTRY_USERNAME", "someone")
            .args(["build", "--push", "-o", "oci:out"]),
        2,
        &["KILN_REGISTRY_PASSWORD"],
    );
    // --offline with --push.
    expect_failure(&ws, &["build", "--push", "--offline"], 2, &["--offline"]);
}

/// `[[files]]` sources stay inside the spec's directory: an absolute path,
/// `..` that climbs out, and a symlinked directory that leads out are all
/// refused naming the source, and nothing of the file appears anywhere.
#[test]
fn files_outside_the_context_are_refused() {
    let outside = Workspace::new("err-outside-secret");
    let secret = outside.write("secret", "TOPSECRET-4711\n");
    let ws = project("err-outside");
    ws.symlink("leads-out", outside.path().to_str().unwrap());
    let climb = format!("{}{}", [".."; 12].join("/"), secret.display());
    let cases = [
        secret.to_str().unwrap().to_string(),
        climb,
        "leads-out/secret".to_string(),
    ];
    for src in &cases {
        ws.spec(&format!(
            "[image]\n[[files]]\nsrc = \"{src}\"\ndst = \"/s\"\n"
        ));
        let r = expect_failure(
            &ws,
            &["build", "-o", "oci:out", "--json"],
            2,
            &["outside the build context", src.as_str()],
        );
        assert!(!r.stdout.contains("TOPSECRET") && !r.stderr.contains("TOPSECRET"));
    }
    // Mode bits beyond 07777, ids beyond 32 bits, and setuid without
    // `allow-setid` are refused too.
    for (entry, fragment) in [
        ("mode = \"17777\"", "invalid mode"),
        ("owner = \"1:4294967296\"", "invalid owner"),
        ("mode = \"4755\"", "allow-setid"),
    ] {
        ws.spec(&format!(
            "[image]\n[[files]]\nsrc = \"hello.txt\"\ndst = \"/h\"\n{entry}\n"
        ));
        expect_failure(&ws, &["build", "-o", "oci:out"], 2, &[fragment]);
    }
    // The CLI's explicit opt-in.
    ws.spec(&format!(
        "[image]\n[[files]]\nsrc = \"{}\"\ndst = \"/s\"\n",
        secret.display()
    ));
    ws.kiln()
        .args(["build", "-o", "oci:out", "--allow-outside-context"])
        .run_ok();
}
