use std::process::ExitCode;

use clap::Parser;
use nvbind_agent::cli::{self, Cli};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    if cli.command.prints_and_exits() {
        // Like other Unix tools, end quietly when the reader goes away (`| head`) instead of
        // panicking in println!. `record` keeps Rust's default (EPIPE as an error), so that
        // a closed pipe or socket is reported, never fatal.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: what went wrong and how to fix it, with its causes.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("nvbind-agent: error: {line}");
            ExitCode::from(1)
        }
    }
}
