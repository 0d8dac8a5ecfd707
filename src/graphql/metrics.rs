//! Counts and times every GraphQL request by its root field: `login`, `newToken`, … (a
//! document with several root fields is `multiple`; one that fails before any field runs is
//! `invalid`; `{ __typename }` and introspection alone are `introspection`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextRequest, NextValidation,
};
use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, Selection,
};
use async_graphql::{
    Positioned, Request, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
};
use parking_lot::Mutex;

use crate::auth::Auth;

/// How many distinct query texts stay parsed. Clients send the same few texts again and
/// again; an attacker sending new ones only empties the memory now and then.
const PARSED_QUERIES: usize = 256;
/// Longer query texts are parsed every time.
const LONGEST_KEPT_QUERY: usize = 4096;

/// Times and counts requests, and keeps the parsed documents of the query texts it has seen:
/// parsing was a tenth of the CPU of a `newToken` request. It keeps their validation too,
/// for the requests whose variables cannot change its outcome (see [`plain_variables`]):
/// validation was most of what `userProfile` costs beyond `{ __typename }`.
pub struct RequestMetrics {
    pub auth: Arc<Auth>,
    depths: super::guard::DepthLimits,
    parsed: Arc<Mutex<HashMap<String, Arc<Kept>>>>,
}

/// A query text's parsed document, and the outcome of validating it.
struct Kept {
    document: Arc<ExecutableDocument>,
    /// By operation name: each passed validation in full once. Only names that the
    /// document defines are kept, so this stays as small as the document.
    validated: Mutex<Vec<(Option<String>, ValidationResult)>>,
}

impl Kept {
    fn validated(&self, operation: Option<&str>) -> Option<ValidationResult> {
        let validated = self.validated.lock();
        validated
            .iter()
            .find(|(name, _)| name.as_deref() == operation)
            .map(|(_, result)| *result)
    }
}

impl RequestMetrics {
    pub fn new(auth: Arc<Auth>, depths: super::guard::DepthLimits) -> RequestMetrics {
        RequestMetrics {
            auth,
            depths,
            parsed: Arc::default(),
        }
    }
}

impl ExtensionFactory for RequestMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest {
            auth: self.auth.clone(),
            depths: self.depths,
            parsed: self.parsed.clone(),
            operation_name: Mutex::new(None),
            found: Mutex::new(None),
            document: Mutex::new(None),
            reusable: Mutex::new(None),
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
    depths: super::guard::DepthLimits,
    parsed: Arc<Mutex<HashMap<String, Arc<Kept>>>>,
    operation_name: Mutex<Option<String>>,
    /// The kept parse of this request's query text, looked up once in `prepare_request`.
    found: Mutex<Option<Arc<Kept>>>,
    /// This request's document, for `execute` to find its root fields in.
    document: Mutex<Option<Arc<ExecutableDocument>>>,
    /// The kept document, when this request's variables cannot change its validation.
    reusable: Mutex<Option<Arc<Kept>>>,
    root: Mutex<Root>,
}

/// The operation a request runs, as async-graphql picks it (none: it refuses the request).
fn operation_of<'a>(
    doc: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), None) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    }
}

/// Whether validating `operation` again with `variables` must give what it gave before.
///
/// async-graphql's validation reads variable values in one place only: each argument given
/// a variable is checked against the argument's type (`ArgumentsOfCorrectType`; Keyhold has
/// no complexity function that reads arguments). Validation has already placed every
/// variable where its type fits, so for a variable declared `String` or `Boolean` (or with
/// `!`) that check asks only whether the value is a string or a boolean. Any other kind of
/// variable, a value of another kind, a missing or null value, or one more value than the
/// operation declares: the request is validated in full.
fn plain_variables(operation: &OperationDefinition, variables: &Variables) -> bool {
    variables.len() == operation.variable_definitions.len()
        && operation.variable_definitions.iter().all(|definition| {
            let definition = &definition.node;
            let BaseType::Named(type_name) = &definition.var_type.node.base else {
                return false;
            };
            matches!(
                (type_name.as_str(), variables.get(&definition.name.node)),
                ("String", Some(Value::String(_))) | ("Boolean", Some(Value::Boolean(_)))
            )
        })
}

