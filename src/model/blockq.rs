//! f32 matrix products against quantized weight blocks, dequantized on the fly.
//!
//! This is the `qf32` compute path: weights stay in their GGUF block format (Q4_0,
//! Q4_1, Q8_0: 4.5–8.5 bits per weight) so decoding reads 4–6x fewer bytes than f32,
//! while every product is computed in f32 against f32 activations. Unlike candle's and
//! llama.cpp's quantized kernels, activations are *not* quantized to 8 bits, so the
//! model answers what its dequantized weights compute.
//!
//! For a block of 32 weights `w_i = d·q_i + m` and activations `x_i`,
//! `Σ w_i x_i = d·Σ q_i x_i + m·Σ x_i`; the kernel unpacks `q_i` to f32 once per block and
//! reuses it for up to [`TILE`] tokens. AVX2+FMA is chosen at run time when the CPU has
//! it; otherwise a portable loop computes the same sums.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use super::error::Result;

/// Weights per block.
const QK: usize = 32;
/// Tokens processed per pass over a row's blocks.
const TILE: usize = 8;
/// Above this many tokens, dequantizing the whole matrix and using a dense GEMM wins
/// (measured: the two are even at 200-token prompts, GEMM 1.5x faster at 512; below
/// about 128 tokens the dequantization alone costs more than the kernel).
pub(crate) const MAX_KERNEL_TOKENS: usize = 128;
/// Largest slice of a weight matrix dequantized at once by [`BlockMatrix::matmul_dense`].
const DENSE_SLICE_BYTES: usize = 8 << 20;
/// Fewest output rows per parallel task; decode-sized products are split into about
/// two tasks per thread, since waking threads costs more than small tasks save.
const MIN_ROWS_PER_TASK: usize = 32;

/// Block formats this kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockType {
    /// `d: f16, qs: [u8; 16]`, `w = d·(q − 8)`.
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`, `w = d·q + m`.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`, `w = d·q`.
    Q8_0,
}

