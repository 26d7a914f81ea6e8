//! What running a graph costs, computed from its declared shapes before
//! anything runs (FORMAT.md §6.2): the peak memory of a run and its work,
//! with checked arithmetic, against caps the caller may raise.
//!
//! Memory counts what the runtime holds: the weights it prepares once (and
//! programs onto their banks in the hardware modes), every value from the
//! step that computes it to its last use, the copy of a value an op takes
//! while a later op still needs it, and each op's scratch (patch matrices,
//! Winograd tiles, attention scores, converter copies). Work counts
//! multiply-adds for products and [`ELEMENT_WORK`] per element for every
//! other pass over memory.

use std::collections::HashMap;

use lumijax_native::conv;

use crate::error::FormatError;
use crate::graph::{Graph, Op, Step};
use crate::runtime::{attention_rows_per_task, conv_path, ConvPath};
use crate::tensor::TensorInfo;
use crate::winograd;

/// Work charged per element of an op that is not a product: a pass over
/// memory costs about as much as this many multiply-adds of a GEMM.
pub const ELEMENT_WORK: u64 = 8;

/// Default cap on the memory of a run: 4 GiB.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Default cap on the work of a run: 2⁴⁰ multiply-adds (tens of seconds on
/// two cores).
pub const DEFAULT_MAX_WORK: u64 = 1 << 40;

/// Caps on one run of a file, checked against its [`Cost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Peak bytes a run may hold: prepared weights, values and scratch.
    pub max_memory_bytes: u64,
    /// Multiply-adds (and [`ELEMENT_WORK`] per element of other ops) a run may take.
    pub max_work: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES, max_work: DEFAULT_MAX_WORK }
    }
}

/// What one mode of running takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Peak bytes held during a run, prepared weights included.
    pub memory_bytes: u64,
    /// Node (index) at whose step the peak is reached; `None` when it is the prepared weights.
    pub memory_node: Option<usize>,
    /// Total work of a run.
    pub work: u64,
    /// Node (index) with the most work.
    pub work_node: Option<usize>,
}

/// The cost of a graph in `ideal` mode and in the hardware modes
/// (`expected`, `noisy`: converters, programmed banks, full attention scores).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cost {
    pub ideal: Usage,
    pub hardware: Usage,
}

fn overflow(what: &str) -> FormatError {
    FormatError::Limit(format!("the {what} of a run overflows 64 bits"))
}

fn mul(factors: &[usize]) -> Result<u64, FormatError> {
    factors.iter().try_fold(1u64, |a, &f| a.checked_mul(f as u64)).ok_or_else(|| overflow("size"))
}

/// Bytes of `n` f32 elements.
fn floats(factors: &[usize]) -> Result<u64, FormatError> {
    mul(factors)?.checked_mul(4).ok_or_else(|| overflow("memory"))
}

/// Bytes and work of one step beyond its inputs and output.
struct StepCost {
    scratch: u64,
    work: u64,
    /// Bytes kept after the step (weights programmed onto a bank).
    kept: u64,
}

fn add(a: u64, b: u64, what: &str) -> Result<u64, FormatError> {
    a.checked_add(b).ok_or_else(|| overflow(what))
}

/// `a·b` of two figures of work.
fn times(a: u64, b: u64) -> Result<u64, FormatError> {
    a.checked_mul(b).ok_or_else(|| overflow("work"))
}

