//! HTTP: the routes (GraphQL, GraphiQL, health), over the TLS listener built in `app`.

use std::net::IpAddr;
use std::sync::Arc;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{BatchRequest, BatchResponse, Response as GqlResponse};
use poem::http::{StatusCode, header};

use poem::endpoint::BoxEndpoint;
use poem::middleware::{Cors, SetHeader};
use poem::web::Data;
use poem::{Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler};

use crate::auth::Auth;
use crate::clock::Clock;
use crate::config::GraphqlConfig;
use crate::graphql::error::{label_engine_errors, request_error};
use crate::graphql::{KeyholdSchema, RequestMeta};
use crate::store::Storage;

/// What the handlers share.
pub struct HttpState {
    pub schema: KeyholdSchema,
    pub auth: Arc<Auth>,
    pub graphql: GraphqlConfig,
    pub store: Arc<dyn Storage>,
    pub clock: Clock,
    pub mail_stats: Arc<crate::jobs::MailStats>,
    pub sweep_stats: Arc<crate::jobs::SweepStats>,
}

/// Every route Keyhold serves, with the security headers, the request time limit and,
/// when origins are configured, CORS.
pub fn routes(state: Arc<HttpState>) -> BoxEndpoint<'static, Response> {
    let timeout = state.auth.config.server.request_timeout;
    let origins = state.auth.config.server.cors_origins.clone();
    let trusted = state.auth.config.server.trusted_proxies.clone();
    let app = Route::new()
        .at("/graphql", get(graphql_get).post(graphql_post))
        .at("/api/graphql", get(graphql_get).post(graphql_post))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/.well-known/jwks.json", get(jwks))
        .at("/metrics", get(metrics))
        .at("/assets/*path", get(assets))
        .at("/examples/passkey", get(passkey_example))
        .at("/examples/passkey.js", get(passkey_example))
        .data(state)
        .with(
            SetHeader::new()
                .overriding(
                    header::STRICT_TRANSPORT_SECURITY,
                    "max-age=31536000; includeSubDomains",
                )
                .overriding(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
                .overriding(header::REFERRER_POLICY, "no-referrer"),
        )
        .around(move |ep, req| async move {
            match tokio::time::timeout(timeout, ep.call(req)).await {
                Ok(response) => response.map(IntoResponse::into_response),
                Err(_) => {
                    tracing::warn!("a request ran past server.request_timeout");
                    Ok(refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the request took too long",
                        "query",
                    ))
                }
            }
        })
        .around(move |ep, req| {
            let id: Arc<str> = request_id(&req, &trusted).into();
            // Read only when the line is written: most servers log at `info`.
            let answered = tracing::enabled!(tracing::Level::DEBUG)
                .then(|| (req.method().clone(), req.uri().path().to_owned()));
            crate::logging::with_request_id(id.clone(), async move {
                let mut response = match ep.call(req).await {
                    Ok(response) => response,
                    Err(e) => e.into_response(),
                };
                if let Some((method, path)) = answered {
                    let status = response.status().as_u16();
                    tracing::debug!(%method, %path, status, "answered");
                }
                if let Ok(value) = header::HeaderValue::from_str(&id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                Ok::<_, poem::Error>(response)
            })
        });
    if origins.is_empty() {
        // No CORS headers at all: browsers keep other origins out.
        return app.map_to_response().boxed();
    }
    app.with(
        Cors::new()
            .allow_origins(origins)
            .allow_methods([poem::http::Method::GET, poem::http::Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .max_age(600),
    )
    .map_to_response()
    .boxed()
}

/// The header that carries a request's id, in the response and from a trusted proxy.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id under which a request is logged: a trusted proxy's `X-Request-Id` when it is a
/// plain token (so a log line cannot be forged through it), otherwise a new random one.
fn request_id(req: &Request, trusted: &[IpAddr]) -> String {
    let from_proxy = req
        .remote_addr()
        .as_socket_addr()
        .is_some_and(|peer| trusted.contains(&peer.ip()));
    if from_proxy
        && let Some(id) = req.header(REQUEST_ID_HEADER)
        && (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return id.to_owned();
    }
    // The process's generator, as for a token's `jti`: no system call per request.
    uuid::Builder::from_random_bytes(crate::auth::secrets::random_bytes::<16>())
        .into_uuid()
        .simple()
        .to_string()
}

fn request_meta(req: &Request, trusted: &[IpAddr]) -> RequestMeta {
    let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
    // Only a trusted proxy's header is read, so only then is it gathered.
    let client = peer.map(|peer| {
        if !trusted.contains(&peer) {
            return peer;
        }
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        client_ip(peer, &forwarded, trusted)
    });
    RequestMeta::new(
        client,
        req.header(header::USER_AGENT).map(str::to_string),
        req.header(header::AUTHORIZATION),
    )
}

/// The client's address: the socket's peer, unless the peer is a trusted proxy; then the
/// first hop of `X-Forwarded-For`, read from the right, that is not a trusted proxy. A hop
/// that does not parse ends the walk at the last trusted one: it was written by the client.
pub fn client_ip(peer: IpAddr, forwarded_for: &str, trusted: &[IpAddr]) -> IpAddr {
    let mut client = peer;
    if !trusted.contains(&peer) {
        return client;
    }
    for hop in forwarded_for.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => Response::builder()
            .status(status)
            .content_type("application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(bytes),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a response");
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .finish()
        }
    }
}

