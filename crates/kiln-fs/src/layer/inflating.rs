//! Wheel members inflated on the compression pool ahead of the tar writer
//! that reads them.
//!
//! A layer's diff_id is one sha256 over its tar stream, so one thread reads
//! every member in order; inflating them there too left a core idle when
//! that layer was the last one running (the end of every pip build: the
//! six-package build spent its last 0.2 s so). The next few deflated
//! members (small ones in batches) are handed to the pool while the writer
//! hashes the current one.
//! A member whose job has not started when the writer reaches it is
//! inflated by the writer itself, so a busy pool never makes it wait: the
//! work done is the same either way, only where it runs differs. Only a
//! writer alone does so: beside other layers' writers the cores are busy
//! anyway, and a member inflated on another core is hashed from memory
//! rather than from this core's cache (a cold freeze, 40 layers written
//! side by side, spent 3% more CPU so).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::compress::pool;
use super::packed::Packed;
use super::spool::SpoolSlice;
use super::tree::{Entry, EntryKind};

/// Inflated bytes held ahead of the writer, at most (one job more when
/// none is held); members are at most 4 MiB (`packed::WHOLE_UP_TO`).
const AHEAD_BYTES: u64 = 6 << 20;
const AHEAD_JOBS: usize = 8;

/// Smaller members go to the pool in batches of about this many bytes: a
/// job costs a few microseconds more than inflating one of them does (a
/// freeze has 40 000 such files), and most of a layer of small wheels is
/// such files (the freeze's last layer, written alone, spent 60 ms
/// inflating them on one core while the other was idle).
const BATCH_BYTES: u64 = 64 << 10;
const BATCH_MEMBERS: usize = 64;

/// Writers that read members, in this process.
static WRITERS: AtomicUsize = AtomicUsize::new(0);

/// A member's bytes, checked, and whether its deflate stream ended where
/// its archive says (see [`Packed::read_all`]).
pub(crate) type Read = io::Result<(Vec<u8>, bool)>;

/// Hand `s`'s bytes to `f`: `ahead`'s when they were inflated ahead, else
/// read now ([`SpoolSlice::for_each_block`], whose answer this gives).
pub(crate) fn each_block(
    s: &SpoolSlice,
    ahead: Option<Read>,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Option<bool>> {
    match ahead {
        Some(read) => {
            let (bytes, whole) = read?;
            f(&bytes).map(|()| Some(whole))
        }
        None => s.for_each_block(f),
    }
}

/// The members of `entries` after the one being written, inflating.
pub(crate) struct Ahead<'a> {
    entries: &'a [Entry],
    /// The next entry to look at for a member to start.
    next: usize,
    /// Jobs started, in the entries' order, with the entries they inflate.
    started: VecDeque<(Vec<usize>, Arc<Job>)>,
    /// The members of a batch taken, not yet written.
    taken: VecDeque<(usize, Read)>,
    /// Small members gathered for the next batch.
    batch: Vec<(usize, Arc<Packed>)>,
    held: u64,
    on: bool,
}

