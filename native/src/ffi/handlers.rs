//! The `extern "C"` entry points XLA calls, one per kernel.

use gemm::{c32, c64};
use rayon::prelude::*;

use super::api::{dtype, XLA_FFI_CallFrame, XLA_FFI_Error};
use super::{dispatch, dtype_name, Buffer, Call};
use crate::conv::Conv2d;
use crate::error::{checked_product, KernelError};
use crate::gemm::{batched_matmul, split_matrix_shape, Element, MatmulShape, Op};
use crate::noise::standard_normal_per_seed;
use crate::quant::{quantized_matmul, quantized_matmul_complex, unpack_int4, Activations, Weights};
use crate::softmax::{causal_softmax_backward, causal_softmax_forward, CausalShape};

/// Splits a buffer of rank ≥ 2 into (batch axes, rows, cols).
fn matrix_dims(buffer: &Buffer<'_>, name: &str) -> Result<(Vec<usize>, usize, usize), KernelError> {
    let shape = buffer.shape()?;
    let (batch, rows, cols) = split_matrix_shape(&shape).ok_or_else(|| {
        KernelError::Shape(format!("{name} must have rank ≥ 2 (…, rows, cols), got shape {shape:?}"))
    })?;
    Ok((batch.to_vec(), rows, cols))
}

fn run_matmul<T: Element>(a: &Buffer<'_>, b: &Buffer<'_>, c: &Buffer<'_>, shape: &MatmulShape) -> Result<(), KernelError> {
    // SAFETY: the dtypes were checked to be those of T, and XLA owns the
    // buffers for the call; the result does not alias the arguments.
    unsafe { batched_matmul::<T>(a.as_slice()?, b.as_slice()?, c.as_mut_slice()?, shape) }
}

fn matmul(call: &Call<'_>) -> Result<(), KernelError> {
    let (a, b, c) = (call.arg(0)?, call.arg(1)?, call.ret(0)?);
    for (buffer, name) in [(&b, "B"), (&c, "the result")] {
        if buffer.dtype != a.dtype {
            return Err(KernelError::Dtype(format!(
                "A has dtype {} but {name} has dtype {}: operands must share one dtype",
                dtype_name(a.dtype),
                dtype_name(buffer.dtype)
            )));
        }
    }
    let op = |name: &str| -> Result<Op, KernelError> {
        let code = call.attr_i64(name)?;
        Op::from_code(code).ok_or_else(|| {
            KernelError::Value(format!("{name} must be 0 (identity), 1 (transpose) or 2 (adjoint), got {code}"))
        })
    };
    let (op_a, op_b) = (op("op_a")?, op("op_b")?);
    let (batch_a, ra, ca) = matrix_dims(&a, "A")?;
    let (batch_b, rb, cb) = matrix_dims(&b, "B")?;
    let (batch, m, n) = matrix_dims(&c, "the result")?;
    let (am, ak) = if op_a == Op::Identity { (ra, ca) } else { (ca, ra) };
    let (bk, bn) = if op_b == Op::Identity { (rb, cb) } else { (cb, rb) };
    if ak != bk {
        return Err(KernelError::Shape(format!(
            "inner dimensions differ: op(A) is {am}×{ak} and op(B) is {bk}×{bn} (A {:?}, B {:?})",
            a.dims, b.dims
        )));
    }
    if (am, bn) != (m, n) {
        return Err(KernelError::Shape(format!(
            "the result is {m}×{n} but op(A)·op(B) is {am}×{bn}"
        )));
    }
    let shape = MatmulShape::broadcast(&batch, &batch_a, &batch_b, m, ak, n, op_a, op_b)?;
    match a.dtype {
        dtype::F32 => run_matmul::<f32>(&a, &b, &c, &shape),
        dtype::F64 => run_matmul::<f64>(&a, &b, &c, &shape),
        dtype::C64 => run_matmul::<c32>(&a, &b, &c, &shape),
        dtype::C128 => run_matmul::<c64>(&a, &b, &c, &shape),
        other => Err(KernelError::Dtype(format!(
            "matmul takes float32, float64, complex64 or complex128, got {}",
            dtype_name(other)
        ))),
    }
}

/// `lumijax_matmul`: `C = op(A)·op(B)`, batched, with integer attributes
/// `op_a` and `op_b` (0 identity, 1 transpose, 2 conjugate transpose).
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_matmul(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, matmul)
}

