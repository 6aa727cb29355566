//! Opening a plugin library and running the handshake. Only ever called in a worker process (or by
//! `rto worker`-based checks), never in the orchestrator itself.

use std::path::Path;

use api::client::Plugin;
use api::ffi::PluginVTable;

/// Opens the library at `path` (absolute), finds `rto_plugin_v1` and runs the handshake. The library is
/// never unloaded: unloading Rust libraries that used thread-locals crashes at thread exit, and a worker
/// process exits soon anyway.
pub fn open(path: &Path) -> Result<Plugin, String> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // RTLD_NOW: a missing symbol fails here, not in the middle of an op. RTLD_NODELETE: never unmapped.
    let flags = RTLD_NOW | RTLD_LOCAL | libc::RTLD_NODELETE;
    // SAFETY: loading runs the library's constructors; that is what loading a plugin means, and it happens
    // in a worker process so a misbehaving library cannot take the orchestrator down.
    let library =
        unsafe { Library::open(Some(path), flags) }.map_err(|e| format!("cannot load `{}`: {e}", path.display()))?;
    // SAFETY: the symbol's type is fixed by the ABI; a library of another ABI major does not export this name.
    let symbol = unsafe { library.get::<extern "C" fn() -> *const PluginVTable>(api::ffi::SYMBOL) }.map_err(|_| {
        format!(
            "`{}` is not an rto plugin of ABI {} (it exports no `rto_plugin_v1`)",
            path.display(),
            api::ffi::ABI_MAJOR
        )
    })?;
    let descriptor = symbol();
    std::mem::forget(library);
    // SAFETY: the library stays mapped for the rest of the process (forgotten, and RTLD_NODELETE).
    unsafe { Plugin::from_raw(descriptor) }.map_err(|e| format!("`{}`: {e}", path.display()))
}
