//! The `.lmn` runtime on numpy arrays: `lumijax._native.LmnRuntime`.

use std::sync::Arc;

use lumijax_export::{Array, Limits, Mode, Model, Runtime};
use numpy::{PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods, ToPyArray};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::guard::no_panic;

/// A validated `.lmn` model, ready to run.
#[pyclass(frozen, module = "lumijax._native")]
pub struct LmnRuntime {
    runtime: Runtime,
}

fn mode(name: &str, seed: u64) -> PyResult<Mode> {
    match name {
        "ideal" => Ok(Mode::Ideal),
        "expected" => Ok(Mode::Expected),
        "noisy" => Ok(Mode::Noisy { seed }),
        other => Err(PyValueError::new_err(format!("mode = {other:?}: use 'ideal', 'expected' or 'noisy'"))),
    }
}

fn to_array(value: &Bound<'_, PyAny>) -> PyResult<Array> {
    if let Ok(a) = value.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        return Ok(Array::F32 { shape: a.shape().to_vec(), data: a.as_array().iter().copied().collect() });
    }
    if let Ok(a) = value.extract::<PyReadonlyArrayDyn<'_, i32>>() {
        return Ok(Array::I32 { shape: a.shape().to_vec(), data: a.as_array().iter().copied().collect() });
    }
    Err(PyValueError::new_err("inputs must be numpy arrays of float32 or int32"))
}

fn limits(max_memory_bytes: Option<u64>, max_work: Option<u64>) -> Limits {
    let default = Limits::default();
    Limits { max_memory_bytes: max_memory_bytes.unwrap_or(default.max_memory_bytes), max_work: max_work.unwrap_or(default.max_work) }
}

fn ready(model: Result<Model, lumijax_export::FormatError>) -> PyResult<LmnRuntime> {
    let model = model.map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(LmnRuntime { runtime: Runtime::new(Arc::new(model)) })
}

#[pymethods]
impl LmnRuntime {
    /// Opens (memory-maps) and validates an `.lmn` file; a run may take at
    /// most `max_memory_bytes` and `max_work` multiply-adds (None: the defaults).
    #[staticmethod]
    #[pyo3(signature = (path, max_memory_bytes = None, max_work = None))]
    fn open(py: Python<'_>, path: &str, max_memory_bytes: Option<u64>, max_work: Option<u64>) -> PyResult<LmnRuntime> {
        no_panic(|| py.detach(|| ready(Model::open_with(path, limits(max_memory_bytes, max_work)))))
    }

    /// Validates an `.lmn` file held in memory, with the caps of `open`.
    #[staticmethod]
    #[pyo3(signature = (bytes, max_memory_bytes = None, max_work = None))]
    fn from_bytes(py: Python<'_>, bytes: &[u8], max_memory_bytes: Option<u64>, max_work: Option<u64>) -> PyResult<LmnRuntime> {
        no_panic(|| py.detach(|| ready(Model::from_bytes_with(bytes, limits(max_memory_bytes, max_work)))))
    }

    /// `{mode: {"memory_bytes", "work"}}` of a run in `"ideal"` mode and in
    /// the hardware modes (`"hardware"`), from the declared shapes.
    fn cost(&self) -> Vec<(&'static str, Vec<(&'static str, u64)>)> {
        let cost = &self.runtime.model().cost;
        [("ideal", &cost.ideal), ("hardware", &cost.hardware)]
            .into_iter()
            .map(|(mode, usage)| (mode, vec![("memory_bytes", usage.memory_bytes), ("work", usage.work)]))
            .collect()
    }

    /// `[(name, dtype, shape)]` of the graph inputs.
    fn inputs(&self) -> Vec<(String, String, Vec<usize>)> {
        let g = &self.runtime.model().graph;
        g.inputs.iter().map(|&i| (g.values[i].name.clone(), g.values[i].dtype.name().to_string(), g.values[i].shape.clone())).collect()
    }

    /// `[(name, dtype, shape)]` of the graph outputs.
    fn outputs(&self) -> Vec<(String, String, Vec<usize>)> {
        let g = &self.runtime.model().graph;
        g.outputs.iter().map(|&i| (g.values[i].name.clone(), g.values[i].dtype.name().to_string(), g.values[i].shape.clone())).collect()
    }

    /// Runs the graph; inputs are float32/int32 numpy arrays in input order.
    #[pyo3(signature = (inputs, mode = "ideal", seed = 0))]
    fn run<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyList>, mode: &str, seed: u64) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let mode = self::mode(mode, seed)?;
        let arrays = inputs.iter().map(|v| to_array(&v)).collect::<PyResult<Vec<_>>>()?;
        let outputs = no_panic(|| py.detach(|| self.runtime.run(&arrays, mode)).map_err(|e| PyValueError::new_err(e.to_string())))?;
        outputs
            .into_iter()
            .map(|a| -> PyResult<Bound<'py, PyAny>> {
                Ok(match a {
                    Array::F32 { shape, data } => data.to_pyarray(py).reshape(shape)?.into_any(),
                    Array::I32 { shape, data } => data.to_pyarray(py).reshape(shape)?.into_any(),
                })
            })
            .collect()
    }
}
