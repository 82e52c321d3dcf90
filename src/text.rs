//! Small text helpers shared by events, spans and errors.

/// Cuts `s` to at most `max` bytes on a char boundary, saying how much was cut, so that a model
/// observation, a span attribute or an error message stays bounded whatever a tool or server sent.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated {} bytes]", &s[..end], s.len() - end)
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
}
