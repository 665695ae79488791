//! The official VQA accuracy, equal to `PythonEvaluationTools/vqaEvaluation/vqaEval.py` of
//! [GT-Vision-Lab/VQA](https://github.com/GT-Vision-Lab/VQA) at commit [`OFFICIAL_COMMIT`]
//! (with `loadRes` of `PythonHelperTools/vqaTools/vqa.py` for reading results), as run by
//! Python 3. `tests/fixtures/make_vqa_reference.py` scores a fixture with that very code and the
//! `vqa_eval` test checks that [`evaluate`] gives the same figures.
//!
//! Behaviour of the official script reproduced here, odd as some of it is:
//!
//! * Every answer (annotators' and the result) has newlines and tabs turned into spaces and is
//!   stripped. The rest of the normalisation ([`normalize_answer`]: punctuation, number words,
//!   articles, contractions) is applied to the annotators' answers **and to the result** only when
//!   the cleaned annotators' answers of the question are not all the same; when they are, the
//!   result must equal them exactly (`"Yes"` scores 0 against ten `"yes"`). Versions of
//!   `vqaEval.py` before 2021-03-11 always normalised the result; this follows the current one.
//! * An annotator's answer is left out by equality of its whole record, so leaving one out
//!   leaves out every record equal to it (same normalised `answer`, `answer_confidence` and
//!   `answer_id`; official files have unique ids, so normally just one).
//! * Punctuation: whether a mark is deleted or turned into a space is decided on the text before
//!   any replacement, and a comma between digits anywhere in it deletes every mark. Periods not
//!   followed by a digit are deleted, but only the first 32 (the script passes `re.UNICODE` as
//!   `re.sub`'s `count`). "Digit" means a Unicode decimal digit and "whitespace" includes
//!   U+001C..U+001F, as for Python 3's `re` and `str.split`.
//! * Words are lower-cased before the number-word, article and contraction tables are looked up,
//!   so the table's capitalised keys (`Im`, `Ive`, `Id've`, `I'dve`) never apply.
//! * Sums run left to right in the order of the annotations file and percentages are rounded
//!   with Python 3's `round(x, 2)` (exact ties to even: 3.125 -> 3.12).
//!
//! Where the official script asserts, crashes or silently picks one of several inputs, this
//! module returns a [`VqaError`] naming the file and the question id instead: results for a
//! question that is not annotated, annotated questions without a result, two results for one
//! question (the script keeps the last), two annotations for one question, a question without
//! answers or a file without questions (division by zero there), and, for a questions file whose
//! `task_type` is `"Multiple Choice"`, an answer that is not one of the question's
//! `multiple_choices`. Unlike `loadRes`, the questions file's `info`, `license`, `data_type` and
//! `data_subtype` keys are not required. Answer records are compared on `answer`,
//! `answer_confidence` and `answer_id` (the keys of the official files) as JSON values, so `1`
//! and `1.0` differ where Python would call them equal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The commit of GT-Vision-Lab/VQA whose `vqaEval.py` this module mirrors.
pub const OFFICIAL_COMMIT: &str = "a013f0043c1e2cdc995922dfe257f7149aa9af06";

/// Errors of [`evaluate`]; each names the file at fault and, where there is one, the question.
#[derive(Debug, thiserror::Error)]
pub enum VqaError {
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// A file is not JSON in the expected layout.
    #[error("{path}: malformed VQA JSON: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// serde's message, with the key of the offending value and the line and column.
        detail: String,
    },
    /// The results hold an answer to a question the annotations do not have.
    #[error(
        "{path}: result for question id {question_id}, which {annotations} does not annotate \
         (results must cover exactly the annotated questions)"
    )]
    UnknownQuestion {
        /// The results file.
        path: PathBuf,
        /// The question id.
        question_id: u64,
        /// The annotations file.
        annotations: PathBuf,
    },
    /// The results answer a question twice.
    #[error("{path}: more than one result for question id {question_id}")]
    DuplicateResult {
        /// The results file.
        path: PathBuf,
        /// The question id.
        question_id: u64,
    },
    /// The results lack an answer to an annotated question.
    #[error(
        "{path}: no result for question id {question_id}, annotated in {annotations} \
         (results must cover exactly the annotated questions)"
    )]
    MissingResult {
        /// The results file.
        path: PathBuf,
        /// The question id.
        question_id: u64,
        /// The annotations file.
        annotations: PathBuf,
    },
    /// The annotations hold a question twice.
    #[error("{path}: more than one annotation for question id {question_id}")]
    DuplicateAnnotation {
        /// The annotations file.
        path: PathBuf,
        /// The question id.
        question_id: u64,
    },
    /// An annotated question has no answers.
    #[error("{path}: question id {question_id} has no answers")]
    NoAnswers {
        /// The annotations file.
        path: PathBuf,
        /// The question id.
        question_id: u64,
    },
    /// The annotations hold no question.
    #[error("{path}: no annotated questions")]
    NoQuestions {
        /// The annotations file.
        path: PathBuf,
    },
    /// Multiple Choice task: an answer that is not one of the question's choices.
    #[error(
        "{path}: answer {answer:?} to question id {question_id} is not one of its \
         multiple_choices in {questions}"
    )]
    NotAChoice {
        /// The results file.
        path: PathBuf,
        /// The question id.
        question_id: u64,
        /// The answer.
        answer: String,
        /// The questions file.
        questions: PathBuf,
    },
}

