//! Zero-shot retrieval evaluation the way ALBEF/BLIP do it: ITC similarities rank all pairs,
//! the (expensive) ITM head re-scores only the top-k candidates of each query, and Recall@K is
//! read off the re-ranked lists. All-pairs cross-encoder scoring is O(N^2) model calls; this is
//! O(N k). The same ranking serves users: `retrieve` (image files and texts with a trained run)
//! ranks by [`similarities`] and [`top_k`], then re-ranks by ITM.

use std::collections::HashMap;

/// Recall@1/5/10 in both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recalls {
    /// Image -> text R@1, R@5, R@10.
    pub image_to_text: [f32; 3],
    /// Text -> image R@1, R@5, R@10.
    pub text_to_image: [f32; 3],
}

/// Dot products of every query with every key (`queries x keys`, row-major): cosine
/// similarities when both sides are L2-normalised, as ITC embeddings are.
pub fn similarities(queries: &[Vec<f32>], keys: &[Vec<f32>]) -> Vec<f32> {
    queries
        .iter()
        .flat_map(|q| {
            keys.iter()
                .map(move |k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>())
        })
        .collect()
}

/// The `k` most similar columns of each row of `sim` (`rows x cols`, row-major), best first
/// (ties keep column order; `k` larger than `cols` gives every column).
pub fn top_k(sim: &[f32], rows: usize, cols: usize, k: usize) -> Vec<Vec<usize>> {
    (0..rows)
        .map(|r| {
            let row = &sim[r * cols..(r + 1) * cols];
            let mut idx: Vec<usize> = (0..cols).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            idx.truncate(k);
            idx
        })
        .collect()
}

fn recall(ranked: &[Vec<usize>], gold: impl Fn(usize, usize) -> bool) -> [f32; 3] {
    let n = ranked.len().max(1) as f32;
    [1, 5, 10].map(|k| {
        ranked
            .iter()
            .enumerate()
            .filter(|(q, list)| list.iter().take(k).any(|&c| gold(*q, c)))
            .count() as f32
            / n
    })
}

/// Retrieval over `images` x `texts` with ITC similarities `sim` (`images x texts`, row-major).
/// `text_image[t]` is the image of text `t`. `itm(image, &texts)` returns the ITM match scores of
/// one image against candidate texts and is called only on the top `k` of each query (for
/// text -> image, once per image with the texts that have it among their top `k` and were not
/// already scored for image -> text): every pair is scored at most once, so `k >= texts` (and
/// `>= images`) is exactly ITM over all pairs, the cross-encoder baseline.
pub fn evaluate(
    sim: &[f32],
    images: usize,
    texts: usize,
    text_image: &[usize],
    k: usize,
    mut itm: impl FnMut(usize, &[usize]) -> Vec<f32>,
) -> Recalls {
    // ITM scores by (text, image), each pair scored once for both directions.
    let mut score: HashMap<(usize, usize), f32> = HashMap::new();
    // Image -> text: re-rank each image's top-k texts by ITM.
    let i2t: Vec<Vec<usize>> = top_k(sim, images, texts, k)
        .into_iter()
        .enumerate()
        .map(|(img, cands)| {
            let scores = itm(img, &cands);
            for (&t, &s) in cands.iter().zip(&scores) {
                score.insert((t, img), s);
            }
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            order.into_iter().map(|i| cands[i]).collect()
        })
        .collect();
    // Text -> image: each text's top-k images; ITM scores grouped per image.
    let transposed: Vec<f32> = (0..texts * images)
        .map(|i| sim[(i % images) * texts + i / images])
        .collect();
    let t2i_cands = top_k(&transposed, texts, images, k);
    let mut per_image: Vec<Vec<usize>> = vec![Vec::new(); images];
    for (t, cands) in t2i_cands.iter().enumerate() {
        for &img in cands {
            if !score.contains_key(&(t, img)) {
                per_image[img].push(t);
            }
        }
    }
    for (img, ts) in per_image.iter().enumerate() {
        if !ts.is_empty() {
            for (t, s) in ts.iter().zip(itm(img, ts)) {
                score.insert((*t, img), s);
            }
        }
    }
    let t2i: Vec<Vec<usize>> = t2i_cands
        .into_iter()
        .enumerate()
        .map(|(t, mut cands)| {
            cands.sort_by(|&a, &b| score[&(t, b)].total_cmp(&score[&(t, a)]));
            cands
        })
        .collect();
    Recalls {
        image_to_text: recall(&i2t, |img, t| text_image[t] == img),
        text_to_image: recall(&t2i, |t, img| text_image[t] == img),
    }
}
