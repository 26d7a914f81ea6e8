//! Runs a validated graph (FORMAT.md §6.1) on the native kernels.
//!
//! Products go through `lumijax_native`'s GEMM, attention through its fused
//! causal softmax. Weights are read in place from the memory-mapped file
//! when stored as f32, and dequantized once when stored as codes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use lumijax_native::conv::{self, Conv2d};
use lumijax_native::softmax::{causal_softmax_forward, CausalShape};
use rayon::prelude::*;

use crate::error::RunError;
use crate::graph::{Core, Op, Step};
use crate::model::Model;
pub use crate::photonic::Mode;
use crate::photonic::{self, gemm, gemm_on_this_thread, Programmed};
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

/// How an ideal-mode convolution runs (the hardware modes always build the
/// whole patch matrix, which their converters see at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvPath {
    /// 1×1 stride 1: the image is its own patch matrix.
    Pointwise,
    /// 3×3 stride 1 where Winograd F(2×2, 3×3) pays ([`winograd::pays`]).
    Winograd,
    /// The patch-matrix product of [`lumijax_native::conv`], on its path.
    Patches(conv::Path),
}

/// The path of a convolution from NHWC `input` to NHWC `output` on `threads` threads.
pub(crate) fn conv_path(input: &[usize], output: &[usize], kernel: [usize; 2], stride: [usize; 2], threads: usize) -> ConvPath {
    if kernel == [1, 1] && stride == [1, 1] {
        ConvPath::Pointwise
    } else if kernel == [3, 3] && stride == [1, 1] && winograd::pays(output[0], [output[1], output[2]], input[3]) {
        ConvPath::Winograd
    } else {
        ConvPath::Patches(conv::path(output[0] * output[1] * output[2], output[3], threads))
    }
}

