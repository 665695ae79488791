//! NaN/inf loss handling: a non-finite step is skipped (no update, no checkpoint) and counted;
//! too many in a row abort the run with a clear message.

/// What the loop does with a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepAction {
    /// The loss is finite: apply the update.
    Apply,
    /// The loss (or gradient norm) is NaN/inf: skip this update.
    Skip,
    /// Too many non-finite steps in a row: stop with this message.
    Abort(String),
}

/// Counts non-finite steps.
#[derive(Clone, Debug)]
pub struct NanGuard {
    max_consecutive: usize,
    consecutive: usize,
    /// Non-finite steps skipped so far.
    pub skipped: usize,
}

impl NanGuard {
    /// Aborts after `max_consecutive` non-finite steps in a row.
    pub fn new(max_consecutive: usize) -> Self {
        Self {
            max_consecutive: max_consecutive.max(1),
            consecutive: 0,
            skipped: 0,
        }
    }

    /// Classifies step `step` with loss `loss` and gradient norm `grad_norm`.
    pub fn observe(&mut self, step: u64, loss: f32, grad_norm: f32) -> StepAction {
        if loss.is_finite() && grad_norm.is_finite() {
            self.consecutive = 0;
            return StepAction::Apply;
        }
        self.consecutive += 1;
        self.skipped += 1;
        if self.consecutive >= self.max_consecutive {
            StepAction::Abort(format!(
                "step {step}: loss {loss}, gradient norm {grad_norm}: {} non-finite steps in a row \
                 ({} skipped in total); lower the learning rate or check the data",
                self.consecutive, self.skipped
            ))
        } else {
            StepAction::Skip
        }
    }
}

/// Whether every parameter of `module` is finite (checked before a checkpoint is written: an
/// update from a finite loss can still overflow the weights).
pub fn all_finite<M: burn::module::Module>(module: &M) -> bool {
    struct Finite(bool);
    impl burn::module::ModuleVisitor for Finite {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            if self.0 {
                let t = param.val();
                let bad = t.clone().is_nan().any().into_scalar::<bool>()
                    || t.is_inf().any().into_scalar::<bool>();
                self.0 = !bad;
            }
        }
    }
    let mut f = Finite(true);
    module.visit(&mut f);
    f.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_then_aborts_and_resets_on_a_good_step() {
        let mut g = NanGuard::new(3);
        assert_eq!(g.observe(0, 1.0, 1.0), StepAction::Apply);
        assert_eq!(g.observe(1, f32::NAN, 1.0), StepAction::Skip);
        assert_eq!(g.observe(2, 1.0, f32::INFINITY), StepAction::Skip);
        assert_eq!(g.observe(3, 0.5, 0.5), StepAction::Apply);
        assert_eq!(g.observe(4, f32::NAN, 0.0), StepAction::Skip);
        assert_eq!(g.observe(5, f32::NAN, 0.0), StepAction::Skip);
        let StepAction::Abort(msg) = g.observe(6, f32::NAN, 0.0) else {
            panic!("must abort")
        };
        assert!(
            msg.contains("step 6")
                && msg.contains("3 non-finite steps in a row")
                && msg.contains("5 skipped"),
            "{msg}"
        );
    }
}
