//! ACME http-01 answers on the plain listeners: the key authorization of a
//! pending challenge at `/.well-known/acme-challenge/<token>`, before any
//! app routing. The tokens sit behind an `ArcSwap` the ACME control plane
//! replaces; a request only loads it. An unknown token falls through to the
//! app (which may answer challenges of its own).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};

use crate::body::{ClientBody, ResponseBody};
use crate::forward::Shared;

/// Where http-01 challenge tokens are answered (RFC 8555 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The pending http-01 challenges: token → key authorization. Cheap to
/// clone; clones share the tokens.
#[derive(Debug, Clone, Default)]
pub struct Http01Answers {
    tokens: Arc<ArcSwap<HashMap<String, String>>>,
}

impl Http01Answers {
    /// Answers `token` with `key_authorization` until [`Http01Answers::remove`].
    pub fn set(&self, token: &str, key_authorization: &str) {
        self.tokens.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(token.to_owned(), key_authorization.to_owned());
            next
        });
    }

    pub fn remove(&self, token: &str) {
        self.tokens.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(token);
            next
        });
    }

    fn get(&self, token: &str) -> Option<String> {
        self.tokens.load().get(token).cloned()
    }
}

/// The answer to a pending http-01 challenge, if `req` asks for one.
pub(crate) fn http01_answer(
    shared: &Shared,
    req: &Request<ClientBody>,
) -> Option<Response<ResponseBody>> {
    let answers = shared.acme_http01.as_ref()?;
    let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
    if req.method() != Method::GET {
        return None;
    }
    let key_authorization = answers.get(token)?;
    let mut response = Response::new(ResponseBody::full(key_authorization));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Some(response)
}