/// Query rows per task of ideal-mode attention over `keys` keys: blocks of
/// about 64 Ki scores.
pub(crate) fn attention_rows_per_task(keys: usize) -> usize {
    ((1usize << 16) / keys.max(1)).clamp(1, 256)
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
            if Self::ideal_conv_path(&model, step) == Some(ConvPath::Winograd) {
                if !filters.contains_key(weight) {
                    filters.insert(weight.clone(), winograd::Filter::new(&model.weights(weight), shape[0], shape[1] / 9));
                }
            } else if !kernels.contains_key(weight) {
                kernels.insert(weight.clone(), photonic::transposed(&model.weights(weight), shape[0], shape[1]));
            }
        }
        let last_use = model.graph.last_use();
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

    /// Runs the graph once on [`Runtime::zero_inputs`] in each mode
    /// (ideal, expected, noisy with seed 0): every op and every kernel the
    /// file asks for, on its declared shapes, within its caps.
    pub fn check_on_zeros(&self) -> Result<(), RunError> {
        let inputs = self.zero_inputs();
        for mode in [Mode::Ideal, Mode::Expected, Mode::Noisy { seed: 0 }] {
            self.run(&inputs, mode)?;
        }
        Ok(())
    }

    /// The ideal-mode path of a convolution step (`None` for other ops).
    fn ideal_conv_path(model: &Model, step: &Step) -> Option<ConvPath> {
        let Op::Conv2d { kernel, stride, .. } = &step.op else { return None };
        let (input, output) = (&model.graph.values[step.inputs[0]].shape, &model.graph.values[step.output].shape);
        Some(conv_path(input, output, *kernel, *stride, rayon::current_num_threads()))
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
        if mode != Mode::Ideal {
            self.model.cost.hardware.check(graph, &self.model.limits, mode.name()).map_err(RunError::Limit)?;
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
            let output = self.step(i, step, ins, mode).map_err(fail)?;
            // Every op writes exactly the declared shape; a later op indexes by it.
            let declared = &graph.values[step.output].shape;
            if output.shape() != declared.as_slice() || output.len() != declared.iter().product::<usize>() {
                return Err(fail(format!("computed {} elements of shape {:?} where {:?} is declared", output.len(), output.shape(), declared)));
            }
            values[step.output] = Some(output);
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
                let (&k, leading) = x_shape.split_last().ok_or("linear needs an input of rank ≥ 1")?;
                let rows = leading.iter().product();
                let n = *shape.last().unwrap_or(&0);
                let mut y = self.weight_product(index, &xs, (rows, k, n), weight, core, mode)?;
                if let Some(b) = bias {
                    add_rows(&mut y, m.f32s(b));
                }
                y
            }
            Op::Conv2d { weight, bias, kernel, stride, padding, core } => {
                let xs = floats(x)?;
                let input: [usize; 4] = x_shape.as_slice().try_into().map_err(|_| format!("a convolution takes NHWC images, got {x_shape:?}"))?;
                let geometry = Conv2d::new(input, *kernel, *stride, *padding).map_err(|e| e.to_string())?;
                let (k, rows, cout) = (geometry.width(), geometry.rows(), shape[3]);
                let mut y = match (conv_path(&x_shape, &shape, *kernel, *stride, rayon::current_num_threads()), mode) {
                    (ConvPath::Pointwise, _) => self.weight_product(index, &xs, (rows, k, cout), weight, core, mode)?,
                    (ConvPath::Winograd, Mode::Ideal) => winograd::conv3x3(&xs, &x_shape, *padding, [shape[1], shape[2]], &self.winograd[weight])?,
                    (ConvPath::Patches(path), Mode::Ideal) => {
                        let mut y = vec![0.0f32; rows * cout];
                        geometry.forward_on(&xs, &self.kernels[weight], cout, &mut y, path).map_err(|e| e.to_string())?;
                        y
                    }
                    _ => {
                        let mut patches = Vec::new();
                        geometry.patches_into(&xs, &mut patches);
                        self.weight_product(index, &patches, (rows, k, cout), weight, core, mode)?
                    }
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
                let heads = Heads::split(&floats(x)?, &x_shape, *heads);
                let mixed = match mode {
                    Mode::Ideal => heads.ideal(*scale)?,
                    _ => heads.on_core(*scale, |a, b, (m, k, n), product, group| {
                        let (coupling, compensation) = self.bank(core);
                        let programmed = photonic::program(b, n, k, coupling, compensation)?;
                        photonic::product(a, m, k, &programmed, n, core, mode, stream(index, product, group))
                    })?,
                };
                heads.merge(&mixed)
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

/// The taps of a window at `start` (in padded coordinates) that fall inside
/// an axis of `size` padded by `pad` before it: tap `k` reads index
/// `start + k − pad`, inside `0..size` exactly for the taps returned.
fn inside(start: usize, pad: usize, window: usize, size: usize) -> std::ops::Range<usize> {
    let first = pad.saturating_sub(start);
    let last = (size + pad).saturating_sub(start).min(window);
    first..last.max(first)
}

/// Max pooling with −∞ padding; each window is clipped to the image, so the
/// work is that of the taps inside it.
fn max_pool(x: &[f32], s: &[usize], window: [usize; 2], stride: [usize; 2], padding: [[usize; 2]; 2], out: &[usize]) -> Vec<f32> {
    let (h, w, c) = (s[1], s[2], s[3]);
    let mut y = vec![f32::NEG_INFINITY; out.iter().product()];
    for (p, pixel) in y.chunks_exact_mut(c.max(1)).enumerate() {
        let (b, oy, ox) = (p / (out[1] * out[2]), (p / out[2]) % out[1], p % out[2]);
        let (y0, x0) = (oy * stride[0], ox * stride[1]);
        for ky in inside(y0, padding[0][0], window[0], h) {
            let iy = y0 + ky - padding[0][0];
            for kx in inside(x0, padding[1][0], window[1], w) {
                let ix = x0 + kx - padding[1][0];
                let src = &x[((b * h + iy) * w + ix) * c..][..c];
                pixel.iter_mut().zip(src).for_each(|(m, v)| *m = m.max(*v));
            }
        }
    }
    y
}

/// The heads of causal attention on a fused `(N, T, 3C)` QKV tensor: q, k
/// and v of each of the `N·heads` groups, `(T, d)` each.
struct Heads {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    batch: usize,
    heads: usize,
    tokens: usize,
    dim: usize,
}

impl Heads {
    fn split(qkv: &[f32], shape: &[usize], heads: usize) -> Heads {
        let (n, t, c) = (shape[0], shape[1], shape[2] / 3);
        let d = c / heads;
        let mut parts = [0, 1, 2].map(|_| vec![0.0f32; n * t * c]);
        for b in 0..n {
            for s in 0..t {
                let row = &qkv[(b * t + s) * 3 * c..][..3 * c];
                for (part, values) in parts.iter_mut().zip(row.chunks_exact(c.max(1))) {
                    for h in 0..heads {
                        part[((b * heads + h) * t + s) * d..][..d].copy_from_slice(&values[h * d..(h + 1) * d]);
                    }
                }
            }
        }
        let [q, k, v] = parts;
        Heads { q, k, v, batch: n, heads, tokens: t, dim: d }
    }

    /// `softmax(q·kᵀ·scale + causal mask)·v` per group, `(groups, T, d)`,
    /// in float: tasks of [`attention_rows_per_task`] query rows, each
    /// computing only the scores of the keys its rows can see.
    fn ideal(&self, scale: f32) -> Result<Vec<f32>, String> {
        let (t, d) = (self.tokens, self.dim);
        let mut mixed = vec![0.0f32; self.q.len()];
        if t == 0 || d == 0 {
            return Ok(mixed);
        }
        // kᵀ per group, (d, T): the scores' right operand with unit stride.
        let kt: Vec<f32> = self.k.chunks_exact(t * d).flat_map(|k| photonic::transposed(k, t, d)).collect();
        let rows = attention_rows_per_task(t);
        mixed.par_chunks_mut(t * d).enumerate().try_for_each(|(g, out)| {
            out.par_chunks_mut(rows * d).enumerate().try_for_each(|(block, out)| {
                let (first, count) = (block * rows, out.len() / d);
                let keys = first + count; // the last row sees keys 0..first + count
                let mut scores = vec![0.0f32; count * keys];
                let q = &self.q[(g * t + first) * d..][..count * d];
                gemm_on_this_thread(q, &kt[g * d * t..][..d * t], t, &mut scores, (count, d, keys))?;
                let causal = CausalShape { outer: 1, queries: count, keys, offset: first };
                causal_softmax_forward(None, &mut scores, &causal, scale).map_err(|e| e.to_string())?;
                gemm_on_this_thread(&scores, &self.v[g * t * d..][..keys * d], d, out, (count, keys, d))
            })
        })?;
        Ok(mixed)
    }

    /// The same on the photonic core, one group at a time:
    /// `product(a, b, (m, k, n), product, group)` is `a·bᵀ` for `a` `(m, k)`
    /// and `b` `(n, k)` with converters, bank and noise; `product` numbers it
    /// in the node (0 scores, 1 mixing).
    fn on_core(&self, scale: f32, product: impl Fn(&[f32], &[f32], (usize, usize, usize), u64, usize) -> Result<Vec<f32>, String>) -> Result<Vec<f32>, String> {
        let (t, d) = (self.tokens, self.dim);
        let mut mixed = vec![0.0f32; self.q.len()];
        if t == 0 || d == 0 {
            return Ok(mixed);
        }
        for (g, out) in mixed.chunks_exact_mut(t * d).enumerate() {
            let (q, k, v) = (&self.q[g * t * d..][..t * d], &self.k[g * t * d..][..t * d], &self.v[g * t * d..][..t * d]);
            let mut scores = product(q, k, (t, d, t), 0, g)?;
            let causal = CausalShape { outer: 1, queries: t, keys: t, offset: 0 };
            causal_softmax_forward(None, &mut scores, &causal, scale).map_err(|e| e.to_string())?;
            // vᵀ, (d, T): the "weights" of the mixing product.
            out.copy_from_slice(&product(&scores, &photonic::transposed(v, t, d), (t, t, d), 1, g)?);
        }
        Ok(mixed)
    }

    /// `(groups, T, d)` back to `(N, T, C)`.
    fn merge(&self, mixed: &[f32]) -> Vec<f32> {
        let (t, d, c) = (self.tokens, self.dim, self.heads * self.dim);
        let mut out = vec![0.0f32; self.batch * t * c];
        for b in 0..self.batch {
            for h in 0..self.heads {
                for s in 0..t {
                    out[(b * t + s) * c + h * d..][..d].copy_from_slice(&mixed[((b * self.heads + h) * t + s) * d..][..d]);
                }
            }
        }
        out
    }
}

