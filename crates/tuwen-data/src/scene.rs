//! The built-in scene generator: synthetic images of coloured shapes with captions, boxes,
//! phrase -> box links and VQA pairs, fully determined by `(seed, split, index)`.
//!
//! Every caption and answer is derived from the scene's objects, so they are correct by
//! construction, and the splits draw from disjoint random streams, so the held-out test split is
//! never seen in training.
//!
//! ```
//! use tuwen_data::scene::{SceneConfig, Split};
//! let scene = SceneConfig::default().generate(7, Split::Train, 0);
//! assert!(!scene.captions.is_empty() && !scene.objects.is_empty());
//! ```

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tuwen_regions::BoxXyxy;

/// Shapes drawn in scenes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A filled circle.
    Circle,
    /// A filled axis-aligned square.
    Square,
    /// A filled upward triangle.
    Triangle,
}

impl Shape {
    /// All shapes.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// Caption word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Circle => "circles",
            Self::Square => "squares",
            Self::Triangle => "triangles",
        }
    }
}

/// Colours with their RGB values.
pub const COLORS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 215, 40]),
    ("purple", [140, 60, 180]),
    ("orange", [245, 140, 30]),
    ("gray", [128, 128, 128]),
    ("brown", [130, 80, 40]),
];

/// One object of a scene.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Its shape.
    pub shape: Shape,
    /// Index into [`COLORS`].
    pub color: usize,
    /// `small` or `large`.
    pub large: bool,
    /// Tight box in image pixels.
    pub bbox: BoxXyxy,
}

impl Object {
    /// Colour word.
    pub fn color_name(&self) -> &'static str {
        COLORS[self.color].0
    }

    /// `small` / `large`.
    pub fn size_name(&self) -> &'static str {
        if self.large { "large" } else { "small" }
    }

    fn center(&self) -> (f32, f32) {
        (
            (self.bbox.x1 + self.bbox.x2) / 2.0,
            (self.bbox.y1 + self.bbox.y2) / 2.0,
        )
    }
}

/// A noun phrase of a caption linked to the objects it denotes.
#[derive(Clone, Debug, PartialEq)]
pub struct Phrase {
    /// Index of the caption.
    pub caption: usize,
    /// Byte range of the phrase in the caption.
    pub span: std::ops::Range<usize>,
    /// Objects the phrase refers to.
    pub objects: Vec<usize>,
}

/// A question with its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qa {
    /// The question.
    pub question: String,
    /// The answer (one word).
    pub answer: String,
    /// Question type: `color`, `shape`, `count`, `exist` or `relation`.
    pub kind: &'static str,
}

/// A generated scene.
#[derive(Clone, Debug)]
pub struct Scene {
    /// The rendered image.
    pub image: RgbImage,
    /// Its objects (boxes and labels).
    pub objects: Vec<Object>,
    /// Captions.
    pub captions: Vec<String>,
    /// Noun phrases of the captions with their objects.
    pub phrases: Vec<Phrase>,
    /// Questions and answers.
    pub qa: Vec<Qa>,
}

/// Dataset split; each draws from its own random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training scenes.
    Train,
    /// Validation scenes (evaluation during training).
    Validation,
    /// Held-out test scenes, never used in training.
    Test,
}

/// Generator settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SceneConfig {
    /// Image side in pixels.
    pub image_size: u32,
    /// Fewest objects.
    pub min_objects: usize,
    /// Most objects.
    pub max_objects: usize,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            image_size: 64,
            min_objects: 1,
            max_objects: 4,
        }
    }
}

fn count_word(n: usize) -> &'static str {
    ["zero", "one", "two", "three", "four", "five"][n.min(5)]
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

impl SceneConfig {
    /// The scene `index` of `split` for `seed`.
    pub fn generate(&self, seed: u64, split: Split, index: u64) -> Scene {
        let salt = match split {
            Split::Train => 0x7472_6169_6e00_0000u64,
            Split::Validation => 0x7661_6c69_6400_0000,
            Split::Test => 0x7465_7374_0000_0000,
        };
        let mut rng =
            StdRng::seed_from_u64(seed ^ salt ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let objects = self.place_objects(&mut rng);
        let image = self.render(&objects, &mut rng);
        let (captions, phrases) = describe(&objects, &mut rng);
        let qa = questions(&objects, &mut rng);
        Scene {
            image,
            objects,
            captions,
            phrases,
            qa,
        }
    }

    fn place_objects(&self, rng: &mut StdRng) -> Vec<Object> {
        let n = rng.random_range(self.min_objects..=self.max_objects);
        let side = self.image_size as f32;
        let mut objects: Vec<Object> = Vec::new();
        let mut attempts = 0;
        while objects.len() < n && attempts < 200 {
            attempts += 1;
            let large = rng.random_bool(0.5);
            let size = if large { side * 0.34 } else { side * 0.2 };
            let x1 = rng.random_range(0.0..side - size).floor();
            let y1 = rng.random_range(0.0..side - size).floor();
            let bbox = BoxXyxy::new(x1, y1, x1 + size.floor(), y1 + size.floor());
            // Some overlap is allowed, but no object may hide most of another.
            if objects.iter().any(|o| o.bbox.iou(bbox) > 0.25) {
                continue;
            }
            objects.push(Object {
                shape: Shape::ALL[rng.random_range(0..Shape::ALL.len())],
                color: rng.random_range(0..COLORS.len()),
                large,
                bbox,
            });
        }
        objects
    }

    fn render(&self, objects: &[Object], rng: &mut StdRng) -> RgbImage {
        let shade = rng.random_range(225..=250u8);
        let mut image =
            RgbImage::from_pixel(self.image_size, self.image_size, Rgb([shade, shade, shade]));
        for o in objects {
            let b = o.bbox;
            let (cx, cy) = o.center();
            let r = (b.x2 - b.x1) / 2.0;
            for y in b.y1 as u32..b.y2 as u32 {
                for x in b.x1 as u32..b.x2 as u32 {
                    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                    let inside = match o.shape {
                        Shape::Square => true,
                        Shape::Circle => (px - cx).powi(2) + (py - cy).powi(2) <= r * r,
                        // Apex at the top centre, base along the bottom edge.
                        Shape::Triangle => {
                            let t = (py - b.y1) / (b.y2 - b.y1);
                            (px - cx).abs() <= t * r
                        }
                    };
                    if inside {
                        image.put_pixel(x, y, Rgb(COLORS[o.color].1));
                    }
                }
            }
        }
        image
    }
}

/// `a small red circle` and the objects it denotes (just `i`).
fn noun_phrase(o: &Object, with_size: bool) -> String {
    let words = if with_size {
        format!("{} {} {}", o.size_name(), o.color_name(), o.shape.name())
    } else {
        format!("{} {}", o.color_name(), o.shape.name())
    };
    format!("{} {words}", article(&words))
}

fn relation(a: &Object, b: &Object) -> &'static str {
    let ((ax, ay), (bx, by)) = (a.center(), b.center());
    if (ax - bx).abs() >= (ay - by).abs() {
        if ax < bx { "left of" } else { "right of" }
    } else if ay < by {
        "above"
    } else {
        "below"
    }
}

