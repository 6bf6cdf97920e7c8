//! `record`: a bounded capture, in named steps: check the target, load the probes and find the
//! GPUs, start tracking the target, drain until the duration, the targets' exit or a signal, and
//! gather what the kernel holds into a [`Capture`].

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{
    host::{cpu_time_and_peak_rss, describe_host, yield_to_games},
    progress::Progress,
    pump::{EventPump, StopSignals, Wake},
    Tracker,
};
use crate::{
    clock::{monotonic_ns, unix_time_at},
    frames::Capture,
    gpu,
    probes::{BpfStats, KernelHooks, LeftOut, LoadOptions, Probes, ProgramCost, UntrackedCheck},
    stutter::DetectorConfig,
    target::{self, Launched, TargetSpec},
};

#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub wait_timeout: Option<Duration>,
    pub follow_children: bool,
    pub mount_tracefs: bool,
    pub stutter: DetectorConfig,
    /// ioctl type bytes to count as GPU driver calls, beyond the drivers nvbind knows.
    pub gpu_ioctl_types: Vec<u8>,
    /// How often to read GPU counters; `None`: not at all.
    pub gpu_sampling: Option<gpu::SamplerConfig>,
    /// Where to find GPUs.
    pub gpu_roots: gpu::Roots,
    /// Draw a live line (elapsed, FPS, p99, stutters) on stderr when it is a terminal.
    pub progress: bool,
    /// BTF or classic tracepoints for the scheduler probes.
    pub kernel_hooks: KernelHooks,
    /// When the kernel times the programs for the report's costs.
    pub bpf_stats: BpfStats,
    /// How the scheduler programs tell untracked tasks from tracked ones (the benchmark's).
    pub untracked_check: UntrackedCheck,
    /// Steps of the tracked scheduler path left out (the benchmark's breakdown).
    pub left_out: LeftOut,
}

/// A finished recording and the exit code the agent should end with.
pub struct Outcome {
    pub capture: Capture,
    /// The launched command's exit code when it ended by itself, else 0.
    pub exit_code: i32,
}

/// Records until the duration, the targets' exit, or a signal.
pub async fn record(options: RecordOptions) -> Result<Outcome> {
    check_target(&options.target)?;
    let signals = StopSignals::install()?;
    let (mut session, gpus) = load(&options)?;
    let cpu_at_start = cpu_time_and_peak_rss().0;
    let (mut launched, mut started) = start_tracking(&mut session, &options)?;
    // Everything is attached and the targets are tracked: a frame presented from now on is
    // captured. Said at info level, so that a script (or a test) can start its workload then.
    log::info!("probes attached, capturing {}", options.target);
    let mut pump = EventPump::new(&session.probes, signals)?;
    let end_reason = drain_until_done(
        &mut session,
        &mut pump,
        &options,
        launched.as_mut(),
        &mut started,
    )
    .await?;
    // Let in-flight records land, then read everything once more.
    EventPump::settle().await;
    session.drain();
    session.take_exited_threads();
    session.snapshot_threads();
    session.resolve_windows(u64::MAX);
    session.scan();
    // A process that scan found gone made its last records before it died: one more drain.
    session.drain();
    session.end_processes_found_gone();

    let mut capture = std::mem::take(&mut session.capture);
    gpus.finish(&mut capture);
    capture.ended_ns = monotonic_ns();
    if capture.started_ns == 0 {
        capture.started_ns = capture.ended_ns;
    }
    capture.end_reason = end_reason.to_string();
    session.collect_kernel_state(&mut capture)?;
    let exit_code = launched
        .as_mut()
        .map_or(0, |child| launched_exit_code(child, &mut capture));
    // The programs were loaded for this capture, so their counts are its own (a daemon's span
    // many sessions: there the counts are on /metrics, not in each session's notes).
    if let Some(note) = skipped_runs_note(&capture.program_costs) {
        capture.notes.push(note);
    }
    let (cpu_at_end, peak_rss) = cpu_time_and_peak_rss();
    capture.agent_cpu_s = cpu_at_end - cpu_at_start;
    capture.agent_peak_rss_bytes = peak_rss;
    describe_host(&mut capture);
    Ok(Outcome { capture, exit_code })
}

/// Refuses a target that cannot be recorded before anything is loaded.
fn check_target(target: &TargetSpec) -> Result<()> {
    match target {
        TargetSpec::Pid(pid) => target::check_pid(*pid)?,
        TargetSpec::Command(argv) => {
            target::resolve_program(&argv[0])?;
        }
        TargetSpec::Comm(_) | TargetSpec::All => {}
    }
    Ok(())
}