impl BlockType {
    fn from_ggml(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// A `(rows, cols)` matrix stored as quantized blocks, row-major.
#[derive(Debug)]
pub(crate) struct BlockMatrix {
    kind: BlockType,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Scale, offset and the 32 unpacked quants of one block.
#[inline(always)]
fn unpack(kind: BlockType, b: &[u8], q: &mut [f32; QK]) -> (f32, f32) {
    match kind {
        BlockType::Q4_0 | BlockType::Q4_1 => {
            let (d, m, qs) = match kind {
                BlockType::Q4_0 => {
                    let d = f16_at(b, 0);
                    (d, -8.0 * d, &b[2..18])
                }
                _ => (f16_at(b, 0), f16_at(b, 2), &b[4..20]),
            };
            for j in 0..QK / 2 {
                q[j] = (qs[j] & 0x0F) as f32;
                q[j + QK / 2] = (qs[j] >> 4) as f32;
            }
            (d, m)
        }
        BlockType::Q8_0 => {
            for (qj, &byte) in q.iter_mut().zip(&b[2..34]) {
                *qj = byte as i8 as f32;
            }
            (f16_at(b, 0), 0.0)
        }
    }
}

impl BlockMatrix {
    /// Wraps a GGUF tensor if its format is supported and rows are whole blocks.
    pub(crate) fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let Some(kind) = BlockType::from_ggml(q.dtype()) else {
            return Ok(None);
        };
        let (rows, cols) = q.shape().dims2()?;
        if cols % QK != 0 {
            return Ok(None);
        }
        let data = q.data()?.into_owned();
        if data.len() != rows * cols / QK * kind.bytes() {
            return Ok(None);
        }
        Ok(Some(Self {
            kind,
            data,
            rows,
            cols,
        }))
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.data.len()
    }

    fn row_bytes(&self) -> usize {
        self.cols / QK * self.kind.bytes()
    }

    /// Row `r` dequantized into `out` (length `cols`).
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let bs = self.kind.bytes();
        let row = &self.data[r * rb..(r + 1) * rb];
        let mut q = [0f32; QK];
        for (b, chunk) in out.chunks_exact_mut(QK).enumerate() {
            let (d, m) = unpack(self.kind, &row[b * bs..(b + 1) * bs], &mut q);
            for (o, &qi) in chunk.iter_mut().zip(&q) {
                *o = qi * d + m;
            }
        }
    }

    /// The whole matrix in f32, `(rows, cols)`.
    pub(crate) fn dequantize(&self, device: &candle_core::Device) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| self.dequantize_row(r, row));
        Ok(Tensor::from_vec(out, (self.rows, self.cols), device)?)
    }

    /// Rows `r0..r1` in f32, `(r1 - r0, cols)`.
    fn dequantize_range(
        &self,
        r0: usize,
        r1: usize,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let mut out = vec![0f32; (r1 - r0) * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| self.dequantize_row(r0 + r, row));
        Ok(Tensor::from_vec(out, (r1 - r0, self.cols), device)?)
    }

    /// `x Wᵀ` through dense products on slices of the weight dequantized one at a time
    /// (at most [`DENSE_SLICE_BYTES`] each), for inputs with too many tokens for the
    /// kernel: the whole output head in f32 would be 113 MB for SmolLM2-135M.
    pub(crate) fn matmul_dense(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul_sliced(x, DENSE_SLICE_BYTES)
    }

    fn matmul_sliced(&self, x: &Tensor, slice_bytes: usize) -> Result<Tensor> {
        let x = x.contiguous()?;
        let per_slice = (slice_bytes / (self.cols * 4)).max(1);
        if per_slice >= self.rows {
            return Ok(x.matmul(&self.dequantize(x.device())?.t()?)?);
        }
        let mut parts = Vec::with_capacity(self.rows.div_ceil(per_slice));
        for r0 in (0..self.rows).step_by(per_slice) {
            let r1 = (r0 + per_slice).min(self.rows);
            let w = self.dequantize_range(r0, r1, x.device())?;
            parts.push(x.matmul(&w.t()?)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Rows `ids` dequantized, `(ids.len(), cols)` (embedding lookup).
    pub(crate) fn gather_rows(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (chunk, &id) in out.chunks_exact_mut(self.cols).zip(ids) {
            self.dequantize_row((id as usize).min(self.rows.saturating_sub(1)), chunk);
        }
        Ok(Tensor::from_vec(out, (ids.len(), self.cols), device)?)
    }

    /// `x Wᵀ` for `x` of shape `(tokens, cols)`, f32.
    pub(crate) fn matmul(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(x.apply_op1(BlockMatMul(self.clone()))?)
    }

    /// `out[t][r] = Σ_c x[t][c] W[r][c]` for rows `r0..r0 + out.rows`, into the
    /// output's columns `r0..`.
    fn rows_times(&self, x: &[f32], tokens: usize, sums: &[f32], r0: usize, out: &mut Columns) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: the CPU supports AVX2, FMA and F16C (checked above), and
                // `rows_times` asserts every range it reads lies within the slices.
                unsafe { avx2::rows_times(self, x, tokens, sums, r0, out) };
                return;
            }
        }
        self.rows_times_portable(x, tokens, sums, r0, out);
    }

    fn rows_times_portable(
        &self,
        x: &[f32],
        tokens: usize,
        sums: &[f32],
        r0: usize,
        out: &mut Columns,
    ) {
        let rb = self.row_bytes();
        let bs = self.kind.bytes();
        let nb = self.cols / QK;
        let mut q = [0f32; QK];
        for i in 0..out.rows {
            let row = &self.data[(r0 + i) * rb..(r0 + i + 1) * rb];
            let mut o = vec![0f32; tokens];
            for b in 0..nb {
                let (d, m) = unpack(self.kind, &row[b * bs..(b + 1) * bs], &mut q);
                for (t, ot) in o.iter_mut().enumerate() {
                    let xs = &x[t * self.cols + b * QK..t * self.cols + (b + 1) * QK];
                    let mut acc = [0f32; 8];
                    for c in 0..QK / 8 {
                        for l in 0..8 {
                            acc[l] += q[c * 8 + l] * xs[c * 8 + l];
                        }
                    }
                    *ot += d * acc.iter().sum::<f32>() + m * sums[t * nb + b];
                }
            }
            for (t, v) in o.into_iter().enumerate() {
                out.set(t, i, v);
            }
        }
    }
}

/// A band of consecutive columns of a row-major `(tokens, stride)` output, written by
/// one parallel task: tasks own disjoint bands of the same buffer, so the kernel writes
/// the `(tokens, rows)` result in place instead of transposing a `(rows, tokens)` one.
struct Columns {
    ptr: *mut f32,
    stride: usize,
    rows: usize,
    tokens: usize,
}

// SAFETY: a `Columns` is the only handle on its band (see `BlockMatMul::cpu_fwd`).
unsafe impl Send for Columns {}

