//! End to end, over the network: Debian's python3 from apt, then numpy,
//! pandas, requests and scipy from the package index pip is configured with
//! (or the default index the Python crates carry), checked inside the image.
//! The python3 is the run's shared Debian image (bootstrapped once, with
//! the host's apt sources), pip and venv added here by apt; the builds use
//! the run's warm cache (nothing here is about a cold one).

use crate::common::*;

/// Imports work and the system pip (pointed at `python`) sees a consistent set.
fn check_image(out: &std::path::Path, tag: &str, bundle: &std::path::Path, python: &str) {
    let rootfs = umoci_unpack(out, tag, bundle);
    chroot_run(
        &rootfs,
        &[python, "-c", "import numpy, pandas, requests, scipy"],
    )
    .ok();
    let pip = ["python3", "-m", "pip", "--python", python];
    let check = chroot_run(&rootfs, &[&pip[..], &["check"]].concat()).ok();
    assert!(
        check.stdout.contains("No broken requirements"),
        "{}",
        check.describe()
    );
    let list = chroot_run(&rootfs, &[&pip[..], &["list"]].concat()).ok();
    for name in ["numpy", "pandas", "requests", "scipy"] {
        assert!(
            list.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name} "))),
            "pip list lacks {name}\n{}",
            list.stdout
        );
    }
}

#[test]
fn pip_packages_on_debian_python_system_and_venv() {
    let ws = Workspace::new("pip-image");
    ws.spec(&format!(
        r#"
[image]
tags = ["py"]
base = "{}"
[apt]
packages = ["python3", "python3-pip", "python3-venv"]
[pip]
packages = ["numpy", "pandas", "requests", "scipy"]
"#,
        debian_python3().reference()
    ));
    let out = ws.join("out");
    let r = run(ws
        .kiln()
        .env("KILN_CACHE", warm_cache())
        .args(["build", "--json", "-o"])
        .arg(format!("oci:{}", out.display())))
    .ok();
    let installed = strs(&r.json()["pip"][0]["installed"]);
    assert!(
        installed.iter().any(|w| w.starts_with("numpy ")),
        "{installed:?}"
    );
    // By default what pip installed is compiled (thousands of modules here).
    let compiled = r.json()["pip"][0]["bytecode"]["compiled"].as_u64();
    assert!(compiled.is_some_and(|n| n > 1000), "{compiled:?}");
    check_image(&out, "py", &ws.join("bundle"), "/usr/bin/python3");
    let rootfs = ws.join("bundle/rootfs");
    let norm = chroot_run(&rootfs, &["normalizer", "--version"]).ok();
    assert!(
        norm.stdout.contains("Charset-Normalizer") || norm.stderr.contains("Charset-Normalizer"),
        "{}",
        norm.describe()
    );
    // The installed version shown by pip is the one kiln resolved.
    let list = chroot_run(&rootfs, &["python3", "-m", "pip", "list"]).ok();
    let numpy = installed.iter().find(|w| w.starts_with("numpy ")).unwrap();
    let v = numpy.split(' ').nth(1).unwrap();
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("numpy") && l.ends_with(v)),
        "{}",
        list.stdout
    );

    // The same set into a venv on top of that image.
    let ws2 = Workspace::new("pip-venv");
    ws2.spec(&format!(
        "[image]\ntags = [\"venv\"]\nbase = \"oci:{}:py\"\n[pip]\ntarget = \"/opt/venv\"\n# Bytecode is compiled (and checked) for the system build above.\ncompile = false\npackages = [\"numpy\", \"pandas\", \"requests\", \"scipy\"]\n",
        out.display()
    ));
    let out2 = ws2.join("out");
    run(ws2
        .kiln()
        .env("KILN_CACHE", warm_cache())
        .args(["build", "--quiet", "-o"])
        .arg(format!("oci:{}", out2.display())))
    .ok();
    check_image(&out2, "venv", &ws2.join("bundle"), "/opt/venv/bin/python");
}
