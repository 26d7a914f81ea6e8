//! Inputs and outputs of `lmn run` as numpy `.npy` (one array) or `.npz`
//! (arrays by name) files. Shapes and dtypes are checked against the
//! graph before any data is read.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use npyz::{NpyFile, WriterBuilder};

use crate::graph::ValueInfo;
use crate::runtime::Array;
use crate::tensor::Dtype;

fn read_one<R: Read>(npy: NpyFile<R>, want: &ValueInfo, source: &str) -> Result<Array, String> {
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if shape != want.shape {
        return Err(format!("{source}: shape {shape:?}, the model's input {:?} is {:?}", want.name, want.shape));
    }
    if npy.order() != npyz::Order::C {
        return Err(format!("{source}: Fortran-ordered arrays are not supported; save a C-ordered array"));
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(type_str) => type_str.to_string(),
        other => other.descr(),
    };
    let bad = |e: std::io::Error| format!("{source}: {e}");
    match (want.dtype, descr.as_str()) {
        (Dtype::F32, "<f4") => Ok(Array::F32 { shape, data: npy.into_vec::<f32>().map_err(bad)? }),
        (Dtype::F32, "<f8") => Ok(Array::F32 { shape, data: npy.into_vec::<f64>().map_err(bad)?.into_iter().map(|v| v as f32).collect() }),
        (Dtype::I32, "<i4") => Ok(Array::I32 { shape, data: npy.into_vec::<i32>().map_err(bad)? }),
        (Dtype::I32, "<i8") => {
            let wide = npy.into_vec::<i64>().map_err(bad)?;
            let data = wide.into_iter().map(i32::try_from).collect::<Result<Vec<_>, _>>().map_err(|_| format!("{source}: an id does not fit i32"))?;
            Ok(Array::I32 { shape, data })
        }
        (dtype, other) => Err(format!("{source}: dtype {other}, the model's input {:?} takes {}", want.name, dtype.name())),
    }
}

/// Reads the model's inputs from `path`: a `.npy` for a model with one
/// input, or a `.npz` holding every input by name.
pub fn read_inputs(path: &Path, inputs: &[&ValueInfo]) -> Result<Vec<Array>, String> {
    let source = path.display().to_string();
    let is_npz = path.extension().is_some_and(|e| e == "npz");
    if !is_npz {
        if inputs.len() != 1 {
            return Err(format!("the model takes {} inputs; pass an .npz with arrays named {:?}", inputs.len(), inputs.iter().map(|v| &v.name).collect::<Vec<_>>()));
        }
        let file = File::open(path).map_err(|e| format!("{source}: {e}"))?;
        let npy = NpyFile::new(BufReader::new(file)).map_err(|e| format!("{source}: not a .npy file ({e})"))?;
        return Ok(vec![read_one(npy, inputs[0], &source)?]);
    }
    let mut archive = npyz::npz::NpzArchive::open(path).map_err(|e| format!("{source}: not an .npz file ({e})"))?;
    inputs
        .iter()
        .map(|want| {
            let npy = archive
                .by_name(&want.name)
                .map_err(|e| format!("{source}: {e}"))?
                .ok_or_else(|| format!("{source} has no array named {:?}", want.name))?;
            read_one(npy, want, &format!("{source}[{}]", want.name))
        })
        .collect()
}

/// Writes outputs: a `.npy` of the first output, or a `.npz` of all by name.
pub fn write_outputs(path: &Path, names: &[&str], arrays: &[Array]) -> Result<(), String> {
    let source = path.display().to_string();
    let bad = |e: std::io::Error| format!("{source}: {e}");
    if path.extension().is_some_and(|e| e == "npz") {
        let mut npz = npyz::npz::NpzWriter::create(path).map_err(bad)?;
        for (name, array) in names.iter().zip(arrays) {
            let shape: Vec<u64> = array.shape().iter().map(|&d| d as u64).collect();
            match array {
                Array::F32 { data, .. } => {
                    let mut w = npz.array::<f32>(name, Default::default()).map_err(bad)?.default_dtype().shape(&shape).begin_nd().map_err(bad)?;
                    w.extend(data.iter().copied()).map_err(bad)?;
                    w.finish().map_err(bad)?;
                }
                Array::I32 { data, .. } => {
                    let mut w = npz.array::<i32>(name, Default::default()).map_err(bad)?.default_dtype().shape(&shape).begin_nd().map_err(bad)?;
                    w.extend(data.iter().copied()).map_err(bad)?;
                    w.finish().map_err(bad)?;
                }
            }
        }
        return Ok(());
    }
    let array = arrays.first().ok_or("the model has no outputs")?;
    let shape: Vec<u64> = array.shape().iter().map(|&d| d as u64).collect();
    let file = BufWriter::new(File::create(path).map_err(bad)?);
    match array {
        Array::F32 { data, .. } => {
            let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(file).begin_nd().map_err(bad)?;
            w.extend(data.iter().copied()).map_err(bad)?;
            w.finish().map_err(bad)
        }
        Array::I32 { data, .. } => {
            let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(file).begin_nd().map_err(bad)?;
            w.extend(data.iter().copied()).map_err(bad)?;
            w.finish().map_err(bad)
        }
    }
}
