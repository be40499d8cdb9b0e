//! 95% confidence intervals for the probe's rates and means.

use crate::tensor::Rng;

/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_964;

/// Wilson's score interval of a proportion `hits / n` (sound at small n and
/// at rates near 0 or 1, where the normal approximation is not); [0, 1] for n = 0.
pub fn wilson(hits: usize, n: usize) -> [f32; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (n, p) = (n as f64, hits as f64 / n as f64);
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0) as f32, (centre + half).min(1.0) as f32]
}

/// The percentile bootstrap interval of the mean of `values` (`resamples`
/// resamples drawn from `rng`); NaNs for no values.
pub fn bootstrap_mean(values: &[f32], resamples: usize, rng: &mut Rng) -> [f32; 2] {
    if values.is_empty() {
        return [f32::NAN, f32::NAN];
    }
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| values[rng.below(n as u32) as usize] as f64).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)] as f32;
    [at(0.025), at(0.975)]
}

/// The mean of `values`; NaN for none.
pub fn mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    (values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_its_closed_form_values() {
        // 7 of 20: R's prop.test(7, 20, correct = FALSE) gives [0.1812, 0.5671].
        let [lo, hi] = wilson(7, 20);
        assert!((lo - 0.1812).abs() < 1e-3 && (hi - 0.5671).abs() < 1e-3, "{lo} {hi}");
        // 0 of 10 still has an upper bound above 0; 10 of 10 a lower bound below 1.
        assert!(wilson(0, 10)[1] > 0.25 && wilson(10, 10)[0] < 0.75);
        assert_eq!(wilson(0, 0), [0.0, 1.0]);
    }

    #[test]
    fn the_bootstrap_interval_covers_the_mean_and_narrows_with_more_data() {
        let mut rng = Rng::new(5);
        let small: Vec<f32> = (0..20).map(|_| rng.normal()).collect();
        let large: Vec<f32> = (0..2000).map(|_| rng.normal()).collect();
        let [a, b] = bootstrap_mean(&small, 500, &mut rng);
        let [c, d] = bootstrap_mean(&large, 500, &mut rng);
        assert!(a < mean(&small) && mean(&small) < b);
        assert!(c < mean(&large) && mean(&large) < d);
        assert!(d - c < (b - a) / 4.0, "{c}..{d} vs {a}..{b}");
    }
}
