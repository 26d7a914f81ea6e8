//! The graph (FORMAT.md §6): typed ops, well-formedness and shape inference.
//!
//! [`Graph::build`] turns the header's nodes into [`Step`]s whose operands
//! are value and tensor indices, checking along the way that every input is
//! defined before use, every value produced once, arities, params and
//! attribute types are right, and that the inferred output shapes match the
//! declared ones.

use std::collections::HashMap;

use rmpv::Value as Msg;

use crate::error::FormatError;
use crate::header::{GraphDef, NodeDef};
use crate::tensor::{Dtype, TensorInfo};

/// Largest value a graph may declare, in elements (1 GiB of f32).
pub const MAX_VALUE_ELEMENTS: usize = 1 << 28;

/// A value the graph takes or computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// What a photonic op's converters and bank look like (FORMAT.md §7.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Core {
    pub input_bits: u32,
    pub output_bits: u32,
    pub input_range: Option<f32>,
    /// Signed DAC codes (`Some(true)`), unsigned (`Some(false)`), or decided by the batch.
    pub input_signed: Option<bool>,
    pub output_range: Option<f32>,
    pub channel_spacing_nm: f64,
    pub snr: f64,
    pub slot_order: Option<Vec<usize>>,
    pub coupling: String,
    pub compensation: Option<String>,
}

/// A typed op with its params (tensor names) and attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Transpose { perm: Vec<usize> },
    Reshape { shape: Vec<usize> },
    Linear { weight: String, bias: Option<String>, core: Core },
    Conv2d { weight: String, bias: Option<String>, kernel: [usize; 2], stride: [usize; 2], padding: [[usize; 2]; 2], core: Core },
    ScaleShift { scale: String, shift: String },
    Relu,
    Gelu { tanh: bool },
    Add,
    MaxPool2d { window: [usize; 2], stride: [usize; 2], padding: [[usize; 2]; 2] },
    GlobalAvgPool,
    Embedding { table: String },
    AddPositions { table: String },
    LayerNorm { scale: String, bias: Option<String>, eps: f32 },
    CausalAttention { heads: usize, scale: f32, core: Core },
}

impl Op {
    /// The op's name in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Transpose { .. } => "transpose",
            Op::Reshape { .. } => "reshape",
            Op::Linear { .. } => "linear",
            Op::Conv2d { .. } => "conv2d",
            Op::ScaleShift { .. } => "scale_shift",
            Op::Relu => "relu",
            Op::Gelu { .. } => "gelu",
            Op::Add => "add",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Embedding { .. } => "embedding",
            Op::AddPositions { .. } => "add_positions",
            Op::LayerNorm { .. } => "layer_norm",
            Op::CausalAttention { .. } => "causal_attention",
        }
    }
}

/// One node, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A validated graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub values: Vec<ValueInfo>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    pub steps: Vec<Step>,
}

struct NodeCtx<'a> {
    node: &'a NodeDef,
    index: usize,
    tensors: &'a HashMap<String, TensorInfo>,
}

