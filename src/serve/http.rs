//! The HTTP API: jobs, metrics and health checks.
//!
//! Every route is added in one place ([`routes`]), which also lists them, so a test holds
//! `/openapi.json` to exactly the routes served. With a token, every route but `/healthz` and
//! `/readyz` needs `authorization: Bearer TOKEN`. Every error is answered as JSON
//! `{"error": "…"}` and counted by kind; every request is counted by route and status.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{MethodFilter, on};
use serde_json::{Map, Value, json};

use super::ServerState;
use super::jobs::{JobError, JobRequest};

/// The OpenAPI 3.1 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Routes anyone may call: a prober has no token.
const OPEN_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// What the handlers share.
struct Api {
    server: Arc<ServerState>,
    /// Set once the listener was told to stop.
    stopping: AtomicBool,
}

impl Api {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst) || self.server.jobs.is_shutting_down()
    }
}

/// Serves the HTTP API on `listener` until `stop` completes.
pub async fn serve(
    state: Arc<ServerState>,
    listener: std::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let api = Arc::new(Api {
        server: state,
        stopping: AtomicBool::new(false),
    });
    let app = router(api.clone());
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let stop = async move {
        stop.await;
        api.stopping.store(true, Ordering::SeqCst);
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

/// The routes, and the method and path of each.
struct Routes {
    router: Router<Arc<Api>>,
    listed: Vec<(Method, &'static str)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<Api>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        self.router = self.router.route(path, on(filter, handler));
        self.listed.push((method, path));
        self
    }
}

fn routes() -> Routes {
    Routes {
        router: Router::new(),
        listed: Vec::new(),
    }
    .add(Method::GET, "/healthz", healthz)
    .add(Method::GET, "/readyz", readyz)
    .add(Method::GET, "/metrics", metrics)
    .add(Method::GET, "/openapi.json", openapi)
    .add(Method::GET, "/v1/jobs", list_jobs)
    .add(Method::POST, "/v1/jobs", submit_job)
    .add(Method::GET, "/v1/jobs/{id}", get_job)
    .add(Method::DELETE, "/v1/jobs/{id}", cancel_job)
}

fn router(api: Arc<Api>) -> Router {
    // The gate is added last, so it wraps the fallbacks too: an unknown path without the
    // token is refused as unauthorised, not told apart.
    routes()
        .router
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(from_fn_with_state(api.clone(), gate))
        .layer(DefaultBodyLimit::max(api.server.max_request_bytes))
        .with_state(api)
}

/// Checks the token, and counts the request and any error it was answered with.
async fn gate(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    // The route's template, not the path: job ids must not become label values.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let open = route.as_deref().is_some_and(|r| OPEN_ROUTES.contains(&r));
    let response = match &api.server.token {
        Some(token) if !open => {
            let header = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if token.admits(header) {
                next.run(request).await
            } else if header.is_none() {
                ApiError::unauthorized("no token: send 'authorization: Bearer TOKEN'")
                    .into_response()
            } else {
                ApiError::unauthorized("wrong token").into_response()
            }
        }
        _ => next.run(request).await,
    };
    let metrics = &api.server.metrics;
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        metrics.error(kind);
    }
    metrics
        .http_requests
        .with_label_values(&[
            route.as_deref().unwrap_or("unmatched"),
            response.status().as_str(),
        ])
        .inc();
    response
}

/// The kind an error response is counted as (one of `metrics::ERROR_KINDS`).
#[derive(Clone, Copy)]
struct ErrorKind(&'static str);

/// An error answer: a status, the kind it is counted as, and the message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized(message: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "auth", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        response.extensions_mut().insert(ErrorKind(self.kind));
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let (status, kind) = match &e {
            JobError::Outside(_) => (StatusCode::FORBIDDEN, "path"),
            JobError::BadPath(_) => (StatusCode::BAD_REQUEST, "path"),
            JobError::BadConfig(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            JobError::OutputTaken(_) => (StatusCode::CONFLICT, "path"),
            JobError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            JobError::Finished { .. } => (StatusCode::CONFLICT, "bad_request"),
            JobError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "limit"),
            JobError::QueueFull => (StatusCode::TOO_MANY_REQUESTS, "limit"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if api.stopping() {
        // Not an error of the client's: not counted as one.
        let body = Json(json!({ "error": "shutting down" }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    Json(json!({ "status": "ready" })).into_response()
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let text = api.server.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_jobs(State(api): State<Arc<Api>>) -> Json<Value> {
    Json(json!({ "jobs": api.server.jobs.list() }))
}

async fn submit_job(
    State(api): State<Arc<Api>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "limit",
                format!(
                    "the request body is over the server's limit of {} bytes (--max-request-size)",
                    api.server.max_request_bytes
                ),
            )
        } else {
            ApiError::bad_request(format!(
                "the request body could not be read: {}",
                rejection.body_text()
            ))
        }
    })?;
    api.server
        .metrics
        .request_bytes_in
        .inc_by(body.len() as u64);
    if api.stopping() {
        return Err(JobError::ShuttingDown.into());
    }
    let id = api.server.jobs.submit(job_request(&body)?)?;
    let location = format!("/v1/jobs/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(json!({ "id": id })),
    )
        .into_response())
}

async fn get_job(
    State(api): State<Arc<Api>>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(|r| ApiError::bad_request(r.body_text()))?;
    Ok(Json(api.server.jobs.get(&id)?))
}

async fn cancel_job(
    State(api): State<Arc<Api>>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(|r| ApiError::bad_request(r.body_text()))?;
    Ok(Json(api.server.jobs.cancel(&id).await?))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {method} {}: the routes are described at /openapi.json",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        format!(
            "{method} is not a method of {}: the routes are described at /openapi.json",
            uri.path()
        ),
    )
}

