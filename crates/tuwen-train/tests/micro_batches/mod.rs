//! Shared by the tests that check an objective splits exactly over micro-batches: one step's
//! gradients (one vector per parameter, in visit order) and losses, and the comparison of the
//! whole step with the step split in parts.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use tuwen_train::batch::HostBatch;
use tuwen_train::model::PretrainModel;
use tuwen_train::pretrain::{ObjectiveWeights, StepLosses, step_gradients};

/// Every parameter's gradient, in visit order.
struct Grads<'a>(&'a GradientsParams, Vec<Vec<f32>>);

impl ModuleVisitor for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if let Some(g) = self.0.get::<D>(p.id) {
            self.1.push(
                g.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap(),
            );
        }
    }
}

/// One step of `model` on `host` split into `parts` micro-batches on `device` (generator seed
/// `seed`): each parameter's gradient and the step's losses.
pub fn gradients(
    model: &PretrainModel,
    host: &HostBatch,
    device: &Device,
    parts: usize,
    weights: ObjectiveWeights,
    seed: u64,
) -> (Vec<Vec<f32>>, StepLosses) {
    let (g, losses) = step_gradients(
        model,
        host,
        std::slice::from_ref(device),
        parts,
        weights,
        seed,
    )
    .unwrap();
    let mut v = Grads(&g, Vec::new());
    model.visit(&mut v);
    (v.1, losses)
}

/// The gradients of the step split in 3 micro-batches equal the whole step's within 1e-5 of
/// the largest gradient (at least 1).
pub fn assert_same_gradients(whole: &[Vec<f32>], split: &[Vec<f32>]) {
    let scale = whole.iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()));
    let d = whole
        .iter()
        .zip(split)
        .map(|(x, y)| tuwen_testkit::max_abs_diff_slices(x, y))
        .fold(0.0, f32::max);
    assert!(
        d <= 1e-5 * scale.max(1.0),
        "3 micro-batches vs 1: {d} (scale {scale})"
    );
}
