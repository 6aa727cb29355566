//! The C ABI between rto and a plugin library. Everything here is `#[repr(C)]`; nothing else crosses.
//!
//! A plugin exports one symbol, `rto_plugin_v1` (the ABI major is part of the name, so a library of another
//! major fails with "symbol not found" instead of being called with the wrong layout), returning a pointer to a
//! static [`PluginVTable`]. All requests and results are JSON ([`crate::protocol`]), versioned on their own, so
//! this layout can stay frozen while ops and fields evolve.
//!
//! Memory: an [`FfiBuf`] is released by calling its own `release`, i.e. by the side that allocated it, so host
//! and plugin may use different allocators. An [`FfiStr`] is borrowed for the duration of one call.
//!
//! Threads: the host calls one instance from one thread at a time; a plugin may start its own threads.
//! Panics: every entry point catches them and returns [`STATUS_PANIC`]; a plugin must be built with
//! `panic = "unwind"` (the default) for that to work.

use std::ffi::c_void;

/// `RTOPLUG\0` as a little-endian u64: the first field of every descriptor.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RTOPLUG\0");
/// ABI major version; also in the symbol name. Incompatible layout changes bump it.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version: fields appended at the end of the structs, gated on `struct_size`.
pub const ABI_MINOR: u32 = 0;
/// The exported symbol's name, NUL-terminated for `dlsym`.
pub const SYMBOL: &[u8] = b"rto_plugin_v1\0";

/// Success: `out` holds the JSON result.
pub const STATUS_OK: i32 = 0;
/// The op failed: `out` holds a JSON [`crate::protocol::ErrorReply`].
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked; the panic was caught; `out` holds the message as an error reply.
pub const STATUS_PANIC: i32 = 2;
/// The op stopped because the host asked it to.
pub const STATUS_CANCELLED: i32 = 3;
/// The plugin has no such op.
pub const STATUS_UNSUPPORTED_OP: i32 = 4;
/// The request did not parse or its params are invalid; `out` holds an error reply (with the param path).
pub const STATUS_BAD_INPUT: i32 = 5;

/// Kind of back-end, as in [`PluginVTable::kind`].
pub const KIND_MODEL: u32 = 1;
/// A judge back-end.
pub const KIND_JUDGE: u32 = 2;

/// A borrowed UTF-8 string: valid for the call it is passed to (or `'static` in the descriptor).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FfiStr {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl FfiStr {
    /// Borrows `s` (the caller keeps it alive for the call).
    pub const fn new(s: &str) -> FfiStr {
        FfiStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// The string, if it is valid UTF-8.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_str<'a>(self) -> Option<&'a str> {
        if self.ptr.is_null() {
            return if self.len == 0 { Some("") } else { None };
        }
        // SAFETY: the caller guarantees `ptr..ptr+len` is readable for 'a.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        std::str::from_utf8(bytes).ok()
    }
}

/// An owned byte buffer, released by its producer's `release`.
#[repr(C)]
#[derive(Debug)]
pub struct FfiBuf {
    /// First byte (null when empty).
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// Capacity of the allocation.
    pub cap: usize,
    /// Frees the buffer; set by the side that allocated it. `None` for an empty buffer.
    pub release: Option<unsafe extern "C" fn(ptr: *mut u8, len: usize, cap: usize)>,
}

impl FfiBuf {
    /// An empty buffer with nothing to release.
    pub const fn empty() -> FfiBuf {
        FfiBuf { ptr: std::ptr::null_mut(), len: 0, cap: 0, release: None }
    }
}

/// Callbacks from the plugin to the host, valid for the call they are passed to.
#[repr(C)]
pub struct HostApi {
    /// `size_of::<HostApi>()` on the host: fields past it do not exist.
    pub struct_size: usize,
    /// The host's ABI minor.
    pub abi_minor: u32,
    /// Opaque host state passed back to every callback.
    pub ctx: *mut c_void,
    /// A human-readable log line (level: 0 error, 1 warn, 2 info, 3 debug).
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: u32, msg: FfiStr),
    /// Progress as JSON: `{"done": N, "total": M, "message": "…"}`.
    pub progress: unsafe extern "C" fn(ctx: *mut c_void, json: FfiStr),
    /// True once the host wants the op to stop.
    pub is_cancelled: unsafe extern "C" fn(ctx: *mut c_void) -> bool,
}

/// The descriptor a plugin exports (version 1.0 of the layout).
#[repr(C)]
pub struct PluginVTable {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`ABI_MAJOR`] the plugin was built with.
    pub abi_major: u32,
    /// [`ABI_MINOR`] the plugin was built with.
    pub abi_minor: u32,
    /// `size_of::<PluginVTable>()` in the plugin: the host reads no field past it.
    pub struct_size: usize,
    /// [`KIND_MODEL`] or [`KIND_JUDGE`].
    pub kind: u32,
    /// The plugin's name (`'static`).
    pub name: FfiStr,
    /// The plugin's version (`'static`).
    pub version: FfiStr,
    /// Informational: the api crate version and the target it was built for (`'static`).
    pub build_info: FfiStr,
    /// Writes the JSON [`crate::protocol::Description`] into `out`.
    pub describe: unsafe extern "C" fn(out: *mut FfiBuf) -> i32,
    /// Creates an instance from a JSON config; on error writes an error reply into `err`.
    pub create:
        unsafe extern "C" fn(config: FfiStr, host: *const HostApi, out: *mut *mut c_void, err: *mut FfiBuf) -> i32,
    /// Runs `op` with a JSON request; writes the JSON result or error reply into `out`.
    pub invoke: unsafe extern "C" fn(
        instance: *mut c_void,
        op: FfiStr,
        request: FfiStr,
        host: *const HostApi,
        out: *mut FfiBuf,
    ) -> i32,
    /// Destroys an instance.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
}

// SAFETY: the descriptor is immutable static data (pointers to 'static strings and functions).
unsafe impl Sync for PluginVTable {}
