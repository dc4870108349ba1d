//! `[pip] compile`: the `.pyc` files pip would write at install time, as a
//! layer of their own on top of the pip stage's.
//!
//! Without them every import by a user who cannot write `__pycache__`
//! compiles the sources again. The `.py` files each wheel's RECORD lists
//! (and with `compile-stdlib`, the standard library's and the
//! distribution's that have none) are compiled by the image's own
//! interpreter in kiln's sandbox (no network), or, for another
//! architecture, by the host's `python3.X` of the same minor version over
//! the sources written out; else nothing is compiled and the report says
//! why. The pycs are PEP 552 unchecked-hash ones (no mtime inside, never
//! revalidated), compiled per wheel in fixed chunks of its sorted list,
//! each in a child forked from one interpreter with a fixed hash seed
//! (chunks run in parallel), so the same inputs give the same bytes. Each
//! RECORD gets `path,,` rows for its pycs, as pip writes them. The
//! compiler's tree is the image below the stage, written out once and
//! kept read-only in the cache ([`SharedTree`]), with a scratch directory
//! bound inside that holds the stage's sources in one file and gets each
//! chunk's pycs in one file: nothing else of the wheels is unpacked for
//! it, and no file is made per source or pyc. (With `compile-stdlib` the
//! base's own sources are read where they are, in a tree written for the
//! build.)
//!
//! Each wheel's pycs are remembered (bucket `pip-bytecode-v1`) by the
//! interpreter, its version and the wheel's sources, so a warm build
//! starts nothing and a stage that gains a wheel compiles that wheel alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_core::platform::Platform;
use kiln_fs::layer::{Entry, EntryKind, LayerGroup, Spool};
use kiln_fs::rootfs::{Node, Rootfs};
use kiln_fs::sandbox::{Network, Paths, RunSpec, Sandbox, SharedTree, DEFAULT_PATH, SCRATCH_MOUNT};
use kiln_pip as pip;
use kiln_store::{Cache, CacheBucket};

use crate::stages::Stages;

/// What `compile` did, in the build report (`pip[].bytecode`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BytecodeReport {
    /// `.pyc` files in the layer.
    pub compiled: usize,
    /// Of those, the ones an earlier build compiled (remembered per wheel).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached: usize,
    /// Of those, the ones this build compiled while the stage's wheels
    /// still downloaded (each wheel as it arrived).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ahead: usize,
    /// Why nothing (or not everything) was compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Sources the interpreter refused (not valid Python for it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The compiler, run as a file: `SCRIPT ROOT PACK LIST OUT` reads
/// sources (one a line, units apart by an empty line) from LIST and
/// compiles each unit in fixed chunks of 500, each in a child forked from
/// the script once it has read the list (as many at once as there are
/// CPUs, the chunks with the most source bytes first, so that no big one
/// is left to run alone at the end; the order changes no chunk's bytes).
/// A line is `path<TAB>offset<TAB>length`: a source held in the file
/// PACK, or with offset -1 a source with no bytes (which fails), or -2
/// one read at ROOT + path (the base's own). Chunk N writes its pycs, one
/// after another, to the file OUT/N, and a line `I<TAB>N<TAB>offset<TAB>
/// length<TAB>pyc` out per pyc, in the list's order, for the list's Ith
/// source (a path may hold a tab); `pyc` is the path the interpreter
/// itself looks for, and the code objects carry the image path. So a
/// stage's thousands of sources and pycs are a few files on disk, not a
/// tree of them (on ext4 their inodes cost more than their bytes). A
/// chunk's bytes depend only on its files, whatever ran beside it:
/// marshal's output depends on the interpreter's state (which objects
/// are shared), and every child starts from the same one. A fork costs
/// about a millisecond where a fresh interpreter cost 20-30 ms, and a
/// freeze of 110 wheels is 120 chunks. Each pyc is what `py_compile`
/// writes in unchecked-hash mode: the same compile call, hash and header.
const SCRIPT: &str = r#"import os, sys, selectors, importlib.util
from importlib._bootstrap_external import _code_to_hash_pyc
root, pack, listing, outdir = sys.argv[1:5]
with open(listing, encoding="utf-8", errors="surrogateescape") as f:
    units = [[l.rsplit("\t", 2) for l in u.split("\n") if l] for u in f.read().split("\n\n")]
items = [i for u in units for i in u]
CHUNK = 500

def read_source(item, pf):
    at, n = int(item[1]), int(item[2])
    if at == -2:
        with open(root + item[0], "rb") as f:
            return f.read()
    if at < 0:
        raise FileNotFoundError(item[0])
    parts = []
    while n > 0:
        b = os.pread(pf, n, at)
        if not b:
            raise EOFError(item[0])
        parts.append(b)
        at, n = at + len(b), n - len(b)
    return b"".join(parts)

def compile_range(index, start, end):
    pf = os.open(pack, os.O_RDONLY) if pack else -1
    done, at = [], 0
    with open(os.path.join(outdir, str(index)), "wb") as out:
        for k in range(start, end):
            item = items[k]
            p = item[0]
            c = importlib.util.cache_from_source(p)
            try:
                data = read_source(item, pf)
                code = compile(data, p, "exec", dont_inherit=True, optimize=-1)
                pyc = _code_to_hash_pyc(code, importlib.util.source_hash(data), False)
            except Exception as e:
                sys.stderr.write("kiln-bytecode: %s: %s\n" % (p, type(e).__name__))
                continue
            out.write(pyc)
            done.append("%d\t%d\t%d\t%d\t%s\n" % (k, index, at, len(pyc), c))
            at += len(pyc)
    return "".join(done).encode("utf-8", "surrogateescape")

starts, at = [], 0
for u in units:
    starts += [(at + s, at + min(s + CHUNK, len(u))) for s in range(0, len(u), CHUNK)]
    at += len(u)
def weight(i):
    total = 0
    for item in items[starts[i][0]:starts[i][1]]:
        if item[1] != "-2":
            total += int(item[2])
            continue
        try:
            total += os.stat(root + item[0]).st_size
        except OSError:
            pass
    return total
order = sorted(range(len(starts)), key=lambda i: -weight(i))
out = [None] * len(starts)
sel = selectors.DefaultSelector()
running, nxt = 0, 0
while nxt < len(starts) or running:
    while running < (os.cpu_count() or 1) and nxt < len(starts):
        i = order[nxt]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                data = compile_range(i, *starts[i])
                while data:
                    data = data[os.write(w, data):]
                sys.stderr.flush()
                os._exit(0)
            except BaseException as e:
                os.write(2, ("kiln-bytecode: a compiler process failed: %r\n" % (e,)).encode())
                os._exit(1)
        os.close(w)
        sel.register(r, selectors.EVENT_READ, (pid, i, []))
        running, nxt = running + 1, nxt + 1
    for key, _ in sel.select():
        pid, i, parts = key.data
        data = os.read(key.fd, 1 << 16)
        if data:
            parts.append(data)
            continue
        sel.unregister(key.fd)
        os.close(key.fd)
        running -= 1
        if os.waitpid(pid, 0)[1] != 0:
            for other in sel.get_map().values():
                os.kill(other.data[0], 9)
            raise SystemExit("a compiler process failed")
        out[i] = b"".join(parts)