/// Memory and work of `step` in `ideal` mode (`hardware = false`) or the hardware modes.
fn step_cost(graph: &Graph, tensors: &HashMap<String, TensorInfo>, step: &Step, hardware: bool, threads: usize) -> Result<StepCost, FormatError> {
    let x = &graph.values[step.inputs[0]].shape;
    let y = &graph.values[step.output].shape;
    let out_elements = mul(y)?;
    let elementwise = |factor: u64| -> Result<StepCost, FormatError> {
        Ok(StepCost { scratch: 0, work: times(out_elements, factor * ELEMENT_WORK)?, kept: 0 })
    };
    // Programming a (rows, k) weight onto banks of n channels: the
    // dequantized, slot-ordered, compensated, coupled and transposed copies,
    // and two per-tile products of n·k·rows multiply-adds (plus inverses).
    let program = |rows: usize, k: usize, n: usize| -> Result<(u64, u64), FormatError> {
        let len = n.min(k);
        let work = add(mul(&[2, rows, k, len])?, mul(&[2, len, len, len])?, "work")?;
        Ok((floats(&[5, rows, k])?, work))
    };
    let channels = |core: &crate::graph::Core| tensors[&core.coupling].shape[0];
    Ok(match &step.op {
        Op::Linear { weight, core, .. } => {
            let (out, k) = (tensors[weight].shape[0], tensors[weight].shape[1]);
            let rows = (mul(x)? / (k.max(1) as u64)) as usize;
            let work = mul(&[rows, k, out])?;
            if hardware {
                let (transient, programming) = program(out, k, channels(core))?;
                // The slot-ordered and the converted copies of x.
                let scratch = transient.max(floats(&[2, rows, k])?);
                StepCost { scratch, work: add(work, programming, "work")?, kept: floats(&[out, k])? }
            } else {
                StepCost { scratch: 0, work, kept: 0 }
            }
        }
        Op::Conv2d { weight, kernel, stride, core, .. } => {
            let (cout, width) = (tensors[weight].shape[0], tensors[weight].shape[1]);
            let rows = y[0] * y[1] * y[2];
            let work = mul(&[rows, width, cout])?;
            if hardware {
                let (transient, programming) = program(cout, width, channels(core))?;
                // The patch matrix, its slot-ordered and converted copies.
                let pointwise = *kernel == [1, 1] && *stride == [1, 1];
                let patches = floats(&[if pointwise { 2 } else { 3 }, rows, width])?;
                StepCost { scratch: transient.max(patches), work: add(work, programming, "work")?, kept: floats(&[cout, width])? }
            } else {
                let scratch = match conv_path(x, y, *kernel, *stride, threads) {
                    ConvPath::Pointwise => 0,
                    ConvPath::Winograd => mul(&[winograd::scratch_elements(y, x[3], threads), 4])?,
                    ConvPath::Patches(conv::Path::Whole) => floats(&[rows, width])?,
                    ConvPath::Patches(conv::Path::Blocked) => {
                        let (blocks, block) = conv::blocks(rows, width, threads);
                        floats(&[threads.min(blocks), block, width])?
                    }
                };
                StepCost { scratch, work, kept: 0 }
            }
        }
        Op::CausalAttention { heads, core, .. } => {
            let (n, t, c) = (x[0], x[1], x[2] / 3);
            let d = c / heads.max(&1);
            let groups = n * heads;
            // q, k, v in per-head layouts, the mixed heads and the output.
            let split = floats(&[5, n, t, c])?;
            if hardware {
                // Each head programs k (T, d) and vᵀ (d, T) onto banks.
                let (transient, programming) = program(d, t, channels(core))?;
                // Per head: the scores, their converted copy and the product's output.
                let scratch = add(split, add(floats(&[3, t, t])?, transient, "memory")?, "memory")?;
                let (products, softmax) = (mul(&[2, groups, t, t, d])?, times(mul(&[groups, t, t])?, ELEMENT_WORK)?);
                let work = add(add(products, times(mul(&[2, groups])?, programming)?, "work")?, softmax, "work")?;
                StepCost { scratch, work, kept: 0 }
            } else {
                let rows = attention_rows_per_task(t);
                let tasks = groups * t.div_ceil(rows.max(1));
                let scratch = add(split, floats(&[threads.min(tasks), rows, t])?, "memory")?;
                // Causal: query s multiplies s + 1 keys, twice (scores and mixing).
                let visible = mul(&[t, t + 1])? / 2;
                let work = times(times(visible, groups as u64)?, 2 * d as u64 + ELEMENT_WORK)?;
                StepCost { scratch, work, kept: 0 }
            }
        }
        Op::MaxPool2d { window, .. } => {
            // The window clipped to the image.
            let taps = window[0].min(x[1]) * window[1].min(x[2]);
            elementwise(taps.max(1) as u64)?
        }
        Op::GlobalAvgPool => StepCost { scratch: 0, work: times(mul(x)?, ELEMENT_WORK)?, kept: 0 },
        Op::LayerNorm { .. } => elementwise(3)?,
        Op::Transpose { .. } | Op::Reshape { .. } | Op::ScaleShift { .. } | Op::Relu | Op::Gelu { .. } | Op::Add | Op::Embedding { .. } | Op::AddPositions { .. } => elementwise(1)?,
    })
}

