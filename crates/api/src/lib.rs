//! Types that cross a boundary: the server's HTTP API (requests and responses the CLI, the
//! dashboard and scripts share) and the events lower crates report through [`EventSink`].
//!
//! Nothing here does I/O; it is serde types only, so every side of the API can depend on it
//! without pulling in a runtime.

pub mod apply;
pub mod deployment;
pub mod event;
pub mod exec;
pub mod revision;
pub mod secret;
pub mod silence;
pub mod status;

pub use apply::*;
pub use deployment::*;
pub use event::*;
pub use exec::*;
pub use revision::*;
pub use secret::*;
pub use silence::*;
pub use status::*;