impl Columns {
    /// Stores output row `i` of this band (output column `r0 + i`) for token `t`.
    #[inline(always)]
    fn set(&mut self, t: usize, i: usize, v: f32) {
        assert!(t < self.tokens && i < self.rows);
        // SAFETY: `t` and `i` are in range (asserted), and the band lies within the
        // buffer it was cut from.
        unsafe { *self.ptr.add(t * self.stride + i) = v }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// Per-block sums of `x` (`(tokens, cols)`, cols a multiple of 32), in `(token, block)`
/// order, for the `m·Σx` term.
fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(QK).map(|c| c.iter().sum()).collect()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{has_avx512vl, BlockMatrix, BlockType, Columns, QK, TILE};

    /// Rows per block of the multi-token loop (16 rows of 576 columns in Q4_1: 6 KB).
    const ROW_BLOCK: usize = 16;

    /// Calls a tile function with its token count as a constant (1–8).
    /// (`by_tile!(nt, f<C>, ...)` passes `C` as the function's second constant;
    /// `by_tile!(nt, f<if b>, ...)` passes `true` or `false` as `b` is.)
    macro_rules! by_tile {
        ($nt:expr, $f:ident <if $b:ident>, $($arg:expr),*) => {
            if $b {
                by_tile!($nt, $f<true>, $($arg),*)
            } else {
                by_tile!($nt, $f<false>, $($arg),*)
            }
        };
        ($nt:expr, $f:ident $(<$c:tt>)?, $($arg:expr),*) => {
            match $nt {
                8 => $f::<8 $(, $c)?>($($arg),*),
                7 => $f::<7 $(, $c)?>($($arg),*),
                6 => $f::<6 $(, $c)?>($($arg),*),
                5 => $f::<5 $(, $c)?>($($arg),*),
                4 => $f::<4 $(, $c)?>($($arg),*),
                3 => $f::<3 $(, $c)?>($($arg),*),
                2 => $f::<2 $(, $c)?>($($arg),*),
                _ => $f::<1 $(, $c)?>($($arg),*),
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Scale `d` and offset `m` of the block at `b`, converted with F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(kind: BlockType, b: *const u8) -> (f32, f32) {
        let raw = std::ptr::read_unaligned(b as *const u32) as i32;
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(raw));
        let d = _mm_cvtss_f32(v);
        let m = match kind {
            BlockType::Q4_1 => _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)),
            BlockType::Q4_0 => -8.0 * d,
            BlockType::Q8_0 => 0.0,
        };
        (d, m)
    }

    /// The 32 quants of a block as four 8-lane f32 vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(kind: BlockType, b: *const u8) -> [__m256; 4] {
        match kind {
            BlockType::Q4_0 | BlockType::Q4_1 => {
                let off = if kind == BlockType::Q4_0 { 2 } else { 4 };
                let qs = _mm_loadu_si128(b.add(off) as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                [
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                ]
            }
            BlockType::Q8_0 => {
                let ld = |i: usize| _mm_loadl_epi64(b.add(2 + 8 * i) as *const __m128i);
                [
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ld(0))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ld(1))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ld(2))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ld(3))),
                ]
            }
        }
    }

    /// `Σ_i q_i x_i` of one block as an 8-lane partial sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_dot(w: &[__m256; 4], xs: *const f32) -> __m256 {
        let s0 = _mm256_mul_ps(w[0], _mm256_loadu_ps(xs));
        let s1 = _mm256_mul_ps(w[1], _mm256_loadu_ps(xs.add(8)));
        let s0 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xs.add(16)), s0);
        let s1 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xs.add(24)), s1);
        _mm256_add_ps(s0, s1)
    }

    /// One output row against one token (the decode case), specialised per format so
    /// the block loop has no branches.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_dot(
        kind: BlockType,
        row: *const u8,
        nb: usize,
        bs: usize,
        x: *const f32,
        sums: *const f32,
    ) -> f32 {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut macc = 0f32;
        let mut b = 0;
        while b + 1 < nb {
            let (blk0, blk1) = (row.add(b * bs), row.add((b + 1) * bs));
            let (d0, m0) = scales(kind, blk0);
            let (d1, m1) = scales(kind, blk1);
            let s0 = block_dot(&unpack(kind, blk0), x.add(b * QK));
            let s1 = block_dot(&unpack(kind, blk1), x.add((b + 1) * QK));
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), s0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), s1, acc1);
            macc += m0 * *sums.add(b) + m1 * *sums.add(b + 1);
            b += 2;
        }
        if b < nb {
            let blk = row.add(b * bs);
            let (d, m) = scales(kind, blk);
            let s = block_dot(&unpack(kind, blk), x.add(b * QK));
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc0);
            macc += m * *sums.add(b);
        }
        hsum(_mm256_add_ps(acc0, acc1)) + macc
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_times(
        m: &BlockMatrix,
        x: &[f32],
        tokens: usize,
        sums: &[f32],
        r0: usize,
        out: &mut Columns,
    ) {
        let rb = m.row_bytes();
        let bs = m.kind.bytes();
        let nb = m.cols / QK;
        let cols = m.cols;
        let kind = m.kind;
        let xp = x.as_ptr();
        let sp = sums.as_ptr();
        let rows = out.rows;
        assert!(
            out.tokens == tokens
                && r0 + rows <= m.rows
                && x.len() >= tokens * cols
                && sums.len() >= tokens * nb
        );
        let base = m.data.as_ptr().add(r0 * rb);
        if tokens == 1 {
            for i in 0..rows {
                let v = match kind {
                    BlockType::Q4_0 => row_dot(BlockType::Q4_0, base.add(i * rb), nb, bs, xp, sp),
                    BlockType::Q4_1 => row_dot(BlockType::Q4_1, base.add(i * rb), nb, bs, xp, sp),
                    BlockType::Q8_0 => row_dot(BlockType::Q8_0, base.add(i * rb), nb, bs, xp, sp),
                };
                out.set(0, i, v);
            }
            return;
        }
        // 4-bit formats dequantize through a 16-entry table when AVX-512VL is there.
        // With AVX-512VL's 32 registers, rows go two or four at a time (`tile2`,
        // `tile4`), and 4-bit formats dequantize through a 16-entry table.
        let two_rows = has_avx512vl();
        let lut = two_rows && kind != BlockType::Q8_0;
        // Blocks of rows, and within a block every tile of tokens over every row: a
        // tile's activations (8 tokens, 18 KB for 576 columns) and a block's weights
        // stay in L1 while they are reused, instead of each row streaming every
        // token's activations from L2.
        for first in (0..rows).step_by(ROW_BLOCK) {
            let last = (first + ROW_BLOCK).min(rows);
            let mut t0 = 0;
            while t0 < tokens {
                let nt = (tokens - t0).min(TILE);
                let x0 = xp.add(t0 * cols);
                // Groups of rows (when the CPU has AVX-512VL), then any row left over.
                let mut i = first;
                if two_rows {
                    let band = (first, last);
                    by_tile!(
                        nt,
                        row_groups<if lut>,
                        kind,
                        base,
                        band,
                        rb,
                        nb,
                        bs,
                        cols,
                        x0,
                        t0,
                        out
                    );
                    i = last - (last - first) % 2;
                }
                for i in i..last {
                    let row = base.add(i * rb);
                    let mut o = [0f32; TILE];
                    if lut {
                        by_tile!(nt, tile_lut, kind, row, nb, bs, cols, x0, &mut o);
                    } else {
                        by_tile!(nt, tile, kind, row, nb, bs, cols, x0, &mut o);
                    }
                    for (t, &v) in o[..nt].iter().enumerate() {
                        out.set(t0 + t, i, v);
                    }
                }
                t0 += nt;
            }
        }
    }

    /// Rows `band.0..band.1` (rounded down to an even count) against `NT` tokens
    /// starting at token `t0`, written into `out`: four at a time while four remain
    /// when `NT` is at most 4 ([`tile4`]), otherwise two at a time ([`tile2`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_groups<const NT: usize, const LUT: bool>(
        kind: BlockType,
        base: *const u8,
        band: (usize, usize),
        rb: usize,
        nb: usize,
        bs: usize,
        cols: usize,
        x: *const f32,
        t0: usize,
        out: &mut Columns,
    ) {
        let mut i = band.0;
        if NT <= 4 {
            while i + 3 < band.1 {
                let mut o = [[0f32; TILE]; 4];
                tile4::<NT, LUT>(kind, base.add(i * rb), rb, nb, bs, cols, x, &mut o);
                for (r, row) in o.iter().enumerate() {
                    for (t, &v) in row[..NT].iter().enumerate() {
                        out.set(t0 + t, i + r, v);
                    }
                }
                i += 4;
            }
        }
        while i + 1 < band.1 {
            let (mut o0, mut o1) = ([0f32; TILE], [0f32; TILE]);
            tile2::<NT, LUT>(
                kind,
                base.add(i * rb),
                rb,
                nb,
                bs,
                cols,
                x,
                &mut o0,
                &mut o1,
            );
            for t in 0..NT {
                out.set(t0 + t, i, o0[t]);
                out.set(t0 + t, i + 1, o1[t]);
            }
            i += 2;
        }
    }

    /// One row against `NT` tokens: each block is dequantized once (`q·d + m`, in f32)
    /// and multiplied into every token's accumulator; `NT` is a constant so the
    /// accumulators stay in registers (the offset `m` is part of the dequantized
    /// weights, so no block sums are needed).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const NT: usize>(
        kind: BlockType,
        row: *const u8,
        nb: usize,
        bs: usize,
        cols: usize,
        x: *const f32,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); NT];
        for b in 0..nb {
            let blk = row.add(b * bs);
            let w = dequant(kind, blk);
            accumulate(&w, x.add(b * QK), cols, &mut acc);
        }
        for t in 0..NT {
            out[t] = hsum(acc[t]);
        }
    }

    /// A block's 32 weights `q·d + m`, converted from integers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dequant(kind: BlockType, blk: *const u8) -> [__m256; 4] {
        let (d, mm) = scales(kind, blk);
        let q = unpack(kind, blk);
        let (dv, mv) = (_mm256_set1_ps(d), _mm256_set1_ps(mm));
        [
            _mm256_fmadd_ps(q[0], dv, mv),
            _mm256_fmadd_ps(q[1], dv, mv),
            _mm256_fmadd_ps(q[2], dv, mv),
            _mm256_fmadd_ps(q[3], dv, mv),
        ]
    }

    /// A 4-bit block's 32 weights through its 16-entry table (see [`tile_lut`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    unsafe fn dequant_lut(kind: BlockType, blk: *const u8) -> [__m256; 4] {
        let off = if kind == BlockType::Q4_0 { 2 } else { 4 };
        let (d, mm) = scales(kind, blk);
        let (dv, mv) = (_mm256_set1_ps(d), _mm256_set1_ps(mm));
        let q_lo = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
        let q_hi = _mm256_setr_ps(8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0);
        let t_lo = _mm256_fmadd_ps(q_lo, dv, mv);
        let t_hi = _mm256_fmadd_ps(q_hi, dv, mv);
        let qs = _mm_loadu_si128(blk.add(off) as *const __m128i);
        let hi = _mm_srli_epi16(qs, 4);
        [
            _mm256_permutex2var_ps(t_lo, _mm256_cvtepu8_epi32(qs), t_hi),
            _mm256_permutex2var_ps(t_lo, _mm256_cvtepu8_epi32(_mm_srli_si128(qs, 8)), t_hi),
            _mm256_permutex2var_ps(t_lo, _mm256_cvtepu8_epi32(hi), t_hi),
            _mm256_permutex2var_ps(t_lo, _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)), t_hi),
        ]
    }

    /// Adds one block's weights `w` times each token's 32 activations (`x` at the
    /// block's first column, tokens `cols` apart) into the tokens' accumulators.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<const NT: usize>(
        w: &[__m256; 4],
        x: *const f32,
        cols: usize,
        acc: &mut [__m256; NT],
    ) {
        for (t, a) in acc.iter_mut().enumerate() {
            let xs = x.add(t * cols);
            let mut v = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xs), *a);
            v = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xs.add(8)), v);
            v = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xs.add(16)), v);
            *a = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xs.add(24)), v);
        }
    }

    /// [`tile`] for the 4-bit formats, dequantizing through a table: a block's 16
    /// possible weights `d·q + m` are two 8-lane vectors (two FMAs), and each weight is
    /// a two-table permute indexed by its nibble. That replaces four int-to-float
    /// conversions and four FMAs per block, which compete with the tokens' FMAs for
    /// the same two ports, by permutes on another port. The permute reads only the low
    /// four bits of each index, so the low nibbles need no mask and the high ones one
    /// 16-bit shift. Same products, same order of sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_lut<const NT: usize>(
        kind: BlockType,
        row: *const u8,
        nb: usize,
        bs: usize,
        cols: usize,
        x: *const f32,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); NT];
        for b in 0..nb {
            let w = dequant_lut(kind, row.add(b * bs));
            accumulate(&w, x.add(b * QK), cols, &mut acc);
        }
        for t in 0..NT {
            out[t] = hsum(acc[t]);
        }
    }

    /// A Q8_0 block's 32 weights `d·q`, bit for bit what `fma(q as f32, d, 0)` gives,
    /// with one floating-point op per eight weights instead of a conversion and a
    /// multiply: `q + 0x4B40_0000` read as f32 is `1.5·2²³ + q` exactly (the integer
    /// add may run on the shuffle port), and `fma(1.5·2²³ + q, d, −1.5·2²³·d)` rounds
    /// the exact `q·d` once; `1.5·2²³·d` is exact in f32 (d is an f16), and so is `q·d`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dequant_q8_magic(blk: *const u8, d: f32) -> [__m256; 4] {
        const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
        let bias = _mm256_set1_epi32(0x4B40_0000);
        let dv = _mm256_set1_ps(d);
        let off = _mm256_set1_ps(-MAGIC * d);
        let ld = |i: usize| {
            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk.add(2 + 8 * i) as *const __m128i));
            _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_add_epi32(q, bias)), dv, off)
        };
        [ld(0), ld(1), ld(2), ld(3)]
    }

    /// A block's weights as the multi-row tiles dequantize them: through the table
    /// with `LUT` (4-bit formats), Q8_0 with its exact bit trick, else by conversion.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    unsafe fn dequant_for<const LUT: bool>(kind: BlockType, blk: *const u8) -> [__m256; 4] {
        if LUT {
            dequant_lut(kind, blk)
        } else if kind == BlockType::Q8_0 {
            dequant_q8_magic(blk, scales(kind, blk).0)
        } else {
            dequant(kind, blk)
        }
    }

    /// [`tile2`] for four consecutive rows and at most four tokens. With so few
    /// tokens, two rows give at most 8 accumulators, each a chain of four dependent
    /// FMAs per block: too few chains to keep both FMA ports busy (measured: 4 tokens
    /// cost about as much as 8). Four rows give 16. Each row's block is dequantized
    /// just before its FMAs, and the tokens' activations are read again for each row
    /// (from L1). The same products in the same order as [`tile`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile4<const NT: usize, const LUT: bool>(
        kind: BlockType,
        row: *const u8,
        rb: usize,
        nb: usize,
        bs: usize,
        cols: usize,
        x: *const f32,
        out: &mut [[f32; TILE]; 4],
    ) {
        let mut acc = [[_mm256_setzero_ps(); NT]; 4];
        for b in 0..nb {
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = dequant_for::<LUT>(kind, row.add(r * rb + b * bs));
                accumulate(&w, x.add(b * QK), cols, acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(&acc) {
            for t in 0..NT {
                o[t] = hsum(acc[t]);
            }
        }
    }

    /// [`tile`] (or with `LUT`, [`tile_lut`]) for two consecutive rows (`rb` bytes
    /// apart): each token's activations are loaded once for both rows' FMAs, and the
    /// 16 accumulators fit in AVX-512VL's 32 vector registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile2<const NT: usize, const LUT: bool>(
        kind: BlockType,
        row: *const u8,
        rb: usize,
        nb: usize,
        bs: usize,
        cols: usize,
        x: *const f32,
        out0: &mut [f32],
        out1: &mut [f32],
    ) {
        let mut acc0 = [_mm256_setzero_ps(); NT];
        let mut acc1 = [_mm256_setzero_ps(); NT];
        for b in 0..nb {
            let w0 = dequant_for::<LUT>(kind, row.add(b * bs));
            let w1 = dequant_for::<LUT>(kind, row.add(rb + b * bs));
            for t in 0..NT {
                let xs = x.add(t * cols + b * QK);
                let x0 = _mm256_loadu_ps(xs);
                let x1 = _mm256_loadu_ps(xs.add(8));
                let x2 = _mm256_loadu_ps(xs.add(16));
                let x3 = _mm256_loadu_ps(xs.add(24));
                let mut v = _mm256_fmadd_ps(w0[0], x0, acc0[t]);
                v = _mm256_fmadd_ps(w0[1], x1, v);
                v = _mm256_fmadd_ps(w0[2], x2, v);
                acc0[t] = _mm256_fmadd_ps(w0[3], x3, v);
                let mut u = _mm256_fmadd_ps(w1[0], x0, acc1[t]);
                u = _mm256_fmadd_ps(w1[1], x1, u);
                u = _mm256_fmadd_ps(w1[2], x2, u);
                acc1[t] = _mm256_fmadd_ps(w1[3], x3, u);
            }
        }
        for t in 0..NT {
            out0[t] = hsum(acc0[t]);
            out1[t] = hsum(acc1[t]);
        }
    }
}

