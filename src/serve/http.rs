//! The HTTP API: `/healthz`, `/readyz`, `/metrics`, `POST /infer`, `/results/latest`.
//! Errors are JSON (`{"error": ..., "status": ...}`) with a matching status code.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::connections;
use super::dispatch::Latest;
use super::job::{Job, Part, Payload, Refusal};
use super::metrics::{Metrics, SourceMetrics};
use super::model_slot::ModelSlot;
use super::multipart;
use super::queue::{BoundedQueue, Pushed};
use crate::sink::health::{WriteHealth, now_ms};

/// What the API sees of one source's pipeline.
pub struct SourceHandle {
    pub name: String,
    pub queue: Arc<BoundedQueue<Job>>,
    pub counters: Arc<SourceMetrics>,
    /// Accepts uploads (`http = {}` in its table).
    pub uploads: bool,
    /// Its model, whose card says which inputs an upload must have.
    pub slot: Arc<ModelSlot>,
    /// The input a raw (not multipart) body is; `None` when the model's inputs must be
    /// named by multipart parts.
    pub input: Option<String>,
}

pub struct ApiState {
    pub sources: Vec<SourceHandle>,
    /// The sinks configured, whose health `/readyz` reports.
    pub jsonl: bool,
    pub mqtt: bool,
    pub metrics: Arc<Metrics>,
    pub latest: Arc<Latest>,
    pub token: Option<String>,
}

/// How long an upload waits for its result to be decided and written to every sink before
/// the client is told to retry (a sink that cannot write, a full disk, holds the answer).
const INFER_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/infer", post(infer))
        .route("/results/latest", get(latest))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint (see /healthz, /readyz, /metrics, /infer, /results/latest)",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Outside the body limit, so a request without the token is turned away before its
        // body is read.
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Outermost: from the complete head on, the connection's timeouts wait for the answer.
        .layer(middleware::from_fn(connections::while_answering))
        .with_state(state)
}

pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "status": self.status.as_u16() });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Health probes stay open so an orchestrator needs no secret; everything else needs the token.
async fn require_token(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(request).await;
    }
    match authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <token>`",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let mut ready = true;
    let mut sources = serde_json::Map::new();
    for s in state.sources.iter().map(|s| &s.counters) {
        let up = s.up.load(Relaxed);
        ready &= up;
        sources.insert(s.name.clone(), serde_json::json!({ "up": up, "state": s.state() }));
    }
    let mut sinks = serde_json::Map::new();
    let writing = |h: &WriteHealth| {
        let failing_for_ms = h.failing_for_ms();
        let state = serde_json::json!({
            "writing": failing_for_ms.is_none(),
            "failing_for_ms": failing_for_ms,
            "waiting": h.waiting.load(Relaxed),
        });
        (failing_for_ms.is_none(), state)
    };
    if state.jsonl {
        let (ok, jsonl) = writing(&state.metrics.jsonl.health);
        ready &= ok;
        sinks.insert("jsonl".into(), jsonl);
    }
    if state.mqtt {
        let mqtt = &state.metrics.mqtt;
        let (spool_ok, spool) = writing(&mqtt.spool);
        let since = mqtt.disconnected_since_ms.load(Relaxed);
        let disconnected_for_ms = (since != 0).then(|| now_ms().saturating_sub(since));
        let broker_ok = disconnected_for_ms.is_none_or(|ms| ms < BROKER_GRACE.as_millis() as u64);
        ready &= spool_ok && broker_ok;
        sinks.insert(
            "mqtt".into(),
            serde_json::json!({
                "connected": mqtt.connected.load(Relaxed),
                "disconnected_for_ms": disconnected_for_ms,
                "spool": spool,
            }),
        );
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "ready": ready, "sources": sources, "sinks": sinks });
    (status, axum::Json(body)).into_response()
}

/// How long the MQTT broker may be unreachable before `/readyz` says not ready: results
/// spool meanwhile, and a broker restart should not page anyone.
const BROKER_GRACE: Duration = Duration::from_secs(60);

async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    for s in &state.sources {
        s.counters.queue_depth.store(s.queue.len() as u64, Relaxed);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response())
}

#[derive(Deserialize)]
struct InferQuery {
    source: Option<String>,
}

/// What `POST /infer` makes of a request before it queues the upload: the query, the body
/// and the upload source that takes it (its index in `sources`), and the frame's parts: the
/// body itself for the source's one input, or one multipart part per input. Pure, so that it
/// is fuzzed (tests/fuzz, target `infer_body`).
pub fn upload_target(
    sources: &[SourceHandle],
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(usize, Vec<Part>), ApiError> {
    let Query(query) = Query::<InferQuery>::try_from_uri(uri)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "upload larger than http.max_body_bytes")
        } else {
            ApiError::new(status, e.body_text())
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty body: send the image bytes (curl --data-binary @frame.png)",
        ));
    }
    let uploads: Vec<usize> = (0..sources.len()).filter(|&i| sources[i].uploads).collect();
    let index = match &query.source {
        Some(name) => sources.iter().position(|s| &s.name == name && s.uploads).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no upload source named {name:?} (configured with http = {{}})"),
            )
        })?,
        None if uploads.len() == 1 => uploads[0],
        None if uploads.is_empty() => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no source accepts uploads: add one with http = {} to the config",
            ));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "several upload sources: say which with ?source=NAME",
            ));
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let boundary = multipart::boundary(content_type).map_err(|e| bad(e.to_string()))?;
    let source = &sources[index];
    let loaded = source.slot.current();
    let inputs: Vec<_> = loaded.model.card.value_inputs().collect();
    let names = || inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
    let parts = match boundary {
        Some(boundary) => {
            let mut parts: Vec<Part> = Vec::new();
            for part in multipart::parse(&body, &boundary).map_err(|e| bad(e.to_string()))? {
                if !inputs.iter().any(|i| i.name == part.name) {
                    return Err(bad(format!(
                        "part {:?} is not an input of the model of source {}; its inputs are {}",
                        part.name,
                        source.name,
                        names()
                    )));
                }
                if parts.iter().any(|p| p.input == part.name) {
                    return Err(bad(format!("part {:?} is given twice; one part per input", part.name)));
                }
                if part.body.is_empty() {
                    return Err(bad(format!("part {:?} is empty: send the image bytes", part.name)));
                }
                let origin = part.filename.filter(|f| !f.is_empty()).unwrap_or_else(|| "upload".into());
                let payload = Payload::Encoded(part.body.to_vec());
                parts.push(Part { input: part.name, origin, payload });
            }
            parts
        }
        None => match &source.input {
            Some(input) => vec![Part {
                input: input.clone(),
                origin: "upload".into(),
                payload: Payload::Encoded(body.to_vec()),
            }],
            None => {
                return Err(bad(format!(
                    "the model of source {} has inputs {}: send multipart/form-data with one part per input \
                     (curl -F {}=@a.png ...)",
                    source.name,
                    names(),
                    inputs.first().map_or("NAME", |i| i.name.as_str())
                )));
            }
        },
    };
    let missing: Vec<&str> = inputs
        .iter()
        .filter(|i| !i.optional && !parts.iter().any(|p| p.input == i.name))
        .map(|i| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "no part for input {}: the model needs it in every frame (it is not optional); send one \
             multipart part per input ({})",
            missing.join(", "),
            names()
        )));
    }
    Ok((index, parts))
}

async fn infer(
    State(state): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (index, parts) = upload_target(&state.sources, &uri, &headers, body)?;
    let source = &state.sources[index];
    let (tx, rx) = oneshot::channel();
    let job = Job::new(index, "upload".into(), parts, Some(tx));
    match source.queue.push(job) {
        Pushed::Queued => {}
        Pushed::DroppedOldest(old) => {
            source.counters.dropped.fetch_add(1, Relaxed);
            old.refuse(Refusal::Displaced);
        }
        Pushed::Refused(_) => {
            source.counters.dropped.fetch_add(1, Relaxed);
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue full: retry later"));
        }
        Pushed::Closed(_) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down: retry later"));
        }
    }
    match tokio::time::timeout(INFER_TIMEOUT, rx).await {
        Ok(Ok(Ok(reply))) => {
            let status = if reply.decided { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            Ok((status, [(header::CONTENT_TYPE, "application/json")], reply.json.to_string()).into_response())
        }
        Ok(Ok(Err(why))) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why.to_string())),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon stopped before the result was written",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "no result written within 30 s (a long queue, or a sink that cannot write: see /readyz); \
             a result decided later is still written",
        )),
    }
}

#[derive(Deserialize)]
struct LatestQuery {
    n: Option<usize>,
    source: Option<String>,
}

async fn latest(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<LatestQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let source =
        match &query.source {
            Some(name) => {
                Some(state.sources.iter().position(|s| &s.name == name).ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, format!("no source named {name:?}"))
                })?)
            }
            None => None,
        };
    let lines = state.latest.get(query.n.unwrap_or(1).clamp(1, 1000), source);
    let body = format!("[{}]", lines.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(","));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
