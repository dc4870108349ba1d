//! What the user asked for, as plain data: kiln.toml (strictly parsed, with
//! located errors), its package sections, image references and output
//! targets, and kiln.lock (the pins every resolver returns and reads back).
//! Nothing here touches the network or a cache.

mod error;
pub mod lock;
pub mod reference;
pub mod sections;
pub mod source;
pub mod spec;

pub use error::{SpecError, Transport, Unreadable};
pub use spec::{SourceScope, Spec};
