//! What can be wrong with a layer's inputs: a `[[files]]` source, a host
//! file that changes while it is read, a base layer that does not unpack.
//! Every cause is the user's to fix ([`ErrorKind::Input`], exit code 2);
//! a failing disk stays a plain [`kiln_core::Error::Io`].

use std::path::{Path, PathBuf};

use kiln_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A `[[files]]` source (or a directory below it) is missing or unreadable.
    #[error("{}", unreadable(src, path, *dir, source))]
    SourceUnreadable {
        /// The `src` as the spec writes it.
        src: String,
        /// The host path that could not be read.
        path: PathBuf,
        /// A directory below the source could not be listed.
        dir: bool,
        #[source]
        source: std::io::Error,
    },
    /// A `[[files]]` source that resolves outside the build context.
    #[error(
        "[[files]] src `{src}` resolves to {}, outside the build context {}; \
         sources must be inside the spec's directory (kiln build --allow-outside-context lifts this)",
        resolved.display(),
        context.display()
    )]
    OutsideContext {
        src: String,
        resolved: PathBuf,
        context: PathBuf,
    },
    /// A `[[files]]` mode with setuid/setgid bits that the entry did not allow.
    #[error(
        "[[files]] src `{src}`: mode {mode:04o} sets setuid/setgid; add `allow-setid = true` to the entry if that is meant"
    )]
    SetId { src: String, mode: u32 },
    /// A `[[files]]` file source copied onto `/`.
    #[error("[[files]] src `{src}` is a file, so dst must name a file path, not /")]
    FileToRoot { src: String },
    /// A device node, fifo or socket in a `[[files]]` source.
    #[error(
        "[[files]] src `{src}`: {} is {what}; only files, directories and symlinks can be copied",
        path.display()
    )]
    SpecialFile {
        src: String,
        path: PathBuf,
        /// `a device node`, `a fifo`, `a socket` ...
        what: &'static str,
    },
    /// A `[[files]] from` source that is not in the image (or is a device,
    /// fifo or socket there).
    #[error("[[files]] src `{src}` from {from}: {problem}")]
    NotInImage {
        src: String,
        from: String,
        problem: String,
    },
    /// A host file name, or a symlink's target, that is not UTF-8.
    #[error("{}", non_utf8(path, *target))]
    NonUtf8 {
        path: PathBuf,
        /// The symlink's target (not the name) is what is not UTF-8.
        target: bool,
    },
    /// A host file vanished, or changed size, while a layer was made from it.
    #[error(
        "reading layer input{}: {source}",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
    )]
    LayerInput {
        path: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    /// A layer blob that does not decompress.
    #[error("starting zstd for a {media_type} layer: {source}")]
    Decompress {
        media_type: String,
        #[source]
        source: std::io::Error,
    },
    /// A layer whose media type names no compression kiln reads.
    #[error("unsupported layer media type {media_type}")]
    UnsupportedMediaType { media_type: String },
    /// A `[[files]] extract` archive that is damaged or hostile.
    #[error("[[files]] src `{src}`: cannot extract: {reason}")]
    BadArchive { src: String, reason: String },
    /// A base layer's tar stream is damaged.
    #[error("corrupt layer: {source}")]
    CorruptLayer {
        #[source]
        source: std::io::Error,
    },
}

fn unreadable(src: &str, path: &Path, dir: bool, e: &std::io::Error) -> String {
    if dir {
        format!("cannot read directory {}: {e}", path.display())
    } else {
        format!("[[files]] src `{src}`: cannot read {}: {e}", path.display())
    }
}

fn non_utf8(path: &Path, target: bool) -> String {
    if target {
        format!("symlink {} has a non-UTF-8 target", path.display())
    } else {
        format!("{}: file names must be UTF-8", path.display())
    }
}

impl Classify for FsError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Input
    }
}

impl From<FsError> for kiln_core::Error {
    fn from(e: FsError) -> Self {
        kiln_core::Error::typed(e)
    }
}
