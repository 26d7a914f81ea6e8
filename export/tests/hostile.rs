//! Hostile files built from FORMAT.md: each validates and runs within its
//! caps, or is refused with an error that names what is wrong; none panics.

use std::sync::Arc;

use lumijax_export::{Array, FormatError, Limits, Mode, Model, RunError, Runtime};
use rmpv::Value as V;

fn map(entries: Vec<(&str, V)>) -> V {
    V::Map(entries.into_iter().map(|(k, v)| (V::from(k), v)).collect())
}

fn ints(xs: &[u64]) -> V {
    V::Array(xs.iter().map(|&x| V::from(x)).collect())
}

fn names(xs: &[&str]) -> V {
    V::Array(xs.iter().map(|&x| V::from(x)).collect())
}

/// The `core` attribute of a photonic op on a bank coupled by `coupling`.
fn core(coupling: &str, compensation: Option<&str>) -> V {
    map(vec![
        ("input_bits", V::from(8)),
        ("output_bits", V::from(8)),
        ("input_range", V::Nil),
        ("output_range", V::Nil),
        ("input_signed", V::Nil),
        ("channel_spacing_nm", V::from(0.8)),
        ("snr", V::from(1000.0)),
        ("slot_order", V::Nil),
        ("coupling", V::from(coupling)),
        ("compensation", compensation.map_or(V::Nil, V::from)),
    ])
}