/// Bytes the runtime prepares before the first run: each weight transposed
/// to `(in, out)`, or taken to the Winograd domain (16/9 of its f32 size, at
/// most 8 bytes an element), once per tensor, and a dequantized copy of it
/// on the way (4 bytes an element).
fn prepared_bytes(graph: &Graph, tensors: &HashMap<String, TensorInfo>) -> Result<u64, FormatError> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for step in &graph.steps {
        let (Op::Linear { weight, .. } | Op::Conv2d { weight, .. }) = &step.op else { continue };
        if !seen.insert(weight) {
            continue;
        }
        let elements = mul(&tensors[weight].shape)?;
        total = add(total, elements.checked_mul(8 + 4).ok_or_else(|| overflow("memory"))?, "memory")?;
    }
    Ok(total)
}

fn usage(graph: &Graph, tensors: &HashMap<String, TensorInfo>, hardware: bool, threads: usize) -> Result<Usage, FormatError> {
    let last_use = graph.last_use();
    let bytes = |v: usize| mul(&graph.values[v].shape).map(|n| n * 4);
    let prepared = prepared_bytes(graph, tensors)?;
    let mut usage = Usage { memory_bytes: prepared, ..Usage::default() };
    let mut kept = 0u64;
    // The caller's inputs and the runtime's copies of them.
    let mut live = graph.inputs.iter().try_fold(0u64, |a, &v| add(a, 2 * bytes(v)?, "memory"))?;
    let mut busiest = 0u64;
    for (i, step) in graph.steps.iter().enumerate() {
        let cost = step_cost(graph, tensors, step, hardware, threads)?;
        // An input still needed later is copied for the op.
        let mut copies = 0u64;
        for (k, &v) in step.inputs.iter().enumerate() {
            if last_use[v] != i || step.inputs[k + 1..].contains(&v) {
                copies = add(copies, bytes(v)?, "memory")?;
            }
        }
        let during = [prepared, kept, live, copies, cost.scratch, bytes(step.output)?].into_iter().try_fold(0u64, |a, b| add(a, b, "memory"))?;
        if during > usage.memory_bytes {
            usage.memory_bytes = during;
            usage.memory_node = Some(i);
        }
        usage.work = add(usage.work, cost.work, "work")?;
        if cost.work > busiest {
            busiest = cost.work;
            usage.work_node = Some(i);
        }
        kept = add(kept, cost.kept, "memory")?;
        live = add(live, bytes(step.output)?, "memory")?;
        for &v in &step.inputs {
            if last_use[v] == i && !graph.inputs.contains(&v) {
                live -= bytes(v)?.min(live);
            }
        }
    }
    Ok(usage)
}

/// The cost of running `graph` in each mode, with work split over `threads`.
pub fn cost(graph: &Graph, tensors: &HashMap<String, TensorInfo>, threads: usize) -> Result<Cost, FormatError> {
    Ok(Cost { ideal: usage(graph, tensors, false, threads)?, hardware: usage(graph, tensors, true, threads)? })
}

impl Usage {
    /// `Err` naming the node, the figure and the cap when this usage is past `limits`.
    pub fn check(&self, graph: &Graph, limits: &Limits, mode: &str) -> Result<(), String> {
        let node = |i: Option<usize>| match i {
            Some(i) => format!("node {i} ({:?}, {})", graph.steps[i].name, graph.steps[i].op.name()),
            None => "the prepared weights".to_string(),
        };
        if self.memory_bytes > limits.max_memory_bytes {
            return Err(format!(
                "a run in {mode} mode needs {} bytes of memory at {}, past the cap of {} bytes (max_memory_bytes)",
                self.memory_bytes,
                node(self.memory_node),
                limits.max_memory_bytes
            ));
        }
        if self.work > limits.max_work {
            return Err(format!(
                "a run in {mode} mode takes {} multiply-adds (most at {}), past the cap of {} (max_work)",
                self.work,
                node(self.work_node),
                limits.max_work
            ));
        }
        Ok(())
    }
}
