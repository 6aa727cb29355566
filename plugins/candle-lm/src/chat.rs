//! Chat templates: a conversation rendered into the prompt text a chat model was tuned on, the way
//! `transformers`' `apply_chat_template` renders it (Jinja with `trim_blocks` and `lstrip_blocks`, Python string
//! methods, `raise_exception`, `bos_token` / `eos_token` / `add_generation_prompt` in the context).
//!
//! `strftime_now` is deliberately not defined: templates that use it (Llama 3.1) test `strftime_now is defined`
//! and fall back to a fixed date, so the same request renders the same prompt on any day.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

const NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, or whatever roles the template knows.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

/// A compiled chat template with the special-token texts it may insert.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos_token", &self.bos_token).field("eos_token", &self.eos_token).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; the error says where it does not parse.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        // transformers renders chat templates with these settings; without them most templates emit stray newlines.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("the template raised an exception: {message}")))
        });
        env.add_template_owned(NAME, source.to_owned()).map_err(|e| e.to_string())?;
        Ok(Self { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    message += &format!(": {inner}");
                    source = inner.source();
                }
                message
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn renders_chatml_as_transformers_does() {
        // SmolLM2's template (abridged, system prompt shortened), with block tags on lines of their own: trim_blocks
        // drops the newline after a block tag, lstrip_blocks the indentation before one.
        let source = "{% for message in messages %}\n  {% if loop.first and messages[0]['role'] != 'system' %}\n\
                      {{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}{% endif %}\n\
                      {{'<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>\\n'}}\
                      {% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(source, "", "<|im_end|>").unwrap();
        let text = t.render(&[msg("user", " Hi? ")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = t.render(&[msg("system", "S"), msg("user", "U")], false).unwrap();
        assert_eq!(text, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
    }

    #[test]
    fn special_tokens_exceptions_and_dates() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(t.render(&[msg("user", "a"), msg("assistant", "b")], true).unwrap(), "<s>a</s>b</s>");
        let t = ChatTemplate::new(
            "{% if messages|length > 1 %}{{ raise_exception('one turn only') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[msg("user", "a")], true).unwrap(), "ok");
        let err = t.render(&[msg("user", "a"), msg("user", "b")], true).unwrap_err();
        assert!(err.contains("one turn only"), "{err}");
        let t = ChatTemplate::new(
            "{% if strftime_now is defined %}{{ strftime_now('%Y') }}{% else %}fixed{% endif %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "fixed");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
