//! Exact integer GEMM on low-bit codes, real and complex, rescaled once.
//!
//! The photonic core holds weights as signed codes of `w_bits ≤ 8` with a
//! scale and zero point per output channel; the DACs feed activations as
//! unsigned codes of `x_bits ≤ 8` with one scale and zero point:
//!
//! ```text
//! x = sx·(qx − zx),   w[n] = sw[n]·(qw[n] − zw[n]),
//! y[m, n] = sx·sw[n]·Σ_k (qx[m,k] − zx)·(qw[n,k] − zw[n])
//! ```
//!
//! The sum is accumulated exactly in integers (raw `Σ qx·qw` plus row/column
//! sum corrections for the zero points) and rescaled once, in f64, rounding
//! to f32 a single time. It therefore equals dequantize-then-matmul computed
//! exactly and rounded once.
//!
//! The raw products run on the best kernel the CPU has ([`Kernel`]):
//! AVX-512 VNNI `vpdpbusd` (u8 × i8 dot products of four, added to i32
//! without saturation) for any byte codes; else AVX2 `vpmaddubsw` (u8 × i8,
//! pairs summed to i16), which saturates unless `2·max|qx|·max|qw| ≤ 32767`:
//! within that bound the i16 sums of `S = ⌊32767 / (2·max|qx|·max|qw|)⌋`
//! steps are exact before they are widened to i32, and outside it (8-bit ×
//! 8-bit) the codes are widened to i16 for `vpmaddwd`. Complex products use
//! the 3-multiplication (Gauss) form when its combined codes (`qx_re +
//! qx_im`, `qw_im − qw_re`, `qw_re + qw_im`, one bit wider) still fit a byte
//! kernel, and the 4-multiplication form otherwise.

use rayon::prelude::*;

use crate::cpu::CpuFeatures;
use crate::error::{checked_product, KernelError};

/// Activation codes: `m×k` unsigned codes, one scale and zero point.
#[derive(Debug, Clone, Copy)]
pub struct Activations<'a> {
    /// Real part (or the real activations), `m·k` codes in `0..2^bits`.
    pub re: &'a [u8],
    /// Imaginary part for complex activations, same layout.
    pub im: Option<&'a [u8]>,
    pub bits: u32,
    pub scale: f32,
    pub zero_point: i32,
}

/// Weight codes: `n×k` signed codes, per-output-channel scale and zero point.
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    /// Real part (or the real weights), `n·k` codes in `−2^(bits−1)..2^(bits−1)`.
    pub re: &'a [i8],
    /// Imaginary part for complex weights, same layout.
    pub im: Option<&'a [i8]>,
    pub bits: u32,
    /// `n` scales.
    pub scale: &'a [f32],
    /// `n` zero points.
    pub zero_point: &'a [i32],
}

/// Unpacks signed 4-bit codes stored two per byte (low nibble first) into
/// `out`; `packed` must hold `⌈out.len()/2⌉` bytes.
pub fn unpack_int4(packed: &[u8], out: &mut [i8]) -> Result<(), KernelError> {
    let needed = out.len().div_ceil(2);
    if packed.len() != needed {
        return Err(KernelError::Shape(format!(
            "{} packed 4-bit codes take {needed} bytes, got {}",
            out.len(),
            packed.len()
        )));
    }
    let low = |byte: u8| ((byte << 4) as i8) >> 4; // sign-extend the low nibble
    let mut pairs = out.chunks_exact_mut(2);
    for (pair, &byte) in (&mut pairs).zip(packed) {
        pair[0] = low(byte);
        pair[1] = (byte as i8) >> 4;
    }
    if let ([last], Some(&byte)) = (pairs.into_remainder(), packed.last()) {
        *last = low(byte);
    }
    Ok(())
}

