//! Unit tests on small workspaces written into temporary directories.

use std::fs;
use std::path::{Path, PathBuf};

use crate::git::Head;
use crate::hash::member_hashes;
use crate::plan::{compute, Kind};
use crate::workspace::{compare_versions, TagScheme, Workspace};
use crate::WorkspaceError;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

const WS: &str = r#"
[workspace]
members = ["science/*"]
compat = ["compat/*"]
registry = "registry.example.invalid/team"
"#;

/// base (registry base, a [[files]] entry) <- mid <- leaf (stack 10.0, compat new);
/// other (scratch; stack 9.0, compat old); old and new include common.
fn fixture() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "kiln-workspace.toml", WS);
    write(
        r,
        "science/base/kiln.toml",
        "[image]\nbase = \"registry.example.invalid/debian:12\"\n[[files]]\nsrc = \"data\"\ndst = \"/data\"\n",
    );
    write(r, "science/base/data/a.txt", "a");
    write(
        r,
        "science/mid/kiln.toml",
        "[image]\nbase = \"target:base\"\n",
    );
    write(
        r,
        "science/leaf/kiln.toml",
        "[image]\nbase = \"target:mid\"\n[release]\nimage = \"stack\"\nversion = \"10.0\"\ncompat = \"new\"\n",
    );
    write(
        r,
        "science/other/kiln.toml",
        "[release]\nimage = \"stack\"\nversion = \"9.0\"\ncompat = \"old\"\n",
    );
    write(r, "compat/common/kiln-compat.toml", "[config]\nenv = { A = \"1\" }\n[[files]]\nsrc = \"shim.sh\"\ndst = \"/usr/local/bin/shim\"\n");
    write(r, "compat/common/shim.sh", "#!/bin/sh\n");
    write(
        r,
        "compat/old/kiln-compat.toml",
        "includes = [\"common\"]\n",
    );
    write(
        r,
        "compat/new/kiln-compat.toml",
        "includes = [\"common\"]\n[pip]\npackages = [\"shim-pkg\"]\n",
    );
    t
}

fn load(root: &Path) -> kiln_core::error::Result<Workspace> {
    Workspace::load(&root.join("kiln-workspace.toml"))
}

fn err(root: &Path) -> String {
    load(root).unwrap_err().to_string()
}

fn head() -> Head {
    Head {
        count: 42,
        short: "abc1234".into(),
    }
}

#[test]
fn loads_and_orders() {
    let t = fixture();
    let ws = load(t.path()).unwrap();
    assert_eq!(ws.order, ["base", "mid", "leaf", "other"]);
    assert!(ws.members["leaf"].release.as_ref().unwrap().is_final);
    assert_eq!(ws.compat_chain("new"), ["common", "new"]);
    assert_eq!(ws.label_prefix, "kiln");
    // Same input, same order, every time.
    for _ in 0..3 {
        assert_eq!(load(t.path()).unwrap().order, ws.order);
    }
}

#[test]
fn topological_order_is_deterministic() {
    use std::collections::BTreeMap;
    let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, needs) in [
        ("z", vec![]),
        ("a", vec!["z"]),
        ("m", vec![]),
        ("b", vec!["m"]),
        ("c", vec!["a", "b"]),
    ] {
        g.insert(n.into(), needs.into_iter().map(String::from).collect());
    }
    assert_eq!(crate::workspace::topo_sort(&g), ["m", "b", "z", "a", "c"]);
    assert_eq!(crate::workspace::find_cycle(&g), None);
    g.insert("z".into(), vec!["c".into()]);
    assert_eq!(
        crate::workspace::find_cycle(&g).unwrap(),
        "a -> z -> c -> a"
    );
}

#[test]
fn bad_globs() {
    for (glob, what) in [
        ("/abs/*", "relative"),
        ("science/**", "`**`"),
        ("../x/*", "`..`"),
        ("science/[ab]", "only `*` and `?`"),
        ("nothing/*", "matches no directory"),
    ] {
        let t = fixture();
        write(
            t.path(),
            "kiln-workspace.toml",
            &WS.replace("\"science/*\"", &format!("{glob:?}")),
        );
        let e = err(t.path());
        assert!(e.contains(what) && e.contains(glob), "{glob}: {e}");
    }
}

