//! Access tokens (JWT: header, claims, signature) and refresh tokens (version, session,
//! generation, tag): any text is refused or accepted, never a panic. A token this target's
//! keys really signed is spliced with the input now and then, so that the decoders are
//! driven past their first checks.
#![no_main]

use std::sync::OnceLock;

use keyhold::auth::Secrets;
use keyhold::auth::Tokens;
use keyhold::auth::sessions::{issue_refresh_token, named_by_refresh_token};
use libfuzzer_sys::fuzz_target;

struct Keys {
    tokens: Tokens,
    secrets: Secrets,
    access: String,
    refresh: String,
    _dir: tempfile::TempDir,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = keyhold::store::Store::open(&dir.path().join("db")).unwrap();
        let tokens =
            Tokens::load_or_create(&store, &keyhold::config::TokensConfig::default(), 1_000)
                .unwrap();
        let secrets = Secrets::load_or_create(&dir.path().join("keys")).unwrap();
        let access = tokens
            .issue(uuid::Uuid::nil(), uuid::Uuid::max(), 1_000)
            .unwrap()
            .0;
        let refresh = issue_refresh_token(&secrets, uuid::Uuid::max(), 7).0;
        Keys {
            tokens,
            secrets,
            access,
            refresh,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = keys();
    let _ = keys.tokens.verify(text, 1_001);
    let _ = named_by_refresh_token(&keys.secrets, text);
    // The input in place of one part of a real token, and appended to it.
    if let Some(split) = text.find('.') {
        let mut parts: Vec<&str> = keys.access.split('.').collect();
        let which = text.len() % parts.len();
        parts[which] = &text[split + 1..];
        let _ = keys.tokens.verify(&parts.join("."), 1_001);
    }
    let _ = keys.tokens.verify(&format!("{}{text}", keys.access), 1_001);
    let cut = text.len().min(keys.refresh.len());
    let spliced = format!("{}{}", &keys.refresh[..keys.refresh.len() - cut], text);
    let _ = named_by_refresh_token(&keys.secrets, &spliced);
});