fn check_codes(m: usize, n: usize, k: usize, x: &Activations<'_>, w: &Weights<'_>) -> Result<(), KernelError> {
    if !(1..=8).contains(&x.bits) || !(1..=8).contains(&w.bits) {
        return Err(KernelError::Value(format!(
            "code widths must be 1..=8 bits, got activations {} and weights {}",
            x.bits, w.bits
        )));
    }
    let (mk, nk) = (checked_product(&[m, k], "activations")?, checked_product(&[n, k], "weights")?);
    for (name, len, want) in [
        ("activation codes", x.re.len(), mk),
        ("imaginary activation codes", x.im.map_or(mk, <[u8]>::len), mk),
        ("weight codes", w.re.len(), nk),
        ("imaginary weight codes", w.im.map_or(nk, <[i8]>::len), nk),
        ("weight scales", w.scale.len(), n),
        ("weight zero points", w.zero_point.len(), n),
    ] {
        if len != want {
            return Err(KernelError::Shape(format!("{name}: expected {want} values, got {len}")));
        }
    }
    // Branch-free reductions (they vectorise); the offending value is
    // looked up only on failure.
    let x_max = ((1u32 << x.bits) - 1) as u8;
    for part in std::iter::once(x.re).chain(x.im) {
        if part.iter().fold(0u8, |acc, &c| acc.max(c)) > x_max {
            let bad = part.iter().find(|&&c| c > x_max).copied().unwrap_or_default();
            return Err(KernelError::Value(format!("activation code {bad} exceeds {} bits", x.bits)));
        }
    }
    let (w_lo, w_hi) = ((-(1i32 << (w.bits - 1))) as i8, ((1i32 << (w.bits - 1)) - 1) as i8);
    for part in std::iter::once(w.re).chain(w.im) {
        let (lo, hi) = part.iter().fold((0i8, 0i8), |(lo, hi), &c| (lo.min(c), hi.max(c)));
        if lo < w_lo || hi > w_hi {
            let bad = part.iter().find(|&&c| c < w_lo || c > w_hi).copied().unwrap_or_default();
            return Err(KernelError::Value(format!("weight code {bad} is outside {} bits", w.bits)));
        }
    }
    if !x.scale.is_finite() || x.scale <= 0.0 {
        return Err(KernelError::Value(format!("activation scale must be finite and > 0, got {}", x.scale)));
    }
    if let Some(bad) = w.scale.iter().find(|s| !s.is_finite() || **s <= 0.0) {
        return Err(KernelError::Value(format!("weight scales must be finite and > 0, got {bad}")));
    }
    if x.im.is_some() != w.im.is_some() {
        return Err(KernelError::Value("activations and weights must both be real or both complex".into()));
    }
    Ok(())
}

/// Real quantized product: `out` is `m×n` f32.
pub fn quantized_matmul(m: usize, n: usize, k: usize, x: &Activations<'_>, w: &Weights<'_>, out: &mut [f32]) -> Result<(), KernelError> {
    real_product(m, n, k, x, w, out, CpuFeatures::detect())
}

/// Complex quantized product: `out` is `m×n` interleaved (re, im) f32.
pub fn quantized_matmul_complex(m: usize, n: usize, k: usize, x: &Activations<'_>, w: &Weights<'_>, out: &mut [f32]) -> Result<(), KernelError> {
    complex_product(m, n, k, x, w, out, CpuFeatures::detect())
}

fn real_product(m: usize, n: usize, k: usize, x: &Activations<'_>, w: &Weights<'_>, out: &mut [f32], features: CpuFeatures) -> Result<(), KernelError> {
    check_codes(m, n, k, x, w)?;
    if x.im.is_some() {
        return Err(KernelError::Value("complex codes need quantized_matmul_complex".into()));
    }
    if out.len() != m * n {
        return Err(KernelError::Shape(format!("the result holds {} values, needs {}", out.len(), m * n)));
    }
    let (x_max, w_max) = code_bounds(x, w);
    let kernel = Kernel::choose(x_max, w_max, features);
    let a = Panel::pack(kernel, Side::A, m, k, x_max, Codes::Unsigned(x.re));
    let b = Panel::pack(kernel, Side::B, n, k, w_max, Codes::Signed(w.re));
    let terms = [Term { a: &a, b: &b, za: x.zero_point, zb: w.zero_point, signs: [1, 0] }];
    evaluate(kernel, &terms, 1, x.scale, w.scale, out);
    Ok(())
}