impl Drop for Ahead<'_> {
    fn drop(&mut self) {
        if self.on {
            WRITERS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<'a> Ahead<'a> {
    /// Members of `entries` start inflating only when `on` (a writer that
    /// takes them deflated without reading them needs none).
    pub(crate) fn new(entries: &'a [Entry], on: bool) -> Ahead<'a> {
        if on {
            WRITERS.fetch_add(1, Ordering::Relaxed);
        }
        Ahead {
            entries,
            next: if on { 0 } else { entries.len() },
            started: VecDeque::new(),
            taken: VecDeque::new(),
            batch: Vec::new(),
            held: 0,
            on,
        }
    }

    /// The bytes of `entries[i]` when they were started ahead (waiting for
    /// a job that is running, inflating one not yet started here); `None`
    /// when the writer reads them itself. Starts the members after it.
    pub(crate) fn take(&mut self, i: usize) -> Option<Read> {
        self.next = self.next.max(i + 1);
        // A member gathered but not yet sent is the writer's own.
        self.batch.retain(|(at, _)| *at > i);
        while self.started.front().is_some_and(|(ats, _)| ats[0] <= i) {
            let Some((ats, job)) = self.started.pop_front() else {
                break;
            };
            self.held -= job.size();
            if ats.contains(&i) {
                self.taken.extend(ats.into_iter().zip(job.take()));
            }
        }
        while self.taken.front().is_some_and(|(at, _)| *at < i) {
            self.taken.pop_front();
        }
        let mine = match self.taken.front() {
            Some((at, _)) if *at == i => self.taken.pop_front().map(|(_, r)| r),
            _ => None,
        };
        self.start_more();
        mine
    }

    fn start_more(&mut self) {
        // (Unit tests write side by side; they always take this path.)
        if WRITERS.load(Ordering::Relaxed) > 1 && !cfg!(test) {
            return;
        }
        while self.next < self.entries.len()
            && self.started.len() < AHEAD_JOBS
            && (self.started.is_empty() || self.held < AHEAD_BYTES)
        {
            let i = self.next;
            self.next += 1;
            let EntryKind::Spooled(s) = &self.entries[i].kind else {
                continue;
            };
            let Some(packed) = s.inflated_whole() else {
                continue;
            };
            if packed.size() >= BATCH_BYTES {
                // The batch gathered goes first: jobs start in the
                // entries' order, which `take` relies on.
                if !self.batch.is_empty() {
                    let batch = std::mem::take(&mut self.batch);
                    self.spawn(batch);
                }
                self.spawn(vec![(i, packed)]);
                continue;
            }
            self.batch.push((i, packed));
            let gathered: u64 = self.batch.iter().map(|(_, p)| p.size()).sum();
            if gathered >= BATCH_BYTES || self.batch.len() >= BATCH_MEMBERS {
                let batch = std::mem::take(&mut self.batch);
                self.spawn(batch);
            }
        }
        if self.next == self.entries.len() && !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.spawn(batch);
        }
    }

    /// Start inflating `members` (in the entries' order) on the pool.
    fn spawn(&mut self, members: Vec<(usize, Arc<Packed>)>) {
        let (ats, packed): (Vec<usize>, Vec<Arc<Packed>>) = members.into_iter().unzip();
        let job = Arc::new(Job {
            packed,
            state: Mutex::new(State::Waiting),
            done: Condvar::new(),
        });
        self.held += job.size();
        let run = job.clone();
        pool().spawn(move || run.run());
        self.started.push_back((ats, job));
    }
}

/// Some members' inflating, done by whichever of the pool and the writer
/// comes to it first.
struct Job {
    packed: Vec<Arc<Packed>>,
    state: Mutex<State>,
    done: Condvar,
}

enum State {
    Waiting,
    Running,
    Done(Vec<Read>),
    Taken,
}

impl Job {
    fn size(&self) -> u64 {
        self.packed.iter().map(|p| p.size()).sum()
    }

    fn read_all(&self) -> Vec<Read> {
        self.packed.iter().map(|p| p.read_all()).collect()
    }

    /// On the pool: inflate them unless the writer has taken them.
    fn run(&self) {
        {
            let mut s = self.lock();
            if !matches!(*s, State::Waiting) {
                return;
            }
            *s = State::Running;
        }
        let read = self.read_all();
        *self.lock() = State::Done(read);
        self.done.notify_all();
    }

    /// For the writer: the bytes, waiting only for a job already running.
    fn take(&self) -> Vec<Read> {
        let mut s = self.lock();
        loop {
            match std::mem::replace(&mut *s, State::Taken) {
                State::Waiting => {
                    drop(s);
                    return self.read_all();
                }
                State::Running => {
                    *s = State::Running;
                    s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                State::Done(read) => return read,
                State::Taken => {
                    return self
                        .packed
                        .iter()
                        .map(|_| Err(io::Error::other("a member was read twice")))
                        .collect()
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::Arc;

    use super::super::tarball::write_tar;
    use super::*;

    /// Deflated members of `lens` bytes end to end in one file: each
    /// member's offset, deflated length and plain bytes.
    fn packed_members(path: &std::path::Path, lens: &[usize]) -> Vec<(u64, u64, Vec<u8>)> {
        let mut file = Vec::new();
        let mut members = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            let plain: Vec<u8> = (0..*len)
                .map(|j| (j as u32 * 7 + i as u32) as u8 ^ (j >> 9) as u8)
                .collect();
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&plain).unwrap();
            let raw = enc.finish().unwrap();
            members.push((file.len() as u64, raw.len() as u64, plain));
            file.extend_from_slice(&raw);
        }
        std::fs::write(path, &file).unwrap();
        members
    }

    /// Entries `m0`, `m1`... read packed from `path`; the CRC-32 of the
    /// one `damaged` is wrong.
    fn packed_entries(
        path: &std::path::Path,
        members: &[(u64, u64, Vec<u8>)],
        damaged: Option<usize>,
    ) -> Vec<Entry> {
        let f = Arc::new(std::fs::File::open(path).unwrap());
        members
            .iter()
            .enumerate()
            .map(|(i, (offset, raw, plain))| {
                let crc = libdeflater::crc32(plain) ^ u32::from(damaged == Some(i));
                let p = Packed::new(
                    f.clone(),
                    *offset,
                    *raw,
                    plain.len() as u64,
                    crc,
                    true,
                    format!("m{i}"),
                );
                Entry {
                    path: format!("m{i}"),
                    kind: EntryKind::Spooled(SpoolSlice::packed(p)),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                }
            })
            .collect()
    }

    /// Forty deflated members of 1 byte to 1.5 MiB in one file, each read
    /// packed: the tar written with them inflating ahead (the pool and the
    /// writer racing for each) is the tar of their plain bytes, and a
    /// damaged one among them fails the tar naming it.
    #[test]
    fn members_inflated_ahead_make_the_same_tar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.whl");
        let lens: Vec<usize> = (0..40)
            .map(|i| [1usize, 700, 65_536, 1_500_000][i % 4] + i)
            .collect();
        let members = packed_members(&path, &lens);
        let plain: Vec<Entry> = members
            .iter()
            .enumerate()
            .map(|(i, (_, _, p))| Entry::data(&format!("m{i}"), p.clone(), 0o644))
            .collect();
        let want = write_tar(&plain, 0, Vec::new()).unwrap();
        for _ in 0..3 {
            assert!(
                write_tar(&packed_entries(&path, &members, None), 0, Vec::new()).unwrap() == want
            );
        }
        let err = write_tar(&packed_entries(&path, &members, Some(29)), 0, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("m29: CRC-32 mismatch"), "{err}");
    }

    /// Small members gathered for a batch go to the pool before a big one
    /// after them, so jobs start in the entries' order and the writer gets
    /// back every member started ahead: all but the first, which it
    /// reaches before any job starts.
    #[test]
    fn every_member_started_ahead_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.whl");
        let lens: Vec<usize> = (0..10)
            .map(|i| if i % 3 == 1 { 70_000 } else { 700 })
            .collect();
        let members = packed_members(&path, &lens);
        let entries = packed_entries(&path, &members, None);
        let mut ahead = Ahead::new(&entries, true);
        for (i, (_, _, plain)) in members.iter().enumerate() {
            match ahead.take(i) {
                Some(read) => assert!(i > 0 && read.unwrap().0 == *plain, "m{i}"),
                None => assert_eq!(i, 0, "m{i} was not started ahead"),
            }
        }
    }

    /// A job the pool has not started is done by the writer; one it has
    /// done is handed over; either way once.
    #[test]
    fn a_job_is_done_once_by_whoever_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        std::fs::write(&path, b"stored").unwrap();
        let f = Arc::new(std::fs::File::open(&path).unwrap());
        let crc = libdeflater::crc32(b"stored");
        let job = || Job {
            packed: vec![Arc::new(Packed::new(f.clone(), 0, 6, 6, crc, false, "w"))],
            state: Mutex::new(State::Waiting),
            done: Condvar::new(),
        };
        let early = job();
        assert_eq!(early.take()[0].as_ref().unwrap().0, b"stored");
        early.run();
        assert!(matches!(*early.lock(), State::Taken));
        let late = job();
        late.run();
        assert!(matches!(*late.lock(), State::Done(_)));
        assert_eq!(late.take()[0].as_ref().unwrap().0, b"stored");
        assert!(late.take()[0].is_err());
    }
}
