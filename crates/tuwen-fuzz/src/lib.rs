//! Deterministic mutation fuzzing of every file parser a tuwen user feeds (test-only crate).
//!
//! A [`Target`] is a parser reached through tuwen's public API plus the committed valid files it
//! reads. Each case copies the files into a fresh directory with one (sometimes two) of them
//! mutated — truncation, bit flips, byte insertions and deletions, extreme numbers (`1e300`,
//! `18446744073709551615`, `-1`), wrong JSON / TOML types, duplicated keys, deep nesting, empty
//! files, format-aware edits of line formats, safetensors headers and image headers — and runs the
//! parser under [`std::panic::catch_unwind`] on a worker thread with a deadline. Every case is a
//! pure function of its seed, so a finding is reproduced with
//! `TUWEN_FUZZ_ONLY=<parser> TUWEN_FUZZ_REPLAY=<seed> cargo test --workspace --test fuzz -- --nocapture`.
//!
//! Findings (failures of the test): a panic, a hang (past the deadline), an `Err` with an empty
//! message, a single allocation of [`HUGE_ALLOCATION`] bytes or more (a declared length trusted
//! without a cap). Test binaries install [`GuardedAlloc`] as their global allocator so that
//! allocations are measured, and an absurd one ([`REFUSED_ALLOCATION`]) is refused after naming
//! the case instead of exhausting the machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once, mpsc};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Environment variable: cases per parser (default [`DEFAULT_CASES`]).
pub const CASES_ENV: &str = "TUWEN_FUZZ_CASES";
/// Environment variable: run only the case with this seed (per parser).
pub const REPLAY_ENV: &str = "TUWEN_FUZZ_REPLAY";
/// Environment variable: run only the parser with this name.
pub const ONLY_ENV: &str = "TUWEN_FUZZ_ONLY";
/// Environment variable: seconds a case may run before it counts as a hang (default 30, ample on
/// a loaded machine; image decoding is bounded by `tuwen_vision::MAX_IMAGE_SIDE` and
/// `MAX_DECODE_BYTES`, so a 700-byte JPEG declaring 2064 x 65535 pixels, which used to take
/// ~8 s, is refused at once).
pub const DEADLINE_ENV: &str = "TUWEN_FUZZ_DEADLINE_S";
/// Environment variable: directory for the case files (default `/dev/shm` where available).
pub const TMPDIR_ENV: &str = "TUWEN_FUZZ_TMPDIR";
/// Cases per parser when [`CASES_ENV`] is unset.
pub const DEFAULT_CASES: usize = 1000;
/// A single allocation this large (1 GiB) is a finding: a length from the file trusted unchecked.
pub const HUGE_ALLOCATION: usize = 1 << 30;
/// A single allocation this large (4 GiB) is refused (the process then aborts, after a line on
/// stderr naming the parser and seed).
pub const REFUSED_ALLOCATION: usize = 1 << 32;
/// Hung cases after which a parser's campaign stops (each hang leaves a thread spinning).
const MAX_HANGS: usize = 3;

// ---------------------------------------------------------------------------------------------
// Case context: thread-locals read by the panic hook and the allocator.