fn complex_product(m: usize, n: usize, k: usize, x: &Activations<'_>, w: &Weights<'_>, out: &mut [f32], features: CpuFeatures) -> Result<(), KernelError> {
    check_codes(m, n, k, x, w)?;
    let (Some(x_im), Some(w_im)) = (x.im, w.im) else {
        return Err(KernelError::Value("complex product needs imaginary codes for both operands".into()));
    };
    if out.len() != 2 * m * n {
        return Err(KernelError::Shape(format!("the result holds {} values, needs {}", out.len(), 2 * m * n)));
    }
    let (x_max, w_max) = code_bounds(x, w);
    let (zx, zw) = (x.zero_point, w.zero_point);
    let (xr, xi) = (Codes::Unsigned(x.re), Codes::Unsigned(x_im));
    let (wr, wi) = (Codes::Signed(w.re), Codes::Signed(w_im));
    let (a, b) = (Side::A, Side::B);
    let gauss = Kernel::choose(2 * x_max, 2 * w_max, features);
    if gauss.uses_bytes() {
        // Gauss: P1 = (xr+xi)·wr, P2 = xr·(wi−wr), P3 = xi·(wr+wi);
        // re = P1 − P3, im = P1 + P2. Zero points combine linearly.
        let z_diff = vec![0; n];
        let z_sum: Vec<i32> = zw.iter().map(|z| 2 * z).collect();
        let x_sum = Panel::pack(gauss, a, m, k, 2 * x_max, Codes::UnsignedSum(x.re, x_im));
        let (a_re, a_im) = (Panel::pack(gauss, a, m, k, x_max, xr), Panel::pack(gauss, a, m, k, x_max, xi));
        let b_re = Panel::pack(gauss, b, n, k, w_max, wr);
        let w_sum = Panel::pack(gauss, b, n, k, 2 * w_max, Codes::SignedSum(w.re, w_im));
        let w_diff = Panel::pack(gauss, b, n, k, 2 * w_max, Codes::SignedDiff(w.re, w_im));
        let terms = [
            Term { a: &x_sum, b: &b_re, za: 2 * zx, zb: zw, signs: [1, 1] },
            Term { a: &a_im, b: &w_sum, za: zx, zb: &z_sum, signs: [-1, 0] },
            Term { a: &a_re, b: &w_diff, za: zx, zb: &z_diff, signs: [0, 1] },
        ];
        evaluate(gauss, &terms, 2, x.scale, w.scale, out);
    } else {
        let kernel = Kernel::choose(x_max, w_max, features);
        let (a_re, a_im) = (Panel::pack(kernel, a, m, k, x_max, xr), Panel::pack(kernel, a, m, k, x_max, xi));
        let (b_re, b_im) = (Panel::pack(kernel, b, n, k, w_max, wr), Panel::pack(kernel, b, n, k, w_max, wi));
        let terms = [
            Term { a: &a_re, b: &b_re, za: zx, zb: zw, signs: [1, 0] },
            Term { a: &a_im, b: &b_im, za: zx, zb: zw, signs: [-1, 0] },
            Term { a: &a_re, b: &b_im, za: zx, zb: zw, signs: [0, 1] },
            Term { a: &a_im, b: &b_re, za: zx, zb: zw, signs: [0, 1] },
        ];
        evaluate(kernel, &terms, 2, x.scale, w.scale, out);
    }
    Ok(())
}

/// Largest activation code and largest weight magnitude the widths allow.
fn code_bounds(x: &Activations<'_>, w: &Weights<'_>) -> (i32, i32) {
    ((1i32 << x.bits) - 1, 1i32 << (w.bits - 1))
}

/// The one rounding of the result: exact integer times the scales, in f64.
fn rescale(value: i64, x_scale: f32, w_scale: f32) -> f32 {
    (value as f64 * x_scale as f64 * w_scale as f64) as f32
}

/// The raw-product kernels, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI `vpdpbusd` on byte codes: 8 rows × 32 columns a block,
    /// columns in the vector lanes (no horizontal sums).
    Vnni,
    /// AVX2 `vpmaddubsw` on byte codes within the saturation bound, 3×3 blocks.
    Avx2Bytes,
    /// AVX2 `vpmaddwd` on codes widened to i16, 3×3 blocks.
    Avx2Words,
    /// Portable loops on i16 codes.
    Scalar,
}

/// Which operand a panel holds: `a` (unsigned rows) or `b` (signed rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Kernel {
    /// The kernel for codes `0..=a_max` times codes within ±`b_max` on a
    /// CPU with `features`.
    pub fn choose(a_max: i32, b_max: i32, features: CpuFeatures) -> Kernel {
        let bytes = a_max <= 255 && b_max <= 128;
        if bytes && features.avx512_vnni {
            Kernel::Vnni
        } else if bytes && features.avx2 && 2 * a_max * b_max <= i16::MAX as i32 {
            Kernel::Avx2Bytes
        } else if features.avx2 {
            Kernel::Avx2Words
        } else {
            Kernel::Scalar
        }
    }

    /// Whether panels hold bytes (else i16 words).
    pub fn uses_bytes(self) -> bool {
        matches!(self, Kernel::Vnni | Kernel::Avx2Bytes)
    }

    /// Block height of the `a` and `b` panels and codes per vector step.
    fn layout(self) -> (usize, usize, usize) {
        match self {
            Kernel::Vnni => (VNNI_ROWS, VNNI_COLS, 4),
            Kernel::Avx2Bytes | Kernel::Avx2Words => (AVX2_R, AVX2_R, 32),
            Kernel::Scalar => (1, 1, 1),
        }
    }
}

