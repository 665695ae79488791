//! The HTTP routes: the page, the JSON API, request logging and JSON errors for every failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use image::RgbImage;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::AppState;
use crate::models::{CaptionJob, Job, JobKind, SearchJob, VqaJob};
use crate::queue::Announced;

/// The demo page: one file, inline CSS and JavaScript, no external resource.
const PAGE: &str = include_str!("page.html");

/// Answers a VQA request returns unless it asks for another number (`top`).
pub const DEFAULT_TOP: usize = 5;

/// Results a search returns unless it asks for another number (`k`).
pub const DEFAULT_K: usize = 5;

/// The routes over `state`.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_upload_bytes;
    Router::new()
        .route("/", get(page))
        .route("/v1/health", get(health))
        .route("/v1/info", get(info))
        .route("/v1/vqa", post(vqa))
        .route("/v1/caption", post(caption))
        .route("/v1/search", get(search))
        .route("/v1/images/{index}", get(image_file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// An error answer: the status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "status": self.status.as_u16()});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

/// One line per request on stderr: method, path (no query: it may hold user text), status,
/// milliseconds.
async fn log_request(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    eprintln!(
        "{method} {path} {} {:.1} ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1e3
    );
    response
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn info(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    axum::Json(json!({
        "name": "tuwen",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": state.backend,
        "precision": state.precision,
        "threads": state.threads,
        "models": state.served,
        "limits": state.limits,
        "batching": {
            "max_batch": state.batching.max_batch,
            "max_wait_ms": state.batching.max_wait.as_secs_f64() * 1e3,
        },
        "batches": state.queue.stats(),
        "in_flight": state.limits.max_concurrent - state.permits.available_permits(),
    }))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not accept {}",
            request.uri().path(),
            request.method()
        ),
    )
}

impl AppState {
    /// A slot among the `max_concurrent` model requests, or 429.
    fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests in progress (the limit is {}); retry later",
                    self.limits.max_concurrent
                ),
            )
        })
    }

    /// Queues the announced job and waits for its answer.
    async fn submit<T>(
        &self,
        coming: Announced<'_, Job>,
        job: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Job,
    ) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        coming.push(job(reply)).map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        })?;
        match answer.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
            Err(_) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model failed on this request (see the server log)",
            )),
        }
    }

    /// The text field `name` of `form` trimmed, checked against the length limit.
    fn text<'f>(&self, form: &'f Form, name: &str) -> Result<&'f str, ApiError> {
        let text = form
            .fields
            .get(name)
            .map(|t| t.trim())
            .ok_or_else(|| ApiError::bad_request(format!("missing form field '{name}'")))?;
        self.check_text(text, name)?;
        Ok(text)
    }

    fn check_text(&self, text: &str, name: &str) -> Result<(), ApiError> {
        if text.is_empty() {
            return Err(ApiError::bad_request(format!("'{name}' is empty")));
        }
        let chars = text.chars().count();
        if chars > self.limits.max_question_chars {
            return Err(ApiError::bad_request(format!(
                "'{name}' has {chars} characters; the limit is {}",
                self.limits.max_question_chars
            )));
        }
        Ok(())
    }

    /// The uploaded image decoded off the async threads, one decode per CPU at a time, within
    /// the pixel limit.
    async fn image(&self, upload: Upload) -> Result<RgbImage, ApiError> {
        let max_pixels = self.limits.max_pixels;
        let decoding = Arc::clone(&self.decodes)
            .acquire_owned()
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _decoding = decoding;
            decode_upload(&upload.name, &upload.bytes, max_pixels)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    }

    /// The multipart form of a request, read within the body timeout.
    async fn form(
        &self,
        headers: &HeaderMap,
        multipart: Result<Multipart, MultipartRejection>,
        allowed: &[&str],
    ) -> Result<Form, ApiError> {
        let seconds = self.limits.read_timeout_secs;
        tokio::time::timeout(
            std::time::Duration::from_secs(seconds),
            read_form(headers, multipart, allowed),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {seconds} s"),
            )
        })?
    }
}

/// Decodes an upload like `tuwen_vision::load_rgb` decodes a file, refusing more than
/// `max_pixels` before decoding.
fn decode_upload(name: &str, bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ApiError> {
    let label = PathBuf::from(format!("upload '{name}'"));
    let too_large = |message: String| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message);
    let error = |e: tuwen_vision::ImageError| match e {
        tuwen_vision::ImageError::TooLarge { .. } => too_large(e.to_string()),
        e => ApiError::bad_request(e.to_string()),
    };
    let (width, height) = tuwen_vision::image_dimensions(bytes, &label).map_err(error)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(too_large(format!(
            "{}: {width} x {height} = {pixels} pixels; the limit is {max_pixels}",
            label.display()
        )));
    }
    tuwen_vision::decode_rgb(bytes, &label).map_err(error)
}

/// An uploaded file: its name (for errors) and bytes.
struct Upload {
    name: String,
    bytes: Bytes,
}

/// A parsed multipart form: the image file and the text fields.
struct Form {
    image: Option<Upload>,
    fields: BTreeMap<String, String>,
}

impl Form {
    /// The image file (400 when missing).
    fn upload(&mut self) -> Result<Upload, ApiError> {
        self.image
            .take()
            .ok_or_else(|| ApiError::bad_request("missing file field 'image'"))
    }

