//! One change to one account, whole, as the stores take it: what it ends, what it writes with
//! it, and what it did.

use crate::domain::records::*;
use uuid::Uuid;

/// What a change to an account ends with it. Anything but `Nothing` also moves the account's
/// stamp on, so that a sign-in or challenge decided before the change cannot finish after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    Nothing,
    /// Every device session but `keep`.
    Sessions {
        keep: Option<Uuid>,
    },
    /// Every device session but `keep`, every pending challenge and step-up code, and the
    /// reset code.
    Everything {
        keep: Option<Uuid>,
    },
}

impl Ends {
    pub(crate) fn keep(self) -> Option<Uuid> {
        match self {
            Ends::Nothing => None,
            Ends::Sessions { keep } | Ends::Everything { keep } => keep,
        }
    }
}

/// A change to an account, as an object-safe store method takes it: `Err` refuses it.
pub type UserChange<'a> = dyn Fn(&mut UserRecord) -> Result<(), ()> + Send + Sync + 'a;

/// What a change to an account did.
#[derive(Debug)]
pub enum Changed<T, E> {
    /// Written, with the account as it now is and the sessions that ended.
    Done {
        user: Box<UserRecord>,
        value: T,
        ended: Vec<Uuid>,
    },
    /// The change refused, on the account as it was: nothing was written.
    Refused(E),
    /// No such account (or, with a reset code, the code is gone): nothing was written.
    Missing,
    /// The new address belongs to another account: nothing was written.
    EmailTaken,
    /// The new username belongs to another account: nothing was written.
    UsernameTaken,
}

/// One change to an account, as [`UserStore::change_user`](super::UserStore::change_user)
/// takes it.
pub struct AccountChange<'a> {
    pub ends: Ends,
    /// Written as given, in the same transaction: the caller's own device session, kept
    /// through the change with a new refresh token.
    pub rewrite_session: Option<&'a SessionRecord>,
    /// The change happens only if this reset code is still there, and uses it up.
    pub reset_code: Option<&'a [u8; 32]>,
    /// A new e-mail verification code to store with the change.
    pub email_code: Option<(&'a [u8; 32], &'a crate::domain::records::EmailCodeRecord)>,
    /// Queued if, and only if, the change is written.
    pub mail: &'a [MailQueueRecord],
}

impl AccountChange<'_> {
    /// A change that ends `ends` and touches nothing else.
    pub fn ending(ends: Ends) -> AccountChange<'static> {
        AccountChange {
            ends,
            rewrite_session: None,
            reset_code: None,
            email_code: None,
            mail: &[],
        }
    }
}