#[test]
fn missing_member_spec() {
    let t = fixture();
    fs::create_dir_all(t.path().join("science/empty")).unwrap();
    let e = err(t.path());
    assert!(
        e.contains("science/empty: no kiln.toml and no Dockerfile"),
        "{e}"
    );
    // A Dockerfile alone is a member.
    write(t.path(), "science/empty/Dockerfile", "FROM scratch\n");
    let ws = load(t.path()).unwrap();
    assert!(ws.members["empty"].dockerfile.is_some());
}

#[test]
fn duplicate_targets() {
    let t = fixture();
    write(
        t.path(),
        "science/zz/kiln.toml",
        "[release]\nimage = \"x\"\nversion = \"1\"\ntarget = \"mid\"\n",
    );
    let e = err(t.path());
    assert!(e.starts_with("two members are target `mid`:"), "{e}");
}

#[test]
fn unknown_targets_and_compat() {
    let t = fixture();
    write(
        t.path(),
        "science/mid/kiln.toml",
        "[image]\nbase = \"target:nope\"\n",
    );
    let e = load(t.path()).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(
        matches!(
            e.downcast_ref::<WorkspaceError>(),
            Some(WorkspaceError::UnknownTarget { member, name, .. }) if member == "mid" && name == "nope"
        ),
        "{e}"
    );
    let t = fixture();
    write(
        t.path(),
        "compat/old/kiln-compat.toml",
        "includes = [\"gone\"]\n",
    );
    assert!(err(t.path()).contains("compat `gone` is not a compat directory"));
    let t = fixture();
    write(t.path(), "compat/old/kiln-compat.toml", "unknown = 1\n");
    assert!(err(t.path()).contains("unknown field `unknown`"));
}

#[test]
fn dependency_cycle_is_named() {
    let t = fixture();
    write(
        t.path(),
        "science/base/kiln.toml",
        "[image]\nbase = \"target:leaf\"\n",
    );
    assert_eq!(
        err(t.path()),
        "members depend on each other in a cycle: base -> leaf -> mid -> base"
    );
}

#[test]
fn compat_include_cycle_is_named() {
    let t = fixture();
    write(
        t.path(),
        "compat/common/kiln-compat.toml",
        "includes = [\"new\"]\n",
    );
    assert_eq!(
        err(t.path()),
        "compat includes form a cycle: common -> new -> common"
    );
}

#[test]
fn two_final_images() {
    let t = fixture();
    // Two members of stack 10.0 that nothing in the group builds on.
    write(
        t.path(),
        "science/mid/kiln.toml",
        "[image]\nbase = \"target:base\"\n[release]\nimage = \"stack\"\nversion = \"10\"\n",
    );
    write(
        t.path(),
        "science/twin/kiln.toml",
        "[release]\nimage = \"stack\"\nversion = \"10.0.0\"\n",
    );
    let e = err(t.path());
    assert_eq!(
        e,
        "stack:10.0 has 2 final images (members nothing else depends on): leaf, twin; exactly one is released"
    );
    // A chain inside one image+version has one final member: fine.
    fs::remove_dir_all(t.path().join("science/twin")).unwrap();
    let ws = load(t.path()).unwrap();
    assert!(!ws.members["mid"].release.as_ref().unwrap().is_final);
    assert!(ws.members["leaf"].release.as_ref().unwrap().is_final);
}

#[test]
fn versions_compare_as_versions() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_versions("9.0", "10.0"), Some(Less));
    assert_eq!(compare_versions("1.0rc1", "1.0"), Some(Less));
    assert_eq!(compare_versions("10.0", "10"), Some(Equal));
    assert_eq!(compare_versions("2.0.post1", "2.0"), Some(Greater));
    assert_eq!(compare_versions("x.y", "1"), None);
    let t = fixture();
    write(
        t.path(),
        "science/other/kiln.toml",
        "[release]\nimage = \"stack\"\nversion = \"nine\"\n",
    );
    assert!(err(t.path()).starts_with("other: invalid version `nine`"));
}