for o in out:
    sys.stdout.buffer.write(o)
"#;

/// Bumped whenever the same inputs would give other pycs or rows, or the
/// key is made otherwise (4: wheel members enter by their known hash; 5:
/// compiled from bytes read out of one file, not by `py_compile`).
const FORMAT: &str = "kiln-bytecode/5";

/// One compiled file: its source and its pyc (absolute image paths).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Compiled {
    source: String,
    pyc: String,
    size: u64,
}

/// What the cache keeps of a unit: its pycs' bytes concatenated in one blob.
#[derive(Serialize, Deserialize)]
struct Memo {
    blob: Digest,
    files: Vec<Compiled>,
    failed: usize,
}

/// How the sources get compiled.
enum Compiler {
    /// The image's interpreter, in the sandbox.
    Image,
    /// A host interpreter of the same minor version (path, `sys.version`).
    Host(PathBuf, String),
}

/// What [`compile`] gives: the bytecode layer, if any, and the report.
type Outcome = Option<(Option<LayerGroup>, BytecodeReport)>;

/// The bytecode layer for what `groups` (one pip stage's layers, already
/// applied to `fs`) installed, and what was done; `None` when `[pip]
/// compile = false` or when only locking. `emit` (the stage's layers
/// compressed) is called once, after the image below the stage was
/// taken and while the compiler's tree is written out, if it must be.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compile(
    stages: &Stages,
    section: &pip::PipSection,
    plan: &pip::PipPlan,
    groups: &[LayerGroup],
    fs: &Rootfs,
    platform: &Platform,
    early: Option<Early>,
    emit: &mut dyn FnMut() -> Result<()>,
) -> Result<Outcome> {
    let mut emit = Some(emit);
    let out = compile_with(
        stages, section, plan, groups, fs, platform, early, &mut emit,
    )?;
    if let Some(emit) = emit {
        emit()?;
    }
    Ok(out)
}

/// The compiler's tree being written by a thread of its own since the
/// stage's wheels were resolved ([`uses_shared_tree`]), which then
/// compiles the wheels [`Early::feed`] hands it as they unpack, while
/// later ones still download, and leaves their pycs in the cache for the
/// stage's [`compile`] to find. A download that is slower than the
/// compiler is then followed by the last wheels' compile alone.
pub(crate) struct Early<'scope> {
    handle: std::thread::ScopedJoinHandle<'scope, Result<(SharedTree, BTreeSet<Digest>)>>,
    wheels: std::sync::mpsc::Sender<Vec<Entry>>,
}

impl Early<'_> {
    /// A wheel's entries (of its layer, or its part of a shared one): its
    /// RECORD and sources are compiled in the next batch.
    pub(crate) fn feed(&self, entries: &[Entry]) {
        let wanted: Vec<Entry> = entries
            .iter()
            .filter(|e| e.path.ends_with(".py") || e.path.ends_with("/RECORD"))
            .cloned()
            .collect();
        if !wanted.is_empty() {
            let _ = self.wheels.send(wanted);
        }
    }

    /// The tree, once the wheels fed so far are compiled, and the keys of
    /// the units compiled.
    fn join(self) -> Result<(SharedTree, BTreeSet<Digest>)> {
        drop(self.wheels);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(kiln_core::Error::internal("the tree's writer stopped")))
    }
}

/// Whether the stage's bytecode will be compiled by the image's own
/// interpreter over the tree kept in the cache (its own sources alone):
/// then the stage starts writing that tree (when the cache has not got
/// it) with [`spawn_tree`] once its wheels are resolved, so that it
/// overlaps the downloads instead of following them. The tree holds only
/// Python's own files ([`Paths::Python`]: for the full data image, 4 000
/// inodes and 115 MB of the 11 500 and 231 MB below its pip stage).
pub(crate) fn uses_shared_tree(
    stages: &Stages,
    section: &pip::PipSection,
    platform: &Platform,
) -> bool {
    stages.tree.is_some()
        && stages.bytecode
        && section.compile
        && !section.compile_stdlib
        && platform.is_host()
}

const PURPOSE: &str = "[pip] compile";

/// Open the shared tree of the image so far on a thread of `scope`, with
/// the files of it `python` reads ([`Paths::python`]: the compiler reads
/// its sources from a pack beside it, not from the tree), then compile
/// what is fed to it ([`Early`]); returns once that image is taken
/// (before the caller emits more). `fs` is the image below the stage;
/// `parts`, the epoch and compression of the build's layers when each
/// unit's part of the bytecode layer is to be compressed ahead too.
pub(crate) fn spawn_tree<'scope>(
    tree: &'scope crate::stages::ImageSoFar<'scope>,
    cache: &'scope Cache,
    platform: &'scope Platform,
    python: &pip::PythonTarget,
    fs: &Rootfs,
    parts: Option<(u64, crate::stages::Ahead<'scope>)>,
    scope: &'scope std::thread::Scope<'scope, '_>,
) -> Early<'scope> {
    let paths = Paths::python(&python.interpreter);
    let prefix = unit_prefix(python, &Compiler::Image, fs);
    let interpreter = python.interpreter.clone();
    let (taken, layers_taken) = std::sync::mpsc::channel();
    let (wheels, fed) = std::sync::mpsc::channel::<Vec<Entry>>();
    let handle = std::thread::Builder::new()
        .name("kiln-tree".into())
        .spawn_scoped(scope, move || {
            let layers = tree(platform);
            let _ = taken.send(());
            let layers = layers?;
            let shared =
                SharedTree::open(cache, &layers.key, || Ok(layers.readers), PURPOSE, paths)?;
            let ahead = Ahead {
                tree: &shared,
                prefix: &prefix,
                interpreter: &interpreter,
                cache,
                parts,
            };
            // A batch a core at once: a wheel that arrives while one
            // compiles starts the next, rather than waiting for it.
            let compiled = std::sync::Mutex::new(BTreeSet::new());
            let slots = crate::stages::Slots::one_a_core();
            let (ahead, compiled_ref) = (&ahead, &compiled);
            std::thread::scope(|batches| {
                while let Ok(first) = fed.recv() {
                    let slot = slots.take();
                    // Whatever arrived meanwhile joins the batch.
                    let batch: Vec<Vec<Entry>> =
                        std::iter::once(first).chain(fed.try_iter()).collect();
                    let run = move || {
                        // The slot comes back however the batch ends.
                        let _slot = slot;
                        let keys = ahead.compile(batch);
                        compiled_ref
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(keys);
                    };
                    // A thread that cannot start drops `run`, and with it
                    // the slot: the batch is left to the stage's compile.
                    let _ = std::thread::Builder::new()
                        .name("kiln-compile".into())
                        .spawn_scoped(batches, run);
                }
            });
            Ok((
                shared,
                compiled.into_inner().unwrap_or_else(|e| e.into_inner()),
            ))
        })
        // (The sender went with the closure: nothing to wait for below.)
        .unwrap_or_else(|e| {
            let why = format!("starting the tree's writer: {e}");
            scope.spawn(move || Err(kiln_core::Error::internal(why)))
        });
    let _ = layers_taken.recv();
    Early { handle, wheels }
}

