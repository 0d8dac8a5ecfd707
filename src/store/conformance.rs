//! The contract of [`Storage`], as tests that any backend runs unchanged: each is an `async fn`
//! taking a `&dyn Storage`, and [`storage_conformance_tests!`](crate::storage_conformance_tests)
//! turns the lot into `#[tokio::test]`s for a backend in one line:
//!
//! ```text
//! keyhold::storage_conformance_tests!(async { (open_my_backend().await, guard) });
//! ```
//!
//! The races run their sides on threads of their own, each driving its future on the test's
//! runtime, so that they overlap for real, and check the invariant after every round.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;

use uuid::Uuid;

use super::*;
use crate::domain::records::*;
use crate::limits::Limit;

/// How many times each race runs.
const ROUNDS: usize = 20;

/// Runs `run(0..n)` on `n` threads at once, each driving its future on the test's runtime,
/// and returns what each gave, in order.
fn concurrently<T: Send, F: Future<Output = T>>(
    n: usize,
    run: impl Fn(usize) -> F + Sync,
) -> Vec<T> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let racers: Vec<_> = (0..n)
                .map(|i| {
                    let (run, handle) = (&run, &handle);
                    scope.spawn(move || handle.block_on(run(i)))
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().expect("a racer panicked"))
                .collect()
        })
    })
}

fn account(name: &str) -> UserRecord {
    UserRecord::new(
        &format!("{name}@example.com"),
        name,
        "$argon2id$stub".into(),
        1_000,
    )
}

async fn stored_account(s: &dyn Storage, name: &str) -> UserRecord {
    let user = account(name);
    assert_eq!(s.insert_user(&user).await.unwrap(), CreateOutcome::Created);
    user
}

fn session_of(user: &UserRecord, device: &str, created_at: i64) -> SessionRecord {
    SessionRecord {
        id: Uuid::new_v4(),
        user_id: user.id,
        device_id: device.into(),
        name: None,
        ip_address: None,
        user_agent: None,
        created_at,
        last_seen_at: created_at,
        refresh_hash: [1; 32],
        refresh_expires_at: created_at + 3_600,
        refresh_generation: 0,
    }
}

async fn signed_in(s: &dyn Storage, user: &UserRecord, device: &str, at: i64) -> SessionRecord {
    let session = session_of(user, device, at);
    let started = s
        .start_session(&session, 10, |_| Ok::<_, ()>(()))
        .await
        .unwrap();
    assert!(matches!(started, Changed::Done { .. }), "{started:?}");
    session
}

/// The session a rotation left, which must have rotated.
fn rotated_session(outcome: RotateOutcome) -> SessionRecord {
    match outcome {
        RotateOutcome::Rotated { session, .. } => session,
        other => panic!("the current token did not rotate: {other:?}"),
    }
}

/// Disables the account, ending `ends`.
async fn disable(s: &dyn Storage, id: Uuid, ends: Ends) -> Result<Changed<(), ()>, StoreError> {
    s.change_user(id, AccountChange::ending(ends), |u| {
        u.state = AccountState::Disabled;
        Ok::<_, ()>(())
    })
    .await
}

fn mail(at: i64) -> MailQueueRecord {
    MailQueueRecord {
        attempts: 0,
        next_attempt_at: at,
        created_at: at,
        sealed: "sealed".into(),
    }
}

fn challenge_of(user: &UserRecord, expires_at: i64) -> ChallengeRecord {
    ChallengeRecord {
        id: Uuid::new_v4(),
        user_id: user.id,
        purpose: ChallengePurpose::StepUp {
            reason: "GENERIC".into(),
        },
        method: SecondFactor::Email,
        code_hash: Some([7; 32]),
        attempts: 0,
        resends: 0,
        last_sent_at: 1_000,
        expires_at,
        stamp: user.stamp,
    }
}

