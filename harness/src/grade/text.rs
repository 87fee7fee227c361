//! Text that came from a submission (hosts files, logs, build output, command output) made
//! safe to show: [`clean`] is the one filter every such text passes before it reaches a
//! reason, a report or the terminal.

/// Replaces what cannot be shown as it is.
pub const REPLACEMENT: char = '\u{FFFD}';

/// Removes terminal escape sequences and replaces every other control character with
/// U+FFFD, keeping newlines and tabs. A submission's output can then neither move the
/// cursor, retitle or clear the terminal, hide text in a report, nor break a JUnit file.
///
/// - `ESC [ … final` (CSI), `ESC ] … BEL|ESC \` (OSC), `ESC P|X|^|_ … ESC \` (DCS, SOS, PM,
///   APC) and any other `ESC x` are removed whole; an unterminated string sequence is
///   removed to the end of the text.
/// - The 8-bit forms (U+009B CSI, U+009D OSC, U+0090 DCS, …) are treated the same way.
/// - `\r\n` becomes `\n`; a lone `\r`, other C0/C1 controls, DEL, and the Unicode
///   direction overrides (U+202A–U+202E, U+2066–U+2069, which reorder what is displayed)
///   become U+FFFD.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => {
                if it.peek() == Some(&'\n') {
                    continue;
                }
                out.push(REPLACEMENT);
            }
            '\u{1b}' => match it.next() {
                Some('[') => skip_csi(&mut it),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut it),
                // Two-character sequences (ESC 7, ESC c, ESC ( B's first part, …): the
                // intermediate bytes of `ESC ( B` are taken as well.
                Some(c) if (' '..='/').contains(&c) => {
                    it.next();
                }
                Some(_) | None => {}
            },
            '\u{9b}' => skip_csi(&mut it),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut it),
            c if c.is_control() || is_direction_override(c) => out.push(REPLACEMENT),
            c => out.push(c),
        }
    }
    out
}

/// Whether a text holds anything [`clean`] would change besides `\r\n` line ends.
pub fn is_clean(s: &str) -> bool {
    clean(&s.replace("\r\n", "\n")) == s.replace("\r\n", "\n")
}

fn is_direction_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Skips a CSI's parameters and intermediates up to and including its final byte.
fn skip_csi(it: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in it.by_ref() {
        if ('@'..='~').contains(&c) {
            return;
        }
        // A control character inside a CSI ends it (terminals do the same for most).
        if c.is_control() {
            return;
        }
    }
}

/// Skips a string sequence up to and including BEL, `ESC \` or the 8-bit ST.
fn skip_string(it: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = it.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                if it.peek() == Some(&'\\') {
                    it.next();
                }
                return;
            }
            _ => {}
        }
    }
}

/// The last `lines` lines of a text, cleaned, each cut at `width` characters.
pub fn last_lines(s: &str, lines: usize, width: usize) -> String {
    let all: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = all.len().saturating_sub(lines);
    all[from..]
        .iter()
        .map(|l| {
            let l = clean(l);
            if l.chars().count() > width {
                l.chars().take(width).collect::<String>() + "…"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_unchanged() {
        let s = "node0 (10.79.1.10): still listed as host1 in /etc/hosts\n\tnext line — ünïcode ✓";
        assert_eq!(clean(s), s);
        assert!(is_clean(s));
    }

    #[test]
    fn escape_sequences_are_removed_whole() {
        // Colours, cursor movement, clearing the screen.
        assert_eq!(
            clean("\u{1b}[31mred\u{1b}[0m \u{1b}[2J\u{1b}[1;1Hx"),
            "red x"
        );
        // A window title (OSC ended by BEL and by ST), and a hyperlink.
        assert_eq!(clean("a\u{1b}]0;pwned\u{7}b"), "ab");
        assert_eq!(clean("a\u{1b}]0;pwned\u{1b}\\b"), "ab");
        assert_eq!(
            clean("\u{1b}]8;;http://x/\u{1b}\\link\u{1b}]8;;\u{1b}\\"),
            "link"
        );
        // DCS and the charset selection `ESC ( B`, `ESC 7`.
        assert_eq!(clean("a\u{1b}Pq#0\u{1b}\\b\u{1b}(Bc\u{1b}7d"), "abcd");
        // 8-bit CSI and OSC.
        assert_eq!(clean("a\u{9b}31mb\u{9d}0;t\u{9c}c"), "abc");
        // Unterminated: removed to the end, nothing of it left.
        assert_eq!(clean("ok\u{1b}]0;never ends"), "ok");
        assert_eq!(clean("ok\u{1b}[12"), "ok");
        assert_eq!(clean("ok\u{1b}"), "ok");
    }

    #[test]
    fn other_controls_become_visible_replacements() {
        assert_eq!(
            clean("a\u{7}b\u{0}c\u{8}d\u{7f}e"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}e"
        );
        // Line ends: CRLF is a line end, a lone CR (which overwrites a line) is not.
        assert_eq!(clean("one\r\ntwo\rthree"), "one\ntwo\u{FFFD}three");
        // C1 controls other than the sequence introducers.
        assert_eq!(clean("a\u{85}b"), "a\u{FFFD}b");
        // Direction overrides that reorder what a reader sees.
        assert_eq!(clean("a\u{202E}cba\u{2066}"), "a\u{FFFD}cba\u{FFFD}");
        assert!(!is_clean("a\u{1b}[0m"));
    }

    #[test]
    fn the_result_never_holds_a_control_character() {
        // Every byte value as a character, in every position an escape could start.
        let all: String = (0u32..0x250).filter_map(char::from_u32).collect();
        for s in [
            all.clone(),
            format!("\u{1b}{all}"),
            format!("\u{1b}[{all}"),
            format!("\u{1b}]{all}"),
            all.chars().rev().collect(),
        ] {
            let c = clean(&s);
            assert!(
                c.chars().all(|c| c == '\n'
                    || c == '\t'
                    || !(c.is_control() || is_direction_override(c))),
                "{c:?}"
            );
            // Cleaning is idempotent.
            assert_eq!(clean(&c), c);
        }
    }

    #[test]
    fn last_lines_keeps_the_end_cleaned_and_cut() {
        let s = "a\nb\n\n\u{1b}[1mc\u{1b}[0m\nddddd\n";
        assert_eq!(last_lines(s, 2, 10), "c\nddddd");
        assert_eq!(last_lines(s, 1, 3), "ddd…");
        assert_eq!(last_lines("", 3, 10), "");
    }
}