/// Scores of a results file, in percent rounded to 2 decimals as the official script rounds.
///
/// Serialises as the official `vqaEval.accuracy` dict (`overall`, `perAnswerType`,
/// `perQuestionType`) plus `perQuestion` (the official `vqaEval.evalQA`, keyed by question id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VqaScores {
    /// Mean accuracy over every annotated question.
    pub overall: f64,
    /// Mean accuracy per `answer_type` (`yes/no`, `number`, `other` in VQA v2).
    pub per_answer_type: BTreeMap<String, f64>,
    /// Mean accuracy per `question_type` (`what color is the`, `how many`, ...).
    pub per_question_type: BTreeMap<String, f64>,
    /// Accuracy of each question, by question id.
    pub per_question: BTreeMap<u64, f64>,
}

#[derive(Deserialize)]
struct QuestionsFile {
    #[serde(default)]
    task_type: Option<String>,
    questions: Vec<Question>,
}

#[derive(Deserialize)]
struct Question {
    question_id: u64,
    #[serde(default)]
    multiple_choices: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct AnnotationsFile {
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct Annotation {
    question_id: u64,
    // Required as by the official index, otherwise unused.
    #[serde(rename = "image_id")]
    _image_id: IgnoredAny,
    question_type: String,
    answer_type: String,
    answers: Vec<AnswerRecord>,
}

/// One annotator's answer; equality is that of the official script's answer dicts.
#[derive(Deserialize, PartialEq)]
struct AnswerRecord {
    answer: String,
    #[serde(default)]
    answer_confidence: Option<Value>,
    #[serde(default)]
    answer_id: Option<Value>,
}

#[derive(Deserialize)]
struct ResultRecord {
    question_id: u64,
    answer: String,
}

/// Scores a VQA results file (`[{"question_id", "answer"}]`) against VQA v2 questions
/// (`{"questions": [...]}`) and annotations (`{"annotations": [...]}`) files, exactly as the
/// official `vqaEval.py` does (see the [module](self) documentation for its rules and where this
/// function returns an error instead).
pub fn evaluate(
    questions: &Path,
    annotations: &Path,
    results: &Path,
) -> Result<VqaScores, VqaError> {
    let question_file: QuestionsFile = read_json(questions)?;
    let annotation_file: AnnotationsFile = read_json(annotations)?;
    let result_records: Vec<ResultRecord> = read_json(results)?;

    let mut annotated = HashSet::with_capacity(annotation_file.annotations.len());
    for a in &annotation_file.annotations {
        if !annotated.insert(a.question_id) {
            return Err(VqaError::DuplicateAnnotation {
                path: annotations.to_path_buf(),
                question_id: a.question_id,
            });
        }
    }
    if annotated.is_empty() {
        return Err(VqaError::NoQuestions {
            path: annotations.to_path_buf(),
        });
    }

    // `loadRes`: the results must answer exactly the annotated questions.
    let mut answers = HashMap::with_capacity(result_records.len());
    for r in result_records {
        if !annotated.contains(&r.question_id) {
            return Err(VqaError::UnknownQuestion {
                path: results.to_path_buf(),
                question_id: r.question_id,
                annotations: annotations.to_path_buf(),
            });
        }
        if answers.insert(r.question_id, r.answer).is_some() {
            return Err(VqaError::DuplicateResult {
                path: results.to_path_buf(),
                question_id: r.question_id,
            });
        }
    }
    if let Some(a) = annotation_file
        .annotations
        .iter()
        .find(|a| !answers.contains_key(&a.question_id))
    {
        return Err(VqaError::MissingResult {
            path: results.to_path_buf(),
            question_id: a.question_id,
            annotations: annotations.to_path_buf(),
        });
    }
    // `loadRes` checks choices when the task type is spelled exactly so.
    if question_file.task_type.as_deref() == Some("Multiple Choice") {
        let choices: HashMap<u64, &[String]> = question_file
            .questions
            .iter()
            .map(|q| (q.question_id, q.multiple_choices.as_deref().unwrap_or(&[])))
            .collect();
        for a in &annotation_file.annotations {
            let answer = &answers[&a.question_id];
            let listed = choices.get(&a.question_id).copied().unwrap_or(&[]);
            if !listed.contains(answer) {
                return Err(VqaError::NotAChoice {
                    path: results.to_path_buf(),
                    question_id: a.question_id,
                    answer: answer.clone(),
                    questions: questions.to_path_buf(),
                });
            }
        }
    }

    let mut overall = Mean::default();
    let mut per_answer_type: BTreeMap<String, Mean> = BTreeMap::new();
    let mut per_question_type: BTreeMap<String, Mean> = BTreeMap::new();
    let mut per_question = BTreeMap::new();
    for mut a in annotation_file.annotations {
        if a.answers.is_empty() {
            return Err(VqaError::NoAnswers {
                path: annotations.to_path_buf(),
                question_id: a.question_id,
            });
        }
        let accuracy = question_accuracy(&mut a.answers, &answers[&a.question_id]);
        overall.add(accuracy);
        per_answer_type
            .entry(a.answer_type)
            .or_default()
            .add(accuracy);
        per_question_type
            .entry(a.question_type)
            .or_default()
            .add(accuracy);
        per_question.insert(a.question_id, round_2(100.0 * accuracy));
    }
    let percent =
        |means: BTreeMap<String, Mean>| means.into_iter().map(|(k, m)| (k, m.percent())).collect();
    Ok(VqaScores {
        overall: overall.percent(),
        per_answer_type: percent(per_answer_type),
        per_question_type: percent(per_question_type),
        per_question,
    })
}

/// The official VQA accuracy of `candidate` for one question, from its annotators' answers:
/// each annotator is left out in turn, the others who gave `candidate` are counted, and
/// `min(1, agreeing / 3)` is averaged over the left-out annotators. With VQA's 10 answers,
/// 1 agreeing answer scores 0.3, 2 score 0.6, 3 score 0.9 and 4 or more 1.0 (a plain
/// `min(1, agreeing / 3)` would give 1/3, 2/3, 1, 1).
///
/// This is the per-question accuracy of [`evaluate`] without its normalisation: strings are
/// compared exactly, so pass answers normalised alike (for instance all through
/// [`normalize_answer`]), and answers are left out one by one by position. With a single
/// answer there is nobody left to agree and every candidate scores 0, as in the official script;
/// with no answers the score is 0.
pub fn soft_score(annotator_answers: &[String], candidate: &str) -> f32 {
    if annotator_answers.is_empty() {
        return 0.0;
    }
    let agreeing = annotator_answers.iter().filter(|a| *a == candidate).count();
    let per_left_out = annotator_answers.iter().map(|a| {
        let others = agreeing - usize::from(a == candidate);
        (others as f64 / 3.0).min(1.0)
    });
    (python_sum(per_left_out) / annotator_answers.len() as f64) as f32
}

/// Normalises an answer exactly as the official script does when it normalises: newlines and
/// tabs become spaces, the text is stripped (the first lines of the question loop of
/// `VQAEval.evaluate`), then punctuation is dropped or turned into spaces
/// (`VQAEval.processPunctuation`) and the text is lower-cased, number words up to ten become
/// digits, articles are dropped and contractions get their apostrophe
/// (`VQAEval.processDigitArticle`).
///
/// Note that [`evaluate`] only applies the part after the whitespace clean-up when a question's
/// annotators disagree (see the [module](self) documentation).
pub fn normalize_answer(answer: &str) -> String {
    process_digit_article(&process_punctuation(&clean_whitespace(answer)))
}

/// The accuracy of `result` for one question; mirrors the body of the question loop of
/// `VQAEval.evaluate`, which normalises the annotators' answers in place.
fn question_accuracy(annotators: &mut [AnswerRecord], result: &str) -> f64 {
    for a in annotators.iter_mut() {
        a.answer = clean_whitespace(&a.answer);
    }
    let mut result = clean_whitespace(result);
    let disagree = {
        let distinct: HashSet<&str> = annotators.iter().map(|a| a.answer.as_str()).collect();
        distinct.len() > 1
    };
    if disagree {
        for a in annotators.iter_mut() {
            a.answer = process_digit_article(&process_punctuation(&a.answer));
        }
        result = process_digit_article(&process_punctuation(&result));
    }
    let per_left_out = annotators.iter().map(|left_out| {
        let agreeing = annotators
            .iter()
            .filter(|other| *other != left_out && other.answer == result)
            .count();
        (agreeing as f64 / 3.0).min(1.0)
    });
    python_sum(per_left_out) / annotators.len() as f64
}

/// Python's `sum` of floats before 3.12: left to right from 0.
fn python_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, |sum, v| sum + v)
}

