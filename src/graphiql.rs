//! GraphiQL, served from the binary while `graphql.playground` is on: the page, and the
//! production builds of GraphiQL and React it loads (vendored from npm in `assets/graphiql`,
//! with their licences). The page loads nothing from another origin, so it works on an
//! air-gapped install, and its Content-Security-Policy keeps it that way.

use poem::Response;
use poem::http::{StatusCode, header};

/// The GraphiQL release in `assets/graphiql` (its last with a prebuilt browser bundle).
pub const GRAPHIQL_VERSION: &str = "4.1.2";
/// The React release it runs on (React 18's is the last with a prebuilt browser bundle).
pub const REACT_VERSION: &str = "18.3.1";

/// Only this origin, for scripts, styles, images, fonts and requests; no inline script.
/// GraphiQL's icons are `data:` images; its styles sit in its own stylesheet.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A vendored file's name holds its version, so a browser may keep it for a year; Keyhold's
/// own files change with Keyhold and are checked each time.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

struct Asset {
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    cache: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the page loads, by the path it asks for (kept in step with `index.html`).
const ASSETS: [Asset; 6] = [
    Asset {
        path: "/assets/graphiql-4.1.2/graphiql.min.js",
        body: include_bytes!("../assets/graphiql/graphiql.min.js"),
        content_type: JS,
        cache: IMMUTABLE,
    },
    Asset {
        path: "/assets/graphiql-4.1.2/graphiql.min.css",
        body: include_bytes!("../assets/graphiql/graphiql.min.css"),
        content_type: CSS,
        cache: IMMUTABLE,
    },
    Asset {
        path: "/assets/react-18.3.1/react.production.min.js",
        body: include_bytes!("../assets/graphiql/react.production.min.js"),
        content_type: JS,
        cache: IMMUTABLE,
    },
    Asset {
        path: "/assets/react-dom-18.3.1/react-dom.production.min.js",
        body: include_bytes!("../assets/graphiql/react-dom.production.min.js"),
        content_type: JS,
        cache: IMMUTABLE,
    },
    Asset {
        path: "/assets/keyhold/graphiql.js",
        body: include_bytes!("../assets/graphiql/keyhold-graphiql.js"),
        content_type: JS,
        cache: REVALIDATE,
    },
    Asset {
        path: "/assets/keyhold/graphiql.css",
        body: include_bytes!("../assets/graphiql/keyhold-graphiql.css"),
        content_type: CSS,
        cache: REVALIDATE,
    },
];

const PAGE: &str = include_str!("../assets/graphiql/index.html");

/// The GraphiQL page.
pub fn page() -> Response {
    Response::builder()
        .content_type("text/html; charset=utf-8")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::CACHE_CONTROL, REVALIDATE)
        .header(header::X_FRAME_OPTIONS, "DENY")
        .body(PAGE)
}

/// The file at `path`, or 404.
pub fn asset(path: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return StatusCode::NOT_FOUND.into();
    };
    Response::builder()
        .content_type(asset.content_type)
        .header(header::CACHE_CONTROL, asset.cache)
        .body(asset.body)
}

/// The passkey example (`/examples/passkey`, and `/examples/passkey.js` that it loads),
/// under the same policy as GraphiQL: its own origin only, no inline script.
pub fn passkey_example(path: &str) -> Response {
    let (body, content_type): (&'static [u8], &str) = match path {
        "/examples/passkey" => (
            include_bytes!("../assets/examples/passkey.html"),
            "text/html; charset=utf-8",
        ),
        "/examples/passkey.js" => (include_bytes!("../assets/examples/passkey.js"), JS),
        _ => return StatusCode::NOT_FOUND.into(),
    };
    Response::builder()
        .content_type(content_type)
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::CACHE_CONTROL, REVALIDATE)
        .header(header::X_FRAME_OPTIONS, "DENY")
        .body(body)
}

/// The paths the page loads, for tests.
pub fn asset_paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_every_asset_and_nothing_else() {
        let mut loaded: Vec<&str> = PAGE
            .split(['"', '\''])
            .filter(|s| s.starts_with("/assets/"))
            .collect();
        loaded.sort_unstable();
        let mut served: Vec<&str> = asset_paths().collect();
        served.sort_unstable();
        assert_eq!(loaded, served);
        assert!(!PAGE.contains("://"), "no other origin");
        assert!(
            !PAGE.contains("<script>") && !PAGE.contains("style="),
            "nothing inline, which the policy would refuse"
        );
    }

    #[test]
    fn vendored_paths_name_the_versions() {
        for asset in &ASSETS {
            let versioned =
                asset.path.contains(GRAPHIQL_VERSION) || asset.path.contains(REACT_VERSION);
            assert_eq!(versioned, asset.cache == IMMUTABLE, "{}", asset.path);
        }
    }
}