/// The compiler's tree for the stage's own compile: opened by the early
/// tree's thread, or being written now.
enum Opening<'scope> {
    Open(Result<SharedTree>),
    Writing(Early<'scope>),
}

impl Opening<'_> {
    fn tree(self) -> Result<SharedTree> {
        match self {
            Opening::Open(tree) => tree,
            Opening::Writing(early) => early.join().map(|(tree, _)| tree),
        }
    }
}

/// What compiles wheels ahead over the shared tree.
struct Ahead<'a> {
    tree: &'a SharedTree,
    prefix: &'a sha2::Sha256,
    interpreter: &'a str,
    cache: &'a Cache,
    /// The build's epoch and how it writes layers.
    parts: Option<(u64, crate::stages::Ahead<'a>)>,
}

impl Ahead<'_> {
    /// Compile the units of `wheels` the cache has not got (best effort:
    /// what fails here is compiled, and reported, by the stage's
    /// [`compile`]); the keys of those stored. With `parts`, each unit's
    /// part of the bytecode layer is compressed into the cache too.
    fn compile(&self, wheels: Vec<Vec<Entry>>) -> Vec<Digest> {
        let groups: Vec<LayerGroup> = wheels
            .into_iter()
            .map(|e| LayerGroup::new(PURPOSE, e))
            .collect();
        let records = records(&groups);
        let (units, _) = units(self.prefix, &records, &groups);
        let todo: Vec<&Unit> = units
            .iter()
            .filter(|u| read_memo(&memo_path(self.cache, u), self.cache).is_none())
            .collect();
        if todo.is_empty() {
            return Vec::new();
        }
        let run = scratch(&todo, &groups, self.cache)
            .and_then(|dir| in_shared_tree(self.tree, dir, self.interpreter, &todo));
        let Ok(run) = run else {
            return Vec::new();
        };
        let (keys, memos): (Vec<Digest>, Vec<(Memo, Arc<Spool>)>) = todo
            .par_iter()
            .filter_map(|u| {
                Some((
                    u.key.clone(),
                    store(u, &run.out, &run.pycs, self.cache).ok()?,
                ))
            })
            .unzip();
        // The batch's parts, read out of its groups once (a map of every
        // entry of the batch), each compressed on its own.
        let members = self
            .parts
            .and_then(|parts| Some((parts, layer_members(&memos, &groups, &records).ok()?)));
        if let Some(((epoch, how), members)) = members {
            members.into_par_iter().for_each(|m| {
                let part = LayerGroup::part_of(m);
                let built =
                    kiln_fs::layer::build_part_ahead(&part, epoch, how.compression, self.cache);
                if let Ok(false) = built {
                    how.tally.part_ahead();
                }
            });
        }
        keys
    }
}

