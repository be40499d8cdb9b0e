//! A vectorisable exp for softmax rows. libm's expf is a scalar call of ~20
//! cycles, which made exp, not memory or the GEMMs, the bottleneck of CPU
//! softmax and attention. This is Cephes' expf (Cody–Waite reduction by ln 2 and
//! a degree-6 polynomial, relative error under 2e-7) written branch-free over
//! 8-lane chunks so LLVM vectorises it; the AVX2+FMA build is picked at run time.

/// Below this, exp underflows to 0 (f32's smallest normal is e^-87.34).
const MIN_ARG: f32 = -87.0;
/// Above this 2^n overflows; softmax only ever passes arguments ≤ 0.
const MAX_ARG: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that n·LN2_HI is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2^23: adding and subtracting it rounds to the nearest integer.
const ROUND: f32 = 12_582_912.0;
const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn exp1<const FUSED: bool>(x: f32) -> f32 {
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    let n = fma::<FUSED>(xc, LOG2E, ROUND) - ROUND;
    let r = fma::<FUSED>(n, -LN2_LO, fma::<FUSED>(n, -LN2_HI, xc));
    let mut p = P[0];
    for c in &P[1..] {
        p = fma::<FUSED>(p, r, *c);
    }
    let y = fma::<FUSED>(p, r * r, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    // NaN fails the comparison and propagates through y.
    if x < MIN_ARG {
        0.0
    } else {
        y * scale
    }
}

#[inline(always)]
fn exp_shifted_generic<const FUSED: bool>(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        for l in 0..8 {
            oc[l] = exp1::<FUSED>(xc[l] - shift);
            lanes[l] += oc[l];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for (&v, o) in xs.remainder().iter().zip(os.into_remainder()) {
        *o = exp1::<FUSED>(v - shift);
        sum += *o;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    exp_shifted_generic::<true>(x, shift, out)
}

/// out[i] = exp(x[i] - shift); returns the sum of out.
pub(crate) fn exp_shifted(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    debug_assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { exp_shifted_avx2(x, shift, out) };
    }
    exp_shifted_generic::<false>(x, shift, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_exp_over_the_whole_range() {
        let x: Vec<f32> = (0..20_011).map(|i| -100.0 + i as f32 * 0.0089).chain([f32::NEG_INFINITY]).collect();
        let mut out = vec![0.0; x.len()];
        let sum = exp_shifted(&x, 0.5, &mut out);
        let mut want_sum = 0f64;
        for (&v, &o) in x.iter().zip(&out) {
            let want = ((v - 0.5) as f64).exp();
            want_sum += want;
            if want < f32::MIN_POSITIVE as f64 * 2.0 {
                assert!(o.abs() <= f32::MIN_POSITIVE * 4.0, "exp({v} - 0.5) = {o}, want {want}");
            } else {
                assert!(((o as f64 - want) / want).abs() < 3e-7, "exp({v} - 0.5) = {o}, want {want}");
            }
        }
        assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-5);
        assert!(exp_shifted(&[f32::NAN], 0.0, &mut [0.0]).is_nan());
    }
}
