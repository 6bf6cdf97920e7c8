//! Command-line interface: the commands and flags ([`args`]), what makes their values valid
//! ([`validate`]), and one module per group of commands that does the work.

mod args;
mod binding;
mod daemon;
mod doctor;
mod gpus;
mod record;
mod report;
mod top;
mod validate;

use anyhow::Result;

pub use args::{
    BindArgs, BpffsArg, CdiCommand, CgroupArg, Cli, Command, DaemonArgs, NvmlMode, RecordArgs,
    ReportArgs, RootArgs, TopArgs, UnbindArgs,
};

impl Command {
    /// Commands that print and exit (as opposed to `record`, which holds sockets, pipes and
    /// files open for a long time, and `top`, which may run the daemon's API in-process).
    pub fn prints_and_exits(&self) -> bool {
        !matches!(self, Command::Record(_) | Command::Top(_))
    }
}

impl Cli {
    /// Whether the process only prints and exits (not a recording, not the daemon).
    pub fn prints_and_exits(&self) -> bool {
        self.command.as_ref().is_some_and(Command::prints_and_exits)
    }

    /// Whether this runs the daemon.
    pub fn is_daemon(&self) -> bool {
        self.command.is_none()
    }
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8> {
    let Some(command) = cli.command else {
        return daemon::run(cli.daemon);
    };
    match command {
        Command::Doctor {
            json,
            mount_tracefs,
            kernel_hooks,
        } => doctor::doctor(json, mount_tracefs, kernel_hooks),
        Command::Record(args) => record::record(args),
        Command::Top(args) => top::run(args),
        Command::Report(args) => report::show(args),
        Command::Gpus { json, roots } => gpus::list(json, &roots),
        Command::Bind(args) => binding::bind(args),
        Command::Unbind(args) => binding::unbind(args),
        Command::Bindings {
            json,
            container,
            bpffs,
        } => binding::list(json, container.as_deref(), &bpffs),
        Command::Cdi(CdiCommand::Generate {
            output,
            kind,
            cdi_version,
            roots,
        }) => binding::cdi_generate(output, &kind, cdi_version.as_deref(), &roots),
        Command::ResolveVulkanPresent => doctor::resolve_vulkan_present(),
        Command::ResolveGl => doctor::resolve_gl(),
        Command::GenerateDocs { dir } => generate_docs(&dir),
    }
}

/// The man pages (`nvbind-agent.1` and one per command) and shell completions (`nvbind-agent.bash`,
/// `_nvbind-agent` for zsh, `nvbind-agent.fish`), made from the command-line definitions so
/// they never disagree with `--help`.
fn generate_docs(dir: &std::path::Path) -> Result<u8> {
    use anyhow::Context;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = Cli::command();
    // nvbind-agent.1, and a page per command (nvbind-agent-record.1, ...).
    clap_mangen::generate_to(command.clone(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    for (shell, name) in [
        (clap_complete::Shell::Bash, "nvbind-agent.bash"),
        (clap_complete::Shell::Zsh, "_nvbind-agent"),
        (clap_complete::Shell::Fish, "nvbind-agent.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "nvbind-agent", &mut script);
        write(name, &script)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn no_command_is_the_daemon_and_empty_values_turn_listeners_off() {
        let cli = Cli::try_parse_from(["nvbind-agent", "--socket", "", "--listen", ""]).unwrap();
        assert!(cli.is_daemon() && !cli.prints_and_exits());
        assert_eq!(cli.daemon.socket.as_deref(), Some(""));
        assert_eq!(cli.daemon.listen.as_deref(), Some(""));
        let cli = Cli::try_parse_from(["nvbind-agent", "doctor"]).unwrap();
        assert!(!cli.is_daemon() && cli.prints_and_exits());
        // Daemon flags belong to the daemon, not to a command.
        assert!(Cli::try_parse_from(["nvbind-agent", "--listen", "x", "doctor"]).is_err());
    }
}
