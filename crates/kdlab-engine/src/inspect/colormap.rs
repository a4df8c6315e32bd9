//! Colour maps for per-patch values, and the value range a map spans.

use serde::{Deserialize, Serialize};

use super::patch_maps::Metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Colormap {
    /// Perceptually uniform, dark = low: cosine similarity.
    Viridis,
    /// Perceptually uniform, bright = high: squared error.
    Inferno,
    /// Red (negative) – light grey (0) – blue (positive): differences between checkpoints.
    Diverging,
}

// Key colours of matplotlib's maps at 0, 1/8, …, 1; linear in between.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];
const INFERNO: [[u8; 3]; 9] = [
    [0, 0, 4],
    [31, 12, 72],
    [85, 15, 109],
    [136, 34, 106],
    [186, 54, 85],
    [227, 89, 51],
    [249, 140, 10],
    [249, 201, 50],
    [252, 255, 164],
];
const DIVERGING: [[u8; 3]; 5] = [
    [178, 24, 43],
    [239, 138, 98],
    [230, 230, 230],
    [103, 169, 207],
    [33, 102, 172],
];

impl Colormap {
    pub fn for_metric(metric: Metric) -> Self {
        match metric {
            Metric::Cosine => Colormap::Viridis,
            Metric::SquaredError => Colormap::Inferno,
        }
    }

    /// The colour of `t` in [0, 1] (clamped; NaN is shown as the low end).
    pub fn colour(self, t: f32) -> [u8; 3] {
        let stops: &[[u8; 3]] = match self {
            Colormap::Viridis => &VIRIDIS,
            Colormap::Inferno => &INFERNO,
            Colormap::Diverging => &DIVERGING,
        };
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let x = t * (stops.len() - 1) as f32;
        let i = (x.floor() as usize).min(stops.len() - 2);
        let f = x - i as f32;
        let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * f).round() as u8;
        let (a, b) = (stops[i], stops[i + 1]);
        [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
    }
}

/// The values mapped to the two ends of a colour map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueRange {
    pub min: f32,
    pub max: f32,
}

impl ValueRange {
    /// Fixed ranges, the same for every image and epoch so maps can be compared. Target and
    /// prediction are layer-normed (unit RMS per token), so ‖y − ŷ‖²/D = 2 − 2·cos: an error of
    /// 2 is a cosine of 0, and both default ranges cover the same span.
    pub fn fixed(metric: Metric) -> Self {
        match metric {
            Metric::Cosine => Self { min: 0.0, max: 1.0 },
            Metric::SquaredError => Self { min: 0.0, max: 2.0 },
        }
    }

    /// Symmetric around 0, for differences.
    pub fn symmetric(values: &[f32]) -> Self {
        let largest = values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |a, v| a.max(v.abs()));
        let largest = if largest > 0.0 { largest } else { 1.0 };
        Self {
            min: -largest,
            max: largest,
        }
    }

    /// The smallest and largest finite value (a unit range around a constant map).
    pub fn fitted(values: &[f32]) -> Self {
        let (min, max) = values
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if min > max {
            Self { min: 0.0, max: 1.0 }
        } else if min == max {
            Self {
                min: min - 0.5,
                max: max + 0.5,
            }
        } else {
            Self { min, max }
        }
    }

    /// Where `value` falls, 0 at `min` and 1 at `max` (not clamped).
    pub fn position(self, value: f32) -> f32 {
        (value - self.min) / (self.max - self.min)
    }
}

/// One colour per value.
pub fn colours(values: &[f32], colormap: Colormap, range: ValueRange) -> Vec<[u8; 3]> {
    values
        .iter()
        .map(|&v| colormap.colour(range.position(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_middle_are_the_key_colours() {
        assert_eq!(Colormap::Viridis.colour(0.0), VIRIDIS[0]);
        assert_eq!(Colormap::Viridis.colour(1.0), VIRIDIS[8]);
        assert_eq!(Colormap::Viridis.colour(0.5), VIRIDIS[4]);
        assert_eq!(Colormap::Diverging.colour(0.5), DIVERGING[2]);
        assert_eq!(Colormap::Inferno.colour(2.0), INFERNO[8], "clamped above");
        assert_eq!(Colormap::Inferno.colour(f32::NAN), INFERNO[0]);
    }

    #[test]
    fn ranges() {
        let r = ValueRange::fixed(Metric::Cosine);
        assert_eq!(r.position(0.25), 0.25);
        assert_eq!(
            ValueRange::symmetric(&[-0.2, 0.1]),
            ValueRange {
                min: -0.2,
                max: 0.2
            }
        );
        assert_eq!(
            ValueRange::fitted(&[3.0, 1.0, f32::NAN]),
            ValueRange { min: 1.0, max: 3.0 }
        );
        assert_eq!(
            ValueRange::fitted(&[2.0]),
            ValueRange { min: 1.5, max: 2.5 }
        );
    }
}
