//! `#[repr(C)]` mirror of the XLA FFI C API (`xla/ffi/api/c_api.h`, API
//! version 0.3, as shipped with jaxlib 0.10) — the subset a CPU handler
//! touches, field for field. C enums are `i32`; function pointers this crate
//! never calls are kept as opaque pointers of the same size. The sizes are
//! checked against the header in the tests (`tests/test_kernels.py`
//! compiles the real header and compares).

#![allow(non_camel_case_types, non_snake_case)]

use std::os::raw::{c_char, c_int, c_void};

pub const XLA_FFI_API_MAJOR: c_int = 0;
pub const XLA_FFI_API_MINOR: c_int = 3;

pub const EXTENSION_METADATA: i32 = 1;
pub const STAGE_EXECUTE: i32 = 3;

pub const ERROR_INVALID_ARGUMENT: i32 = 3;
pub const ERROR_INTERNAL: i32 = 13;

pub const ARG_BUFFER: i32 = 1;
pub const RET_BUFFER: i32 = 1;
pub const ATTR_SCALAR: i32 = 3;

/// `XLA_FFI_DataType` codes used here.
pub mod dtype {
    pub const PRED: i32 = 1;
    pub const S8: i32 = 2;
    pub const S32: i32 = 4;
    pub const S64: i32 = 5;
    pub const U8: i32 = 6;
    pub const U32: i32 = 8;
    pub const F32: i32 = 11;
    pub const F64: i32 = 12;
    pub const C64: i32 = 15;
    pub const C128: i32 = 18;
}

#[repr(C)]
pub struct XLA_FFI_Extension_Base {
    pub struct_size: usize,
    pub type_: i32,
    pub next: *mut XLA_FFI_Extension_Base,
}

#[repr(C)]
pub struct XLA_FFI_Api_Version {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub major_version: c_int,
    pub minor_version: c_int,
}

/// Opaque error owned by XLA.
#[repr(C)]
pub struct XLA_FFI_Error {
    _private: [u8; 0],
}

#[repr(C)]
pub struct XLA_FFI_Error_Create_Args {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub message: *const c_char,
    pub errc: i32,
}

pub type XLA_FFI_Error_Create = unsafe extern "C" fn(*mut XLA_FFI_Error_Create_Args) -> *mut XLA_FFI_Error;

#[repr(C)]
pub struct XLA_FFI_Buffer {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub dtype: i32,
    pub data: *mut c_void,
    pub rank: i64,
    pub dims: *mut i64,
}

#[repr(C)]
pub struct XLA_FFI_ByteSpan {
    pub ptr: *const c_char,
    pub len: usize,
}

