//! Response bodies: the one body type every listener answers with, its constructors, and the
//! future a listener's service returns. Shared by `service` (the repository and operations
//! endpoints) and `admin` (the admin endpoint), so neither needs the other for them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full};

/// A response body: a whole buffer (every repository response), or a stream (admin sync).
pub type Body = Either<Full<Bytes>, BoxBody<Bytes, Infallible>>;

/// What a listener's service returns for one request (`hyper::service::Service::Future`): it
/// always answers, so the error is `Infallible`.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// A body of the whole of `bytes`.
pub fn full(bytes: Bytes) -> Body {
    Either::Left(Full::new(bytes))
}

/// A body sent as `body` produces it.
pub fn streaming<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    Either::Right(body.boxed())
}

/// A one-line plain-text answer.
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(format!("{message}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
