//! Learning-rate schedules counted in optimiser steps.

/// Shape of the decay after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Linear from the peak to `final_ratio * peak` at `total_steps`.
    Linear,
    /// Half-cosine from the peak to `final_ratio * peak` at `total_steps`.
    Cosine,
    /// Constant after warmup.
    Constant,
}

/// Linear warmup from 0 to `peak` over `warmup_steps`, then `decay` until `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Decay shape.
    pub decay: Decay,
    /// Final learning rate as a fraction of the peak.
    pub final_ratio: f64,
}

impl LrSchedule {
    /// Learning rate of optimiser step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let floor = self.final_ratio * self.peak;
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.peak + (floor - self.peak) * progress,
            Decay::Cosine => {
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule {
            peak: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            decay: Decay::Linear,
            final_ratio: 0.0,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(60) - 5e-4).abs() < 1e-12);
        assert_eq!(s.lr(110), 0.0);
        assert_eq!(s.lr(500), 0.0, "clamped after the end");
        let c = LrSchedule {
            decay: Decay::Cosine,
            final_ratio: 0.1,
            ..s
        };
        assert!((c.lr(10) - 1e-3).abs() < 1e-12);
        assert!((c.lr(60) - (1e-4 + 0.9e-3 * 0.5)).abs() < 1e-12);
        assert!((c.lr(110) - 1e-4).abs() < 1e-12);
        let k = LrSchedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(k.lr(100), 1e-3);
    }
}
