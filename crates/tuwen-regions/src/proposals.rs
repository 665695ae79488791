//! Region proposals without a trained detector: multi-scale grid and sliding-window boxes, and
//! greedy non-maximum suppression.
//!
//! NMS runs on the host over a few hundred boxes per image, where a plain greedy loop is both exact
//! and cheap; it is written here rather than taken from burn-vision so the crate builds on every
//! backend (burn-vision has no ndarray kernels).

use crate::BoxXyxy;

/// How candidate boxes are laid out over an image.
#[derive(Clone, Debug, PartialEq)]
pub struct ProposalConfig {
    /// Grid sizes: `n` gives an `n` x `n` tiling of the image.
    pub grids: Vec<usize>,
    /// Sliding windows as fractions of the image side, moved by half their size.
    pub windows: Vec<f32>,
    /// Window aspect ratios (width / height) for the sliding windows.
    pub aspect_ratios: Vec<f32>,
}

impl Default for ProposalConfig {
    fn default() -> Self {
        Self {
            grids: vec![1, 2, 3, 4],
            windows: vec![0.3, 0.5, 0.7],
            aspect_ratios: vec![0.5, 1.0, 2.0],
        }
    }
}

impl ProposalConfig {
    /// Candidate boxes for a `width` x `height` image, in its pixel coordinates, clipped to it.
    pub fn propose(&self, width: f32, height: f32) -> Vec<BoxXyxy> {
        let mut out = Vec::new();
        for &n in &self.grids {
            let (cw, ch) = (width / n as f32, height / n as f32);
            for i in 0..n {
                for j in 0..n {
                    out.push(BoxXyxy::new(
                        j as f32 * cw,
                        i as f32 * ch,
                        (j + 1) as f32 * cw,
                        (i + 1) as f32 * ch,
                    ));
                }
            }
        }
        let side = width.min(height);
        for &fraction in &self.windows {
            for &ratio in &self.aspect_ratios {
                let w = (side * fraction * ratio.sqrt()).min(width);
                let h = (side * fraction / ratio.sqrt()).min(height);
                let (sx, sy) = ((w / 2.0).max(1.0), (h / 2.0).max(1.0));
                let mut y = 0.0;
                while y + h <= height + 0.5 {
                    let mut x = 0.0;
                    while x + w <= width + 0.5 {
                        out.push(BoxXyxy::new(x, y, x + w, y + h).clip(width, height));
                        x += sx;
                    }
                    y += sy;
                }
            }
        }
        out
    }
}

/// Greedy NMS: indices of the kept boxes, highest score first. A box is dropped when its IoU with
/// an already kept box exceeds `iou_threshold`. At most `max_keep` boxes are kept.
pub fn nms(boxes: &[BoxXyxy], scores: &[f32], iou_threshold: f32, max_keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len().min(scores.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.len() == max_keep {
            break;
        }
        if keep
            .iter()
            .all(|&k| boxes[k].iou(boxes[i]) <= iou_threshold)
        {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_cover_the_image_at_several_scales() {
        let boxes = ProposalConfig::default().propose(640.0, 480.0);
        assert!(boxes.len() > 50, "{}", boxes.len());
        assert!(boxes.contains(&BoxXyxy::new(0.0, 0.0, 640.0, 480.0)));
        for b in &boxes {
            assert!(
                b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= 640.0 && b.y2 <= 480.0,
                "{b:?}"
            );
            assert!(b.area() > 0.0);
        }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = [
            BoxXyxy::new(0.0, 0.0, 10.0, 10.0),
            BoxXyxy::new(1.0, 1.0, 11.0, 11.0),
            BoxXyxy::new(20.0, 20.0, 30.0, 30.0),
            BoxXyxy::new(0.0, 0.0, 9.0, 10.0),
        ];
        let scores = [0.6, 0.9, 0.5, 0.7];
        assert_eq!(nms(&boxes, &scores, 0.5, 10), vec![1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.95, 10), vec![1, 3, 0, 2]);
        assert_eq!(nms(&boxes, &scores, 0.5, 1), vec![1]);
    }
}
