//! Scene pretraining batches.

use rand::SeedableRng;
use rand::rngs::StdRng;
use tuwen_data::scene::{COLORS, SceneConfig, Split};
use tuwen_objectives::itm::MatchLabel;
use tuwen_objectives::mlm::MaskingConfig;
use tuwen_testkit::flex;
use tuwen_train::batch::{SceneBatcher, pooled_pixels};

fn batcher() -> SceneBatcher {
    let scenes = SceneConfig::default();
    SceneBatcher {
        tokenizer: SceneBatcher::train_tokenizer(&scenes, 3, 300).unwrap(),
        scenes,
        seed: 3,
        pool: 4,
        masking: MaskingConfig::default(),
        mismatch_prob: 0.5,
    }
}

#[test]
fn pooled_pixels_of_a_square_are_its_colour() {
    let mut checked = 0;
    for i in 0..50 {
        let scene = SceneConfig::default().generate(3, Split::Train, i);
        for o in &scene.objects {
            let alone = scene
                .objects
                .iter()
                .all(|x| x.bbox == o.bbox || x.bbox.iou(o.bbox) == 0.0);
            if o.shape != tuwen_data::scene::Shape::Square || !alone {
                continue;
            }
            let v = pooled_pixels(&scene.image, o.bbox, 2);
            let want = COLORS[o.color].1.map(|c| c as f32 / 255.0 - 0.5);
            for c in 0..3 {
                for cell in 0..4 {
                    assert!(
                        (v[c * 4 + cell] - want[c]).abs() < 1e-5,
                        "scene {i}: {v:?} vs {want:?}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 5, "only {checked} isolated squares");
}

#[test]
fn batches_pair_captions_regions_and_labels_consistently() {
    let b = batcher();
    let mut rng = StdRng::seed_from_u64(11);
    let indices: Vec<u64> = (0..16).collect();
    let batch = b.batch(Split::Train, &indices, &mut rng, &flex()).unwrap();
    let [rows, len] = batch.input.input_ids.dims();
    assert_eq!(rows, 16);
    let [_, regions, dim] = batch.input.visual_embeds.dims();
    assert_eq!(dim, 48);
    let mask: Vec<i64> = batch
        .input
        .visual_attention_mask
        .clone()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    let locs: Vec<f32> = batch
        .input
        .visual_locations
        .clone()
        .unwrap()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    for (row, &i) in indices.iter().enumerate() {
        let scene = b.scenes.generate(3, Split::Train, i);
        let real = mask[row * regions..(row + 1) * regions].iter().sum::<i64>() as usize;
        assert_eq!(
            real,
            scene.objects.len() + 1,
            "whole image + one region per object"
        );
        assert_eq!(
            &locs[row * regions * 5..row * regions * 5 + 5],
            &[0.0, 0.0, 1.0, 1.0, 1.0]
        );
    }
    let mismatched = batch
        .itm
        .iter()
        .filter(|&&l| l == MatchLabel::Mismatch)
        .count();
    assert!(
        mismatched > 0 && mismatched < 16,
        "{mismatched} mismatched of 16"
    );
    assert!(!batch.mlm_positions.is_empty());
    for &p in &batch.mlm_positions {
        assert_eq!(
            batch.itm[p / len],
            MatchLabel::Match,
            "MLM only on matched pairs"
        );
    }
    // Same rng seed, same batch.
    let again = b
        .batch(
            Split::Train,
            &indices,
            &mut StdRng::seed_from_u64(11),
            &flex(),
        )
        .unwrap();
    assert_eq!(again.itm, batch.itm);
    assert_eq!(again.mlm_labels, batch.mlm_labels);
}
