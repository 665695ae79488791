//! Axis-aligned boxes in pixel coordinates of the ORIGINAL image, and the location encodings of
//! the fusion models (normalised by the original width/height, never by the resized input).

/// A box `[x1, y1, x2, y2]` in pixels (x to the right, y down).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxXyxy {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
}

/// Which box encoding a fusion model expects: the one definition, the fusion models' own
/// (`None` gives no values).
pub use tuwen_fusion::visual_bert::LocationEncoding;

impl BoxXyxy {
    /// A box from corners.
    pub fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// A box from `[x, y, w, h]` (COCO layout).
    pub fn from_xywh(x: f32, y: f32, w: f32, h: f32) -> Self {
        Self::new(x, y, x + w, y + h)
    }

    /// `[x, y, w, h]`.
    pub fn to_xywh(self) -> [f32; 4] {
        [self.x1, self.y1, self.width(), self.height()]
    }

    /// Width (0 for an inverted box).
    pub fn width(self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    /// Height (0 for an inverted box).
    pub fn height(self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    /// Area.
    pub fn area(self) -> f32 {
        self.width() * self.height()
    }

    /// Intersection over union (0 when both are empty).
    pub fn iou(self, other: Self) -> f32 {
        let inter = Self::new(
            self.x1.max(other.x1),
            self.y1.max(other.y1),
            self.x2.min(other.x2),
            self.y2.min(other.y2),
        )
        .area();
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The box clipped to a `width` x `height` image.
    pub fn clip(self, width: f32, height: f32) -> Self {
        Self::new(
            self.x1.clamp(0.0, width),
            self.y1.clamp(0.0, height),
            self.x2.clamp(0.0, width),
            self.y2.clamp(0.0, height),
        )
    }

    /// The box scaled by `sx`, `sy` (e.g. from the original image to a resized one).
    pub fn scale(self, sx: f32, sy: f32) -> Self {
        Self::new(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)
    }

    /// The location encoding of this box in an ORIGINAL image of `width` x `height` pixels.
    pub fn encode(self, encoding: LocationEncoding, width: f32, height: f32) -> Vec<f32> {
        if encoding == LocationEncoding::None {
            return Vec::new();
        }
        let (w, h) = (self.width() / width, self.height() / height);
        let mut v = vec![
            self.x1 / width,
            self.y1 / height,
            self.x2 / width,
            self.y2 / height,
        ];
        match encoding {
            LocationEncoding::None | LocationEncoding::Xyxy4 => {}
            LocationEncoding::XyxyArea5 => v.push(w * h),
            LocationEncoding::XyxyWhArea7 => v.extend([w, h, w * h]),
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let a = BoxXyxy::new(0.0, 0.0, 10.0, 10.0);
        let b = BoxXyxy::from_xywh(5.0, 5.0, 10.0, 10.0);
        assert_eq!(b.to_xywh(), [5.0, 5.0, 10.0, 10.0]);
        assert!((a.iou(b) - 25.0 / 175.0).abs() < 1e-6);
        assert_eq!(a.iou(BoxXyxy::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        assert_eq!(
            BoxXyxy::new(-5.0, 2.0, 120.0, 80.0).clip(100.0, 50.0),
            BoxXyxy::new(0.0, 2.0, 100.0, 50.0)
        );
        assert_eq!(BoxXyxy::new(3.0, 3.0, 1.0, 1.0).area(), 0.0);
    }

    #[test]
    fn encodings_are_normalised_by_the_original_size() {
        let b = BoxXyxy::new(10.0, 20.0, 50.0, 60.0);
        assert_eq!(
            b.encode(LocationEncoding::Xyxy4, 100.0, 200.0),
            vec![0.1, 0.1, 0.5, 0.3]
        );
        assert!(b.encode(LocationEncoding::None, 100.0, 200.0).is_empty());
        let v5 = b.encode(LocationEncoding::XyxyArea5, 100.0, 200.0);
        assert!((v5[4] - 0.4 * 0.2).abs() < 1e-7);
        let v7 = b.encode(LocationEncoding::XyxyWhArea7, 100.0, 200.0);
        assert_eq!(v7.len(), 7);
        assert!((v7[4] - 0.4).abs() < 1e-7 && (v7[5] - 0.2).abs() < 1e-7);
    }
}
