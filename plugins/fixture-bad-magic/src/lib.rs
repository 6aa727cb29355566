//! A test plugin whose descriptor has the wrong magic number (for example a library of another program that
//! happens to export the symbol).

use api::ffi::*;

unsafe extern "C" fn describe(_: *mut FfiBuf) -> i32 {
    STATUS_ERROR
}
unsafe extern "C" fn create(_: FfiStr, _: *const HostApi, _: *mut *mut std::ffi::c_void, _: *mut FfiBuf) -> i32 {
    STATUS_ERROR
}
unsafe extern "C" fn invoke(_: *mut std::ffi::c_void, _: FfiStr, _: FfiStr, _: *const HostApi, _: *mut FfiBuf) -> i32 {
    STATUS_ERROR
}
unsafe extern "C" fn destroy(_: *mut std::ffi::c_void) {}

static VTABLE: PluginVTable = PluginVTable {
    magic: 0xdead_beef,
    abi_major: ABI_MAJOR,
    abi_minor: ABI_MINOR,
    struct_size: std::mem::size_of::<PluginVTable>(),
    kind: KIND_JUDGE,
    name: FfiStr::new("bad-magic"),
    version: FfiStr::new("0.1.0"),
    build_info: FfiStr::new(""),
    describe,
    create,
    invoke,
    destroy,
};

/// The entry point, with a foreign descriptor.
#[unsafe(no_mangle)]
pub extern "C" fn rto_plugin_v1() -> *const PluginVTable {
    &VTABLE
}