impl NodeCtx<'_> {
    fn err(&self, reason: impl std::fmt::Display) -> FormatError {
        FormatError::Graph(format!("node {} ({:?}, {}): {reason}", self.index, self.node.name, self.node.op))
    }

    fn attr(&self, key: &str) -> Result<&Msg, FormatError> {
        self.node.attrs.get(key).ok_or_else(|| self.err(format!("needs attribute {key:?}")))
    }

    fn uint(&self, v: &Msg, key: &str) -> Result<usize, FormatError> {
        v.as_u64()
            .and_then(|u| usize::try_from(u).ok())
            .ok_or_else(|| self.err(format!("attribute {key:?} must hold non-negative integers")))
    }

    fn uints(&self, key: &str) -> Result<Vec<usize>, FormatError> {
        let list = self.attr(key)?.as_array().ok_or_else(|| self.err(format!("attribute {key:?} must be an array")))?;
        if list.len() > 8 {
            return Err(self.err(format!("attribute {key:?} has more than 8 entries")));
        }
        list.iter().map(|v| self.uint(v, key)).collect()
    }

    fn pair(&self, key: &str) -> Result<[usize; 2], FormatError> {
        match self.uints(key)?.as_slice() {
            &[a, b] => Ok([a, b]),
            _ => Err(self.err(format!("attribute {key:?} must hold two integers"))),
        }
    }

    fn padding(&self, key: &str) -> Result<[[usize; 2]; 2], FormatError> {
        let list = self.attr(key)?.as_array().ok_or_else(|| self.err(format!("attribute {key:?} must be [[top, bottom], [left, right]]")))?;
        let pairs: Vec<[usize; 2]> = list
            .iter()
            .map(|p| match p.as_array().map(|a| a.as_slice()) {
                Some([a, b]) => Ok([self.uint(a, key)?, self.uint(b, key)?]),
                _ => Err(self.err(format!("attribute {key:?} must be [[top, bottom], [left, right]]"))),
            })
            .collect::<Result<_, _>>()?;
        match pairs.as_slice() {
            &[h, w] => Ok([h, w]),
            _ => Err(self.err(format!("attribute {key:?} must be [[top, bottom], [left, right]]"))),
        }
    }

    fn float(&self, v: &Msg, key: &str) -> Result<f64, FormatError> {
        let f = v.as_f64().or_else(|| v.as_i64().map(|i| i as f64));
        f.filter(|f| f.is_finite()).ok_or_else(|| self.err(format!("attribute {key:?} must be a finite number")))
    }

    fn param(&self, role: &str, dtypes: &[Dtype]) -> Result<String, FormatError> {
        self.optional_param(role, dtypes)?.ok_or_else(|| self.err(format!("needs param {role:?}")))
    }

    fn optional_param(&self, role: &str, dtypes: &[Dtype]) -> Result<Option<String>, FormatError> {
        let Some(name) = self.node.params.get(role) else { return Ok(None) };
        let t = self.tensors.get(name).ok_or_else(|| self.err(format!("param {role:?} names tensor {name:?}, which the file does not hold")))?;
        if !dtypes.contains(&t.dtype) {
            return Err(self.err(format!("param {role:?} ({name:?}) is {}, expected {:?}", t.dtype.name(), dtypes)));
        }
        Ok(Some(name.clone()))
    }

    fn shape_of(&self, name: &str) -> &[usize] {
        &self.tensors[name].shape
    }

    fn core(&self) -> Result<Core, FormatError> {
        let map = self.attr("core")?.as_map().ok_or_else(|| self.err("attribute \"core\" must be a map"))?;
        let get = |key: &str| map.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v);
        let need = |key: &str| get(key).ok_or_else(|| self.err(format!("core needs {key:?}")));
        let bits = |key: &str| -> Result<u32, FormatError> {
            let b = self.uint(need(key)?, key)?;
            if !(2..=16).contains(&b) {
                return Err(self.err(format!("core.{key} must be 2..=16, got {b}")));
            }
            Ok(b as u32)
        };
        let range = |key: &str| -> Result<Option<f32>, FormatError> {
            match get(key) {
                None | Some(Msg::Nil) => Ok(None),
                Some(v) => {
                    let r = self.float(v, key)?;
                    if r <= 0.0 {
                        return Err(self.err(format!("core.{key} must be > 0")));
                    }
                    Ok(Some(r as f32))
                }
            }
        };
        let matrix = |key: &str| -> Result<Option<String>, FormatError> {
            match get(key) {
                None | Some(Msg::Nil) => Ok(None),
                Some(v) => {
                    let name = v.as_str().ok_or_else(|| self.err(format!("core.{key} must name a tensor")))?;
                    match self.tensors.get(name) {
                        Some(t) if t.dtype == Dtype::F32 && t.shape.len() == 2 && t.shape[0] == t.shape[1] && t.shape[0] > 0 => Ok(Some(name.to_string())),
                        _ => Err(self.err(format!("core.{key} must name a square f32 tensor, got {name:?}"))),
                    }
                }
            }
        };
        let slot_order = match get("slot_order") {
            None | Some(Msg::Nil) => None,
            Some(Msg::Array(list)) => Some(list.iter().map(|v| self.uint(v, "slot_order")).collect::<Result<Vec<_>, _>>()?),
            Some(_) => return Err(self.err("core.slot_order must be an array or nil")),
        };
        let input_signed = match get("input_signed") {
            None | Some(Msg::Nil) => None,
            Some(Msg::Boolean(b)) => Some(*b),
            Some(_) => return Err(self.err("core.input_signed must be a bool or nil")),
        };
        let snr = self.float(need("snr")?, "snr")?;
        if snr <= 0.0 {
            return Err(self.err("core.snr must be > 0"));
        }
        let coupling = matrix("coupling")?.ok_or_else(|| self.err("core needs \"coupling\""))?;
        let compensation = matrix("compensation")?;
        if let Some(c) = &compensation {
            // The compensation inverts the bank's coupling tile by tile: the same n×n.
            if self.shape_of(c) != self.shape_of(&coupling) {
                return Err(self.err(format!(
                    "core.compensation {c:?} is {:?} but core.coupling {coupling:?} is {:?}; they must be the same n×n",
                    self.shape_of(c),
                    self.shape_of(&coupling)
                )));
            }
        }
        Ok(Core {
            input_bits: bits("input_bits")?,
            output_bits: bits("output_bits")?,
            input_range: range("input_range")?,
            input_signed,
            output_range: range("output_range")?,
            channel_spacing_nm: self.float(need("channel_spacing_nm")?, "channel_spacing_nm")?,
            snr,
            slot_order,
            coupling,
            compensation,
        })
    }
}

