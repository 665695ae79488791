//! `tuwen serve` end to end: tiny pretrained, VQA and captioning runs served by the binary on a
//! free loopback port; every endpoint checked against the CLI commands that share its loading
//! path, every limit and malformed request answered with a JSON 4xx while the server keeps
//! serving, 32 concurrent clients batched and all answered as they are alone, graceful shutdown
//! on SIGTERM, and the page driven in headless Chromium (chromedriver) with a screenshot saved.
//!
//! The HTTP client here is a few lines over `TcpStream` on purpose: the tests send malformed
//! requests (bad multipart, wrong content types) that a client library would refuse to build.

mod common;

use common::{TINY_CAPTION, TINY_PRETRAIN, TINY_VQA, ok, scenes, tuwen};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The runs every test serves, trained once per test binary.
struct Runs {
    _tmp: tempfile::TempDir,
    pre: PathBuf,
    vqa: PathBuf,
    caption: PathBuf,
    /// Five scene PNGs, searched.
    images: PathBuf,
    /// The longest caption of each scene.
    captions: Vec<String>,
    /// easy_vqa test images with a question each.
    photos: Vec<(PathBuf, &'static str)>,
}

const QUESTIONS: [&str; 4] = [
    "what color is the shape?",
    "what shape is in the image?",
    "is there a circle?",
    "what is the color of the shape?",
];

fn train(args: &[&str], config: &str, dir: &Path, name: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let run = dir.join(name);
    ok(&tuwen()
        .args(args)
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap());
    run
}

/// The runs, or `None` (after `skip_or_fail`) without the easy_vqa asset.
fn runs(test: &str) -> Option<&'static Runs> {
    static RUNS: OnceLock<Option<Runs>> = OnceLock::new();
    let runs = RUNS.get_or_init(|| {
        let photos: Vec<(PathBuf, &str)> = (0..8)
            .map(|i| {
                tuwen_assets::locate("easy_vqa", &format!("test/images/{i}.png"))
                    .map(|p| (p, QUESTIONS[i % QUESTIONS.len()]))
            })
            .collect::<Result<_, _>>()
            .ok()?;
        let tmp = tempfile::tempdir().unwrap();
        // An ITC head, for the search.
        let pretrain = TINY_PRETRAIN.replace("heads = 2\n", "heads = 2\nitc_dim = 16\n");
        let pre = train(&["train"], &pretrain, tmp.path(), "pre");
        let from = pre.to_str().unwrap();
        let vqa = train(
            &["finetune", "--task", "vqa", "--from", from],
            TINY_VQA,
            tmp.path(),
            "vqa",
        );
        let caption = train(
            &["finetune", "--task", "caption", "--from", from],
            TINY_CAPTION,
            tmp.path(),
            "caption",
        );
        let images = tmp.path().join("images");
        let captions = scenes(&images, 5);
        Some(Runs {
            _tmp: tmp,
            pre,
            vqa,
            caption,
            images,
            captions,
            photos,
        })
    });
    if runs.is_none() {
        tuwen_testkit::skip_or_fail(test, "the easy_vqa asset is missing (cargo xtask assets)");
    }
    runs.as_ref()
}

/// A `tuwen serve` process on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _index: tempfile::TempDir,
}

impl Server {
    /// Serves the pretrained run's search, the VQA run and the captioning run.
    fn start(runs: &Runs, extra: &[&str]) -> Self {
        let mut args = vec![
            "--run",
            runs.pre.to_str().unwrap(),
            "--vqa",
            runs.vqa.to_str().unwrap(),
            "--caption",
            runs.caption.to_str().unwrap(),
            "--images",
            runs.images.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::with(&args)
    }

    /// `tuwen serve ARGS` on a free port with its own index directory.
    fn with(args: &[&str]) -> Self {
        let index = tempfile::tempdir().unwrap();
        let mut child = tuwen()
            .arg("serve")
            .args(args)
            .arg("--index")
            .arg(index.path())
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!("no address: {line:?}\n{}", log.lock().unwrap());
        };
        Self {
            addr: addr.parse().unwrap(),
            child,
            log,
            reader: Some(reader),
            _index: index,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit status and the log.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        ok(&std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .output()
            .unwrap());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The log is complete once the reader has seen the end of stderr.
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: HTTP {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON of a 200 answer (checked to be one; the body is the message otherwise).
    fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        self.json()
    }

    /// The JSON error of a 4xx answer (checked to be one).
    fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.headers
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{}",
            self.headers
        );
        self.json()["error"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    let stream = begin(addr, method, path, content_type, body.len());
    finish(stream, body)
}

/// Connects and sends the request line and headers of a request with a `length`-byte body.
fn begin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    length: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {length}\r\n"
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

/// Sends (the rest of) the body and reads the response.
fn finish(mut stream: TcpStream, body: &[u8]) -> Reply {
    // A server refusing an oversized body may answer and close before reading all of it.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)));
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 4 + size..];
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None, &[])
}

