//! `cargo xtask run` without arguments: the agent's main job on this machine.
//! doctor, then a 10 s recording of vkcube under a virtual X server, then a short summary.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::util::{display, run, step, target_dir};

const XVFB_DISPLAY: &str = ":99";
const XVFB_SOCKET: &str = "/tmp/.X11-unix/X99";
const XVFB_LOCK: &str = "/tmp/.X99-lock";
const XVFB_TIMEOUT: Duration = Duration::from_secs(10);

pub fn main_job(root: &Path, agent: &Path) -> Result<()> {
    step("nvbind-agent doctor");
    // doctor exits non-zero when something is missing; record says what it cannot do, so go on.
    if let Err(e) = run(Command::new(agent).arg("doctor").current_dir(root)) {
        eprintln!("warning: {e:#}; recording anyway");
    }

    let out_dir = target_dir(root).join("nvbind");
    fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let report = out_dir.join("report.json");
    let csv = out_dir.join("frames.csv");

    // Held until the end of this function: dropping it stops Xvfb, also on an error.
    let (display_name, _xvfb) = x_display(&out_dir)?;

    step("nvbind-agent record vkcube (10 s)");
    run(Command::new(agent)
        .arg("record")
        .args(["--duration", "10", "--out"])
        .arg(&report)
        .arg("--frames-csv")
        .arg(&csv)
        .args(["--", "vkcube"])
        .env("DISPLAY", &display_name)
        .current_dir(root))?;

    step("summary");
    println!("report: {}", report.display());
    println!("frames: {}", csv.display());
    summarize(&report)
}

/// Stops Xvfb when dropped.
pub(crate) struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        eprintln!("==> stop Xvfb {XVFB_DISPLAY}");
        // SIGTERM lets Xvfb remove its socket and lock file; SIGKILL if it lingers.
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The X display to render on: `$DISPLAY` if set, else a fresh `Xvfb :99`.
pub(crate) fn x_display(out_dir: &Path) -> Result<(OsString, Option<Xvfb>)> {
    if let Some(display) = env::var_os("DISPLAY").filter(|d| !d.is_empty()) {
        eprintln!("==> using DISPLAY={}", display.to_string_lossy());
        return Ok((display, None));
    }
    if Path::new(XVFB_SOCKET).exists() {
        if x_server_alive() {
            eprintln!("==> an X server already runs on {XVFB_DISPLAY}: using it");
            return Ok((XVFB_DISPLAY.into(), None));
        }
        // A stale socket would make the wait below return before the new server listens.
        fs::remove_file(XVFB_SOCKET)
            .with_context(|| format!("remove stale X socket {XVFB_SOCKET}"))?;
    }

    step(&format!("start Xvfb {XVFB_DISPLAY}"));
    let log_path = out_dir.join("xvfb.log");
    let log =
        fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new("Xvfb");
    cmd.args([
        XVFB_DISPLAY,
        "-screen",
        "0",
        "1280x720x24",
        "-nolisten",
        "tcp",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    let line = display(&cmd);
    eprintln!("    $ {line} &");
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}` (is xvfb installed?)"))?;
    let mut xvfb = Xvfb(child);

    let start = Instant::now();
    while !Path::new(XVFB_SOCKET).exists() {
        if let Some(status) = xvfb.0.try_wait().context("wait for Xvfb")? {
            bail!(
                "Xvfb exited ({status}) before it listened; see {}",
                log_path.display()
            );
        }
        if start.elapsed() > XVFB_TIMEOUT {
            bail!(
                "Xvfb did not create {XVFB_SOCKET} within {} s; see {}",
                XVFB_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok((XVFB_DISPLAY.into(), Some(xvfb)))
}

/// Whether the process named in the X lock file of display :99 still exists.
fn x_server_alive() -> bool {
    fs::read_to_string(XVFB_LOCK)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| PathBuf::from(format!("/proc/{pid}")).exists())
}

fn summarize(report: &Path) -> Result<()> {
    let text = fs::read_to_string(report).with_context(|| format!("read {}", report.display()))?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("parse {} as JSON", report.display()))?;
    let Some(processes) = json.get("processes").and_then(Value::as_array) else {
        println!("no processes[] in the report");
        return Ok(());
    };
    println!(
        "{:>8}  {:<16} {:>8}  {:<14} {:>9}  {:>10}",
        "pid", "comm", "frames", "source", "fps avg", "p99 ms"
    );
    for p in processes {
        println!(
            "{:>8}  {:<16} {:>8}  {:<14} {:>9}  {:>10}",
            field(p, "/pid"),
            field(p, "/comm"),
            field(p, "/frames/count"),
            field(p, "/frames/source"),
            field(p, "/frames/fps_avg"),
            field(p, "/frames/frame_time_ms/p99"),
        );
    }
    if processes.is_empty() {
        println!("(no processes recorded)");
    }
    Ok(())
}

/// A JSON field for the summary table; "-" when missing or null.
fn field(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_f64() => {
            n.as_f64().map_or("-".into(), |f| format!("{f:.2}"))
        }
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_fields() {
        let p: Value = serde_json::json!({
            "pid": 42, "comm": "vkcube",
            "frames": { "count": 600, "source": null, "fps_avg": 59.9412, "frame_time_ms": {} }
        });
        assert_eq!(field(&p, "/pid"), "42");
        assert_eq!(field(&p, "/comm"), "vkcube");
        assert_eq!(field(&p, "/frames/count"), "600");
        assert_eq!(field(&p, "/frames/source"), "-");
        assert_eq!(field(&p, "/frames/fps_avg"), "59.94");
        assert_eq!(field(&p, "/frames/frame_time_ms/p99"), "-");
    }
}
