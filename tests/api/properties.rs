//! The parsers that face the network never panic, whatever they are given.

use keyhold::domain::Email;
use keyhold::domain::profile::{ProfileUpdate, Registration};
use proptest::prelude::*;

fn json_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[{}\\[\\]\":,a-z0-9@. \\\\]{0,200}",
        Just("{\"email\":\"a@b.co\",\"password\":".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_registration_parser_never_panics(input in json_like()) {
        let _ = Registration::parse(&input);
        let _ = ProfileUpdate::parse(&input);
    }

    #[test]
    fn a_registration_document_with_any_extra_key_is_refused_naming_it(key in "[a-zA-Z]{1,20}") {
        prop_assume!(![
            "email", "password", "username", "firstName", "lastName", "middleName", "preferredName",
            "dateOfBirth", "phoneNumber", "countryCode", "address1", "address2", "city", "state",
            "zipCode", "country", "optInMarketing",
        ].contains(&key.as_str()));
        let doc = serde_json::json!({ "email": "a@example.com", "password": "x", key.clone(): 1 });
        let err = Registration::parse(&doc.to_string()).unwrap_err();
        prop_assert_eq!(err.field(), Some(key.as_str()));
    }

    #[test]
    fn the_email_parser_never_panics_and_normalises(input in any::<String>()) {
        if let Ok(email) = Email::parse("email", &input) {
            prop_assert_eq!(email.as_str(), input.to_lowercase());
            prop_assert!(email.as_str().len() <= 254);
        }
    }

    #[test]
    fn the_token_decoder_never_panics_nor_accepts_junk(input in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,90}"]) {
        let tokens = tokens();
        prop_assert!(tokens.verify(&input, 1_000).is_err());
    }
}

fn tokens() -> &'static keyhold::auth::Tokens {
    static TOKENS: std::sync::OnceLock<(tempfile::TempDir, keyhold::auth::Tokens)> =
        std::sync::OnceLock::new();
    &TOKENS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = keyhold::store::sled::Store::open(&dir.path().join("db")).unwrap();
            let secrets = keyhold::auth::Secrets::load_or_create(&dir.path().join("keys")).unwrap();
            let tokens = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(keyhold::auth::Tokens::load_or_create(
                    &store,
                    &keyhold::config::TokensConfig::default(),
                    &secrets,
                    0,
                ))
                .unwrap();
            (dir, tokens)
        })
        .1
}