/// The convolution of a call: the NHWC `image` buffer (the input or its
/// gradient) and the integer attributes `kernel_h`, `kernel_w`, `stride_h`,
/// `stride_w`, `pad_top`, `pad_bottom`, `pad_left`, `pad_right`; with the
/// output channels, read from `out` `(N, H', W', cout)`, whose shape is
/// checked against the geometry.
fn conv_geometry(call: &Call<'_>, image: &Buffer<'_>, out: &Buffer<'_>) -> Result<(Conv2d, usize), KernelError> {
    let attr = |name: &str| -> Result<usize, KernelError> {
        let v = call.attr_i64(name)?;
        usize::try_from(v).map_err(|_| KernelError::Value(format!("{name} must be ≥ 0, got {v}")))
    };
    let input: [usize; 4] = image.shape()?.try_into().map_err(|_| {
        KernelError::Shape(format!("images must be NHWC (4 axes), got shape {:?}", image.dims))
    })?;
    let conv = Conv2d::new(
        input,
        [attr("kernel_h")?, attr("kernel_w")?],
        [attr("stride_h")?, attr("stride_w")?],
        [[attr("pad_top")?, attr("pad_bottom")?], [attr("pad_left")?, attr("pad_right")?]],
    )?;
    let out_shape = out.shape()?;
    match out_shape.as_slice() {
        &[n, oh, ow, cout] if [n, oh, ow] == [input[0], conv.out_hw[0], conv.out_hw[1]] => Ok((conv, cout)),
        _ => Err(KernelError::Shape(format!(
            "the output must be ({}, {}, {}, cout), got {out_shape:?}",
            input[0], conv.out_hw[0], conv.out_hw[1]
        ))),
    }
}

/// Fails unless every buffer is f32 and none aliases another.
fn expect_distinct_f32(buffers: &[(&Buffer<'_>, &str)]) -> Result<(), KernelError> {
    for (i, (buffer, name)) in buffers.iter().enumerate() {
        buffer.expect_dtype(dtype::F32, &format!("float32 ({name})"))?;
        if buffers[..i].iter().any(|(other, _)| other.aliases(buffer)) {
            return Err(KernelError::Shape(format!("{name} aliases another operand")));
        }
    }
    Ok(())
}

fn conv2d(call: &Call<'_>) -> Result<(), KernelError> {
    let (x, kernel, y) = (call.arg(0)?, call.arg(1)?, call.ret(0)?);
    expect_distinct_f32(&[(&x, "x"), (&kernel, "the kernel"), (&y, "y")])?;
    let (conv, cout) = conv_geometry(call, &x, &y)?;
    // SAFETY: f32 buffers owned by XLA for the call, the result aliasing none.
    unsafe { conv.forward(x.as_slice()?, kernel.as_slice()?, cout, y.as_mut_slice()?) }
}

fn conv2d_backward(call: &Call<'_>) -> Result<(), KernelError> {
    let (x, kernel, dy, dx, dk) = (call.arg(0)?, call.arg(1)?, call.arg(2)?, call.ret(0)?, call.ret(1)?);
    expect_distinct_f32(&[(&x, "x"), (&kernel, "the kernel"), (&dy, "dy"), (&dx, "dx"), (&dk, "dk")])?;
    same_shape(&x, &dx, ("x", "dx"))?;
    same_shape(&kernel, &dk, ("the kernel", "dk"))?;
    let (conv, cout) = conv_geometry(call, &x, &dy)?;
    // SAFETY: as `conv2d`.
    unsafe {
        conv.backward_input(dy.as_slice()?, kernel.as_slice()?, cout, dx.as_mut_slice()?)?;
        conv.backward_kernel(x.as_slice()?, dy.as_slice()?, cout, dk.as_mut_slice()?)
    }
}

/// `lumijax_conv2d`: `y = conv(x, kernel)` for NHWC f32 images `x` and a
/// kernel `(kh·kw·C, cout)` in patch order; attributes as [`conv_geometry`].
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_conv2d(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, conv2d)
}

/// `lumijax_conv2d_backward`: `(dx, dk)` from `(x, kernel, dy)`, one after
/// the other on all threads; attributes as the forward.
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_conv2d_backward(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, conv2d_backward)
}

/// Reads `(…, T, S)` f32 rows, the `scale` and `offset` attributes.
fn causal_shape(call: &Call<'_>, x: &Buffer<'_>) -> Result<(CausalShape, f32), KernelError> {
    x.expect_dtype(dtype::F32, "float32")?;
    let (batch, queries, keys) = matrix_dims(x, "x")?;
    let outer = checked_product(&batch, "x")?;
    let scale = call.attr_f64("scale")? as f32;
    let offset = call.attr_i64("offset")?;
    let offset = usize::try_from(offset)
        .map_err(|_| KernelError::Value(format!("offset must be ≥ 0, got {offset}")))?;
    Ok((CausalShape { outer, queries, keys, offset }, scale))
}