fn check_slot_order(ctx: &NodeCtx, core: &Core, fan_in: usize) -> Result<(), FormatError> {
    if let Some(order) = &core.slot_order {
        let mut seen = vec![false; fan_in];
        if order.len() != fan_in || order.iter().any(|&i| i >= fan_in || std::mem::replace(&mut seen[i], true)) {
            return Err(ctx.err(format!("core.slot_order must be a permutation of 0..{fan_in}")));
        }
    }
    Ok(())
}

/// A weight `(out, cols)`: f32, or i8 codes with their quantization.
fn weight_shape(ctx: &NodeCtx, weight: &str, rows: Option<usize>, cols: usize) -> Result<usize, FormatError> {
    let t = &ctx.tensors[weight];
    if t.dtype == Dtype::I8 && t.quant.is_none() {
        return Err(ctx.err(format!("weight {weight:?} holds i8 codes but no quant to read them with")));
    }
    match ctx.shape_of(weight) {
        &[out, k] if k == cols && rows.is_none_or(|r| r == out) => Ok(out),
        s => Err(ctx.err(format!("weight {weight:?} has shape {s:?}, expected (out, {cols})"))),
    }
}

fn vector(ctx: &NodeCtx, name: &Option<String>, len: usize) -> Result<(), FormatError> {
    if let Some(name) = name {
        if ctx.shape_of(name) != [len] {
            return Err(ctx.err(format!("{name:?} has shape {:?}, expected ({len},)", ctx.shape_of(name))));
        }
    }
    Ok(())
}

fn window_out(ctx: &NodeCtx, size: usize, pad: [usize; 2], window: usize, stride: usize) -> Result<usize, FormatError> {
    let padded = size.checked_add(pad[0]).and_then(|s| s.checked_add(pad[1])).ok_or_else(|| ctx.err("padding overflows"))?;
    if stride == 0 || window == 0 || padded < window {
        return Err(ctx.err(format!("window {window} with stride {stride} does not fit {size} + padding {pad:?}")));
    }
    Ok((padded - window) / stride + 1)
}

