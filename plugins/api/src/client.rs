//! The host's safe view of a plugin descriptor: the handshake, then describe / create / invoke.
//!
//! Where the descriptor comes from (a `dlsym` in a loaded library, or a plugin linked into rto) is the
//! caller's business; from here on both are the same.

use std::ffi::c_void;

use crate::backend::Host;
use crate::ffi::*;
use crate::protocol::{Description, ErrorReply, PROTOCOL_VERSION, Request};

/// Why a descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The symbol returned null.
    Null,
    /// The first field is not [`MAGIC`]: not an rto plugin descriptor.
    BadMagic(u64),
    /// Built for another ABI major.
    AbiMajor(u32),
    /// The descriptor is smaller than the 1.0 layout.
    TooSmall(usize),
    /// `describe` failed or returned something unreadable.
    Describe(String),
    /// It speaks another protocol major.
    Protocol(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Null => write!(f, "`rto_plugin_v1` returned a null descriptor"),
            HandshakeError::BadMagic(m) => {
                write!(f, "not an rto plugin descriptor (magic {m:#018x}, expected {MAGIC:#018x})")
            }
            HandshakeError::AbiMajor(v) => {
                write!(f, "built for plugin ABI {v}, this rto speaks ABI {ABI_MAJOR}: rebuild the plugin")
            }
            HandshakeError::TooSmall(n) => write!(
                f,
                "descriptor of {n} bytes is smaller than ABI {ABI_MAJOR}.0's {} bytes",
                std::mem::size_of::<PluginVTable>()
            ),
            HandshakeError::Describe(m) => write!(f, "`describe` failed: {m}"),
            HandshakeError::Protocol(v) => write!(f, "speaks protocol {v}, this rto speaks {PROTOCOL_VERSION}"),
        }
    }
}

/// A failed op, as the plugin reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeError {
    /// One of the `STATUS_*` codes.
    pub status: i32,
    /// The plugin's error reply.
    pub reply: ErrorReply,
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reply.message)
    }
}

/// A descriptor that passed the handshake.
pub struct Plugin {
    vtable: &'static PluginVTable,
    /// What the plugin said about itself.
    pub description: Description,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("description", &self.description).finish()
    }
}

/// Copies a plugin-made buffer and releases it through the plugin's own `release`.
fn take(buf: FfiBuf) -> Vec<u8> {
    let bytes = if buf.ptr.is_null() {
        Vec::new()
    } else {
        // SAFETY: the plugin made `len` bytes readable at `ptr` until it is released.
        unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
    };
    if let Some(release) = buf.release {
        // SAFETY: released once, by the function the producer supplied, with the parts it gave.
        unsafe { release(buf.ptr, buf.len, buf.cap) };
    }
    bytes
}

fn reply_of(bytes: &[u8]) -> ErrorReply {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| ErrorReply { message: String::from_utf8_lossy(bytes).trim().to_string(), param_path: None })
}