/// The root fields an operation selects, fragments included (validation, which has run by
/// then, has ruled out fragment cycles), introspection left out.
fn root_of(doc: &ExecutableDocument, operation_name: Option<&str>) -> Root {
    let mut root = Root::None;
    if let Some(operation) = operation_of(doc, operation_name) {
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
        #[expect(
            clippy::disallowed_methods,
            reason = "the duration histogram measures real time"
        )]
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
        let found = self.found.lock().take();
        let kept = match found {
            Some(kept) => kept,
            None => {
                // Only what parsed, under the schema's limits, is kept.
                let document = Arc::new(next.run(ctx, query, variables).await?);
                if query.len() > LONGEST_KEPT_QUERY {
                    *self.document.lock() = Some(document.clone());
                    return Ok(ExecutableDocument::clone(&document));
                }
                let kept = Arc::new(Kept {
                    document,
                    validated: Mutex::new(Vec::new()),
                });
                let mut parsed = self.parsed.lock();
                if parsed.len() >= PARSED_QUERIES {
                    parsed.clear();
                }
                parsed.insert(query.to_string(), kept.clone());
                kept
            }
        };
        let operation_name = self.operation_name.lock().take();
        if operation_of(&kept.document, operation_name.as_deref())
            .is_some_and(|operation| plain_variables(&operation.node, variables))
        {
            *self.operation_name.lock() = operation_name;
            *self.reusable.lock() = Some(kept.clone());
        }
        *self.document.lock() = Some(kept.document.clone());
        Ok(ExecutableDocument::clone(&kept.document))
    }

    /// A query text not seen before is checked by [`super::guard`] and parsed here, before
    /// async-graphql's own checks walk it; a kept one passed those checks when it was kept.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *self.operation_name.lock() = request.operation_name.clone();
        let found = self.parsed.lock().get(&request.query).cloned();
        if found.is_none() {
            super::guard::check_text(&request.query)?;
            let document = async_graphql::parser::parse_query(&request.query)?;
            super::guard::check_fragments(&document)?;
            super::guard::check_depth(&document, self.depths)?;
            request.set_parsed_query(document);
        }
        *self.found.lock() = found;
        next.run(ctx, request).await
    }

    /// A kept document that passed validation in full before, with variables of the same
    /// plain kinds, passes again without being walked again.
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let Some(kept) = self.reusable.lock().take() else {
            return next.run(ctx).await;
        };
        let operation_name = self.operation_name.lock().take();
        if let Some(result) = kept.validated(operation_name.as_deref()) {
            return Ok(result);
        }
        let result = next.run(ctx).await?;
        kept.validated.lock().push((operation_name, result));
        Ok(result)
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
    use serde_json::json;

    use super::*;

    fn root(query: &str, operation: Option<&str>) -> &'static str {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        match root_of(&doc, operation) {
            Root::None => "none",
            Root::One(name) => name,
            Root::Multiple => "multiple",
        }
    }

    fn plain(query: &str, variables: serde_json::Value) -> bool {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        let operation = operation_of(&doc, None).unwrap();
        plain_variables(&operation.node, &Variables::from_json(variables))
    }

    #[test]
    fn only_strings_and_booleans_given_as_such_leave_validation_as_it_was() {
        let string = "query($t: String!) { __typename }";
        assert!(plain(string, json!({ "t": "x" })));
        assert!(plain(
            "query($b: Boolean) { __typename }",
            json!({ "b": true })
        ));
        assert!(plain("{ userProfile { id } }", json!({})));
        assert!(!plain(string, json!({ "t": 1 })));
        assert!(!plain(string, json!({ "t": null })));
        assert!(!plain(string, json!({})));
        assert!(!plain(string, json!({ "t": "x", "u": "y" })));
        assert!(!plain(
            "query($t: [String]) { __typename }",
            json!({ "t": "x" })
        ));
        // A custom scalar's own check, and every other kind, read the value.
        assert!(!plain(
            "query($e: EmailAddress!) { __typename }",
            json!({ "e": "a@b.c" })
        ));
        assert!(!plain("query($n: Int) { __typename }", json!({ "n": 1 })));
        assert!(!plain("query($i: ID) { __typename }", json!({ "i": "x" })));
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
