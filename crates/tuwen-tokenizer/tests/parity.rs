//! Token-id parity with HF `BertTokenizerFast` on the real bert-base-uncased vocabulary.
//!
//! Reference ids: `fixtures/bert_base_uncased.json`, made by `fixtures/make_fixture.py`.
//! The vocabulary comes from `cargo xtask assets` (asset `minilm`).

use std::path::PathBuf;

use serde::Deserialize;
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    text_b: Option<String>,
    max_len: Option<usize>,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    decoded: Option<String>,
}

fn fixture() -> Fixture {
    let path = tuwen_testkit::package_path("tests/fixtures/bert_base_uncased.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn asset(test: &str, file: &str) -> Option<PathBuf> {
    match tuwen_assets::locate("minilm", file) {
        Ok(path) => Some(path),
        Err(e) => {
            tuwen_testkit::skip_or_fail(test, &e.to_string());
            None
        }
    }
}

fn check_all(tok_for: impl Fn(usize) -> BertTokenizer) {
    let fixture = fixture();
    assert!(fixture.cases.len() >= 20, "fixture lost cases");
    for case in &fixture.cases {
        let tok = tok_for(case.max_len.unwrap_or(512));
        let enc = match &case.text_b {
            Some(b) => tok.encode_pair(&case.text, b).unwrap(),
            None => tok.encode(&case.text).unwrap(),
        };
        assert_eq!(
            enc.ids, case.ids,
            "ids of {:?} / {:?}",
            case.text, case.text_b
        );
        assert_eq!(enc.type_ids, case.type_ids, "type ids of {:?}", case.text);
        if let Some(decoded) = &case.decoded {
            assert_eq!(
                &tok.decode(&enc.ids, true).unwrap(),
                decoded,
                "decode of {:?}",
                case.text
            );
        }
    }
}

#[test]
fn vocab_txt_matches_hf_bert_tokenizer() {
    let Some(vocab) = asset("vocab_txt_matches_hf_bert_tokenizer", "vocab.txt") else {
        return;
    };
    check_all(|max_len| {
        BertTokenizer::from_vocab(&vocab, TokenizerOptions::default().with_max_len(max_len))
            .unwrap()
    });
}

#[test]
fn tokenizer_json_matches_hf_and_ignores_its_padding() {
    let Some(json) = asset(
        "tokenizer_json_matches_hf_and_ignores_its_padding",
        "tokenizer.json",
    ) else {
        return;
    };
    // The file pads and truncates to 128; our options must win (no padding in `encode`).
    check_all(|max_len| {
        BertTokenizer::from_tokenizer_json(&json, TokenizerOptions::default().with_max_len(max_len))
            .unwrap()
    });
}

#[test]
fn special_token_ids_of_bert_base_uncased() {
    let Some(vocab) = asset("special_token_ids_of_bert_base_uncased", "vocab.txt") else {
        return;
    };
    let tok = BertTokenizer::from_vocab(&vocab, TokenizerOptions::default()).unwrap();
    let s = tok.special_tokens();
    assert_eq!(
        (s.pad, s.unk, s.cls, s.sep, s.mask),
        (0, 100, 101, 102, 103)
    );
    assert_eq!(tok.vocab_size(), 30_522);
}
