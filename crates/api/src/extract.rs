//! Extractors whose rejections are JSON errors saying what was wrong,
//! instead of axum's plain-text defaults.

use crate::error::HttpError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A JSON request body. `T::EXPECTED` is quoted in errors.
pub(crate) struct JsonBody<T>(pub T);

/// Request bodies that document their expected shape for error messages.
pub(crate) trait Expected {
    /// The expected JSON shape, e.g. `{"version": "v2", "force": false}`.
    const EXPECTED: &'static str;
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Expected,
{
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let timeout = crate::transport::BODY_READ_TIMEOUT;
        let bytes = tokio::time::timeout(timeout, Bytes::from_request(request, state))
            .await
            .map_err(|_| {
                HttpError::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    format!("the request body did not arrive within {timeout:?}"),
                )
            })?
            .map_err(|rejection| HttpError::new(rejection.status(), rejection.body_text()))?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub(crate) fn parse_json<T: DeserializeOwned + Expected>(bytes: &[u8]) -> Result<T, HttpError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(HttpError::bad_request(format!(
            "the request has no JSON body; expected {}",
            T::EXPECTED
        )));
    }
    serde_json::from_slice(bytes).map_err(|error| {
        let problem = match error.classify() {
            serde_json::error::Category::Data => "the JSON body does not have the expected fields",
            serde_json::error::Category::Eof => "the JSON body ends too early",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                "the body is not valid JSON"
            }
        };
        HttpError::bad_request(format!("{problem} ({error}); expected {}", T::EXPECTED))
    })
}

/// Query parameters; a malformed query is a 400 JSON error.
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(HttpError::bad_request(format!(
                "bad query parameters: {}",
                rejection
                    .body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}

/// Path parameters; a rejection (e.g. bad percent-encoding) is a 400 JSON error.
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(HttpError::new(rejection.status(), rejection.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        version: String,
    }

    impl Expected for Body {
        const EXPECTED: &'static str = r#"{"version": "v2"}"#;
    }

    #[test]
    fn empty_body_names_the_expected_shape() {
        let error = parse_json::<Body>(b"  ").unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.message.contains("no JSON body"), "{}", error.message);
        assert!(
            error.message.contains(r#"{"version": "v2"}"#),
            "{}",
            error.message
        );
    }

    #[test]
    fn syntax_and_field_errors_say_which() {
        let syntax = parse_json::<Body>(b"{version").unwrap_err();
        assert!(
            syntax.message.starts_with("the body is not valid JSON"),
            "{}",
            syntax.message
        );
        let missing = parse_json::<Body>(b"{}").unwrap_err();
        assert!(
            missing.message.contains("missing field `version`"),
            "{}",
            missing.message
        );
        let unknown = parse_json::<Body>(br#"{"version": "v1", "versoin": 2}"#).unwrap_err();
        assert!(
            unknown.message.contains("unknown field `versoin`"),
            "{}",
            unknown.message
        );
        let eof = parse_json::<Body>(br#"{"version": "v1""#).unwrap_err();
        assert!(
            eof.message.starts_with("the JSON body ends too early"),
            "{}",
            eof.message
        );
    }
}