const VNNI_ROWS: usize = 8;
const VNNI_COLS: usize = 32;
const AVX2_R: usize = 3;

/// One operand, packed for its kernel: rows padded to a multiple of the
/// block height and k to a multiple of the vector step, zeros in the
/// padding; bytes (u8 for `a`, i8 bits for `b`) or i16 words. Keeps the row
/// sums for the zero-point corrections.
struct Panel {
    bytes: Vec<u8>,
    words: Vec<i16>,
    rows: usize,
    k: usize,
    kp: usize,
    max: i32,
    sums: Vec<i64>,
}

impl Panel {
    /// Packs `rows×k` codes, each within ±`max`.
    fn pack(kernel: Kernel, side: Side, rows: usize, k: usize, max: i32, codes: Codes<'_>) -> Panel {
        let (mr, nr, step) = kernel.layout();
        let height = if side == Side::A { mr } else { nr };
        let kp = k.div_ceil(step) * step;
        let padded = rows.div_ceil(height) * height * kp;
        let (mut bytes, mut words) = (Vec::new(), Vec::new());
        let sums = if kernel == Kernel::Vnni && side == Side::B {
            bytes = vec![0u8; padded];
            fill_column_blocks(&mut bytes, rows, k, kp, codes)
        } else if kernel.uses_bytes() {
            bytes = vec![0u8; padded];
            fill(&mut bytes, rows, k, kp, codes, |v| v as u8)
        } else {
            words = vec![0i16; padded];
            fill(&mut words, rows, k, kp, codes, |v| v)
        };
        Panel { bytes, words, rows, k, kp, max, sums }
    }
}

/// Codes of one operand, or the sum or difference of two (the Gauss form's
/// combined codes), row-major `rows×k`.
#[derive(Clone, Copy)]
enum Codes<'a> {
    Unsigned(&'a [u8]),
    Signed(&'a [i8]),
    UnsignedSum(&'a [u8], &'a [u8]),
    SignedSum(&'a [i8], &'a [i8]),
    /// `second − first`.
    SignedDiff(&'a [i8], &'a [i8]),
}

impl Codes<'_> {
    /// Writes row `r` (`k` codes) through `cast` into `out`; returns its sum.
    /// Two simple loops, so that both vectorise.
    #[inline(always)]
    fn write_row<T>(self, r: usize, k: usize, out: &mut [T], cast: impl Fn(i16) -> T) -> i64 {
        let range = r * k..(r + 1) * k;
        fn pairs<'s, U: Copy, V: Copy>(a: &'s [U], b: &'s [V]) -> impl Iterator<Item = (U, V)> + 's {
            a.iter().copied().zip(b.iter().copied())
        }
        match self {
            Codes::Unsigned(a) => {
                out.iter_mut().zip(&a[range.clone()]).for_each(|(o, &v)| *o = cast(v as i16));
                a[range].iter().map(|&v| v as i64).sum()
            }
            Codes::Signed(a) => {
                out.iter_mut().zip(&a[range.clone()]).for_each(|(o, &v)| *o = cast(v as i16));
                a[range].iter().map(|&v| v as i64).sum()
            }
            Codes::UnsignedSum(a, b) => {
                let (a, b) = (&a[range.clone()], &b[range]);
                out.iter_mut().zip(pairs(a, b)).for_each(|(o, (u, v))| *o = cast(u as i16 + v as i16));
                pairs(a, b).map(|(u, v)| u as i64 + v as i64).sum()
            }
            Codes::SignedSum(a, b) => {
                let (a, b) = (&a[range.clone()], &b[range]);
                out.iter_mut().zip(pairs(a, b)).for_each(|(o, (u, v))| *o = cast(u as i16 + v as i16));
                pairs(a, b).map(|(u, v)| u as i64 + v as i64).sum()
            }
            Codes::SignedDiff(a, b) => {
                let (a, b) = (&a[range.clone()], &b[range]);
                out.iter_mut().zip(pairs(a, b)).for_each(|(o, (u, v))| *o = cast(v as i16 - u as i16));
                pairs(a, b).map(|(u, v)| v as i64 - u as i64).sum()
            }
        }
    }
}

/// Writes `rows` rows of `k` codes into `buf` (row stride `kp`) and returns
/// their sums.
fn fill<T: Send>(buf: &mut [T], rows: usize, k: usize, kp: usize, codes: Codes<'_>, cast: impl Fn(i16) -> T + Sync + Copy) -> Vec<i64> {
    buf.par_chunks_mut(kp)
        .take(rows)
        .enumerate()
        .map(|(r, row)| codes.write_row(r, k, &mut row[..k], cast))
        .collect()
}

