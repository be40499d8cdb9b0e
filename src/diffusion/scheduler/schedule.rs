//! The numeric building blocks of diffusers' schedules, computed the way PyTorch and NumPy
//! compute them on x86-64, so timesteps come out bit for bit and sigmas to the last bit or
//! two: f32 where diffusers uses torch float32, f64 where it uses float64 NumPy.

use super::config::Spacing;

/// torch.linspace(start, end, n, dtype=float32) on the CPU: ATen's kernel computes
/// `start + step·i` for the first half and `end − step·(n−1−i)` for the second in f32, which
/// the compiler contracts to fused multiply-adds in the AVX2 / AVX-512 builds.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| if i < n / 2 { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// torch.cumprod of float32 values: ATen's CPU kernel accumulates in f64 and rounds each
/// partial product to f32.
pub(crate) fn cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine ᾱ (Improved DDPM), in Python floats,
/// capped at 0.999 and rounded to f32.
pub(crate) fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Algorithm 1 of "Common Diffusion Noise Schedules
/// and Sample Steps are Flawed"), in f32: shifts and scales √ᾱ so the last step has zero SNR.
pub(crate) fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_bar: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_bar[0], sqrt_bar[sqrt_bar.len() - 1]);
    let scale = first / (first - last);
    for s in &mut sqrt_bar {
        *s = (*s - last) * scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// σ = √((1 − ᾱ)/ᾱ) of every training step, in f32.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// np.linspace(start, stop, num) in f64: i·step + start, with the last value exactly `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let (div, delta) = ((num - 1) as f64, stop - start);
    let step = delta / div;
    let mut y: Vec<f64> =
        (0..num).map(|i| if step == 0.0 { i as f64 / div * delta + start } else { i as f64 * step + start }).collect();
    if let Some(last) = y.last_mut() {
        *last = stop;
    }
    y
}

/// np.arange(start, stop, step) in f64: ⌈(stop − start)/step⌉ values start + i·δ, where NumPy's
/// fill takes δ = (start + step) − start.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 1 { start + step } else { start + i as f64 * delta }).collect()
}

