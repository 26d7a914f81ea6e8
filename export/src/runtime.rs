//! Runs a validated graph (FORMAT.md §6.1) on the native kernels.
//!
//! Products go through `lumijax_native`'s GEMM, attention through its fused
//! causal softmax. Weights are read in place from the memory-mapped file
//! when stored as f32, and dequantized once when stored as codes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use lumijax_native::softmax::{causal_softmax_forward, CausalShape};
use rayon::prelude::*;

use crate::error::RunError;
use crate::graph::{Core, Op, Step};
use crate::model::Model;
pub use crate::photonic::Mode;
use crate::photonic::{self, gemm, gemm_on_this_thread, Programmed};
use crate::scratch::with_scratch;
use crate::tensor::Dtype;
use crate::winograd;

/// A dense C-order array, an input or output of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I32 { shape: Vec<usize>, data: Vec<i32> },
}

impl Array {
    pub fn shape(&self) -> &[usize] {
        match self {
            Array::F32 { shape, .. } | Array::I32 { shape, .. } => shape,
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Array::F32 { .. } => Dtype::F32,
            Array::I32 { .. } => Dtype::I32,
        }
    }

    fn len(&self) -> usize {
        match self {
            Array::F32 { data, .. } => data.len(),
            Array::I32 { data, .. } => data.len(),
        }
    }
}

/// A model ready to run: weights dequantized and transposed to `(in, out)`
/// once (the GEMM reads them with unit stride), or for 3×3 stride-1
/// convolutions taken to the Winograd domain (16/9 of the weight's size),
/// and programmed onto their banks on the first run in a hardware mode.
pub struct Runtime {
    model: Arc<Model>,
    kernels: HashMap<String, Vec<f32>>,
    /// Filters of the 3×3 stride-1 convolutions in the Winograd domain.
    winograd: HashMap<String, winograd::Filter>,
    programmed: Vec<OnceLock<Result<Programmed, String>>>,
    last_use: Vec<usize>,
}

/// The noise stream of product `product` of node `node` on slice `group`
/// (FORMAT.md §7.3).
fn stream(node: usize, product: u64, group: usize) -> u64 {
    ((node as u64) << 24) | (product << 23) | group as u64
}

/// `x` with its last axis (of length `k`) in the slot order.
fn in_slots<'a>(x: &'a [f32], k: usize, order: &Option<Vec<usize>>) -> Cow<'a, [f32]> {
    match order {
        None => Cow::Borrowed(x),
        Some(order) => Cow::Owned(x.chunks_exact(k.max(1)).flat_map(|row| order.iter().map(move |&i| row[i])).collect()),
    }
}

fn add_rows(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// The geometry of a convolution on an NHWC image.
#[derive(Clone, Copy)]
struct ConvGeometry<'a> {
    shape: &'a [usize],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [[usize; 2]; 2],
    out_hw: [usize; 2],
}

