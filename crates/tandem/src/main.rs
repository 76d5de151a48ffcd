//! The `tandem` binary: parses the command line, sets up logging, runs one command and maps
//! its outcome to an exit status. Everything else lives in the library crates; offline
//! commands use the spec crate directly and every other command is a client of a server.

mod cli;
mod client;
mod commands;
mod output;

use clap::Parser;
use std::process::ExitCode;

// glibc's malloc keeps what a thread freed in that thread's arena: after a set of range
// queries on tokio's blocking threads `tandem serve` held 642 MB it no longer used.
// mimalloc returns freed pages to the system shortly after (`MADV_DONTNEED`), and is as
// fast for the server's many small allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let cli::Command::Shim { dir } = &cli.command {
        // Before any runtime or thread exists: the shim forks and waits on its own.
        tandem_supervisor::shim::run(dir);
    }
    if let cli::Command::Ports { dir } = &cli.command {
        // Plain blocking code too: it only answers the server and keeps sockets open.
        tandem_supervisor::ports::run(dir);
    }
    if !matches!(cli.command, cli::Command::Serve { .. }) {
        // A client printing into a closed pipe (`tandem history | head`) should end quietly,
        // as other command-line tools do, instead of panicking on the write.
        // SAFETY: restoring the default disposition of SIGPIPE installs no handler code.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{} {e:#}", output::red("error:"));
            ExitCode::from(1)
        }
    }
}
