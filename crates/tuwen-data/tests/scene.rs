//! The scene generator: determinism, disjoint splits, and labels consistent with the pixels.

use tuwen_data::scene::{COLORS, SceneConfig, Split};

#[test]
fn scenes_are_deterministic_and_splits_disjoint() {
    let cfg = SceneConfig::default();
    let a = cfg.generate(42, Split::Train, 5);
    let b = cfg.generate(42, Split::Train, 5);
    assert_eq!(a.image, b.image);
    assert_eq!(a.captions, b.captions);
    assert_eq!(a.qa, b.qa);
    let train: Vec<_> = (0..50)
        .map(|i| cfg.generate(42, Split::Train, i).image)
        .collect();
    for i in 0..50 {
        let test = cfg.generate(42, Split::Test, i).image;
        assert!(!train.contains(&test), "test scene {i} also in train");
    }
    assert_ne!(
        cfg.generate(43, Split::Train, 5).image,
        a.image,
        "the seed matters"
    );
}

#[test]
fn boxes_labels_captions_and_answers_agree_with_the_scene() {
    let cfg = SceneConfig::default();
    let mut kinds = std::collections::HashSet::new();
    for i in 0..200 {
        let s = cfg.generate(1, Split::Train, i);
        assert!((1..=4).contains(&s.objects.len()));
        for o in &s.objects {
            // The object's colour appears inside its box (no other object hides all of it).
            let rgb = COLORS[o.color].1;
            let b = o.bbox;
            let found = (b.y1 as u32..b.y2 as u32)
                .any(|y| (b.x1 as u32..b.x2 as u32).any(|x| s.image.get_pixel(x, y).0 == rgb));
            assert!(found, "scene {i}: {o:?} not drawn");
            assert!(b.x2 <= cfg.image_size as f32 && b.y2 <= cfg.image_size as f32);
        }
        for p in &s.phrases {
            let text = &s.captions[p.caption][p.span.clone()];
            for &j in &p.objects {
                let o = &s.objects[j];
                assert!(text.contains(o.color_name()), "{text:?} vs {o:?}");
                assert!(text.contains(&o.shape.name()[..4]), "{text:?} vs {o:?}");
            }
        }
        for qa in &s.qa {
            kinds.insert(qa.kind);
            if qa.kind == "count" {
                let shape = qa.question.split_whitespace().nth(2).unwrap();
                let n = s
                    .objects
                    .iter()
                    .filter(|o| shape.starts_with(o.shape.name()))
                    .count();
                assert_eq!(
                    qa.answer,
                    ["zero", "one", "two", "three", "four"][n],
                    "{}",
                    qa.question
                );
            }
            if qa.kind == "exist" {
                let words: Vec<&str> = qa
                    .question
                    .trim_end_matches('?')
                    .split_whitespace()
                    .collect();
                let (color, shape) = (words[3], words[4]);
                let yes = s
                    .objects
                    .iter()
                    .any(|o| o.color_name() == color && o.shape.name() == shape);
                assert_eq!(qa.answer, if yes { "yes" } else { "no" }, "{}", qa.question);
            }
        }
        assert!(s.captions.iter().all(|c| c.ends_with('.')));
    }
    for k in ["color", "shape", "count", "exist", "relation"] {
        assert!(kinds.contains(k), "no {k} question in 200 scenes");
    }
}

#[test]
#[ignore = "writes sample PNGs to $TUWEN_SCENE_DUMP for visual inspection"]
fn dump_samples() {
    let dir = std::env::var("TUWEN_SCENE_DUMP").unwrap_or_else(|_| "/tmp".into());
    for i in 0..4 {
        let s = SceneConfig {
            image_size: 128,
            ..SceneConfig::default()
        }
        .generate(1, Split::Train, i);
        s.image.save(format!("{dir}/scene{i}.png")).unwrap();
        println!("scene{i}: {:?} {:?}", s.captions, s.qa);
    }
}