fn refused(status: StatusCode, message: &str, field: &str) -> Response {
    json(status, &request_error(message, field))
}

/// `POST /graphql`: one operation, or a batch of at most `graphql.max_batch`.
#[handler]
async fn graphql_post(req: &Request, body: Body, Data(state): Data<&Arc<HttpState>>) -> Response {
    if !is_json(req.header(header::CONTENT_TYPE)) {
        // A form, multipart or text/plain POST is what a browser sends cross-site without
        // asking first (no CORS preflight): nothing of it runs.
        return refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a GraphQL POST must be Content-Type: application/json",
            "content-type",
        );
    }
    let limit = state.graphql.max_body_bytes;
    let bytes = match body.into_bytes_limit(limit).await {
        Ok(bytes) => bytes,
        Err(poem::error::ReadBodyError::PayloadTooLarge) => {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than {limit} bytes"),
                "body",
            );
        }
        Err(_) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
                "body",
            );
        }
    };
    let meta = request_meta(req, &state.auth.config.server.trusted_proxies);
    execute_body(&state.schema, state.graphql.max_batch, &bytes, meta).await
}

/// Runs the body of a GraphQL POST: one operation (a JSON object) or a batch of at most
/// `max_batch` (an array). What is not a GraphQL request in JSON is `BAD_USER_INPUT`
/// with status 400. The fuzz target `graphql_body` drives this.
pub async fn execute_body(
    schema: &KeyholdSchema,
    max_batch: usize,
    bytes: &[u8],
    meta: RequestMeta,
) -> Response {
    let batch = match parse_batch(bytes) {
        Ok(batch) => batch,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a GraphQL request in JSON: {e}"),
                "body",
            );
        }
    };
    if let BatchRequest::Batch(requests) = &batch {
        if requests.is_empty() {
            return refused(StatusCode::BAD_REQUEST, "the batch is empty", "body");
        }
        if requests.len() > max_batch {
            return refused(
                StatusCode::BAD_REQUEST,
                &format!(
                    "a batch holds at most {max_batch} operations; this one has {}",
                    requests.len()
                ),
                "body",
            );
        }
    }
    tracing::debug!(
        operations = match &batch {
            BatchRequest::Single(_) => 1,
            BatchRequest::Batch(many) => many.len(),
        },
        bytes = bytes.len(),
        "GraphQL request"
    );
    let mut response = schema.execute_batch(batch.data(meta)).await;
    match &mut response {
        BatchResponse::Single(one) => label_engine_errors(one),
        BatchResponse::Batch(many) => many.iter_mut().for_each(label_engine_errors),
    }
    json(StatusCode::OK, &response)
}

/// `application/json`, with or without parameters (`; charset=utf-8`): the one request
/// media type of the GraphQL-over-HTTP specification.
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON object is one operation and a JSON array a batch. Anything else is refused here:
/// serde would otherwise read a struct from an array, and `[]` would run as an empty request.
fn parse_batch(bytes: &[u8]) -> Result<BatchRequest, serde_json::Error> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let requests: Vec<async_graphql::Request> = serde_json::from_slice(bytes)?;
            Ok(BatchRequest::Batch(requests))
        }
        Some(b'{') => Ok(BatchRequest::Single(serde_json::from_slice(bytes)?)),
        _ => Err(serde::de::Error::custom(
            "expected a JSON object, or an array of them",
        )),
    }
}

/// `GET /graphql`: GraphiQL when `graphql.playground` is on; a `?query=` runs queries only,
/// never mutations.
#[handler]
async fn graphql_get(req: &Request, Data(state): Data<&Arc<HttpState>>) -> Response {
    let query_string = req.uri().query().unwrap_or_default();
    if !query_string.split('&').any(|kv| kv.starts_with("query=")) {
        if state.graphql.playground {
            return crate::graphiql::page();
        }
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "POST")
            .finish();
    }
    let request = match async_graphql::http::parse_query_string(query_string) {
        Ok(request) => request,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                &format!("bad query string: {e}"),
                "query",
            );
        }
    };
    if !runs_only_queries(&request.query, request.operation_name.as_deref()) {
        let mut response = refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "mutations are only accepted over POST",
            "query",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let meta = request_meta(req, &state.auth.config.server.trusted_proxies);
    let mut response: GqlResponse = state.schema.execute(request.data(meta)).await;
    label_engine_errors(&mut response);
    json(StatusCode::OK, &response)
}

/// Whether the operation that would run is a query. A document that does not parse, or
/// that the guard refuses before parsing, is let through: executing it reports why.
fn runs_only_queries(query: &str, operation_name: Option<&str>) -> bool {
    if crate::graphql::guard::check_text(query).is_err() {
        return true;
    }
    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return true;
    };
    let is_query = |ty: OperationType| ty == OperationType::Query;
    match &document.operations {
        DocumentOperations::Single(op) => is_query(op.node.ty),
        DocumentOperations::Multiple(ops) => match operation_name {
            Some(name) => ops.get(name).is_none_or(|op| is_query(op.node.ty)),
            None => ops.values().all(|op| is_query(op.node.ty)),
        },
    }
}

