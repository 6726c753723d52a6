//! `ferry-verify`: see the library. Thin by design: arguments in, library call out.
//!
//! Exit codes: 0 equal, 1 different, 2 the check could not be done.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // clap exits with 2 on a usage error, 0 for --help/--version.
    let args = ferry_verify::Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-verify: error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(ferry_verify::EXIT_ERROR);
        }
    };
    std::process::ExitCode::from(rt.block_on(ferry_verify::run(args)))
}
