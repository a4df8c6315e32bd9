//! The CPU kernels' own arithmetic.

use kdlab_kernels::cpu::erf;

#[test]
fn erf_matches_the_definition_to_f32_precision() {
    // erf(x) = 2/√π ∫₀ˣ e^(−s²) ds, by Simpson's rule on a fine grid.
    let exact = |x: f64| {
        let n = 20_000;
        let h = x / n as f64;
        let f = |s: f64| (-s * s).exp();
        let odd: f64 = (1..n).step_by(2).map(|i| f(i as f64 * h)).sum();
        let even: f64 = (2..n).step_by(2).map(|i| f(i as f64 * h)).sum();
        (f(0.0) + 4.0 * odd + 2.0 * even + f(x)) * h / 3.0 * std::f64::consts::FRAC_2_SQRT_PI
    };
    for i in -60..=60 {
        let x = f64::from(i) / 10.0;
        let err = (erf(x) - exact(x)).abs();
        assert!(err < 1e-7, "erf({x}): |error| = {err:e}");
    }
}