/// The GPUs found at the start, and their sampler when sampling is on.
struct Gpus {
    discovery: gpu::Discovery,
    sampler: Option<gpu::Sampler>,
}

impl Gpus {
    /// Puts the GPUs and their samples into the capture.
    fn finish(self, capture: &mut Capture) {
        match self.sampler {
            Some(sampler) => {
                capture.gpu_period_ns = sampler.config().period.as_nanos() as u64;
                capture.gpus = sampler.finish();
            }
            None => {
                capture.gpus = self
                    .discovery
                    .gpus
                    .iter()
                    .map(|g| gpu::GpuSeries {
                        info: g.clone(),
                        not_sampled: Some("GPU sampling was off (--gpu-sample-hz 0)".into()),
                        samples: Vec::new(),
                        read_ns: 0,
                    })
                    .collect();
            }
        }
    }
}

/// Loads the probes and finds the GPUs (sampled from before the first frame, on their own
/// thread); the agent then yields the CPU to the games.
fn load(options: &RecordOptions) -> Result<(Tracker, Gpus)> {
    let mut probes = Probes::load(LoadOptions {
        mount_tracefs: options.mount_tracefs,
        require_core: true,
        discover_presenters: false,
        kernel_hooks: options.kernel_hooks,
        bpf_stats: options.bpf_stats,
        untracked_check: options.untracked_check,
        left_out: options.left_out,
    })?;
    probes.declare_gpu_ioctl_types(&options.gpu_ioctl_types)?;
    let discovery = gpu::discover(&options.gpu_roots, &gpu::Warnings::default());
    let mut session = Tracker::new(
        probes,
        options.stutter,
        options.follow_children,
        &discovery.gpus,
    );
    session.capture.target = options.target.to_string();
    // A target named by pid or command is the user's own choice, stored whole however fast it
    // presents; `--all` and `--comm` take in whatever other users run, and keep the cap.
    if matches!(options.target, TargetSpec::Pid(_) | TargetSpec::Command(_)) {
        session.set_frame_rate_cap(0);
    }
    yield_to_games();
    let sampler = options
        .gpu_sampling
        .map(|config| gpu::Sampler::start(&discovery, config));
    Ok((session, Gpus { discovery, sampler }))
}

/// Starts the capture's clock (`started_ns` and its wall-clock time): now.
fn start_clock(capture: &mut Capture) -> Instant {
    capture.started_ns = monotonic_ns();
    capture.started_unix_s = unix_time_at(capture.started_ns);
    Instant::now()
}

/// Tracks the target: the process and its children, the processes of a name (and the name's
/// future ones), everything, or a command launched now. Returns the launched command and, once
/// a target is tracked, when the capture's clock started.
fn start_tracking(
    session: &mut Tracker,
    options: &RecordOptions,
) -> Result<(Option<Launched>, Option<Instant>)> {
    let mut launched: Option<Launched> = None;
    let mut started: Option<Instant> = None;
    match &options.target {
        TargetSpec::Pid(pid) => {
            session.track(*pid, true)?;
            for child in target::descendants(*pid) {
                // A child that exits meanwhile is simply not tracked.
                let _ = session.track(child, true);
            }
        }
        TargetSpec::Comm(name) => {
            if name.len() > 15 {
                session.capture.notes.push(format!(
                    "process names are matched on their first 15 bytes (the kernel's limit): {:?}",
                    String::from_utf8_lossy(&name.as_bytes()[..15])
                ));
            }
            session.probes.watch_comm(name, options.follow_children)?;
            for pid in target::processes_named(name) {
                let _ = session.track(pid, true);
            }
        }
        TargetSpec::All => track_everything(session),
        TargetSpec::Command(argv) => {
            let mut child = Launched::spawn(argv)?;
            session.track(child.pid, false)?;
            // The capture's clock starts before the command runs: its first frame is after it.
            started = Some(start_clock(&mut session.capture));
            child.release();
            launched = Some(child);
        }
    }
    // A running target is tracked from here: no frame of it comes before the capture's start.
    if started.is_none() && !session.capture.processes.is_empty() {
        started = Some(start_clock(&mut session.capture));
    }
    Ok((launched, started))
}

