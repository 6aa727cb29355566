//! `judge-openai` as a loadable plugin library: `librto_judge_openai.so`, described by the `rto-plugin.toml`
//! beside this crate. The backend lives in the `judge-openai` rlib, which rto also links in directly; only this
//! crate exports the `rto_plugin_v1` symbol, because at most one crate of a linked program may.

api::export_descriptor!(judge_openai::descriptor);