thread_local! {
    /// `(parser, seed)` of the case running on this thread.
    static CASE: Cell<(&'static str, u64)> = const { Cell::new(("", 0)) };
    /// Whether this thread runs a fuzz case (panics are captured quietly).
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    /// Largest single allocation of this thread since the case started.
    static BIGGEST: Cell<usize> = const { Cell::new(0) };
    /// Message and location of the last captured panic.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Global allocator for fuzz test binaries: the system allocator, measuring the largest single
/// allocation of each fuzz case and refusing any of [`REFUSED_ALLOCATION`] bytes or more.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: tuwen_fuzz::GuardedAlloc = tuwen_fuzz::GuardedAlloc;
/// ```
#[derive(Debug)]
pub struct GuardedAlloc;

impl GuardedAlloc {
    fn admit(size: usize) -> bool {
        let _ = BIGGEST.try_with(|b| {
            if size > b.get() {
                b.set(size);
            }
        });
        if size < REFUSED_ALLOCATION {
            return true;
        }
        let (name, seed) = CASE.try_with(Cell::get).unwrap_or(("", 0));
        // Straight to the file descriptor: the test harness's output capture dies with an abort.
        let _ = std::io::stderr().write_all(
            format!(
                "tuwen-fuzz: refused an allocation of {size} bytes (parser {name:?}, seed {seed}); \
                 reproduce with {ONLY_ENV}={name} {REPLAY_ENV}={seed}\n"
            )
            .as_bytes(),
        );
        false
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or refused by returning null, which the
// `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let message = info.payload_as_str().unwrap_or("(non-string payload)");
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_else(|| "unknown location".into());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message} at {location}")));
            } else {
                previous(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------------------------
// Targets and options.

/// How a file is mutated beyond the generic byte-level mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// JSON document: wrong types, dropped and duplicated keys, extreme numbers, deep nesting.
    Json,
    /// TOML document: wrong types, duplicated keys and tables, extreme numbers.
    Toml,
    /// Line format (TSV, JSON lines): line and field edits, extreme numbers.
    Lines,
    /// safetensors: header JSON mutations, length prefix extremes.
    SafeTensors,
    /// PNG: IHDR width/height extremes (CRC fixed up so the decoder reads them).
    Png,
    /// JPEG: SOF width/height extremes.
    Jpeg,
}

/// One valid file of a target.
#[derive(Clone, Debug)]
pub struct Input {
    /// Path relative to the case directory (may contain `/`).
    pub name: String,
    /// The valid contents.
    pub bytes: Vec<u8>,
    /// Which format-aware mutations apply.
    pub kind: Kind,
}

impl Input {
    /// An input named `name` (relative path) with valid `bytes`.
    pub fn new(name: impl Into<String>, bytes: Vec<u8>, kind: Kind) -> Self {
        Self {
            name: name.into(),
            bytes,
            kind,
        }
    }

    /// An input read from a committed fixture file.
    ///
    /// # Panics
    /// If the fixture cannot be read.
    pub fn fixture(name: impl Into<String>, path: impl AsRef<Path>, kind: Kind) -> Self {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
        Self::new(name, bytes, kind)
    }
}

/// A parser under test: given the case directory (holding every input, one or two of them
/// mutated), parse through the public API and return `Err(message)` on rejection.
pub type Parse = Arc<dyn Fn(&Path) -> Result<(), String> + Send + Sync>;

/// A parser and the valid files it reads.
pub struct Target {
    /// Short name used in reports and with [`ONLY_ENV`].
    pub name: &'static str,
    /// The valid files.
    pub inputs: Vec<Input>,
    /// The parser.
    pub parse: Parse,
}

impl Target {
    /// A target named `name` reading `inputs` with `parse`.
    pub fn new(
        name: &'static str,
        inputs: Vec<Input>,
        parse: impl Fn(&Path) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            inputs,
            parse: Arc::new(parse),
        }
    }
}

/// How a campaign runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Cases per parser.
    pub cases: usize,
    /// Time a case may take before it counts as a hang.
    pub deadline: Duration,
    /// Run only this seed.
    pub replay: Option<u64>,
    /// Run only the parser with this name.
    pub only: Option<String>,
    /// Where the inputs of every finding are saved (`DIR/<parser>-<seed>/`).
    pub save_dir: Option<PathBuf>,
}

impl Options {
    /// Options from [`CASES_ENV`], [`DEADLINE_ENV`], [`REPLAY_ENV`] and [`ONLY_ENV`].
    ///
    /// # Panics
    /// If one of them is set but not a number.
    pub fn from_env(save_dir: Option<PathBuf>) -> Self {
        fn number<T: std::str::FromStr>(name: &str) -> Option<T> {
            let value = std::env::var(name).ok()?;
            let value = value.trim().replace('_', "");
            Some(
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
            )
        }
        Self {
            cases: number(CASES_ENV).unwrap_or(DEFAULT_CASES),
            deadline: Duration::from_secs_f64(number::<f64>(DEADLINE_ENV).unwrap_or(30.0)),
            replay: number(REPLAY_ENV),
            only: std::env::var(ONLY_ENV).ok().filter(|s| !s.is_empty()),
            save_dir,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reports.

/// One case that failed the campaign.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Parser name.
    pub parser: &'static str,
    /// Seed of the case.
    pub seed: u64,
    /// The mutations applied.
    pub mutation: String,
    /// What went wrong (panic message and location, hang, empty error, allocation size).
    pub detail: String,
    /// Where the case's inputs were saved, if they were.
    pub saved: Option<PathBuf>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] seed {}: {}\n    mutation: {}\n    reproduce: {}={} {}={} cargo test --workspace --test fuzz -- --nocapture",
            self.parser,
            self.seed,
            self.detail,
            self.mutation,
            ONLY_ENV,
            self.parser,
            REPLAY_ENV,
            self.seed
        )?;
        if let Some(dir) = &self.saved {
            write!(f, "\n    inputs: {}", dir.display())?;
        }
        Ok(())
    }
}

/// The outcome of one parser's campaign.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Parser name.
    pub parser: &'static str,
    /// Cases run.
    pub cases: usize,
    /// Cases the parser rejected with an `Err`.
    pub rejected: usize,
    /// Cases the parser accepted.
    pub accepted: usize,
    /// Panics.
    pub panics: Vec<Finding>,
    /// Hangs (past the deadline).
    pub hangs: Vec<Finding>,
    /// Rejections with an empty message.
    pub empty_errors: Vec<Finding>,
    /// Cases with a single allocation of [`HUGE_ALLOCATION`] bytes or more.
    pub huge_allocations: Vec<Finding>,
    /// Rejections whose message does not name any file of the case (not a failure).
    pub unnamed_errors: usize,
    /// A few such messages.
    pub unnamed_examples: Vec<String>,
    /// Longest case.
    pub max_case: Duration,
    /// Seed of the longest case.
    pub slowest_seed: u64,
    /// Wall time of the campaign.
    pub total: Duration,
    /// Time spent inside the parser (the rest is mutating, writing files, threads).
    pub parsing: Duration,
    /// Largest single allocation of any case, bytes.
    pub largest_allocation: usize,
    /// The unmutated inputs were rejected (the target is set up wrongly): the message.
    pub baseline_error: Option<String>,
}