/// Python 3's `round(x, 2)`: the double nearest to the exact decimal value of `x` rounded to two
/// places, exact ties to even. Rust's fixed-precision formatting rounds the exact value the same
/// way, and parsing gives the nearest double.
fn round_2(x: f64) -> f64 {
    format!("{x:.2}")
        .parse()
        .expect("a formatted finite float parses")
}

/// A running mean in the official order; mirrors `VQAEval.setAccuracy`.
#[derive(Default)]
struct Mean {
    sum: f64,
    count: usize,
}

impl Mean {
    fn add(&mut self, accuracy: f64) {
        self.sum += accuracy;
        self.count += 1;
    }

    /// `round(100 * sum / count, 2)`, multiplied before dividing as the script does.
    fn percent(&self) -> f64 {
        round_2(100.0 * self.sum / self.count as f64)
    }
}

/// Python's `str.isspace` (used by `str.split` and `str.strip`): Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The clean-up the question loop of `VQAEval.evaluate` applies to every answer:
/// `.replace('\n', ' ').replace('\t', ' ').strip()`.
fn clean_whitespace(answer: &str) -> String {
    answer
        .replace(['\n', '\t'], " ")
        .trim_matches(is_python_space)
        .to_owned()
}

/// `VQAEval.punct`.
const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// `VQAEval.commaStrip` (`(\d)(\,)(\d)`); the regex crate's `\d` is Unicode Nd, as Python 3's.
static COMMA_BETWEEN_DIGITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d,\d").expect("valid regex"));