fn describe(objects: &[Object], rng: &mut StdRng) -> (Vec<String>, Vec<Phrase>) {
    let mut captions = Vec::new();
    let mut phrases = Vec::new();
    let mut push = |text: String, links: Vec<(String, Vec<usize>)>, captions: &mut Vec<String>| {
        let c = captions.len();
        let mut from = 0;
        for (phrase, objs) in links {
            if let Some(pos) = text[from..].find(&phrase) {
                let start = from + pos;
                phrases.push(Phrase {
                    caption: c,
                    span: start..start + phrase.len(),
                    objects: objs,
                });
                from = start + phrase.len();
            }
        }
        captions.push(text);
    };
    // 1. Every object on its own.
    let i = rng.random_range(0..objects.len());
    let np = noun_phrase(&objects[i], true);
    push(format!("{np}."), vec![(np, vec![i])], &mut captions);
    // 2. A relation between two objects.
    if objects.len() >= 2 {
        let a = rng.random_range(0..objects.len());
        let b = (a + rng.random_range(1..objects.len())) % objects.len();
        let (pa, pb) = (
            noun_phrase(&objects[a], false),
            noun_phrase(&objects[b], false),
        );
        push(
            format!("{pa} {} {pb}.", relation(&objects[a], &objects[b])),
            vec![(pa, vec![a]), (pb, vec![b])],
            &mut captions,
        );
    }
    // 3. Counts of a colour + shape group.
    let o = &objects[rng.random_range(0..objects.len())];
    let group: Vec<usize> = (0..objects.len())
        .filter(|&j| objects[j].shape == o.shape && objects[j].color == o.color)
        .collect();
    let np = if group.len() == 1 {
        format!("one {} {}", o.color_name(), o.shape.name())
    } else {
        format!(
            "{} {} {}",
            count_word(group.len()),
            o.color_name(),
            o.shape.plural()
        )
    };
    let total = objects.len();
    let text = format!(
        "{np} among {} {}.",
        count_word(total),
        if total == 1 { "shape" } else { "shapes" }
    );
    push(text, vec![(np, group)], &mut captions);
    (captions, phrases)
}

fn questions(objects: &[Object], rng: &mut StdRng) -> Vec<Qa> {
    let mut qa = Vec::new();
    let o = &objects[rng.random_range(0..objects.len())];
    let same_shape = objects.iter().filter(|x| x.shape == o.shape).count();
    if same_shape == 1 {
        qa.push(Qa {
            question: format!("what color is the {}?", o.shape.name()),
            answer: o.color_name().into(),
            kind: "color",
        });
    }
    let same_color = objects.iter().filter(|x| x.color == o.color).count();
    if same_color == 1 {
        qa.push(Qa {
            question: format!("what shape is the {} object?", o.color_name()),
            answer: o.shape.name().into(),
            kind: "shape",
        });
    }
    let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
    qa.push(Qa {
        question: format!("how many {} are there?", shape.plural()),
        answer: count_word(objects.iter().filter(|x| x.shape == shape).count()).into(),
        kind: "count",
    });
    let color = rng.random_range(0..COLORS.len());
    let exists = objects.iter().any(|x| x.shape == shape && x.color == color);
    qa.push(Qa {
        question: format!(
            "is there {} {} {}?",
            article(COLORS[color].0),
            COLORS[color].0,
            shape.name()
        ),
        answer: if exists { "yes" } else { "no" }.into(),
        kind: "exist",
    });
    let unique = |i: usize| {
        objects
            .iter()
            .filter(|x| x.shape == objects[i].shape && x.color == objects[i].color)
            .count()
            == 1
    };
    if objects.len() >= 2 {
        let a = rng.random_range(0..objects.len());
        let b = (a + rng.random_range(1..objects.len())) % objects.len();
        if !(unique(a) && unique(b)) {
            return qa;
        }
        let asked = ["left of", "right of", "above", "below"][rng.random_range(0..4)];
        let (oa, ob) = (&objects[a], &objects[b]);
        qa.push(Qa {
            question: format!(
                "is the {} {} {asked} the {} {}?",
                oa.color_name(),
                oa.shape.name(),
                ob.color_name(),
                ob.shape.name()
            ),
            answer: if relation(oa, ob) == asked {
                "yes"
            } else {
                "no"
            }
            .into(),
            kind: "relation",
        });
    }
    qa
}
