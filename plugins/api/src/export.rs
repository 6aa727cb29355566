//! The plugin side of the ABI: the `extern "C"` shims that [`crate::export_plugin!`] puts in a descriptor.
//! Every `unsafe` line a plugin needs is here, once; each shim catches panics.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicIsize, Ordering};

use crate::backend::{Backend, Error, Host, OpContext};
use crate::ffi::*;
use crate::protocol::{Description, ErrorReply, PROTOCOL_VERSION, Request};

/// Buffers this library allocated and nobody released yet (a leak check for tests).
pub static LIVE_BUFFERS: AtomicIsize = AtomicIsize::new(0);

/// Hands `bytes` over as an [`FfiBuf`] released by [`release_vec`] of this library.
pub fn buf_from_vec(bytes: Vec<u8>) -> FfiBuf {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    LIVE_BUFFERS.fetch_add(1, Ordering::SeqCst);
    FfiBuf { ptr: bytes.as_mut_ptr(), len: bytes.len(), cap: bytes.capacity(), release: Some(release_vec) }
}

/// Frees a buffer made by [`buf_from_vec`].
///
/// # Safety
/// The arguments must come from one [`FfiBuf`] made by [`buf_from_vec`] in this library, released once.
pub unsafe extern "C" fn release_vec(ptr: *mut u8, len: usize, cap: usize) {
    LIVE_BUFFERS.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: the caller passes back exactly the parts of a Vec we leaked in `buf_from_vec`.
    drop(unsafe { Vec::from_raw_parts(ptr, len, cap) });
}

fn write_out(out: *mut FfiBuf, bytes: Vec<u8>) {
    if !out.is_null() {
        // SAFETY: the host passes a valid, writable FfiBuf slot.
        unsafe { out.write(buf_from_vec(bytes)) };
    }
}

fn error_json(message: String, param_path: Option<Vec<String>>) -> Vec<u8> {
    serde_json::to_vec(&ErrorReply { message, param_path }).unwrap_or_else(|_| b"{\"message\":\"error\"}".to_vec())
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("the plugin panicked: {text}")
}

/// The host callbacks as a [`Host`].
struct FfiHost(*const HostApi);

impl Host for FfiHost {
    fn log(&self, level: u32, message: &str) {
        if let Some(h) = self.api() {
            // SAFETY: the host keeps its callbacks valid for the duration of the call.
            unsafe { (h.log)(h.ctx, level, FfiStr::new(message)) }
        }
    }
    fn progress(&self, done: u64, total: u64, message: &str) {
        if let Some(h) = self.api() {
            let json = serde_json::json!({"done": done, "total": total, "message": message}).to_string();
            // SAFETY: as above.
            unsafe { (h.progress)(h.ctx, FfiStr::new(&json)) }
        }
    }
    fn is_cancelled(&self) -> bool {
        // SAFETY: as above.
        self.api().is_some_and(|h| unsafe { (h.is_cancelled)(h.ctx) })
    }
}

impl FfiHost {
    fn api(&self) -> Option<&HostApi> {
        // SAFETY: null or a HostApi valid for the call; older hosts' smaller structs are refused.
        let api = unsafe { self.0.as_ref() }?;
        (api.struct_size >= std::mem::size_of::<HostApi>()).then_some(api)
    }
}

/// Shim: `describe`.
///
/// # Safety
/// `out` must be null or point to a writable [`FfiBuf`].
pub unsafe extern "C" fn describe<B: Backend>(out: *mut FfiBuf) -> i32 {
    let result = catch_unwind(|| Description {
        protocol: PROTOCOL_VERSION.into(),
        name: B::NAME.into(),
        version: B::VERSION.into(),
        kind: B::KIND.as_str().into(),
        ops: B::ops(),
    });
    match result {
        Ok(d) => {
            write_out(out, serde_json::to_vec(&d).unwrap_or_default());
            STATUS_OK
        }
        Err(p) => {
            write_out(out, error_json(panic_message(p), None));
            STATUS_PANIC
        }
    }
}

/// Shim: `create`.
///
/// # Safety
/// `config` must be a valid [`FfiStr`]; `out` a writable pointer slot; `err` null or a writable [`FfiBuf`].
pub unsafe extern "C" fn create<B: Backend>(
    config: FfiStr,
    _host: *const HostApi,
    out: *mut *mut c_void,
    err: *mut FfiBuf,
) -> i32 {
    // SAFETY: the host passes a string valid for this call.
    let Some(text) = (unsafe { config.as_str() }) else {
        write_out(err, error_json("the plugin config is not UTF-8".into(), None));
        return STATUS_BAD_INPUT;
    };
    let config: serde_json::Value = match serde_json::from_str(if text.is_empty() { "null" } else { text }) {
        Ok(v) => v,
        Err(e) => {
            write_out(err, error_json(format!("the plugin config is not JSON: {e}"), None));
            return STATUS_BAD_INPUT;
        }
    };
    match catch_unwind(|| B::create(&config)) {
        Ok(Ok(instance)) => {
            if !out.is_null() {
                // SAFETY: `out` is a writable slot for the instance pointer.
                unsafe { out.write(Box::into_raw(Box::new(instance)).cast()) };
            }
            STATUS_OK
        }
        Ok(Err(e)) => {
            write_out(err, error_json(describe_error(&e), None));
            STATUS_ERROR
        }
        Err(p) => {
            write_out(err, error_json(panic_message(p), None));
            STATUS_PANIC
        }
    }
}

fn describe_error(e: &Error) -> String {
    match e {
        Error::Param { message, .. } | Error::Failed(message) => message.clone(),
        Error::Cancelled => "cancelled".into(),
    }
}

