//! The committed man page, shell completions and README option table must be what
//! `cargo xtask gen` makes of the current src/cli.rs; and they must work.

use std::fs;
use std::path::Path;
use std::process::Command;

use clap::CommandFactory;
use xtask::cli::Cli;
use xtask::exit::{
    CONFIG as EX_CONFIG, IOERR as EX_IOERR, TEMPFAIL as EX_TEMPFAIL, UNAVAILABLE as EX_UNAVAILABLE,
    USAGE as EX_USAGE,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_man_page_and_completions_are_current() {
    let stale = xtask::stale(root(), &xtask::generate(root()));
    assert!(
        stale.is_empty(),
        "{} out of date with src/cli.rs (its options, help texts or the version changed): {}",
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

#[test]
fn exit_status_section_follows_the_help_epilogue() {
    let cmd = clap::Command::new("x")
        .version("1")
        .about("Do x: well")
        .after_help("Exit status:\n  0   fine\n  64  usage: a very\n      long line\n\nMore: text");
    let page = String::from_utf8(xtask::man_page(cmd)).unwrap();
    assert!(
        page.contains(
            ".TP\n\\fB0\\fR\nfine\n.TP\n\\fB64\\fR\nusage: a very long line\n.SH ENVIRONMENT"
        ),
        "{page}"
    );
}

#[test]
#[should_panic(expected = "no \"Exit status\" paragraph")]
fn a_lost_exit_status_table_stops_the_generator() {
    xtask::man_page(
        clap::Command::new("x")
            .version("1")
            .about("Do x")
            .after_help("Examples: none"),
    );
}

fn man_page() -> String {
    String::from_utf8(xtask::man_page(Cli::command())).unwrap()
}

#[test]
fn man_page_lists_every_exit_code() {
    let page = man_page();
    let section = page
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .and_then(|rest| rest.split(".SH").next())
        .expect("an EXIT STATUS section");
    for code in [
        0,
        EX_USAGE,
        EX_UNAVAILABLE,
        EX_IOERR,
        EX_TEMPFAIL,
        EX_CONFIG,
    ] {
        assert!(
            section.contains(&format!(".TP\n\\fB{code}\\fR")),
            "exit code {code} is missing from the \"Exit status\" table of --help (src/cli.rs)"
        );
    }
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
        ["--token-file", "--timeout", "--tempfail"]
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