/// `GET /assets/…`: what the GraphiQL page loads, while the page is served.
#[handler]
fn assets(req: &Request, Data(state): Data<&Arc<HttpState>>) -> Response {
    if !state.graphql.playground {
        return StatusCode::NOT_FOUND.into();
    }
    crate::graphiql::asset(req.uri().path())
}

/// `GET /examples/passkey` (and its script): the passkey example page, while the GraphiQL
/// page is served.
#[handler]
fn passkey_example(req: &Request, Data(state): Data<&Arc<HttpState>>) -> Response {
    if !state.graphql.playground {
        return StatusCode::NOT_FOUND.into();
    }
    crate::graphiql::passkey_example(req.uri().path())
}

/// `GET /.well-known/jwks.json`: the public keys that verify access tokens.
#[handler]
async fn jwks(Data(state): Data<&Arc<HttpState>>) -> Response {
    let mut response = json(StatusCode::OK, &state.auth.tokens.jwks());
    // Public and slow to change: verifiers may cache it briefly.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// `GET /metrics`: Prometheus text format; with `metrics.token`, for its bearer only.
#[handler]
async fn metrics(req: &Request, Data(state): Data<&Arc<HttpState>>) -> Response {
    use secrecy::ExposeSecret;
    use std::sync::atomic::Ordering;
    if let Some(token) = &state.auth.config.metrics.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = token.expose_secret().as_bytes();
        if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), expected).is_err() {
            let mut refused = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({ "error": "metrics.token is set: send Authorization: Bearer <token>" }),
            );
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return refused;
        }
    }
    let auth = state.auth.clone();
    let (mail, sweep) = (state.mail_stats.clone(), state.sweep_stats.clone());
    let stored = auth.store.stats().await;
    let m = &auth.metrics;
    m.gauge(
        "keyhold_password_hashes_in_use",
        &[],
        auth.passwords.in_use() as f64,
    );
    match stored {
        Ok(stored) => {
            m.gauge("keyhold_mail_queue_depth", &[], stored.queued_mail as f64);
            m.gauge(
                "keyhold_device_sessions",
                &[],
                stored.device_sessions as f64,
            );
            for (name, value) in stored.counters {
                m.set_counter(name, value);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the storage statistics"),
    }
    m.set_counter("keyhold_mail_sent_total", mail.sent.load(Ordering::Relaxed));
    m.set_counter(
        "keyhold_mail_retries_total",
        mail.retried.load(Ordering::Relaxed),
    );
    m.set_counter(
        "keyhold_mail_dropped_total",
        mail.dropped.load(Ordering::Relaxed),
    );
    m.set_counter(
        "keyhold_sweeper_removed_total",
        sweep.removed.load(Ordering::Relaxed),
    );
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(m.render())
}

/// `GET /healthz`: the process is up.
#[handler]
async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the store is open and takes writes.
#[handler]
async fn readyz(Data(state): Data<&Arc<HttpState>>) -> Response {
    let now = state.clock.now().unix_timestamp_nanos();
    match state.store.check_writable(now).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
        Err(e) => {
            tracing::error!(error = %e, "readiness probe failed");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "status": "unavailable" }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{client_ip, is_json, runs_only_queries};

    #[test]
    fn only_json_is_a_graphql_post() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        for other in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonp"),
            Some("application/graphql"),
            Some(""),
        ] {
            assert!(!is_json(other), "{other:?}");
        }
    }

    #[test]
    fn x_forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let proxies = [ip("10.0.0.1"), ip("10.0.0.2")];
        // Not from a proxy: the header is the client's own word, ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), "1.2.3.4", &proxies),
            ip("203.0.113.9")
        );
        // From a proxy: the first untrusted hop from the right.
        assert_eq!(
            client_ip(ip("10.0.0.1"), "1.2.3.4, 198.51.100.7", &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), "198.51.100.7, 10.0.0.2", &proxies),
            ip("198.51.100.7")
        );
        // A hop that does not parse stops the walk.
        assert_eq!(
            client_ip(ip("10.0.0.1"), "198.51.100.7, junk", &proxies),
            ip("10.0.0.1")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), "", &proxies), ip("10.0.0.1"));
    }

    #[test]
    fn only_queries_run_over_get() {
        assert!(runs_only_queries("{ __typename }", None));
        assert!(runs_only_queries("query Q { __typename }", Some("Q")));
        assert!(!runs_only_queries("mutation { logout { status } }", None));
        assert!(!runs_only_queries(
            "query A { __typename } mutation B { logout { status } }",
            None
        ));
        assert!(runs_only_queries(
            "query A { __typename } mutation B { logout { status } }",
            Some("A")
        ));
        assert!(!runs_only_queries(
            "query A { __typename } mutation B { logout { status } }",
            Some("B")
        ));
    }
}
