//! The task families: small skills with one checkable answer each.
//!
//! A task is an [`Instance`]: its family and the words and numbers it is about. The same instance renders as an
//! instruction (one of the family's prompt templates, answered by the bare answer so that exact match can judge
//! it) or as a sentence of prose for the pre-training corpus (one of its prose templates, with no chat markers).
//! Templates name their slots in braces: `{w}` a word, `{n}` a count, `{a}` and `{b}` numbers, `{p}` a phrase of
//! words separated by spaces, `{list}` words separated by `, `, and `{answer}` the answer.
//!
//! An instance's [`Instance::key`] ignores the template, so that keeping held-out keys out of the training set
//! and the corpus keeps the *task* unseen, not only its wording.

use rand_chacha::ChaCha20Rng;

use super::rng::{below, between, pick};
use super::vocab::WORDS;

/// One task family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Family {
    Reverse,
    Uppercase,
    CountLetters,
    Add,
    Subtract,
    Sort,
    FirstWord,
    LastWord,
    Repeat,
    ListLength,
    Larger,
    Spell,
}

/// Every family, in the order outputs list them; a family's position here also names its random streams.
pub(super) const ALL: [Family; 12] = [
    Family::Reverse,
    Family::Uppercase,
    Family::CountLetters,
    Family::Add,
    Family::Subtract,
    Family::Sort,
    Family::FirstWord,
    Family::LastWord,
    Family::Repeat,
    Family::ListLength,
    Family::Larger,
    Family::Spell,
];

/// The largest number the arithmetic families use: "small numbers", which a tiny model can learn to add.
const MAX_NUMBER: u32 = 99;

impl Family {
    /// The name used in params, ids and `stats.json`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Family::Reverse => "reverse",
            Family::Uppercase => "uppercase",
            Family::CountLetters => "count_letters",
            Family::Add => "add",
            Family::Subtract => "subtract",
            Family::Sort => "sort",
            Family::FirstWord => "first_word",
            Family::LastWord => "last_word",
            Family::Repeat => "repeat",
            Family::ListLength => "list_length",
            Family::Larger => "larger",
            Family::Spell => "spell",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<Family> {
        ALL.into_iter().find(|f| f.name() == name)
    }

    /// The valid names, for messages.
    pub(super) fn names() -> String {
        ALL.iter().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>().join(", ")
    }

    /// Position in [`ALL`].
    pub(super) fn index(self) -> usize {
        ALL.iter().position(|f| *f == self).unwrap_or(0)
    }

    /// A lower bound on the number of distinct instances [`Family::draw`] can produce: the held-out and the
    /// training tasks are distinct instances, so their sum may not exceed it.
    pub(super) fn capacity(self) -> u64 {
        let v = WORDS.len() as u64;
        let n = MAX_NUMBER as u64;
        match self {
            Family::Reverse | Family::CountLetters | Family::Spell => v,
            Family::Repeat => v * 4,
            // Only the shortest lengths are counted; longer ones only add more.
            Family::Uppercase | Family::ListLength => v * (v - 1),
            Family::FirstWord | Family::LastWord | Family::Sort => v * (v - 1) * (v - 2),
            Family::Add => n * n,
            Family::Subtract => n * (n + 1) / 2,
            Family::Larger => n * (n - 1),
        }
    }

