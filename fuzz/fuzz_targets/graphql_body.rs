//! The bytes of a `POST /graphql` body through JSON parsing, the guard, GraphQL parsing,
//! validation and execution, against a real Keyhold (sled in a temporary folder), on a
//! runtime worker thread: the stack a request gets in production.
#![no_main]

use std::sync::OnceLock;

use keyhold::graphql::{KeyholdSchema, RequestMeta, build_schema};
use keyhold::testing::TestServer;
use libfuzzer_sys::fuzz_target;

struct World {
    runtime: tokio::runtime::Runtime,
    schema: KeyholdSchema,
    max_batch: usize,
    _server: TestServer,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(TestServer::start()).unwrap();
        let config = server.app().config().graphql.clone();
        let schema = build_schema(&config, server.app().auth().clone());
        World {
            runtime,
            schema,
            max_batch: config.max_batch,
            _server: server,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let body = data.to_vec();
    let answered = world.runtime.block_on(world.runtime.spawn(async move {
        let meta = RequestMeta::new(None, None, None);
        keyhold::http::execute_body(&world.schema, world.max_batch, &body, meta).await;
    }));
    if let Err(e) = answered {
        std::panic::resume_unwind(e.into_panic());
    }
});