/// [`compile`], taking `emit` where it calls it.
#[allow(clippy::too_many_arguments)]
fn compile_with(
    stages: &Stages,
    section: &pip::PipSection,
    plan: &pip::PipPlan,
    groups: &[LayerGroup],
    fs: &Rootfs,
    platform: &Platform,
    early: Option<Early>,
    emit: &mut Option<&mut dyn FnMut() -> Result<()>>,
) -> Result<Outcome> {
    let mut emit_now = || emit.take().map_or(Ok(()), |e| e());
    let Some(tree) = stages.tree.filter(|_| stages.bytecode && section.compile) else {
        return Ok(None);
    };
    let python = &plan.python;
    let Some(minor) = python
        .interpreter
        .rsplit_once("python3.")
        .and_then(|(_, m)| m.parse::<u32>().ok())
    else {
        return Ok(Some(skip(format!(
            "cannot tell the version of {}",
            python.interpreter
        ))));
    };
    let records = records(groups);
    let compiler = if platform.is_host() {
        Compiler::Image
    } else {
        match host_python(minor) {
            Some((path, version)) => Compiler::Host(path, version),
            None => {
                return Ok(Some(skip(format!(
                    "nothing compiled: not the host's architecture, and no python3.{minor} on the host's PATH"
                ))))
            }
        }
    };
    let mut skipped = None;
    let mut stdlib = Vec::new();
    if section.compile_stdlib {
        match compiler {
            Compiler::Image => stdlib = stdlib_sources(fs, minor),
            // The base's sources are not on disk outside the sandbox.
            Compiler::Host(..) => {
                skipped = Some(
                    "compile-stdlib: the standard library is not compiled for another architecture than the host's"
                        .to_string(),
                )
            }
        }
    }
    let prefix = unit_prefix(python, &compiler, fs);
    let (mut units, seen) = units(&prefix, &records, groups);
    units.extend(stdlib_unit(&prefix, stdlib, &seen, fs));
    if units.is_empty() {
        return Ok(Some((
            None,
            BytecodeReport {
                skipped,
                ..Default::default()
            },
        )));
    }
    // What the early tree compiled ahead is in the cache once it is
    // joined. The stage's layers are compressed first: the tree's thread
    // goes on compiling meanwhile.
    let mut opened = None;
    let mut ahead = BTreeSet::new();
    if let Some(early) = early {
        emit_now()?;
        opened = Some(early.join().map(|(tree, keys)| {
            ahead = keys;
            tree
        }));
    }
    let mut memos: Vec<Option<(Memo, Arc<Spool>)>> = units
        .iter()
        .map(|u| read_memo(&memo_path(stages.cache, u), stages.cache))
        .collect();
    // (Units compiled ahead count as compiled by this build.)
    let (mut cached, mut compiled_ahead) = (0, 0);
    for (u, (m, _)) in units
        .iter()
        .zip(&memos)
        .filter_map(|(u, m)| Some((u, m.as_ref()?)))
    {
        match ahead.contains(&u.key) {
            true => compiled_ahead += m.files.len(),
            false => cached += m.files.len(),
        }
    }
    let todo: Vec<&Unit> = units
        .iter()
        .zip(&memos)
        .filter(|(_, m)| m.is_none())
        .map(|(u, _)| u)
        .collect();
    if !todo.is_empty() {
        let count: usize = todo.iter().map(|u| u.sources.len()).sum();
        let spin = || {
            stages.progress.spinner(&format!(
                "pip: compiling {count} files to bytecode for {platform}"
            ))
        };
        let (run, spinner) = match &compiler {
            Compiler::Image => {
                // The base's own sources (the standard library's) are
                // compiled where they are, in a tree of the build's own.
                let ours: BTreeSet<&str> = groups
                    .iter()
                    .flat_map(|g| &g.entries)
                    .map(|e| e.path.as_str())
                    .collect();
                let all_ours = todo
                    .iter()
                    .flat_map(|u| &u.sources)
                    .all(|s| ours.contains(s.trim_start_matches('/')));
                if all_ours {
                    // The shared tree is written (when the cache has not
                    // got it) while the stage's layers are compressed, if
                    // it was not since the stage began; the sources are
                    // written out beside both, on a thread of their own
                    // (they followed the tree, with a core idle).
                    let (emitted, opened, scratched) = std::thread::scope(|scope| {
                        let writing = std::thread::Builder::new()
                            .name("kiln-sources".into())
                            .spawn_scoped(scope, || scratch(&todo, groups, stages.cache));
                        let opening = match opened.take() {
                            Some(tree) => Opening::Open(tree),
                            None => Opening::Writing(spawn_tree(
                                tree,
                                stages.cache,
                                platform,
                                python,
                                fs,
                                None,
                                scope,
                            )),
                        };
                        let emitted = emit_now();
                        let scratched = match writing {
                            Ok(w) => w
                                .join()
                                .unwrap_or_else(|_| Err("the sources' writer stopped".to_string())),
                            Err(_) => scratch(&todo, groups, stages.cache),
                        };
                        (emitted, opening.tree(), scratched)
                    });
                    emitted?;
                    let spinner = spin();
                    let shared = opened.map_err(|e| e.to_string()).and_then(|t| {
                        let run = in_shared_tree(&t, scratched?, &python.interpreter, &todo)?;
                        Ok(run.keeping(t))
                    });
                    let run = match shared {
                        Ok(run) => Ok(run),
                        // (This tree has the stage's layers too: the same
                        // sources as written over them.)
                        Err(_) => in_sandbox(
                            tree(platform)?.readers,
                            &python.interpreter,
                            &todo,
                            groups,
                            stages.cache,
                        ),
                    };
                    (run, spinner)
                } else {
                    let layers = tree(platform)?;
                    emit_now()?;
                    let spinner = spin();
                    let run = in_sandbox(
                        layers.readers,
                        &python.interpreter,
                        &todo,
                        groups,
                        stages.cache,
                    );
                    (run, spinner)
                }
            }
            Compiler::Host(path, _) => {
                emit_now()?;
                let spinner = spin();
                (on_host(path, &todo, groups, stages.cache), spinner)
            }
        };
        spinner.finish_and_clear();
        let done = match run {
            Ok(r) => r,
            Err(why) => return Ok(Some(skip(format!("nothing compiled: {why}")))),
        };
        // Each unit's pycs go into its own blob and memo: the units in
        // parallel, each in source order (its chunks' files, in turn).
        units
            .par_iter()
            .zip(memos.par_iter_mut())
            .try_for_each(|(unit, slot)| -> Result<()> {
                if slot.is_some() {
                    return Ok(());
                }
                *slot = Some(store(unit, &done.out, &done.pycs, stages.cache)?);
                Ok(())
            })?;
    }
    let memos: Vec<(Memo, Arc<Spool>)> = memos.into_iter().flatten().collect();
    let compiled: usize = memos.iter().map(|(m, _)| m.files.len()).sum();
    let report = BytecodeReport {
        compiled,
        cached,
        ahead: compiled_ahead,
        skipped,
        failed: memos.iter().map(|(m, _)| m.failed).sum(),
    };
    let members = layer_members(&memos, groups, &records)
        .io_context(|| "reading the bytecode blob".to_string())?;
    let label = format!("kiln bytecode python3.{minor}: {compiled} files");
    Ok(Some((
        Some(LayerGroup::in_parts(label, Vec::new(), members)),
        report,
    )))
}

fn skip(why: String) -> (Option<LayerGroup>, BytecodeReport) {
    (
        None,
        BytecodeReport {
            skipped: Some(why),
            ..Default::default()
        },
    )
}

/// Each RECORD the groups hold (image path without the leading `/`) →
/// the absolute image paths of the `.py` files it lists inside its site
/// directory.
fn records(groups: &[LayerGroup]) -> BTreeMap<String, Vec<String>> {
    let files: BTreeSet<&str> = groups
        .iter()
        .flat_map(|g| &g.entries)
        .filter(|e| e.kind.file_len().is_some())
        .map(|e| e.path.as_str())
        .collect();
    let mut out = BTreeMap::new();
    for g in groups {
        for e in &g.entries {
            let Some(dist_info) = e.path.strip_suffix("/RECORD") else {
                continue;
            };
            if !dist_info.ends_with(".dist-info") {
                continue;
            }
            let Some(text) = content(e) else { continue };
            let site = dist_info.rsplit_once('/').map_or("", |(s, _)| s);
            let mut py = Vec::new();
            for row in String::from_utf8_lossy(&text).lines() {
                let rel = record_path(row);
                if !rel.ends_with(".py") || rel.starts_with("../") || rel.starts_with('/') {
                    continue;
                }
                let path = format!("{site}/{rel}");
                if files.contains(path.as_str()) {
                    py.push(format!("/{path}"));
                }
            }
            out.insert(e.path.clone(), py);
        }
    }
    out
}