impl Report {
    /// Every finding.
    pub fn findings(&self) -> Vec<&Finding> {
        self.panics
            .iter()
            .chain(&self.hangs)
            .chain(&self.empty_errors)
            .chain(&self.huge_allocations)
            .collect()
    }

    /// One machine-readable line: `FUZZ <parser> cases=.. rejected=.. ...` (read by
    /// `cargo xtask fuzz`).
    pub fn summary_line(&self) -> String {
        format!(
            "FUZZ {} cases={} rejected={} accepted={} panics={} hangs={} empty_errors={} \
             huge_allocs={} max_case_ms={:.1} slowest_seed={} total_s={:.1} parse_s={:.1} largest_alloc_kib={} \
             unnamed_errors={}",
            self.parser,
            self.cases,
            self.rejected,
            self.accepted,
            self.panics.len(),
            self.hangs.len(),
            self.empty_errors.len(),
            self.huge_allocations.len(),
            self.max_case.as_secs_f64() * 1e3,
            self.slowest_seed,
            self.total.as_secs_f64(),
            self.parsing.as_secs_f64(),
            self.largest_allocation / 1024,
            self.unnamed_errors,
        )
    }

    /// Panics listing every finding (with seeds to reproduce) if there is any.
    pub fn assert_clean(&self) {
        let mut problems: Vec<String> = self.findings().iter().map(|f| f.to_string()).collect();
        if let Some(e) = &self.baseline_error {
            problems.insert(
                0,
                format!("[{}] the unmutated inputs were rejected: {e}", self.parser),
            );
        }
        assert!(
            problems.is_empty(),
            "{}\n{} finding(s):\n{}",
            self.summary_line(),
            problems.len(),
            problems.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The campaign.

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of case `index` of parser `name` (stable across runs and machines).
pub fn case_seed(name: &str, index: usize) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    let mut state = h ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    splitmix(&mut state)
}

/// The mutated inputs of case `seed` and a description of the mutations.
pub fn case_inputs(inputs: &[Input], seed: u64) -> (Vec<(String, Vec<u8>)>, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut files: Vec<(String, Vec<u8>)> = inputs
        .iter()
        .map(|i| (i.name.clone(), i.bytes.clone()))
        .collect();
    let mut notes = Vec::new();
    let first = rng.random_range(0..inputs.len());
    let mut chosen = vec![first];
    if inputs.len() > 1 && rng.random_bool(0.1) {
        let second = rng.random_range(0..inputs.len());
        if second != first {
            chosen.push(second);
        }
    }
    for i in chosen {
        let (bytes, note) = mutate(&inputs[i], &mut rng);
        files[i].1 = bytes;
        notes.push(format!("{}: {note}", inputs[i].name));
    }
    (files, notes.join(" | "))
}

fn write_case(dir: &Path, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

enum CaseOutcome {
    Done {
        result: Result<Result<(), String>, String>,
        elapsed: Duration,
        biggest: usize,
    },
    Hang,
}

fn run_case(target: &Target, dir: PathBuf, seed: u64, deadline: Duration) -> CaseOutcome {
    let (tx, rx) = mpsc::channel();
    let parse = target.parse.clone();
    let name = target.name;
    std::thread::Builder::new()
        .name(format!("fuzz-{name}-{seed}"))
        .spawn(move || {
            CASE.with(|c| c.set((name, seed)));
            LAST_PANIC.with(|p| p.borrow_mut().take());
            IN_CASE.with(|c| c.set(true));
            BIGGEST.with(|b| b.set(0));
            let start = Instant::now();
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| parse(&dir)));
            let elapsed = start.elapsed();
            IN_CASE.with(|c| c.set(false));
            let biggest = BIGGEST.with(Cell::get);
            let result = outcome.map_err(|payload| {
                LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| {
                        payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(non-string panic payload)".into())
                    })
            });
            let _ = tx.send((result, elapsed, biggest));
        })
        .expect("spawn a fuzz worker thread");
    match rx.recv_timeout(deadline) {
        Ok((result, elapsed, biggest)) => CaseOutcome::Done {
            result,
            elapsed,
            biggest,
        },
        Err(mpsc::RecvTimeoutError::Timeout) => CaseOutcome::Hang,
        Err(mpsc::RecvTimeoutError::Disconnected) => CaseOutcome::Done {
            result: Err("the worker thread died without reporting".into()),
            elapsed: Duration::ZERO,
            biggest: 0,
        },
    }
}