const BOUNDARY: &str = "tuwen-test-boundary-7d3f";

/// A multipart body: text fields, then the image file (when given).
fn multipart(fields: &[(&str, &str)], image: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n\
                 {value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((file, bytes)) = image {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"{file}\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn post(addr: SocketAddr, path: &str, fields: &[(&str, &str)], image: Option<&Path>) -> Reply {
    let bytes = image.map(|p| std::fs::read(p).unwrap());
    let image = image.zip(bytes.as_deref()).map(|(p, b)| {
        (
            p.file_name().unwrap().to_str().unwrap().to_string(),
            b.to_vec(),
        )
    });
    let body = multipart(
        fields,
        image.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    request(addr, "POST", path, Some(&ct), &body)
}

fn ask(addr: SocketAddr, image: &Path, question: &str) -> Reply {
    post(addr, "/v1/vqa", &[("question", question)], Some(image))
}

/// `(answer, score)` pairs of a VQA JSON answer list.
fn answers(list: &Value) -> Vec<(String, f64)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["answer"].as_str().unwrap().to_string(),
                a["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The answers `tuwen vqa --json --precision PRECISION` gives for `photo` and `question` with
/// the VQA run.
fn cli_answers(runs: &Runs, photo: &Path, question: &str, precision: &str) -> Vec<(String, f64)> {
    let out = tuwen()
        .args(["vqa", "--run"])
        .arg(&runs.vqa)
        .args(["--question", question, "--json", "--precision", precision])
        .arg(photo)
        .output()
        .unwrap();
    let line: Value = serde_json::from_str(ok(&out).trim()).unwrap();
    answers(&line["answers"])
}

fn assert_same_answers(got: &[(String, f64)], want: &[(String, f64)]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for ((a, s), (b, t)) in got.iter().zip(want) {
        assert_eq!(a, b, "{got:?} vs {want:?}");
        assert!((s - t).abs() < 1e-4, "{got:?} vs {want:?}");
    }
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn every_endpoint_answers_as_the_cli_commands_do() {
    let Some(runs) = runs("every_endpoint_answers_as_the_cli_commands_do") else {
        return;
    };
    let server = Server::start(runs, &[]);
    let addr = server.addr;

    assert_eq!(get(addr, "/v1/health").json()["status"], "ok");
    let info = get(addr, "/v1/info").json();
    assert_eq!(info["models"]["vqa"]["answers"], 13, "{info}");
    assert_eq!(info["models"]["caption"]["architecture"], "visualbert");
    assert_eq!(info["models"]["search"]["images"], 5);
    assert_eq!(info["backend"], "flex");
    assert_eq!(info["limits"]["max_concurrent"], 32);
    assert_eq!(info["in_flight"], 0);

    // The page: HTML, every control the browser test uses, nothing fetched from elsewhere.
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    for id in [
        "image-input",
        "question",
        "ask",
        "answers",
        "caption-btn",
        "query",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
    }
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));

    // VQA: the answers `tuwen vqa` gives for the same image and question.
    let (photo, question) = &runs.photos[0];
    let served = answers(&ask(addr, photo, question).ok()["answers"]);
    assert_same_answers(&served, &cli_answers(runs, photo, question, "f32"));
    let two = post(
        addr,
        "/v1/vqa",
        &[("question", question), ("top", "2")],
        Some(photo),
    );
    assert_same_answers(&answers(&two.json()["answers"]), &served[..2]);

    // Captions: those of `tuwen caption`, greedy and with 3 beams.
    for beams in ["1", "3"] {
        let reply = post(addr, "/v1/caption", &[("beams", beams)], Some(photo)).ok();
        let cli = ok(&tuwen()
            .args(["caption", "--run"])
            .arg(&runs.caption)
            .args(["--beam", beams, "--json"])
            .arg(photo)
            .output()
            .unwrap());
        let cli: Value = serde_json::from_str(cli.trim()).unwrap();
        assert_eq!(reply["caption"], cli["caption"], "beams {beams}");
    }

    // Search: the ranking of `tuwen retrieve`, each result's image served.
    let query = &runs.captions[0];
    let found = get(addr, &format!("/v1/search?k=3&q={}", query_escape(query))).json();
    let cli: Value = serde_json::from_str(
        ok(&tuwen()
            .args(["retrieve", "--run"])
            .arg(&runs.pre)
            .arg("--images")
            .arg(&runs.images)
            .args(["--query", query, "--k", "3", "--json"])
            .arg("--index")
            .arg(runs._tmp.path().join("cli-index"))
            .output()
            .unwrap())
        .trim(),
    )
    .unwrap();
    let results = found["results"].as_array().unwrap();
    assert_eq!((results.len(), found["searched"].as_u64()), (3, Some(5)));
    for (got, want) in results.iter().zip(cli["results"].as_array().unwrap()) {
        assert_eq!(got["index"], want["index"], "{found} vs {cli}");
        assert!((got["itm"].as_f64().unwrap() - want["itm"].as_f64().unwrap()).abs() < 1e-4);
        let image = get(addr, got["image"].as_str().unwrap());
        assert_eq!(image.status, 200);
        assert!(image.headers.contains("image/png") && image.body.starts_with(b"\x89PNG"));
        assert_eq!(got["name"], format!("{}.png", got["index"]));
    }

    // Every request is logged.
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    for line in [
        "POST /v1/vqa 200",
        "POST /v1/caption 200",
        "GET /v1/search 200",
        "shut down",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
}

/// A PNG of `width` x `height` grey pixels.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([128, 128, 128]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// `tuwen serve --precision bf16` answers as `tuwen vqa --precision bf16` does (its workers
/// run inside a bf16 scope) and says so in `/v1/info`.
#[test]
fn a_bf16_server_answers_as_the_bf16_cli_does() {
    let Some(runs) = runs("a_bf16_server_answers_as_the_bf16_cli_does") else {
        return;
    };
    if !tuwen_fusion::precision::cpu_has_bf16() {
        // Refused at start (tested for `tuwen vqa` in tests/vqa.rs): nothing to serve.
        eprintln!("this CPU lacks AVX512-BF16: no bf16 server");
        return;
    }
    let server = Server::start(runs, &["--precision", "bf16"]);
    let addr = server.addr;
    assert_eq!(get(addr, "/v1/info").json()["precision"], "bf16");
    let (photo, question) = &runs.photos[0];
    let served = answers(&ask(addr, photo, question).ok()["answers"]);
    assert_same_answers(&served, &cli_answers(runs, photo, question, "bf16"));
    assert_ne!(
        served,
        cli_answers(runs, photo, question, "f32"),
        "the server answered in f32"
    );
}

#[test]
fn every_limit_and_malformed_request_gets_a_json_error_and_the_server_keeps_serving() {
    let Some(runs) =
        runs("every_limit_and_malformed_request_gets_a_json_error_and_the_server_keeps_serving")
    else {
        return;
    };
    let server = Server::start(
        runs,
        &[
            "--max-upload-bytes",
            "200000",
            "--max-pixels",
            "250000",
            "--max-question-chars",
            "40",
        ],
    );
    let addr = server.addr;
    let (photo, question) = &runs.photos[0];
    let photo_bytes = std::fs::read(photo).unwrap();
    let form_ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let vqa_with = |fields: &[(&str, &str)], image: Option<(&str, &[u8])>| {
        request(
            addr,
            "POST",
            "/v1/vqa",
            Some(&form_ct),
            &multipart(fields, image),
        )
    };
    let photo_part = Some(("photo.png", photo_bytes.as_slice()));

    let e = vqa_with(&[("question", question)], None).error(400);
    assert!(e.contains("missing file field 'image'"), "{e}");
    let e = vqa_with(&[], photo_part).error(400);
    assert!(e.contains("missing form field 'question'"), "{e}");
    let e = vqa_with(&[("question", "   ")], photo_part).error(400);
    assert!(e.contains("empty"), "{e}");
    let long = "what ".repeat(9);
    let e = vqa_with(&[("question", &long)], photo_part).error(400);
    assert!(
        e.contains("44 characters") && e.contains("limit is 40"),
        "{e}"
    );
    let e = vqa_with(&[("question", question), ("colour", "red")], photo_part).error(400);
    assert!(e.contains("unknown form field 'colour'"), "{e}");
    let e = vqa_with(&[("question", question), ("top", "0")], photo_part).error(400);
    assert!(
        e.contains("'top' must be a whole number from 1 to 13"),
        "{e}"
    );

    // Not multipart, or multipart that does not parse.
    let json_body = br#"{"question": "what color?"}"#;
    let e = request(addr, "POST", "/v1/vqa", Some("application/json"), json_body).error(415);
    assert!(
        e.contains("multipart/form-data") && e.contains("application/json"),
        "{e}"
    );
    let e = request(addr, "POST", "/v1/vqa", None, json_body).error(415);
    assert!(e.contains("content type ''"), "{e}");
    let garbage = b"--elsewhere\r\nno headers here\r\n\r\n\x00\x01";
    let e = request(addr, "POST", "/v1/vqa", Some(&form_ct), garbage).error(400);
    assert!(e.contains("malformed multipart body"), "{e}");
    let e = request(
        addr,
        "POST",
        "/v1/vqa",
        Some("multipart/form-data"),
        &multipart(&[("question", question)], photo_part),
    )
    .error(400);
    assert!(e.contains("malformed multipart body"), "{e}");

    // Bad images are named; too many pixels or bytes are 413.
    let e = vqa_with(
        &[("question", question)],
        Some(("notes.png", b"not an image")),
    )
    .error(400);
    assert!(e.contains("upload 'notes.png'"), "{e}");
    let truncated = &photo_bytes[..photo_bytes.len() / 3];
    let e = vqa_with(&[("question", question)], Some(("cut.png", truncated))).error(400);
    assert!(e.contains("upload 'cut.png'"), "{e}");
    let big = png(600, 600);
    let e = vqa_with(&[("question", question)], Some(("big.png", &big))).error(413);
    assert!(
        e.contains("600 x 600 = 360000 pixels") && e.contains("250000"),
        "{e}"
    );
    let huge = vec![7u8; 300_000];
    let e = vqa_with(&[("question", question)], Some(("huge.png", &huge))).error(413);
    assert!(!e.is_empty());

    // Captions and search check their parameters.
    let e = post(addr, "/v1/caption", &[("beams", "99")], Some(photo)).error(400);
    assert!(
        e.contains("'beams' must be a whole number from 1 to 8"),
        "{e}"
    );
    let e = get(addr, "/v1/search?q=red&k=0").error(400);
    assert!(e.contains("'k' must be"), "{e}");
    let e = get(addr, "/v1/search?q=red&k=lots").error(400);
    assert!(e.contains("got 'lots'"), "{e}");
    let e = get(addr, "/v1/search?k=3").error(400);
    assert!(e.contains("'q' is empty"), "{e}");
    let e = get(addr, &format!("/v1/search?q={}", "red+".repeat(20))).error(400);
    assert!(e.contains("limit is 40"), "{e}");

    // Unknown things.
    let e = get(addr, "/v1/nothing").error(404);
    assert!(e.contains("/v1/nothing"), "{e}");
    let e = get(addr, "/v1/vqa").error(405);
    assert!(e.contains("GET"), "{e}");
    assert!(get(addr, "/v1/images/5").error(404).contains("has 5"));
    get(addr, "/v1/images/-1").error(404);

    // Still serving, and every refusal was logged.
    let reply = ask(addr, photo, question).ok();
    assert_eq!(reply["answers"].as_array().unwrap().len(), 5);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    for line in [
        "POST /v1/vqa 400",
        "POST /v1/vqa 413",
        "POST /v1/vqa 415",
        "GET /v1/vqa 405",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
}

#[test]
fn thirty_two_concurrent_clients_are_batched_and_each_gets_its_own_answer() {
    let Some(runs) = runs("thirty_two_concurrent_clients_are_batched_and_each_gets_its_own_answer")
    else {
        return;
    };
    let server = Server::start(runs, &["--threads", "2", "--max-wait-ms", "20"]);
    let addr = server.addr;
    // Each (image, question) alone first.
    let alone: Vec<Vec<(String, f64)>> = runs
        .photos
        .iter()
        .map(|(photo, q)| answers(&ask(addr, photo, q).json()["answers"]))
        .collect();
    let clients = 32;
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let (photo, question) = runs.photos[i % runs.photos.len()].clone();
            std::thread::spawn(move || {
                barrier.wait();
                let reply = ask(addr, &photo, question);
                (i, reply.status, reply.body)
            })
        })
        .collect();
    for t in threads {
        let (i, status, body) = t.join().unwrap();
        assert_eq!(
            status,
            200,
            "client {i}: {}",
            String::from_utf8_lossy(&body)
        );
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_same_answers(&answers(&got["answers"]), &alone[i % alone.len()]);
    }
    let batches = get(addr, "/v1/info").json()["batches"].clone();
    assert_eq!(batches["jobs"], runs.photos.len() + clients, "{batches}");
    assert!(
        batches["largest"].as_u64().unwrap() > 1,
        "no batching: {batches}"
    );
}

#[test]
fn requests_over_the_concurrency_limit_get_429_and_none_is_lost() {
    let Some(runs) = runs("requests_over_the_concurrency_limit_get_429_and_none_is_lost") else {
        return;
    };
    let server = Server::start(runs, &["--max-concurrent", "2"]);
    let addr = server.addr;
    let (photo, question) = &runs.photos[1];
    let name = photo.file_name().unwrap().to_str().unwrap();
    let bytes = std::fs::read(photo).unwrap();
    let body = multipart(&[("question", question)], Some((name, bytes.as_slice())));
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    // Two uploads in progress hold the two slots: half their body sent, the rest held back.
    let half = body.len() / 2;
    let slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = begin(addr, "POST", "/v1/vqa", Some(&ct), body.len());
            stream.write_all(&body[..half]).unwrap();
            stream
        })
        .collect();
    wait_for_in_flight(addr, 2);
    let clients = 6;
    let barrier = Arc::new(Barrier::new(clients));
    let refused: Vec<Reply> = (0..clients)
        .map(|_| {
            let (barrier, photo) = (Arc::clone(&barrier), photo.clone());
            std::thread::spawn(move || {
                barrier.wait();
                ask(addr, &photo, question)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for reply in &refused {
        let e = reply.error(429);
        assert!(e.contains("limit is 2"), "{e}");
    }
    // The held requests complete, and capacity comes back.
    for stream in slow {
        finish(stream, &body[half..]).ok();
    }
    wait_for_in_flight(addr, 0);
    assert_eq!(ask(addr, photo, question).status, 200);
    // A client that hangs up mid-upload gives its slot back.
    let mut gone = begin(addr, "POST", "/v1/vqa", Some(&ct), body.len());
    gone.write_all(&body[..half]).unwrap();
    wait_for_in_flight(addr, 1);
    drop(gone);
    wait_for_in_flight(addr, 0);
}

/// Waits (up to 30 s) until `n` model requests are in progress.
fn wait_for_in_flight(addr: SocketAddr, n: u64) {
    let start = Instant::now();
    loop {
        let info = get(addr, "/v1/info").json();
        if info["in_flight"] == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "in flight: {} (waiting for {n})",
            info["in_flight"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_model_that_is_not_served_is_404_and_a_stalled_upload_is_408() {
    let Some(runs) = runs("a_model_that_is_not_served_is_404_and_a_stalled_upload_is_408") else {
        return;
    };
    let server = Server::with(&[
        "--run",
        runs.vqa.to_str().unwrap(),
        "--read-timeout-secs",
        "1",
    ]);
    let addr = server.addr;
    let info = get(addr, "/v1/info").json();
    assert!(info["models"]["caption"].is_null() && info["models"]["search"].is_null());
    let (photo, question) = &runs.photos[0];
    let e = post(addr, "/v1/caption", &[], Some(photo)).error(404);
    assert!(e.contains("--caption RUN"), "{e}");
    let e = get(addr, "/v1/search?q=red").error(404);
    assert!(e.contains("--images DIR"), "{e}");
    assert_eq!(ask(addr, photo, question).status, 200);
    // Half a body, then nothing: 408 after the read timeout, the slot released.
    let name = photo.file_name().unwrap().to_str().unwrap();
    let bytes = std::fs::read(photo).unwrap();
    let body = multipart(&[("question", question)], Some((name, bytes.as_slice())));
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let mut stream = begin(addr, "POST", "/v1/vqa", Some(&ct), body.len());
    stream.write_all(&body[..body.len() / 2]).unwrap();
    let e = finish(stream, &[]).error(408);
    assert!(e.contains("within 1 s"), "{e}");
    wait_for_in_flight(addr, 0);
    // Refused before any model loads: nothing to serve, a bad batch wait.
    let out = tuwen()
        .args(["serve", "--run"])
        .arg(&runs.pre)
        .args(["--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("nothing to serve"),
        "{stderr}"
    );
    let out = tuwen()
        .args(["serve", "--run"])
        .arg(&runs.vqa)
        .args(["--addr", "127.0.0.1:0", "--max-wait-ms", "600000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("batch wait"),
        "{stderr}"
    );
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

#[test]
fn the_page_answers_captions_and_searches_in_headless_chromium() {
    let test = "the_page_answers_captions_and_searches_in_headless_chromium";
    let (Some(chromium), Some(driver)) = (which("chromium"), which("chromedriver")) else {
        return tuwen_testkit::skip_or_fail(
            test,
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
        );
    };
    let Some(runs) = runs(test) else { return };
    let server = Server::start(runs, &[]);
    let (photo, question) = &runs.photos[2];
    let want = answers(&ask(server.addr, photo, question).json()["answers"]);
    let caption = post(server.addr, "/v1/caption", &[("beams", "3")], Some(photo)).json();

    let port = free_port();
    let _driver = Killed(
        std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("test-artifacts")
        .join("serve-page.png");
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(drive(Page {
            driver_url: format!("http://127.0.0.1:{port}"),
            chromium: &chromium,
            url: format!("http://{}/", server.addr),
            photo,
            question,
            search: &runs.captions[0],
            screenshot: &shot,
        }));
    let seen = result.unwrap();
    assert_eq!(seen.top_answer, want[0].0, "{seen:?}");
    assert_eq!(seen.answers, want.len());
    assert_eq!(seen.caption, caption["caption"].as_str().unwrap());
    assert_eq!(seen.results, 5, "k=8 over 5 images: {seen:?}");
    assert!(seen.models.contains("VQA (13 answers)"), "{seen:?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
}

/// A child process killed when dropped (also when the test panics).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Page<'a> {
    driver_url: String,
    chromium: &'a Path,
    url: String,
    photo: &'a Path,
    question: &'a str,
    search: &'a str,
    screenshot: &'a Path,
}

#[derive(Debug)]
struct Seen {
    models: String,
    top_answer: String,
    answers: usize,
    caption: String,
    results: usize,
}

async fn drive(page: Page<'_>) -> Result<Seen, fantoccini::error::CmdError> {
    use fantoccini::{ClientBuilder, Locator};
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": page.chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1200,1000"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&page.driver_url)
        .await
        .expect("a chromedriver session");
    let wait = || client.wait().at_most(Duration::from_secs(120));
    client.goto(&page.url).await?;
    wait()
        .for_element(Locator::Css("#vqa-section:not(.off)"))
        .await?;
    let models = client.find(Locator::Id("models")).await?.text().await?;
    client
        .find(Locator::Id("image-input"))
        .await?
        .send_keys(&page.photo.canonicalize().unwrap().display().to_string())
        .await?;
    client
        .find(Locator::Id("question"))
        .await?
        .send_keys(page.question)
        .await?;
    client.find(Locator::Id("ask")).await?.click().await?;
    let top = wait()
        .for_element(Locator::Css("#answers .answer .label"))
        .await?;
    let top_answer = top.text().await?;
    let answers = client
        .find_all(Locator::Css("#answers .answer"))
        .await?
        .len();
    client
        .find(Locator::Id("caption-btn"))
        .await?
        .click()
        .await?;
    let asked = Instant::now();
    let caption = loop {
        let text = client.find(Locator::Id("caption")).await?.text().await?;
        if !text.is_empty() {
            break text;
        }
        let error = client.find(Locator::Id("error")).await?.text().await?;
        assert!(error.is_empty(), "the page shows an error: {error}");
        assert!(asked.elapsed() < Duration::from_secs(120), "no caption");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client
        .find(Locator::Id("query"))
        .await?
        .send_keys(page.search)
        .await?;
    client
        .find(Locator::Id("search-btn"))
        .await?
        .click()
        .await?;
    wait()
        .for_element(Locator::Css("#results figure img"))
        .await?;
    let results = client
        .find_all(Locator::Css("#results figure"))
        .await?
        .len();
    let png = client.screenshot().await?;
    std::fs::create_dir_all(page.screenshot.parent().unwrap()).unwrap();
    std::fs::write(page.screenshot, png).unwrap();
    client.close().await?;
    Ok(Seen {
        models,
        top_answer,
        answers,
        caption,
        results,
    })
}

/// Requests/s and p50/p99 latency of `POST /v1/vqa` at 1, 8 and 32 concurrent clients on
/// loopback (docs/benchmarks.md): each level sends `max(32, 4 x clients)` requests, or stops
/// after 120 s. `TUWEN_SERVE_BENCH_VQA=RUN` serves that VQA run (default: the tiny test run);
/// `TUWEN_SERVE_BENCH_ARGS` adds `tuwen serve` options (e.g. `--threads 2`).
///
/// `cargo test --workspace --test serve vqa_throughput -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: run it on purpose"]
fn vqa_throughput_at_1_8_and_32_clients() {
    let Some(runs) = runs("vqa_throughput_at_1_8_and_32_clients") else {
        return;
    };
    let vqa = std::env::var_os("TUWEN_SERVE_BENCH_VQA").map_or(runs.vqa.clone(), PathBuf::from);
    let extra = std::env::var("TUWEN_SERVE_BENCH_ARGS").unwrap_or_default();
    let mut args = vec![
        "serve",
        "--run",
        vqa.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
    ];
    args.extend(extra.split_whitespace());
    let mut child = tuwen()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line.trim()["listening on http://".len()..].parse().unwrap();
    let photos = &runs.photos;
    // Warm-up: every image once.
    for (photo, q) in photos {
        assert_eq!(ask(addr, photo, q).status, 200);
    }
    println!("| clients | requests | requests/s | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|");
    for clients in [1usize, 8, 32] {
        let total = (4 * clients).max(32);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let (next, photos) = (Arc::clone(&next), photos.clone());
                std::thread::spawn(move || {
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total || start.elapsed() > Duration::from_secs(120) {
                            return latencies;
                        }
                        let (photo, q) = &photos[i % photos.len()];
                        let sent = Instant::now();
                        assert_eq!(ask(addr, photo, q).status, 200);
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                })
            })
            .collect();
        let mut latencies: Vec<f64> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        let wall = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {clients} | {} | {:.1} | {:.0} | {:.0} |",
            latencies.len(),
            latencies.len() as f64 / wall,
            pct(0.5),
            pct(0.99)
        );
    }
    let info = get(addr, "/v1/info").json();
    println!("batches: {}", info["batches"]);
    let _ = child.kill();
    let _ = child.wait();
}