/// Shim: `invoke`.
///
/// # Safety
/// `instance` must come from this plugin's `create` and not be destroyed; the strings valid for the call;
/// `host` null or valid for the call; `out` null or a writable [`FfiBuf`].
pub unsafe extern "C" fn invoke<B: Backend>(
    instance: *mut c_void,
    op: FfiStr,
    request: FfiStr,
    host: *const HostApi,
    out: *mut FfiBuf,
) -> i32 {
    if instance.is_null() {
        write_out(out, error_json("no instance".into(), None));
        return STATUS_BAD_INPUT;
    }
    // SAFETY: the host passes strings valid for this call.
    let (Some(op), Some(request)) = (unsafe { op.as_str() }, unsafe { request.as_str() }) else {
        write_out(out, error_json("op or request is not UTF-8".into(), None));
        return STATUS_BAD_INPUT;
    };
    let request: Request = match serde_json::from_str(request) {
        Ok(r) => r,
        Err(e) => {
            write_out(out, error_json(format!("the request does not parse: {e}"), None));
            return STATUS_BAD_INPUT;
        }
    };
    // SAFETY: `instance` was made by `create::<B>` (Box<B>) and the host calls it from one thread at a time.
    let backend = unsafe { &mut *instance.cast::<B>() };
    if !B::ops().iter().any(|o| o.name == op) {
        write_out(out, error_json(format!("plugin `{}` has no op `{op}`", B::NAME), None));
        return STATUS_UNSUPPORTED_OP;
    }
    let ffi_host = FfiHost(host);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let names: Vec<String> = request.inputs.keys().cloned().collect();
        backend.validate(op, &request.params, &names)?;
        if request.validate_only {
            return Ok(serde_json::Value::Null);
        }
        let mut ctx = OpContext::new(
            &request.stage_id,
            &request.params,
            &request.inputs,
            &request.out_dir,
            &request.scratch_dir,
            &request.gpus,
            &ffi_host,
        );
        backend.invoke(op, &mut ctx)
    }));
    match result {
        Ok(Ok(value)) => {
            write_out(out, serde_json::to_vec(&value).unwrap_or_default());
            STATUS_OK
        }
        Ok(Err(Error::Param { path, message })) => {
            write_out(out, error_json(message, Some(path)));
            STATUS_BAD_INPUT
        }
        Ok(Err(Error::Cancelled)) => {
            write_out(out, error_json("cancelled".into(), None));
            STATUS_CANCELLED
        }
        Ok(Err(Error::Failed(message))) => {
            write_out(out, error_json(message, None));
            STATUS_ERROR
        }
        Err(p) => {
            write_out(out, error_json(panic_message(p), None));
            STATUS_PANIC
        }
    }
}

/// Shim: `destroy`.
///
/// # Safety
/// `instance` must come from this plugin's `create`, destroyed once.
pub unsafe extern "C" fn destroy<B: Backend>(instance: *mut c_void) {
    if !instance.is_null() {
        // SAFETY: made by `create::<B>` as Box<B>; the host destroys it once. A panicking Drop is contained.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(instance.cast::<B>()) })));
    }
}

/// Declares a plugin: `declare_plugin!(MyBackend)` defines `pub fn descriptor() -> &'static PluginVTable` in
/// the calling crate. Use it in a crate that is also linked into rto; use [`crate::export_plugin!`] for a
/// loadable library.
#[macro_export]
macro_rules! declare_plugin {
    ($backend:ty) => {
        /// This plugin's ABI descriptor.
        pub fn descriptor() -> &'static $crate::ffi::PluginVTable {
            static VTABLE: $crate::ffi::PluginVTable = $crate::ffi::PluginVTable {
                magic: $crate::ffi::MAGIC,
                abi_major: $crate::ffi::ABI_MAJOR,
                abi_minor: $crate::ffi::ABI_MINOR,
                struct_size: ::std::mem::size_of::<$crate::ffi::PluginVTable>(),
                kind: match <$backend as $crate::Backend>::KIND {
                    $crate::Kind::Model => $crate::ffi::KIND_MODEL,
                    $crate::Kind::Judge => $crate::ffi::KIND_JUDGE,
                },
                name: $crate::ffi::FfiStr::new(<$backend as $crate::Backend>::NAME),
                version: $crate::ffi::FfiStr::new(<$backend as $crate::Backend>::VERSION),
                build_info: $crate::ffi::FfiStr::new($crate::BUILD_INFO),
                describe: $crate::export::describe::<$backend>,
                create: $crate::export::create::<$backend>,
                invoke: $crate::export::invoke::<$backend>,
                destroy: $crate::export::destroy::<$backend>,
            };
            &VTABLE
        }
    };
}

/// Exports the descriptor `$descriptor` (a path to a `fn() -> &'static PluginVTable`) as the `rto_plugin_v1`
/// symbol of a cdylib. Only one crate in any linked program may do this, so first-party plugins do it in a
/// separate `-cdylib` crate and are linked into rto through `descriptor()` instead.
#[macro_export]
macro_rules! export_descriptor {
    ($descriptor:path) => {
        /// The entry point rto looks up with `dlsym`.
        #[unsafe(no_mangle)]
        pub extern "C" fn rto_plugin_v1() -> *const $crate::ffi::PluginVTable {
            $descriptor()
        }
    };
}

/// Declares and exports a plugin in one crate (the usual case for a third-party plugin built as a cdylib):
/// `api::export_plugin!(MyBackend);`
#[macro_export]
macro_rules! export_plugin {
    ($backend:ty) => {
        $crate::declare_plugin!($backend);
        $crate::export_descriptor!(descriptor);
    };
}
