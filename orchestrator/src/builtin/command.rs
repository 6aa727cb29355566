//! The `command` built-in.

/// Runs a shell command.
pub struct Command;
impl super::Builtin for Command {
    fn name(&self) -> &'static str {
        "command"
    }
    fn validate(&self, _: &serde_json::Value, _: &[&str]) -> Result<(), super::ParamError> {
        Ok(())
    }
    fn run(&self, _: &mut super::StageContext<'_>) -> anyhow::Result<()> {
        anyhow::bail!("todo")
    }
}