fn same_shape(a: &Buffer<'_>, b: &Buffer<'_>, names: (&str, &str)) -> Result<(), KernelError> {
    if a.dims != b.dims || a.dtype != b.dtype {
        return Err(KernelError::Shape(format!(
            "{} is {:?} {} but {} is {:?} {}",
            names.0, a.dims, dtype_name(a.dtype), names.1, b.dims, dtype_name(b.dtype)
        )));
    }
    Ok(())
}

fn softmax_forward(call: &Call<'_>) -> Result<(), KernelError> {
    let (x, out) = (call.arg(0)?, call.ret(0)?);
    let (shape, scale) = causal_shape(call, &x)?;
    same_shape(&x, &out, ("x", "the result"))?;
    // SAFETY: f32 buffers owned by XLA for the call; when XLA aliases the
    // result to x (in place) only the result is borrowed.
    unsafe {
        let x = if x.aliases(&out) { None } else { Some(x.as_slice()?) };
        causal_softmax_forward(x, out.as_mut_slice()?, &shape, scale)
    }
}

fn softmax_backward(call: &Call<'_>) -> Result<(), KernelError> {
    let (p, dp, dx) = (call.arg(0)?, call.arg(1)?, call.ret(0)?);
    let (shape, scale) = causal_shape(call, &p)?;
    same_shape(&p, &dp, ("p", "dp"))?;
    same_shape(&p, &dx, ("p", "the result"))?;
    if p.aliases(&dx) {
        return Err(KernelError::Shape("the result must not alias p".into()));
    }
    // SAFETY: as the forward; the result may alias dp only.
    unsafe {
        let dp = if dp.aliases(&dx) { None } else { Some(dp.as_slice()?) };
        causal_softmax_backward(p.as_slice()?, dp, dx.as_mut_slice()?, &shape, scale)
    }
}

/// `lumijax_causal_softmax`: `softmax(scale·x + causal mask)` over the last
/// axis of `(…, T, S)` f32; attributes `scale` (float) and `offset` (int).
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_causal_softmax(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, softmax_forward)
}

/// `lumijax_causal_softmax_bwd`: `dx = scale·p ⊙ (dp − Σ dp ⊙ p)` from
/// `(p, dp)`; attributes as the forward.
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_causal_softmax_bwd(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, softmax_backward)
}

fn quantized(call: &Call<'_>) -> Result<(), KernelError> {
    let (x_codes, w_codes, x_scale, w_scale, w_zero) = (call.arg(0)?, call.arg(1)?, call.arg(2)?, call.arg(3)?, call.arg(4)?);
    let out = call.ret(0)?;
    x_codes.expect_dtype(dtype::U8, "uint8 activation codes")?;
    x_scale.expect_dtype(dtype::F32, "float32")?;
    w_scale.expect_dtype(dtype::F32, "float32")?;
    w_zero.expect_dtype(dtype::S32, "int32")?;
    let packed = call.attr_i64("packed")? != 0;
    w_codes.expect_dtype(if packed { dtype::U8 } else { dtype::S8 }, if packed { "uint8 (packed 4-bit)" } else { "int8" })?;
    let bits = |name: &str| -> Result<u32, KernelError> {
        let v = call.attr_i64(name)?;
        u32::try_from(v).ok().filter(|b| (1..=8).contains(b)).ok_or_else(|| KernelError::Value(format!("{name} must be 1..=8, got {v}")))
    };
    let (x_bits, w_bits) = (bits("x_bits")?, bits("w_bits")?);
    if packed && w_bits > 4 {
        return Err(KernelError::Value(format!("packed weights hold 4-bit codes, got w_bits = {w_bits}")));
    }
    let x_zero = i32::try_from(call.attr_i64("x_zero_point")?).map_err(|_| KernelError::Value("x_zero_point out of range".into()))?;
    let xs = x_codes.shape()?;
    let ws = w_codes.shape()?;
    if xs.len() != 3 || ws.len() != 3 || !(1..=2).contains(&xs[0]) || ws[0] != xs[0] {
        return Err(KernelError::Shape(format!(
            "codes must be (parts, rows, k) with parts 1 (real) or 2 (complex) for both operands, got {xs:?} and {ws:?}"
        )));
    }
    let (parts, m, k) = (xs[0], xs[1], xs[2]);
    let n = ws[1];
    let stored_k = if packed { k.div_ceil(2) } else { k };
    if ws[2] != stored_k {
        return Err(KernelError::Shape(format!("weights hold {} codes a row, the activations need {stored_k}", ws[2])));
    }
    if w_scale.shape()? != [n] || w_zero.shape()? != [n] || !x_scale.shape()?.is_empty() {
        return Err(KernelError::Shape(format!("w_scale and w_zero_point must be ({n},) and x_scale a scalar")));
    }
    let want_out: &[usize] = &[m, n];
    let out_dtype = if parts == 2 { dtype::C64 } else { dtype::F32 };
    out.expect_dtype(out_dtype, if parts == 2 { "complex64" } else { "float32" })?;
    if out.shape()? != want_out {
        return Err(KernelError::Shape(format!("the result must be ({m}, {n}), got {:?}", out.dims)));
    }
    // SAFETY: dtypes checked above; XLA owns the buffers for the call.
    let (xc, wc, sx, sw, zw) = unsafe {
        (x_codes.as_slice::<u8>()?, w_codes.as_slice::<u8>()?, x_scale.as_slice::<f32>()?, w_scale.as_slice::<f32>()?, w_zero.as_slice::<i32>()?)
    };
    // The result as f32 values: (re, im) pairs when complex.
    let y: &mut [f32] = unsafe {
        if parts == 2 {
            let pairs = out.as_mut_slice::<c32>()?;
            std::slice::from_raw_parts_mut(pairs.as_mut_ptr() as *mut f32, 2 * pairs.len())
        } else {
            out.as_mut_slice::<f32>()?
        }
    };
    let unpacked: Vec<i8>;
    let weights: &[i8] = if packed {
        let mut codes = vec![0i8; parts * n * k];
        codes
            .par_chunks_mut(k.max(1))
            .zip(wc.par_chunks(stored_k.max(1)))
            .try_for_each(|(row, bytes)| unpack_int4(bytes, row))?;
        unpacked = codes;
        &unpacked
    } else {
        // SAFETY: int8 and uint8 have the same size and alignment.
        unsafe { std::slice::from_raw_parts(wc.as_ptr() as *const i8, wc.len()) }
    };
    let x = Activations { re: &xc[..m * k], im: (parts == 2).then(|| &xc[m * k..]), bits: x_bits, scale: sx[0], zero_point: x_zero };
    let (w_re, w_im) = weights.split_at(n * k);
    let w = Weights { re: w_re, im: (parts == 2).then_some(w_im), bits: w_bits, scale: sw, zero_point: zw };
    if parts == 2 {
        quantized_matmul_complex(m, n, k, &x, &w, y)
    } else {
        quantized_matmul(m, n, k, &x, &w, y)
    }
}