impl ConvGeometry<'_> {
    fn width(&self) -> usize {
        self.kernel[0] * self.kernel[1] * self.shape[3]
    }

    /// im2col rows `first..` into `rows` (one row per output pixel: kernel
    /// row, kernel column, channel, with the channel fastest). Every element
    /// is written, padding as zero, so `rows` may hold anything before.
    fn fill(&self, x: &[f32], first: usize, rows: &mut [f32]) {
        let (h, w, c) = (self.shape[1], self.shape[2], self.shape[3]);
        let [oh, ow] = self.out_hw;
        for (i, row) in rows.chunks_exact_mut(self.width().max(1)).enumerate() {
            let p = first + i;
            let (b, oy, ox) = (p / (oh * ow), (p / ow) % oh, p % ow);
            for ky in 0..self.kernel[0] {
                let iy = (oy * self.stride[0] + ky) as isize - self.padding[0][0] as isize;
                let taps = &mut row[ky * self.kernel[1] * c..][..self.kernel[1] * c];
                let ix0 = (ox * self.stride[1]) as isize - self.padding[1][0] as isize;
                if iy < 0 || iy >= h as isize {
                    taps.fill(0.0);
                } else if ix0 >= 0 && ix0 as usize + self.kernel[1] <= w {
                    // The kernel row lies inside the image: one contiguous run.
                    taps.copy_from_slice(&x[((b * h + iy as usize) * w + ix0 as usize) * c..][..self.kernel[1] * c]);
                } else {
                    for (kx, dst) in taps.chunks_exact_mut(c.max(1)).enumerate() {
                        let ix = ix0 + kx as isize;
                        if ix < 0 || ix >= w as isize {
                            dst.fill(0.0);
                        } else {
                            dst.copy_from_slice(&x[((b * h + iy as usize) * w + ix as usize) * c..][..c]);
                        }
                    }
                }
            }
        }
    }

    /// The whole patch matrix into `out` (resized), filled in parallel in
    /// blocks of about 1 MiB.
    fn patches_into(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        let width = self.width();
        out.resize(rows * width, 0.0);
        let block = ((1usize << 18) / width.max(1)).max(1);
        out[..rows * width].par_chunks_mut(block * width.max(1)).enumerate().for_each(|(i, chunk)| self.fill(x, i * block, chunk));
    }

    /// The whole patch matrix (for the hardware modes, whose converters see
    /// all of it).
    fn patches(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = Vec::new();
        self.patches_into(x, rows, &mut out);
        out
    }

    /// `patches·K` with `kernel_t` `(width, cout)`.
    ///
    /// With at least as many output pixels as channels (the early stages),
    /// the pixels are cut into blocks, a multiple of the thread count of them
    /// and each of at most about 2 MiB of patches: a thread fills a block's
    /// patches into its own buffer and multiplies them right away, while
    /// they are still in cache. With fewer pixels (the late stages), the
    /// patch matrix is built whole and the GEMM cuts the output channels.
    fn product(&self, x: &[f32], rows: usize, kernel_t: &[f32], cout: usize) -> Result<Vec<f32>, String> {
        let width = self.width();
        let mut y = vec![0.0f32; rows * cout];
        let threads = rayon::current_num_threads();
        if rows < cout.max(16 * threads) {
            return with_scratch(|patches| {
                self.patches_into(x, rows, patches);
                gemm(&patches[..rows * width], kernel_t, &mut y, 1, (rows, width, cout), false)
            }).map(|()| y);
        }
        let blocks = threads * (rows * width).div_ceil(threads << 19);
        let block = rows.div_ceil(blocks);
        y.par_chunks_mut(block * cout.max(1)).enumerate().try_for_each(|(i, out)| {
            let count = out.len() / cout.max(1);
            with_scratch(|patches| {
                patches.resize(count * width, 0.0);
                self.fill(x, i * block, &mut patches[..count * width]);
                gemm_on_this_thread(&patches[..count * width], kernel_t, out, (count, width, cout))
            })
        })?;
        Ok(y)
    }
}

fn gelu(x: f32, tanh: bool) -> f32 {
    if tanh {
        let inner = 0.797_884_6_f32 * (x + 0.044715 * x * x * x);
        0.5 * x * (1.0 + inner.tanh())
    } else {
        0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
    }
}

impl Runtime {
    pub fn new(model: Arc<Model>) -> Runtime {
        let (mut kernels, mut filters) = (HashMap::new(), HashMap::new());
        for step in &model.graph.steps {
            let (Op::Linear { weight, .. } | Op::Conv2d { weight, .. }) = &step.op else { continue };
            let shape = &model.tensors[weight].shape;
            if Self::uses_winograd(&model, step) {
                if !filters.contains_key(weight) {
                    filters.insert(weight.clone(), winograd::Filter::new(&model.weights(weight), shape[0], shape[1] / 9));
                }
            } else if !kernels.contains_key(weight) {
                kernels.insert(weight.clone(), photonic::transposed(&model.weights(weight), shape[0], shape[1]));
            }
        }
        let mut last_use = vec![usize::MAX; model.graph.values.len()];
        for (i, step) in model.graph.steps.iter().enumerate() {
            for &v in &step.inputs {
                last_use[v] = i;
            }
        }
        for &o in &model.graph.outputs {
            last_use[o] = usize::MAX;
        }
        let programmed = (0..model.graph.steps.len()).map(|_| OnceLock::new()).collect();
        Runtime { model, kernels, winograd: filters, programmed, last_use }
    }

    /// Zeros of the shapes and dtypes of the graph inputs.
    pub fn zero_inputs(&self) -> Vec<Array> {
        let g = &self.model.graph;
        g.inputs
            .iter()
            .map(|&i| {
                let v = &g.values[i];
                let n = v.shape.iter().product();
                match v.dtype {
                    Dtype::I32 => Array::I32 { shape: v.shape.clone(), data: vec![0; n] },
                    _ => Array::F32 { shape: v.shape.clone(), data: vec![0.0; n] },
                }
            })
            .collect()
    }