/// Writes `rows` rows of `k` byte codes in the VNNI column-block layout:
/// blocks of `VNNI_COLS` rows, and within a block, for each group of four
/// codes `q`, the four codes of each of its rows side by side — byte
/// `(q·VNNI_COLS + row)·4 + k % 4` — so that one 64-byte load holds four codes
/// of 16 rows. Returns the row sums.
fn fill_column_blocks(buf: &mut [u8], rows: usize, k: usize, kp: usize, codes: Codes<'_>) -> Vec<i64> {
    let block = VNNI_COLS * kp;
    let sums: Vec<Vec<i64>> = buf
        .par_chunks_mut(block)
        .enumerate()
        .map(|(jb, dst)| {
            let mut row = vec![0u8; k];
            (jb * VNNI_COLS..((jb + 1) * VNNI_COLS).min(rows))
                .map(|r| {
                    let sum = codes.write_row(r, k, &mut row, |v| v as u8);
                    let lane = r % VNNI_COLS;
                    for (q, quad) in row.chunks(4).enumerate() {
                        dst[(q * VNNI_COLS + lane) * 4..][..quad.len()].copy_from_slice(quad);
                    }
                    sum
                })
                .collect()
        })
        .collect();
    sums.concat()
}

/// One bilinear term `Σ_k (a[m,k] − za)(b[n,k] − zb[n])`, added to the real
/// and imaginary parts of the result with the factors `signs`.
struct Term<'a> {
    a: &'a Panel,
    b: &'a Panel,
    za: i32,
    zb: &'a [i32],
    signs: [i64; 2],
}

impl Term<'_> {
    fn has_zero_points(&self) -> bool {
        self.za != 0 || self.zb.iter().any(|&z| z != 0)
    }
}

/// Computes every output block as the sum of its terms, exactly in
/// integers, and writes `sx·sw[n]·value` (one rounding) into `out`
/// (`parts` = 1: real `m×n`; 2: interleaved complex). One pass, no
/// intermediate `m×n` buffer.
fn evaluate(kernel: Kernel, terms: &[Term<'_>], parts: usize, x_scale: f32, w_scale: &[f32], out: &mut [f32]) {
    let (m, n) = (terms[0].a.rows, terms[0].b.rows);
    if m == 0 || n == 0 {
        return;
    }
    let kp = terms[0].a.kp;
    let (_, _, step) = kernel.layout();
    let per_product = terms.iter().map(|t| t.a.max.max(1) as i64 * t.b.max.max(1) as i64).max().unwrap_or(1);
    // Longest k-range whose i32 block sums cannot overflow.
    let chunk = ((i32::MAX as i64 / per_product) as usize / step * step).max(step);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => blocked::<VNNI_ROWS, VNNI_COLS>(terms, parts, kp, chunk, x_scale, w_scale, out, |t, i, j, k0, len, block| unsafe {
            let b = t.b.bytes.as_ptr().add(j * kp + k0 * VNNI_COLS) as *const i8;
            avx512::block_vnni(t.a.bytes.as_ptr().add(i * kp + k0), b, kp, len, block)
        }),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Bytes => blocked::<AVX2_R, AVX2_R>(terms, parts, kp, chunk, x_scale, w_scale, out, |t, i, j, k0, len, block| unsafe {
            let steps = (i16::MAX as i64 / (2 * t.a.max.max(1) as i64 * t.b.max.max(1) as i64)).max(1) as usize;
            let b = t.b.bytes.as_ptr() as *const i8;
            avx2::block_narrow(t.a.bytes.as_ptr().add(i * kp + k0), b.add(j * kp + k0), kp, len, steps, block)
        }),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Words => blocked::<AVX2_R, AVX2_R>(terms, parts, kp, chunk, x_scale, w_scale, out, |t, i, j, k0, len, block| unsafe {
            avx2::block_wide(t.a.words.as_ptr().add(i * kp + k0), t.b.words.as_ptr().add(j * kp + k0), kp, len, block)
        }),
        _ => blocked::<1, 1>(terms, parts, kp, chunk, x_scale, w_scale, out, |t, i, j, k0, len, block| {
            let (a, b) = (&t.a.words[i * kp + k0..][..len], &t.b.words[j * kp + k0..][..len]);
            block[0][0] = a.iter().zip(b).map(|(&u, &v)| u as i32 * v as i32).sum();
        }),
    }
}

