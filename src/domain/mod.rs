//! Plain domain types with `parse()`: once a value has one of these types it is valid.

mod email;
pub mod profile;
pub mod records;

pub use email::Email;
