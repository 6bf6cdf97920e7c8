//! Running the agent: to completion, in the background, or watched (its stderr read as it comes),
//! and its contract for bad input.

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::agent_bin;

/// Runs the agent to completion.
pub fn agent(args: &[&str]) -> Output {
    agent_with_env(args, &[])
}

pub fn agent_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run nvbind-agent")
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

/// An agent started in the background whose stderr is read as it comes, so that a test can wait
/// for what the agent says (an event) instead of sleeping for a time it guesses.
pub struct WatchedAgent {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WatchedAgent {
    /// Starts the agent with `RUST_LOG=info` (unless `env` sets it), so it logs its progress.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> WatchedAgent {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn nvbind-agent");
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
        WatchedAgent {
            child,
            stderr,
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
