//! The kernels as typed XLA FFI handlers.
//!
//! [`api`] mirrors the C API; [`Call`] reads a call frame safely (checked
//! ranks, dtypes and attribute types); [`dispatch`] answers the metadata
//! query, skips the stages a CPU kernel has no work in, and turns errors and
//! panics into `XLA_FFI_Error`s, which JAX raises as Python exceptions.

pub mod api;
pub mod handlers;

use std::ffi::CString;
use std::os::raw::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::error::{checked_product, KernelError};
use api::*;

/// One argument or result buffer of a call.
pub struct Buffer<'a> {
    pub dtype: i32,
    pub dims: &'a [i64],
    data: *mut c_void,
    what: String,
}

impl<'a> Buffer<'a> {
    /// The dimensions as `usize`, rejecting negative ones.
    pub fn shape(&self) -> Result<Vec<usize>, KernelError> {
        self.dims
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    KernelError::Shape(format!("{} has a negative dimension in {:?}", self.what, self.dims))
                })
            })
            .collect()
    }

    /// Number of elements.
    fn len(&self) -> Result<usize, KernelError> {
        checked_product(&self.shape()?, &self.what)
    }

    /// Whether both buffers are the same memory (XLA aliased a result to an
    /// argument).
    pub fn aliases(&self, other: &Buffer<'_>) -> bool {
        !self.data.is_null() && self.data == other.data
    }

    /// Fails unless the dtype is `dtype`.
    pub fn expect_dtype(&self, dtype: i32, name: &str) -> Result<(), KernelError> {
        if self.dtype != dtype {
            return Err(KernelError::Dtype(format!(
                "{} has dtype {}, expected {name}",
                self.what,
                dtype_name(self.dtype)
            )));
        }
        Ok(())
    }

    /// The elements, viewed as `T`.
    ///
    /// # Safety
    /// `T` must be the element type of `self.dtype`, and XLA must own the
    /// buffer for the duration of the call (it does, in the execute stage).
    pub unsafe fn as_slice<T>(&self) -> Result<&'a [T], KernelError> {
        let len = self.len()?;
        if len == 0 {
            return Ok(&[]);
        }
        Ok(std::slice::from_raw_parts(self.data as *const T, len))
    }

    /// The elements, viewed as mutable `T`.
    ///
    /// # Safety
    /// As [`Buffer::as_slice`]; the buffer must be a result, not aliased.
    pub unsafe fn as_mut_slice<T>(&self) -> Result<&'a mut [T], KernelError> {
        let len = self.len()?;
        if len == 0 {
            return Ok(&mut []);
        }
        Ok(std::slice::from_raw_parts_mut(self.data as *mut T, len))
    }
}

/// Name of an XLA dtype code, for messages.
pub fn dtype_name(code: i32) -> String {
    match code {
        dtype::PRED => "bool".into(),
        dtype::S8 => "int8".into(),
        dtype::S32 => "int32".into(),
        dtype::S64 => "int64".into(),
        dtype::U8 => "uint8".into(),
        dtype::F32 => "float32".into(),
        dtype::F64 => "float64".into(),
        dtype::C64 => "complex64".into(),
        dtype::C128 => "complex128".into(),
        other => format!("XLA dtype code {other}"),
    }
}

/// Read access to one call frame.
pub struct Call<'a> {
    frame: &'a XLA_FFI_CallFrame,
}