    /// Whether `step` is a 3×3 stride-1 convolution that runs as Winograd
    /// F(2×2, 3×3) in ideal mode (where that is faster, [`winograd::pays`]).
    fn uses_winograd(model: &Model, step: &Step) -> bool {
        let Op::Conv2d { kernel: [3, 3], stride: [1, 1], .. } = &step.op else { return false };
        let (input, output) = (&model.graph.values[step.inputs[0]].shape, &model.graph.values[step.output].shape);
        winograd::pays(output[0], [output[1], output[2]], input[3])
    }

    /// The validated model this runtime runs.
    pub fn model(&self) -> &Model {
        &self.model
    }


    fn bank(&self, core: &Core) -> (&[f32], Option<&[f32]>) {
        (self.model.f32s(&core.coupling), core.compensation.as_ref().map(|c| self.model.f32s(c)))
    }

    /// `x·Wᵀ` of a weight layer, on the core in hardware modes.
    fn weight_product(&self, index: usize, x: &[f32], (rows, k, out): (usize, usize, usize), weight: &str, core: &Core, mode: Mode) -> Result<Vec<f32>, String> {
        if mode == Mode::Ideal {
            let mut y = vec![0.0f32; rows * out];
            gemm(x, &self.kernels[weight], &mut y, 1, (rows, k, out), false)?;
            return Ok(y);
        }
        let programmed = self.programmed[index].get_or_init(|| {
            let (coupling, compensation) = self.bank(core);
            let w = self.model.weights(weight);
            photonic::program(&in_slots(&w, k, &core.slot_order), out, k, coupling, compensation)
        });
        let programmed = programmed.as_ref().map_err(|e| e.clone())?;
        photonic::product(&in_slots(x, k, &core.slot_order), rows, k, programmed, out, core, mode, stream(index, 0, 0))
    }

    /// Runs the graph on `inputs` (in the order of the graph's inputs).
    pub fn run(&self, inputs: &[Array], mode: Mode) -> Result<Vec<Array>, RunError> {
        let graph = &self.model.graph;
        if inputs.len() != graph.inputs.len() {
            return Err(RunError::Input { name: "*".into(), reason: format!("the model takes {} inputs, got {}", graph.inputs.len(), inputs.len()) });
        }
        let mut values: Vec<Option<Array>> = vec![None; graph.values.len()];
        for (&v, input) in graph.inputs.iter().zip(inputs) {
            let info = &graph.values[v];
            if input.shape() != info.shape.as_slice() || input.dtype() != info.dtype || input.len() != info.shape.iter().product::<usize>() {
                return Err(RunError::Input {
                    name: info.name.clone(),
                    reason: format!("expected {} {:?}, got {} {:?}", info.dtype.name(), info.shape, input.dtype().name(), input.shape()),
                });
            }
            values[v] = Some(input.clone());
        }
        for (i, step) in graph.steps.iter().enumerate() {
            let fail = |reason: String| RunError::Node { node: step.name.clone(), reason };
            // An input seen for the last time moves into the op; others are copied.
            let mut ins = Vec::with_capacity(step.inputs.len());
            for (k, &v) in step.inputs.iter().enumerate() {
                let last = self.last_use[v] == i && !step.inputs[k + 1..].contains(&v);
                let value = if last { values[v].take() } else { values[v].clone() };
                ins.push(value.ok_or_else(|| fail("an input was freed early".into()))?);
            }
            values[step.output] = Some(self.step(i, step, ins, mode).map_err(fail)?);
        }
        graph.outputs.iter().map(|&o| values[o].clone().ok_or_else(|| RunError::Node { node: graph.values[o].name.clone(), reason: "never computed".into() })).collect()
    }

