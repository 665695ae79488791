/// Model inputs that do not fit the model (wrong shapes, missing optional parts).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid input for {model}: {}", problems.join("; "))]
pub struct InputError {
    /// The model.
    pub model: &'static str,
    /// Every problem found.
    pub problems: Vec<String>,
}

impl InputError {
    /// An error listing `problems`.
    pub fn new(model: &'static str, problems: Vec<String>) -> Self {
        Self { model, problems }
    }
}

/// Collects the problems of one input check (every one is reported, not just the first).
pub(crate) struct ShapeCheck {
    model: &'static str,
    problems: Vec<String>,
}

impl ShapeCheck {
    pub(crate) fn new(model: &'static str) -> Self {
        Self {
            model,
            problems: Vec::new(),
        }
    }

    /// Records `problem()` unless `ok`.
    pub(crate) fn require(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }

    /// Records a problem if tensor `name` has shape `got` instead of `want`.
    pub(crate) fn dims<const D: usize>(&mut self, name: &str, got: [usize; D], want: [usize; D]) {
        self.require(got == want, || {
            format!("{name} has shape {got:?}, expected {want:?}")
        });
    }

    pub(crate) fn finish(self) -> Result<(), InputError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(InputError::new(self.model, self.problems))
        }
    }
}