/// `lumijax_quantized_matmul`: exact integer product of activation codes
/// `(parts, m, k)` u8 and weight codes `(parts, n, k)` i8 (or packed 4-bit
/// `(parts, n, ⌈k/2⌉)` u8), args `x_scale` (f32 scalar), `w_scale` (n f32),
/// `w_zero_point` (n i32); attributes `x_bits`, `w_bits`, `x_zero_point`,
/// `packed`. The result is `(m, n)` f32, or complex64 when `parts` = 2.
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_quantized_matmul(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, quantized)
}

fn noise(call: &Call<'_>) -> Result<(), KernelError> {
    let (keys, out) = (call.arg(0)?, call.ret(0)?);
    keys.expect_dtype(dtype::U32, "uint32 key data")?;
    let key_shape = keys.shape()?;
    let out_shape = out.shape()?;
    let batch = key_shape.len().checked_sub(1).filter(|_| key_shape.last() == Some(&2)).ok_or_else(|| {
        KernelError::Shape(format!("keys must be (…, 2) uint32 key data, got shape {key_shape:?}"))
    })?;
    if out_shape.len() < batch || out_shape[..batch] != key_shape[..batch] {
        return Err(KernelError::Shape(format!(
            "the draws {out_shape:?} must lead with the keys' batch axes {:?}",
            &key_shape[..batch]
        )));
    }
    // SAFETY: uint32 checked above; XLA owns the buffers for the call.
    let words = unsafe { keys.as_slice::<u32>()? };
    let seeds: Vec<u64> = words.chunks_exact(2).map(|k| (u64::from(k[0]) << 32) | u64::from(k[1])).collect();
    match out.dtype {
        // SAFETY: the dtype was matched; the result aliases no argument.
        dtype::F32 => standard_normal_per_seed(&seeds, unsafe { out.as_mut_slice::<f32>()? }),
        dtype::F64 => standard_normal_per_seed(&seeds, unsafe { out.as_mut_slice::<f64>()? }),
        other => {
            return Err(KernelError::Dtype(format!("noise is float32 or float64, got {}", dtype_name(other))))
        }
    }
    Ok(())
}

/// `lumijax_standard_normal`: independent `N(0, 1)` draws, float32 or
/// float64, from uint32 key data `(…, 2)`: the result's leading axes are
/// the keys' batch axes, and each key fills its part (see
/// [`crate::noise::standard_normal`]).
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_standard_normal(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, noise)
}