/// Where case directories go: [`TMPDIR_ENV`], else `/dev/shm` where it exists (the store's
/// writers `fsync` every shard; on a RAM disk that costs nothing), else the system temp dir.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(TMPDIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// Runs `target`'s campaign: the unmutated inputs once (they must be accepted), then
/// `options.cases` mutated cases (or only `options.replay`). Prints the summary line.
///
/// # Panics
/// If the scratch directory cannot be created or written.
pub fn run(target: &Target, options: &Options) -> Report {
    install_panic_hook();
    let mut report = Report {
        parser: target.name,
        ..Report::default()
    };
    if options.only.as_deref().is_some_and(|o| o != target.name) {
        println!("FUZZ {} skipped ({ONLY_ENV} is set)", target.name);
        return report;
    }
    let scratch = tempfile::Builder::new()
        .prefix(&format!("tuwen-fuzz-{}-", target.name))
        .tempdir_in(scratch_root())
        .expect("create a scratch directory");
    let started = Instant::now();

    let baseline: Vec<(String, Vec<u8>)> = target
        .inputs
        .iter()
        .map(|i| (i.name.clone(), i.bytes.clone()))
        .collect();
    let dir = scratch.path().join("baseline");
    write_case(&dir, &baseline).expect("write the baseline case");
    match run_case(target, dir, 0, options.deadline) {
        CaseOutcome::Done {
            result: Ok(Ok(())), ..
        } => {}
        CaseOutcome::Done {
            result: Ok(Err(e)), ..
        } => report.baseline_error = Some(e),
        CaseOutcome::Done {
            result: Err(panic), ..
        } => report.baseline_error = Some(format!("panicked: {panic}")),
        CaseOutcome::Hang => report.baseline_error = Some("hung".into()),
    }

    let seeds: Vec<u64> = match options.replay {
        Some(seed) => vec![seed],
        None => (0..options.cases)
            .map(|i| case_seed(target.name, i))
            .collect(),
    };
    for (index, seed) in seeds.into_iter().enumerate() {
        let (files, mutation) = case_inputs(&target.inputs, seed);
        let dir = scratch.path().join(format!("case-{index}"));
        write_case(&dir, &files).expect("write a fuzz case");
        let file_names: Vec<String> = target
            .inputs
            .iter()
            .filter_map(|i| Path::new(&i.name).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        let outcome = run_case(target, dir.clone(), seed, options.deadline);
        report.cases += 1;
        let finding = |detail: String| {
            let saved = options.save_dir.as_ref().and_then(|root| {
                let at = root.join(format!("{}-{seed}", target.name));
                write_case(&at, &files).ok().map(|()| at)
            });
            Finding {
                parser: target.name,
                seed,
                mutation: mutation.clone(),
                detail,
                saved,
            }
        };
        match outcome {
            CaseOutcome::Hang => {
                report
                    .hangs
                    .push(finding(format!("no answer within {:?}", options.deadline)));
                if report.hangs.len() >= MAX_HANGS {
                    eprintln!(
                        "FUZZ {}: {MAX_HANGS} hangs, stopping this parser's campaign",
                        target.name
                    );
                    break;
                }
                continue;
            }
            CaseOutcome::Done {
                result,
                elapsed,
                biggest,
            } => {
                report.parsing += elapsed;
                if elapsed > report.max_case {
                    report.max_case = elapsed;
                    report.slowest_seed = seed;
                }
                report.largest_allocation = report.largest_allocation.max(biggest);
                if biggest >= HUGE_ALLOCATION {
                    report.huge_allocations.push(finding(format!(
                        "allocated {biggest} bytes at once (a length from the file trusted \
                         without a cap)"
                    )));
                }
                match result {
                    Ok(Ok(())) => report.accepted += 1,
                    Ok(Err(message)) => {
                        report.rejected += 1;
                        if message.trim().is_empty() {
                            report
                                .empty_errors
                                .push(finding("rejected with an empty message".into()));
                        } else if !file_names.iter().any(|n| message.contains(n.as_str())) {
                            report.unnamed_errors += 1;
                            if report.unnamed_examples.len() < 3 {
                                report.unnamed_examples.push(message.clone());
                            }
                        }
                        if options.replay.is_some() {
                            println!("FUZZ {} seed {seed}: rejected: {message}", target.name);
                        }
                    }
                    Err(panic) => report.panics.push(finding(format!("panicked: {panic}"))),
                }
                if options.replay.is_some() {
                    println!("FUZZ {} seed {seed}: {mutation}", target.name);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    report.total = started.elapsed();
    println!("{}", report.summary_line());
    for example in &report.unnamed_examples {
        println!("FUZZ {}   error not naming a file: {example}", target.name);
    }
    if !report.hangs.is_empty() {
        // A hung worker still owns files in the scratch directory; leave it behind.
        let _ = scratch.keep();
    }
    report
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// Numbers substituted for numbers of a text format.
const EXTREME_NUMBERS: &[&str] = &[
    "1e300",
    "-1e300",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "0",
    "-0",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "1e-300",
    "0.5",
    "99999999999999999999999999999",
    "NaN",
    "inf",
];

/// Bytes that tend to matter to parsers.
const SPECIAL_BYTES: &[u8] = b"\0\xff\x80\n\r\t\"{}[]:,\\=#'0-";

/// Mutates one input: one to three stacked mutations (or an empty file). Returns the bytes and a
/// description.
pub fn mutate(input: &Input, rng: &mut StdRng) -> (Vec<u8>, String) {
    if rng.random_ratio(1, 60) {
        return (Vec::new(), "empty file".into());
    }
    let mut bytes = input.bytes.clone();
    let count = match rng.random_range(0..100) {
        0..75 => 1,
        75..95 => 2,
        _ => 3,
    };
    let mut notes = Vec::new();
    for _ in 0..count {
        let note = if rng.random_bool(0.4) {
            generic(&mut bytes, rng)
        } else {
            match input.kind {
                Kind::Json => json(&mut bytes, rng),
                Kind::Toml => toml_mutation(&mut bytes, rng),
                Kind::Lines => lines(&mut bytes, rng),
                Kind::SafeTensors => safetensors(&mut bytes, rng),
                Kind::Png => png(&mut bytes, rng),
                Kind::Jpeg => jpeg(&mut bytes, rng),
            }
        };
        notes.push(note);
    }
    if input.kind == Kind::Png && rng.random_bool(0.7) {
        // Without valid checksums the decoder stops at the first damaged chunk; fixing them
        // lets the damage reach the decompressor and the pixel code.
        fix_png_crcs(&mut bytes);
        notes.push("chunk CRCs fixed".into());
    }
    (bytes, notes.join("; "))
}

/// Recomputes the CRC of every PNG chunk whose declared length fits in the file.
fn fix_png_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = at.checked_add(12 + len).filter(|&end| end <= bytes.len()) else {
            return;
        };
        let crc = crc32fast::hash(&bytes[at + 4..end - 4]);
        bytes[end - 4..end].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Byte-level mutations valid for any file.
fn generic(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let len = bytes.len();
    match rng.random_range(0..7) {
        0 => {
            let at = rng.random_range(0..=len);
            bytes.truncate(at);
            format!("truncate at {at} of {len}")
        }
        1 if len > 0 => {
            let n = rng.random_range(1..=8);
            let mut at = Vec::new();
            for _ in 0..n {
                let i = rng.random_range(0..len);
                bytes[i] ^= 1 << rng.random_range(0..8);
                at.push(i);
            }
            format!("flip {n} bit(s) at {at:?}")
        }
        2 => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=16);
            let new: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        *pick(rng, SPECIAL_BYTES)
                    } else {
                        rng.random()
                    }
                })
                .collect();
            bytes.splice(at..at, new.iter().copied());
            format!("insert {new:?} at {at}")
        }
        3 if len > 0 => {
            let at = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - at).min(64));
            bytes.drain(at..at + n);
            format!("delete {n} byte(s) at {at}")
        }
        4 if len > 0 => {
            let at = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - at).min(256));
            let chunk = bytes[at..at + n].to_vec();
            let to = rng.random_range(0..=len);
            bytes.splice(to..to, chunk);
            format!("copy {n} byte(s) from {at} to {to}")
        }
        5 if len > 0 => {
            let width = *pick(rng, &[2usize, 4, 8]);
            let value: u64 = *pick(
                rng,
                &[
                    0,
                    1,
                    u64::MAX,
                    u64::MAX >> 1,
                    u32::MAX as u64,
                    1 << 31,
                    1 << 40,
                    0x7FFF,
                ],
            );
            let at = rng.random_range(0..len);
            let little = rng.random_bool(0.5);
            let (le, be) = (value.to_le_bytes(), value.to_be_bytes());
            let raw = if little {
                &le[..width]
            } else {
                &be[8 - width..]
            };
            let end = (at + width).min(len);
            bytes[at..end].copy_from_slice(&raw[..end - at]);
            format!("overwrite {width} byte(s) at {at} with {value:#x}")
        }
        _ if len > 0 => {
            let at = rng.random_range(0..len);
            let b = *pick(rng, SPECIAL_BYTES);
            bytes[at] = b;
            format!("set byte {at} to {b:#04x}")
        }
        _ => {
            bytes.extend_from_slice(b"\xff\0");
            "append 0xff 0x00 to an empty file".into()
        }
    }
}