/// np.interp(x, [0, 1, …, n−1], fp) in f64: NumPy's slope·(x − j) + fp[j], clamped at the ends.
pub(crate) fn np_interp(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x >= last as f64 {
        return fp[last];
    }
    if x <= 0.0 {
        return fp[0];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    slope * (x - j as f64) + fp[j]
}

/// NumPy's float32 `np.log` on x86-64 (its AVX2 / AVX-512F kernel and its coefficients,
/// as f32): x = m·2ᵏ with
/// m ∈ [√½, √2), log(m) as a ratio of two degree-5 polynomials in m − 1, plus k·ln 2, all in f32
/// with fused multiply-adds. It is within 4 ulp of the true log, not correctly rounded, and
/// diffusers turns sigmas into fractional timesteps through it.
pub(crate) fn np_log_f32(x: f32) -> f32 {
    const P: [f32; 6] = [0.0, 1.0, 2.112_677_6, 1.480_000_6, 0.380_883_78, 0.025_899_792];
    const Q: [f32; 6] = [1.0, 2.612_677_6, 2.453_006, 0.986_494_3, 0.154_647_63, 0.005_875_095_3];
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f32::INFINITY;
    }
    // Subnormals are scaled by 2^100 first, as NumPy does.
    let (x, bias) = if x < f32::MIN_POSITIVE { (x * 2f32.powi(100), 100.0) } else { (x, 0.0) };
    let bits = x.to_bits();
    let mut exponent = ((bits >> 23) as i32 - 126) as f32 - bias;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m += m;
        exponent -= 1.0;
    }
    let m = m - 1.0;
    let horner = |c: &[f32; 6]| c[..5].iter().rev().fold(c[5], |acc, &k| acc.mul_add(m, k));
    let poly = horner(&P) / horner(&Q);
    exponent.mul_add(std::f32::consts::LN_2, poly)
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`, interpolating log σ
/// linearly between the two training steps around it. `log_sigmas` are np.log of the f32
/// training sigmas; the arithmetic is NumPy's mix of f64 and f32.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of the running count of log_sigmas[i] <= log σ: its first maximum.
    let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
    for (i, &l) in log_sigmas.iter().enumerate() {
        count += (log_sigma - l as f64 >= 0.0) as usize;
        if count > best {
            (best, low) = (count, i);
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// The Karras et al. (2022) schedule: n sigmas from σ_max down to σ_min, evenly spaced in σ^(1/7).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    np_linspace(0.0, 1.0, n).iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// DDIM's and DDPM's integer timesteps for `n` inference steps over `num_train` training ones.
pub(crate) fn discrete_timesteps(spacing: Spacing, num_train: usize, n: usize, steps_offset: i64) -> Vec<i64> {
    match spacing {
        Spacing::Linspace => {
            np_linspace(0.0, (num_train - 1) as f64, n).iter().rev().map(|t| t.round_ties_even() as i64).collect()
        }
        Spacing::Leading => {
            let ratio = (num_train / n) as i64;
            (0..n as i64).rev().map(|i| i * ratio + steps_offset).collect()
        }
        Spacing::Trailing => np_arange(num_train as f64, 0.0, -(num_train as f64 / n as f64))
            .iter()
            .map(|t| t.round_ties_even() as i64 - 1)
            .collect(),
    }
}

/// Euler's float32 timesteps: as `discrete_timesteps` except that linspace is not rounded.
pub(crate) fn euler_timesteps(spacing: Spacing, num_train: usize, n: usize, steps_offset: i64) -> Vec<f32> {
    match spacing {
        Spacing::Linspace => np_linspace(0.0, (num_train - 1) as f64, n).iter().rev().map(|&t| t as f32).collect(),
        Spacing::Leading => {
            let ratio = (num_train / n) as f32;
            (0..n).rev().map(|i| i as f32 * ratio + steps_offset as f32).collect()
        }
        Spacing::Trailing => np_arange(num_train as f64, 0.0, -(num_train as f64 / n as f64))
            .iter()
            .map(|t| t.round_ties_even() as f32 - 1.0)
            .collect(),
    }
}

/// Sigmas at (possibly fractional) timesteps, interpolated over the training sigmas in f64.
pub(crate) fn interp_sigmas(timesteps: impl Iterator<Item = f64>, train_sigmas: &[f32]) -> Vec<f64> {
    let fp: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    timesteps.map(|t| np_interp(t, &fp)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_ends_exactly_and_halves_meet() {
        let v = torch_linspace_f32(0.0001, 0.02, 1000);
        assert_eq!((v[0], v[999]), (0.0001, 0.02));
        assert!(v.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn numpy_log_is_within_a_few_ulp() {
        for &x in &[1e-3f32, 0.0292, 0.5, 0.70710677, 1.0, 1.5, 14.6, 157.4, 4096.0, 1e-40] {
            let (got, want) = (np_log_f32(x), (x as f64).ln());
            assert!((got as f64 - want).abs() <= 4.0 * (want.abs() * f32::EPSILON as f64).max(1e-45), "{x}");
        }
        assert_eq!(np_log_f32(1.0), 0.0);
    }

    #[test]
    fn arange_counts_like_numpy() {
        // 1000/61 steps back from 1000 takes 62 values: (0 − 1000)/(−1000/61) rounds up past 61.
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 7.0).len(), 7);
    }

    #[test]
    fn sigma_to_t_inverts_the_training_sigmas() {
        let sigmas: Vec<f32> = (1..=10).map(|i| i as f32 * 0.5).collect();
        let logs: Vec<f32> = sigmas.iter().map(|&s| np_log_f32(s)).collect();
        // The f32 logs are a few ulp from the f64 log of the same σ.
        assert!((sigma_to_t(sigmas[3] as f64, &logs) - 3.0).abs() < 1e-6);
        assert_eq!(sigma_to_t(100.0, &logs), 9.0);
        assert_eq!(sigma_to_t(0.01, &logs), 0.0);
        let t = sigma_to_t(1.75, &logs);
        assert!(t > 2.0 && t < 3.0, "{t}");
    }
}
