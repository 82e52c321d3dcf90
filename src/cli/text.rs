//! Text for the terminal.

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
    fn one_line_keeps_the_first_line_within_the_limit() {
        assert_eq!(one_line("a\nb", 10), "a");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("", 3), "");
    }
}