static DECIMAL_DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d$").expect("valid regex"));

/// The official `periodStrip.sub("", text, re.UNICODE)` passes `re.UNICODE` (32) as `count`.
const MAX_PERIODS_STRIPPED: usize = 32;

fn is_decimal_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && DECIMAL_DIGIT.is_match(c.encode_utf8(&mut [0; 4])))
}

/// Mirrors `VQAEval.processPunctuation`: each mark of [`PUNCTUATION`] is deleted when the
/// original text has it next to a space or has a comma between digits anywhere, and turned into
/// a space otherwise; then periods not followed by a digit are deleted (the first 32 only).
fn process_punctuation(text: &str) -> String {
    // Marks that the text has next to a space (`p + ' ' in inText or ' ' + p in inText`).
    let mut spaced = [false; PUNCTUATION.len()];
    let mut previous = None;
    for c in text.chars() {
        if let Some(p) = previous {
            if c == ' ' {
                mark(&mut spaced, p);
            }
            if p == ' ' {
                mark(&mut spaced, c);
            }
        }
        previous = Some(c);
    }
    let delete_all = COMMA_BETWEEN_DIGITS.is_match(text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match PUNCTUATION.iter().position(|&p| p == c) {
            Some(i) if delete_all || spaced[i] => {}
            Some(_) => out.push(' '),
            None => out.push(c),
        }
    }
    strip_periods(&out)
}

fn mark(spaced: &mut [bool; PUNCTUATION.len()], c: char) {
    if let Some(i) = PUNCTUATION.iter().position(|&p| p == c) {
        spaced[i] = true;
    }
}

/// `VQAEval.periodStrip` (`(?!<=\d)(\.)(?!\d)`, whose first group is a look-ahead for the text
/// `<=` and so never fails before a period): deletes periods not followed by a decimal digit, at
/// most [`MAX_PERIODS_STRIPPED`] of them, from the left.
fn strip_periods(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut stripped = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let followed_by_digit = chars.peek().is_some_and(|&n| is_decimal_digit(n));
        if c == '.' && !followed_by_digit && stripped < MAX_PERIODS_STRIPPED {
            stripped += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// `VQAEval.manualMap`.
const NUMBER_WORDS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// `VQAEval.articles`.
const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// `VQAEval.contractions`, in the script's order. The capitalised keys never match (words are
/// lower-cased first) and `somebody'd` maps to `somebodyd`: both as in the original.
const CONTRACTIONS: [(&str, &str); 120] = [
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

static CONTRACTION_MAP: LazyLock<HashMap<&'static str, &'static str>> =
    LazyLock::new(|| CONTRACTIONS.into_iter().collect());

/// Mirrors `VQAEval.processDigitArticle`: lower-case, split on whitespace, number words to
/// digits, drop articles, expand contractions, join with single spaces.
fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(is_python_space)
        .filter(|w| !w.is_empty())
        .map(|w| {
            NUMBER_WORDS
                .iter()
                .find(|(word, _)| *word == w)
                .map_or(w, |&(_, digits)| digits)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| CONTRACTION_MAP.get(w).copied().unwrap_or(w))
        .collect();
    words.join(" ")
}

/// Reads a JSON file; errors name the file and, through serde_path_to_error, the key.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, VqaError> {
    crate::read_json(path, |detail| VqaError::Malformed {
        path: path.to_path_buf(),
        detail,
    })
}