    fn step(&self, index: usize, step: &Step, ins: Vec<Array>, mode: Mode) -> Result<Array, String> {
        let graph = &self.model.graph;
        let shape = graph.values[step.output].shape.clone();
        let mut ins = ins.into_iter();
        let x = ins.next().ok_or("an op without inputs")?;
        let x_shape = x.shape().to_vec();
        let floats = |a: Array| -> Result<Vec<f32>, String> {
            match a {
                Array::F32 { data, .. } => Ok(data),
                Array::I32 { .. } => Err("expects f32 input".into()),
            }
        };
        let m = &*self.model;
        let data: Vec<f32> = match &step.op {
            Op::Transpose { perm } => return Ok(transpose(&x, perm)),
            Op::Reshape { .. } => {
                return Ok(match x {
                    Array::F32 { data, .. } => Array::F32 { shape, data },
                    Array::I32 { data, .. } => Array::I32 { shape, data },
                })
            }
            Op::Linear { weight, bias, core } => {
                let xs = floats(x)?;
                let k = *x_shape.last().unwrap_or(&0);
                let rows = xs.len() / k.max(1);
                let n = *shape.last().unwrap_or(&0);
                let mut y = self.weight_product(index, &xs, (rows, k, n), weight, core, mode)?;
                if let Some(b) = bias {
                    add_rows(&mut y, m.f32s(b));
                }
                y
            }
            Op::Conv2d { weight, bias, kernel, stride, padding, core } => {
                let xs = floats(x)?;
                let geometry = ConvGeometry { shape: &x_shape, kernel: *kernel, stride: *stride, padding: *padding, out_hw: [shape[1], shape[2]] };
                let (k, rows) = (geometry.width(), shape[0] * shape[1] * shape[2]);
                // A 1×1 stride-1 convolution reads the image as its own patch matrix.
                let pointwise = *kernel == [1, 1] && *stride == [1, 1];
                let mut y = if pointwise {
                    self.weight_product(index, &xs, (rows, k, shape[3]), weight, core, mode)?
                } else if mode == Mode::Ideal && Self::uses_winograd(m, step) {
                    winograd::conv3x3(&xs, &x_shape, *padding, [shape[1], shape[2]], &self.winograd[weight])?
                } else if mode == Mode::Ideal {
                    geometry.product(&xs, rows, &self.kernels[weight], shape[3])?
                } else {
                    self.weight_product(index, &geometry.patches(&xs, rows), (rows, k, shape[3]), weight, core, mode)?
                };
                if let Some(b) = bias {
                    add_rows(&mut y, m.f32s(b));
                }
                y
            }
            Op::ScaleShift { scale, shift } => {
                let (s, t) = (m.f32s(scale), m.f32s(shift));
                let mut y = floats(x)?;
                for row in y.chunks_exact_mut(s.len().max(1)) {
                    for ((v, a), b) in row.iter_mut().zip(s).zip(t) {
                        *v = *v * a + b;
                    }
                }
                y
            }
            Op::Relu => {
                let mut y = floats(x)?;
                y.iter_mut().for_each(|v| *v = v.max(0.0));
                y
            }
            Op::Gelu { tanh } => {
                let mut y = floats(x)?;
                y.iter_mut().for_each(|v| *v = gelu(*v, *tanh));
                y
            }
            Op::Add => {
                let b = floats(ins.next().ok_or("add takes two inputs")?)?;
                let mut y = floats(x)?;
                y.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                y
            }
            Op::MaxPool2d { window, stride, padding } => max_pool(&floats(x)?, &x_shape, *window, *stride, *padding, &shape),
            Op::GlobalAvgPool => {
                let xs = floats(x)?;
                let (n, hw, c) = (x_shape[0], x_shape[1] * x_shape[2], x_shape[3]);
                let mut y = vec![0.0f32; n * c];
                for b in 0..n {
                    for p in 0..hw {
                        let src = &xs[(b * hw + p) * c..(b * hw + p + 1) * c];
                        y[b * c..(b + 1) * c].iter_mut().zip(src).for_each(|(a, v)| *a += v);
                    }
                }
                y.iter_mut().for_each(|v| *v /= hw as f32);
                y
            }
            Op::Embedding { table } => {
                let Array::I32 { data: ids, .. } = &x else { return Err("ids must be i32".into()) };
                let t = m.f32s(table);
                let (vocab, width) = (m.tensors[table].shape[0], m.tensors[table].shape[1]);
                let mut y = Vec::with_capacity(ids.len() * width);
                for &id in ids.iter() {
                    let row = usize::try_from(id).ok().filter(|&r| r < vocab).ok_or_else(|| format!("token id {id} is outside the vocabulary of {vocab}"))?;
                    y.extend_from_slice(&t[row * width..(row + 1) * width]);
                }
                y
            }
            Op::AddPositions { table } => {
                let t = m.f32s(table);
                let (tokens, width) = (x_shape[1], x_shape[2]);
                let mut y = floats(x)?;
                for sequence in y.chunks_exact_mut((tokens * width).max(1)) {
                    sequence.iter_mut().zip(&t[..tokens * width]).for_each(|(v, p)| *v += p);
                }
                y
            }
            Op::LayerNorm { scale, bias, eps } => {
                let (s, b) = (m.f32s(scale), bias.as_ref().map(|b| m.f32s(b)));
                let mut y = floats(x)?;
                let c = s.len().max(1);
                for row in y.chunks_exact_mut(c) {
                    let mean = row.iter().sum::<f32>() / c as f32;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (*v - mean) * inv * s[j] + b.map_or(0.0, |b| b[j]);
                    }
                }
                y
            }
            Op::CausalAttention { heads, scale, core } => {
                let bank = self.bank(core);
                let pairwise = |a: &[f32], b: &[f32], c: &mut [f32], groups: usize, (m, k, n): (usize, usize, usize), product: u64| -> Result<(), String> {
                    if mode == Mode::Ideal {
                        return gemm(a, b, c, groups, (m, k, n), true);
                    }
                    for g in 0..groups {
                        let programmed = photonic::program(&b[g * n * k..(g + 1) * n * k], n, k, bank.0, bank.1)?;
                        let y = photonic::product(&a[g * m * k..(g + 1) * m * k], m, k, &programmed, n, core, mode, stream(index, product, g))?;
                        c[g * m * n..(g + 1) * m * n].copy_from_slice(&y);
                    }
                    Ok(())
                };
                attention(&floats(x)?, &x_shape, *heads, *scale, pairwise)?
            }
        };
        Ok(Array::F32 { shape, data })
    }
}