    /// The field `name` as a number in `1..=max`, `default` when absent.
    fn number(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        parse_count(
            self.fields.get(name).map(String::as_str),
            name,
            default,
            max,
        )
    }
}

fn parse_count(
    value: Option<&str>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => {
            let shown: String = value.chars().take(32).collect();
            let more = if shown.len() < value.len() { "..." } else { "" };
            Err(ApiError::bad_request(format!(
                "'{name}' must be a whole number from 1 to {max}; got '{shown}{more}'"
            )))
        }
    }
}

/// Reads a `multipart/form-data` body with a file field `image` and the text fields `allowed`.
async fn read_form(
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    allowed: &[&str],
) -> Result<Form, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected a multipart/form-data body with an 'image' file and the fields {}; \
                 got content type '{content_type}'",
                allowed.join(", ")
            ),
        ));
    }
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("malformed multipart body: {}", e.body_text()),
        )
    })?;
    let malformed = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            e.status(),
            format!("malformed multipart body: {}", e.body_text()),
        )
    };
    let mut form = Form {
        image: None,
        fields: BTreeMap::new(),
    };
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            let name = field.file_name().unwrap_or("image").to_string();
            let bytes = field.bytes().await.map_err(malformed)?;
            if form.image.replace(Upload { name, bytes }).is_some() {
                return Err(ApiError::bad_request("more than one 'image' field"));
            }
        } else if allowed.contains(&name.as_str()) {
            let text = field.text().await.map_err(malformed)?;
            if form.fields.insert(name.clone(), text).is_some() {
                return Err(ApiError::bad_request(format!(
                    "more than one '{name}' field"
                )));
            }
        } else {
            return Err(ApiError::bad_request(format!(
                "unknown form field '{name}' (expected image, {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(form)
}

/// `POST /v1/vqa`: multipart `image`, `question`, optional `top` -> the best answers.
async fn vqa(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult {
    let slot = state.permit()?;
    let Some(served) = &state.served.vqa else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no VQA model (start it with --vqa RUN)",
        ));
    };
    let mut form = state
        .form(&headers, multipart, &["question", "top"])
        .await?;
    let question = state.text(&form, "question")?.to_string();
    let top = form.number("top", DEFAULT_TOP.min(served.answers), served.answers)?;
    let upload = form.upload()?;
    let coming = state.queue.announce(JobKind::Vqa);
    let image = state.image(upload).await?;
    let answers = state
        .submit(coming, |reply| {
            Job::Vqa(VqaJob {
                image,
                question: question.clone(),
                top,
                reply,
                slot,
            })
        })
        .await?;
    Ok(axum::Json(
        json!({"question": question, "answers": answers}),
    ))
}

/// `POST /v1/caption`: multipart `image`, optional `beams` -> a caption.
async fn caption(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult {
    let slot = state.permit()?;
    if state.served.caption.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no captioning model (start it with --caption RUN)",
        ));
    }
    let mut form = state.form(&headers, multipart, &["beams"]).await?;
    let beams = form.number("beams", 1, state.limits.max_beams)?;
    let upload = form.upload()?;
    let coming = state.queue.announce(JobKind::Caption(beams));
    let image = state.image(upload).await?;
    let caption = state
        .submit(coming, |reply| {
            Job::Caption(CaptionJob {
                image,
                beams,
                reply,
                slot,
            })
        })
        .await?;
    Ok(axum::Json(json!({"caption": caption, "beams": beams})))
}

/// The query of `GET /v1/search`.
#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: Option<String>,
    k: Option<String>,
}

/// `GET /v1/search?q=TEXT&k=5`: the served images ranked for the text.
async fn search(
    State(state): State<Arc<AppState>>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult {
    let slot = state.permit()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if state.served.search.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this server searches no image folder (start it with --images DIR)",
        ));
    }
    let text = query.q.as_deref().map(str::trim).unwrap_or("").to_string();
    state.check_text(&text, "q")?;
    let k = parse_count(query.k.as_deref(), "k", DEFAULT_K, state.limits.max_k)?;
    let coming = state.queue.announce(JobKind::Search);
    let hits = state
        .submit(coming, |reply| {
            Job::Search(SearchJob {
                query: text.clone(),
                k,
                reply,
                slot,
            })
        })
        .await?;
    let results: Vec<Value> = hits
        .iter()
        .map(|h| {
            let name = state
                .images
                .get(h.index)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            json!({
                "rank": h.rank,
                "image": format!("/v1/images/{}", h.index),
                "index": h.index,
                "name": name,
                "itm": h.itm,
                "itc": h.itc,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "query": text,
        "k": k,
        "searched": state.images.len(),
        "results": results,
    })))
}

/// `GET /v1/images/{i}`: image `i` of the searched folder.
async fn image_file(
    State(state): State<Arc<AppState>>,
    index: Result<Path<usize>, PathRejection>,
) -> Result<Response, ApiError> {
    let path = index
        .ok()
        .and_then(|Path(i)| state.images.get(i))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no such image: the folder has {} (0 to {})",
                    state.images.len(),
                    state.images.len().saturating_sub(1)
                ),
            )
        })?;
    let bytes = tokio::fs::read(path).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", path.display()),
        )
    })?;
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let content_type = if png { "image/png" } else { "image/jpeg" };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