/// Rows of `b` per panel: a panel of `NC` rows of k codes stays in each
/// core's L2 cache while every row block of `a` streams past it.
const NC: usize = 64;

/// The blocked loop of [`evaluate`] for R×C kernel blocks: panels of `b`
/// one after the other, row blocks of `a` in parallel; `kernel(term, i, j,
/// k0, len, block)` fills the raw i32 sums of one block over `k0..k0+len`.
#[allow(clippy::too_many_arguments)]
fn blocked<const R: usize, const C: usize>(
    terms: &[Term<'_>],
    parts: usize,
    kp: usize,
    chunk: usize,
    x_scale: f32,
    w_scale: &[f32],
    out: &mut [f32],
    kernel: impl Fn(&Term<'_>, usize, usize, usize, usize, &mut [[i32; C]; R]) + Sync,
) {
    let (m, n, k) = (terms[0].a.rows, terms[0].b.rows, terms[0].a.k);
    let np = n.div_ceil(C) * C;
    let panel_rows = (NC / C).max(1) * C;
    let zero_points: Vec<bool> = terms.iter().map(Term::has_zero_points).collect();
    for panel in (0..np).step_by(panel_rows) {
        out.par_chunks_mut(R * n * parts).enumerate().for_each(|(bi, rows)| {
            let i = bi * R;
            let mut block = [[0i32; C]; R];
            for j in (panel..(panel + panel_rows).min(np)).step_by(C) {
                let mut acc = [[[0i64; C]; R]; 2];
                for (term, &corrected) in terms.iter().zip(&zero_points) {
                    let mut sums = [[0i64; C]; R];
                    for k0 in (0..kp).step_by(chunk) {
                        kernel(term, i, j, k0, chunk.min(kp - k0), &mut block);
                        for r in 0..R {
                            for c in 0..C {
                                sums[r][c] += block[r][c] as i64;
                            }
                        }
                    }
                    if corrected {
                        let za = term.za as i64;
                        for r in 0..R.min(m.saturating_sub(i)) {
                            for c in 0..C.min(n.saturating_sub(j)) {
                                let zb = term.zb[j + c] as i64;
                                sums[r][c] += k as i64 * za * zb - zb * term.a.sums[i + r] - za * term.b.sums[j + c];
                            }
                        }
                    }
                    for (part, &sign) in term.signs.iter().enumerate() {
                        for r in 0..R {
                            for c in 0..C {
                                acc[part][r][c] += sign * sums[r][c];
                            }
                        }
                    }
                }
                for r in 0..R.min(m - i) {
                    for c in 0..C.min(n - j) {
                        for (part, values) in acc.iter().enumerate().take(parts) {
                            rows[(r * n + j + c) * parts + part] = rescale(values[r][c], x_scale, w_scale[j + c]);
                        }
                    }
                }
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{VNNI_COLS as C, VNNI_ROWS as R};
    use std::arch::x86_64::*;

    /// An R×C block: rows of `a` (u8, row stride `kp`) times the column
    /// block `b` (i8, [`super::fill_column_blocks`] layout) over `len` codes.
    /// Each step broadcasts four codes of a row of `a` and `vpdpbusd`s them
    /// against four codes of 16 columns, so the lanes are output columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn block_vnni(a: *const u8, b: *const i8, kp: usize, len: usize, out: &mut [[i32; C]; R]) {
        const V: usize = C / 16;
        let mut acc = [[_mm512_setzero_si512(); V]; R];
        for q in 0..len / 4 {
            let mut bv = [_mm512_setzero_si512(); V];
            for v in 0..V {
                bv[v] = _mm512_loadu_si512(b.add(q * C * 4 + v * 64) as *const _);
            }
            for r in 0..R {
                let quad = _mm512_set1_epi32((a.add(r * kp + q * 4) as *const i32).read_unaligned());
                for v in 0..V {
                    acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], quad, bv[v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..V {
                _mm512_storeu_si512(out[r].as_mut_ptr().add(16 * v) as *mut _, acc[r][v]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::AVX2_R as MR;
    use super::AVX2_R as NR;
    const KB: usize = 32;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// One 32-byte vector from each of `N` rows `stride` bytes apart.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_rows<const N: usize>(first: *const u8, stride: usize) -> [__m256i; N] {
        let mut rows = [_mm256_setzero_si256(); N];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = _mm256_loadu_si256(first.add(r * stride) as *const __m256i);
        }
        rows
    }

    /// MR×NR dot products of u8 rows `a` with i8 rows `b` (row stride `kp`)
    /// over `len` codes: `vpmaddubsw` into i16 for `steps` vector steps, then
    /// widened to i32.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_narrow(a: *const u8, b: *const i8, kp: usize, len: usize, steps: usize, out: &mut [[i32; NR]; MR]) {
        let ones = _mm256_set1_epi16(1);
        let mut acc32 = [[_mm256_setzero_si256(); NR]; MR];
        let mut k = 0;
        while k < len {
            let end = (k + steps * KB).min(len);
            let mut acc16 = [[_mm256_setzero_si256(); NR]; MR];
            while k < end {
                let av = load_rows::<MR>(a.add(k), kp);
                let bv = load_rows::<NR>(b.add(k) as *const u8, kp);
                for r in 0..MR {
                    for c in 0..NR {
                        acc16[r][c] = _mm256_add_epi16(acc16[r][c], _mm256_maddubs_epi16(av[r], bv[c]));
                    }
                }
                k += KB;
            }
            for r in 0..MR {
                for c in 0..NR {
                    acc32[r][c] = _mm256_add_epi32(acc32[r][c], _mm256_madd_epi16(acc16[r][c], ones));
                }
            }
        }
        for r in 0..MR {
            for c in 0..NR {
                out[r][c] = hsum_epi32(acc32[r][c]);
            }
        }
    }

    /// MR×NR dot products of i16 rows (row stride `kp`) over `len` codes
    /// with `vpmaddwd`, exact for codes of up to 9 bits: 16 codes a step.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_wide(a: *const i16, b: *const i16, kp: usize, len: usize, out: &mut [[i32; NR]; MR]) {
        let mut acc = [[_mm256_setzero_si256(); NR]; MR];
        for k in (0..len).step_by(16) {
            let av = load_rows::<MR>(a.add(k) as *const u8, 2 * kp);
            let bv = load_rows::<NR>(b.add(k) as *const u8, 2 * kp);
            for r in 0..MR {
                for c in 0..NR {
                    acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(av[r], bv[c]));
                }
            }
        }
        for r in 0..MR {
            for c in 0..NR {
                out[r][c] = hsum_epi32(acc[r][c]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dequantize-then-matmul, exactly: i64 sums of centred codes, one rounding.
    fn reference(m: usize, n: usize, k: usize, x: &Activations<'_>, w: &Weights<'_>) -> Vec<f32> {
        let dot = |xa: &[u8], wa: &[i8], i: usize, j: usize| -> i64 {
            (0..k).map(|l| (xa[i * k + l] as i64 - x.zero_point as i64) * (wa[j * k + l] as i64 - w.zero_point[j] as i64)).sum()
        };
        let mut out = Vec::new();
        for i in 0..m {
            for j in 0..n {
                match (x.im, w.im) {
                    (Some(xi), Some(wi)) => {
                        let re = dot(x.re, w.re, i, j) - dot(xi, wi, i, j);
                        let im = dot(x.re, wi, i, j) + dot(xi, w.re, i, j);
                        out.push(rescale(re, x.scale, w.scale[j]));
                        out.push(rescale(im, x.scale, w.scale[j]));
                    }
                    _ => out.push(rescale(dot(x.re, w.re, i, j), x.scale, w.scale[j])),
                }
            }
        }
        out
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn codes(count: usize, bits: u32, signed: bool, rng: &mut Lcg, extreme: bool) -> Vec<i32> {
        let (lo, hi) = if signed { (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1) } else { (0, (1i64 << bits) - 1) };
        (0..count)
            .map(|_| {
                if extreme {
                    // the worst case for saturation: the largest magnitudes
                    (if signed { lo } else { hi }) as i32
                } else {
                    (lo + (rng.next() as i64 % (hi - lo + 1))) as i32
                }
            })
            .collect()
    }

    fn check(m: usize, n: usize, k: usize, x_bits: u32, w_bits: u32, complex: bool, extreme: bool, seed: u64) {
        let mut rng = Lcg(seed);
        let xr: Vec<u8> = codes(m * k, x_bits, false, &mut rng, extreme).iter().map(|&v| v as u8).collect();
        let xi: Vec<u8> = codes(m * k, x_bits, false, &mut rng, extreme).iter().map(|&v| v as u8).collect();
        let wr: Vec<i8> = codes(n * k, w_bits, true, &mut rng, extreme).iter().map(|&v| v as i8).collect();
        let wi: Vec<i8> = codes(n * k, w_bits, true, &mut rng, extreme).iter().map(|&v| v as i8).collect();
        let scale: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 0.003).collect();
        let zero_point: Vec<i32> = (0..n).map(|j| if extreme { 0 } else { j as i32 % 3 - 1 }).collect();
        let x = Activations { re: &xr, im: complex.then_some(&xi[..]), bits: x_bits, scale: 0.05, zero_point: if extreme { 0 } else { 3 } };
        let w = Weights { re: &wr, im: complex.then_some(&wi[..]), bits: w_bits, scale: &scale, zero_point: &zero_point };
        let want = reference(m, n, k, &x, &w);
        for features in feature_sets() {
            let mut out = vec![f32::NAN; m * n * if complex { 2 } else { 1 }];
            if complex {
                complex_product(m, n, k, &x, &w, &mut out, features).unwrap();
            } else {
                real_product(m, n, k, &x, &w, &mut out, features).unwrap();
            }
            for (index, (g, e)) in out.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "x{x_bits} w{w_bits} complex={complex} extreme={extreme} {features:?} at {index}: {g} vs {e}");
            }
        }
    }

    /// The detected CPU and every poorer one it can stand in for, so that
    /// each kernel (VNNI, AVX2 bytes, AVX2 words, scalar) runs where it can.
    fn feature_sets() -> Vec<CpuFeatures> {
        let best = CpuFeatures::detect();
        let mut sets = vec![best];
        if best.avx512_vnni {
            sets.push(CpuFeatures { avx512_vnni: false, ..best });
        }
        if best.avx2 {
            sets.push(CpuFeatures { avx2: false, fma: false, avx512_vnni: false });
        }
        sets
    }

    #[test]
    fn kernel_choice_follows_the_saturation_bound() {
        let avx2 = CpuFeatures { avx2: true, fma: true, avx512_vnni: false };
        assert_eq!(Kernel::choose(63, 8, avx2), Kernel::Avx2Bytes);
        assert_eq!(Kernel::choose(127, 128, avx2), Kernel::Avx2Bytes); // 2·127·128 = 32512
        assert_eq!(Kernel::choose(255, 128, avx2), Kernel::Avx2Words); // 65280 would saturate
        let vnni = CpuFeatures { avx512_vnni: true, ..avx2 };
        assert_eq!(Kernel::choose(255, 128, vnni), Kernel::Vnni);
        assert_eq!(Kernel::choose(510, 128, vnni), Kernel::Avx2Words);
        let none = CpuFeatures { avx2: false, fma: false, avx512_vnni: false };
        assert_eq!(Kernel::choose(63, 8, none), Kernel::Scalar);
    }

    #[test]
    fn every_width_pair_equals_dequantize_then_matmul_exactly() {
        for x_bits in 1..=8 {
            for w_bits in 1..=8 {
                for complex in [false, true] {
                    for extreme in [false, true] {
                        check(5, 4, 71, x_bits, w_bits, complex, extreme, (x_bits * 10 + w_bits) as u64);
                    }
                }
            }
        }
    }

    #[test]
    fn large_shapes_and_long_sums_stay_exact() {
        check(37, 29, 1000, 6, 4, true, true, 1); // Gauss path, many i16 widenings
        check(7, 5, 513, 8, 8, true, true, 2); // 4-multiplication, wide path
        check(2, 2, 70_000, 8, 8, false, true, 3); // k past one i32 chunk
    }

    #[test]
    fn unpacks_signed_nibbles_low_first() {
        let mut out = [0i8; 3];
        unpack_int4(&[0x7f, 0x08], &mut out).unwrap();
        assert_eq!(out, [-1, 7, -8]);
        let mut out = [0i8; 2];
        unpack_int4(&[0x21], &mut out).unwrap();
        assert_eq!(out, [1, 2]);
        assert!(unpack_int4(&[0x21], &mut [0i8; 3]).is_err());
    }

    #[test]
    fn rejects_codes_outside_their_width_and_bad_scales() {
        let w = Weights { re: &[8, 0], im: None, bits: 4, scale: &[1.0], zero_point: &[0] };
        let x = Activations { re: &[1, 2], im: None, bits: 4, scale: 1.0, zero_point: 0 };
        let err = quantized_matmul(1, 1, 2, &x, &w, &mut [0.0]).unwrap_err();
        assert!(err.to_string().contains("weight code 8 is outside 4 bits"), "{err}");
        let x = Activations { re: &[16, 2], ..x };
        let w = Weights { re: &[1, 0], ..w };
        let err = quantized_matmul(1, 1, 2, &x, &w, &mut [0.0]).unwrap_err();
        assert!(err.to_string().contains("activation code 16 exceeds 4 bits"), "{err}");
        let x = Activations { re: &[1, 2], scale: 0.0, ..x };
        assert!(quantized_matmul(1, 1, 2, &x, &w, &mut [0.0]).is_err());
    }
}
