//! The JSON documents of `register` and `updateProfile`: any text is parsed or refused with
//! a field, never a panic.
#![no_main]

use keyhold::domain::profile::{ProfileUpdate, Registration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Registration::parse(text) {
            assert_eq!(e.code(), "BAD_USER_INPUT");
        }
        if let Err(e) = ProfileUpdate::parse(text) {
            assert_eq!(e.code(), "BAD_USER_INPUT");
        }
    }
});