impl<'a> Call<'a> {
    fn buffer(&self, list: (i64, *mut i32, *mut *mut c_void), index: usize, kind: &str, expected: i32) -> Result<Buffer<'a>, KernelError> {
        let (size, types, items) = list;
        if index as i64 >= size {
            return Err(KernelError::Shape(format!("the call has {size} {kind}s, needs at least {}", index + 1)));
        }
        // SAFETY: XLA guarantees `types` and `items` hold `size` entries.
        let (ty, item) = unsafe { (*types.add(index), *items.add(index)) };
        if ty != expected || item.is_null() {
            return Err(KernelError::Dtype(format!("{kind} {index} is not a buffer")));
        }
        // SAFETY: a BUFFER entry points to an XLA_FFI_Buffer with `rank` dims.
        let buffer = unsafe { &*(item as *const XLA_FFI_Buffer) };
        let rank = usize::try_from(buffer.rank)
            .map_err(|_| KernelError::Shape(format!("{kind} {index} has negative rank")))?;
        let dims = if rank == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(buffer.dims, rank) } };
        Ok(Buffer { dtype: buffer.dtype, dims, data: buffer.data, what: format!("{kind} {index}") })
    }

    /// Argument `index` as a buffer.
    pub fn arg(&self, index: usize) -> Result<Buffer<'a>, KernelError> {
        let a = &self.frame.args;
        self.buffer((a.size, a.types, a.args), index, "argument", ARG_BUFFER)
    }

    /// Result `index` as a buffer.
    pub fn ret(&self, index: usize) -> Result<Buffer<'a>, KernelError> {
        let r = &self.frame.rets;
        self.buffer((r.size, r.types, r.rets), index, "result", RET_BUFFER)
    }

    fn scalar(&self, name: &str) -> Result<&'a XLA_FFI_Scalar, KernelError> {
        let attrs = &self.frame.attrs;
        for i in 0..attrs.size.max(0) as usize {
            // SAFETY: XLA guarantees `size` names, types and attrs.
            let (span, ty, value) = unsafe { (&**attrs.names.add(i), *attrs.types.add(i), *attrs.attrs.add(i)) };
            let key = unsafe { std::slice::from_raw_parts(span.ptr as *const u8, span.len) };
            if key == name.as_bytes() {
                if ty != ATTR_SCALAR {
                    return Err(KernelError::Dtype(format!("attribute {name} is not a scalar")));
                }
                return Ok(unsafe { &*(value as *const XLA_FFI_Scalar) });
            }
        }
        Err(KernelError::Value(format!("missing attribute {name}")))
    }

    /// A floating-point attribute (f32 or f64).
    pub fn attr_f64(&self, name: &str) -> Result<f64, KernelError> {
        let s = self.scalar(name)?;
        // SAFETY: `value` points to one element of `dtype`.
        unsafe {
            match s.dtype {
                dtype::F32 => Ok(*(s.value as *const f32) as f64),
                dtype::F64 => Ok(*(s.value as *const f64)),
                other => Err(KernelError::Dtype(format!("attribute {name} has dtype {}, expected a float", dtype_name(other)))),
            }
        }
    }

    /// An integer attribute (int32 or int64).
    pub fn attr_i64(&self, name: &str) -> Result<i64, KernelError> {
        let s = self.scalar(name)?;
        unsafe {
            match s.dtype {
                dtype::S32 => Ok(*(s.value as *const i32) as i64),
                dtype::S64 => Ok(*(s.value as *const i64)),
                other => Err(KernelError::Dtype(format!("attribute {name} has dtype {}, expected an integer", dtype_name(other)))),
            }
        }
    }
}

unsafe fn make_error(api: *const XLA_FFI_Api, code: i32, message: &str) -> *mut XLA_FFI_Error {
    let Some(create) = api.as_ref().and_then(|api| api.XLA_FFI_Error_Create) else {
        return ptr::null_mut();
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let mut args = XLA_FFI_Error_Create_Args {
        struct_size: std::mem::size_of::<XLA_FFI_Error_Create_Args>(),
        extension_start: ptr::null_mut(),
        message: message.as_ptr(),
        errc: code,
    };
    create(&mut args)
}

/// Runs `body` for the execute stage of `frame` and reports its outcome.
///
/// # Safety
/// `frame` must be a call frame that XLA passed to a handler.
pub unsafe fn dispatch(
    frame: *mut XLA_FFI_CallFrame,
    body: impl FnOnce(&Call<'_>) -> Result<(), KernelError>,
) -> *mut XLA_FFI_Error {
    let Some(frame) = frame.as_ref() else {
        return ptr::null_mut();
    };
    let extension = frame.extension_start;
    if !extension.is_null() && (*extension).type_ == EXTENSION_METADATA {
        let metadata = (*(extension as *mut XLA_FFI_Metadata_Extension)).metadata;
        if let Some(metadata) = metadata.as_mut() {
            metadata.api_version.struct_size = std::mem::size_of::<XLA_FFI_Api_Version>();
            metadata.api_version.major_version = XLA_FFI_API_MAJOR;
            metadata.api_version.minor_version = XLA_FFI_API_MINOR;
            metadata.traits = 0;
        }
        return ptr::null_mut();
    }
    if frame.stage != STAGE_EXECUTE {
        return ptr::null_mut();
    }
    let call = Call { frame };
    match catch_unwind(AssertUnwindSafe(|| body(&call))) {
        Ok(Ok(())) => ptr::null_mut(),
        Ok(Err(err)) => make_error(frame.api, ERROR_INVALID_ARGUMENT, &err.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            make_error(frame.api, ERROR_INTERNAL, &format!("lumijax kernel panicked: {what}"))
        }
    }
}