fn transpose(x: &Array, perm: &[usize]) -> Array {
    let shape = x.shape();
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut in_strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    match x {
        Array::F32 { data, .. } => Array::F32 { data: gather(data, &out_shape, &strides), shape: out_shape },
        Array::I32 { data, .. } => Array::I32 { data: gather(data, &out_shape, &strides), shape: out_shape },
    }
}

/// The elements of `data` at `Σ index[axis]·strides[axis]` for every index of
/// `shape`, in row-major order (an odometer over the outer axes, a strided
/// run along the last).
fn gather<T: Copy>(data: &[T], shape: &[usize], strides: &[usize]) -> Vec<T> {
    let total: usize = shape.iter().product();
    let Some((&inner, outer)) = shape.split_last() else {
        return data.to_vec();
    };
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let inner_stride = strides[outer.len()];
    let (mut counter, mut base) = (vec![0usize; outer.len()], 0usize);
    loop {
        out.extend((0..inner).map(|i| data[base + i * inner_stride]));
        let mut axis = outer.len();
        loop {
            if axis == 0 {
                return out;
            }
            axis -= 1;
            counter[axis] += 1;
            base += strides[axis];
            if counter[axis] < outer[axis] {
                break;
            }
            base -= strides[axis] * outer[axis];
            counter[axis] = 0;
        }
    }
}

fn max_pool(x: &[f32], s: &[usize], window: [usize; 2], stride: [usize; 2], padding: [[usize; 2]; 2], out: &[usize]) -> Vec<f32> {
    let (h, w, c) = (s[1], s[2], s[3]);
    let mut y = vec![f32::NEG_INFINITY; out.iter().product()];
    for (p, pixel) in y.chunks_exact_mut(c.max(1)).enumerate() {
        let (b, oy, ox) = (p / (out[1] * out[2]), (p / out[2]) % out[1], p % out[2]);
        for ky in 0..window[0] {
            let iy = (oy * stride[0] + ky) as isize - padding[0][0] as isize;
            for kx in 0..window[1] {
                let ix = (ox * stride[1] + kx) as isize - padding[1][0] as isize;
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                    continue;
                }
                let src = &x[((b * h + iy as usize) * w + ix as usize) * c..][..c];
                pixel.iter_mut().zip(src).for_each(|(m, v)| *m = m.max(*v));
            }
        }
    }
    y
}