/// Infers the op and its output shape and dtype from the input shapes.
fn infer(ctx: &NodeCtx, ins: &[&ValueInfo]) -> Result<(Op, Vec<usize>, Dtype), FormatError> {
    use Dtype::{F32, I32, I8};
    let x = ins[0];
    let float_in = |v: &ValueInfo| if v.dtype == F32 { Ok(()) } else { Err(ctx.err(format!("input {:?} must be f32", v.name))) };
    let rank = |v: &ValueInfo, r: usize| if v.shape.len() == r { Ok(()) } else { Err(ctx.err(format!("input {:?} must have rank {r}, has shape {:?}", v.name, v.shape))) };
    let last = x.shape.last().copied().unwrap_or(0);
    match ctx.node.op.as_str() {
        "transpose" => {
            let perm = ctx.uints("perm")?;
            let mut seen = vec![false; x.shape.len()];
            if perm.len() != x.shape.len() || perm.iter().any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true)) {
                return Err(ctx.err(format!("perm {perm:?} is not a permutation of the {} axes", x.shape.len())));
            }
            let shape = perm.iter().map(|&p| x.shape[p]).collect();
            Ok((Op::Transpose { perm }, shape, x.dtype))
        }
        "reshape" => {
            let shape = ctx.uints("shape")?;
            let count = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if count(&shape).is_none() || count(&shape) != count(&x.shape) {
                return Err(ctx.err(format!("cannot reshape {:?} to {shape:?}", x.shape)));
            }
            Ok((Op::Reshape { shape: shape.clone() }, shape, x.dtype))
        }
        "linear" => {
            float_in(x)?;
            if x.shape.is_empty() {
                return Err(ctx.err("input must have at least one axis"));
            }
            let weight = ctx.param("weight", &[F32, I8])?;
            let bias = ctx.optional_param("bias", &[F32])?;
            let out = weight_shape(ctx, &weight, None, last)?;
            vector(ctx, &bias, out)?;
            let core = ctx.core()?;
            check_slot_order(ctx, &core, last)?;
            let mut shape = x.shape.clone();
            *shape.last_mut().unwrap_or(&mut 0) = out;
            Ok((Op::Linear { weight, bias, core }, shape, F32))
        }
        "conv2d" => {
            float_in(x)?;
            rank(x, 4)?;
            let (kernel, stride, padding) = (ctx.pair("kernel")?, ctx.pair("stride")?, ctx.padding("padding")?);
            if padding[0].iter().any(|&p| p >= kernel[0]) || padding[1].iter().any(|&p| p >= kernel[1]) {
                return Err(ctx.err("padding must be smaller than the kernel"));
            }
            let fan_in = kernel[0].checked_mul(kernel[1]).and_then(|k| k.checked_mul(x.shape[3])).ok_or_else(|| ctx.err("kernel size overflows"))?;
            let weight = ctx.param("weight", &[F32, I8])?;
            let bias = ctx.optional_param("bias", &[F32])?;
            let cout = weight_shape(ctx, &weight, None, fan_in)?;
            vector(ctx, &bias, cout)?;
            let core = ctx.core()?;
            check_slot_order(ctx, &core, fan_in)?;
            let h = window_out(ctx, x.shape[1], padding[0], kernel[0], stride[0])?;
            let w = window_out(ctx, x.shape[2], padding[1], kernel[1], stride[1])?;
            Ok((Op::Conv2d { weight, bias, kernel, stride, padding, core }, vec![x.shape[0], h, w, cout], F32))
        }
        "scale_shift" => {
            float_in(x)?;
            let (scale, shift) = (ctx.param("scale", &[F32])?, ctx.param("shift", &[F32])?);
            vector(ctx, &Some(scale.clone()), last)?;
            vector(ctx, &Some(shift.clone()), last)?;
            Ok((Op::ScaleShift { scale, shift }, x.shape.clone(), F32))
        }
        "relu" => float_in(x).map(|_| (Op::Relu, x.shape.clone(), F32)),
        "gelu" => {
            float_in(x)?;
            let tanh = match ctx.attr("approximate")?.as_str() {
                Some("tanh") => true,
                Some("none") => false,
                _ => return Err(ctx.err("attribute \"approximate\" must be \"none\" or \"tanh\"")),
            };
            Ok((Op::Gelu { tanh }, x.shape.clone(), F32))
        }
        "add" => {
            float_in(x)?;
            float_in(ins[1])?;
            if x.shape != ins[1].shape {
                return Err(ctx.err(format!("adds shapes {:?} and {:?}; they must be equal", x.shape, ins[1].shape)));
            }
            Ok((Op::Add, x.shape.clone(), F32))
        }
        "max_pool2d" => {
            float_in(x)?;
            rank(x, 4)?;
            let (window, stride, padding) = (ctx.pair("window")?, ctx.pair("stride")?, ctx.padding("padding")?);
            if padding[0][0] >= window[0] || padding[0][1] >= window[0] || padding[1][0] >= window[1] || padding[1][1] >= window[1] {
                return Err(ctx.err("padding must be smaller than the window"));
            }
            let h = window_out(ctx, x.shape[1], padding[0], window[0], stride[0])?;
            let w = window_out(ctx, x.shape[2], padding[1], window[1], stride[1])?;
            Ok((Op::MaxPool2d { window, stride, padding }, vec![x.shape[0], h, w, x.shape[3]], F32))
        }
        "global_avg_pool" => {
            float_in(x)?;
            rank(x, 4)?;
            if x.shape[1] == 0 || x.shape[2] == 0 {
                return Err(ctx.err("pools over an empty image"));
            }
            Ok((Op::GlobalAvgPool, vec![x.shape[0], x.shape[3]], F32))
        }
        "embedding" => {
            if x.dtype != I32 {
                return Err(ctx.err("ids must be i32"));
            }
            let table = ctx.param("table", &[F32])?;
            let &[_, width] = ctx.shape_of(&table) else { return Err(ctx.err("table must be (vocab, width)")) };
            let mut shape = x.shape.clone();
            shape.push(width);
            Ok((Op::Embedding { table }, shape, F32))
        }
        "add_positions" => {
            float_in(x)?;
            rank(x, 3)?;
            let table = ctx.param("table", &[F32])?;
            match ctx.shape_of(&table) {
                &[p, c] if c == x.shape[2] && x.shape[1] <= p => {}
                s => return Err(ctx.err(format!("table of shape {s:?} does not cover {:?}", x.shape))),
            }
            Ok((Op::AddPositions { table }, x.shape.clone(), F32))
        }
        "layer_norm" => {
            float_in(x)?;
            let scale = ctx.param("scale", &[F32])?;
            let bias = ctx.optional_param("bias", &[F32])?;
            vector(ctx, &Some(scale.clone()), last)?;
            vector(ctx, &bias, last)?;
            let eps = ctx.float(ctx.attr("eps")?, "eps")?;
            if eps <= 0.0 {
                return Err(ctx.err("eps must be > 0"));
            }
            Ok((Op::LayerNorm { scale, bias, eps: eps as f32 }, x.shape.clone(), F32))
        }
        "causal_attention" => {
            float_in(x)?;
            rank(x, 3)?;
            let heads = ctx.uint(ctx.attr("heads")?, "heads")?;
            let scale = ctx.float(ctx.attr("scale")?, "scale")? as f32;
            let core = ctx.core()?;
            if heads == 0 || !x.shape[2].is_multiple_of(3) || !(x.shape[2] / 3).is_multiple_of(heads) {
                return Err(ctx.err(format!("qkv width {} is not 3·heads·head_dim for {heads} heads", x.shape[2])));
            }
            Ok((Op::CausalAttention { heads, scale, core }, vec![x.shape[0], x.shape[1], x.shape[2] / 3], F32))
        }
        other => Err(ctx.err(format!("unknown op {other:?}"))),
    }
}

