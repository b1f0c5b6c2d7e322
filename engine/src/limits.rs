//! The limits every job lives within, whatever its handler or its input does. Each is a bound on
//! what one job may make the engine store or hold, so that one hostile input cannot exhaust the
//! server's memory or the database, or loop forever on a value the database refuses. The kinds
//! add their own limits on their inputs (see `kinds::csv_import`, `kinds::thumbnail`).

/// The largest result (as JSON) a job may record. A handler whose result is larger fails its job
/// permanently with [`result_too_large`]'s message: large outputs belong in files.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// The longest log line kept; a longer one is cut at this many bytes and marked.
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;

/// The longest stage text kept; a longer one is cut at this many bytes and marked.
pub const MAX_STAGE_BYTES: usize = 256;

/// The error a job gets when its result is over [`MAX_RESULT_BYTES`].
pub fn result_too_large(bytes: usize) -> String {
    format!(
        "the result is {} KiB, over the {} KiB limit; write large outputs to files",
        bytes.div_ceil(1024),
        MAX_RESULT_BYTES / 1024
    )
}

/// `text` cut to at most `max` bytes (on a character boundary), with a mark saying it was cut.
pub fn truncate(mut text: String, max: usize) -> String {
    const MARK: &str = "… (cut)";
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("é".repeat(100), 20);
        assert!(cut.len() <= 20, "{} bytes", cut.len());
        assert!(cut.ends_with("… (cut)"));
        assert!(cut.starts_with('é'));
    }

    #[test]
    fn the_result_message_names_the_size_and_the_limit() {
        let message = result_too_large(3 * 1024 * 1024);
        assert!(message.contains("3072 KiB"), "{message}");
        assert!(message.contains("1024 KiB limit"), "{message}");
    }
}
