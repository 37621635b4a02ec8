use std::process::ExitCode;

use clap::Parser;
use deltapush_mda::cli::{self, Cli};
use deltapush_mda::error::Error;
use deltapush_mda::{Output, Verbosity};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let quiet = std::env::args_os().any(|a| a == "-q" || a == "--quiet");
            let verbosity = if quiet {
                Verbosity::Quiet
            } else {
                Verbosity::Normal
            };
            return exit(
                Err(Error::Usage(cli::usage_line(&e))),
                &Output { verbosity },
            );
        }
    };
    let out = Output {
        verbosity: match (cli.quiet, cli.verbose) {
            (true, _) => Verbosity::Quiet,
            (_, true) => Verbosity::Verbose,
            _ => Verbosity::Normal,
        },
    };
    exit(deltapush_mda::run(&cli, &out), &out)
}

/// The one place where an outcome becomes an exit status.
fn exit(result: Result<(), Error>, out: &Output) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}
