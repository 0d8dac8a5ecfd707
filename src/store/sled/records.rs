//! How the sled backend writes a record: a one-byte record version, then JSON. JSON keeps
//! records readable in a pinch and lets fields be added with serde defaults.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

pub use crate::domain::records::*;

/// The version byte in front of every record written by this binary.
pub const RECORD_VERSION: u8 = 1;

/// The buffer `encode` starts with.
const ENCODE_CAPACITY: usize = 512;

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Room for a session record (a few hundred bytes), so that it is written without regrowing.
    let mut bytes = Vec::with_capacity(ENCODE_CAPACITY);
    bytes.push(RECORD_VERSION);
    // Serialising these plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_writer(&mut bytes, record).unwrap_or_else(|_| unreachable!());
    bytes
}

pub fn decode<T: DeserializeOwned>(tree: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |what: String| super::corrupt(tree, what);
    match bytes.split_first() {
        Some((&RECORD_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
        }
        Some((version, _)) => Err(corrupt(format!("unknown record version {version}"))),
        None => Err(corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_record_round_trips_behind_its_version_byte() {
        let record = RefreshRecord {
            session_id: Uuid::nil(),
            expires_at: 42,
        };
        let bytes = encode(&record);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<RefreshRecord>("t", &bytes).unwrap(), record);
        assert!(decode::<RefreshRecord>("t", &[9, b'{', b'}']).is_err());
        assert!(decode::<RefreshRecord>("t", &[]).is_err());
    }
}