/// `--all`: every running process; new ones are children of tracked ones (kthreadd's included)
/// and are followed.
fn track_everything(session: &mut Tracker) {
    let mut untracked = 0;
    for pid in target::all_processes() {
        if let Err(e) = session.track(pid, true) {
            // One that exited meanwhile is no loss; a full map is worth saying.
            if target::is_alive(pid) {
                untracked += 1;
                log::debug!("{e:#}");
            }
        }
    }
    if untracked > 0 {
        session.capture.notes.push(format!(
            "{untracked} running processes could not be tracked (the kernel maps are full)"
        ));
    }
}

/// Drains the kernel's records until the capture ends; returns why it ended.
async fn drain_until_done(
    session: &mut Tracker,
    pump: &mut EventPump,
    options: &RecordOptions,
    mut launched: Option<&mut Launched>,
    started: &mut Option<Instant>,
) -> Result<&'static str> {
    let waiting_since = Instant::now();
    let mut progress = options.progress.then(|| Progress::new(options.stutter));
    let end_reason = loop {
        if let Wake::Stop(_) = pump.next().await {
            break "signal";
        }
        session.step();
        if let Some(p) = progress.as_mut() {
            p.update(session, started.map(|t| t.elapsed()));
        }
        if let Some(child) = launched.as_deref_mut() {
            if child.try_wait().is_some() {
                let now = monotonic_ns();
                if let Some(p) = session.capture.processes.get_mut(&child.pid) {
                    p.exited_ns.get_or_insert(now);
                }
            }
        }
        if started.is_none() && !session.capture.processes.is_empty() {
            *started = Some(start_clock(&mut session.capture));
        }
        match *started {
            None => check_wait_timeout(options, waiting_since)?,
            Some(t) => {
                if options.duration.is_some_and(|d| t.elapsed() >= d) {
                    break "duration";
                }
                if session.all_exited() {
                    break "targets-exited";
                }
            }
        }
    };
    if let Some(p) = &progress {
        p.finish();
    }
    Ok(end_reason)
}

/// Fails when the target has not appeared within `--wait-timeout`.
fn check_wait_timeout(options: &RecordOptions, waiting_since: Instant) -> Result<()> {
    let Some(timeout) = options.wait_timeout else {
        return Ok(());
    };
    if waiting_since.elapsed() < timeout {
        return Ok(());
    }
    if let TargetSpec::Comm(name) = &options.target {
        bail!(
            "no process named {name:?} appeared within {} s: start it, check the name with `ps -o \
             comm`, or raise --wait-timeout",
            timeout.as_secs_f64()
        );
    }
    bail!(
        "the target did not appear within {} s",
        timeout.as_secs_f64()
    );
}

/// The launched command's exit code when it ended by itself; one still running is stopped (and
/// the capture says so), and the code is then 0.
fn launched_exit_code(child: &mut Launched, capture: &mut Capture) -> i32 {
    if let Some(code) = child.try_wait() {
        return code;
    }
    child.stop(Duration::from_secs(2));
    capture.notes.push(format!(
        "the launched command (pid {}) was still running when the capture ended and was stopped",
        child.pid
    ));
    0
}

/// A note when the kernel skipped runs of the agent's programs (their recursion guard: another
/// tracing program was running on that CPU), so some events, of tracked tasks or others, were
/// never seen: the evidence of frames around them may be incomplete.
fn skipped_runs_note(costs: &[ProgramCost]) -> Option<String> {
    let skipped: Vec<String> = costs
        .iter()
        .filter(|c| c.recursion_misses > 0)
        .map(|c| format!("{} {}", c.program, c.recursion_misses))
        .collect();
    (!skipped.is_empty()).then(|| {
        format!(
            "the kernel skipped runs of these probes while another tracing program ran on the same \
             CPU ({}): events of any task, tracked or not; the evidence of a frame around one may \
             be incomplete",
            skipped.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(program: &str, recursion_misses: u64) -> ProgramCost {
        ProgramCost {
            program: program.into(),
            run_count: 10,
            run_time_ns: 1_000,
            mean_ns_per_run: 100.0,
            measured_s: 1.0,
            recursion_misses,
        }
    }

    #[test]
    fn skipped_runs_are_named_with_their_counts() {
        assert_eq!(skipped_runs_note(&[cost("nvbind_sched_switch", 0)]), None);
        let note = skipped_runs_note(&[
            cost("nvbind_sched_switch", 0),
            cost("nvbind_sched_wakeup", 2),
            cost("nvbind_present", 1),
        ])
        .expect("a note");
        assert!(
            note.contains("(nvbind_sched_wakeup 2, nvbind_present 1)"),
            "{note}"
        );
        assert!(!note.contains("nvbind_sched_switch"), "{note}");
    }
}