/// Spans of numbers in text: runs of `[-+0-9.eE]` holding a digit.
fn number_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let numeric = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
        if bytes[i].is_ascii_digit()
            || (bytes[i] == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // Not inside an identifier (`shard-00001`, base64): the previous byte is no letter.
            let start = i;
            let inside_word =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            while i < bytes.len() && numeric(bytes[i]) {
                i += 1;
            }
            if !inside_word {
                spans.push((start, i));
            }
        } else {
            i += 1;
        }
    }
    spans
}

fn extreme_number(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let spans = number_spans(bytes);
    if spans.is_empty() {
        return generic(bytes, rng);
    }
    let (start, end) = *pick(rng, &spans);
    let new = *pick(rng, EXTREME_NUMBERS);
    let old = String::from_utf8_lossy(&bytes[start..end]).into_owned();
    bytes.splice(start..end, new.bytes());
    format!("number {old} at {start} -> {new}")
}

fn deep_nesting(bytes: &mut Vec<u8>, rng: &mut StdRng, open: &str, close: &str) -> String {
    let depth = *pick(rng, &[130usize, 2_000, 100_000]);
    let at = rng.random_range(0..=bytes.len());
    let mut new = open.repeat(depth);
    if rng.random_bool(0.5) {
        new.push_str(&close.repeat(depth));
    }
    bytes.splice(at..at, new.bytes());
    format!("{depth} nested {open} at {at}")
}

