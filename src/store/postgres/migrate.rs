//! The schema's versions (`migrations/`, one file each) and their application at start-up:
//! in one transaction that holds `keyhold_schema` locked, so that instances starting
//! together migrate once and each sees the schema whole.

use tokio_postgres::error::SqlState;

use super::{OpenError, Store};

/// Every version of the schema, in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/0001_initial.sql")),
    (2, include_str!("../../../migrations/0002_ceremonies.sql")),
];

/// The newest schema this Keyhold knows: the last of [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies the versions the database lacks.
pub(super) async fn migrate(store: &Store) -> Result<(), OpenError> {
    let mut client = store
        .pool
        .get()
        .await
        .map_err(|e| OpenError::Connect(e.to_string()))?;
    let mut tries = 0;
    loop {
        tries += 1;
        match migrate_once(&mut client).await {
            Ok(()) => return Ok(()),
            // Two instances creating `keyhold_schema` at once: one loses, and tries again.
            Err(Attempt::Raced) if tries < 5 => {}
            Err(Attempt::Raced) => {
                return Err(OpenError::Migrate("kept racing another instance".into()));
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
}

enum Attempt {
    Raced,
    Failed(OpenError),
}

impl From<tokio_postgres::Error> for Attempt {
    fn from(e: tokio_postgres::Error) -> Attempt {
        match e.code() {
            Some(c)
                if *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::DUPLICATE_TABLE
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                Attempt::Raced
            }
            Some(_) => Attempt::Failed(OpenError::Migrate(e.to_string())),
            None => Attempt::Failed(OpenError::Connect(e.to_string())),
        }
    }
}

async fn migrate_once(client: &mut deadpool_postgres::Object) -> Result<(), Attempt> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS keyhold_schema (
             version bigint PRIMARY KEY,
             applied_at bigint NOT NULL
         );
         LOCK TABLE keyhold_schema IN ACCESS EXCLUSIVE MODE;",
    )
    .await?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM keyhold_schema", &[])
        .await?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(Attempt::Failed(OpenError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        }));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO keyhold_schema (version, applied_at)
             VALUES ($1, extract(epoch FROM now())::bigint)",
            &[version],
        )
        .await?;
        tracing::info!(version, "applied a migration of the database schema");
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one_and_the_newest_is_the_schema_version() {
        for (i, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i64::try_from(i).unwrap() + 1);
        }
        assert_eq!(SCHEMA_VERSION, i64::try_from(MIGRATIONS.len()).unwrap());
        assert_eq!(SCHEMA_VERSION, 2);
    }

    #[tokio::test]
    async fn a_database_of_version_one_is_brought_to_the_newest_at_start_up() {
        use crate::store::CeremonyStore;
        let Some(url) = crate::store::postgres::test_cluster::fresh_database().await else {
            return;
        };
        let config = crate::store::postgres::test_cluster::config_for(&url);
        let limits = crate::config::LimitsConfig::default();
        let store = crate::store::postgres::open(&config, &limits)
            .await
            .unwrap();
        // As an install of the first release left it.
        store
            .client()
            .await
            .unwrap()
            .batch_execute("DROP TABLE ceremonies; DELETE FROM keyhold_schema WHERE version > 1;")
            .await
            .unwrap();
        drop(store);
        let store = crate::store::postgres::open(&config, &limits)
            .await
            .unwrap();
        let version: i64 = store
            .client()
            .await
            .unwrap()
            .query_one("SELECT max(version) FROM keyhold_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, SCHEMA_VERSION);
        let ceremony = crate::domain::records::CeremonyRecord {
            id: uuid::Uuid::new_v4(),
            expires_at: 10,
            user_id: None,
            state: crate::domain::records::CeremonyState::Nobody,
        };
        store.put_ceremony(&ceremony).await.unwrap();
        assert!(store.take_ceremony(ceremony.id).await.unwrap().is_some());
    }
}