/// The path column of a RECORD row (CSV: quoted when it holds `,` or `"`).
fn record_path(row: &str) -> String {
    match row.strip_prefix('"') {
        Some(rest) => {
            let mut out = String::new();
            let mut chars = rest.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        out.push('"');
                    } else {
                        break;
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => row.split(',').next().unwrap_or_default().to_string(),
    }
}

/// A RECORD row's path column, quoted when needed.
fn record_field(rel: &str) -> String {
    if rel.contains(',') || rel.contains('"') {
        format!("\"{}\"", rel.replace('"', "\"\""))
    } else {
        rel.to_string()
    }
}

fn content(e: &Entry) -> Option<Vec<u8>> {
    e.kind.file_bytes()?.ok().map(|b| b.into_owned())
}

/// The standard library's and the distribution's `.py` files that have no
/// pyc for this interpreter yet.
fn stdlib_sources(fs: &Rootfs, minor: u32) -> Vec<String> {
    let tag = format!(".cpython-3{minor}.pyc");
    let dirs = [
        format!("/usr/lib/python3.{minor}/"),
        "/usr/lib/python3/dist-packages/".to_string(),
        format!("/usr/local/lib/python3.{minor}/"),
    ];
    let mut out = Vec::new();
    for (path, node) in fs.paths() {
        if !matches!(node, Node::File { .. })
            || !path.ends_with(".py")
            || !dirs.iter().any(|d| path.starts_with(d.as_str()))
            || path.contains("/site-packages/")
            || (path.contains("-packages/") && !path.starts_with("/usr/lib/python3/dist-packages/"))
        {
            continue;
        }
        let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
        let stem = file.trim_end_matches(".py");
        if fs.node(&format!("{dir}/__pycache__/{stem}{tag}")).is_none() {
            out.push(path.clone());
        }
    }
    out
}

/// What bytecode for `platform` depends on besides the image: for another
/// architecture than the host's (with `compile`), every host `python3.N`
/// on PATH, each by its path, size and time (which stand for its
/// version); nothing otherwise. A memo of the stages names it, so a build
/// on a host with another Python, or none, compiles (or skips) afresh.
pub(crate) fn host_compilers(platform: &kiln_core::platform::Platform, compile: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if platform.is_host() || !compile {
        return out;
    }
    for minor in 0..=40 {
        if let Some(p) = host_python_path(minor) {
            let md = std::fs::metadata(&p).ok();
            let _ = writeln!(
                out,
                "host python3.{minor}: {} {:?} {:?}",
                p.display(),
                md.as_ref().map(|m| m.len()),
                md.and_then(|m| m.modified().ok()),
            );
        }
    }
    out
}

/// The first `python3.<minor>` on PATH.
fn host_python_path(minor: u32) -> Option<PathBuf> {
    let name = format!("python3.{minor}");
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
}

/// A host `python3.<minor>` on PATH, with its `sys.version`.
fn host_python(minor: u32) -> Option<(PathBuf, String)> {
    let path = host_python_path(minor)?;
    let out = Command::new(&path)
        .args(["-s", "-B", "-c", "import sys; print(sys.version)"])
        .env_clear()
        .output()
        .ok()?;
    out.status.success().then(|| {
        (
            path,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    })
}

/// What is compiled and remembered as one piece: the sources of one
/// RECORD (a wheel), or the standard library's. A new wheel in a stage
/// compiles alone; the others' pycs come from the cache. A unit's pycs
/// are compiled in chunks of its own list, so their bytes depend on the
/// unit alone, whatever was compiled beside it.
struct Unit {
    key: Digest,
    /// Absolute image paths, sorted.
    sources: Vec<String>,
}

/// What every unit's key starts with: the interpreter (its size stands
/// for its build: a rebuilt package of the same version may compile
/// otherwise) and its version, and the host's for a host compiler.
fn unit_prefix(python: &pip::PythonTarget, compiler: &Compiler, fs: &Rootfs) -> sha2::Sha256 {
    use sha2::Digest as _;
    let mut prefix = sha2::Sha256::new();
    let size = match fs.resolve(&python.interpreter) {
        Some((_, Node::File { size, .. })) => *size,
        _ => 0,
    };
    prefix.update(format!(
        "{FORMAT} {}\n{} {} {size}\n",
        env!("CARGO_PKG_VERSION"),
        python.interpreter,
        python.full_version()
    ));
    if let Compiler::Host(path, version) = compiler {
        prefix.update(format!("host {} {version}\n", path.display()));
    }
    prefix
}

/// The units of the wheels `groups` hold, one a RECORD, each with its
/// key: the prefix, the sources' paths and bytes; and every source they
/// took (a source two RECORDs list goes to the first).
fn units(
    prefix: &sha2::Sha256,
    records: &BTreeMap<String, Vec<String>>,
    groups: &[LayerGroup],
) -> (Vec<Unit>, BTreeSet<String>) {
    use sha2::Digest as _;
    let ours: BTreeMap<&str, &Entry> = groups
        .iter()
        .flat_map(|g| &g.entries)
        .map(|e| (e.path.as_str(), e))
        .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for sources in records.values() {
        let sources: BTreeSet<&String> = sources.iter().filter(|s| seen.insert(*s)).collect();
        if sources.is_empty() {
            continue;
        }
        let mut h = prefix.clone();
        for s in &sources {
            h.update(format!("{s}\0"));
            let entry = ours.get(s.trim_start_matches('/'));
            // A wheel member known by a name enters as that name (the
            // warm build does not read the sources back).
            if let Some(EntryKind::Spooled(k)) = entry.map(|e| &e.kind) {
                if let Some(known) = k.known_name() {
                    h.update(format!("k{}\0{known}\0", k.len()));
                    continue;
                }
            }
            let bytes = entry.and_then(|e| content(e)).unwrap_or_default();
            h.update(format!("{}\0", bytes.len()));
            h.update(&bytes);
        }
        out.push(Unit {
            key: Digest::from_hasher(h),
            sources: sources.into_iter().cloned().collect(),
        });
    }
    (out, seen.into_iter().cloned().collect())
}

/// The standard library's unit (`compile-stdlib`): the sources no wheel
/// took, keyed by the prefix, their sizes and the package database (which
/// names the Python packages' versions).
fn stdlib_unit(
    prefix: &sha2::Sha256,
    stdlib: Vec<String>,
    seen: &BTreeSet<String>,
    fs: &Rootfs,
) -> Option<Unit> {
    use sha2::Digest as _;
    let stdlib: BTreeSet<String> = stdlib.into_iter().filter(|s| !seen.contains(s)).collect();
    if stdlib.is_empty() {
        return None;
    }
    let mut h = prefix.clone();
    h.update("stdlib\n");
    for s in &stdlib {
        let size = match fs.node(s) {
            Some(Node::File { size, .. }) => *size,
            _ => 0,
        };
        h.update(format!("{s}\0base {size}\0"));
    }
    h.update(fs.read("/var/lib/dpkg/status").unwrap_or_default());
    Some(Unit {
        key: Digest::from_hasher(h),
        sources: stdlib.into_iter().collect(),
    })
}

/// The memo and its blob, when both are intact. The blob is opened, not
/// read: the layer's pycs are slices of it, read when the layer is written.
fn read_memo(path: &Path, cache: &Cache) -> Option<(Memo, Arc<Spool>)> {
    let memo: Memo = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let blob = cache.verified(&memo.blob).ok()??;
    let spool = Spool::open(&blob).ok()?;
    let total: u64 = memo.files.iter().map(|f| f.size).sum();
    spool.slice_at(0, total).ok()?;
    Some((memo, spool))
}

/// Where the memo of `unit` is.
fn memo_path(cache: &Cache, unit: &Unit) -> PathBuf {
    cache.entry(CacheBucket::Bytecode, format!("{}.json", unit.key.hex()))
}

/// Store `unit`'s pycs, in source order, out of what a run wrote (`pycs`,
/// in the chunks' files in `out`): into a blob of their own, named by its
/// memo.
fn store(
    unit: &Unit,
    out: &Path,
    pycs: &BTreeMap<String, Pyc>,
    cache: &Cache,
) -> Result<(Memo, Arc<Spool>)> {
    let mut files = Vec::new();
    let mut blob = cache.writer()?;
    let mut chunk: Option<(&str, std::fs::File)> = None;
    for source in &unit.sources {
        let Some(pyc) = pycs.get(source) else {
            continue;
        };
        let path = out.join(&pyc.chunk);
        let copied = (|| -> std::io::Result<u64> {
            use std::io::{Read as _, Seek as _};
            let file = match &mut chunk {
                Some((name, f)) if *name == pyc.chunk => f,
                _ => &mut chunk.insert((&pyc.chunk, std::fs::File::open(&path)?)).1,
            };
            file.seek(std::io::SeekFrom::Start(pyc.at))?;
            std::io::copy(&mut file.take(pyc.size), &mut blob)
        })()
        .io_context(|| format!("reading the compiled {}", path.display()))?;
        if copied != pyc.size {
            return Err(kiln_core::Error::internal(format!(
                "{} ends before the pyc of {source}",
                path.display()
            )));
        }
        files.push(Compiled {
            source: source.clone(),
            pyc: pyc.path.clone(),
            size: pyc.size,
        });
    }
    let memo = Memo {
        blob: blob.commit(None)?.0,
        failed: unit.sources.len() - files.len(),
        files,
    };
    if let Ok(json) = serde_json::to_vec(&memo) {
        kiln_store::cache::write_atomic(&memo_path(cache, unit), &json);
    }
    let path = cache.blob_path(&memo.blob);
    let spool = Spool::open(&path)
        .io_context(|| format!("opening the bytecode blob {}", path.display()))?;
    Ok((memo, spool))
}

/// What a compiler run left: its directory (kept until the pycs are
/// stored, each read from its chunk's file into its wheel's blob, never
/// all in memory), where the chunks' files are, and each compiled
/// source's pyc.
struct Run {
    _tree: Box<dyn std::any::Any>,
    out: PathBuf,
    pycs: BTreeMap<String, Pyc>,
}

impl Run {
    /// The run, keeping `more` (its tree) as long as its directory.
    fn keeping(self, more: impl std::any::Any) -> Run {
        Run {
            _tree: Box::new((self._tree, more)),
            ..self
        }
    }
}

/// Where a source's pyc went: its image path, and its bytes in the file
/// of its chunk.
struct Pyc {
    path: String,
    chunk: String,
    at: u64,
    size: u64,
}

/// The fixed environment of the compiler: no hash randomisation (sets
/// and frozensets of constants are marshalled in hash order).
fn env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("PYTHONHASHSEED".into(), "0".into()),
        // Paths that are not UTF-8 pass through as they are.
        ("PYTHONIOENCODING".into(), "utf-8:surrogateescape".into()),
        ("LC_ALL".into(), "C.UTF-8".into()),
    ]
}

