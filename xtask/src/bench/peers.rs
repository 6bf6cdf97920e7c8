//! The peers nvbind's scheduler probes are compared with on the same context-switch storm:
//! bpftrace running a run-queue-latency script of ours (the algorithm of bcc's runqlat, written
//! for this bench), and bcc's own `runqlat-bpfcc`. Their programs' cost comes from the kernel's
//! bpf_stats (read with `bpftool prog show`), as nvbind's does.

use std::{
    fs,
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Run-queue latency in bpftrace: stamp at wakeup and at preemption, measure at switch-in.
/// `prev_state` low bits 0 = still runnable (newer kernels add TASK_REPORT_MAX for preemption).
const RUNQLAT_BT: &str = r#"
tracepoint:sched:sched_wakeup,
tracepoint:sched:sched_wakeup_new
{
    @qtime[args->pid] = nsecs;
}

tracepoint:sched:sched_switch
{
    if ((args->prev_state & 0xff) == 0) {
        @qtime[args->prev_pid] = nsecs;
    }
    $ns = @qtime[args->next_pid];
    if ($ns) {
        @usecs = hist((nsecs - $ns) / 1000);
    }
    delete(@qtime[args->next_pid]);
}
"#;

/// Empty programs on the ioctl syscall tracepoints: what any program there costs the machine.
/// Enabling a syscall tracepoint sends every syscall of every task (the storm's reads and writes
/// included) through the kernel's syscall-tracing path; nvbind's ioctl programs sit there where
/// the kernel refuses fentry/fexit (as this machine's does).
const IOCTL_TRACEPOINTS_BT: &str = r#"
tracepoint:syscalls:sys_enter_ioctl { }
tracepoint:syscalls:sys_exit_ioctl { }
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Bpftrace,
    Bcc,
    /// Not a peer: the syscall-tracepoint tax alone ([`IOCTL_TRACEPOINTS_BT`]).
    IoctlTracepoints,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Bpftrace => "bpftrace (runqlat script)",
            Peer::Bcc => "bcc runqlat-bpfcc",
            Peer::IoctlTracepoints => {
                "bpftrace, empty programs on sys_enter_ioctl/sys_exit_ioctl (the syscall tracepoints' tax)"
            }
        }
    }

    /// Whether it has scheduler programs, whose cost per switch is measured.
    pub fn on_the_scheduler(self) -> bool {
        self != Peer::IoctlTracepoints
    }

    /// Whether `program` (a loaded program's name) shows the peer has attached.
    fn attached_with(self, program: &str) -> bool {
        if self.on_the_scheduler() {
            is_switch(program)
        } else {
            program.contains("ioctl")
        }
    }
}

/// A peer's `sched_switch` program, by its name.
fn is_switch(program: &str) -> bool {
    program.contains("sched_switch") || program.contains("finish_task")
}

/// What one storm under a peer measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerRun {
    pub ops_per_sec: f64,
    /// Runs of the peer's sched_switch program.
    pub switch_runs: u64,
    /// Mean ns per run of that program.
    pub switch_ns: f64,
    /// All of the peer's programs' time over its sched_switch runs: the kernel cost per
    /// context switch, wakeups included.
    pub ns_per_switch: f64,
}

/// Turns on the kernel's bpf_stats for the peer's run, and restores the setting after.
pub(super) struct Stats(String);

impl Stats {
    pub(super) fn on() -> Result<Stats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let was = fs::read_to_string(path).context("read bpf_stats_enabled")?;
        fs::write(path, "1").context("enable bpf_stats")?;
        Ok(Stats(was.trim().to_string()))
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Starts the peer with its user space on `cpu`.
fn start(peer: Peer, dir: &Path, cpu: &str) -> Result<Child> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu]);
    match peer {
        Peer::Bpftrace => {
            let script = dir.join("runqlat.bt");
            fs::write(&script, RUNQLAT_BT)?;
            cmd.arg("bpftrace").arg(script);
        }
        Peer::IoctlTracepoints => {
            let script = dir.join("ioctl-tracepoints.bt");
            fs::write(&script, IOCTL_TRACEPOINTS_BT)?;
            cmd.arg("bpftrace").arg(script);
        }
        // An interval far beyond the run: it prints once, when stopped.
        Peer::Bcc => {
            cmd.args(["runqlat-bpfcc", "60"]);
        }
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "start {} (cargo xtask setup --bench installs it)",
                peer.name()
            )
        })
}

