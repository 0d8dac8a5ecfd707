//! The served schema against the contract in `shared/api/schema.graphql`: every type, field,
//! argument, input field and enum value there is served, with the same type.

use std::collections::HashMap;

use async_graphql::parser::types::{TypeDefinition, TypeKind, TypeSystemDefinition};

fn types_of(sdl: &str) -> HashMap<String, TypeDefinition> {
    let document = async_graphql::parser::parse_schema(sdl).expect("SDL that parses");
    document
        .definitions
        .into_iter()
        .filter_map(|d| match d {
            TypeSystemDefinition::Type(t) => Some((t.node.name.node.to_string(), t.node)),
            _ => None,
        })
        .collect()
}

/// The contract: `../shared/api/schema.graphql` where the project's shared folder is beside
/// the checkout (as in CI), else the copy in `tests/contract/`, which must then match it.
fn contract() -> String {
    let vendored = include_str!("../contract/schema.graphql");
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/api/schema.graphql");
    match std::fs::read_to_string(shared) {
        Ok(text) => {
            assert_eq!(
                text, vendored,
                "tests/contract/schema.graphql is out of date: copy shared/api/schema.graphql over it"
            );
            text
        }
        Err(_) => vendored.to_string(),
    }
}

#[test]
fn every_part_of_the_contract_schema_is_served_with_the_same_type() {
    let missing = gaps(&keyhold::graphql::sdl());
    assert!(
        missing.is_empty(),
        "not served as the contract says: {missing:#?}"
    );
}

#[test]
fn keyhold_schema_prints_the_served_sdl_and_it_meets_the_contract() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyhold"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed.trim_end(), keyhold::graphql::sdl().trim_end());
    let missing = gaps(&printed);
    assert!(
        missing.is_empty(),
        "not served as the contract says: {missing:#?}"
    );
}

/// What of the contract `served` lacks or types differently.
fn gaps(served: &str) -> Vec<String> {
    let contract = contract();
    let ours = types_of(served);
    let mut missing = Vec::new();
    for (name, wanted) in types_of(&contract) {
        let Some(served) = ours.get(&name) else {
            missing.push(format!("type {name}"));
            continue;
        };
        match (&wanted.kind, &served.kind) {
            (TypeKind::Scalar, TypeKind::Scalar) => {}
            (TypeKind::Object(w), TypeKind::Object(s)) => {
                for field in &w.fields {
                    let f = &field.node;
                    let Some(g) = s.fields.iter().find(|g| g.node.name.node == f.name.node) else {
                        missing.push(format!("{name}.{}", f.name.node));
                        continue;
                    };
                    if f.ty.node.to_string() != g.node.ty.node.to_string() {
                        missing.push(format!(
                            "{name}.{}: {} served as {}",
                            f.name.node, f.ty.node, g.node.ty.node
                        ));
                    }
                    for arg in &f.arguments {
                        let a = &arg.node;
                        match g
                            .node
                            .arguments
                            .iter()
                            .find(|b| b.node.name.node == a.name.node)
                        {
                            None => {
                                missing.push(format!("{name}.{}({})", f.name.node, a.name.node))
                            }
                            Some(b) if b.node.ty.node.to_string() != a.ty.node.to_string() => {
                                missing.push(format!(
                                    "{name}.{}({}): {} served as {}",
                                    f.name.node, a.name.node, a.ty.node, b.node.ty.node
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
            (TypeKind::InputObject(w), TypeKind::InputObject(s)) => {
                for field in &w.fields {
                    let f = &field.node;
                    match s.fields.iter().find(|g| g.node.name.node == f.name.node) {
                        None => missing.push(format!("{name}.{}", f.name.node)),
                        Some(g) if g.node.ty.node.to_string() != f.ty.node.to_string() => missing
                            .push(format!(
                                "{name}.{}: {} served as {}",
                                f.name.node, f.ty.node, g.node.ty.node
                            )),
                        Some(_) => {}
                    }
                }
            }
            (TypeKind::Enum(w), TypeKind::Enum(s)) => {
                for value in &w.values {
                    if !s
                        .values
                        .iter()
                        .any(|v| v.node.value.node == value.node.value.node)
                    {
                        missing.push(format!("{name}.{}", value.node.value.node));
                    }
                }
            }
            _ => missing.push(format!("type {name} is of another kind")),
        }
    }
    missing.sort();
    missing
}