#[test]
fn tags_render() {
    let s = TagScheme(vec!["{version}".into(), "{version}-{count}-{hash}".into()]);
    assert_eq!(
        s.render("10.0", 42, "abc1234").unwrap(),
        ["10.0", "10.0-42-abc1234"]
    );
    assert!(TagScheme::is_moving("{version}"));
    assert!(!TagScheme::is_moving("{version}-{count}-{hash}"));
    assert!(s
        .render("1.0+local", 1, "a")
        .unwrap_err()
        .contains("not a valid tag"));
    let t = fixture();
    write(
        t.path(),
        "kiln-workspace.toml",
        &format!("{WS}tags = [\"v{{release}}\"]\n"),
    );
    assert!(err(t.path()).contains("unknown placeholder `{release}`"));
    // Plan: release tags from the scheme, science tags by content and commit.
    let t = fixture();
    let ws = load(t.path()).unwrap();
    let plan = compute(&ws, &head(), None).unwrap();
    let leaf = plan.builds.iter().find(|b| b.target == "leaf").unwrap();
    assert_eq!(leaf.image, "registry.example.invalid/team/rel/stack");
    let content = format!("in-{}", &leaf.input_hash[..16]);
    assert_eq!(leaf.tags, ["10.0", "10.0-42-abc1234", content.as_str()]);
    assert_eq!(leaf.moving_tags, ["10.0"]);
    let mid = plan.builds.iter().find(|b| b.target == "mid").unwrap();
    assert_eq!(mid.image, "registry.example.invalid/team/sci/mid");
    assert_eq!(mid.tags[1], "42-abc1234");
    assert!(mid.tags[0].starts_with("in-") && mid.tags[0].len() == 19);
}

