//! Steps picked out of a plan while the planner is still writing it (`stream_plan`).
//!
//! The model streams the plan's JSON text; [`StepStream`] scans it as it arrives and hands out
//! each element of the top-level `steps` array as soon as its closing brace is in, so the
//! tracker can start a step whose dependencies are met before the rest of the plan exists
//! (LLMCompiler's streaming planner). It only finds candidates: the complete plan is still
//! parsed and validated as a whole when the stream ends.

use super::StepSpec;

/// An incremental scanner over a plan's JSON text.
///
/// It tracks only JSON's structure (nesting, strings, escapes), which is all it takes to find
/// where each step object ends; each step's text is then parsed with serde. Structural bytes are
/// ASCII, which never occurs inside a multi-byte UTF-8 sequence, so scanning bytes is sound.
#[derive(Debug, Default)]
pub(crate) struct StepStream {
    text: String,
    /// Next byte of `text` to scan.
    pos: usize,
    /// Nesting depth; the plan object itself is depth 1 once its `{` is seen.
    depth: u32,
    in_string: bool,
    escaped: bool,
    string_start: usize,
    /// The plan object's key whose value comes next, once its `:` is seen.
    key: Option<String>,
    /// The last string closed at depth 1 (a key, until a `:` confirms it).
    last_string: Option<String>,
    awaiting_value: bool,
    in_steps: bool,
    step_start: Option<usize>,
    goal: Option<String>,
}

impl StepStream {
    /// A scanner with nothing read yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The plan's `goal`, once it has streamed in (models usually write it first).
    #[cfg(test)]
    pub(crate) fn goal(&self) -> Option<&str> {
        self.goal.as_deref()
    }

    /// Reads the next piece of text and returns the steps it completed, in order. Text before
    /// the plan's opening brace (a code fence, a preamble) is skipped; a step whose text does
    /// not parse as a step is left out (the whole plan's validation will name it).
    pub(crate) fn push(&mut self, piece: &str) -> Vec<StepSpec> {
        self.text.push_str(piece);
        let mut found = Vec::new();
        while self.pos < self.text.len() {
            let i = self.pos;
            let b = self.text.as_bytes()[i];
            self.pos += 1;
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => {
                        self.in_string = false;
                        if self.depth == 1 {
                            self.closed_top_level_string(i);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => {
                    self.in_string = true;
                    self.string_start = i;
                }
                b':' if self.depth == 1 => {
                    self.key = self.last_string.take();
                    self.awaiting_value = true;
                }
                b',' if self.depth == 1 => self.awaiting_value = false,
                b'{' | b'[' => {
                    self.depth += 1;
                    if b == b'['
                        && self.depth == 2
                        && self.awaiting_value
                        && self.key.as_deref() == Some("steps")
                    {
                        self.in_steps = true;
                    }
                    if b == b'{' && self.depth == 3 && self.in_steps {
                        self.step_start = Some(i);
                    }
                }
                b'}' | b']' if self.depth > 0 => {
                    if b == b'}'
                        && self.depth == 3
                        && let Some(start) = self.step_start.take()
                        && let Ok(step) = serde_json::from_str::<StepSpec>(&self.text[start..=i])
                    {
                        found.push(step);
                    }
                    self.depth -= 1;
                    if self.depth == 1 {
                        self.in_steps = false;
                        self.awaiting_value = false;
                    }
                }
                _ => {}
            }
        }
        found
    }

    /// A string at the plan object's level ended at byte `end`: a key, or the value of `key`.
    fn closed_top_level_string(&mut self, end: usize) {
        let raw = &self.text[self.string_start..=end];
        if self.awaiting_value {
            if self.key.as_deref() == Some("goal") {
                self.goal = serde_json::from_str(raw).ok();
            }
            self.awaiting_value = false;
        } else {
            self.last_string = serde_json::from_str(raw).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"```json
{"goal": "ship \"it\" {now}",
 "notes": {"steps": [{"id": "decoy", "description": "not a step"}]},
 "steps": [
   {"id": "a", "description": "brace } and \\\" inside", "expected_outcome": "", "tool": null, "depends_on": []},
   {"id": "b", "description": "nested", "depends_on": ["a"], "tool": "x"},
   {"id": "bad", "oops": true},
   {"id": "c", "description": "ünïcødé ✓", "depends_on": ["a", "b"]}
 ]}
```"#;

    fn ids(steps: &[StepSpec]) -> Vec<&str> {
        steps.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn whole_text_yields_every_parsable_step_in_order() {
        let mut s = StepStream::new();
        let steps = s.push(PLAN);
        assert_eq!(ids(&steps), ["a", "b", "c"]);
        assert_eq!(steps[0].description, "brace } and \\\" inside");
        assert_eq!(steps[1].depends_on, vec!["a".into()]);
        assert_eq!(s.goal(), Some("ship \"it\" {now}"));
    }

    #[test]
    fn any_split_gives_the_same_steps_as_soon_as_each_closes() {
        // Every split point, including inside multi-byte characters' neighbours and escapes.
        let cuts: Vec<usize> = (0..=PLAN.len()).filter(|&i| PLAN.is_char_boundary(i)).collect();
        for &cut in &cuts {
            let mut s = StepStream::new();
            let mut steps = s.push(&PLAN[..cut]);
            let end_of_a = PLAN.find(r#""depends_on": []}"#).unwrap() + r#""depends_on": []}"#.len();
            if cut >= end_of_a {
                assert_eq!(steps.first().map(|s| s.id.as_str()), Some("a"), "cut at {cut}");
            } else {
                assert!(steps.is_empty(), "cut at {cut} yielded {:?}", ids(&steps));
            }
            steps.extend(s.push(&PLAN[cut..]));
            assert_eq!(ids(&steps), ["a", "b", "c"], "cut at {cut}");
        }
        // One character at a time.
        let mut s = StepStream::new();
        let mut steps = Vec::new();
        for ch in PLAN.chars() {
            steps.extend(s.push(ch.encode_utf8(&mut [0; 4])));
        }
        assert_eq!(ids(&steps), ["a", "b", "c"]);
    }

    #[test]
    fn steps_before_the_key_or_outside_the_plan_are_ignored() {
        let mut s = StepStream::new();
        assert!(s.push(r#"Here you go: [{"id":"x","description":"d"}] "#).is_empty());
        assert!(s.push(r#"{"steps": "none", "other": [{"id":"y","description":"d"}]}"#).is_empty());
        let mut s = StepStream::new();
        assert_eq!(ids(&s.push(r#"{"steps":[{"id":"z","description":"d"}]}"#)), ["z"]);
    }
}
