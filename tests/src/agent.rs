//! Running the agent: to completion, in the background, or watched (its stderr read as it comes),
//! and its contract for bad input.

use std::{
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::agent_bin;

/// Runs the agent to completion.
pub fn agent(args: &[&str]) -> Output {
    agent_with_env(args, &[])
}

pub fn agent_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    agent_command(args, env).output().expect("run nvbind-agent")
}

/// The agent's command, to adjust before running it (to completion: its output is captured).
pub fn agent_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the agent in the background.
pub fn spawn_agent(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn nvbind-agent")
}

/// An agent started in the background whose stderr (and stdout, where a launched command's output
/// goes) is read as it comes, so that a test can wait for what the agent says (an event) instead
/// of sleeping for a time it guesses.
pub struct WatchedAgent {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Reads `pipe` line by line into `sink` until it closes.
fn gather(pipe: impl std::io::Read + Send + 'static, sink: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
            all.push_str(&line);
            all.push('\n');
        }
    })
}

impl WatchedAgent {
    /// Starts the agent with `RUST_LOG=info` (unless `env` sets it), so it logs its progress.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> WatchedAgent {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        WatchedAgent::watch(cmd)
    }

    /// Starts an agent command made elsewhere ([`agent_command`], adjusted), watched the same
    /// way; give it `RUST_LOG=info` to wait on its progress.
    pub fn watch(mut cmd: Command) -> WatchedAgent {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nvbind-agent");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let reader = gather(child.stderr.take().expect("piped stderr"), stderr.clone());
        // Not joined: a launched command may hold it open after the agent exits, and nothing
        // waits for its last words.
        gather(child.stdout.take().expect("piped stdout"), stdout.clone());
        WatchedAgent {
            child,
            stderr,
            stdout,
            reader: Some(reader),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything the agent and the command it launched wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the agent has written a line containing `needle`; panics (with what it said)
    /// if it exits first or `limit` passes, which only bounds a hang.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.stderr().lines().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_reader();
                if self.stderr().lines().any(|l| l.contains(needle)) {
                    return;
                }
                panic!(
                    "the agent exited ({status}) before saying {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not say {needle:?} within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a line containing `needle` comes on stdout (from a command the agent
    /// launched); returns that line. Panics if the agent exits first or `limit` passes, which
    /// only bounds a hang.
    pub fn wait_for_stdout_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.stdout().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited ({status}) before {needle:?} came on stdout:\n{}\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not come on stdout within {limit:?}:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `probes attached` (record has attached everything and tracks its targets).
    pub fn wait_until_capturing(&mut self) {
        self.wait_for_line("probes attached", Duration::from_secs(60));
    }

    /// Sends a signal (e.g. `libc::SIGINT` to end a recording early).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the agent to exit (killing it past `limit`, and panicking); its exit status and
    /// stderr.
    pub fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the agent did not finish within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.join_reader();
        (status, self.stderr())
    }
}

impl WatchedAgent {
    /// Lets the stderr reader take the last lines, for a bounded time: a process the agent
    /// launched inherits its stderr and may hold the pipe open after the agent exits.
    fn join_reader(&mut self) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
}

impl Drop for WatchedAgent {
    /// A test that fails midway leaves nothing behind for the next one: the agent is asked to
    /// stop (SIGINT: it ends its capture and the command it launched), killed if it does not.
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Stops a child agent that is still running: SIGINT, then SIGKILL after 10 s.
fn stop_child(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child with a deadline, killing it if it overstays.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("collect output");
    panic!(
        "process did not finish within {limit:?}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The agent's contract for bad input: exit 1, and one line on stderr that mentions each of
/// `expect`.
pub fn assert_one_line_error(out: &Output, expect: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "agent errors exit 1: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    for word in expect {
        assert!(err.contains(word), "{err:?} should mention {word:?}");
    }
}