/// Every loaded program as (id, name, run_cnt, run_time_ns).
fn programs() -> Result<Vec<(u64, String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("run bpftool")?;
    let all: Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0),
                p["name"].as_str().unwrap_or("").to_string(),
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// The programs loaded since `before` (Debian's bpftool does not name their owner; nothing
/// else loads programs while the bench runs a peer): (name, run_cnt, run_time_ns).
fn programs_since(before: &[u64]) -> Result<Vec<(String, u64, u64)>> {
    Ok(programs()?
        .into_iter()
        .filter(|p| !before.contains(&p.0))
        .map(|(_, name, runs, ns)| (name, runs, ns))
        .collect())
}

/// Runs the storm under `peer` (its user space on `cpu`): waits until the peer's sched_switch
/// program is loaded, runs `storm`, stops the peer. With `timed`, bpf_stats is on for the run
/// and the peer's programs' cost is read (a throughput round leaves it off: it taxes every
/// program run, and the cost fields are then 0).
pub fn run(
    peer: Peer,
    dir: &Path,
    cpu: &str,
    timed: bool,
    storm: impl FnOnce() -> Result<f64>,
) -> Result<PeerRun> {
    let _stats = if timed { Some(Stats::on()?) } else { None };
    let existing: Vec<u64> = programs()?.into_iter().map(|p| p.0).collect();
    let mut child = start(peer, dir, cpu)?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            bail!("{} exited before attaching ({status}): {out}", peer.name());
        }
        if programs_since(&existing)?
            .iter()
            .any(|(n, _, _)| peer.attached_with(n))
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} did not attach within 60 s", peer.name());
        }
        sleep(Duration::from_millis(200));
    }
    sleep(Duration::from_millis(500));
    let before = programs_since(&existing)?;
    let ops = storm();
    let after = programs_since(&existing)?;
    // SAFETY: signalling our own child; SIGINT lets both tools print and detach.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let waited = Instant::now();
    while child.try_wait()?.is_none() {
        if waited.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let _ = child.wait();
    let ops = ops?;
    let delta = |name: &str| {
        let b = before
            .iter()
            .find(|p| p.0 == name)
            .map_or((0, 0), |p| (p.1, p.2));
        let a = after
            .iter()
            .find(|p| p.0 == name)
            .map_or((0, 0), |p| (p.1, p.2));
        (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1))
    };
    let names: Vec<String> = after.iter().map(|p| p.0.clone()).collect();
    let (switch_runs, switch_time) = names
        .iter()
        .filter(|n| is_switch(n))
        .map(|n| delta(n))
        .fold((0, 0), |(r, t), (a, b)| (r + a, t + b));
    let total_time: u64 = names.iter().map(|n| delta(n).1).sum();
    peer_run(
        ops,
        timed,
        (switch_runs, switch_time),
        total_time,
        peer.name(),
    )
}

/// A storm's result: its ops/s and, when `timed`, the cost per switch from the scheduler
/// programs' counters (`switch`: the switch program's runs and ns; `total_ns`: every program's).
pub(super) fn peer_run(
    ops: f64,
    timed: bool,
    switch: (u64, u64),
    total_ns: u64,
    who: &str,
) -> Result<PeerRun> {
    let (switch_runs, switch_ns) = switch;
    if !timed {
        return Ok(PeerRun {
            ops_per_sec: ops,
            ..PeerRun::default()
        });
    }
    if switch_runs == 0 {
        bail!("{who}: its sched_switch program never ran during the storm");
    }
    Ok(PeerRun {
        ops_per_sec: ops,
        switch_runs,
        switch_ns: switch_ns as f64 / switch_runs as f64,
        ns_per_switch: total_ns as f64 / switch_runs as f64,
    })
}