/// The image's own interpreter, without network, over the image below
/// the stage (`layers`) with the sources in a file beside the compiler
/// in its `/tmp`: compiling reads nothing else, so the stage's other
/// files (its shared libraries, most of a scientific wheel set) are
/// never unpacked. The base's own sources (`compile-stdlib`) are read
/// where they are.
fn in_sandbox(
    layers: Vec<Box<dyn std::io::Read>>,
    interpreter: &str,
    units: &[&Unit],
    groups: &[LayerGroup],
    cache: &Cache,
) -> std::result::Result<Run, String> {
    let tmp = cache.bucket(CacheBucket::Tmp);
    let mut sb = Sandbox::from_layers(layers, &tmp, PURPOSE).map_err(|e| e.to_string())?;
    let dir = sb.root().join("tmp/.kiln-bytecode");
    write_inputs(&dir, units, groups, true).map_err(|e| format!("writing the sources out: {e}"))?;
    let inside = |name: &str| format!("/tmp/.kiln-bytecode/{name}");
    let output = sb
        .run(&RunSpec {
            argv: compiler_argv(interpreter, "", &inside),
            env: env(),
            user: None,
            workdir: Some("/".into()),
            network: Network::None,
        })
        .map_err(|e| e.to_string())?;
    collect(&output, units, dir.join(OUT), Box::new(sb))
}

/// The image's own interpreter, without network, over the image below
/// the stage kept written out in the cache (read-only, see
/// [`SharedTree`]), the stage's sources in a scratch directory bound
/// inside (made by [`scratch`]): a stage that gains a wheel writes that
/// wheel's sources alone. Only for the stage's own sources.
fn in_shared_tree(
    tree: &SharedTree,
    dir: tempfile::TempDir,
    interpreter: &str,
    units: &[&Unit],
) -> std::result::Result<Run, String> {
    let inside = |name: &str| format!("/{SCRATCH_MOUNT}/{name}");
    let output = tree
        .run(
            &RunSpec {
                argv: compiler_argv(interpreter, "", &inside),
                env: env(),
                user: None,
                workdir: Some("/".into()),
                network: Network::None,
            },
            dir.path(),
        )
        .map_err(|e| e.to_string())?;
    let out = dir.path().join(OUT);
    collect(&output, units, out, Box::new(dir))
}

/// A host interpreter over the sources in a scratch directory (`dfile`
/// names the image path).
fn on_host(
    python: &Path,
    units: &[&Unit],
    groups: &[LayerGroup],
    cache: &Cache,
) -> std::result::Result<Run, String> {
    let dir = scratch(units, groups, cache)?;
    let on = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let output = Command::new(python)
        .args(compiler_argv("", "", &on).split_off(1))
        .env_clear()
        .envs(env())
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    let out = dir.path().join(OUT);
    collect(&output, units, out, Box::new(dir))
}

/// The files of a compiler run in its directory: the script, the list,
/// the sources' bytes and the directory of the chunks' pycs.
const SCRIPT_FILE: &str = "compile.py";
const LIST: &str = "sources";
const PACK: &str = "pack";
const OUT: &str = "out";