fn identity(n: usize) -> Vec<f32> {
    (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect()
}

/// A `.lmn` file under construction: f32 tensors, values and nodes.
#[derive(Default)]
struct File {
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
    values: Vec<V>,
    nodes: Vec<V>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    hardware: Vec<(&'static str, V)>,
}

impl File {
    fn tensor(mut self, name: &str, shape: &[u64], data: Vec<f32>) -> Self {
        self.tensors.push((name.into(), shape.to_vec(), data));
        self
    }

    fn value(mut self, name: &str, dtype: &str, shape: &[u64]) -> Self {
        self.values.push(map(vec![("name", V::from(name)), ("dtype", V::from(dtype)), ("shape", ints(shape))]));
        self
    }

    fn input(mut self, name: &str, shape: &[u64]) -> Self {
        self.inputs.push(name.into());
        self.value(name, "f32", shape)
    }

    fn node(mut self, op: &str, input: &[&str], output: (&str, &[u64]), params: Vec<(&str, V)>, attrs: Vec<(&str, V)>) -> Self {
        let name = format!("n{}", self.nodes.len());
        self.nodes.push(map(vec![
            ("name", V::from(name.as_str())),
            ("op", V::from(op)),
            ("inputs", names(input)),
            ("outputs", names(&[output.0])),
            ("params", map(params)),
            ("attrs", map(attrs)),
        ]));
        self.value(output.0, "f32", output.1)
    }

    fn output(mut self, name: &str) -> Self {
        self.outputs.push(name.into());
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let mut entries = Vec::new();
        for (name, shape, values) in &self.tensors {
            data.resize(data.len().next_multiple_of(64), 0);
            entries.push(map(vec![
                ("name", V::from(name.as_str())),
                ("dtype", V::from("f32")),
                ("shape", ints(shape)),
                ("offset", V::from(data.len() as u64)),
                ("nbytes", V::from(4 * values.len() as u64)),
            ]));
            data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        data.resize(data.len().next_multiple_of(64), 0);
        let mut hardware = vec![("num_channels", V::from(4)), ("channel_spacing_nm", V::from(0.8))];
        hardware.extend(self.hardware.iter().cloned());
        let header = map(vec![
            ("format", V::from("lmn")),
            ("producer", V::from("hostile")),
            (
                "graph",
                map(vec![
                    ("inputs", V::Array(self.inputs.iter().map(|s| V::from(s.as_str())).collect())),
                    ("outputs", V::Array(self.outputs.iter().map(|s| V::from(s.as_str())).collect())),
                    ("values", V::Array(self.values.clone())),
                    ("nodes", V::Array(self.nodes.clone())),
                ]),
            ),
            ("tensors", V::Array(entries)),
            ("hardware", map(hardware)),
            ("metadata", map(vec![])),
            ("checksum", map(vec![("algorithm", V::from("crc32")), ("value", V::from(crc32fast::hash(&data)))])),
        ]);
        let mut raw = Vec::new();
        rmpv::encode::write_value(&mut raw, &header).unwrap();
        let mut file = b"LMN\0".to_vec();
        file.extend(2u16.to_le_bytes());
        file.extend(0u16.to_le_bytes());
        file.extend((raw.len() as u64).to_le_bytes());
        file.extend(raw);
        file.resize(file.len().next_multiple_of(64), 0);
        file.extend(data);
        file
    }
}

fn open(file: &File) -> Result<Runtime, FormatError> {
    Model::from_bytes(&file.bytes()).map(|m| Runtime::new(Arc::new(m)))
}

fn refused(file: &File, message: &str) {
    match open(file) {
        Ok(_) => panic!("accepted a file that should be refused ({message})"),
        Err(e) => assert!(e.to_string().contains(message), "{e}"),
    }
}

fn floats(a: &Array) -> &[f32] {
    match a {
        Array::F32 { data, .. } => data,
        Array::I32 { .. } => panic!("float output expected"),
    }
}

const MODES: [Mode; 3] = [Mode::Ideal, Mode::Expected, Mode::Noisy { seed: 3 }];

/// A linear layer `in → out` on a 4-channel bank, weights `w`, bias `b`.
fn linear(file: File, x: (&str, &[u64]), y: (&str, &[u64]), w: Vec<f32>, b: Vec<f32>, compensation: Option<(&[u64], Vec<f32>)>) -> File {
    let (out, k) = (b.len() as u64, x.1.last().copied().unwrap());
    let mut file = file.tensor("w", &[out, k], w).tensor("b", &[out], b).tensor("coupling", &[4, 4], identity(4));
    let mut name = None;
    if let Some((shape, values)) = compensation {
        file = file.tensor("compensation", shape, values);
        name = Some("compensation");
    }
    file.node("linear", &[x.0], y, vec![("weight", V::from("w")), ("bias", V::from("b"))], vec![("core", core("coupling", name))])
}

#[test]
fn a_linear_with_a_zero_sized_axis_then_a_transpose_runs() {
    // Zero input features: y is the bias in every row, then transposed.
    let file = linear(File::default().input("x", &[3, 0]), ("x", &[3, 0]), ("y", &[3, 2]), vec![], vec![1.5, -2.0], None)
        .node("transpose", &["y"], ("z", &[2, 3]), vec![], vec![("perm", ints(&[1, 0]))])
        .output("z");
    let runtime = open(&file).unwrap();
    for mode in MODES {
        let out = runtime.run(&runtime.zero_inputs(), mode).unwrap();
        assert_eq!(floats(&out[0]), &[1.5, 1.5, 1.5, -2.0, -2.0, -2.0], "{mode:?}");
    }
    // Zero rows: an empty result of the declared shape.
    let file = linear(File::default().input("x", &[0, 3]), ("x", &[0, 3]), ("y", &[0, 2]), vec![0.5; 6], vec![1.0, 2.0], None)
        .node("transpose", &["y"], ("z", &[2, 0]), vec![], vec![("perm", ints(&[1, 0]))])
        .output("z");
    let runtime = open(&file).unwrap();
    for mode in MODES {
        let out = runtime.run(&runtime.zero_inputs(), mode).unwrap();
        assert_eq!(out[0].shape(), &[2, 0]);
    }
}

#[test]
fn a_compensation_of_another_size_than_its_coupling_is_refused() {
    for (shape, values) in [(&[1u64, 1][..], vec![1.0]), (&[8, 8][..], identity(8))] {
        let file = linear(File::default().input("x", &[1, 3]), ("x", &[1, 3]), ("y", &[1, 2]), vec![0.5; 6], vec![0.0; 2], Some((shape, values))).output("y");
        refused(&file, "core.compensation \"compensation\" is");
    }
    // Attention reads the same core attribute.
    let file = File::default()
        .input("qkv", &[1, 4, 6])
        .tensor("coupling", &[4, 4], identity(4))
        .tensor("compensation", &[2, 2], identity(2))
        .node("causal_attention", &["qkv"], ("y", &[1, 4, 2]), vec![], vec![("heads", V::from(1)), ("scale", V::from(0.5)), ("core", core("coupling", Some("compensation")))])
        .output("y");
    refused(&file, "they must be the same n×n");
}

#[test]
fn attention_over_long_sequences_stays_within_the_caps() {
    // T = 40 000: the full T×T scores would be 6.4 GB. In ideal mode the
    // runtime needs only blocks of rows; the hardware modes, whose
    // converters see each head's whole score matrix, are refused.
    let t = 40_000;
    let file = File::default()
        .input("qkv", &[1, t, 3])
        .tensor("coupling", &[4, 4], identity(4))
        .node("causal_attention", &["qkv"], ("y", &[1, t, 1]), vec![], vec![("heads", V::from(1)), ("scale", V::from(1.0)), ("core", core("coupling", None))])
        .output("y");
    let runtime = open(&file).unwrap();
    let cost = &runtime.model().cost;
    assert!(cost.ideal.memory_bytes < 64 << 20, "{cost:?}");
    assert!(cost.hardware.memory_bytes > 3 * t * t * 4, "{cost:?}");
    for mode in [Mode::Expected, Mode::Noisy { seed: 0 }] {
        let err = runtime.run(&runtime.zero_inputs(), mode).unwrap_err();
        assert!(matches!(err, RunError::Limit(_)), "{err}");
        assert!(err.to_string().contains("(\"n0\", causal_attention)") && err.to_string().contains("max_memory_bytes"), "{err}");
    }
    // A caller who means it raises the cap, and a lower cap refuses even ideal mode.
    let bytes = file.bytes();
    let generous = Limits { max_memory_bytes: 1 << 40, ..Limits::default() };
    assert!(Model::from_bytes_with(&bytes, generous).unwrap().cost.hardware.check(&runtime.model().graph, &generous, "noisy").is_ok());
    let tight = Limits { max_memory_bytes: 1 << 20, ..Limits::default() };
    let err = Model::from_bytes_with(&bytes, tight).err().unwrap().to_string();
    assert!(err.contains("over the limits") && err.contains("past the cap of 1048576 bytes"), "{err}");
}

#[test]
fn row_blocked_attention_matches_the_textbook_formula() {
    // 2 sequences, 2 heads of width 3, 300 tokens: blocks of 218 rows.
    let (n, t, heads, d) = (2usize, 300usize, 2usize, 3usize);
    let c = heads * d;
    let qkv: Vec<f32> = (0..n * t * 3 * c).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0).collect();
    let file = File::default()
        .input("qkv", &[n as u64, t as u64, 3 * c as u64])
        .tensor("coupling", &[4, 4], identity(4))
        .node("causal_attention", &["qkv"], ("y", &[n as u64, t as u64, c as u64]), vec![], vec![("heads", V::from(heads as u64)), ("scale", V::from(0.7)), ("core", core("coupling", None))])
        .output("y");
    let runtime = open(&file).unwrap();
    let out = runtime.run(&[Array::F32 { shape: vec![n, t, 3 * c], data: qkv.clone() }], Mode::Ideal).unwrap();
    let at = |b: usize, s: usize, part: usize, h: usize, j: usize| f64::from(qkv[(b * t + s) * 3 * c + part * c + h * d + j]);
    let mut worst = 0.0f64;
    for b in 0..n {
        for h in 0..heads {
            for s in 0..t {
                let logits: Vec<f64> = (0..=s).map(|r| 0.7 * (0..d).map(|j| at(b, s, 0, h, j) * at(b, r, 1, h, j)).sum::<f64>()).collect();
                let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                for j in 0..d {
                    let want = (0..=s).map(|r| weights[r] * at(b, r, 2, h, j)).sum::<f64>() / total;
                    let got = f64::from(floats(&out[0])[(b * t + s) * c + h * d + j]);
                    worst = worst.max((got - want).abs());
                }
            }
        }
    }
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn a_convolution_whose_patches_would_not_fit_runs_in_ideal_mode_and_is_refused_on_the_core() {
    // A 200×200 kernel over a 1×1 input padded by 199: 40 000 output pixels
    // of 40 000 patch entries, 6.4 GB as one patch matrix.
    let file = File::default()
        .input("x", &[1, 1, 1, 1])
        .tensor("w", &[1, 40_000], vec![0.25; 40_000])
        .tensor("coupling", &[4, 4], identity(4))
        .node(
            "conv2d",
            &["x"],
            ("y", &[1, 200, 200, 1]),
            vec![("weight", V::from("w"))],
            vec![("kernel", ints(&[200, 200])), ("stride", ints(&[1, 1])), ("padding", V::Array(vec![ints(&[199, 199]), ints(&[199, 199])])), ("core", core("coupling", None))],
        )
        .output("y");
    let runtime = open(&file).unwrap();
    assert!(runtime.model().cost.ideal.memory_bytes < 64 << 20, "{:?}", runtime.model().cost);
    let err = runtime.run(&runtime.zero_inputs(), Mode::Expected).unwrap_err().to_string();
    assert!(err.contains("needs") && err.contains("(\"n0\", conv2d)"), "{err}");
}

#[test]
fn max_pooling_a_padded_pixel_takes_the_work_of_its_taps() {
    // A 1×1 input padded out to a 1000×1000 output by a 1000×1000 window:
    // every window holds the one pixel.
    let file = File::default()
        .input("x", &[1, 1, 1, 2])
        .node(
            "max_pool2d",
            &["x"],
            ("y", &[1, 1000, 1000, 2]),
            vec![],
            vec![("window", ints(&[1000, 1000])), ("stride", ints(&[1, 1])), ("padding", V::Array(vec![ints(&[999, 999]), ints(&[999, 999])]))],
        )
        .output("y");
    let runtime = open(&file).unwrap();
    assert!(runtime.model().cost.ideal.work < 1 << 26, "{:?}", runtime.model().cost);
    let start = std::time::Instant::now();
    let out = runtime.run(&[Array::F32 { shape: vec![1, 1, 1, 2], data: vec![-3.0, 7.0] }], Mode::Ideal).unwrap();
    assert!(floats(&out[0]).chunks_exact(2).all(|p| p == [-3.0, 7.0]));
    assert!(start.elapsed().as_secs() < 10);
}

#[test]
fn the_work_cap_refuses_a_file_past_it() {
    let file = File::default()
        .input("x", &[64, 4096])
        .tensor("w", &[4096, 4096], vec![0.0; 4096 * 4096])
        .tensor("coupling", &[4, 4], identity(4))
        .node("linear", &["x"], ("y", &[64, 4096]), vec![("weight", V::from("w"))], vec![("core", core("coupling", None))])
        .output("y");
    let bytes = file.bytes();
    let work = Model::from_bytes(&bytes).unwrap().cost.ideal.work;
    assert_eq!(work, 64 * 4096 * 4096);
    let err = Model::from_bytes_with(&bytes, Limits { max_work: work - 1, ..Limits::default() }).err().unwrap().to_string();
    assert!(err.contains(&format!("takes {work} multiply-adds (most at node 0 (\"n0\", linear)), past the cap of {}", work - 1)), "{err}");
}

#[test]
fn a_header_of_millions_of_values_is_refused_before_it_is_decoded() {
    let mut file = File::default().input("x", &[1]).node("relu", &["x"], ("y", &[1]), vec![], vec![]).output("y");
    file.hardware.push(("padding", V::Array(vec![V::Nil; 5_000_000])));
    refused(&file, "more than 4194304 msgpack values");
    // A node attribute the same way.
    let file = File::default().input("x", &[1]).node("relu", &["x"], ("y", &[1]), vec![], vec![("extra", V::Array(vec![V::Nil; 5_000_000]))]).output("y");
    refused(&file, "more than 4194304 msgpack values");
}

#[test]
fn the_hardware_map_is_type_checked() {
    for (field, value, message) in [
        ("num_channels", V::from("x"), "hardware.num_channels must be a non-negative integer, got a string"),
        ("dac_bits", V::from(-3), "hardware.dac_bits must be a non-negative integer, got -3"),
        ("quality_factor", V::from(f64::NAN), "hardware.quality_factor must be a finite number, got a non-finite number"),
    ] {
        let mut file = File::default().input("x", &[1]).node("relu", &["x"], ("y", &[1]), vec![], vec![]).output("y");
        file.hardware.push((field, value));
        refused(&file, message);
    }
}

#[test]
fn a_wide_3x3_convolution_runs_on_any_thread_count() {
    // 64 → 5121 channels on a 8×16 image runs as Winograd; 40 threads once
    // cut its output channels into an empty last block.
    let (h, w, c, k) = (8usize, 16usize, 64usize, 5121usize);
    let weight: Vec<f32> = (0..k * 9 * c).map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0).collect();
    let x: Vec<f32> = (0..h * w * c).map(|i| ((i * 17 % 89) as f32 - 44.0) / 89.0).collect();
    let file = File::default()
        .input("x", &[1, h as u64, w as u64, c as u64])
        .tensor("w", &[k as u64, 9 * c as u64], weight.clone())
        .tensor("coupling", &[4, 4], identity(4))
        .node(
            "conv2d",
            &["x"],
            ("y", &[1, h as u64, w as u64, k as u64]),
            vec![("weight", V::from("w"))],
            vec![("kernel", ints(&[3, 3])), ("stride", ints(&[1, 1])), ("padding", V::Array(vec![ints(&[1, 1]), ints(&[1, 1])])), ("core", core("coupling", None))],
        )
        .output("y");
    let bytes = file.bytes();
    let input = [Array::F32 { shape: vec![1, h, w, c], data: x.clone() }];
    for threads in [2, 40] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let out = pool.install(|| Runtime::new(Arc::new(Model::from_bytes(&bytes).unwrap())).run(&input, Mode::Ideal)).unwrap();
        let y = floats(&out[0]);
        // The direct sum at a corner and the centre, for the first and last channels.
        for (oy, ox) in [(0usize, 0usize), (4, 8), (7, 15)] {
            for o in [0, 1, k - 65, k - 1] {
                let mut want = 0.0f64;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) = (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for ch in 0..c {
                            want += f64::from(x[((iy as usize) * w + ix as usize) * c + ch]) * f64::from(weight[o * 9 * c + (ky * 3 + kx) * c + ch]);
                        }
                    }
                }
                let got = f64::from(y[(oy * w + ox) * k + o]);
                assert!((got - want).abs() < 1e-4, "{threads} threads, pixel ({oy}, {ox}) channel {o}: {got} vs {want}");
            }
        }
    }
}
