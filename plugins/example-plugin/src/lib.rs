//! The plugin template (see plugins/README.md): a judge with one op, `longest`, that reads a JSONL file of
//! responses and writes the id of the longest one. A real plugin is this, with more ops.

use api::{Backend, Error, Kind, OpContext};

/// The back-end. It keeps no state, but a model back-end would hold a loaded model here.
pub struct Example;

impl Backend for Example {
    const NAME: &'static str = "example";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const KIND: Kind = Kind::Judge;

    fn ops() -> Vec<api::protocol::OpInfo> {
        vec![api::op("longest", "the id of the longest response")]
    }

    fn create(_config: &serde_json::Value) -> Result<Self, Error> {
        Ok(Example)
    }

    fn validate(&self, _op: &str, params: &serde_json::Value, inputs: &[String]) -> Result<(), Error> {
        if !inputs.iter().any(|i| i == "responses") {
            return Err(Error::param(&[], "`longest` needs an input named `responses`"));
        }
        match params.get("field") {
            None => Ok(()),
            Some(f) if f.is_string() => Ok(()),
            Some(_) => Err(Error::param(&["field"], "`field` must be a string, e.g. `field = \"response\"`")),
        }
    }

    fn invoke(&mut self, _op: &str, ctx: &mut OpContext<'_>) -> Result<serde_json::Value, Error> {
        let field = ctx.params.get("field").and_then(|f| f.as_str()).unwrap_or("response");
        let path = ctx.input("responses")?;
        let text = std::fs::read_to_string(path)?;
        let mut best: Option<(usize, serde_json::Value)> = None;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::Failed(format!("`{}` line {}: {e}", path.display(), i + 1)))?;
            let len = row[field].as_str().map(|s| s.chars().count()).unwrap_or(0);
            if best.as_ref().is_none_or(|(b, _)| len > *b) {
                best = Some((len, row["id"].clone()));
            }
            if ctx.cancelled() {
                return Err(Error::Cancelled);
            }
        }
        let summary = serde_json::json!({ "longest": best.map(|(_, id)| id), "field": field });
        std::fs::write(ctx.out_dir.join("longest.json"), summary.to_string())?;
        Ok(summary)
    }
}

api::export_plugin!(Example);
