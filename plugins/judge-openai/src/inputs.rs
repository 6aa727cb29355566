//! Reading the JSONL inputs and joining them into the items to judge. Every error names the input, the file
//! and the line, because the file is usually another stage's output and the user has to find the row.
//!
//! Rows are objects with an `id` (string or integer, unique per file) and the response in `field`
//! (`response` by default), as `candle-lm:sample` writes them. The instruction an item is judged on is, in
//! order: the `instruction` (else `prompt`) of the row with the same id in the optional `prompts` input; the
//! row's own `instruction`; its `prompt`. (`candle-lm:sample` passes the dataset's raw `instruction` through,
//! while its `prompt` is the chat-templated text the model saw.)

use std::collections::BTreeMap;

use api::jsonl::{Input, Row, read};
use api::{Error, OpContext};
use serde_json::Value;

/// The row's own instruction: `instruction`, else `prompt`.
fn own_instruction<'r>(input: &Input, row: &'r Row) -> Result<Option<&'r str>, Error> {
    for key in ["instruction", "prompt"] {
        if row.fields.contains_key(key) {
            return input.text(row, key).map(Some);
        }
    }
    Ok(None)
}

/// One item to judge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub id: Value,
    pub instruction: String,
    /// The response judged (`responses`), or model `a`'s.
    pub a: String,
    /// Model `b`'s response (pairwise protocols only).
    pub b: Option<String>,
}

/// The items of a single-response op: input `responses`, optional `prompts`.
pub(crate) fn single(ctx: &OpContext<'_>, field: &str) -> Result<Vec<Item>, Error> {
    let responses = read(ctx, "responses")?;
    let prompts = optional(ctx, "prompts")?;
    let prompt_ids = prompts.as_ref().map(Input::by_id);
    let mut items = Vec::with_capacity(responses.rows.len());
    for row in &responses.rows {
        let instruction = instruction_of(&responses, row, prompts.as_ref().zip(prompt_ids.as_ref()))?;
        items.push(Item { id: row.id.clone(), instruction, a: responses.text(row, field)?.to_string(), b: None });
    }
    Ok(items)
}

/// The items of a pairwise op: inputs `a` and `b` joined by id (in `a`'s order; both must hold the same ids),
/// optional `prompts`.
pub(crate) fn pairs(ctx: &OpContext<'_>, field: &str) -> Result<Vec<Item>, Error> {
    let a = read(ctx, "a")?;
    let b = read(ctx, "b")?;
    let prompts = optional(ctx, "prompts")?;
    let prompt_ids = prompts.as_ref().map(Input::by_id);
    let (a_ids, b_ids) = (a.by_id(), b.by_id());
    // A comparison on different item sets is not paired: every id must be in both.
    if let Some(orphan) = b.rows.iter().find(|r| !a_ids.contains_key(&r.id.to_string())) {
        return Err(Error::Failed(format!(
            "{}: id {} has no row in input `a` (`{}`)",
            b.at(orphan.line),
            orphan.id,
            a.path.display()
        )));
    }
    let mut items = Vec::with_capacity(a.rows.len());
    for row in &a.rows {
        let Some(b_row) = b_ids.get(&row.id.to_string()) else {
            return Err(Error::Failed(format!(
                "{}: id {} has no row in input `b` (`{}`)",
                a.at(row.line),
                row.id,
                b.path.display()
            )));
        };
        let instruction = instruction_of(&a, row, prompts.as_ref().zip(prompt_ids.as_ref()))?;
        // Without a `prompts` input both rows carry the instruction; they must agree, or the join is wrong.
        if prompts.is_none()
            && let Some(other) = own_instruction(&b, b_row)?
            && other != instruction
        {
            return Err(Error::Failed(format!(
                "{}: id {} has a different instruction than {} in input `a`; the two inputs are not answers to \
                 the same prompts (or give a `prompts` input to say which instruction to judge on)",
                b.at(b_row.line),
                row.id,
                a.at(row.line)
            )));
        }
        items.push(Item {
            id: row.id.clone(),
            instruction,
            a: a.text(row, field)?.to_string(),
            b: Some(b.text(b_row, field)?.to_string()),
        });
    }
    Ok(items)
}

/// The instruction of `row` of `input` (see the module doc).
fn instruction_of(
    input: &Input,
    row: &Row,
    prompts: Option<(&Input, &BTreeMap<String, &Row>)>,
) -> Result<String, Error> {
    if let Some((prompts, by_id)) = prompts {
        let Some(p) = by_id.get(&row.id.to_string()) else {
            return Err(Error::Failed(format!(
                "{}: id {} has no row in input `prompts` (`{}`)",
                input.at(row.line),
                row.id,
                prompts.path.display()
            )));
        };
        return match own_instruction(prompts, p)? {
            Some(text) => Ok(text.to_string()),
            None => Err(Error::Failed(format!("{}: no field `instruction` or `prompt`", prompts.at(p.line)))),
        };
    }
    match own_instruction(input, row)? {
        Some(text) => Ok(text.to_string()),
        None => Err(Error::Failed(format!(
            "{}: no field `instruction` or `prompt` to judge the response against; add one, or give the stage \
             a `prompts` input",
            input.at(row.line)
        ))),
    }
}

fn optional(ctx: &OpContext<'_>, name: &str) -> Result<Option<Input>, Error> {
    if ctx.inputs.contains_key(name) { read(ctx, name).map(Some) } else { Ok(None) }
}
