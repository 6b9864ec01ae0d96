//! `GET /` and `GET /assets/{file}`: the dashboard. One page, one script,
//! one stylesheet and an icon, compiled into the binary (`dashboard/`): no
//! CDN, no build step.
//!
//! The page holds no data. Its script asks this API for everything with
//! the token the user types in (kept in the tab's session storage, sent as
//! `Authorization: Bearer`, never a cookie), so the page and its assets are
//! served without a token. It builds every node from text (no `innerHTML`),
//! and the Content-Security-Policy below allows only this origin's script
//! and style files: no inline script, no framing, no other origin.

use crate::error::HttpError;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Only files of this origin; nothing inline, nothing framed, no forms
/// posted anywhere, no `<base>`.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// A file of the dashboard.
struct Asset {
    content_type: &'static str,
    body: &'static str,
    /// A strong validator, from the content (changes with the binary).
    etag: u64,
}

impl Asset {
    const fn new(content_type: &'static str, body: &'static str) -> Asset {
        Asset {
            content_type,
            body,
            etag: fnv1a(body.as_bytes()),
        }
    }
}

const INDEX: Asset = Asset::new(
    "text/html; charset=utf-8",
    include_str!("dashboard/index.html"),
);
const SCRIPT: Asset = Asset::new(
    "text/javascript; charset=utf-8",
    include_str!("dashboard/dashboard.js"),
);
const STYLE: Asset = Asset::new(
    "text/css; charset=utf-8",
    include_str!("dashboard/dashboard.css"),
);
const ICON: Asset = Asset::new("image/svg+xml", include_str!("dashboard/favicon.svg"));

/// The files under `/assets/`, by name.
fn asset_named(name: &str) -> Option<&'static Asset> {
    match name {
        "dashboard.js" => Some(&SCRIPT),
        "dashboard.css" => Some(&STYLE),
        "favicon.svg" => Some(&ICON),
        _ => None,
    }
}

/// The dashboard's routes (stateless, merged into the admin API's router).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index(request: HeaderMap) -> Response {
    serve(&INDEX, &request)
}

async fn asset(Path(file): Path<String>, request: HeaderMap) -> Response {
    match asset_named(&file) {
        Some(asset) => serve(asset, &request),
        None => HttpError::not_found(format!(
            "no such dashboard file: /assets/{}",
            file.escape_debug()
        ))
        .into_response(),
    }
}

/// The file with its security headers; 304 when the browser has it.
/// `no-cache` makes the browser revalidate, so a new binary's page is
/// picked up at once.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut headers = HeaderMap::new();
    let fixed: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_TYPE, asset.content_type),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    match fresh {
        true => (StatusCode::NOT_MODIFIED, headers).into_response(),
        false => (StatusCode::OK, headers, asset.body).into_response(),
    }
}

/// FNV-1a, 64 bits: a content hash computable at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(response: &Response, name: HeaderName) -> &str {
        response.headers()[name].to_str().unwrap()
    }

    #[tokio::test]
    async fn the_page_carries_a_strict_content_security_policy() {
        let response = index(HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let policy = header(&response, header::CONTENT_SECURITY_POLICY);
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(header(&response, header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert!(header(&response, header::CONTENT_TYPE).starts_with("text/html"));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_names_only_served_assets() {
        let page = INDEX.body;
        for (at, _) in page.match_indices("<script") {
            let tag = &page[at..at + page[at..].find('>').unwrap()];
            assert!(tag.contains("src=\"/assets/"), "inline script: {tag}");
            assert!(page[at..].starts_with(&format!("{tag}></script>")), "{tag}");
        }
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "style attribute");
        let handler = page
            .split_whitespace()
            .find(|word| word.starts_with("on") && word.contains('='));
        assert_eq!(handler, None, "inline handler attribute");
        for (at, _) in page.match_indices("/assets/") {
            let rest = &page[at + "/assets/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(asset_named(name).is_some(), "the page names /assets/{name}");
        }
    }

    #[test]
    fn the_script_never_turns_data_into_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setAttribute('on",
        ] {
            assert!(!SCRIPT.body.contains(sink), "dashboard.js uses {sink}");
        }
        assert!(!SCRIPT.body.contains("document.cookie"), "no cookies");
        assert!(SCRIPT.body.contains("sessionStorage"), "token kept per tab");
    }

    #[tokio::test]
    async fn assets_answer_with_their_type_and_revalidate_by_etag() {
        let response = asset(Path("dashboard.js".to_string()), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(header(&response, header::CONTENT_TYPE).starts_with("text/javascript"));
        assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
        let etag = header(&response, header::ETAG).to_string();
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, etag.parse().unwrap());
        let again = asset(Path("dashboard.js".to_string()), request).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let css = asset(Path("dashboard.css".to_string()), HeaderMap::new()).await;
        assert_ne!(header(&css, header::ETAG), etag);
    }

    #[tokio::test]
    async fn unknown_assets_are_json_404s() {
        for name in ["nope.js", "..", "dashboard.js.map"] {
            let response = asset(Path(name.to_string()), HeaderMap::new()).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name}");
            assert!(header(&response, header::CONTENT_TYPE).starts_with("application/json"));
        }
    }
}
