//! `cargo xtask gen`: regenerate the man page, shell completions and README tables from their data.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args != ["gen"] {
        eprintln!(
            "usage: cargo xtask gen   (writes doc/deltapush-mda.1, completions/* and README.md's tables)"
        );
        return ExitCode::from(64);
    }
    // The xtask crate lives one level below the repository root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent");
    match xtask::write(root, &xtask::generate(root)) {
        Ok(changed) if changed.is_empty() => println!("up to date"),
        Ok(changed) => changed.iter().for_each(|path| println!("wrote {path}")),
        Err(e) => {
            eprintln!("xtask gen: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