fn arity(op: &str) -> usize {
    if op == "add" { 2 } else { 1 }
}

impl Graph {
    /// For each value, the index of the last step that reads it
    /// (`usize::MAX` for graph outputs and values never read): where a run
    /// may free it.
    pub fn last_use(&self) -> Vec<usize> {
        let mut last_use = vec![usize::MAX; self.values.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for &v in &step.inputs {
                last_use[v] = i;
            }
        }
        for &o in &self.outputs {
            last_use[o] = usize::MAX;
        }
        last_use
    }

    /// Validates the graph against the tensor table (FORMAT.md §6).
    pub fn build(def: &GraphDef, tensors: &HashMap<String, TensorInfo>) -> Result<Graph, FormatError> {
        let mut values = Vec::with_capacity(def.values.len());
        let mut index = HashMap::with_capacity(def.values.len());
        for v in &def.values {
            let dtype = match v.dtype.as_str() {
                "f32" => Dtype::F32,
                "i32" => Dtype::I32,
                d => return Err(FormatError::Graph(format!("value {:?}: dtype {d:?} is not f32 or i32", v.name))),
            };
            let shape: Vec<usize> = v.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>()
                .map_err(|_| FormatError::Graph(format!("value {:?}: dimension too large", v.name)))?;
            match shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
                Some(n) if n <= MAX_VALUE_ELEMENTS => {}
                _ => return Err(FormatError::Graph(format!("value {:?}: shape {shape:?} holds more than {MAX_VALUE_ELEMENTS} elements", v.name))),
            }
            if index.insert(v.name.clone(), values.len()).is_some() {
                return Err(FormatError::Graph(format!("value {:?} is declared twice", v.name)));
            }
            values.push(ValueInfo { name: v.name.clone(), dtype, shape });
        }
        let lookup = |name: &str, what: &str| index.get(name).copied().ok_or_else(|| FormatError::Graph(format!("{what} {name:?} is not a declared value")));
        let mut defined = vec![false; values.len()];
        let inputs: Vec<usize> = def.inputs.iter().map(|n| lookup(n, "graph input")).collect::<Result<_, _>>()?;
        for &i in &inputs {
            defined[i] = true;
        }
        let mut steps = Vec::with_capacity(def.nodes.len());
        for (i, node) in def.nodes.iter().enumerate() {
            let ctx = NodeCtx { node, index: i, tensors };
            if node.inputs.len() != arity(&node.op) || node.outputs.len() != 1 {
                return Err(ctx.err(format!("takes {} inputs and gives 1 output, got {} and {}", arity(&node.op), node.inputs.len(), node.outputs.len())));
            }
            let ins: Vec<usize> = node.inputs.iter().map(|n| lookup(n, "input")).collect::<Result<_, _>>()?;
            if let Some(&u) = ins.iter().find(|&&u| !defined[u]) {
                return Err(ctx.err(format!("input {:?} is not defined before use", values[u].name)));
            }
            let out = lookup(&node.outputs[0], "output")?;
            if defined[out] {
                return Err(ctx.err(format!("value {:?} is produced twice", values[out].name)));
            }
            let known = ["weight", "bias", "scale", "shift", "table"];
            if let Some(role) = node.params.keys().find(|r| !known.contains(&r.as_str())) {
                return Err(ctx.err(format!("has no param {role:?}")));
            }
            let in_values: Vec<&ValueInfo> = ins.iter().map(|&u| &values[u]).collect();
            let (op, shape, dtype) = infer(&ctx, &in_values)?;
            if values[out].shape != shape || values[out].dtype != dtype {
                return Err(ctx.err(format!(
                    "declares {:?} {} {:?} but computes {} {shape:?}",
                    values[out].name, values[out].dtype.name(), values[out].shape, dtype.name()
                )));
            }
            defined[out] = true;
            steps.push(Step { name: node.name.clone(), op, inputs: ins, output: out });
        }
        let outputs: Vec<usize> = def.outputs.iter().map(|n| lookup(n, "graph output")).collect::<Result<_, _>>()?;
        if let Some(&o) = outputs.iter().find(|&&o| !defined[o]) {
            return Err(FormatError::Graph(format!("graph output {:?} is never produced", values[o].name)));
        }
        Ok(Graph { values, inputs, outputs, steps })
    }
}
