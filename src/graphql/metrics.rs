//! Counts and times every GraphQL request by its root field: `login`, `newToken`, … (a
//! document with several root fields is `multiple`; one that fails before any field runs is
//! `invalid`; `{ __typename }` and introspection alone are `introspection`).

use std::sync::Arc;
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextResolve, ResolveInfo,
};
use async_graphql::{Response, ServerResult, Value};
use parking_lot::Mutex;

use crate::auth::Auth;

pub struct RequestMetrics {
    pub auth: Arc<Auth>,
}

impl ExtensionFactory for RequestMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest {
            auth: self.auth.clone(),
            root: Mutex::new(Root::None),
        })
    }
}

enum Root {
    None,
    One(&'static str),
    Multiple,
}

struct PerRequest {
    auth: Arc<Auth>,
    root: Mutex<Root>,
}

/// The schema's root field names, as `'static` label values (a client never adds one).
fn known(name: &str) -> &'static str {
    static NAMES: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let sdl = super::sdl();
        let mut names = std::collections::HashSet::new();
        if let Ok(doc) = async_graphql::parser::parse_schema(&sdl) {
            for def in doc.definitions {
                if let async_graphql::parser::types::TypeSystemDefinition::Type(t) = def
                    && matches!(
                        t.node.name.node.as_str(),
                        "RootQueryType" | "RootMutationType"
                    )
                    && let async_graphql::parser::types::TypeKind::Object(o) = &t.node.kind
                {
                    for f in &o.fields {
                        names.insert(&*Box::leak(f.node.name.node.to_string().into_boxed_str()));
                    }
                }
            }
        }
        names
    });
    names.get(name).copied().unwrap_or("other")
}

#[async_trait::async_trait]
impl Extension for PerRequest {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let operation = match *self.root.lock() {
            Root::One(name) => name,
            Root::Multiple => "multiple",
            Root::None if response.errors.is_empty() => "introspection",
            Root::None => "invalid",
        };
        let outcome = if response.errors.is_empty() {
            "ok"
        } else {
            "error"
        };
        let metrics = &self.auth.metrics;
        metrics.count(
            "keyhold_graphql_requests_total",
            &[("operation", operation), ("outcome", outcome)],
        );
        metrics.observe(
            "keyhold_graphql_request_duration_seconds",
            &[("operation", operation)],
            started.elapsed().as_secs_f64(),
        );
        response
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.path_node.parent.is_none() && !info.is_for_introspection {
            let name = known(info.name);
            let mut root = self.root.lock();
            *root = match *root {
                Root::None => Root::One(name),
                Root::One(seen) if seen == name => Root::One(seen),
                _ => Root::Multiple,
            };
        }
        next.run(ctx, info).await
    }
}