/// `interpreter -s -B SCRIPT ROOT PACK LIST OUT`, the files named by `at`.
fn compiler_argv(interpreter: &str, root: &str, at: &dyn Fn(&str) -> String) -> Vec<String> {
    vec![
        interpreter.to_string(),
        "-s".into(),
        "-B".into(),
        at(SCRIPT_FILE),
        root.to_string(),
        at(PACK),
        at(LIST),
        at(OUT),
    ]
}

/// A scratch directory in the cache's `tmp` with the compiler's inputs
/// ([`write_inputs`]).
fn scratch(
    units: &[&Unit],
    groups: &[LayerGroup],
    cache: &Cache,
) -> std::result::Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(&kiln_store::temp_prefix("bytecode"))
        .tempdir_in(cache.bucket(CacheBucket::Tmp))
        .map_err(|e| format!("making a scratch directory: {e}"))?;
    write_inputs(dir.path(), units, groups, false)
        .map_err(|e| format!("writing the sources out: {e}"))?;
    Ok(dir)
}

/// Into `dir`: the compiler, the bytes of every source the groups hold
/// one after another in one file (in the list's order: one sequential
/// write), the list, and the empty directory of the pycs. A source the
/// groups do not hold is read from the tree when `base_sources` (the
/// base's own, compiled in place), else it fails to compile.
fn write_inputs(
    dir: &Path,
    units: &[&Unit],
    groups: &[LayerGroup],
    base_sources: bool,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let ours: BTreeMap<&str, &Entry> = groups
        .iter()
        .flat_map(|g| &g.entries)
        .map(|e| (e.path.as_str(), e))
        .collect();
    std::fs::create_dir_all(dir.join(OUT))?;
    std::fs::write(dir.join(SCRIPT_FILE), SCRIPT)?;
    let mut pack =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join(PACK))?);
    let mut list = String::new();
    let mut at = 0u64;
    for (i, u) in units.iter().enumerate() {
        if i > 0 {
            list.push('\n');
        }
        for s in &u.sources {
            match ours.get(s.trim_start_matches('/')).and_then(|e| content(e)) {
                Some(bytes) => {
                    pack.write_all(&bytes)?;
                    list.push_str(&format!("{s}\t{at}\t{}\n", bytes.len()));
                    at += bytes.len() as u64;
                }
                None if base_sources => list.push_str(&format!("{s}\t-2\t0\n")),
                None => list.push_str(&format!("{s}\t-1\t0\n")),
            }
        }
    }
    pack.into_inner().map_err(|e| e.into_error())?;
    std::fs::write(dir.join(LIST), list)
}

/// The pycs the compiler says it wrote to the chunks' files in `out`,
/// for the sources of `units` (in the list's order).
fn collect(
    output: &std::process::Output,
    units: &[&Unit],
    out: PathBuf,
    tree: Box<dyn std::any::Any>,
) -> std::result::Result<Run, String> {
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        return Err(format!("the compiler failed ({}): {tail}", output.status));
    }
    let sources: Vec<&String> = units.iter().flat_map(|u| &u.sources).collect();
    let pycs = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(5, '\t');
            let source = sources.get(f.next()?.parse::<usize>().ok()?)?;
            let chunk = f.next()?;
            let (at, size) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            let path = f.next()?;
            let ok = path.starts_with('/')
                && !chunk.is_empty()
                && chunk.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| {
                let pyc = Pyc {
                    path: path.to_string(),
                    chunk: chunk.to_string(),
                    at,
                    size,
                };
                (source.to_string(), pyc)
            })
        })
        .collect();
    Ok(Run {
        _tree: tree,
        out,
        pycs,
    })
}

