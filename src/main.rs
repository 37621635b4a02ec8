//! deltapush-mda: wake Delta Chat on a phone when mail arrives in a mailbox without push.

mod account;
mod applog;
mod cache;
mod check;
mod cli;
mod config;
mod deferral;
mod detach;
mod error;
mod exit;
mod hold;
mod message;
mod privileges;
mod relay;
mod run;
mod setup;
mod text;
mod token;
mod wakeup;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::Cli;
use crate::config::{Config, Mode, Verbosity};
use crate::error::Error;
use crate::run::{Outcome, Output};

fn main() -> ExitCode {
    // Before anything is read: not even a bad command line is worth a way back to root.
    if let Err(kept) = privileges::drop_to_effective() {
        let out = Output {
            verbosity: verbosity_of_bad_command_line(),
        };
        return exit(Err(Error::Privileges(kept)), &out, false);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let out = Output {
                verbosity: verbosity_of_bad_command_line(),
            };
            return exit(Err(Error::Usage(cli::usage_line(&e))), &out, false);
        }
    };
    let out = Output {
        verbosity: config::verbosity(cli.quiet, cli.verbose),
    };
    let check = cli.check;
    // A pipe writer must see its message consumed even when the configuration is wrong.
    let header = match cli.check
        || cli.send_deferred
        || cli.wait_stored.is_some()
        || cli.watch.is_some()
        || cli.setup.is_some()
    {
        true => Ok(None),
        false => message::read_stdin(),
    };
    let config = match Config::resolve(cli) {
        Ok(config) => config,
        Err(e) if check => return exit(Ok(check::failed(&e)), &out, false),
        Err(e) => return exit(Err(e), &out, false),
    };
    let out = Output {
        verbosity: config.verbosity,
    };
    let result = match config.mode {
        Mode::Check => Ok(check::run(&config)),
        Mode::SendDeferred => deferral::send(&config).map(|()| Outcome::Done),
        Mode::WaitStored(waiting) => hold::wait_stored(&config, waiting, &out),
        Mode::Hold => header
            .map_err(Error::Input)
            .and_then(|header| hold::hold(&config, header.as_deref(), &out)),
        Mode::Watch => watch::run(&config, &out),
        Mode::Setup => setup::run(&config, &out),
        Mode::Deliver | Mode::DryRun => header
            .map_err(Error::Input)
            .and_then(|header| run::deliver(&config, header.as_deref(), &out)),
    };
    exit(result, &out, config.tempfail)
}

/// The one place where a run's end becomes an exit status.
fn exit(result: Result<Outcome, Error>, out: &Output, tempfail: bool) -> ExitCode {
    let code = match result {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::NotNotified) if tempfail => exit::TEMPFAIL,
        Ok(Outcome::NotNotified) => 0,
        Ok(Outcome::CheckFailed { failed, code }) => {
            // The checks themselves went to stdout, one line each.
            match failed {
                1 => out.report(format_args!("1 check failed")),
                n => out.report(format_args!("{n} checks failed")),
            }
            code
        }
        Err(e) => {
            out.report(format_args!("{e}"));
            e.exit_code()
        }
    };
    ExitCode::from(code)
}

/// `-q` anywhere in a command line that does not parse still silences its error. clap stops at
/// the first bad word, so this reads the words itself: a `-q` in a cluster of short flags, or
/// `--quiet`, that is not the value of an option and not after `--`.
fn verbosity_of_bad_command_line() -> Verbosity {
    let cmd = Cli::command();
    let takes_value = |long: &str| {
        cmd.get_arguments()
            .any(|a| a.get_long() == Some(long) && a.get_action().takes_values())
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--quiet" {
            return Verbosity::Quiet;
        }
        if let Some(long) = arg.strip_prefix("--") {
            if !long.contains('=') && takes_value(long) {
                args.next();
            }
        } else if let Some(shorts) = arg.strip_prefix('-')
            && shorts.contains('q')
        {
            // Every short option is a flag, so each letter of a cluster is one.
            return Verbosity::Quiet;
        }
    }
    Verbosity::Normal
}
