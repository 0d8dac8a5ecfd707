use serde_json::{Value, json};

use crate::helpers::{LOGIN, PASSWORD, TestApp, error_code};

#[tokio::test]
async fn typename_answers_root_query_type_on_both_paths() {
    let app = TestApp::spawn().await;
    for path in ["/graphql", "/api/graphql"] {
        let (status, body) = app
            .post_json(path, &json!({ "query": "{ __typename }" }))
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body,
            json!({ "data": { "__typename": "RootQueryType" } }),
            "{path}"
        );
    }
    let body = app.graphql("mutation { __typename }", Value::Null).await;
    assert_eq!(body["data"]["__typename"], "RootMutationType");
    app.stop().await;
}

#[tokio::test]
async fn graphql_answers_are_never_cached() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_mutation_over_get_is_refused_and_a_query_over_get_runs() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", "mutation { logout { status } }")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(body.get("data").is_none_or(Value::is_null), "{body}");

    let response = app
        .client
        .get(app.url("/api/graphql"))
        .query(&[("query", "{ __typename }")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["__typename"], "RootQueryType");
    app.stop().await;
}

#[tokio::test]
async fn an_oversize_body_is_refused() {
    let app = TestApp::spawn_with(|c| c.graphql.max_body_bytes = 2048).await;
    let padding = " ".repeat(4096);
    let (status, body) = app
        .post_json(
            "/graphql",
            &json!({ "query": format!("{{ __typename {padding} }}") }),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    // Just under the limit still works.
    let (status, body) = app
        .post_json(
            "/graphql",
            &json!({ "query": format!("{{ __typename {} }}", " ".repeat(1900)) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_a_graphql_request_is_bad_user_input() {
    let app = TestApp::spawn().await;
    for raw in [
        "not json",
        "{\"query\": 5}",
        "[]",
        "42",
        "\"{}\"",
        "{\"query\": \"{ __typename }\", \"variables\": [1]}",
    ] {
        let response = app.post_raw_json(raw).await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{raw}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{raw}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_runs_each_operation_up_to_the_limit() {
    let app = TestApp::spawn().await;
    let op = json!({ "query": "{ __typename }" });
    let (status, body) = app
        .post_json("/graphql", &json!(vec![op.clone(); 10]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 10);
    assert_eq!(body[9]["data"]["__typename"], "RootQueryType");

    let (status, body) = app.post_json("/graphql", &json!(vec![op; 11])).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    app.stop().await;
}

/// `{ a { a { … leaf … } } }`: `depth` fields, each inside the one before.
fn nested(depth: usize, leaf: &str) -> String {
    let mut query = leaf.to_string();
    for _ in 1..depth {
        query = format!("a {{ {query} }}");
    }
    format!("{{ {query} }}")
}

#[tokio::test]
async fn a_query_deeper_than_the_limit_is_refused() {
    let app = TestApp::spawn().await;
    // 13 levels against a limit of 12: refused for its depth, before its fields are looked up.
    let body = app.graphql(&nested(13, "a"), Value::Null).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["errors"][0]["message"], "Query is nested too deep.");
    assert!(body["data"].is_null(), "{body}");
    // 12 levels pass the depth check (and fail on the unknown field).
    let body = app.graphql(&nested(12, "a"), Value::Null).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_ne!(body["errors"][0]["message"], "Query is nested too deep.");
    // `__typename` deep inside ordinary fields is an ordinary field, and fragments count
    // where they are spread.
    let spread = "query { ...F } fragment F on RootQueryType { a { a { a { a { a { a { a { a { a { a { a { a { __typename } } } } } } } } } } } } }";
    let body = app.graphql(spread, Value::Null).await;
    assert_eq!(body["errors"][0]["message"], "Query is nested too deep.");
    // Only the root's `__schema` and `__type` are introspection, by name, not by alias.
    let hidden = nested(13, "__schema { description }");
    let body = app.graphql(&hidden, Value::Null).await;
    assert_eq!(body["errors"][0]["message"], "Query is nested too deep.");
    let deep = nested(13, "a");
    let fields = deep.strip_prefix("{ ").unwrap().strip_suffix(" }").unwrap();
    let aliased = format!("{{ __schema: {fields} }}");
    let body = app.graphql(&aliased, Value::Null).await;
    assert_eq!(body["errors"][0]["message"], "Query is nested too deep.");
    app.stop().await;
}

/// The standard introspection queries of graphql-js and graphql-core, as GraphQL tools send
/// them (`tests/fixtures/introspection`).
const INTROSPECTION: [(&str, &str); 2] = [
    (
        "standard",
        include_str!("../fixtures/introspection/standard.graphql"),
    ),
    (
        "all options",
        include_str!("../fixtures/introspection/all-options.graphql"),
    ),
];

/// The named type `name` of an introspection answer.
fn introspected<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["data"]["__schema"]["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no type {name}"))
}

#[tokio::test]
async fn the_standard_introspection_queries_are_answered_in_full() {
    let app = TestApp::spawn().await;
    let sdl = keyhold::graphql::sdl();
    for (what, query) in INTROSPECTION {
        let body = app
            .post_json(
                "/graphql",
                &json!({ "query": query, "operationName": "IntrospectionQuery" }),
            )
            .await
            .1;
        assert!(body.get("errors").is_none(), "{what}: {body}");
        let schema = &body["data"]["__schema"];
        assert_eq!(schema["queryType"]["name"], "RootQueryType", "{what}");
        assert_eq!(schema["mutationType"]["name"], "RootMutationType", "{what}");
        // Every type of the served schema is there.
        for line in sdl.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [
                "type" | "input" | "enum" | "scalar" | "interface" | "union",
                name,
                ..,
            ] = words[..]
            {
                introspected(&body, name);
            }
        }
        // Fields with their arguments, and type references unwrapped to the named type.
        let mutations = introspected(&body, "RootMutationType")["fields"]
            .as_array()
            .unwrap();
        let update = mutations
            .iter()
            .find(|f| f["name"] == "updateProfile")
            .expect("updateProfile");
        assert!(
            update["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == "password"),
            "{what}: {update}"
        );
        let login = mutations.iter().find(|f| f["name"] == "login").unwrap();
        let credentials = &login["args"][0]["type"];
        assert_eq!(credentials["kind"], "NON_NULL", "{what}: {login}");
        assert_eq!(credentials["ofType"]["kind"], "INPUT_OBJECT", "{what}");
        assert!(!schema["directives"].as_array().unwrap().is_empty());
        if what == "all options" {
            assert!(schema.get("description").is_some(), "{what}");
            let directive = &schema["directives"][0];
            assert!(directive["isRepeatable"].is_boolean(), "{directive}");
            assert!(
                introspected(&body, "String")
                    .get("specifiedByURL")
                    .is_some()
            );
            assert!(login["args"][0]["isDeprecated"].is_boolean(), "{login}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn introspection_nested_past_what_tools_send_is_refused() {
    let app = TestApp::spawn().await;
    let mut inner = "name".to_string();
    for _ in 0..40 {
        inner = format!("ofType {{ {inner} }}");
    }
    let query = format!("{{ __schema {{ types {{ fields {{ type {{ {inner} }} }} }} }} }}");
    let body = app.graphql(&query, Value::Null).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["errors"][0]["message"], "Query is nested too deep.");
    assert!(body["data"].is_null(), "{body}");
    // Fragments do not hide it.
    let query = format!(
        "query {{ __schema {{ types {{ ...T }} }} }} fragment T on __Type {{ fields {{ type {{ {inner} }} }} }}"
    );
    let body = app.graphql(&query, Value::Null).await;
    assert_eq!(body["errors"][0]["message"], "Query is nested too deep.");
    app.stop().await;
}

#[tokio::test]
async fn a_query_more_complex_than_the_limit_is_refused() {
    let app = TestApp::spawn_with(|c| c.graphql.max_complexity = 5).await;
    let body = app
        .graphql(
            "{ a: userProfile { id } b: userProfile { id } c: userProfile { id } }",
            Value::Null,
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let query = "{ __schema { queryType { name } mutationType { name } } }";
    let on = TestApp::spawn().await;
    let body = on.graphql(query, Value::Null).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"],
        "RootQueryType"
    );
    assert_eq!(
        body["data"]["__schema"]["mutationType"]["name"],
        "RootMutationType"
    );
    on.stop().await;

    let off = TestApp::spawn_with(|c| c.graphql.introspection = false).await;
    for (what, standard) in INTROSPECTION {
        let body = off.graphql(standard, Value::Null).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{what}: {body}");
        assert!(body["data"].is_null(), "{what}: {body}");
        assert!(!body.to_string().contains("RootMutationType"), "{body}");
    }
    let body = off.graphql(query, Value::Null).await;
    assert!(body["data"]["__schema"].is_null(), "{body}");
    assert!(!body.to_string().contains("RootMutationType"), "{body}");
    let body = off
        .graphql(
            "{ __type(name: \"UserProfile\") { fields { name } } }",
            Value::Null,
        )
        .await;
    assert!(body["data"]["__type"].is_null(), "{body}");
    off.stop().await;
}

#[tokio::test]
async fn graphiql_is_served_only_when_the_playground_is_on() {
    let on = TestApp::spawn().await;
    let response = on.client.get(on.url("/graphql")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(csp, keyhold::graphiql::CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let page = response.text().await.unwrap();
    assert!(
        page.contains("/assets/graphiql-4.1.2/graphiql.min.js"),
        "{page}"
    );
    assert!(!page.contains("unpkg") && !page.contains("://"), "{page}");
    for path in keyhold::graphiql::asset_paths() {
        let response = on.client.get(on.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let cache = response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .to_string();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            kind.starts_with("text/javascript") || kind.starts_with("text/css"),
            "{path}: {kind}"
        );
        if path.contains("/keyhold/") {
            assert_eq!(
                cache, "no-cache",
                "Keyhold's own files change with it: {path}"
            );
        } else {
            assert!(
                cache.contains("immutable") && cache.contains("max-age=31536000"),
                "{path}: {cache}"
            );
        }
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");
    }
    let response = on
        .client
        .get(on.url("/assets/graphiql-4.1.2/../../config.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404, "only the listed files");
    on.stop().await;

    let off = TestApp::spawn_with(|c| c.graphql.playground = false).await;
    let response = off.client.get(off.url("/graphql")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    for path in keyhold::graphiql::asset_paths() {
        let response = off.client.get(off.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
    }
    off.stop().await;
}

#[tokio::test]
async fn a_syntax_error_is_bad_user_input_naming_the_query() {
    let app = TestApp::spawn().await;
    let body = app.graphql("{ __typename ", Value::Null).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "query");
    let body = app.graphql("{ noSuchField }", Value::Null).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn an_authenticated_operation_without_a_token_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let body = app
        .graphql("{ userProfile { id email } }", Value::Null)
        .await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
    let body = app
        .graphql("mutation { logout { status } }", Value::Null)
        .await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");

    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth("forged.token.value")
        .json(&json!({ "query": "{ sessions { deviceId } }" }))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "INVALID_TOKEN", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    app.stop().await;
}

#[tokio::test]
async fn a_query_text_seen_before_is_answered_by_its_own_variables_and_checked_again() {
    let app = TestApp::spawn().await;
    // The parsed document of a text is kept: what varies must still come from each request.
    app.verified_user("kit@example.com", PASSWORD).await;
    let query = LOGIN;
    for (password, expected) in [
        (PASSWORD, json!(200)),
        ("not the password", Value::Null),
        (PASSWORD, json!(200)),
    ] {
        let variables = json!({ "email": "kit@example.com", "password": password });
        let body = app.graphql(query, variables).await;
        assert_eq!(body["data"]["login"]["status"], expected, "{body}");
    }
    // Validation runs on a kept document too, and what did not parse is never kept.
    for _ in 0..2 {
        let body = app.graphql(query, json!({})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        let body = app.graphql("{ noSuchField }", Value::Null).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        let body = app.graphql("{ __typename ", Value::Null).await;
        assert_eq!(body["errors"][0]["extensions"]["field"], "query", "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_validated_text_answers_variables_of_another_kind_as_it_did_before_it_was_kept() {
    let app = TestApp::spawn().await;
    app.verified_user("lux@example.com", PASSWORD).await;
    let login = app.signed_in("lux@example.com", PASSWORD, None).await;
    let refresh = login["refreshToken"].as_str().unwrap().to_string();
    let query = "mutation($refresh: String!, $all: Boolean) { newToken(refreshToken: $refresh) { refreshToken } logout(allDevices: $all) @skip(if: true) { status } }";
    let wrong = [
        json!({ "refresh": 5, "all": false }),
        json!({ "refresh": null, "all": false }),
        json!({ "refresh": ["x"], "all": false }),
        json!({ "refresh": "x", "all": "yes" }),
        json!({ "all": false }),
        json!({ "refresh": "x", "all": false, "extra": 1 }),
    ];
    // First on a text never seen, so never validated before.
    let mut before = Vec::new();
    for variables in &wrong {
        before.push(app.graphql(query, variables.clone()).await);
    }
    // Validated in full once with plain variables, and kept.
    let body = app
        .graphql(query, json!({ "refresh": refresh, "all": false }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let refresh = body["data"]["newToken"]["refreshToken"].as_str().unwrap();
    // Plain variables again: the kept outcome, and the request still runs on its own values.
    let body = app
        .graphql(query, json!({ "refresh": refresh, "all": true }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let body = app
        .graphql(query, json!({ "refresh": "not a token", "all": false }))
        .await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "{body}");
    for (variables, first) in wrong.iter().zip(&before) {
        assert!(!first["errors"].is_null(), "{variables}: {first}");
        let again = app.graphql(query, variables.clone()).await;
        assert_eq!(&again, first, "{variables}");
    }
    app.stop().await;
}
