//! The `.lmn` runtime on numpy arrays: `lumijax._native.LmnRuntime`.

use std::sync::Arc;

use lumijax_export::{Array, Mode, Model, Runtime};
use numpy::{PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods, ToPyArray};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

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

#[pymethods]
impl LmnRuntime {
    /// Opens (memory-maps) and validates an `.lmn` file.
    #[staticmethod]
    fn open(path: &str) -> PyResult<LmnRuntime> {
        let model = Model::open(path).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(LmnRuntime { runtime: Runtime::new(Arc::new(model)) })
    }

    /// Validates an `.lmn` file held in memory.
    #[staticmethod]
    fn from_bytes(bytes: &[u8]) -> PyResult<LmnRuntime> {
        let model = Model::from_bytes(bytes).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(LmnRuntime { runtime: Runtime::new(Arc::new(model)) })
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
        let outputs = py
            .detach(|| self.runtime.run(&arrays, mode))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
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
