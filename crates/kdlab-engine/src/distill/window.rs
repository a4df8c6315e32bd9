//! Running means between metrics lines, summed on the device: reading each step's numbers back
//! would make the host wait for the device before it could queue the next step.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// A window's sums (f32 values, as the device summed them, so a resumed run's later sums round
/// the same way) and how many entries they hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    pub sums: Vec<f64>,
    pub count: usize,
}

impl WindowState {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The sum of `width`-long entries since the window was last taken.
pub struct DeviceWindow<B: Backend> {
    sum: Option<Tensor<B, 1>>,
    count: usize,
    width: usize,
}

impl<B: Backend> DeviceWindow<B> {
    pub fn new(width: usize) -> Self {
        Self {
            sum: None,
            count: 0,
            width,
        }
    }

    /// The window a checkpoint saved (an empty or mismatched state gives an empty window).
    pub fn restore(width: usize, saved: &WindowState, device: &B::Device) -> Self {
        let mut window = Self::new(width);
        if saved.count > 0 && saved.sums.len() == width {
            let sums: Vec<f32> = saved.sums.iter().map(|&s| s as f32).collect();
            window.sum = Some(Tensor::from_floats(sums.as_slice(), device));
            window.count = saved.count;
        }
        window
    }

    /// Adds one entry, `[width]`.
    pub fn add(&mut self, entry: Tensor<B, 1>) {
        self.sum = Some(match self.sum.take() {
            Some(sum) => sum + entry,
            None => entry,
        });
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The sums so far (NaN or ∞ where an entry was; zeros when empty), the window kept.
    pub fn peek_sums(&self) -> Vec<f64> {
        match &self.sum {
            Some(sum) => sum
                .clone()
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect(),
            None => vec![0.0; self.width],
        }
    }

    /// The means (None when empty), and a new window.
    pub fn take_means(&mut self) -> Option<Vec<f64>> {
        let means = (!self.is_empty()).then(|| {
            let count = self.count as f64;
            self.peek_sums().into_iter().map(|s| s / count).collect()
        });
        (self.sum, self.count) = (None, 0);
        means
    }

    pub fn state(&self) -> WindowState {
        WindowState {
            sums: if self.is_empty() {
                Vec::new()
            } else {
                self.peek_sums()
            },
            count: self.count,
        }
    }
}

/// A run's windows since its last metrics line: what the line's means come from, and what a
/// checkpoint keeps so that a resumed run logs the lines an uninterrupted one does.
pub(super) struct MetricWindows<B: Backend> {
    /// The loss of each micro-batch.
    pub(super) loss: DeviceWindow<B>,
    /// `[target_var, pred_var]` of each micro-batch.
    pub(super) spreads: DeviceWindow<B>,
    /// The gradient norm of each applied step.
    pub(super) grad_norms: DeviceWindow<B>,
}

impl<B: Backend> MetricWindows<B> {
    /// The windows a checkpoint saved (empty ones for a fresh run).
    pub(super) fn restore(
        loss: &WindowState,
        spreads: &WindowState,
        grad_norms: &WindowState,
        device: &B::Device,
    ) -> Self {
        Self {
            loss: DeviceWindow::restore(1, loss, device),
            spreads: DeviceWindow::restore(2, spreads, device),
            grad_norms: DeviceWindow::restore(1, grad_norms, device),
        }
    }
}
