//! Micro-benchmarks. Run: `cargo bench --bench micro`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhold::auth::Auth;
use keyhold::mail::{LogTransport, Mailer, Templates};
use keyhold::store::Store;
use keyhold::{Clock, Config};

/// `{ __typename }` through the schema alone: the GraphQL floor, without TLS or HTTP.
fn graphql_floor(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.path = dir.path().to_path_buf();
    let clock = Clock::system();
    let mailer = Mailer::new(
        &config.mail.from,
        Arc::new(LogTransport::new(config.outbox_dir())),
        Templates::load(None).unwrap(),
        clock.clone(),
    );
    let store = Store::open(&config.db_path()).unwrap();
    let auth = Arc::new(Auth::new(Arc::new(config.clone()), store, clock, mailer).unwrap());
    let schema = keyhold::graphql::build_schema(&config.graphql, auth);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("graphql_typename_through_schema", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(schema.execute("{ __typename }").await) })
    });
}

criterion_group!(benches, graphql_floor);
criterion_main!(benches);
