//! Conformance: the fixtures written by lumijax run here as they ran there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lumijax_export::{Array, Mode, Model, Runtime};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn npz(name: &str, array: &str) -> (Vec<usize>, NpzData) {
    let mut archive = npyz::npz::NpzArchive::open(fixture(name)).expect("fixture npz");
    let npy = archive.by_name(array).expect("readable").unwrap_or_else(|| panic!("{name} has no {array}"));
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let data = match npy.dtype() {
        npyz::DType::Plain(t) if t.to_string() == "<i4" => NpzData::I32(npy.into_vec::<i32>().unwrap()),
        _ => NpzData::F32(npy.into_vec::<f32>().unwrap()),
    };
    (shape, data)
}

enum NpzData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

fn input(name: &str, array: &str) -> Array {
    match npz(name, array) {
        (shape, NpzData::F32(data)) => Array::F32 { shape, data },
        (shape, NpzData::I32(data)) => Array::I32 { shape, data },
    }
}

fn relative_error(ours: &Array, reference: &[f32]) -> f32 {
    let Array::F32 { data, .. } = ours else { panic!("float output expected") };
    assert_eq!(data.len(), reference.len());
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    data.iter().zip(reference).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn check(model: &str, input_name: &str, modes: &[(&str, Mode)]) {
    let runtime = Runtime::new(Arc::new(Model::open(fixture(&format!("{model}.lmn"))).expect("valid fixture")));
    let x = input(&format!("{model}.io.npz"), input_name);
    for &(key, mode) in modes {
        let (_, NpzData::F32(reference)) = npz(&format!("{model}.io.npz"), key) else { panic!("float reference") };
        let out = runtime.run(std::slice::from_ref(&x), mode).expect("runs");
        let error = relative_error(&out[0], &reference);
        assert!(error <= 1e-4, "{model} {key}: relative error {error}");
    }
}

#[test]
fn gpt_matches_lumijax_in_ideal_mode() {
    check("gpt", "idx", &[("ideal", Mode::Ideal)]);
}

#[test]
fn resnet_matches_lumijax_in_ideal_and_expected_modes() {
    check("resnet", "x", &[("ideal", Mode::Ideal), ("expected", Mode::Expected)]);
}

#[test]
fn noise_is_seeded() {
    let runtime = Runtime::new(Arc::new(Model::open(fixture("resnet.lmn")).unwrap()));
    let x = input("resnet.io.npz", "x");
    let run = |seed| runtime.run(std::slice::from_ref(&x), Mode::Noisy { seed }).unwrap();
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let expected = runtime.run(std::slice::from_ref(&x), Mode::Expected).unwrap();
    assert_ne!(run(7), expected);
}

#[test]
fn bad_inputs_are_errors() {
    let runtime = Runtime::new(Arc::new(Model::open(fixture("gpt.lmn")).unwrap()));
    let wrong_shape = Array::I32 { shape: vec![2, 11], data: vec![0; 22] };
    let message = runtime.run(&[wrong_shape], Mode::Ideal).unwrap_err().to_string();
    assert!(message.contains("expected i32 [2, 12]"), "{message}");
    let out_of_vocabulary = Array::I32 { shape: vec![2, 12], data: vec![50; 24] };
    let message = runtime.run(&[out_of_vocabulary], Mode::Ideal).unwrap_err().to_string();
    assert!(message.contains("token id 50 is outside the vocabulary of 50"), "{message}");
    let floats = Array::F32 { shape: vec![2, 12], data: vec![0.0; 24] };
    assert!(runtime.run(&[floats], Mode::Ideal).is_err());
}
