//! The types every other kiln crate speaks: errors grouped by who has to
//! act, sha256 digests, platforms and architectures, image timestamps and
//! progress bars.

pub mod digest;
pub mod error;
pub mod mutate;
pub mod platform;
pub mod progress;
pub mod suggest;
pub mod threads;
pub mod time;
pub mod url;

pub use digest::Digest;
pub use error::{Classify, Error, ErrorKind, Result};
pub use platform::{Arch, Platform};
