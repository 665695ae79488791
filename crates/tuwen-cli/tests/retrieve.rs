//! `tuwen retrieve` and `tuwen eval --task retrieval` end to end through the binary: a tiny
//! pretrained run with an ITC head ranks scene images for a caption and captions for an image,
//! reuses its embedding index, evaluates Recall@1/5/10, and refuses bad inputs clearly.

mod common;

use common::{ok, scenes, tuwen};

use std::path::{Path, PathBuf};
use std::process::Output;

/// The error message of a failed command.
fn fails(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

const PRETRAIN: &str = r#"
[run]
steps = 10
batch_size = 6
[model]
hidden_size = 32
layers = 2
heads = 2
itc_dim = 16
[data]
vocab_scenes = 200
[eval]
every = 10
scenes = 16
retrieval_images = 8
retrieval_top_k = 3
"#;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn retrieve_ranks_images_and_texts_with_both_scores_reuses_its_index_and_evaluates_recall() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("pre.toml");
    std::fs::write(&cfg, PRETRAIN).unwrap();
    let run = tmp.path().join("run");
    ok(&tuwen()
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap());
    let images = tmp.path().join("images");
    let captions = scenes(&images, 5);
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, captions.join("\n") + "\n\n").unwrap();
    let search = |query: &str, k: &str, extra: &[&str]| {
        tuwen()
            .args(["retrieve", "--run"])
            .arg(&run)
            .arg("--images")
            .arg(&images)
            .args(["--query", query, "--k", k])
            .args(extra)
            .output()
            .unwrap()
    };

    // Text -> image, JSON: k results ranked by ITM, each with both scores.
    let first = json(&ok(&search(&captions[0], "3", &["--json"])));
    assert_eq!(first["direction"], "text_to_image");
    assert_eq!(first["candidates"], 5);
    let results = first["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let itm: Vec<f64> = results.iter().map(|r| r["itm"].as_f64().unwrap()).collect();
    assert!(itm.windows(2).all(|w| w[0] >= w[1]), "{itm:?}");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        assert!((0.0..=1.0).contains(&r["itm"].as_f64().unwrap()));
        assert!(r["itc"].as_f64().unwrap().abs() <= 1.0001);
        assert!(Path::new(r["image"].as_str().unwrap()).is_file());
    }
    assert_eq!(first["index"]["images"]["computed"], 5);
    assert_eq!(first["index"]["images"]["cached"], 0);
    // The second call reads every embedding from the index.
    let second = json(&ok(&search(&captions[0], "3", &["--json"])));
    assert_eq!(second["index"]["images"]["cached"], 5);
    assert_eq!(second["index"]["images"]["computed"], 0);
    assert_eq!(second["index"]["texts"]["cached"], 1);
    assert_eq!(second["results"], first["results"]);

    // Text output: a header, one line per result, the index report on stderr.
    let out = search(&captions[0], "2", &[]);
    let stdout = ok(&out);
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(stdout.contains("ITM") && stdout.contains("ITC") && stdout.contains(".png"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("5 image(s) cached, 0 computed"), "{stderr}");

    // Image -> text, with an index directory of its own.
    let index = tmp.path().join("index");
    let out = tuwen()
        .args(["retrieve", "--run"])
        .arg(&run)
        .arg("--image")
        .arg(images.join("2.png"))
        .arg("--texts")
        .arg(&texts)
        .args(["--k", "4", "--json", "--index"])
        .arg(&index)
        .output()
        .unwrap();
    let reverse = json(&ok(&out));
    assert_eq!(reverse["direction"], "image_to_text");
    let results = reverse["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for r in results {
        assert!(captions.contains(&r["text"].as_str().unwrap().to_string()));
    }
    assert!(index.join("texts.json").is_file() && index.join("images.json").is_file());

    // Held-out evaluation: R@1/5/10 both ways in [0, 1], next to ITM over all pairs.
    let out = tuwen()
        .args(["eval", "--task", "retrieval", "--run"])
        .arg(&run)
        .args(["--images", "8", "--k", "3", "--all-pairs"])
        .output()
        .unwrap();
    let report = json(&ok(&out));
    assert_eq!(report["images"], 8);
    assert_eq!(report["split"], "test");
    for part in [&report, &report["all_pairs"]] {
        for way in ["image_to_text", "text_to_image"] {
            for r in ["r1", "r5", "r10"] {
                let v = part[way][r].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&v), "{way} {r} {v}: {report}");
            }
        }
        assert!(part["seconds"].as_f64().unwrap() >= 0.0);
    }
    // Re-ranking all 8 candidates puts every right answer in the top 10.
    assert_eq!(report["all_pairs"]["image_to_text"]["r10"], 1.0);

    // Bad inputs: clear errors, no panics.
    let e = fails(&search(&captions[0], "0", &[]));
    assert!(e.contains("--k must be at least 1"), "{e}");
    let retrieve_in = |dir: &PathBuf| {
        tuwen()
            .args(["retrieve", "--run"])
            .arg(&run)
            .arg("--images")
            .arg(dir)
            .args(["--query", "a red circle"])
            .output()
            .unwrap()
    };
    let e = fails(&retrieve_in(&tmp.path().join("nope")));
    assert!(e.contains("nope") && e.contains("no such directory"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fails(&retrieve_in(&empty));
    assert!(e.contains("no images"), "{e}");
    std::fs::write(images.join("broken.png"), b"not a png at all").unwrap();
    let e = fails(&retrieve_in(&images));
    assert!(e.contains("broken.png"), "{e}");
    let blank = tmp.path().join("blank.txt");
    std::fs::write(&blank, "\n\n").unwrap();
    let e = fails(
        &tuwen()
            .args(["retrieve", "--run"])
            .arg(&run)
            .arg("--image")
            .arg(images.join("0.png"))
            .arg("--texts")
            .arg(&blank)
            .output()
            .unwrap(),
    );
    assert!(e.contains("blank.txt") && e.contains("no texts"), "{e}");
    let e = fails(
        &tuwen()
            .args(["retrieve", "--run"])
            .arg(&run)
            .args(["--query", "a red circle"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("--images"), "{e}");

    // A run without an ITC head.
    std::fs::write(&cfg, PRETRAIN.replace("itc_dim = 16", "itc_dim = 0")).unwrap();
    let plain = tmp.path().join("plain");
    ok(&tuwen()
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&plain)
        .output()
        .unwrap());
    let e = fails(
        &tuwen()
            .args(["retrieve", "--run"])
            .arg(&plain)
            .arg("--images")
            .arg(images.join("0.png").parent().unwrap())
            .args(["--query", "a red circle"])
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("has no ITC head") && e.contains("itc_dim > 0"),
        "{e}"
    );
    let e = fails(
        &tuwen()
            .args(["eval", "--task", "retrieval", "--run"])
            .arg(&plain)
            .output()
            .unwrap(),
    );
    assert!(e.contains("has no ITC head"), "{e}");
}
