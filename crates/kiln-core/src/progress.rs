//! Progress bars on stderr (indicatif), silent when stderr is not a
//! terminal or with `--quiet`/`--json`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of bytes: done/total and the rate.
const BYTES: &str =
    "{spinner:.green} {msg:<20} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}";

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

    /// A bar counting bytes: `{verb} 3.1 MiB/12.0 MiB` (uploads, compression).
    pub fn bytes_bar(&self, total: u64, msg: &str) -> ProgressBar {
        let Some(m) = &self.multi else {
            return ProgressBar::hidden();
        };
        let pb = m.add(ProgressBar::new(total));
        pb.set_style(
            ProgressStyle::with_template(BYTES)
                .expect("static template")
                .progress_chars("=> "),
        );
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    /// Counters for a set of transfers, drawn as one bar (`verb n/N files,
    /// bytes/total`) once the first one starts; counting works without a
    /// terminal too (the build summary reads the totals).
    pub fn transfers(&self, verb: &'static str) -> Arc<Transfers> {
        Arc::new(Transfers {
            verb,
            multi: self.multi.clone(),
            bar: Mutex::new(None),
            files: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total: AtomicU64::new(0),
            done: Mutex::new(Vec::new()),
        })
    }

    /// Print a status line (to stderr) above the bars.
    pub fn note(&self, msg: &str) {
        if let Some(m) = &self.multi {
            let _ = m.println(msg);
        }
    }
}

/// Byte and file counts of transfers running in parallel (downloads of
/// one build): what the progress bar shows and what the summary reports.
/// Bytes count what came over the network, not what a cache answered.
pub struct Transfers {
    verb: &'static str,
    multi: Option<MultiProgress>,
    bar: Mutex<Option<ProgressBar>>,
    files: AtomicU64,
    files_done: AtomicU64,
    bytes: AtomicU64,
    /// Expected bytes of the files started (their Content-Length, when known).
    total: AtomicU64,
    /// What each finished file was (a digest), for per-package lines.
    done: Mutex<Vec<String>>,
}

impl Transfers {
    /// Counters with no bar (a caller that reports no progress).
    pub fn hidden(verb: &'static str) -> Arc<Transfers> {
        Progress::hidden().transfers(verb)
    }

    /// A file starts; `len` is its size when the server said.
    pub fn start(&self, len: Option<u64>) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(len.unwrap_or(0), Ordering::Relaxed);
        self.draw();
    }

    /// `n` more bytes arrived (of a file, or of an index page).
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(pb) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            pb.inc(n);
        }
    }

    /// A started file is complete; `what` names it (its digest).
    pub fn finish(&self, what: String) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
        self.draw();
    }

    /// A started file failed (it counts as done, its bytes stay counted).
    pub fn abandon(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.draw();
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Files finished and files started.
    pub fn files(&self) -> (u64, u64) {
        (
            self.files_done.load(Ordering::Relaxed),
            self.files.load(Ordering::Relaxed),
        )
    }

    /// The files finished (as given to [`Transfers::finish`]).
    pub fn finished(&self) -> Vec<String> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The bar's message: `downloading 3/12`.
    fn message(&self) -> String {
        let (done, all) = self.files();
        format!("{} {done}/{all}", self.verb)
    }

    fn draw(&self) {
        let Some(m) = &self.multi else { return };
        let message = self.message();
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        let pb = bar.get_or_insert_with(|| {
            let pb = m.add(ProgressBar::new(0));
            pb.set_message(message.clone());
            pb.set_style(
                ProgressStyle::with_template(BYTES)
                    .expect("static template")
                    .progress_chars("=> "),
            );
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        pb.set_length(self.total.load(Ordering::Relaxed).max(self.bytes()));
        pb.set_position(self.bytes());
        pb.set_message(message);
        let (done, all) = self.files();
        if done == all {
            // Nothing running: the bar goes until the next file starts.
            pb.finish_and_clear();
            *bar = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_count_files_and_bytes() {
        let t = Transfers::hidden("downloading");
        assert_eq!((t.bytes(), t.files()), (0, (0, 0)));
        t.start(Some(10));
        t.start(None);
        t.add(4);
        t.add(6);
        assert_eq!(t.message(), "downloading 0/2");
        t.finish("sha256:a".into());
        t.add(7);
        t.abandon();
        assert_eq!(t.bytes(), 17);
        assert_eq!(t.files(), (2, 2));
        assert_eq!(t.finished(), vec!["sha256:a".to_string()]);
        assert_eq!(t.message(), "downloading 2/2");
        // Bytes of index pages count without a file.
        t.add(3);
        assert_eq!((t.bytes(), t.files()), (20, (2, 2)));
    }

    #[test]
    fn transfers_count_across_threads() {
        let t = Transfers::hidden("downloading");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        t.start(Some(2));
                        t.add(2);
                        t.finish(String::new());
                    }
                });
            }
        });
        assert_eq!((t.bytes(), t.files()), (800, (400, 400)));
    }
}
