//! `candle-lm` as a loadable plugin library: `librto_candle_lm.so`, described by the `rto-plugin.toml` beside this
//! crate. The backend lives in the `candle-lm` rlib, which rto also links in directly; only this crate exports the
//! `rto_plugin_v1` symbol, because at most one crate of a linked program may. Build with `--features cuda` for
//! GPU stages.

api::export_descriptor!(candle_lm::descriptor);
