//! Progress bars on stderr (indicatif), silent when stderr is not a
//! terminal or with `--quiet`/`--json`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let on = !quiet && std::io::stderr().is_terminal();
        Progress {
            multi: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    pub fn hidden() -> Self {
        Progress { multi: None }
    }

    /// A bar counting `len` steps.
    pub fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        let Some(m) = &self.multi else {
            return ProgressBar::hidden();
        };
        let pb = m.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} {msg:<20} [{bar:30.cyan/blue}] {pos}/{len} {elapsed}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    /// A spinner for a step of unknown length.
    pub fn spinner(&self, msg: &str) -> ProgressBar {
        let Some(m) = &self.multi else {
            return ProgressBar::hidden();
        };
        let pb = m.add(ProgressBar::new_spinner());
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    /// Print a status line (to stderr) above the bars.
    pub fn note(&self, msg: &str) {
        if let Some(m) = &self.multi {
            let _ = m.println(msg);
        }
    }
}
