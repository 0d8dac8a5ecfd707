//! Bounds on a document's shape, checked before anything recursive walks it.
//!
//! async-graphql's parser recurses once per level of a list or object value, a selection
//! set, a list type or a directive argument, on the worker's stack, and bounds only
//! selection sets; its recursive-depth check and its validation rules then follow fragment
//! spreads without memory of what they have seen. So a short document could overflow the
//! stack (`[[[[…` 2,500 levels deep) or make the checks walk 2^30 paths (fragments that each
//! spread the next one twice). Both checks here are iterative and linear in the text:
//!
//! - [`check_text`] runs before the parser: no bracket (`{`, `[`, `(`) nests deeper than
//!   [`MAX_NESTING`], strings, block strings and comments left out;
//! - [`check_fragments`] runs after it and before every other check: fragment spreads chain
//!   at most [`MAX_FRAGMENT_DEPTH`] deep, form no cycle, and an operation with its fragments
//!   written out has at most [`MAX_EXPANDED_SELECTIONS`] selections;
//! - [`check_depth`] then holds fields to `graphql.max_depth`, and introspection (which
//!   GraphQL tools send nine `ofType` deep) to [`MAX_INTROSPECTION_DEPTH`].
//!
//! Variables are JSON, whose parser (serde_json) refuses nesting deeper than 128 by itself.

use std::collections::{HashMap, HashSet};

use async_graphql::ServerError;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

use super::error::bad_query;

/// The deepest nesting of brackets a document may have. The deepest that GraphQL tools
/// send, the standard introspection query, nests 13; the depth and complexity limits then
/// apply as before.
pub const MAX_NESTING: usize = 64;
/// The longest chain of fragments spreading fragments.
pub const MAX_FRAGMENT_DEPTH: usize = 32;
/// Selections of one operation with every fragment spread written out in full.
pub const MAX_EXPANDED_SELECTIONS: u64 = 10_000;

/// Refuses a document whose brackets nest deeper than [`MAX_NESTING`], without parsing it.
pub fn check_text(query: &str) -> Result<(), ServerError> {
    let bytes = query.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // An escaped triple quote stays inside the block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(bad_query(format!(
                        "the document nests deeper than {MAX_NESTING} levels"
                    )));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// What one selection set holds: its selections (inline fragments' included) and the
/// fragments it spreads, in order.
fn selections_of(set: &SelectionSet) -> (u64, Vec<&str>) {
    let mut count = 0u64;
    let mut spreads = Vec::new();
    let mut pending = vec![set];
    while let Some(set) = pending.pop() {
        for item in &set.items {
            count += 1;
            match &item.node {
                Selection::Field(field) => pending.push(&field.node.selection_set.node),
                Selection::FragmentSpread(spread) => {
                    spreads.push(spread.node.fragment_name.node.as_str())
                }
                Selection::InlineFragment(inline) => pending.push(&inline.node.selection_set.node),
            }
        }
    }
    (count, spreads)
}

/// Refuses fragment chains deeper than [`MAX_FRAGMENT_DEPTH`], fragment cycles, and
/// operations that spread out to more than [`MAX_EXPANDED_SELECTIONS`] selections. A spread
/// of a fragment the document does not define is left to validation.
pub fn check_fragments(doc: &ExecutableDocument) -> Result<(), ServerError> {
    if doc.fragments.is_empty() {
        return Ok(());
    }
    let own: HashMap<&str, (u64, Vec<&str>)> = doc
        .fragments
        .iter()
        .map(|(name, fragment)| {
            (
                name.as_str(),
                selections_of(&fragment.node.selection_set.node),
            )
        })
        .collect();
    // Each fragment's chain depth and expanded size, in post-order with an explicit stack.
    let mut done: HashMap<&str, (usize, u64)> = HashMap::with_capacity(own.len());
    let mut on_path: HashSet<&str> = HashSet::new();
    for start in own.keys() {
        if done.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        on_path.insert(start);
        while let Some((name, next)) = stack.last_mut() {
            let spreads = &own[*name].1;
            if let Some(child) = spreads.get(*next).copied() {
                *next += 1;
                if !own.contains_key(child) || done.contains_key(child) {
                    continue;
                }
                if on_path.contains(child) {
                    return Err(bad_query(format!(
                        "fragment \"{child}\" spreads itself through a cycle"
                    )));
                }
                if stack.len() >= MAX_FRAGMENT_DEPTH {
                    return Err(too_deep());
                }
                on_path.insert(child);
                stack.push((child, 0));
                continue;
            }
            let (count, spreads) = &own[*name];
            let mut depth = 1;
            let mut size = *count;
            for child in spreads {
                if let Some((d, s)) = done.get(child) {
                    depth = depth.max(d + 1);
                    size = size.saturating_add(*s);
                }
            }
            if depth > MAX_FRAGMENT_DEPTH {
                return Err(too_deep());
            }
            if size > MAX_EXPANDED_SELECTIONS {
                return Err(too_large());
            }
            let name = *name;
            on_path.remove(name);
            done.insert(name, (depth, size));
            stack.pop();
        }
    }
    for (_, operation) in doc.operations.iter() {
        let (count, spreads) = selections_of(&operation.node.selection_set.node);
        let size = spreads
            .iter()
            .filter_map(|child| done.get(child))
            .fold(count, |size, (_, s)| size.saturating_add(*s));
        if size > MAX_EXPANDED_SELECTIONS {
            return Err(too_large());
        }
    }
    Ok(())
}

