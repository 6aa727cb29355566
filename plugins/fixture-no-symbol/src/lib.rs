//! A shared library that is not an rto plugin: it exports no `rto_plugin_v1`.

/// Something a library might export.
#[unsafe(no_mangle)]
pub extern "C" fn not_a_plugin() -> i32 {
    42
}
