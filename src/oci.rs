//! Pure OCI distribution domain types: digests, repository names, tags,
//! references and manifest media types.
//!
//! Everything a request names is parsed into these types at the edge
//! (`registry::path`), so that no later layer handles an unchecked string. A
//! `RepoName` or `Tag` that exists is known to match the OCI grammar and its
//! length limits, which is what makes it safe to use as a path component in the
//! store. This module does no I/O.

pub mod digest;
pub mod manifest;
pub mod media_type;
pub mod reference;

pub use digest::{Algorithm, Digest, Digester};
pub use media_type::{AcceptClass, MediaType};
pub use reference::{Reference, RepoName, Tag};