/// Causal multi-head attention on a fused `(N, T, 3C)` QKV tensor.
///
/// `pairwise(a, b, c, groups, (m, k, n), product)` computes `c[g] = a[g]·b[g]ᵀ`
/// for `a` `(m, k)` and `b` `(n, k)` slices; `product` numbers it in the node.
fn attention(qkv: &[f32], shape: &[usize], heads: usize, scale: f32, pairwise: impl Fn(&[f32], &[f32], &mut [f32], usize, (usize, usize, usize), u64) -> Result<(), String>) -> Result<Vec<f32>, String> {
    let (n, t, c) = (shape[0], shape[1], shape[2] / 3);
    let d = c / heads;
    let groups = n * heads;
    // q, k: (groups, t, d); v transposed: (groups, d, t), the "weights" of the second product.
    let mut q = vec![0.0f32; groups * t * d];
    let mut k = vec![0.0f32; groups * t * d];
    let mut vt = vec![0.0f32; groups * d * t];
    for b in 0..n {
        for s in 0..t {
            let row = &qkv[(b * t + s) * 3 * c..][..3 * c];
            for h in 0..heads {
                let g = b * heads + h;
                q[(g * t + s) * d..][..d].copy_from_slice(&row[h * d..(h + 1) * d]);
                k[(g * t + s) * d..][..d].copy_from_slice(&row[c + h * d..c + (h + 1) * d]);
                for j in 0..d {
                    vt[(g * d + j) * t + s] = row[2 * c + h * d + j];
                }
            }
        }
    }
    let mut scores = vec![0.0f32; groups * t * t];
    pairwise(&q, &k, &mut scores, groups, (t, d, t), 0)?;
    let causal = CausalShape { outer: groups, queries: t, keys: t, offset: 0 };
    causal_softmax_forward(None, &mut scores, &causal, scale).map_err(|e| e.to_string())?;
    let mut mixed = vec![0.0f32; groups * t * d];
    pairwise(&scores, &vt, &mut mixed, groups, (t, t, d), 1)?;
    let mut out = vec![0.0f32; n * t * c];
    for b in 0..n {
        for h in 0..heads {
            for s in 0..t {
                out[(b * t + s) * c + h * d..][..d].copy_from_slice(&mixed[((b * heads + h) * t + s) * d..][..d]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct convolution in f64, the reference for im2col + GEMM.
    fn direct(x: &[f32], g: &ConvGeometry, weight: &[f32], cout: usize) -> Vec<f64> {
        let (h, w, c) = (g.shape[1], g.shape[2], g.shape[3]);
        let [oh, ow] = g.out_hw;
        let mut y = vec![0.0f64; g.shape[0] * oh * ow * cout];
        for b in 0..g.shape[0] {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..cout {
                        let mut acc = 0.0f64;
                        for ky in 0..g.kernel[0] {
                            for kx in 0..g.kernel[1] {
                                let iy = (oy * g.stride[0] + ky) as isize - g.padding[0][0] as isize;
                                let ix = (ox * g.stride[1] + kx) as isize - g.padding[1][0] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                for ci in 0..c {
                                    let xv = x[((b * h + iy as usize) * w + ix as usize) * c + ci];
                                    let wv = weight[o * g.width() + (ky * g.kernel[1] + kx) * c + ci];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        y[((b * oh + oy) * ow + ox) * cout + o] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn blocked_and_whole_convolutions_match_a_direct_one() {
        // 2·64·64 output pixels × 288 patch entries: built block by block;
        // the small one whole.
        for (shape, stride) in [([2usize, 64, 64, 32], 1usize), ([1, 12, 10, 3], 2)] {
            let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let cout = 8;
            let out_hw = [(shape[1] + 2 - 3) / stride + 1, (shape[2] + 2 - 3) / stride + 1];
            let g = ConvGeometry { shape: &shape, kernel: [3, 3], stride: [stride, stride], padding: [[1, 1], [1, 1]], out_hw };
            let weight: Vec<f32> = (0..cout * g.width()).map(|i| ((i * 13 % 29) as f32 - 14.0) / 14.0).collect();
            let rows = shape[0] * out_hw[0] * out_hw[1];
            assert_eq!(rows * g.width() > 1 << 21, shape[0] == 2);
            let ours = g.product(&x, rows, &photonic::transposed(&weight, cout, g.width()), cout).unwrap();
            let reference = direct(&x, &g, &weight, cout);
            let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (a, b) in ours.iter().zip(&reference) {
                assert!((f64::from(*a) - b).abs() <= 1e-5 * scale, "{a} vs {b}");
            }
        }
    }
}
