//! The `foil` binary. Every failure ends as one line on stderr and exit code 1
//! (2 for a command line that does not parse); nothing here panics on bad input.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