#[repr(C)]
pub struct XLA_FFI_Scalar {
    pub dtype: i32,
    pub value: *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_Args {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub size: i64,
    pub types: *mut i32,
    pub args: *mut *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_Rets {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub size: i64,
    pub types: *mut i32,
    pub rets: *mut *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_Attrs {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub size: i64,
    pub types: *mut i32,
    pub names: *mut *mut XLA_FFI_ByteSpan,
    pub attrs: *mut *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_CallFrame {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub api: *const XLA_FFI_Api,
    pub ctx: *mut c_void,
    pub stage: i32,
    pub args: XLA_FFI_Args,
    pub rets: XLA_FFI_Rets,
    pub attrs: XLA_FFI_Attrs,
    pub future: *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_TypeId {
    pub type_id: i64,
}

#[repr(C)]
pub struct XLA_FFI_Metadata {
    pub struct_size: usize,
    pub api_version: XLA_FFI_Api_Version,
    pub traits: u32,
    pub state_type_id: XLA_FFI_TypeId,
}

#[repr(C)]
pub struct XLA_FFI_Metadata_Extension {
    pub extension_base: XLA_FFI_Extension_Base,
    pub metadata: *mut XLA_FFI_Metadata,
}

/// Opaque function pointer slot: same size as any C function pointer.
pub type FnSlot = *const c_void;

#[repr(C)]
pub struct XLA_FFI_Api {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_Extension_Base,
    pub api_version: XLA_FFI_Api_Version,
    pub internal_api: *const c_void,
    pub XLA_FFI_Error_Create: Option<XLA_FFI_Error_Create>,
    pub XLA_FFI_Error_GetMessage: FnSlot,
    pub XLA_FFI_Error_Destroy: FnSlot,
    pub XLA_FFI_Handler_Register: FnSlot,
    pub XLA_FFI_Stream_Get: FnSlot,
    pub XLA_FFI_Type_Register: FnSlot,
    pub XLA_FFI_ExecutionContext_Get: FnSlot,
    pub XLA_FFI_State_Set: FnSlot,
    pub XLA_FFI_State_Get: FnSlot,
    pub XLA_FFI_DeviceMemory_Allocate: FnSlot,
    pub XLA_FFI_DeviceMemory_Free: FnSlot,
    pub XLA_FFI_ThreadPool_Schedule: FnSlot,
    pub XLA_FFI_ThreadPool_NumThreads: FnSlot,
    pub XLA_FFI_Future_Create: FnSlot,
    pub XLA_FFI_Future_SetAvailable: FnSlot,
    pub XLA_FFI_Future_SetError: FnSlot,
    pub XLA_FFI_RunId_Get: FnSlot,
    pub XLA_FFI_DeviceOrdinal_Get: FnSlot,
}

/// The handler signature XLA calls.
pub type XLA_FFI_Handler = unsafe extern "C" fn(*mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error;

/// `sizeof` of each mirrored struct, by its C name, for the ABI check.
pub fn struct_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("XLA_FFI_Extension_Base", size_of::<XLA_FFI_Extension_Base>()),
        ("XLA_FFI_Api_Version", size_of::<XLA_FFI_Api_Version>()),
        ("XLA_FFI_Error_Create_Args", size_of::<XLA_FFI_Error_Create_Args>()),
        ("XLA_FFI_Buffer", size_of::<XLA_FFI_Buffer>()),
        ("XLA_FFI_ByteSpan", size_of::<XLA_FFI_ByteSpan>()),
        ("XLA_FFI_Scalar", size_of::<XLA_FFI_Scalar>()),
        ("XLA_FFI_Args", size_of::<XLA_FFI_Args>()),
        ("XLA_FFI_Rets", size_of::<XLA_FFI_Rets>()),
        ("XLA_FFI_Attrs", size_of::<XLA_FFI_Attrs>()),
        ("XLA_FFI_CallFrame", size_of::<XLA_FFI_CallFrame>()),
        ("XLA_FFI_Metadata", size_of::<XLA_FFI_Metadata>()),
        ("XLA_FFI_Metadata_Extension", size_of::<XLA_FFI_Metadata_Extension>()),
        ("XLA_FFI_Api", size_of::<XLA_FFI_Api>()),
    ]
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets worked out from c_api.h for LP64 targets.
    #[test]
    fn layout_matches_the_header_on_lp64() {
        assert_eq!(size_of::<XLA_FFI_Extension_Base>(), 24);
        assert_eq!(size_of::<XLA_FFI_Api_Version>(), 24);
        assert_eq!(size_of::<XLA_FFI_Buffer>(), 48);
        assert_eq!(offset_of!(XLA_FFI_Buffer, data), 24);
        assert_eq!(size_of::<XLA_FFI_Args>(), 40);
        assert_eq!(size_of::<XLA_FFI_Attrs>(), 48);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, stage), 32);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, args), 40);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, rets), 80);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, attrs), 120);
        assert_eq!(size_of::<XLA_FFI_CallFrame>(), 176);
        assert_eq!(offset_of!(XLA_FFI_Metadata, traits), 32);
        assert_eq!(size_of::<XLA_FFI_Metadata>(), 48);
        assert_eq!(offset_of!(XLA_FFI_Api, XLA_FFI_Error_Create), 48);
        assert_eq!(size_of::<XLA_FFI_Api>(), 48 + 18 * 8);
    }
}