impl Plugin {
    /// Runs the handshake on a descriptor: magic, ABI major, size, then `describe` and its protocol major.
    ///
    /// # Safety
    /// `ptr` must be null or point to a descriptor that stays valid for the rest of the process (a library
    /// that is never unloaded, or static data).
    pub unsafe fn from_raw(ptr: *const PluginVTable) -> Result<Plugin, HandshakeError> {
        if ptr.is_null() {
            return Err(HandshakeError::Null);
        }
        // The first three fields are read before anything else, so a foreign layout is refused early.
        // SAFETY: every descriptor starts with magic (u64) and abi_major (u32).
        let magic = unsafe { std::ptr::addr_of!((*ptr).magic).read_unaligned() };
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic(magic));
        }
        // SAFETY: as above.
        let major = unsafe { std::ptr::addr_of!((*ptr).abi_major).read_unaligned() };
        if major != ABI_MAJOR {
            return Err(HandshakeError::AbiMajor(major));
        }
        // SAFETY: same ABI major, so struct_size is where we expect it.
        let size = unsafe { std::ptr::addr_of!((*ptr).struct_size).read_unaligned() };
        if size < std::mem::size_of::<PluginVTable>() {
            return Err(HandshakeError::TooSmall(size));
        }
        // SAFETY: checked to be a complete 1.0 descriptor that lives for the process.
        let vtable: &'static PluginVTable = unsafe { &*ptr };
        let mut out = FfiBuf::empty();
        // SAFETY: `out` is a valid slot; the plugin fills it.
        let status = unsafe { (vtable.describe)(&mut out) };
        let bytes = take(out);
        if status != STATUS_OK {
            return Err(HandshakeError::Describe(reply_of(&bytes).message));
        }
        let description: Description =
            serde_json::from_slice(&bytes).map_err(|e| HandshakeError::Describe(e.to_string()))?;
        let major = |v: &str| v.split('.').next().unwrap_or("").to_string();
        if major(&description.protocol) != major(PROTOCOL_VERSION) {
            return Err(HandshakeError::Protocol(description.protocol));
        }
        Ok(Plugin { vtable, description })
    }

    /// Informational build string of the plugin.
    pub fn build_info(&self) -> String {
        // SAFETY: a 'static string of the descriptor.
        unsafe { self.vtable.build_info.as_str() }.unwrap_or("").to_string()
    }

    /// Creates an instance.
    pub fn create(&self, config: &serde_json::Value) -> Result<Instance<'_>, InvokeError> {
        let text = config.to_string();
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut err = FfiBuf::empty();
        // SAFETY: valid string for the call, valid out slots; no host callbacks are needed to create.
        let status = unsafe { (self.vtable.create)(FfiStr::new(&text), std::ptr::null(), &mut instance, &mut err) };
        let bytes = take(err);
        if status != STATUS_OK || instance.is_null() {
            return Err(InvokeError { status, reply: reply_of(&bytes) });
        }
        Ok(Instance { plugin: self, ptr: instance })
    }
}

/// A live plugin instance; destroyed when dropped.
pub struct Instance<'p> {
    plugin: &'p Plugin,
    ptr: *mut c_void,
}

unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, msg: FfiStr) {
    // SAFETY: `ctx` is the `&&dyn Host` we passed for this call; `msg` is valid for the call.
    let (host, msg) = unsafe { (&*(ctx as *const &dyn Host), msg.as_str()) };
    host.log(level, msg.unwrap_or("(log line is not UTF-8)"));
}

unsafe extern "C" fn host_progress(ctx: *mut c_void, json: FfiStr) {
    // SAFETY: as in `host_log`.
    let (host, json) = unsafe { (&*(ctx as *const &dyn Host), json.as_str()) };
    if let Some(p) = json.and_then(|j| serde_json::from_str::<crate::protocol::Progress>(j).ok()) {
        host.progress(p.done, p.total, &p.message);
    }
}

unsafe extern "C" fn host_is_cancelled(ctx: *mut c_void) -> bool {
    // SAFETY: as in `host_log`.
    let host = unsafe { &*(ctx as *const &dyn Host) };
    host.is_cancelled()
}

impl Instance<'_> {
    /// Runs `op`; the host's callbacks receive its log, progress and cancellation checks.
    pub fn invoke(&mut self, op: &str, request: &Request, host: &dyn Host) -> Result<serde_json::Value, InvokeError> {
        let text = serde_json::to_string(request).expect("requests serialise");
        let ctx: *const &dyn Host = &host;
        let api = HostApi {
            struct_size: std::mem::size_of::<HostApi>(),
            abi_minor: ABI_MINOR,
            ctx: ctx as *mut c_void,
            log: host_log,
            progress: host_progress,
            is_cancelled: host_is_cancelled,
        };
        let mut out = FfiBuf::empty();
        // SAFETY: the instance is live; strings, `api` and `out` are valid for the call.
        let status =
            unsafe { (self.plugin.vtable.invoke)(self.ptr, FfiStr::new(op), FfiStr::new(&text), &api, &mut out) };
        let bytes = take(out);
        if status == STATUS_OK {
            serde_json::from_slice(&bytes).map_err(|e| InvokeError {
                status: STATUS_ERROR,
                reply: ErrorReply { message: format!("the plugin's result is not JSON: {e}"), param_path: None },
            })
        } else {
            Err(InvokeError { status, reply: reply_of(&bytes) })
        }
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        // SAFETY: made by this plugin's `create`, destroyed once.
        unsafe { (self.plugin.vtable.destroy)(self.ptr) };
    }
}
