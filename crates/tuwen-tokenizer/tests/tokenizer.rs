//! Tokenizer behaviour that needs no downloaded asset: training, batching, decoding, errors.

use burn::tensor::Device;
use tuwen_tokenizer::{BertTokenizer, Padding, TokenizerError, TokenizerOptions, TrainOptions};

/// A small caption corpus in the style of the built-in scene data.
fn corpus() -> Vec<String> {
    let colours = ["red", "green", "blue", "yellow", "purple", "orange"];
    let shapes = ["circle", "square", "triangle", "star"];
    let relations = ["left of", "right of", "above", "below"];
    let mut out = Vec::new();
    for (i, c1) in colours.iter().enumerate() {
        for (j, s1) in shapes.iter().enumerate() {
            for rel in relations {
                let c2 = colours[(i + j + 1) % colours.len()];
                let s2 = shapes[(i + 2 * j + 1) % shapes.len()];
                out.push(format!("A small {c1} {s1} {rel} a large {c2} {s2}."));
                out.push(format!("Two {c1} {s1}s and one {c2} {s2}."));
            }
        }
    }
    out
}

fn trained(options: TokenizerOptions) -> BertTokenizer {
    let train = TrainOptions {
        vocab_size: 200,
        min_frequency: 1,
        limit_alphabet: None,
    };
    BertTokenizer::train(corpus().iter(), &train, options).unwrap()
}

fn device() -> Device {
    tuwen_testkit::flex()
}

#[test]
fn trained_vocabulary_has_bert_specials_first_and_whole_words() {
    let tok = trained(TokenizerOptions::default());
    let s = *tok.special_tokens();
    assert_eq!((s.pad, s.unk, s.cls, s.sep, s.mask), (0, 1, 2, 3, 4));
    assert!(tok.vocab_size() <= 200, "vocab size {}", tok.vocab_size());
    let enc = tok
        .encode("A small red circle left of a large blue star.")
        .unwrap();
    assert_eq!(enc.ids[0], s.cls);
    assert_eq!(*enc.ids.last().unwrap(), s.sep);
    // Frequent caption words become single tokens; nothing is unknown.
    for word in ["red", "circle", "left", "large", "star"] {
        let id = tok
            .token_to_id(word)
            .unwrap_or_else(|| panic!("{word} not in vocab"));
        assert!(
            enc.ids.contains(&id),
            "{word} not encoded as one token: {:?}",
            enc.ids
        );
    }
    assert!(!enc.ids.contains(&s.unk));
    assert_eq!(
        tok.decode(&enc.ids, true).unwrap(),
        "a small red circle left of a large blue star."
    );
}

#[test]
fn unseen_words_split_into_pieces_not_unknown() {
    let tok = trained(TokenizerOptions::default());
    let enc = tok.encode("reds squares").unwrap();
    let pieces: Vec<String> = enc
        .ids
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap())
        .collect();
    assert!(pieces.iter().any(|p| p.starts_with("##")), "{pieces:?}");
    assert_eq!(tok.decode(&enc.ids, true).unwrap(), "reds squares");
}