/// Which members' (science, input) hashes differ after `change`.
fn changed_hashes(change: impl Fn(&Path)) -> (Vec<String>, Vec<String>) {
    let t = fixture();
    let before = member_hashes(&load(t.path()).unwrap()).unwrap();
    change(t.path());
    let after = member_hashes(&load(t.path()).unwrap()).unwrap();
    let diff = |f: fn(&crate::hash::MemberHashes) -> &String| {
        before
            .iter()
            .filter(|(k, v)| f(v) != f(&after[*k]))
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    (diff(|h| &h.science), diff(|h| &h.input))
}

#[test]
fn input_hashes_change_where_they_should() {
    // A [[files]] source of base: base and everything on it.
    let (sci, input) = changed_hashes(|r| write(r, "science/base/data/a.txt", "b"));
    assert_eq!(sci, ["base", "leaf", "mid"]);
    assert_eq!(input, ["base", "leaf", "mid"]);
    // The middle member's spec: it and its dependent.
    let (sci, input) = changed_hashes(|r| {
        write(
            r,
            "science/mid/kiln.toml",
            "[image]\nbase = \"target:base\"\n[config]\nenv = { X = \"1\" }\n",
        )
    });
    assert_eq!(sci, ["leaf", "mid"]);
    assert_eq!(input, ["leaf", "mid"]);
    // A compat include: both releases using it, no science hash.
    let (sci, input) = changed_hashes(|r| write(r, "compat/common/shim.sh", "#!/bin/sh\nexit 0\n"));
    assert!(sci.is_empty());
    assert_eq!(input, ["leaf", "other"]);
    // A compat dir used by one release.
    let (sci, input) = changed_hashes(|r| {
        write(
            r,
            "compat/old/kiln-compat.toml",
            "includes = [\"common\"]\n[config]\nuser = \"1000\"\n",
        )
    });
    assert!(sci.is_empty());
    assert_eq!(input, ["other"]);
    // A kiln.lock pinning the registry base: base and its dependents.
    let lock = |r: &Path, pin: &[u8]| {
        let platform = kiln_spec::lock::LockedPlatform {
            platform: "linux/amd64".into(),
            base: Some(kiln_core::digest::Digest::of(pin)),
            ..Default::default()
        };
        kiln_spec::lock::Lock::new(vec![], vec![platform])
            .write(&r.join("science/base/kiln.lock"))
            .unwrap();
    };
    let (sci, _) = changed_hashes(|r| lock(r, b"one"));
    assert_eq!(sci, ["base", "leaf", "mid"]);
    let t = fixture();
    lock(t.path(), b"one");
    let a = member_hashes(&load(t.path()).unwrap()).unwrap();
    lock(t.path(), b"two");
    let b = member_hashes(&load(t.path()).unwrap()).unwrap();
    assert_ne!(a["base"], b["base"]);
    assert_eq!(a["other"], b["other"]);
    // Nothing changed: nothing differs.
    let (sci, input) = changed_hashes(|_| {});
    assert!(sci.is_empty() && input.is_empty());
}

#[test]
fn plans_by_changed_files() {
    let t = fixture();
    let ws = load(t.path()).unwrap();
    let root = ws.root.clone();
    let plan_for = |files: &[&str]| {
        let changed: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
        let plan = compute(&ws, &head(), Some(("HEAD", &changed))).unwrap();
        plan.builds
            .iter()
            .map(|b| (b.target.clone(), b.kind, b.needs.clone(), b.depth))
            .collect::<Vec<_>>()
    };
    assert!(plan_for(&[]).is_empty());
    assert!(plan_for(&["README.md"]).is_empty());
    assert_eq!(
        plan_for(&["science/mid/kiln.toml"]),
        [
            ("mid".into(), Kind::Science, vec![], 0),
            ("leaf".into(), Kind::Release, vec!["mid".to_string()], 1)
        ]
    );
    assert_eq!(
        plan_for(&["science/base/data/new.txt"]),
        [
            ("base".into(), Kind::Science, vec![], 0),
            ("mid".into(), Kind::Science, vec!["base".to_string()], 1),
            ("leaf".into(), Kind::Release, vec!["mid".to_string()], 2)
        ]
    );
    assert_eq!(
        plan_for(&["compat/common/shim.sh"]),
        [
            ("leaf".into(), Kind::Rebase, vec![], 0),
            ("other".into(), Kind::Rebase, vec![], 0)
        ]
    );
    assert_eq!(
        plan_for(&["compat/common/shim.sh", "science/mid/kiln.toml"]),
        [
            ("mid".into(), Kind::Science, vec![], 0),
            ("leaf".into(), Kind::Release, vec!["mid".to_string()], 1),
            ("other".into(), Kind::Rebase, vec![], 0)
        ]
    );
    assert_eq!(plan_for(&["kiln-workspace.toml"]).len(), 4);
    let all = compute(&ws, &head(), None).unwrap();
    assert_eq!(all.summary_line(), "4 science builds, 0 compat rebases");
}

#[test]
fn gitlab_pipeline_follows_the_graph() {
    let t = fixture();
    let ws = load(t.path()).unwrap();
    let plan = compute(&ws, &head(), None).unwrap();
    let doc = crate::ci::gitlab(&plan);
    assert_eq!(doc["build:leaf"]["needs"], serde_json::json!(["build:mid"]));
    assert_eq!(doc["build:base"]["needs"], serde_json::json!([]));
    assert_eq!(
        doc["build:leaf"]["script"][0],
        "kiln build --workspace --only leaf --push"
    );
    assert_eq!(
        doc["move-tags"]["needs"],
        serde_json::json!(["build:leaf", "build:other"])
    );
    let gh = crate::ci::github(&plan);
    assert_eq!(gh["depth"], 3);
    let level = |i: usize| {
        gh["levels"][i]["include"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["target"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(level(0), ["base", "other"]);
    assert_eq!(level(1), ["mid"]);
    assert_eq!(level(2), ["leaf"]);
    let empty = compute(&ws, &head(), Some(("HEAD", &[]))).unwrap();
    let doc = crate::ci::gitlab(&empty);
    assert!(doc.get("nothing-to-build").is_some());
    assert_eq!(crate::ci::github(&empty)["levels"], serde_json::json!([]));
}

#[test]
fn assembled_specs_carry_the_workspace_and_the_compat_dirs() {
    use crate::assemble::{member_spec, release_spec, ImageOverride};
    let t = fixture();
    let ws = load(t.path()).unwrap();
    let plan = compute(&ws, &head(), None).unwrap();
    let leaf = plan.builds.iter().find(|b| b.target == "leaf").unwrap();
    // The member's own spec: base, name, tags and labels put in.
    let tags = vec!["in-0123".to_string()];
    let text = member_spec(
        &ws.members["mid"],
        &ImageOverride {
            base: Some("registry.example.invalid/team/sci/base@sha256:00"),
            name: "registry.example.invalid/team/sci/mid",
            tags: &tags,
            labels: &leaf.science_labels,
            imports: &[],
        },
    )
    .unwrap();
    let doc: toml::Table = text.parse().unwrap();
    assert_eq!(
        doc["image"]["base"].as_str(),
        Some("registry.example.invalid/team/sci/base@sha256:00")
    );
    assert_eq!(doc["image"]["tags"][0].as_str(), Some("in-0123"));
    assert_eq!(
        doc["config"]["labels"]["kiln.trail"].as_str(),
        Some("base > mid > leaf")
    );
    // The release: the science image plus common, then new (includes first),
    // paths relative to the workspace root.
    let rel = release_spec(&ws, leaf, "oci:/x/sci/leaf", &leaf.tags).unwrap();
    let doc: toml::Table = rel.parse().unwrap();
    assert_eq!(doc["image"]["base"].as_str(), Some("oci:/x/sci/leaf"));
    assert_eq!(
        doc["image"]["name"].as_str(),
        Some("registry.example.invalid/team/rel/stack")
    );
    assert_eq!(
        doc["files"][0]["src"].as_str(),
        Some("compat/common/shim.sh")
    );
    assert_eq!(doc["config"]["env"]["A"].as_str(), Some("1"));
    assert_eq!(doc["pip"]["packages"][0].as_str(), Some("shim-pkg"));
    let labels = &doc["config"]["labels"];
    assert_eq!(labels["kiln.compat"].as_str(), Some("common + new"));
    assert_eq!(labels["kiln.release"].as_str(), Some("stack:10.0"));
    assert_eq!(
        labels["kiln.trail"].as_str(),
        Some("base > mid > leaf > compat common + new")
    );
    assert_eq!(
        labels["kiln.input-hash"].as_str(),
        Some(leaf.input_hash.as_str())
    );
    // A release's tags end with its content tag; no commit or date in labels.
    assert_eq!(
        leaf.tags.last().unwrap(),
        &format!("in-{}", &leaf.input_hash[..16])
    );
    assert!(!leaf.labels.values().any(|v| v.contains("abc1234")));
    // The spec the builder reads back.
    let spec = kiln_spec::Spec::parse(&rel, &t.path().join(".kiln-release-leaf.toml")).unwrap();
    assert_eq!(spec.files.len(), 1);
}

#[test]
fn dockerfile_deps_follow_stages_and_copy_from() {
    use crate::workspace::dockerfile_deps;
    let (base, copies) = dockerfile_deps(
        "# a comment\nARG V=1\nFROM --platform=linux/amd64 target:base AS build\nRUN make\n\
         FROM scratch AS other\nfrom build\nCOPY --from=build /a /a\n\
         COPY --chown=1:1 \\\n  --from=target:data /d /d\nADD x /x\n",
    );
    assert_eq!(base, "target:base");
    assert_eq!(copies, ["target:data"]);
    let (base, copies) = dockerfile_deps("FROM registry.example.invalid/debian:12\n");
    assert_eq!(base, "registry.example.invalid/debian:12");
    assert!(copies.is_empty());
    // A Dockerfile member in a workspace: two dependencies, in the plan.
    let t = fixture();
    write(
        t.path(),
        "science/tool/Dockerfile",
        "FROM target:mid\nCOPY --from=target:other /x /x\n",
    );
    let ws = load(t.path()).unwrap();
    assert_eq!(ws.members["tool"].deps(), ["mid", "other"]);
    let plan = compute(&ws, &head(), None).unwrap();
    let tool = plan.builds.iter().find(|b| b.target == "tool").unwrap();
    assert_eq!(tool.needs, ["mid", "other"]);
}