/// Whether the kernel may use AVX-512VL (32 vector registers, two-table permutes; the
/// code stays 256-bit). `TETHER_NO_AVX512` set in the environment turns it off, to
/// compare the paths or to rule this one out.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512vl() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var_os("TETHER_NO_AVX512").is_none()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
    })
}

/// The candle op: `x (tokens, cols) → x Wᵀ (tokens, rows)`, with a backward pass
/// (`grad_x = grad_y · W`) so adapters train through compact weights.
struct BlockMatMul(Arc<BlockMatrix>);

impl CustomOp1 for BlockMatMul {
    fn name(&self) -> &'static str {
        "block-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let m = &self.0;
        let (tokens, cols) = layout.shape().dims2()?;
        if cols != m.cols {
            candle_core::bail!(
                "block-matmul: input has {cols} columns, weight has {}",
                m.cols
            );
        }
        let x = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("block-matmul: input must be contiguous f32"),
        };
        let sums = block_sums(x);
        // Parallel bands of output columns (weight rows), each written in place.
        let mut out = vec![0f32; tokens * m.rows];
        let per_task = (m.rows / (2 * rayon::current_num_threads())).max(MIN_ROWS_PER_TASK);
        let base = out.as_mut_ptr();
        let bands: Vec<(usize, Columns)> = (0..m.rows)
            .step_by(per_task)
            .map(|r0| {
                let band = Columns {
                    // SAFETY: `r0 < m.rows`, inside the buffer's first row.
                    ptr: unsafe { base.add(r0) },
                    stride: m.rows,
                    rows: per_task.min(m.rows - r0),
                    tokens,
                };
                (r0, band)
            })
            .collect();
        bands
            .into_par_iter()
            .for_each(|(r0, mut band)| m.rows_times(x, tokens, &sums, r0, &mut band));
        Ok((CpuStorage::F32(out), Shape::from((tokens, m.rows))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = self
            .0
            .dequantize(grad_res.device())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Some(grad_res.matmul(&w)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("tensor")
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    /// The kernel computes x·Wᵀ on the dequantized weights, for every block format,
    /// token count (tiles of 8 and remainders) and both code paths.
    #[test]
    fn kernel_matches_dense_product_of_dequantized_weights() {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = random(71, 96, 1);
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let m = Arc::new(
                BlockMatrix::from_qtensor(&q)
                    .expect("blocks")
                    .expect("supported"),
            );
            let dense = m.dequantize(&Device::Cpu).expect("dequantize");
            // Same dequantized values as candle's own dequantization.
            let theirs = q.dequantize(&Device::Cpu).expect("candle dequantize");
            assert_eq!(
                max_diff(&dense, &theirs),
                0.0,
                "{dtype:?} dequantization differs"
            );
            // Dense products over slices of the weight agree with the whole product
            // (71 rows: one slice, and four slices of 16 rows and one of 7). The odd
            // row count also leaves the kernel a row outside its pairs.
            let x = random(70, 96, 70);
            let want = x.matmul(&dense.t().expect("t")).expect("matmul");
            for slice_bytes in [1 << 20, 16 * 96 * 4] {
                let got = m.matmul_sliced(&x, slice_bytes).expect("sliced");
                assert!(
                    max_diff(&got, &want) < 1e-5,
                    "{dtype:?}: sliced product differs"
                );
            }
            for tokens in [1, 3, 8, 9, 17] {
                let x = random(tokens, 96, tokens as u64);
                let want = x.matmul(&dense.t().expect("t")).expect("matmul");
                let got = m.matmul(&x).expect("kernel");
                let d = max_diff(&got, &want);
                assert!(
                    d < 1e-4,
                    "{dtype:?}, {tokens} tokens: kernel differs by {d}"
                );
                // The portable loop agrees with whichever path ran.
                let xs: Vec<f32> = x.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
                let sums = block_sums(&xs);
                let mut portable = vec![0f32; m.rows * tokens];
                let mut band = Columns {
                    ptr: portable.as_mut_ptr(),
                    stride: m.rows,
                    rows: m.rows,
                    tokens,
                };
                m.rows_times_portable(&xs, tokens, &sums, 0, &mut band);
                let got_t: Vec<f32> = got.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
                let worst = portable
                    .iter()
                    .zip(&got_t)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-4,
                    "{dtype:?}: portable and dispatched paths differ by {worst}"
                );
            }
        }
    }

    /// The table-lookup tile computes bit-for-bit what the conversion tile computes,
    /// and so do the two- and four-row tiles.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn table_dequantization_matches_conversion_exactly() {
        if !(has_avx2() && has_avx512vl()) {
            return; // nothing to compare on this CPU
        }
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = random(4, 128, 11);
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let m = BlockMatrix::from_qtensor(&q)
                .expect("blocks")
                .expect("supported");
            let xs: Vec<f32> = random(8, 128, 12)
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("vec");
            let (nb, bs) = (m.cols / QK, m.kind.bytes());
            for r in 0..m.rows {
                let row = m.data[r * m.row_bytes()..].as_ptr();
                let (mut a, mut b) = ([0f32; TILE], [0f32; TILE]);
                // SAFETY: AVX2 and AVX-512VL are present (checked above); the row and
                // eight tokens of 128 columns lie within `m.data` and `xs`.
                unsafe {
                    avx2::tile::<8>(m.kind, row, nb, bs, m.cols, xs.as_ptr(), &mut a);
                    if dtype == GgmlDType::Q8_0 {
                        b = a; // no table for 8-bit quants
                    } else {
                        avx2::tile_lut::<8>(m.kind, row, nb, bs, m.cols, xs.as_ptr(), &mut b);
                    }
                }
                assert_eq!(a, b, "{dtype:?} row {r}");
                if r == 0 {
                    // Four rows at a time, with four and three tokens: each row as
                    // the one-row tile computes it.
                    let (rb, x) = (m.row_bytes(), xs.as_ptr());
                    let mut want = [[0f32; TILE]; 4];
                    let (mut conv, mut table) = ([[0f32; TILE]; 4], [[0f32; TILE]; 4]);
                    // SAFETY: as above; rows 0..4 lie within `m.data`.
                    unsafe {
                        for (i, w) in want.iter_mut().enumerate() {
                            avx2::tile::<4>(m.kind, row.add(i * rb), nb, bs, m.cols, x, w);
                        }
                        avx2::tile4::<4, false>(m.kind, row, rb, nb, bs, m.cols, x, &mut conv);
                        assert_eq!(conv, want, "{dtype:?} four rows");
                        if dtype != GgmlDType::Q8_0 {
                            avx2::tile4::<4, true>(m.kind, row, rb, nb, bs, m.cols, x, &mut table);
                            assert_eq!(table, want, "{dtype:?} four rows (table)");
                        }
                        let mut three = [[0f32; TILE]; 4];
                        for (i, w) in want.iter_mut().enumerate() {
                            *w = [0f32; TILE];
                            avx2::tile::<3>(m.kind, row.add(i * rb), nb, bs, m.cols, x, w);
                        }
                        avx2::tile4::<3, false>(m.kind, row, rb, nb, bs, m.cols, x, &mut three);
                        assert_eq!(three, want, "{dtype:?} four rows, three tokens");
                    }
                }
                if r + 1 < m.rows {
                    let (mut c, mut d) = ([0f32; TILE], [0f32; TILE]);
                    let mut next = [0f32; TILE];
                    let (rb, x) = (m.row_bytes(), xs.as_ptr());
                    // SAFETY: as above; rows r and r + 1 lie within `m.data`.
                    unsafe {
                        avx2::tile::<8>(m.kind, row.add(rb), nb, bs, m.cols, x, &mut next);
                        avx2::tile2::<8, false>(m.kind, row, rb, nb, bs, m.cols, x, &mut c, &mut d);
                        assert_eq!((a, next), (c, d), "{dtype:?} rows {r}, {}", r + 1);
                        if dtype != GgmlDType::Q8_0 {
                            avx2::tile2::<8, true>(
                                m.kind, row, rb, nb, bs, m.cols, x, &mut c, &mut d,
                            );
                            assert_eq!((a, next), (c, d), "{dtype:?} rows {r}, {} (table)", r + 1);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gradient_flows_to_the_input() {
        let w = random(40, 64, 3);
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).expect("quantize");
        let m = Arc::new(
            BlockMatrix::from_qtensor(&q)
                .expect("blocks")
                .expect("supported"),
        );
        let dense = m.dequantize(&Device::Cpu).expect("dequantize");
        let x = Var::from_tensor(&random(2, 64, 4)).expect("var");
        let g_kernel = m
            .matmul(x.as_tensor())
            .and_then(|y| Ok(y.sqr()?.sum_all()?))
            .expect("loss");
        let g_kernel = g_kernel.backward().expect("backward");
        let g_dense = x
            .as_tensor()
            .matmul(&dense.t().expect("t"))
            .and_then(|y| y.sqr()?.sum_all())
            .expect("loss")
            .backward()
            .expect("backward");
        let a = g_kernel.get(x.as_tensor()).expect("grad");
        let b = g_dense.get(x.as_tensor()).expect("grad");
        assert!(max_diff(a, b) < 1e-3);
    }

    #[test]
    fn unsupported_formats_are_declined() {
        let w = random(8, 256, 5);
        let q = QTensor::quantize(&w, GgmlDType::Q4K).expect("quantize");
        assert!(BlockMatrix::from_qtensor(&q).expect("ok").is_none());
    }
}
