//! Running commands: the `kiln` binary under test, captured [`Run`]s and expected failures.

use std::fs;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{unique_dir, Workspace};

/// Guard against hangs only (never an assertion on speed).
fn command_timeout() -> Duration {
    let secs = std::env::var("KILN_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// The kiln binary under test, with `KILN_CACHE` pointing at a fresh empty
/// directory (override with `.env("KILN_CACHE", ..)`), no registry
/// credentials from the environment, an empty `DOCKER_CONFIG` and no
/// `SOURCE_DATE_EPOCH` (so the contract's default of 0 applies).
pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("KILN_CACHE", unique_dir("cache"))
        .env("DOCKER_CONFIG", unique_dir("docker-config"))
        .env_remove("KILN_REGISTRY_USERNAME")
        .env_remove("KILN_REGISTRY_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH")
        // Registries that are down on purpose fail within seconds; the
        // fault tests set their own deadline.
        .env("KILN_RETRY_DEADLINE", "8")
        .env_remove("REGISTRY_AUTH_FILE");
    c
}

/// `cmd`, run on one CPU (the first this process may use): in it, std's
/// `available_parallelism`, and with it rayon's pools and kiln's layer
/// slots, count one core. For checking that the bytes do not depend on
/// how many threads made them.
pub fn on_one_core(cmd: &mut Command) -> &mut Command {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    use std::os::unix::process::CommandExt;
    let allowed = sched_getaffinity(None).expect("sched_getaffinity");
    let first = (0..CpuSet::MAX_CPU)
        .find(|&c| allowed.is_set(c))
        .expect("this process may run on some CPU");
    let mut one = CpuSet::new();
    one.set(first);
    // SAFETY: the closure runs in the child between fork and exec, and
    // makes one system call on a set made before the fork.
    unsafe { cmd.pre_exec(move || Ok(sched_setaffinity(None, &one)?)) }
}

/// Result of a finished command.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.what, self.status, self.stdout, self.stderr
        )
    }

    /// Panic unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert!(self.status.success(), "command failed\n{}", self.describe());
        self
    }

    /// Panic unless the command exited with `code`.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Run {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}\n{}",
            self.describe()
        );
        self
    }

    /// Panic unless stderr contains `fragment` (case-insensitive).
    #[track_caller]
    pub fn stderr_has(self, fragment: &str) -> Run {
        assert!(
            self.stderr
                .to_lowercase()
                .contains(&fragment.to_lowercase()),
            "stderr should contain {fragment:?}\n{}",
            self.describe()
        );
        self
    }

    /// stdout parsed as exactly one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e})\n{}", self.describe()))
    }
}

/// Run a command to completion, capturing its output (through files, so large
/// outputs cannot deadlock), with stdin closed.
pub fn run(cmd: &mut Command) -> Run {
    let what = format!("{cmd:?}");
    let dir = unique_dir("run");
    let out_p = dir.join("stdout");
    let err_p = dir.join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).unwrap())
        .stderr(fs::File::create(&err_p).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + command_timeout();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = fs::read_to_string(&err_p).unwrap_or_default();
            panic!("command hung and was killed: {what}\n--- stderr ---\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&fs::read(&out_p).unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&fs::read(&err_p).unwrap()).into_owned();
    let _ = fs::remove_dir_all(&dir);
    Run {
        what,
        status,
        stdout,
        stderr,
    }
}

pub trait CommandExt {
    /// Run and capture (any exit code).
    fn run(&mut self) -> Run;
    /// Run, capture and require exit code 0.
    fn run_ok(&mut self) -> Run;
}

impl CommandExt for Command {
    fn run(&mut self) -> Run {
        run(self)
    }
    #[track_caller]
    fn run_ok(&mut self) -> Run {
        run(self).ok()
    }
}

/// Run `kiln ARGS` in WS expecting exit CODE with every FRAGMENT in stderr
/// (case-insensitive), a readable message (no panic), and nothing new in the
/// workspace (no output, no staging leftovers).
#[track_caller]
pub fn expect_failure(ws: &Workspace, args: &[&str], code: i32, fragments: &[&str]) -> Run {
    expect_failure_with(ws, ws.kiln().args(args), code, fragments)
}

/// Like [`expect_failure`] with a prepared command (extra env etc.).
#[track_caller]
pub fn expect_failure_with(
    ws: &Workspace,
    cmd: &mut Command,
    code: i32,
    fragments: &[&str],
) -> Run {
    let before = ws.listing();
    let mut r = cmd.run().code_is(code);
    for f in fragments {
        r = r.stderr_has(f);
    }
    assert!(
        !r.stderr.trim().is_empty(),
        "an error message on stderr is expected\n{}",
        r.describe()
    );
    assert!(
        !r.stderr.contains("panicked at") && !r.stderr.contains("RUST_BACKTRACE"),
        "kiln panicked instead of reporting an error\n{}",
        r.describe()
    );
    assert_eq!(
        ws.listing(),
        before,
        "a failed build must leave nothing behind\n{}",
        r.describe()
    );
    r
}
