//! The bearer token clients must show, and the gate that checks it on every Flight call.
//!
//! With `--auth-token-file F`, every Flight SQL call but the handshake and every HTTP call but
//! the health checks must carry `authorization: Bearer TOKEN`. The comparison takes the same
//! time wherever the first wrong byte is (`subtle`), so a client cannot find the token byte by
//! byte from response times.

use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::common::{DataFusionError, Result};
use subtle::ConstantTimeEq;

use super::metrics::Metrics;

/// The server's token.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// A token shorter than this is refused: it could be guessed.
const MIN_TOKEN_BYTES: usize = 16;

impl Token {
    /// The token in `path`: the file's text without surrounding whitespace.
    pub fn load(path: &Path) -> Result<Token> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DataFusionError::Plan(format!("--auth-token-file {}: {e}", path.display()))
        })?;
        Token::new(text.trim()).map_err(|why| {
            DataFusionError::Plan(format!("--auth-token-file {}: {why}", path.display()))
        })
    }

    pub fn new(text: &str) -> std::result::Result<Token, String> {
        if text.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "the token has {} bytes; at least {MIN_TOKEN_BYTES} are needed",
                text.len()
            ));
        }
        if text.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(Token(text.as_bytes().into()))
    }

    /// Whether `candidate` is the token, compared in constant time.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(candidate))
    }

    /// Whether an `authorization` header value is `Bearer TOKEN`.
    pub fn admits(&self, header: Option<&[u8]>) -> bool {
        match header.and_then(|h| h.strip_prefix(b"Bearer ")) {
            Some(candidate) => self.matches(candidate),
            None => false,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII")
    }
}

/// The gRPC method a request calls: the last segment of its path
/// (`/arrow.flight.protocol.FlightService/DoGet` → `DoGet`).
pub fn grpc_method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A tower layer over the Flight service: counts each call by method and, with a token,
/// refuses calls without it (all but the handshake, which is how a client gets the header).
#[derive(Clone)]
pub struct FlightGate {
    pub token: Option<Token>,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for FlightGate {
    type Service = FlightGateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FlightGateService {
            gate: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct FlightGateService<S> {
    gate: FlightGate,
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> tower::Service<http::Request<B>> for FlightGateService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = grpc_method(request.uri().path()).to_string();
        self.gate
            .metrics
            .flight_requests
            .with_label_values(&[&method])
            .inc();
        if let Some(token) = &self.gate.token
            && method != "Handshake"
        {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if !token.admits(header) {
                self.gate.metrics.error("auth");
                let why = if header.is_none() {
                    "no token: send 'authorization: Bearer TOKEN' (or handshake first)"
                } else {
                    "wrong token"
                };
                let response = tonic::Status::unauthenticated(why).into_http();
                return Box::pin(async move { Ok(response) });
            }
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(tonic::body::Body::new))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_compared_whole() {
        let token = Token::new("0123456789abcdef-secret").unwrap();
        assert!(token.admits(Some(b"Bearer 0123456789abcdef-secret")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdef-secreT")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdef-secret0")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdef-secre")));
        assert!(!token.admits(Some(b"0123456789abcdef-secret")));
        assert!(!token.admits(None));
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
        assert!(Token::new("with a space in it!").is_err());
        assert_eq!(
            grpc_method("/arrow.flight.protocol.FlightService/DoGet"),
            "DoGet"
        );
    }
}
