//! Every sled tree Keyhold keeps, and the layout of its keys and values.
//!
//! Rules that hold for every tree:
//! - integers inside keys are big-endian, so that a range scan runs in numeric (time) order;
//! - every value that is a record starts with a one-byte record version, so a later binary can
//!   read an older record and migrate it;
//! - a tree is named for what maps to what (`users_by_email`), never for a type.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `format_version` | `u32` BE: the storage format of the whole database ([`FORMAT_VERSION`]) |
//! | `meta` | `ready_probe` | `i64` BE: Unix nanoseconds of the last `/readyz` write probe |
//!
//! Later areas add their trees here, next to the constants that name them.

/// The tree of database-wide facts.
pub const META: &str = "meta";

/// `meta` key: the storage format version, a `u32` big-endian.
pub const META_FORMAT_VERSION: &[u8] = b"format_version";

/// `meta` key: written by the readiness probe to prove the store takes writes.
pub const META_READY_PROBE: &[u8] = b"ready_probe";

/// The storage format this binary reads and writes. Raise it only together with a migration
/// from the previous one, run when the store opens.
pub const FORMAT_VERSION: u32 = 1;
