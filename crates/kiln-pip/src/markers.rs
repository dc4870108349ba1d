//! PEP 508 marker environment of the TARGET interpreter (never the host's).

use uv_pep508::{MarkerEnvironment, MarkerEnvironmentBuilder};

use kiln_core::error::Result;

use crate::PipError;

use super::target::PythonTarget;

/// The marker values `python -c 'import platform, sys'` would report inside the image.
pub(crate) fn environment(t: &PythonTarget) -> Result<MarkerEnvironment> {
    cpython_linux(&t.full_version, &t.machine)
}

/// The marker values of CPython `full_version` (`3.11.2`) on Linux `machine`.
pub(crate) fn cpython_linux(full_version: &str, machine: &str) -> Result<MarkerEnvironment> {
    let short: String = full_version
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
        implementation_name: "cpython",
        implementation_version: full_version,
        os_name: "posix",
        platform_machine: machine,
        platform_python_implementation: "CPython",
        platform_release: "",
        platform_system: "Linux",
        platform_version: "",
        python_full_version: full_version,
        python_version: &short,
        sys_platform: "linux",
    })
    .map_err(|e| {
        PipError::MarkerEnvironment {
            detail: e.to_string(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use kiln_core::platform::Platform;
    use kiln_fs::rootfs::Rootfs;
    use uv_normalize::ExtraName;

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
        assert!(r.marker.evaluate(&env9, &[]));
        assert!(!r.marker.evaluate(&env12, &[]));
        let e =
            uv_pep508::Requirement::<uv_pep508::VerbatimUrl>::from_str("pysocks; extra == 'socks'")
                .unwrap();
        assert!(!e.marker.evaluate(&env12, &[]));
        let socks = ExtraName::from_str("socks").unwrap();
        assert!(e.marker.evaluate(&env12, &[socks]));
    }
}
