//! Learning-rate schedule: HuggingFace `get_cosine_schedule_with_warmup` (0.5 cycles), applied per
//! optimiser step as the thesis' step-wise LambdaLR does — so step 0 has lr 0.

use std::f64::consts::PI;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineWithWarmup {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineWithWarmup {
    /// lr·s/w during warm-up, then lr·½(1 + cos(π·(s − w)/(S − w))), 0 from S on.
    pub fn lr(&self, step: usize) -> f64 {
        self.peak_lr * self.multiplier(step)
    }

    pub fn multiplier(&self, step: usize) -> f64 {
        let (s, w, total) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        let progress = (s - w) / (total - w).max(1.0);
        (0.5 * (1.0 + (PI * progress).cos())).max(0.0)
    }
}