/// An account is created once, with its code and mail; a taken address or username (in any
/// case) changes nothing.
pub async fn an_account_is_created_once(s: &dyn Storage) {
    let ada = account("ada");
    let code = EmailCodeRecord {
        user_id: ada.id,
        email: ada.email.clone(),
        expires_at: 2_000,
    };
    let created = s.create_user(&ada, &[3; 32], &code, &[mail(1_000)]).await;
    assert_eq!(created.unwrap(), CreateOutcome::Created);
    assert_eq!(s.user(ada.id).await.unwrap().unwrap().email, ada.email);
    assert_eq!(
        s.user_by_email("ada@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        ada.id
    );
    assert!(s.username_taken("ADA").await.unwrap());
    assert!(!s.username_taken("bo").await.unwrap());
    assert_eq!(s.mail_queue_len().await.unwrap(), 1);

    let same_address = UserRecord::new("ada@example.com", "other", "x".into(), 2);
    let refused = s
        .create_user(&same_address, &[4; 32], &code, &[mail(1_000)])
        .await;
    assert_eq!(
        refused.unwrap(),
        CreateOutcome::EmailTaken { existing: ada.id }
    );
    let same_name = UserRecord::new("bo@example.com", "Ada", "x".into(), 2);
    assert_eq!(
        s.insert_user(&same_name).await.unwrap(),
        CreateOutcome::UsernameTaken
    );
    assert!(s.user(same_address.id).await.unwrap().is_none());
    assert!(s.user(same_name.id).await.unwrap().is_none());
    assert_eq!(
        s.mail_queue_len().await.unwrap(),
        1,
        "no mail for a refusal"
    );
    let all: Vec<Uuid> = s.all_users().await.unwrap().iter().map(|u| u.id).collect();
    assert_eq!(all, [ada.id]);
}

/// Two sign-ups of one address at once: exactly one account.
pub async fn concurrent_sign_ups_of_one_address_make_one_account(s: &dyn Storage) {
    for round in 0..ROUNDS {
        let email = format!("twin{round}@example.com");
        let outcomes = concurrently(4, |i| {
            let user = UserRecord::new(&email, &format!("twin{round}-{i}"), "x".into(), 1);
            async move { s.insert_user(&user).await.unwrap() }
        });
        let created = outcomes
            .iter()
            .filter(|o| **o == CreateOutcome::Created)
            .count();
        assert_eq!(created, 1, "round {round}: {outcomes:?}");
    }
}

/// A verification code works once, not after it expired, and verifies its address.
pub async fn a_verification_code_is_used_once(s: &dyn Storage) {
    let ada = account("ada");
    let code = |expires_at| EmailCodeRecord {
        user_id: ada.id,
        email: ada.email.clone(),
        expires_at,
    };
    s.create_user(&ada, &[1; 32], &code(2_000), &[])
        .await
        .unwrap();
    assert_eq!(
        s.verify_email(&[1; 32], 1_500).await.unwrap(),
        VerifyOutcome::Verified { user_id: ada.id }
    );
    assert!(s.user(ada.id).await.unwrap().unwrap().email_verified);
    assert_eq!(
        s.verify_email(&[1; 32], 1_500).await.unwrap(),
        VerifyOutcome::Unknown
    );
    assert_eq!(
        s.verify_email(&[9; 32], 1_500).await.unwrap(),
        VerifyOutcome::Unknown
    );

    let bo = account("bo");
    let late = EmailCodeRecord {
        user_id: bo.id,
        email: bo.email.clone(),
        expires_at: 2_000,
    };
    s.create_user(&bo, &[2; 32], &late, &[]).await.unwrap();
    assert_eq!(
        s.verify_email(&[2; 32], 2_000).await.unwrap(),
        VerifyOutcome::Expired
    );
    assert!(!s.user(bo.id).await.unwrap().unwrap().email_verified);
}

/// A refused change writes nothing; a change moves the address index with it; a taken
/// address or a missing account is reported and changes nothing.
pub async fn a_change_to_an_account_is_whole_or_nothing(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let bo = stored_account(s, "bo").await;
    let refused = s
        .change_user(ada.id, AccountChange::ending(Ends::Nothing), |u| {
            u.profile.first_name = "Never".into();
            Err::<(), _>("no")
        })
        .await
        .unwrap();
    assert!(matches!(refused, Changed::Refused("no")));
    assert_eq!(
        s.user(ada.id).await.unwrap().unwrap().profile.first_name,
        ""
    );

    let moved = s
        .change_user(ada.id, AccountChange::ending(Ends::Nothing), |u| {
            u.email = "ada@new.example".into();
            Ok::<_, ()>(7)
        })
        .await
        .unwrap();
    assert!(matches!(moved, Changed::Done { value: 7, .. }));
    assert_eq!(
        s.user_by_email("ada@new.example")
            .await
            .unwrap()
            .unwrap()
            .id,
        ada.id
    );
    assert!(s.user_by_email("ada@example.com").await.unwrap().is_none());

    let clash = s
        .change_user(bo.id, AccountChange::ending(Ends::Nothing), |u| {
            u.email = "ada@new.example".into();
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    assert!(matches!(clash, Changed::EmailTaken));
    assert_eq!(s.user(bo.id).await.unwrap().unwrap().email, bo.email);

    let missing = s
        .change_user(Uuid::new_v4(), AccountChange::ending(Ends::Nothing), |_| {
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    assert!(matches!(missing, Changed::Missing));
}

/// Changes racing on one account are each applied once: none undoes another.
pub async fn concurrent_changes_to_an_account_lose_no_update(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    concurrently(8, |_| async {
        for _ in 0..ROUNDS {
            let changed = s
                .change_user(ada.id, AccountChange::ending(Ends::Nothing), |u| {
                    u.profile.first_name.push('x');
                    Ok::<_, ()>(())
                })
                .await
                .unwrap();
            assert!(matches!(changed, Changed::Done { .. }));
        }
    });
    let user = s.user(ada.id).await.unwrap().unwrap();
    assert_eq!(user.profile.first_name.len(), 8 * ROUNDS);
}

/// A change that ends sessions moves the account's stamp and ends every session but the one
/// kept; deleting an account ends all of them.
pub async fn ending_sessions_with_a_change_or_a_deletion(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let laptop = signed_in(s, &ada, "laptop", 1_000).await;
    let phone = signed_in(s, &ada, "phone", 1_001).await;
    let changed = s
        .change_user(
            ada.id,
            AccountChange::ending(Ends::Sessions {
                keep: Some(laptop.id),
            }),
            |_| Ok::<_, ()>(()),
        )
        .await
        .unwrap();
    let Changed::Done { user, ended, .. } = changed else {
        panic!("{changed:?}");
    };
    assert_eq!(ended, [phone.id]);
    assert_eq!(user.stamp, ada.stamp + 1);
    assert!(s.session(phone.id).await.unwrap().is_none());
    assert!(s.session(laptop.id).await.unwrap().is_some());

    let (gone, ended) = s.delete_user(ada.id).await.unwrap().unwrap();
    assert_eq!(gone.id, ada.id);
    assert_eq!(ended, [laptop.id]);
    assert!(s.user(ada.id).await.unwrap().is_none());
    assert!(s.user_by_email(&ada.email).await.unwrap().is_none());
    assert!(!s.username_taken("ada").await.unwrap());
    assert!(s.sessions_of(ada.id).await.unwrap().is_empty());
    assert!(s.delete_user(ada.id).await.unwrap().is_none());
}

/// A disable racing a sign-in: whichever wins, a disabled account is left with no session.
pub async fn a_disable_racing_a_sign_in_leaves_no_session(s: &dyn Storage) {
    for round in 0..ROUNDS {
        let user = stored_account(s, &format!("racer{round}")).await;
        let session = session_of(&user, "racer", 1_000);
        concurrently(2, |side| {
            let (user, session) = (&user, &session);
            async move {
                if side == 0 {
                    s.start_session(session, 10, |u| {
                        if u.state == AccountState::Disabled {
                            return Err("disabled");
                        }
                        Ok(())
                    })
                    .await
                    .map(|_| ())
                } else {
                    disable(s, user.id, Ends::Everything { keep: None })
                        .await
                        .map(|_| ())
                }
            }
        })
        .into_iter()
        .for_each(|r| r.unwrap());
        let after = s.user(user.id).await.unwrap().unwrap();
        assert_eq!(after.state, AccountState::Disabled);
        assert!(
            s.sessions_of(user.id).await.unwrap().is_empty(),
            "round {round}: a session outlived the disable"
        );
        assert!(s.session_owner(session.id).await.unwrap().is_none());
    }
}

/// A disable racing refreshes of the account's sessions: no rotation outlives it, and
/// none succeeds once it is done.
pub async fn a_disable_racing_refreshes_leaves_no_session(s: &dyn Storage) {
    for round in 0..ROUNDS {
        let user = stored_account(s, &format!("refresher{round}")).await;
        let sessions = [
            signed_in(s, &user, "laptop", 1_000).await,
            signed_in(s, &user, "phone", 1_000).await,
        ];
        concurrently(3, |side| {
            let (user, sessions) = (&user, &sessions);
            async move {
                if let Some(session) = sessions.get(side) {
                    // Each side refreshes its own chain until it is refused.
                    let mut hash = [1u8; 32];
                    for generation in 0..20u64 {
                        let next = [generation as u8 + 2; 32];
                        match s
                            .rotate_refresh(
                                session.id, generation, &hash, &next, 5_000, 86_400, 1_100,
                            )
                            .await
                            .unwrap()
                        {
                            RotateOutcome::Rotated { .. } => hash = next,
                            _ => break,
                        }
                    }
                } else {
                    disable(s, user.id, Ends::Everything { keep: None })
                        .await
                        .unwrap();
                }
            }
        });
        assert!(
            s.sessions_of(user.id).await.unwrap().is_empty(),
            "round {round}: a refreshed session outlived the disable"
        );
        for session in &sessions {
            assert!(s.session_user(session.id).await.unwrap().is_none());
        }
    }
}

/// A device's new session replaces its old one; past the cap the oldest end; ended sessions
/// are gone with their owner.
pub async fn sessions_replace_their_device_and_keep_to_the_cap(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let first = signed_in(s, &ada, "laptop", 1_000).await;
    assert_eq!(s.session_owner(first.id).await.unwrap(), Some(ada.id));
    let again = session_of(&ada, "laptop", 1_001);
    let replaced = s
        .start_session(&again, 10, |_| Ok::<_, ()>(()))
        .await
        .unwrap();
    assert!(matches!(replaced, Changed::Done { ref ended, .. } if ended == &[first.id]));
    assert!(s.session(first.id).await.unwrap().is_none());

    let second = signed_in(s, &ada, "phone", 1_002).await;
    let third = session_of(&ada, "tablet", 1_003);
    let capped = s
        .start_session(&third, 2, |_| Ok::<_, ()>(()))
        .await
        .unwrap();
    assert!(matches!(capped, Changed::Done { ref ended, .. } if ended == &[again.id]));
    let mut left: Vec<Uuid> = s
        .sessions_of(ada.id)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    left.sort();
    let mut want = vec![second.id, third.id];
    want.sort();
    assert_eq!(left, want);

    let refused = session_of(&ada, "refused", 1_004);
    let outcome = s.start_session(&refused, 10, |_| Err("no")).await.unwrap();
    assert!(matches!(outcome, Changed::Refused("no")));
    assert!(s.session(refused.id).await.unwrap().is_none());

    s.end_sessions(&[second.id, third.id]).await.unwrap();
    assert!(s.sessions_of(ada.id).await.unwrap().is_empty());
    assert!(s.session_owner(second.id).await.unwrap().is_none());
    let stranger = session_of(&account("nobody"), "x", 1_000);
    let missing = s
        .start_session(&stranger, 10, |_| Ok::<_, ()>(()))
        .await
        .unwrap();
    assert!(matches!(missing, Changed::Missing));
}

/// A session leads to its account, and an ended one, or one of a deleted account, to none.
pub async fn a_session_leads_to_its_account(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let bob = stored_account(s, "bob").await;
    let hers = signed_in(s, &ada, "laptop", 1_000).await;
    let his = signed_in(s, &bob, "laptop", 1_000).await;
    let owner = async |id| s.session_user(id).await.unwrap().map(|u| (u.id, u.email));
    assert_eq!(owner(hers.id).await, Some((ada.id, ada.email.clone())));
    assert_eq!(owner(his.id).await, Some((bob.id, bob.email.clone())));
    assert_eq!(owner(Uuid::new_v4()).await, None);
    s.end_sessions(&[hers.id]).await.unwrap();
    assert_eq!(owner(hers.id).await, None);
    s.delete_user(bob.id).await.unwrap();
    assert_eq!(owner(his.id).await, None);
}

/// Lookups made at once, as every authenticated request makes one, each find their own
/// session's account and owner; an unknown or ended session among them finds none.
pub async fn lookups_at_once_each_find_their_own_session(s: &dyn Storage) {
    let mut known = Vec::new();
    for name in ["ada", "bob", "cy", "dee", "eve", "fay"] {
        let user = stored_account(s, name).await;
        let session = signed_in(s, &user, "laptop", 1_000).await;
        known.push((session.id, Some(user.id)));
    }
    let ended = signed_in(s, &stored_account(s, "gus").await, "laptop", 1_000).await;
    s.end_sessions(&[ended.id]).await.unwrap();
    known.push((ended.id, None));
    known.push((Uuid::new_v4(), None));
    for _ in 0..ROUNDS {
        let found = concurrently(16, |i| {
            let known = &known;
            async move {
                let mut found = Vec::new();
                for turn in 0..known.len() {
                    let (id, _) = known[(i + turn) % known.len()];
                    let account = s.session_user(id).await.unwrap().map(|u| u.id);
                    let owner = s.session_owner(id).await.unwrap();
                    found.push((id, account, owner));
                }
                found
            }
        });
        for (id, account, owner) in found.into_iter().flatten() {
            let want = known.iter().find(|(k, _)| *k == id).unwrap().1;
            assert_eq!((account, owner), (want, want), "session {id}");
        }
    }
}

/// A passkey as webauthn-rs keeps it (a software authenticator's, ES256): a public key.
const PASSKEY: &str = r#"{"cred":{"cred_id":"cIRJf-cxSqH3JE-nliKW8sZzm7dWY69N1hRWETUniPg","cred":{"type_":"ES256","key":{"EC_EC2":{"curve":"SECP256R1","x":"xUWz-Za2ClpFJUVoB5sZJYqxn7NlKUU-Jwt0SObcYtE","y":"z636c6-rOKD9ViM-EqIGFv7RIif4n_zstakg-cSkm2U"}}},"counter":0,"transports":null,"user_verified":true,"backup_eligible":false,"backup_state":false,"registration_policy":"required","extensions":{"cred_protect":"Ignored","hmac_create_secret":"NotRequested","appid":"NotRequested","cred_props":"Ignored"},"attestation":{"data":"Self_","metadata":"None"},"attestation_format":"packed"}}"#;

/// An account's passkeys are kept with the account: written by a change, read back whole,
/// and gone with it.
pub async fn an_accounts_passkeys_are_kept_with_it(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let credential: webauthn_rs::prelude::Passkey = serde_json::from_str(PASSKEY).unwrap();
    let passkey = PasskeyRecord {
        name: "laptop".into(),
        created_at: 1_000,
        last_used_at: Some(1_100),
        credential,
    };
    let changed = s
        .change_user(ada.id, AccountChange::ending(Ends::Nothing), |u| {
            u.passkeys.push(passkey.clone());
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    assert!(matches!(changed, Changed::Done { .. }));
    let stored = s.user(ada.id).await.unwrap().unwrap();
    assert_eq!(stored.passkeys.len(), 1);
    let kept = &stored.passkeys[0];
    assert_eq!(
        (kept.name.as_str(), kept.created_at, kept.last_used_at),
        ("laptop", 1_000, Some(1_100))
    );
    assert_eq!(kept.id(), "cIRJf-cxSqH3JE-nliKW8sZzm7dWY69N1hRWETUniPg");
    assert_eq!(
        serde_json::to_value(&kept.credential).unwrap(),
        serde_json::from_str::<serde_json::Value>(PASSKEY).unwrap(),
        "the credential whole: key, counter, flags"
    );
    let by_email = s.user_by_email(&ada.email).await.unwrap().unwrap();
    assert_eq!(by_email.passkeys.len(), 1);
    s.delete_user(ada.id).await.unwrap();
    assert!(s.user(ada.id).await.unwrap().is_none());
}

/// A passkey sign-in ceremony that expires at `expires_at`, for nobody.
fn ceremony(expires_at: i64) -> CeremonyRecord {
    CeremonyRecord {
        id: Uuid::new_v4(),
        expires_at,
        user_id: Some(Uuid::new_v4()),
        state: CeremonyState::Nobody,
    }
}

/// A ceremony is taken once: of finishes racing for it, exactly one gets it, as it was stored.
pub async fn a_ceremony_is_taken_once(s: &dyn Storage) {
    assert!(s.take_ceremony(Uuid::new_v4()).await.unwrap().is_none());
    for _ in 0..ROUNDS {
        let stored = ceremony(5_000);
        s.put_ceremony(&stored).await.unwrap();
        let taken = concurrently(6, |_| s.take_ceremony(stored.id));
        let winners: Vec<CeremonyRecord> = taken.into_iter().filter_map(Result::unwrap).collect();
        assert_eq!(winners.len(), 1);
        assert_eq!(
            (winners[0].id, winners[0].expires_at, winners[0].user_id),
            (stored.id, stored.expires_at, stored.user_id)
        );
        assert!(s.take_ceremony(stored.id).await.unwrap().is_none());
    }
}

/// A refresh token rotates once; the one it replaced, presented again, ends the session.
pub async fn a_rotated_refresh_token_presented_again_ends_its_session(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let session = signed_in(s, &ada, "laptop", 1_000).await;
    let rotated = s
        .rotate_refresh(session.id, 0, &[1; 32], &[2; 32], 5_000, 86_400, 1_100)
        .await
        .unwrap();
    let now = rotated_session(rotated);
    assert_eq!((now.refresh_generation, now.refresh_hash), (1, [2; 32]));
    assert_eq!(now.refresh_expires_at, 5_000);
    assert_eq!(
        now.last_seen_at, 1_100,
        "a rotation is a use of the session"
    );
    let stored = s.session(session.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.refresh_generation, stored.refresh_hash),
        (1, [2; 32]),
        "what a rotation answers is what it stored"
    );
    assert_eq!(
        (stored.refresh_expires_at, stored.last_seen_at),
        (5_000, 1_100)
    );
    // A clock behind the session's last use leaves it as it was.
    let later = rotated_session(
        s.rotate_refresh(session.id, 1, &[2; 32], &[5; 32], 5_000, 86_400, 1_050)
            .await
            .unwrap(),
    );
    assert_eq!(later.last_seen_at, 1_100);
    let now = rotated_session(
        s.rotate_refresh(session.id, 2, &[5; 32], &[2; 32], 5_000, 86_400, 1_100)
            .await
            .unwrap(),
    );
    assert_eq!(now.refresh_generation, 3);
    // A wrong hash for the current generation is not the token.
    let wrong = s
        .rotate_refresh(session.id, 3, &[9; 32], &[3; 32], 5_000, 86_400, 1_100)
        .await
        .unwrap();
    assert!(matches!(wrong, RotateOutcome::Unknown));
    let reused = s
        .rotate_refresh(session.id, 0, &[1; 32], &[3; 32], 5_000, 86_400, 1_200)
        .await
        .unwrap();
    assert!(
        matches!(reused, RotateOutcome::Reused { session_id, user_id }
        if session_id == session.id && user_id == ada.id)
    );
    assert!(s.session(session.id).await.unwrap().is_none());
    let after = s
        .rotate_refresh(session.id, 3, &[2; 32], &[4; 32], 5_000, 86_400, 1_300)
        .await
        .unwrap();
    assert!(
        matches!(after, RotateOutcome::Unknown),
        "the thief's pair died too"
    );
}

/// A rotation answers the session's account with it; a disabled account's token, current
/// or old, rotates nothing and ends nothing.
pub async fn a_disabled_accounts_refresh_token_is_refused_as_it_is(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let session = signed_in(s, &ada, "laptop", 1_000).await;
    let rotated = s
        .rotate_refresh(session.id, 0, &[1; 32], &[2; 32], 5_000, 86_400, 1_100)
        .await
        .unwrap();
    assert!(
        matches!(rotated, RotateOutcome::Rotated { ref user, .. } if user.id == ada.id && user.email == ada.email),
        "{rotated:?}"
    );
    disable(s, ada.id, Ends::Nothing).await.unwrap();
    for (generation, hash) in [(1, [2; 32]), (0, [1; 32])] {
        let refused = s
            .rotate_refresh(
                session.id, generation, &hash, &[3; 32], 5_000, 86_400, 1_200,
            )
            .await
            .unwrap();
        assert!(matches!(refused, RotateOutcome::Disabled), "{refused:?}");
    }
    let kept = s
        .session(session.id)
        .await
        .unwrap()
        .expect("the session is kept");
    assert_eq!((kept.refresh_generation, kept.refresh_hash), (1, [2; 32]));
    // Its account gone, a session's token is unknown.
    let bob = stored_account(s, "bob").await;
    let his = signed_in(s, &bob, "laptop", 1_000).await;
    s.delete_user(bob.id).await.unwrap();
    let unknown = s
        .rotate_refresh(his.id, 0, &[1; 32], &[2; 32], 5_000, 86_400, 1_100)
        .await
        .unwrap();
    assert!(matches!(unknown, RotateOutcome::Unknown), "{unknown:?}");
}

/// A refresh token past its expiry does not rotate, and no rotation outlives the session's
/// maximum age.
pub async fn refresh_tokens_expire_and_sessions_age_out(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let session = signed_in(s, &ada, "laptop", 1_000).await;
    let capped = s
        .rotate_refresh(session.id, 0, &[1; 32], &[2; 32], 9_999, 500, 1_100)
        .await
        .unwrap();
    assert!(
        matches!(capped, RotateOutcome::Rotated { session: ref x, .. } if x.refresh_expires_at == 1_500)
    );
    let expired = s
        .rotate_refresh(session.id, 1, &[2; 32], &[3; 32], 9_999, 500, 1_500)
        .await
        .unwrap();
    assert!(matches!(expired, RotateOutcome::Expired));
    // A maximum age past any date caps nothing, and overflows nothing.
    let other = signed_in(s, &ada, "phone", 1_000).await;
    let uncapped = s
        .rotate_refresh(other.id, 0, &[1; 32], &[2; 32], 9_999, i64::MAX, 1_100)
        .await
        .unwrap();
    assert!(
        matches!(uncapped, RotateOutcome::Rotated { session: ref x, .. } if x.refresh_expires_at == 9_999)
    );
}

/// One refresh token presented many times at once rotates exactly once.
pub async fn a_refresh_token_presented_at_once_rotates_exactly_once(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    for round in 0..ROUNDS {
        let session = signed_in(s, &ada, &format!("device{round}"), 1_000).await;
        let outcomes = concurrently(6, |i| async move {
            s.rotate_refresh(
                session.id,
                0,
                &[1; 32],
                &[i as u8 + 10; 32],
                5_000,
                86_400,
                1_100,
            )
            .await
            .unwrap()
        });
        let rotated = outcomes
            .iter()
            .filter(|o| matches!(o, RotateOutcome::Rotated { .. }))
            .count();
        assert_eq!(rotated, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.iter().all(|o| matches!(
                o,
                RotateOutcome::Rotated { .. }
                    | RotateOutcome::Reused { .. }
                    | RotateOutcome::Unknown
            )),
            "round {round}: {outcomes:?}"
        );
        let reused = outcomes
            .iter()
            .any(|o| matches!(o, RotateOutcome::Reused { .. }));
        assert_eq!(
            s.session(session.id).await.unwrap().is_none(),
            reused,
            "round {round}: a reuse ends the session, and only a reuse"
        );
    }
}

/// A challenge changes only from the revision it was read at: of many swaps of one read,
/// exactly one wins.
pub async fn a_challenge_changes_by_compare_and_swap(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    for round in 0..ROUNDS {
        let challenge = challenge_of(&ada, 5_000);
        assert_eq!(
            s.put_challenge(&challenge, 100, &[]).await.unwrap(),
            0,
            "round {round}"
        );
        let read = s.challenge(challenge.id).await.unwrap().unwrap();
        assert_eq!(read.record.code_hash, challenge.code_hash);
        let won = concurrently(4, |i| {
            let read = &read;
            async move {
                let mut next = read.record.clone();
                next.attempts = i as u32 + 1;
                s.swap_challenge(read, Some(&next), &[mail(1_000)])
                    .await
                    .unwrap()
            }
        });
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
        let after = s.challenge(challenge.id).await.unwrap().unwrap();
        assert_ne!(after.revision, read.revision);
        assert!(!s.swap_challenge(&read, None, &[]).await.unwrap(), "stale");
        assert!(s.swap_challenge(&after, None, &[]).await.unwrap());
        assert!(s.challenge(challenge.id).await.unwrap().is_none());
    }
    assert_eq!(
        s.mail_queue_len().await.unwrap(),
        ROUNDS,
        "mail only with the winning swap"
    );
}

/// Past the cap of pending challenges the oldest end; a step-up code replaces the one
/// before it for the same reason.
pub async fn challenges_keep_to_their_cap_and_step_ups_to_one(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let made: Vec<ChallengeRecord> = (0..4)
        .map(|n| ChallengeRecord {
            last_sent_at: 1_000 + n,
            ..challenge_of(&ada, 5_000)
        })
        .collect();
    let mut ended = Vec::new();
    for c in &made {
        ended.push(s.put_challenge(c, 3, &[]).await.unwrap());
    }
    assert_eq!(ended, [0, 0, 0, 1]);
    assert!(s.challenge(made[0].id).await.unwrap().is_none());
    assert!(s.challenge(made[3].id).await.unwrap().is_some());

    let first = challenge_of(&ada, 5_000);
    s.put_step_up(&first, "GENERIC", &[]).await.unwrap();
    assert_eq!(
        s.step_up(ada.id, "GENERIC")
            .await
            .unwrap()
            .unwrap()
            .record
            .id,
        first.id
    );
    let second = challenge_of(&ada, 5_000);
    s.put_step_up(&second, "GENERIC", &[]).await.unwrap();
    assert_eq!(
        s.step_up(ada.id, "GENERIC")
            .await
            .unwrap()
            .unwrap()
            .record
            .id,
        second.id
    );
    assert!(s.challenge(first.id).await.unwrap().is_none());
    assert!(s.step_up(ada.id, "OTHER").await.unwrap().is_none());
    // Ending everything ends the pending challenges and codes too.
    s.change_user(
        ada.id,
        AccountChange::ending(Ends::Everything { keep: None }),
        |_| Ok::<_, ()>(()),
    )
    .await
    .unwrap();
    assert!(s.challenge(made[3].id).await.unwrap().is_none());
    assert!(s.step_up(ada.id, "GENERIC").await.unwrap().is_none());
}

/// Wrong codes counted at once are all counted; a new window starts afresh.
pub async fn second_factor_failures_are_all_counted(s: &dyn Storage) {
    let user = Uuid::new_v4();
    concurrently(8, |_| async move {
        for _ in 0..ROUNDS {
            s.record_factor_failure(user, 1_000, 3_600).await.unwrap();
        }
    });
    assert_eq!(
        s.factor_failures(user).await.unwrap().unwrap(),
        FactorFailuresRecord {
            window_start: 1_000,
            failures: 8 * ROUNDS as u32,
        }
    );
    let next = s.record_factor_failure(user, 4_600, 3_600).await.unwrap();
    assert_eq!((next.window_start, next.failures), (4_600, 1));
    assert!(s.factor_failures(Uuid::new_v4()).await.unwrap().is_none());
}

/// A user has one reset code: a new one replaces the old, and a change that needs it uses
/// it up.
pub async fn a_reset_code_is_the_only_one_and_is_used_once(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let code = |expires_at| ResetCodeRecord {
        user_id: ada.id,
        email: ada.email.clone(),
        expires_at,
    };
    s.put_reset_code(&[1; 32], &code(2_000), &[mail(1_000)])
        .await
        .unwrap();
    s.put_reset_code(&[2; 32], &code(3_000), &[]).await.unwrap();
    assert!(s.reset_code(&[1; 32]).await.unwrap().is_none(), "replaced");
    assert_eq!(
        s.reset_code(&[2; 32]).await.unwrap().unwrap().expires_at,
        3_000
    );
    assert_eq!(s.mail_queue_len().await.unwrap(), 1);
    let how = AccountChange {
        reset_code: Some(&[2; 32]),
        ..AccountChange::ending(Ends::Everything { keep: None })
    };
    let used = s
        .change_user(ada.id, how, |u| {
            u.password_hash = "new".into();
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    assert!(matches!(used, Changed::Done { .. }));
    assert!(s.reset_code(&[2; 32]).await.unwrap().is_none());
    let how = AccountChange {
        reset_code: Some(&[2; 32]),
        ..AccountChange::ending(Ends::Everything { keep: None })
    };
    let again = s
        .change_user(ada.id, how, |_| Ok::<_, ()>(()))
        .await
        .unwrap();
    assert!(matches!(again, Changed::Missing), "used once");
}

/// Queued mail is claimed by one claimer only, until its lease ends; a rescheduled message
/// waits; a removed one is gone for good.
pub async fn queued_mail_is_claimed_once(s: &dyn Storage) {
    let batch: Vec<MailQueueRecord> = (0..50).map(|_| mail(1_000)).collect();
    s.enqueue(&batch).await.unwrap();
    s.enqueue(&[mail(9_000)]).await.unwrap();
    assert_eq!(s.mail_queue_len().await.unwrap(), 51);
    let claims = concurrently(6, |_| async {
        let mut mine = Vec::new();
        loop {
            let got = s.claim_mail(1_000, 60, 4).await.unwrap();
            if got.is_empty() {
                return mine;
            }
            mine.extend(got.into_iter().map(|m| m.id));
        }
    });
    let mut all: Vec<u64> = claims.into_iter().flatten().collect();
    assert_eq!(
        all.len(),
        50,
        "every due message is claimed, the later one is not"
    );
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 50, "no message is claimed twice");
    assert!(s.claim_mail(1_059, 60, 100).await.unwrap().is_empty());

    // The lease ended: the messages are due again, oldest first.
    let again = s.claim_mail(1_060, 60, 100).await.unwrap();
    let ids: Vec<u64> = again.iter().map(|m| m.id).collect();
    assert_eq!(ids, all, "oldest first, in id order");
    let mut first = again[0].clone();
    first.record.attempts = 1;
    first.record.next_attempt_at = 2_000;
    s.reschedule_mail(&first).await.unwrap();
    s.remove_mail(again[1].id).await.unwrap();
    let later = s.claim_mail(2_000, 60, 100).await.unwrap();
    assert!(
        later
            .iter()
            .any(|m| m.id == first.id && m.record.attempts == 1)
    );
    assert!(later.iter().all(|m| m.id != again[1].id));
    // Rescheduling a message that was taken out does not bring it back.
    let mut gone = again[1].clone();
    gone.record.next_attempt_at = 0;
    s.reschedule_mail(&gone).await.unwrap();
    assert_eq!(s.mail_queue_len().await.unwrap(), 50);
    // Everything queued, in id order, as it is: what a migration copies.
    let queued = s.queued_mail().await.unwrap();
    assert_eq!(queued.len(), 50);
    assert!(queued.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        queued
            .iter()
            .any(|m| m.id == first.id && m.record.attempts == 1)
    );
}

/// Signing keys are added, replaced by kid, and removed.
pub async fn signing_keys_are_kept_by_kid(s: &dyn Storage) {
    let key = |kid: &str, retired_at| SigningKeyRecord {
        kid: kid.into(),
        pkcs8: "sealed".into(),
        created_at: 1_000,
        retired_at,
    };
    s.add_signing_key(&key("a", None)).await.unwrap();
    s.add_signing_key(&key("b", None)).await.unwrap();
    s.add_signing_key(&key("a", Some(2_000))).await.unwrap();
    let mut keys = s.signing_keys().await.unwrap();
    keys.sort_by(|x, y| x.kid.cmp(&y.kid));
    let kept: Vec<(String, Option<i64>)> =
        keys.iter().map(|k| (k.kid.clone(), k.retired_at)).collect();
    assert_eq!(kept, [("a".into(), Some(2_000)), ("b".into(), None)]);
    s.remove_signing_key("a").await.unwrap();
    assert_eq!(s.signing_keys().await.unwrap().len(), 1);
}

/// The audit log is read in time order from a time, by address or account, and pruned
/// before a time.
pub async fn the_audit_log_is_read_in_order_and_pruned(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let event = |at, email: Option<&str>, user_id| AuditRecord {
        at,
        event: "signed_in".into(),
        user_id,
        email: email.map(str::to_string),
        ip: None,
        device: None,
        outcome: "ok".into(),
    };
    s.append_audit(&event(100, Some("bo@example.com"), None))
        .await
        .unwrap();
    s.append_audit(&event(200, None, Some(ada.id)))
        .await
        .unwrap();
    s.append_audit(&event(300, Some("ada@example.com"), None))
        .await
        .unwrap();
    let all = s.audit_since(0, None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.at).collect::<Vec<_>>(),
        [100, 200, 300]
    );
    let ada_s = s
        .audit_since(0, Some("ada@example.com"), 100)
        .await
        .unwrap();
    assert_eq!(ada_s.iter().map(|e| e.at).collect::<Vec<_>>(), [200, 300]);
    assert_eq!(s.audit_since(150, None, 1).await.unwrap()[0].at, 200);
    assert_eq!(s.prune_audit(250).await.unwrap(), 2);
    assert_eq!(s.audit_since(0, None, 100).await.unwrap().len(), 1);
}

/// The sweep removes what has expired and nothing else, in batches of at most `limit`.
pub async fn the_sweep_removes_what_expired_and_nothing_else(s: &dyn Storage) {
    let ada = account("ada");
    let code = EmailCodeRecord {
        user_id: ada.id,
        email: ada.email.clone(),
        expires_at: 1_500,
    };
    s.create_user(&ada, &[1; 32], &code, &[]).await.unwrap();
    let old = signed_in(s, &ada, "old", 1_000).await; // refresh expires at 4_600
    let young = signed_in(s, &ada, "young", 3_000).await; // 6_600
    let challenge = challenge_of(&ada, 2_000);
    s.put_challenge(&challenge, 10, &[]).await.unwrap();
    s.put_reset_code(
        &[5; 32],
        &ResetCodeRecord {
            user_id: ada.id,
            email: ada.email.clone(),
            expires_at: 1_800,
        },
        &[],
    )
    .await
    .unwrap();
    let due = ceremony(2_500);
    let later = ceremony(9_000);
    s.put_ceremony(&due).await.unwrap();
    s.put_ceremony(&later).await.unwrap();

    let early = s.sweep_expired(1_000, 100).await.unwrap();
    assert_eq!(early.removed(), 0);
    let mut total = SweepReport::default();
    loop {
        let batch = s.sweep_expired(5_000, 1).await.unwrap();
        assert!(batch.entries <= 1);
        total.add(&batch);
        if batch.entries < 1 {
            break;
        }
    }
    assert_eq!(
        (
            total.email_codes,
            total.reset_codes,
            total.sessions,
            total.challenges,
            total.ceremonies
        ),
        (1, 1, 1, 1, 1),
        "{total:?}"
    );
    assert!(s.take_ceremony(due.id).await.unwrap().is_none());
    assert!(s.take_ceremony(later.id).await.unwrap().is_some());
    assert!(s.session(old.id).await.unwrap().is_none());
    assert!(s.session(young.id).await.unwrap().is_some());
    assert!(s.challenge(challenge.id).await.unwrap().is_none());
    assert!(s.reset_code(&[5; 32]).await.unwrap().is_none());
    assert_eq!(
        s.verify_email(&[1; 32], 1_000).await.unwrap(),
        VerifyOutcome::Unknown
    );
    assert!(
        s.user(ada.id).await.unwrap().is_some(),
        "accounts do not expire"
    );
}

/// A session refreshed since it was stored is not swept at its first expiry.
pub async fn a_refreshed_session_outlives_its_first_expiry(s: &dyn Storage) {
    let ada = stored_account(s, "ada").await;
    let session = signed_in(s, &ada, "laptop", 1_000).await; // expires at 4_600
    let rotated = s
        .rotate_refresh(session.id, 0, &[1; 32], &[2; 32], 9_000, 86_400, 4_000)
        .await
        .unwrap();
    assert!(matches!(rotated, RotateOutcome::Rotated { .. }));
    s.sweep_expired(5_000, 100).await.unwrap();
    assert!(s.session(session.id).await.unwrap().is_some());
    s.sweep_expired(9_000, 100).await.unwrap();
    assert!(s.session(session.id).await.unwrap().is_none());
}

/// The store takes writes, counts its sessions and mail for `/metrics`, and remembers that
/// the clear secrets were sealed.
pub async fn health_statistics_and_flags(s: &dyn Storage) {
    s.check_writable(1).await.unwrap();
    let ada = stored_account(s, "ada").await;
    signed_in(s, &ada, "laptop", 1_000).await;
    signed_in(s, &ada, "phone", 1_000).await;
    s.enqueue(&[mail(1_000)]).await.unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.device_sessions, stats.queued_mail), (2, 1));
    assert!(!s.secrets_sealed().await.unwrap());
    s.mark_secrets_sealed().await.unwrap();
    assert!(s.secrets_sealed().await.unwrap());
    assert!(!s.backend().is_empty());
}

/// The first key fingerprint claimed stays; another is answered with it, at once too.
pub async fn the_key_fingerprint_is_claimed_once(s: &dyn Storage) {
    let claims = concurrently(8, |i| async move {
        s.claim_key_fingerprint(&format!("fingerprint-{i}"))
            .await
            .unwrap()
    });
    let won: Vec<usize> = (0..8).filter(|i| claims[*i].is_none()).collect();
    assert_eq!(won.len(), 1, "exactly one claim wins: {claims:?}");
    let winner = format!("fingerprint-{}", won[0]);
    for (i, claim) in claims.iter().enumerate() {
        if i != won[0] {
            assert_eq!(claim.as_deref(), Some(winner.as_str()));
        }
    }
    assert_eq!(s.claim_key_fingerprint(&winner).await.unwrap(), None);
    assert_eq!(
        s.claim_key_fingerprint("another").await.unwrap(),
        Some(winner)
    );
}

/// A key's events are counted in their window, at once too: of many hits racing past the
/// budget, exactly the budget's worth pass. A new window starts afresh. (The storage is
/// opened with the default `[limits]`.)
pub async fn limit_windows_count_every_hit(s: &dyn Storage) {
    let budget = crate::config::LimitsConfig::default().notices_per_address_per_hour as usize;
    let passed = concurrently(budget * 3, |_| async {
        s.hit_limit(Limit::NoticesPerAddress, "ada@example.com", 1_000)
            .await
            .unwrap()
            .is_ok()
    });
    assert_eq!(passed.iter().filter(|p| **p).count(), budget);
    let other = s
        .hit_limit(Limit::NoticesPerAddress, "bo@example.com", 1_000)
        .await;
    assert!(other.unwrap().is_ok(), "keys are counted apart");
    let next = s
        .hit_limit(Limit::NoticesPerAddress, "ada@example.com", 4_600)
        .await;
    assert!(next.unwrap().is_ok(), "a new window");
    assert!(s.prune_limits(100_000).await.unwrap() > 0);
}

/// Failed sign-ins make the account wait, right password or not; a success forgets them.
pub async fn failed_sign_ins_make_the_account_wait(s: &dyn Storage) {
    let threshold = crate::config::LimitsConfig::default().login_failures_per_account;
    let email = "ada@example.com";
    for _ in 0..threshold {
        assert!(s.check_lockout(email, 1_000).await.unwrap().is_ok());
        s.record_sign_in_failure(email, 1_000).await.unwrap();
    }
    let refused = s.check_lockout(email, 1_000).await.unwrap();
    assert!(refused.is_err(), "waits after {threshold} failures");
    assert!(
        s.check_lockout("bo@example.com", 1_000)
            .await
            .unwrap()
            .is_ok()
    );
    s.record_sign_in_success(email).await.unwrap();
    assert!(s.check_lockout(email, 1_000).await.unwrap().is_ok());
}

/// Every conformance test, as `#[tokio::test]`s over the storage that `$open` (an async
/// expression giving `(Arc<dyn Storage>, guard)`, the guard kept alive for the test) makes
/// afresh for each one, with the default configuration.
#[macro_export]
macro_rules! storage_conformance_tests {
    // `$open` gives `Option<(storage, guard)>`: `None` when the backend is not here (it has
    // said why), and the tests pass as skipped.
    (optional: $open:expr) => {
        $crate::storage_conformance_tests!(@each_optional $open;
            an_account_is_created_once,
            concurrent_sign_ups_of_one_address_make_one_account,
            a_verification_code_is_used_once,
            a_change_to_an_account_is_whole_or_nothing,
            concurrent_changes_to_an_account_lose_no_update,
            ending_sessions_with_a_change_or_a_deletion,
            a_disable_racing_a_sign_in_leaves_no_session,
            a_disable_racing_refreshes_leaves_no_session,
            sessions_replace_their_device_and_keep_to_the_cap,
            a_session_leads_to_its_account,
            lookups_at_once_each_find_their_own_session,
            a_ceremony_is_taken_once,
            an_accounts_passkeys_are_kept_with_it,
            a_disabled_accounts_refresh_token_is_refused_as_it_is,
            a_rotated_refresh_token_presented_again_ends_its_session,
            refresh_tokens_expire_and_sessions_age_out,
            a_refresh_token_presented_at_once_rotates_exactly_once,
            a_challenge_changes_by_compare_and_swap,
            challenges_keep_to_their_cap_and_step_ups_to_one,
            second_factor_failures_are_all_counted,
            a_reset_code_is_the_only_one_and_is_used_once,
            queued_mail_is_claimed_once,
            signing_keys_are_kept_by_kid,
            the_audit_log_is_read_in_order_and_pruned,
            the_sweep_removes_what_expired_and_nothing_else,
            a_refreshed_session_outlives_its_first_expiry,
            limit_windows_count_every_hit,
            failed_sign_ins_make_the_account_wait,
            the_key_fingerprint_is_claimed_once,
            health_statistics_and_flags
        );
    };
    (@each_optional $open:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some((storage, _guard)) = $open.await else {
                    return;
                };
                $crate::store::conformance::$name(&*storage).await;
            }
        )*
    };
    ($open:expr) => {
        $crate::storage_conformance_tests!(optional: async { Some($open.await) });
    };
}