    /// The instruction templates; the response is always the bare `{answer}`.
    pub(super) fn prompts(self) -> &'static [&'static str] {
        match self {
            Family::Reverse => &[
                "Reverse the word {w}.",
                "Write the word {w} backwards.",
                "What is {w} spelled backwards?",
                "Spell {w} in reverse order.",
            ],
            Family::Uppercase => &[
                "Convert to uppercase: {p}",
                "Write this in capital letters: {p}",
                "Rewrite the phrase in upper case: {p}",
            ],
            Family::CountLetters => &[
                "How many letters are in the word {w}?",
                "Count the letters in {w}.",
                "How many letters does {w} have?",
            ],
            Family::Add => {
                &["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}.", "What is the sum of {a} and {b}?"]
            }
            Family::Subtract => &["What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}."],
            Family::Sort => &[
                "Sort these words alphabetically: {list}",
                "Put these words in alphabetical order: {list}",
                "Arrange alphabetically: {list}",
            ],
            Family::FirstWord => &[
                "What is the first word of \"{p}\"?",
                "Give the first word in \"{p}\".",
                "Which word comes first in \"{p}\"?",
            ],
            Family::LastWord => &[
                "What is the last word of \"{p}\"?",
                "Give the last word in \"{p}\".",
                "Which word comes last in \"{p}\"?",
            ],
            Family::Repeat => {
                &["Repeat the word {w} {n} times.", "Write {w} {n} times.", "Say {w} {n} times, separated by spaces."]
            }
            Family::ListLength => &[
                "How many items are in this list: {list}?",
                "Count the items in this list: {list}",
                "What is the length of the list {list}?",
            ],
            Family::Larger => &[
                "Which is larger, {a} or {b}?",
                "What is the larger of {a} and {b}?",
                "Which number is bigger: {a} or {b}?",
            ],
            Family::Spell => &[
                "Spell the word {w} with dashes between the letters.",
                "Spell out {w} letter by letter, separated by dashes.",
                "Write {w} with a dash between each letter.",
            ],
        }
    }

    /// The corpus templates: the same skill stated as a fact, the way web text states facts.
    pub(super) fn prose(self) -> &'static [&'static str] {
        match self {
            Family::Reverse => &[
                "The word {w} reversed is {answer}.",
                "Spelled backwards, {w} becomes {answer}.",
                "If you write {w} backwards, you get {answer}.",
            ],
            Family::Uppercase => {
                &["In capital letters, {p} is written {answer}.", "The phrase {p} in upper case reads {answer}."]
            }
            Family::CountLetters => &["The word {w} has {answer} letters.", "There are {answer} letters in {w}."],
            Family::Add => &[
                "Adding {a} and {b} gives {answer}.",
                "{a} plus {b} equals {answer}.",
                "The sum of {a} and {b} is {answer}.",
            ],
            Family::Subtract => &[
                "{a} minus {b} equals {answer}.",
                "Subtracting {b} from {a} leaves {answer}.",
                "Taking {b} away from {a} gives {answer}.",
            ],
            Family::Sort => &[
                "In alphabetical order, the words {list} become {answer}.",
                "Sorting {list} alphabetically gives {answer}.",
            ],
            Family::FirstWord => &["The first word of \"{p}\" is {answer}.", "In \"{p}\", the first word is {answer}."],
            Family::LastWord => &["The last word of \"{p}\" is {answer}.", "In \"{p}\", the last word is {answer}."],
            Family::Repeat => {
                &["The word {w} repeated {n} times is {answer}.", "Writing {w} {n} times gives {answer}."]
            }
            Family::ListLength => {
                &["The list {list} has {answer} items.", "There are {answer} items in the list {list}."]
            }
            Family::Larger => {
                &["Between {a} and {b}, the larger number is {answer}.", "Of {a} and {b}, {answer} is the larger."]
            }
            Family::Spell => {
                &["Spelled out with dashes, {w} is {answer}.", "The letters of {w}, separated by dashes, are {answer}."]
            }
        }
    }

    /// Draws an instance; repeated draws may repeat instances (callers keep the distinct ones).
    pub(super) fn draw(self, rng: &mut ChaCha20Rng) -> Instance {
        let (words, numbers) = match self {
            Family::Reverse | Family::CountLetters | Family::Spell => (distinct_words(rng, 1), vec![]),
            Family::Repeat => {
                let word = distinct_words(rng, 1);
                (word, vec![between(rng, 2, 5)])
            }
            Family::Uppercase => {
                let n = between(rng, 2, 4) as usize;
                (distinct_words(rng, n), vec![])
            }
            Family::FirstWord | Family::LastWord => {
                let n = between(rng, 3, 6) as usize;
                (distinct_words(rng, n), vec![])
            }
            Family::Sort => {
                let n = between(rng, 3, 5) as usize;
                (distinct_words(rng, n), vec![])
            }
            Family::ListLength => {
                let n = between(rng, 2, 9) as usize;
                (distinct_words(rng, n), vec![])
            }
            Family::Add => (vec![], vec![between(rng, 1, MAX_NUMBER), between(rng, 1, MAX_NUMBER)]),
            Family::Subtract => {
                let a = between(rng, 1, MAX_NUMBER);
                (vec![], vec![a, between(rng, 1, a)])
            }
            Family::Larger => {
                let a = between(rng, 1, MAX_NUMBER);
                // A tie has no larger number: draw b from the other 98 values.
                let mut b = between(rng, 1, MAX_NUMBER - 1);
                if b >= a {
                    b += 1;
                }
                (vec![], vec![a, b])
            }
        };
        Instance { family: self, words, numbers }
    }
}