/// The fields a job body takes.
const JOB_FIELDS: [&str; 3] = ["model", "output", "config"];

/// A `POST /v1/jobs` body: `{"model": PATH, "output": PATH, "config": {…}}`, every refusal
/// naming the field.
fn job_request(body: &[u8]) -> Result<JobRequest, ApiError> {
    const SHAPE: &str = r#"{"model": PATH, "output": PATH, "config": {KEY: VALUE, …}}"#;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "the request body is empty: send a JSON object {SHAPE}"
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON ({e})")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object {SHAPE}, got {}",
            kind_of(&value)
        )));
    };
    if let Some(unknown) = fields.keys().find(|k| !JOB_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field '{unknown}': a job takes {}",
            JOB_FIELDS.join(", ")
        )));
    }
    let mut path = |name: &str| match fields.remove(name) {
        Some(Value::String(text)) => Ok(text),
        None => Err(ApiError::bad_request(format!(
            "missing field '{name}': the {name}'s path under the server's root"
        ))),
        Some(other) => Err(ApiError::bad_request(format!(
            "field '{name}' must be a string (a path under the server's root), got {}",
            kind_of(&other)
        ))),
    };
    let model = path("model")?;
    let output = path("output")?;
    let config = match fields.remove("config") {
        None => Map::new(),
        Some(Value::Object(config)) => config,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "field 'config' must be an object of configuration keys (a YAML config \
                 file's), got {}",
                kind_of(&other)
            )));
        }
    };
    Ok(JobRequest {
        model,
        output,
        config,
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn openapi_describes_exactly_the_routes_served() {
        let spec: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(spec["openapi"], "3.1.0");
        let mut described = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if method != "parameters" {
                    described.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = routes()
            .listed
            .iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        assert_eq!(described, served);
    }

    #[test]
    fn job_bodies_are_refused_naming_the_field() {
        let refused = |body: &str| job_request(body.as_bytes()).unwrap_err().message;
        assert!(refused("").starts_with("the request body is empty"));
        assert!(refused("{\"model\": ").starts_with("the request body is not JSON"));
        assert!(refused("[1]").ends_with("got an array"));
        assert_eq!(
            refused(r#"{"output": "o"}"#),
            "missing field 'model': the model's path under the server's root"
        );
        assert!(refused(r#"{"model": "m", "output": 3}"#).starts_with("field 'output' must"));
        assert!(refused(r#"{"model": "m", "output": "o", "config": []}"#).contains("'config'"));
        assert!(refused(r#"{"model": "m", "output": "o", "x": 1}"#).contains("'x'"));
        let ok =
            job_request(br#"{"model": "m", "output": "o", "config": {"bit_width": 8}}"#).unwrap();
        assert_eq!((ok.model.as_str(), ok.output.as_str()), ("m", "o"));
        assert_eq!(ok.config["bit_width"], 8);
    }

    /// One HTTP/1.1 request over a fresh connection: the status and the body.
    async fn call(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[tokio::test]
    async fn readyz_says_503_once_jobs_stop_and_new_jobs_are_refused() {
        let dir = std::env::temp_dir().join(format!("arrowquant-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = super::super::ServeArgs {
            flight: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            root: Some(dir.clone()),
            auth_token_file: None,
            max_jobs: 1,
            max_concurrent_queries: 1,
            memory_limit: 1 << 26,
            query_timeout: 10.0,
            max_request_size: 1024,
        };
        let state = ServerState::new(&args).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(state.clone(), listener, async move {
            let _ = stop_rx.await;
        }));
        assert_eq!(call(addr, "GET", "/readyz").await.0, 200);
        let (status, body) = call(addr, "PUT", "/v1/jobs").await;
        assert_eq!(status, 405, "{body}");
        assert!(body.contains("PUT is not a method of /v1/jobs"), "{body}");
        let (status, body) = call(addr, "GET", "/v2").await;
        assert_eq!((status, body.contains("no route GET /v2")), (404, true));
        state.jobs.shutdown().await;
        assert_eq!(
            call(addr, "GET", "/readyz").await,
            (503, r#"{"error":"shutting down"}"#.to_string())
        );
        assert_eq!(call(addr, "GET", "/healthz").await.0, 200);
        let (status, body) = call(addr, "POST", "/v1/jobs").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("shutting down"), "{body}");
        let m = &state.metrics;
        assert_eq!(m.errors.with_label_values(&["limit"]).get(), 1);
        assert_eq!(
            m.http_requests.with_label_values(&["/readyz", "503"]).get(),
            1
        );
        assert_eq!(
            m.http_requests
                .with_label_values(&["unmatched", "404"])
                .get(),
            1
        );
        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
