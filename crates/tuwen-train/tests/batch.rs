//! Scene pretraining batches.

use rand::SeedableRng;
use rand::rngs::StdRng;
use tuwen_data::scene::{COLORS, SceneConfig, Split};
use tuwen_objectives::itm::MatchLabel;
use tuwen_objectives::mlm::{IGNORE, MaskingConfig};
use tuwen_objectives::mrm::RegionMaskingConfig;
use tuwen_testkit::flex;
use tuwen_train::batch::{REGION_CLASSES, SceneBatcher, pooled_pixels};

fn batcher() -> SceneBatcher {
    let scenes = SceneConfig::default();
    SceneBatcher {
        tokenizer: SceneBatcher::train_tokenizer(&scenes, 3, 300, 24).unwrap(),
        scenes,
        seed: 3,
        pool: 4,
        masking: MaskingConfig::default(),
        mismatch_prob: 0.5,
        region_masking: Some(RegionMaskingConfig::VILBERT),
        scenes_per_split: 0,
        region_features: None,
        answers: None,
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
    let input = batch.visual_bert_input(tuwen_train::batch::View::Joint);
    let [rows, len] = input.input_ids.dims();
    assert_eq!(rows, 16);
    let [_, regions, dim] = input.visual_embeds.dims();
    assert_eq!(dim, 48);
    let mask: Vec<i64> = input
        .visual_attention_mask
        .clone()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    let locs: Vec<f32> = input
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

#[test]
fn masked_regions_are_real_objects_of_matched_pairs_with_their_class() {
    let b = batcher();
    let indices: Vec<u64> = (0..32).collect();
    let host = b
        .host_batch(Split::Train, &indices, &mut StdRng::seed_from_u64(5))
        .unwrap();
    assert!(!host.region_positions.is_empty());
    for &p in &host.region_positions {
        let (row, region) = (p / host.regions, p % host.regions);
        assert_ne!(region, 0, "the whole-image region is never masked");
        assert_eq!(host.itm[row], MatchLabel::Match);
        let label = host.region_labels[p];
        assert!((0..REGION_CLASSES as i64).contains(&label));
        let (_, scene) = b.scene(Split::Train, indices[row]);
        let o = &scene.objects[region - 1];
        let shape = tuwen_data::scene::Shape::ALL
            .iter()
            .position(|&s| s == o.shape)
            .unwrap();
        assert_eq!(label, (shape * COLORS.len() + o.color) as i64);
    }
    // Whole-image and padded regions carry no class.
    for row in 0..host.rows {
        assert_eq!(host.region_labels[row * host.regions], IGNORE);
    }
}

#[test]
fn a_split_batch_is_the_same_examples_with_re_indexed_positions() {
    let b = batcher();
    let indices: Vec<u64> = (0..7).collect();
    let host = b
        .host_batch(Split::Train, &indices, &mut StdRng::seed_from_u64(9))
        .unwrap();
    let parts = host.split(3);
    assert_eq!(
        parts.iter().map(|p| p.rows).collect::<Vec<_>>(),
        vec![3, 2, 2]
    );
    let mut mlm = Vec::new();
    let mut regions = Vec::new();
    let mut ids: Vec<i64> = Vec::new();
    let mut row0 = 0;
    for part in &parts {
        assert_eq!((part.text_len, part.regions), (host.text_len, host.regions));
        mlm.extend(part.mlm_positions.iter().map(|p| p + row0 * host.text_len));
        regions.extend(
            part.region_positions
                .iter()
                .map(|p| p + row0 * host.regions),
        );
        ids.extend(&part.input_ids);
        row0 += part.rows;
    }
    assert_eq!(mlm, host.mlm_positions);
    assert_eq!(regions, host.region_positions);
    assert_eq!(ids, host.input_ids);
    assert_eq!(host.split(1)[0], host);
}

/// The image view of contrastive and retrieval passes sees the regions before masking (as the
/// text view sees the caption before MLM masking); the joint view sees them masked.
#[test]
fn the_image_view_sees_unmasked_regions() {
    use tuwen_train::batch::View;
    let b = batcher();
    let mut rng = StdRng::seed_from_u64(5);
    let indices: Vec<u64> = (0..16).collect();
    let host = b.host_batch(Split::Train, &indices, &mut rng).unwrap();
    assert!(!host.region_positions.is_empty(), "no region was masked");
    let unmasked = host
        .unmasked_features
        .clone()
        .expect("unmasked features kept");
    assert_ne!(unmasked, host.features, "masking changed nothing");
    let batch = host.to_device(&flex());
    let read = |t: burn::tensor::Tensor<3>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let image = read(batch.visual_bert_input(View::Image).visual_embeds);
    assert_eq!(image, unmasked);
    let joint = read(batch.visual_bert_input(View::Joint).visual_embeds);
    assert_eq!(joint, host.features);
    // Slicing keeps the two in step.
    let part = host.slice(3..7);
    let (r, d) = (host.regions, host.feature_dim);
    assert_eq!(
        part.unmasked_features.unwrap(),
        unmasked[3 * r * d..7 * r * d].to_vec()
    );
}

/// One process of a data-parallel job builds its rows only (`host_batch_rows`): its parts of the
/// batch are those of the whole batch — masks, labels and the region swaps into its rows (which
/// read other rows' features) included — and so are the step's totals; the other rows' features
/// are not computed, except those a swap reads.
#[test]
fn a_process_builds_its_own_rows_as_the_whole_batch_has_them() {
    let mut b = batcher();
    // Many swaps: rows of one process read features of the others'.
    b.region_masking = Some(RegionMaskingConfig {
        mask_prob: 0.5,
        zero_prob: 0.2,
        swap_prob: 0.7,
    });
    let indices: Vec<u64> = (0..12).collect();
    let build = |own| {
        let mut rng = StdRng::seed_from_u64(9);
        b.host_batch_rows(Split::Train, &indices, own, &mut rng)
            .unwrap()
    };
    let whole = build(None);
    let (ranks, local) = (3, 2);
    let (mut read_for_swaps, mut unread) = (0, 0);
    for rank in 0..ranks {
        let own = tuwen_train::pretrain::own_rows(12, rank, ranks, local).unwrap();
        let mine = build(Some(own.clone()));
        assert_eq!(mine.mlm_positions, whole.mlm_positions);
        assert_eq!(mine.region_positions, whole.region_positions);
        assert_eq!(mine.itm, whole.itm);
        let (a, b) = (mine.split(ranks * local), whole.split(ranks * local));
        for part in rank * local..(rank + 1) * local {
            assert_eq!(a[part], b[part], "rank {rank}, part {part}");
        }
        let width = whole.regions * whole.feature_dim;
        for row in (0..12).filter(|r| !own.contains(r)) {
            let features = &mine.unmasked_features.as_ref().unwrap()[row * width..][..width];
            if features.iter().all(|&v| v == 0.0) {
                unread += 1;
            } else {
                read_for_swaps += 1;
            }
        }
    }
    assert!(read_for_swaps > 0, "no swap read another process's row");
    assert!(unread > 0, "every other row was read");
}
