//! `exp` over a slice, eight lanes at a time where the CPU has AVX2.
//!
//! Attention's softmax and the sampler's take an exponential per cached position and
//! per vocabulary entry (49,152 per sampled token for SmolLM2); glibc's `expf` is one
//! call per value. The vector path is the usual range reduction `x = n·ln 2 + r`,
//! `|r| ≤ ln 2 / 2`, with a degree-6 polynomial for `e^r` (Cephes' `expf`
//! coefficients) and `2^n` built in the exponent bits: within 2 ulp of `expf` for
//! arguments down to −87 and exactly 0 below (where `e^x` is under f32's smallest
//! normal number, irrelevant next to the softmax's largest term of 1); NaN stays NaN.

/// `v[i] = e^(v[i])` for every element.
pub(crate) fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::blockq::has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            unsafe { avx2::exp_in_place(v) };
            return;
        }
    }
    for x in v {
        *x = x.exp();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 split so that `n·LN2_HI` is exact for the `n` that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// Below this, `e^x` is not a normal f32: the result is 0.
    const MIN_ARG: f32 = -87.0;
    const MAX_ARG: f32 = 88.0;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            let x = _mm256_loadu_ps(c.as_ptr());
            _mm256_storeu_ps(c.as_mut_ptr(), exp8(x));
        }
        for x in chunks.into_remainder() {
            *x = x.exp();
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x_in: __m256) -> __m256 {
        let x = x_in;
        let too_small = _mm256_cmp_ps(x, _mm256_set1_ps(MIN_ARG), _CMP_LT_OQ);
        let x = _mm256_min_ps(x, _mm256_set1_ps(MAX_ARG));
        let x = _mm256_max_ps(x, _mm256_set1_ps(MIN_ARG));
        // n = round(x / ln 2), r = x − n·ln 2 in two steps.
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut y = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        // e^r ≈ 1 + r + r²·p(r)
        let y = _mm256_fmadd_ps(y, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n through the exponent field.
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        let nan = _mm256_cmp_ps(x_in, x_in, _CMP_UNORD_Q);
        _mm256_or_ps(nan, _mm256_andnot_ps(too_small, _mm256_mul_ps(y, pow2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_scalar_exp_to_two_ulp() {
        let mut xs: Vec<f32> = (-90_000..=88_000).map(|i| i as f32 / 1000.0).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-8,
            -1e-8,
            0.5,
            -0.5,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = x.exp();
            if x.is_nan() {
                assert!(g.is_nan());
                continue;
            }
            if x < -87.0 {
                assert!(
                    g == 0.0 || (g - want).abs() <= f32::MIN_POSITIVE,
                    "e^{x}: {g}"
                );
                continue;
            }
            let ulp = (want.to_bits() as i64 - g.to_bits() as i64).abs();
            assert!(ulp <= 2, "e^{x}: {g} against {want} ({ulp} ulp)");
        }
    }
}
