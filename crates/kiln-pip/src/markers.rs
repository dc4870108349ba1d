//! PEP 508 marker environment of the TARGET interpreter (never the host's).

use uv_normalize::ExtraName;
use uv_pep508::{MarkerEnvironment, MarkerEnvironmentBuilder, MarkerTree};

use kiln_core::error::{Error, Result};

use super::target::PythonTarget;

/// The marker values `python -c 'import platform, sys'` would report inside the image.
pub fn environment(t: &PythonTarget) -> Result<MarkerEnvironment> {
    let short = t.short_version();
    MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
        implementation_name: "cpython",
        implementation_version: &t.full_version,
        os_name: "posix",
        platform_machine: &t.machine,
        platform_python_implementation: "CPython",
        platform_release: "",
        platform_system: "Linux",
        platform_version: "",
        python_full_version: &t.full_version,
        python_version: &short,
        sys_platform: "linux",
    })
    .map_err(|e| Error::internal(format!("building the marker environment: {e}")))
}

/// Does `marker` hold for the target with `extras` active?
pub fn holds(marker: &MarkerTree, env: &MarkerEnvironment, extras: &[ExtraName]) -> bool {
    marker.evaluate(env, extras)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use kiln_core::platform::Platform;
    use kiln_fs::rootfs::Rootfs;

    fn target(minor: u32) -> PythonTarget {
        let mut fs = Rootfs::default();
        fs.insert_file(&format!("/usr/local/bin/python3.{minor}"), b"");
        fs.insert_file(&format!("/usr/local/lib/python3.{minor}/os.py"), b"");
        PythonTarget::detect(&fs, &Platform::linux("arm64"), "system").unwrap()
    }

    #[test]
    fn evaluates_for_the_target_not_the_host() {
        let env9 = environment(&target(9)).unwrap();
        let env12 = environment(&target(12)).unwrap();
        let r = uv_pep508::Requirement::<uv_pep508::VerbatimUrl>::from_str(
            "tomli; python_version < '3.11' and platform_machine == 'aarch64'",
        )
        .unwrap();
        assert!(holds(&r.marker, &env9, &[]));
        assert!(!holds(&r.marker, &env12, &[]));
        let e =
            uv_pep508::Requirement::<uv_pep508::VerbatimUrl>::from_str("pysocks; extra == 'socks'")
                .unwrap();
        assert!(!holds(&e.marker, &env12, &[]));
        let socks = ExtraName::from_str("socks").unwrap();
        assert!(holds(&e.marker, &env12, &[socks]));
    }
}