/// How deep an operation's fields may nest, its fragments written out.
#[derive(Debug, Clone, Copy)]
pub struct DepthLimits {
    /// Every field outside introspection (`graphql.max_depth`).
    pub fields: usize,
    /// Fields under `__schema` and `__type`, counted from the root like the others; `None`
    /// when introspection is off, and an operation that asks for it is refused.
    pub introspection: Option<usize>,
}

/// The depth that introspection may reach: the standard introspection query of graphql-js
/// and graphql-core (`getIntrospectionQuery`, with every option on) reaches 14, through
/// nine levels of `ofType`.
pub const MAX_INTROSPECTION_DEPTH: usize = 20;

impl DepthLimits {
    pub fn new(max_depth: usize, introspection: bool) -> DepthLimits {
        DepthLimits {
            fields: max_depth,
            introspection: introspection.then(|| max_depth.max(MAX_INTROSPECTION_DEPTH)),
        }
    }

    /// The deepest that anything may reach.
    pub fn deepest(&self) -> usize {
        self.introspection.unwrap_or(self.fields).max(self.fields)
    }
}

/// Refuses an operation whose fields nest deeper than `limits` allow, counting depth as
/// async-graphql does (each field one level, fragments written out in place). Run it after
/// [`check_fragments`], which bounds the walk.
pub fn check_depth(doc: &ExecutableDocument, limits: DepthLimits) -> Result<(), ServerError> {
    let mut pending: Vec<(&SelectionSet, usize, bool)> = doc
        .operations
        .iter()
        .map(|(_, operation)| (&operation.node.selection_set.node, 0, false))
        .collect();
    while let Some((set, depth, introspecting)) = pending.pop() {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    let introspecting =
                        introspecting || (depth == 0 && matches!(name, "__schema" | "__type"));
                    let limit = match (introspecting, limits.introspection) {
                        (false, _) => limits.fields,
                        (true, Some(limit)) => limit,
                        (true, None) => {
                            return Err(bad_query(
                                "introspection is switched off (graphql.introspection)",
                            ));
                        }
                    };
                    if depth + 1 > limit {
                        return Err(bad_query("Query is nested too deep."));
                    }
                    pending.push((&field.node.selection_set.node, depth + 1, introspecting));
                }
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                        pending.push((&fragment.node.selection_set.node, depth, introspecting));
                    }
                }
                Selection::InlineFragment(inline) => {
                    pending.push((&inline.node.selection_set.node, depth, introspecting));
                }
            }
        }
    }
    Ok(())
}

fn too_deep() -> ServerError {
    bad_query(format!(
        "fragments spread each other more than {MAX_FRAGMENT_DEPTH} deep"
    ))
}

fn too_large() -> ServerError {
    bad_query(format!(
        "with its fragments spread out, the operation has more than \
         {MAX_EXPANDED_SELECTIONS} selections"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<(), ServerError>) -> Option<async_graphql::Value> {
        result.err()?.extensions?.get("code").cloned()
    }

    #[test]
    fn brackets_inside_strings_and_comments_do_not_count() {
        let deep = "[".repeat(MAX_NESTING + 1);
        assert!(check_text(&format!("{{ a(s: \"{deep}\") }}")).is_ok());
        assert!(check_text(&format!("{{ a(s: \"\"\"{deep} \\\"\"\" {deep}\"\"\") }}")).is_ok());
        assert!(check_text(&format!("# {deep}\n{{ a }}")).is_ok());
        assert!(check_text(&format!("{{ a(s: \"\\\"{deep}\") }}")).is_ok());
        assert_eq!(
            code(check_text(&format!("{{ a(s: {deep}) }}"))),
            Some(async_graphql::Value::from("BAD_USER_INPUT"))
        );
    }

    #[test]
    fn nesting_up_to_the_bound_passes_and_one_more_is_refused() {
        let at = |n: usize| format!("{}{}", "{".repeat(n), "}".repeat(n));
        assert!(check_text(&at(MAX_NESTING)).is_ok());
        assert!(check_text(&at(MAX_NESTING + 1)).is_err());
        // Closing brackets never go below zero, so stray ones cannot buy extra depth.
        let stray = format!("{}{}", "}".repeat(100), at(MAX_NESTING + 1));
        assert!(check_text(&stray).is_err());
    }

    #[test]
    fn fragment_chains_cycles_and_bombs_are_refused() {
        let parse = |q: &str| async_graphql::parser::parse_query(q).unwrap();
        let chain = |n: usize| {
            let mut q = String::from("{ ...F0 }\n");
            for i in 0..n {
                q.push_str(&format!("fragment F{i} on Q {{ ...F{} }}\n", i + 1));
            }
            q.push_str(&format!("fragment F{n} on Q {{ a }}\n"));
            q
        };
        assert!(check_fragments(&parse(&chain(MAX_FRAGMENT_DEPTH - 1))).is_ok());
        assert!(check_fragments(&parse(&chain(MAX_FRAGMENT_DEPTH))).is_err());
        let cycle = "{ ...A } fragment A on Q { ...B } fragment B on Q { ...A }";
        assert!(check_fragments(&parse(cycle)).is_err());
        // Each fragment spreads the next twice: 2^20 selections from a few hundred bytes.
        let mut bomb = String::from("{ ...F0 }\n");
        for i in 0..20 {
            bomb.push_str(&format!(
                "fragment F{i} on Q {{ ...F{n} ...F{n} }}\n",
                n = i + 1
            ));
        }
        bomb.push_str("fragment F20 on Q { a }\n");
        assert!(check_fragments(&parse(&bomb)).is_err());
        // A fragment used many times over is fine while the total stays small.
        let shared = "{ a { ...T } b { ...T } c { ...T } } fragment T on Q { x y z }";
        assert!(check_fragments(&parse(shared)).is_ok());
    }
}
