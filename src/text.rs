//! Small text helpers shared by events, spans, errors and the CLI.

/// Cuts `s` to at most `max` bytes on a char boundary, saying how much was cut, so that a model
/// observation, a span attribute or an error message stays bounded whatever a tool or server sent.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated {} bytes]", &s[..end], s.len() - end)
}

/// The first line of `s`, cut to `max_chars` characters with an ellipsis: for one-line displays.
pub fn one_line(s: &str, max_chars: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > max_chars {
        format!("{}…", first.chars().take(max_chars).collect::<String>())
    } else {
        first.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_char_boundaries_and_says_what_it_cut() {
        assert_eq!(clip("short", 10), "short");
        let t = clip("ééééé", 3);
        assert!(t.starts_with('é') && t.ends_with("[truncated 8 bytes]"), "{t}");
    }

    #[test]
    fn one_line_keeps_the_first_line_within_the_limit() {
        assert_eq!(one_line("a\nb", 10), "a");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("", 3), "");
    }
}
