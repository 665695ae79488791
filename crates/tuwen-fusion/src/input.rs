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
