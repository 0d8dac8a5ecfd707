//! Counts and times every GraphQL request by its root field: `login`, `newToken`, … (a
//! document with several root fields is `multiple`; one that fails before any field runs is
//! `invalid`; `{ __typename }` and introspection alone are `introspection`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextRequest,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, Selection};
use async_graphql::{Response, ServerResult, Variables};
use parking_lot::Mutex;

use crate::auth::Auth;

/// How many distinct query texts stay parsed. Clients send the same few texts again and
/// again; an attacker sending new ones only empties the memory now and then.
const PARSED_QUERIES: usize = 256;
/// Longer query texts are parsed every time.
const LONGEST_KEPT_QUERY: usize = 4096;

/// Times and counts requests, and keeps the parsed documents of the query texts it has seen:
/// parsing was a tenth of the CPU of a `newToken` request.
pub struct RequestMetrics {
    pub auth: Arc<Auth>,
    parsed: Arc<Mutex<HashMap<String, Arc<ExecutableDocument>>>>,
}

impl RequestMetrics {
    pub fn new(auth: Arc<Auth>) -> RequestMetrics {
        RequestMetrics {
            auth,
            parsed: Arc::default(),
        }
    }
}

impl ExtensionFactory for RequestMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest {
            auth: self.auth.clone(),
            parsed: self.parsed.clone(),
            document: Mutex::new(None),
            root: Mutex::new(Root::None),
        })
    }
}

#[derive(Clone, Copy)]
enum Root {
    None,
    One(&'static str),
    Multiple,
}

impl Root {
    fn and(self, name: &'static str) -> Root {
        match self {
            Root::None => Root::One(name),
            Root::One(seen) if seen == name => self,
            _ => Root::Multiple,
        }
    }
}

struct PerRequest {
    auth: Arc<Auth>,
    parsed: Arc<Mutex<HashMap<String, Arc<ExecutableDocument>>>>,
    /// This request's document, for `execute` to find its root fields in.
    document: Mutex<Option<Arc<ExecutableDocument>>>,
    root: Mutex<Root>,
}

/// The root fields an operation selects, fragments included (validation, which has run by
/// then, has ruled out fragment cycles), introspection left out.
fn root_of(doc: &ExecutableDocument, operation_name: Option<&str>) -> Root {
    let operation = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    };
    let mut root = Root::None;
    if let Some(operation) = operation {
        collect(doc, &operation.node.selection_set.node.items, &mut root, 0);
    }
    root
}

fn collect(
    doc: &ExecutableDocument,
    items: &[async_graphql::Positioned<Selection>],
    root: &mut Root,
    depth: usize,
) {
    if depth > 16 {
        *root = Root::Multiple;
        return;
    }
    for item in items {
        match &item.node {
            Selection::Field(field) => {
                let name = field.node.name.node.as_str();
                if !name.starts_with("__") {
                    *root = root.and(known(name));
                }
            }
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                    collect(
                        doc,
                        &fragment.node.selection_set.node.items,
                        root,
                        depth + 1,
                    );
                }
            }
            Selection::InlineFragment(inline) => {
                collect(doc, &inline.node.selection_set.node.items, root, depth + 1);
            }
        }
    }
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

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let kept = self.parsed.lock().get(query).cloned();
        let document = match kept {
            Some(document) => document,
            None => {
                // Only what parsed, under the schema's limits, is kept.
                let document = Arc::new(next.run(ctx, query, variables).await?);
                if query.len() <= LONGEST_KEPT_QUERY {
                    let mut parsed = self.parsed.lock();
                    if parsed.len() >= PARSED_QUERIES {
                        parsed.clear();
                    }
                    parsed.insert(query.to_string(), document.clone());
                }
                document
            }
        };
        *self.document.lock() = Some(document.clone());
        Ok(ExecutableDocument::clone(&document))
    }

    /// Runs once the document is valid: a request refused before has no root (`invalid`).
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        if let Some(document) = self.document.lock().take() {
            *self.root.lock() = root_of(&document, operation_name);
        }
        next.run(ctx, operation_name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(query: &str, operation: Option<&str>) -> &'static str {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        match root_of(&doc, operation) {
            Root::None => "none",
            Root::One(name) => name,
            Root::Multiple => "multiple",
        }
    }

    #[test]
    fn the_root_field_is_found_through_fragments_and_named_operations() {
        assert_eq!(root("{ userProfile { id } }", None), "userProfile");
        assert_eq!(root("{ __typename }", None), "none");
        assert_eq!(
            root("{ a: userProfile { id } b: userProfile { email } }", None),
            "userProfile"
        );
        assert_eq!(
            root("{ userProfile { id } sessions { deviceId } }", None),
            "multiple"
        );
        assert_eq!(
            root(
                "query { ...F } fragment F on RootQueryType { sessions { deviceId } }",
                None
            ),
            "sessions"
        );
        assert_eq!(
            root(
                "mutation { ... on RootMutationType { newToken(refreshToken: \"x\") { token } } }",
                None
            ),
            "newToken"
        );
        let two = "query A { userProfile { id } } query B { sessions { deviceId } }";
        assert_eq!(root(two, Some("B")), "sessions");
        assert_eq!(root(two, None), "none");
        assert_eq!(root("{ noSuchField }", None), "other");
    }
}
