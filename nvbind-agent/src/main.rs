use std::process::ExitCode;

use clap::Parser;
use nvbind_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.is_daemon());
    if cli.prints_and_exits() {
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
            // Errors quote what they were given (a file's text, a cgroup's name): one line,
            // nothing a terminal would act on.
            eprintln!(
                "nvbind-agent: error: {}",
                nvbind_agent::identity::escape_controls(&line)
            );
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr, one line per message: `[LEVEL target] message`. The daemon logs `info` by
/// default; under systemd (`JOURNAL_STREAM` set) each line starts with its syslog priority (`<3>`
/// error .. `<7>` debug), which journald reads as the entry's level and strips, and carries no
/// timestamp (the journal adds its own). Messages carry names any user can choose (a process's
/// comm, an executable's path): their control characters are escaped, so a name cannot start a
/// forged line (at emergency priority) or drive the terminal of whoever reads the log.
fn init_logging(daemon: bool) {
    use std::io::Write;
    let default = if daemon { "info" } else { "warn" };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    builder.format(move |out, record| {
        let message = record.args().to_string();
        let message = nvbind_agent::identity::escape_controls(&message);
        if journal {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(out, "<{priority}>{message}")
        } else {
            writeln!(out, "[{:<5} {}] {message}", record.level(), record.target())
        }
    });
    builder.init();
}