#[test]
fn saved_vocab_and_json_reload_to_the_same_ids() {
    let tok = trained(TokenizerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.txt");
    let json = dir.path().join("tokenizer.json");
    tok.save_vocab(&vocab).unwrap();
    tok.save_json(&json).unwrap();
    let text = "Two purple stars above an orange triangle.";
    let expected = tok.encode(text).unwrap();
    for path in [&vocab, &json] {
        let reloaded = BertTokenizer::from_file(path, TokenizerOptions::default()).unwrap();
        assert_eq!(
            reloaded.encode(text).unwrap(),
            expected,
            "{}",
            path.display()
        );
    }
}

#[test]
fn batch_pads_to_longest_with_mask_and_types() {
    let tok = trained(TokenizerOptions::default());
    let texts = ["a red circle", "two blue squares left of a green star"];
    let encoded = tok.encode_batch(&texts).unwrap();
    let batch = tok.batch(&texts, &device()).unwrap();
    let longest = encoded.iter().map(|e| e.len()).max().unwrap();
    assert_eq!(batch.input_ids.dims(), [2, longest]);
    assert_eq!(batch.lengths, vec![encoded[0].len(), encoded[1].len()]);
    let ids: Vec<i64> = batch.input_ids.to_data().try_into_vec_as::<i64>().unwrap();
    let mask: Vec<i64> = batch
        .attention_mask
        .to_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    for (row, enc) in encoded.iter().enumerate() {
        for j in 0..longest {
            let (id, m) = (ids[row * longest + j], mask[row * longest + j]);
            if j < enc.len() {
                assert_eq!((id, m), (i64::from(enc.ids[j]), 1));
            } else {
                assert_eq!((id, m), (i64::from(tok.special_tokens().pad), 0));
            }
        }
    }
}

#[test]
fn fixed_padding_and_pair_types() {
    let tok = trained(
        TokenizerOptions::default()
            .with_max_len(12)
            .with_padding(Padding::Fixed),
    );
    let batch = tok
        .batch_pairs(
            &[(
                "red circle",
                "a red circle above a blue star and a green square",
            )],
            &device(),
        )
        .unwrap();
    assert_eq!(batch.input_ids.dims(), [1, 12]);
    let types: Vec<i64> = batch
        .token_type_ids
        .to_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    // [CLS] red circle [SEP] -> 4 tokens of type 0; the second text is truncated (longest
    // first) to fill the remaining 8 positions, closing [SEP] included, all of type 1.
    assert_eq!(&types[..4], &[0; 4]);
    assert_eq!(&types[4..], &[1; 8]);
    let mask: Vec<i64> = batch
        .attention_mask
        .to_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    assert_eq!(mask, vec![1; 12], "a truncated pair fills max_len exactly");
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.txt");
    let err = BertTokenizer::from_vocab(&missing, TokenizerOptions::default()).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }));
    assert!(err.to_string().contains("nope.txt"), "{err}");

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let err = BertTokenizer::from_vocab(&empty, TokenizerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let no_mask = dir.path().join("no_mask.txt");
    std::fs::write(&no_mask, "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n").unwrap();
    let err = BertTokenizer::from_vocab(&no_mask, TokenizerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("[MASK]"), "{err}");
    assert!(err.to_string().contains("no_mask.txt"), "{err}");

    let bad_json = dir.path().join("tokenizer.json");
    std::fs::write(&bad_json, "{ not json").unwrap();
    let err = BertTokenizer::from_file(&bad_json, TokenizerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let tok = trained(TokenizerOptions::default());
    let err = tok.decode(&[2, 99_999], false).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnknownId { id: 99_999, .. }),
        "{err}"
    );
}

#[test]
fn max_len_too_small_is_rejected() {
    let train = TrainOptions {
        vocab_size: 100,
        min_frequency: 1,
        limit_alphabet: None,
    };
    let err = BertTokenizer::train(
        corpus().iter(),
        &train,
        TokenizerOptions::default().with_max_len(2),
    )
    .unwrap_err();
    assert!(matches!(err, TokenizerError::Options(_)), "{err}");
}

#[test]
fn word_vocabulary_is_deterministic_frequency_ordered_and_covers_unseen_words() {
    let a = BertTokenizer::word_vocabulary(corpus().iter(), 1000, true).unwrap();
    let b = BertTokenizer::word_vocabulary(corpus().iter(), 1000, true).unwrap();
    assert_eq!(a, b, "same corpus, same tokens in the same order");
    assert_eq!(a[..5], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
    // "." ends every caption and "a" occurs twice in every other one: both 192 times, the
    // most frequent words; the tie keeps alphabetical order.
    assert_eq!(a[5..7], [".", "a"]);
    let pos = |t: &str| a.iter().position(|x| x == t).unwrap();
    assert!(pos("blue") < pos("green"), "equal counts: alphabetical");
    assert!(a.contains(&"##q".to_string()) && a.contains(&"q".to_string()));

    let tok = BertTokenizer::from_tokens(&a, TokenizerOptions::default()).unwrap();
    let s = *tok.special_tokens();
    assert_eq!((s.pad, s.unk, s.cls, s.sep, s.mask), (0, 1, 2, 3, 4));
    let enc = tok.encode("Two purple stars left of a star.").unwrap();
    assert!(!enc.ids.contains(&s.unk));
    assert!(enc.ids.contains(&tok.token_to_id("purple").unwrap()));
    // Unseen words fall back to characters.
    let unseen = tok.encode("quit").unwrap();
    assert!(!unseen.ids.contains(&s.unk));
    assert_eq!(tok.decode(&unseen.ids, true).unwrap(), "quit");

    // Only the most frequent words when capped.
    let capped = BertTokenizer::word_vocabulary(corpus().iter(), 3, true).unwrap();
    assert_eq!(capped[5..8], [".", "a", "and"]);
    assert!(!capped.contains(&"purple".to_string()));
}

#[test]
fn a_token_list_with_duplicates_is_rejected() {
    let tokens: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "red"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let err = BertTokenizer::from_tokens(&tokens, TokenizerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("\"red\" appears twice"), "{err}");
}