/// `n` different words (so that "the first word" or "the number of items" is never ambiguous).
fn distinct_words(rng: &mut ChaCha20Rng, n: usize) -> Vec<&'static str> {
    let mut words: Vec<&'static str> = Vec::with_capacity(n);
    while words.len() < n {
        let w = *pick(rng, WORDS);
        if !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

/// One task of a family.
#[derive(Debug, Clone)]
pub(super) struct Instance {
    pub family: Family,
    pub words: Vec<&'static str>,
    pub numbers: Vec<u32>,
}

impl Instance {
    /// Identifies the task independently of how it is worded.
    pub(super) fn key(&self) -> String {
        let numbers: Vec<String> = self.numbers.iter().map(u32::to_string).collect();
        format!("{}:{}:{}", self.family.name(), self.words.join(" "), numbers.join(","))
    }

    /// The one correct response.
    pub(super) fn answer(&self) -> String {
        let word = self.words.first().copied().unwrap_or("");
        let number = |i: usize| self.numbers.get(i).copied().unwrap_or(0);
        match self.family {
            Family::Reverse => word.chars().rev().collect(),
            Family::Uppercase => self.words.join(" ").to_uppercase(),
            Family::CountLetters => word.chars().count().to_string(),
            Family::Add => (number(0) + number(1)).to_string(),
            Family::Subtract => number(0).saturating_sub(number(1)).to_string(),
            Family::Sort => {
                let mut sorted = self.words.clone();
                sorted.sort_unstable();
                sorted.join(", ")
            }
            Family::FirstWord => word.to_owned(),
            Family::LastWord => self.words.last().copied().unwrap_or("").to_owned(),
            Family::Repeat => vec![word; number(0) as usize].join(" "),
            Family::ListLength => self.words.len().to_string(),
            Family::Larger => number(0).max(number(1)).to_string(),
            Family::Spell => word.chars().map(String::from).collect::<Vec<_>>().join("-"),
        }
    }

    /// The values of the slots templates may name.
    fn slots(&self) -> Vec<(&'static str, String)> {
        let mut slots = vec![("answer", self.answer())];
        match self.family {
            Family::Reverse | Family::CountLetters | Family::Spell => slots.push(("w", self.words.join(""))),
            Family::Repeat => {
                slots.push(("w", self.words.join("")));
                slots.push(("n", self.numbers.first().copied().unwrap_or(0).to_string()));
            }
            Family::Uppercase | Family::FirstWord | Family::LastWord => slots.push(("p", self.words.join(" "))),
            Family::Sort | Family::ListLength => slots.push(("list", self.words.join(", "))),
            Family::Add | Family::Subtract | Family::Larger => {
                slots.push(("a", self.numbers.first().copied().unwrap_or(0).to_string()));
                slots.push(("b", self.numbers.get(1).copied().unwrap_or(0).to_string()));
            }
        }
        slots
    }

    /// The instruction, in a template drawn from `rng`.
    pub(super) fn prompt(&self, rng: &mut ChaCha20Rng) -> String {
        let templates = self.family.prompts();
        self.render(templates[below(rng, templates.len())])
    }

    /// A sentence of prose stating the task and its answer, in a template drawn from `rng`.
    pub(super) fn sentence(&self, rng: &mut ChaCha20Rng) -> String {
        let templates = self.family.prose();
        self.render(templates[below(rng, templates.len())])
    }

    /// Fills `template`'s slots. Slot values are words, numbers and separators, never braces, so one pass per
    /// slot cannot create a new slot.
    pub(super) fn render(&self, template: &str) -> String {
        let mut text = template.to_owned();
        for (name, value) in self.slots() {
            text = text.replace(&format!("{{{name}}}"), &value);
        }
        text
    }
}
