//! The committed man page, shell completions and README tables must be what `cargo xtask gen`
//! makes of the current data (src/cli.rs, src/exit.rs, doc/deltapush-mda.1.template); and they
//! must work.

use std::fs;
use std::path::Path;
use std::process::Command;

use xtask::{cli, exit};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_man_page_completions_and_readme_are_current() {
    let stale = xtask::stale(root(), &xtask::generate(root()));
    assert!(
        stale.is_empty(),
        "{} out of date with src/cli.rs, src/exit.rs or the man page template: {}",
        stale.join(", "),
        xtask::REGENERATE
    );
}

/// The check above would pass on anything if `stale` could not see a difference.
#[test]
fn stale_names_missing_and_changed_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let readme: String = xtask::README_BLOCKS
        .iter()
        .map(|(_, start, end)| format!("{start}\n{end}\n"))
        .collect();
    fs::write(dir.path().join("README.md"), readme).unwrap();
    let files = xtask::generate(dir.path());
    let all: Vec<_> = files.iter().map(|f| f.path).collect();
    assert_eq!(
        all,
        [
            "README.md",
            "doc/deltapush-mda.1",
            "completions/deltapush-mda.bash",
            "completions/_deltapush-mda",
            "completions/deltapush-mda.fish"
        ]
    );
    assert_eq!(xtask::stale(dir.path(), &files), all);

    assert_eq!(xtask::write(dir.path(), &files).unwrap(), all);
    assert!(xtask::stale(dir.path(), &files).is_empty());
    assert!(xtask::write(dir.path(), &files).unwrap().is_empty());

    let man = dir.path().join("doc/deltapush-mda.1");
    let mut text = fs::read(&man).unwrap();
    text.extend_from_slice(b".\\\" edited by hand\n");
    fs::write(&man, text).unwrap();
    assert_eq!(xtask::stale(dir.path(), &files), ["doc/deltapush-mda.1"]);
}

/// The version in the man page is the program's: xtask compiles src/cli.rs in itself, and clap's
/// `version` is the version of the crate that compiles it.
#[test]
fn man_page_has_the_programs_version() {
    let page = man_page();
    let th = page.lines().find(|l| l.starts_with(".TH ")).unwrap();
    assert!(
        th.contains(&format!(
            "\"deltapush\\-mda {}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{th}"
    );
}

fn man_page() -> String {
    xtask::man_page(xtask::MAN_TEMPLATE, xtask::command()).unwrap()
}

/// The text of the section `title` of a man page, up to the next section.
fn section<'a>(page: &'a str, title: &str) -> &'a str {
    let start = format!(".SH {title}\n");
    page.split(&start)
        .nth(1)
        .and_then(|rest| rest.split("\n.SH ").next())
        .unwrap_or_else(|| panic!("no {start:?} in {page}"))
}

/// One `.TP` entry per status of `exit::STATUSES`, in its order and words, and nothing else.
#[test]
fn exit_status_section_is_the_statuses() {
    let page = man_page();
    let section = section(&page, "\"EXIT STATUS\"");
    let entries: Vec<_> = section.split(".TP\n").skip(1).collect();
    assert_eq!(entries.len(), exit::STATUSES.len(), "{section}");
    for (entry, status) in entries.iter().zip(exit::STATUSES) {
        assert_eq!(
            entry.trim_end(),
            format!("\\fB{}\\fR\n{}", status.code, xtask::roff(status.meaning))
        );
    }
    // The codes main exits with are all in the table.
    for code in [
        0,
        exit::USAGE,
        exit::UNAVAILABLE,
        exit::IOERR,
        exit::TEMPFAIL,
        exit::CONFIG,
    ] {
        assert!(exit::STATUSES.iter().any(|s| s.code == code), "{code}");
    }
}

#[test]
fn readme_tables_are_the_data() {
    let table = xtask::exit_status_table();
    let rows: Vec<_> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), exit::STATUSES.len());
    for (row, status) in rows.iter().zip(exit::STATUSES) {
        assert_eq!(*row, format!("| {} | {} |", status.code, status.meaning));
    }
    let table = xtask::token_places_table();
    let rows: Vec<_> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), cli::TOKEN_PLACES.len());
    for (row, (platform, _, note)) in rows.iter().zip(cli::TOKEN_PLACES) {
        assert!(row.starts_with(&format!("| {platform} |")), "{row}");
        assert!(row.ends_with(&format!(" {note} |")), "{row}");
    }
}

