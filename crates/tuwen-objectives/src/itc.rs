//! Image-text contrastive alignment (CLIP; ALBEF/BLIP's ITC): both modalities are projected to a
//! shared space and L2-normalised; the in-batch similarity matrix divided by a learnable
//! temperature is trained with symmetric InfoNCE (image->text and text->image cross-entropy with
//! the diagonal as targets).

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::LossOutput;

/// ITC settings (defaults: ALBEF).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ItcConfig {
    /// Width of the shared space.
    pub embed_dim: usize,
    /// Initial temperature.
    pub temperature: f32,
    /// The temperature is kept in `[min, max]` by [`ItcHead::clamp_temperature`] after every
    /// optimiser step (ALBEF's `temp.clamp_` under `no_grad`).
    pub temperature_range: (f32, f32),
}

impl Default for ItcConfig {
    fn default() -> Self {
        Self {
            embed_dim: 256,
            temperature: 0.07,
            temperature_range: (0.001, 0.5),
        }
    }
}

/// Projections and temperature of the contrastive objective.
#[derive(Module, Debug)]
pub struct ItcHead {
    /// Image pooled vector -> shared space.
    pub image_proj: Linear,
    /// Text pooled vector -> shared space.
    pub text_proj: Linear,
    /// Learnable temperature, used as is; the trainer clamps the parameter itself after each
    /// step ([`ItcHead::clamp_temperature`]) and exempts it from weight decay.
    pub temperature: Param<Tensor<1>>,
    #[module(skip)]
    range: (f32, f32),
}

/// Outputs of [`ItcHead::forward`].
#[derive(Clone, Debug)]
pub struct ItcOutput {
    /// Symmetric InfoNCE.
    pub loss: LossOutput,
    /// `[B, B]` similarities / temperature (row: image, column: caption), for hard negatives and
    /// retrieval.
    pub similarity: Tensor<2>,
}

impl ItcHead {
    /// A head for `image_dim`- and `text_dim`-wide pooled vectors.
    pub fn new(image_dim: usize, text_dim: usize, config: &ItcConfig, device: &Device) -> Self {
        Self {
            image_proj: LinearConfig::new(image_dim, config.embed_dim).init(device),
            text_proj: LinearConfig::new(text_dim, config.embed_dim).init(device),
            temperature: Param::from_tensor(Tensor::from_floats([config.temperature], device)),
            range: config.temperature_range,
        }
    }

    /// The temperature in use: the parameter itself. (A clamp inside the graph would zero its
    /// gradient outside the range, where it could then never move back.)
    pub fn temperature(&self) -> Tensor<1> {
        self.temperature.val()
    }

    /// The head with its temperature parameter clamped into the configured range, outside the
    /// graph (a new leaf; ALBEF clamps `temp` in place under `torch.no_grad()` after each step).
    pub fn clamp_temperature(mut self) -> Self {
        let (lo, hi) = self.range;
        self.temperature = self.temperature.map(|t| {
            let tracked = t.is_require_grad();
            let t = t.clamp(lo, hi).detach();
            if tracked { t.require_grad() } else { t }
        });
        self
    }

    /// Loss over a batch of matched pairs: image `i` goes with caption `i`.
    pub fn forward(&self, image: Tensor<2>, text: Tensor<2>) -> ItcOutput {
        let device = image.device();
        let [b, _] = image.dims();
        let i = l2_normalize(self.image_proj.forward(image));
        let t = l2_normalize(self.text_proj.forward(text));
        let similarity = i.matmul(t.transpose()) / self.temperature().unsqueeze::<2>();
        if b < 2 {
            // One pair has no negatives: nothing to contrast.
            return ItcOutput {
                loss: LossOutput::empty(&device),
                similarity,
            };
        }
        let loss = symmetric_infonce(similarity.clone());
        ItcOutput {
            loss: LossOutput {
                loss,
                count: b,
                empty: false,
            },
            similarity,
        }
    }
}

/// Symmetric InfoNCE of a `[B, B]` similarity matrix whose diagonal holds the positives:
/// the mean of the image->text and text->image cross-entropies.
pub fn symmetric_infonce(similarity: Tensor<2>) -> Tensor<1> {
    let device = similarity.device();
    let [b, _] = similarity.dims();
    let targets = Tensor::<1, Int>::arange(0..b as i64, &device);
    let ce = CrossEntropyLossConfig::new().init(&device);
    (ce.forward(similarity.clone(), targets.clone()) + ce.forward(similarity.transpose(), targets))
        .div_scalar(2.0)
}

/// Rows scaled to unit L2 norm (eps 1e-12, as `F.normalize`).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}
