//! The shipped files of `examples/`, as the tests use them.

use std::fs;
use std::path::Path;

/// An example file with the listed values replaced; each must occur exactly as often as given,
/// so an edited example cannot silently stop being the file under test.
pub fn render(example: &str, subs: &[(&str, usize, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example);
    let mut text = fs::read_to_string(&path).unwrap();
    for (from, count, to) in subs {
        assert_eq!(
            text.matches(from).count(),
            *count,
            "examples/{example} should contain `{from}` {count} time(s)"
        );
        text = text.replace(from, to);
    }
    text
}