/// The section that says where the token is shows every platform of `cli::TOKEN_PLACES`.
#[test]
fn man_page_says_where_the_token_is() {
    let page = man_page();
    let section = section(&page, "\"WHERE THE TOKEN IS\"");
    for (platform, line, note) in cli::TOKEN_PLACES {
        assert!(
            section.contains(&format!(".TP\n\\fB{platform}\\fR\n")),
            "{section}"
        );
        assert!(section.contains(&xtask::roff(line)), "{line}: {section}");
        // Past its first letter, which a note standing alone starts in upper case.
        assert!(
            section.contains(&xtask::roff(&note[1..])),
            "{note}: {section}"
        );
    }
}

/// A hidden argument (the deferred sender's flag) is in no generated file.
#[test]
fn hidden_arguments_appear_nowhere() {
    let mut cmd = xtask::command();
    cmd.build();
    let hidden: Vec<_> = cmd
        .get_arguments()
        .filter(|a| a.is_hide_set())
        .filter_map(|a| a.get_long())
        .collect();
    assert!(!hidden.is_empty(), "the test would check nothing");
    for file in xtask::generate(root()) {
        let text = String::from_utf8_lossy(&file.contents);
        for long in &hidden {
            for spelling in [
                format!("--{long}"),
                format!("\\-\\-{}", long.replace('-', "\\-")),
            ] {
                assert!(!text.contains(&spelling), "{} shows {spelling}", file.path);
            }
        }
    }
}

#[test]
fn every_placeholder_is_needed_and_filled() {
    let template = xtask::MAN_TEMPLATE;
    let cmd = xtask::command;
    let without = template.replace("!!EXIT-STATUS!!", "");
    assert_eq!(
        xtask::man_page(&without, cmd()),
        Err("the placeholder !!EXIT-STATUS!! is missing".to_string())
    );
    let unknown = format!("{template}!!EXAMPLES!!\n");
    assert_eq!(
        xtask::man_page(&unknown, cmd()),
        Err("unknown placeholder !!EXAMPLES!!".to_string())
    );
    let unescaped = format!("{template}Settings \u{2192} Advanced\n");
    assert_eq!(
        xtask::man_page(&unescaped, cmd()),
        Err("'\u{2192}' is not ASCII: write it as a roff glyph such as \\[u2192]".to_string())
    );
    let page = man_page();
    assert!(!page.contains("!!"), "{page}");
    assert!(
        page.starts_with(".\\\" Generated by `cargo xtask gen`"),
        "{page}"
    );
}

#[test]
fn roff_escapes_what_roff_would_read_as_its_own() {
    assert_eq!(
        xtask::roff(".a-b\\c 'd' \u{2026}"),
        "\\&.a\\-b\\ec \\(aqd\\(aq \\[u2026]"
    );
}

/// Lintian's check: groff has nothing to complain about in the page.
#[test]
fn man_page_renders_without_warnings() {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
        .arg(root().join("doc/deltapush-mda.1"))
        .env("LC_ALL", "C.UTF-8")
        .env("MANROFFSEQ", "")
        .env("MANWIDTH", "80")
        .output()
        .expect("man(1) runs (package man-db, see .ci/setup)");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(!out.stdout.is_empty());
}

/// Runs the committed bash completion the way bash's programmable completion would. `compopt`
/// only works inside a real completion, so it is a no-op here: COMPREPLY is what is checked.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source {}; compopt() {{ :; }}; COMP_WORDS=({}); COMP_CWORD={}; _deltapush__mda deltapush-mda \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        root().join("completions/deltapush-mda.bash").display(),
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_options() {
    assert_eq!(
        bash_complete(&["deltapush-mda", "--t"]),
        ["--token-file", "--timeout", "--tempfail", "--trust-server"]
    );
    assert_eq!(bash_complete(&["deltapush-mda", "--dr"]), ["--dry-run"]);
}

/// A duration is typed, not picked from the files in the current directory.
#[test]
fn bash_offers_no_file_names_for_durations() {
    for option in ["--interval", "--timeout", "--max-age"] {
        assert_eq!(
            bash_complete(&["deltapush-mda", option, ""]),
            [""],
            "{option}"
        );
    }
}