fn text_mutation(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 | 1 => extreme_number(bytes, rng),
        2 => {
            let insert: &[u8] = pick::<&[u8]>(
                rng,
                &[
                    &b"\xef\xbb\xbf"[..],
                    &b"\xff\xfe"[..],
                    &b"\xc3"[..],
                    &b"\0"[..],
                    &b"\r\n"[..],
                    &b"\\u0000"[..],
                    &b"\\ud800"[..],
                ],
            );
            let at = if rng.random_bool(0.3) {
                0
            } else {
                rng.random_range(0..=bytes.len())
            };
            bytes.splice(at..at, insert.iter().copied());
            format!("insert {insert:?} at {at}")
        }
        _ => {
            // Swap two bytes (reorders brackets, quotes, separators).
            if bytes.len() < 2 {
                return generic(bytes, rng);
            }
            let (a, b) = (
                rng.random_range(0..bytes.len()),
                rng.random_range(0..bytes.len()),
            );
            bytes.swap(a, b);
            format!("swap bytes {a} and {b}")
        }
    }
}

/// JSON pointers of every node of `value`.
fn json_pointers(value: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    out.push(at.to_string());
    match value {
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                json_pointers(item, &format!("{at}/{i}"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                json_pointers(item, &format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// A value of another JSON type than `value` (or an array of another length).
fn other_json(value: &serde_json::Value, rng: &mut StdRng) -> serde_json::Value {
    use serde_json::{Value, json};
    let same_kind = |a: &Value| std::mem::discriminant(a) == std::mem::discriminant(value);
    if let Value::Array(items) = value
        && !items.is_empty()
        && rng.random_bool(0.3)
    {
        let mut items = items.clone();
        if rng.random_bool(0.5) {
            items.pop();
        } else {
            let last = items[items.len() - 1].clone();
            items.push(last);
        }
        return Value::Array(items);
    }
    let candidates = [
        json!("12"),
        json!(""),
        json!(12),
        json!(-1),
        json!(1e300),
        json!(u64::MAX),
        json!(0.5),
        Value::Null,
        json!(true),
        json!([]),
        json!([1, "a"]),
        json!({}),
        json!({"a": 1}),
    ];
    let others: Vec<&Value> = candidates.iter().filter(|c| !same_kind(c)).collect();
    (*pick(rng, &others)).clone()
}

const SENTINEL: &str = "TUWEN_FUZZ_SENTINEL_7f3a";

fn json(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    let Some(mut doc) = parsed else {
        return text_mutation(bytes, rng);
    };
    let mut pointers = Vec::new();
    json_pointers(&doc, "", &mut pointers);
    match rng.random_range(0..10) {
        0..4 => {
            let at = pick(rng, &pointers).clone();
            let node = doc.pointer_mut(&at).expect("a collected pointer");
            let new = other_json(node, rng);
            let note = format!("{at:?}: {} -> {new}", short(&*node));
            *node = new;
            *bytes = serde_json::to_vec(&doc).expect("serialisable");
            format!("wrong type {note}")
        }
        4 => {
            // Drop an object member.
            let objects: Vec<&String> = pointers
                .iter()
                .filter(|p| {
                    doc.pointer(p)
                        .is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty()))
                })
                .collect();
            if objects.is_empty() {
                return text_mutation(bytes, rng);
            }
            let at = (*pick(rng, &objects)).clone();
            let map = doc
                .pointer_mut(&at)
                .and_then(|v| v.as_object_mut())
                .expect("an object");
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = pick(rng, &keys).clone();
            map.remove(&key);
            *bytes = serde_json::to_vec(&doc).expect("serialisable");
            format!("drop key {key:?} of {at:?}")
        }
        5 | 6 => {
            // Duplicate an object member (same or another value), written by hand since a JSON
            // map cannot hold it.
            let objects: Vec<&String> = pointers
                .iter()
                .filter(|p| {
                    doc.pointer(p)
                        .is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty()))
                })
                .collect();
            if objects.is_empty() {
                return text_mutation(bytes, rng);
            }
            let at = (*pick(rng, &objects)).clone();
            let node = doc.pointer_mut(&at).expect("a collected pointer");
            let map = node.as_object().expect("an object").clone();
            let keys: Vec<&String> = map.keys().collect();
            let key = (*pick(rng, &keys)).clone();
            let duplicate = if rng.random_bool(0.5) {
                map[&key].clone()
            } else {
                other_json(&map[&key], rng)
            };
            let mut text = String::from("{");
            for (k, v) in &map {
                text.push_str(&serde_json::to_string(k).expect("a string"));
                text.push(':');
                text.push_str(&serde_json::to_string(v).expect("serialisable"));
                text.push(',');
            }
            text.push_str(&serde_json::to_string(&key).expect("a string"));
            text.push(':');
            text.push_str(&serde_json::to_string(&duplicate).expect("serialisable"));
            text.push('}');
            *node = serde_json::Value::String(SENTINEL.into());
            let whole = serde_json::to_string(&doc).expect("serialisable");
            *bytes = whole
                .replacen(&format!("\"{SENTINEL}\""), &text, 1)
                .into_bytes();
            format!("duplicate key {key:?} of {at:?} = {}", short(&duplicate))
        }
        7 => deep_nesting(bytes, rng, "[", "]"),
        _ => text_mutation(bytes, rng),
    }
}

fn short(value: &impl std::fmt::Display) -> String {
    let text = value.to_string();
    if text.len() > 40 {
        let mut end = 40;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &text[..end])
    } else {
        text
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn toml_paths(value: &toml::Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    if !at.is_empty() {
        out.push(at.clone());
    }
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                at.push(Seg::Key(k.clone()));
                toml_paths(v, at, out);
                at.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push(Seg::Index(i));
                toml_paths(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn toml_get_mut<'a>(mut value: &'a mut toml::Value, path: &[Seg]) -> Option<&'a mut toml::Value> {
    for seg in path {
        value = match (seg, value) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

fn other_toml(value: &toml::Value, rng: &mut StdRng) -> toml::Value {
    use toml::Value;
    let candidates = [
        Value::String("12".into()),
        Value::String(String::new()),
        Value::Integer(i64::MAX),
        Value::Integer(i64::MIN),
        Value::Integer(-1),
        Value::Integer(0),
        Value::Float(1e300),
        Value::Float(f64::NAN),
        Value::Float(f64::INFINITY),
        Value::Boolean(true),
        Value::Array(vec![Value::Integer(1), Value::String("a".into())]),
        Value::Table(toml::Table::new()),
    ];
    let others: Vec<&Value> = candidates
        .iter()
        .filter(|c| {
            std::mem::discriminant(*c) != std::mem::discriminant(value) || rng.random_bool(0.3)
        })
        .collect();
    (*pick(rng, &others)).clone()
}

fn toml_mutation(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let Ok(text) = std::str::from_utf8(bytes).map(str::to_string) else {
        return text_mutation(bytes, rng);
    };
    let doc: Option<toml::Table> = toml::from_str(&text).ok();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .filter(|&i| i < text.len())
        .collect();
    match (rng.random_range(0..10), doc) {
        (0..5, Some(table)) => {
            let mut root = toml::Value::Table(table);
            let mut paths = Vec::new();
            toml_paths(&root, &mut Vec::new(), &mut paths);
            if paths.is_empty() {
                return text_mutation(bytes, rng);
            }
            let path = pick(rng, &paths).clone();
            let node = toml_get_mut(&mut root, &path).expect("a collected path");
            let new = other_toml(node, rng);
            let note = format!("{path:?}: {} -> {new}", short(&*node));
            *node = new;
            match toml::to_string(&root) {
                Ok(text) => {
                    *bytes = text.into_bytes();
                    format!("wrong type {note}")
                }
                Err(_) => text_mutation(bytes, rng),
            }
        }
        (5 | 6, _) if !line_starts.is_empty() => {
            // Duplicate a `key = value` line or a `[table]` header.
            let candidates: Vec<usize> = line_starts
                .iter()
                .copied()
                .filter(|&s| {
                    let line = text[s..].lines().next().unwrap_or("");
                    line.contains('=') || line.trim_start().starts_with('[')
                })
                .collect();
            if candidates.is_empty() {
                return text_mutation(bytes, rng);
            }
            let start = *pick(rng, &candidates);
            let line = text[start..].lines().next().unwrap_or("").to_string();
            let to = *pick(rng, &line_starts);
            bytes.splice(to..to, format!("{line}\n").into_bytes());
            format!("duplicate line {line:?} at {to}")
        }
        (7, _) => {
            let depth = *pick(rng, &[130usize, 2_000, 100_000]);
            let mut line = format!("\nnested = {}", "[".repeat(depth));
            if rng.random_bool(0.5) {
                line.push_str(&"]".repeat(depth));
            }
            line.push('\n');
            let at = *pick(rng, &line_starts);
            bytes.splice(at..at, line.into_bytes());
            format!("{depth} nested arrays at {at}")
        }
        _ => text_mutation(bytes, rng),
    }
}

fn lines(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let text = bytes.clone();
    let mut rows: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    if rows.is_empty() {
        return generic(bytes, rng);
    }
    let i = rng.random_range(0..rows.len());
    let note = match rng.random_range(0..10) {
        0 => {
            let row = rows[i].clone();
            let to = rng.random_range(0..=rows.len());
            rows.insert(to, row);
            format!("duplicate line {} at {}", i + 1, to + 1)
        }
        1 => {
            rows.remove(i);
            format!("delete line {}", i + 1)
        }
        2 => {
            let j = rng.random_range(0..rows.len());
            rows.swap(i, j);
            format!("swap lines {} and {}", i + 1, j + 1)
        }
        3..=5 => {
            // Replace one tab-separated field: base64 of random bytes, empty, extreme number.
            let mut fields: Vec<Vec<u8>> =
                rows[i].split(|&b| b == b'\t').map(<[u8]>::to_vec).collect();
            let f = rng.random_range(0..fields.len());
            let new: Vec<u8> = match rng.random_range(0..3) {
                0 => {
                    let n = rng.random_range(0..=48);
                    let raw: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    base64(&raw).into_bytes()
                }
                1 => Vec::new(),
                _ => pick(rng, EXTREME_NUMBERS).as_bytes().to_vec(),
            };
            let note = format!(
                "line {} field {} -> {:?}",
                i + 1,
                f + 1,
                short(&String::from_utf8_lossy(&new))
            );
            fields[f] = new;
            rows[i] = fields.join(&b'\t');
            note
        }
        6 => {
            let fields = rows[i].iter().filter(|&&b| b == b'\t').count();
            if fields > 0 && rng.random_bool(0.5) {
                let at = rows[i].iter().position(|&b| b == b'\t').expect("a tab");
                rows[i].remove(at);
                format!("line {}: remove a tab", i + 1)
            } else {
                let at = rng.random_range(0..=rows[i].len());
                rows[i].insert(at, b'\t');
                format!("line {}: insert a tab at {at}", i + 1)
            }
        }
        7 => {
            // Strip the final newline / add a partial last line.
            let mut out = text.clone();
            let cut = rng.random_range(0..=out.len());
            out.truncate(cut);
            *bytes = out;
            return format!("cut the file at {cut}");
        }
        _ => return text_mutation(bytes, rng),
    };
    *bytes = rows.join(&b'\n');
    note
}

fn base64(raw: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn safetensors(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let Some(n) = header_len.filter(|&n| n.checked_add(8).is_some_and(|end| bytes.len() >= end))
    else {
        return generic(bytes, rng);
    };
    match rng.random_range(0..10) {
        0..7 => {
            let mut header = bytes[8..8 + n].to_vec();
            let data = bytes[8 + n..].to_vec();
            let note = if rng.random_bool(0.5) {
                extreme_number(&mut header, rng)
            } else {
                json(&mut header, rng)
            };
            let keep_prefix = rng.random_bool(0.15);
            let prefix = if keep_prefix {
                n as u64
            } else {
                header.len() as u64
            };
            let mut out = prefix.to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend_from_slice(&data);
            *bytes = out;
            format!(
                "header {note}{}",
                if keep_prefix {
                    " (stale length prefix)"
                } else {
                    ""
                }
            )
        }
        _ => {
            let value = *pick(
                rng,
                &[
                    0u64,
                    1,
                    7,
                    n as u64 + 1,
                    (n as u64).saturating_sub(1),
                    u64::MAX,
                    1 << 40,
                    100_000_001,
                ],
            );
            bytes[..8].copy_from_slice(&value.to_le_bytes());
            format!("length prefix {n} -> {value}")
        }
    }
}

fn png(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let Some(at) = bytes.windows(4).position(|w| w == b"IHDR") else {
        return generic(bytes, rng);
    };
    if bytes.len() < at + 21 || rng.random_bool(0.3) {
        return generic(bytes, rng);
    }
    let field = *pick(rng, &[0usize, 4]);
    let value = *pick(
        rng,
        &[0u32, 1, 0xFFFF, 0x10000, 0x7FFF_FFFF, u32::MAX, 1 << 20],
    );
    bytes[at + 4 + field..at + 8 + field].copy_from_slice(&value.to_be_bytes());
    if rng.random_bool(0.5) {
        // Bit depth / colour type / interlace.
        let i = at + 12 + rng.random_range(0..5);
        bytes[i] = rng.random();
    }
    let crc = crc32fast::hash(&bytes[at..at + 17]);
    bytes[at + 17..at + 21].copy_from_slice(&crc.to_be_bytes());
    format!(
        "IHDR {} = {value}",
        if field == 0 { "width" } else { "height" }
    )
}

fn jpeg(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let sof = bytes
        .windows(2)
        .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2));
    let Some(at) = sof.filter(|&at| bytes.len() >= at + 10) else {
        return generic(bytes, rng);
    };
    match rng.random_range(0..4) {
        0 | 1 => {
            let field = *pick(rng, &[5usize, 7]);
            let value = *pick(rng, &[0u16, 1, 0x7FFF, 0xFFFF, 0x4000]);
            bytes[at + field..at + field + 2].copy_from_slice(&value.to_be_bytes());
            format!(
                "SOF {} = {value}",
                if field == 5 { "height" } else { "width" }
            )
        }
        2 => {
            // Component count / sampling factors.
            let i = at + 9 + rng.random_range(0..4).min(bytes.len() - at - 10);
            let old = bytes[i];
            bytes[i] = rng.random();
            format!("SOF byte {i}: {old:#04x} -> {:#04x}", bytes[i])
        }
        _ => generic(bytes, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_a_function_of_the_seed() {
        let inputs = vec![
            Input::new(
                "a.json",
                br#"{"a": [1, 2, {"b": "c"}], "d": 3.5}"#.to_vec(),
                Kind::Json,
            ),
            Input::new("b.tsv", b"x\t12\ny\t34\n".to_vec(), Kind::Lines),
        ];
        for i in 0..200 {
            let seed = case_seed("t", i);
            assert_eq!(case_inputs(&inputs, seed), case_inputs(&inputs, seed));
        }
        assert_ne!(case_seed("t", 0), case_seed("u", 0));
    }

    #[test]
    fn number_spans_skip_identifiers() {
        let text = b"shard-00001 x=12, y=-3.5e2 ab12";
        let spans: Vec<&[u8]> = number_spans(text)
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .collect();
        assert_eq!(spans, vec![&b"12"[..], b"-3.5e2"]);
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
    }
}