/// The bytecode layer's members: each unit's pycs and the RECORDs that
/// list them (with the pycs' rows added), a member for each unit, so the
/// layer is cut into a part per wheel (see [`LayerGroup::in_parts`]): a
/// wheel bumped compiles and compresses its own pycs alone.
fn layer_members(
    memos: &[(Memo, Arc<Spool>)],
    groups: &[LayerGroup],
    records: &BTreeMap<String, Vec<String>>,
) -> std::io::Result<Vec<Vec<Entry>>> {
    let mut members: Vec<Vec<Entry>> = Vec::with_capacity(memos.len());
    // A source's pyc and the member it is in.
    let mut pyc_of: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    for (i, (memo, data)) in memos.iter().enumerate() {
        let mut at = 0u64;
        let mut member = Vec::with_capacity(memo.files.len());
        for f in &memo.files {
            // Known by where it is in a blob known by its digest: the
            // layer's key does not read the pycs back.
            let bytes = data
                .slice_at(at, f.size)?
                .known_as(format!("{}@{at}", memo.blob));
            at += f.size;
            member.push(Entry {
                path: f.pyc.trim_start_matches('/').to_string(),
                kind: EntryKind::Spooled(bytes),
                mode: 0o644,
                uid: 0,
                gid: 0,
            });
            pyc_of.insert(f.source.as_str(), (f.pyc.as_str(), i));
        }
        members.push(member);
    }
    let ours: BTreeMap<&str, &Entry> = groups
        .iter()
        .flat_map(|g| &g.entries)
        .map(|e| (e.path.as_str(), e))
        .collect();
    for (record, sources) in records {
        let Some(e) = ours.get(record.as_str()) else {
            continue;
        };
        // The site directory RECORD paths are relative to.
        let site = record
            .rsplit_once('/')
            .and_then(|(d, _)| d.rsplit_once('/'))
            .map_or("", |(s, _)| s);
        let mut rows: Vec<String> = Vec::new();
        let mut member = None;
        for (pyc, i) in sources.iter().filter_map(|s| pyc_of.get(s.as_str())) {
            member.get_or_insert(*i);
            let rel = pyc
                .trim_start_matches('/')
                .strip_prefix(site)
                .unwrap_or(pyc)
                .trim_start_matches('/');
            rows.push(format!("{},,\n", record_field(rel)));
        }
        let Some(member) = member else {
            continue;
        };
        rows.sort();
        let mut text = content(e).unwrap_or_default();
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend(rows.concat().into_bytes());
        members[member].push(Entry {
            path: record.clone(),
            kind: EntryKind::Data(std::sync::Arc::new(text)),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        });
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(files: &[(&str, &str)]) -> LayerGroup {
        LayerGroup::new(
            "pip install demo==1.0",
            files
                .iter()
                .map(|(p, d)| Entry::data(p, d.as_bytes().to_vec(), 0o644))
                .collect(),
        )
    }

    #[test]
    fn records_list_the_sources_inside_the_site() {
        let site = "usr/local/lib/python3.11/dist-packages";
        let g = group(&[
            (&format!("{site}/demo/__init__.py"), ""),
            (&format!("{site}/demo/a,b.py"), ""),
            (&format!("{site}/demo/data.txt"), ""),
            (
                &format!("{site}/demo-1.0.dist-info/RECORD"),
                "demo/__init__.py,sha256=x,0\n\"demo/a,b.py\",sha256=y,0\ndemo/data.txt,sha256=z,0\n../../../bin/tool.py,sha256=w,0\ndemo-1.0.dist-info/RECORD,,\n",
            ),
        ]);
        let r = records(std::slice::from_ref(&g));
        let key = format!("{site}/demo-1.0.dist-info/RECORD");
        assert_eq!(
            r[&key],
            vec![
                format!("/{site}/demo/__init__.py"),
                format!("/{site}/demo/a,b.py")
            ]
        );

        let pyc = |s: &str| format!("/{site}/demo/__pycache__/{s}.cpython-311.pyc");
        let files = vec![
            Compiled {
                source: format!("/{site}/demo/__init__.py"),
                pyc: pyc("__init__"),
                size: 3,
            },
            Compiled {
                source: format!("/{site}/demo/a,b.py"),
                pyc: pyc("a,b"),
                size: 2,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let blob = Spool::new_in(dir.path()).unwrap();
        blob.put(b"abcde").unwrap();
        let memo = Memo {
            blob: Digest::of(b"abcde"),
            files,
            failed: 0,
        };
        let members = layer_members(&[(memo, blob)], std::slice::from_ref(&g), &r).unwrap();
        assert_eq!(
            members.len(),
            1,
            "one member: the unit's pycs and its RECORD"
        );
        let layer = LayerGroup::in_parts("t", Vec::new(), members);
        let entries = &layer.entries;
        let find = |p: &str| entries.iter().find(|e| e.path == p).map(content);
        assert_eq!(
            find(pyc("__init__").trim_start_matches('/')),
            Some(Some(b"abc".to_vec()))
        );
        assert_eq!(
            find(pyc("a,b").trim_start_matches('/')),
            Some(Some(b"de".to_vec()))
        );
        let record = String::from_utf8(find(&key).unwrap().unwrap()).unwrap();
        assert!(
            record.ends_with(
                "demo-1.0.dist-info/RECORD,,\n\"demo/__pycache__/a,b.cpython-311.pyc\",,\ndemo/__pycache__/__init__.cpython-311.pyc,,\n"
            ),
            "{record}"
        );
        // The directories, then the unit's part: its files by path.
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(layer.parts, [paths.len() - 3]);
        let part = &paths[layer.parts[0]..];
        let mut sorted = part.to_vec();
        sorted.sort();
        assert_eq!(part, sorted);
        assert!(paths[..layer.parts[0]].contains(&format!("{site}/demo/__pycache__").as_str()));
    }

    /// The compiler script, run by the host's python3 over a pack: each
    /// unit's good sources get a pyc that is byte for byte what
    /// `py_compile` writes in unchecked-hash mode; a source that is not
    /// Python, and one with no bytes, get none; a path with a tab passes.
    #[test]
    fn the_compiler_reads_the_pack_and_writes_what_py_compile_does() {
        let site = "usr/lib/python3/dist-packages";
        let good = format!("{site}/demo/a.py");
        let tabbed = format!("{site}/demo/t\tb.py");
        let bad = format!("{site}/demo/bad.py");
        let source = "import os\nX = {1, 2, 'a'}\ndef f(y):\n    return os.path.join(y, 'z')\n";
        let init = format!("{site}/other/__init__.py");
        let g = group(&[
            (good.as_str(), source),
            (tabbed.as_str(), "Y = 2\n"),
            (bad.as_str(), "def (:\n"),
            (init.as_str(), ""),
        ]);
        let unit = |sources: &[&str]| Unit {
            key: Digest::of(b"unit"),
            sources: sources.iter().map(|s| format!("/{s}")).collect(),
        };
        let missing = format!("{site}/demo/gone.py");
        let units = [unit(&[&good, &bad, &tabbed, &missing]), unit(&[&init])];
        let units: Vec<&Unit> = units.iter().collect();
        let dir = tempfile::tempdir().unwrap();
        write_inputs(dir.path(), &units, std::slice::from_ref(&g), false).unwrap();
        let on = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let output = Command::new("python3")
            .args(compiler_argv("", "", &on).split_off(1))
            .env_clear()
            .envs(env())
            .output()
            .expect("python3 on the host");
        let run = collect(&output, &units, dir.path().join(OUT), Box::new(())).unwrap();
        let compiled: BTreeSet<&str> = run.pycs.keys().map(|s| s.as_str()).collect();
        let want: BTreeSet<String> = [&good, &tabbed, &init]
            .iter()
            .map(|s| format!("/{s}"))
            .collect();
        assert_eq!(compiled, want.iter().map(|s| s.as_str()).collect());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("bad.py: SyntaxError"), "{stderr}");
        assert!(stderr.contains("gone.py: FileNotFoundError"), "{stderr}");

        // py_compile over the same source, under the same image path.
        let pyc = &run.pycs[&format!("/{good}")];
        assert!(pyc
            .path
            .starts_with(&format!("/{site}/demo/__pycache__/a.")));
        let chunk = std::fs::read(run.out.join(&pyc.chunk)).unwrap();
        let ours = &chunk[pyc.at as usize..(pyc.at + pyc.size) as usize];
        let src = dir.path().join("a.py");
        std::fs::write(&src, source).unwrap();
        let theirs = dir.path().join("a.pyc");
        let status = Command::new("python3")
            .args(["-s", "-B", "-c"])
            .arg(
                "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], \
                 dfile=sys.argv[3], doraise=True, \
                 invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)",
            )
            .arg(&src)
            .arg(&theirs)
            .arg(format!("/{good}"))
            .env_clear()
            .envs(env())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(ours, std::fs::read(&theirs).unwrap().as_slice());
    }

    #[test]
    fn stdlib_sources_without_pycs() {
        let mut fs = Rootfs::default();
        fs.insert_file("/usr/lib/python3.11/os.py", b"");
        fs.insert_file("/usr/lib/python3.11/json/__init__.py", b"");
        fs.insert_file(
            "/usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc",
            b"",
        );
        fs.insert_file("/usr/lib/python3/dist-packages/apt/__init__.py", b"");
        fs.insert_file("/usr/local/lib/python3.11/dist-packages/six.py", b"");
        fs.insert_file("/usr/lib/python3.12/os.py", b"");
        assert_eq!(
            stdlib_sources(&fs, 11),
            vec![
                "/usr/lib/python3.11/os.py".to_string(),
                "/usr/lib/python3/dist-packages/apt/__init__.py".to_string(),
            ]
        );
    }
}
