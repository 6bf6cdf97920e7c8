//! What the programs cost, from the kernel's own counters: runs and run time (bpf_stats) and
//! the runs it skipped (recursion misses), per program.
//!
//! `kernel.bpf_stats_enabled` is global: while it is on, the kernel times every run of every
//! BPF program on the host (~20 ns each), nvbind's and everyone else's. So the agent does not
//! keep it on. By default it turns it on for a short window now and then ([`BpfStats::Sampled`]:
//! [`WINDOW`] every [`PERIOD`], the first as the probes load) and adds up what the programs did
//! inside the windows: a mean cost per run that is the true one, and run counts for the time
//! measured (`measured_s`). It never writes the sysctl: an administrator's setting stays as
//! found (the kernel keeps stats on while either the sysctl or any holder's descriptor asks).

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use aya::programs::Program;

use super::Probes;

/// How long a sampled window lasts.
pub const WINDOW: Duration = Duration::from_secs(2);
/// How often a sampled window opens (so the host pays the timing ~3 % of the time).
pub const PERIOD: Duration = Duration::from_secs(60);

/// When the kernel times nvbind's programs (and, being global, every other BPF program).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BpfStats {
    /// Never: costs are not measured (the kernel still counts skipped runs).
    Off,
    /// In short windows: 2 s every minute, the first as the probes load.
    #[default]
    Sampled,
    /// All the time, while the agent runs (costs every BPF program on the host ~20 ns a run).
    On,
}

/// Per-program cost from the kernel's bpf_stats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    /// Runs counted while the kernel timed the programs (the `measured_s` seconds).
    pub run_count: u64,
    /// Time spent in the program during those runs.
    pub run_time_ns: u64,
    pub mean_ns_per_run: f64,
    /// Seconds during which the kernel timed the programs (see [`BpfStats`]).
    #[serde(default)]
    pub measured_s: f64,
    /// Times the kernel skipped the program because another tracing program was running on the
    /// same CPU (its recursion guard): events it never saw. Counted all the time.
    #[serde(default)]
    pub recursion_misses: u64,
}

/// A program's (runs, run time in ns) as the kernel counts them while stats are on.
type RunTotals = (u64, u64);

/// The sampled windows and what the programs did in them.
pub(super) struct CostWindows {
    mode: BpfStats,
    open: Option<OpenWindow>,
    /// When the next window opens (sampled mode).
    next_open: Instant,
    /// Runs and time inside the windows closed so far, per program.
    closed: HashMap<String, RunTotals>,
    /// Length of the windows closed so far.
    measured: Duration,
}

/// A window in progress: the kernel times programs while `_stats` is held.
struct OpenWindow {
    _stats: OwnedFd,
    since: Instant,
    /// Each program's counters as the window opened.
    baseline: HashMap<String, RunTotals>,
}

impl CostWindows {
    pub(super) fn new(mode: BpfStats) -> CostWindows {
        CostWindows {
            mode,
            open: None,
            next_open: Instant::now(),
            closed: HashMap::new(),
            measured: Duration::ZERO,
        }
    }

    /// Opens or closes a window when one is due (cheap otherwise: call it often).
    pub(super) fn tick(&mut self, ebpf: &aya::Ebpf) {
        let now = Instant::now();
        match (&self.open, self.mode) {
            (None, BpfStats::On) => self.open_window(ebpf, now),
            (None, BpfStats::Sampled) if now >= self.next_open => {
                self.open_window(ebpf, now);
                self.next_open = now + PERIOD;
            }
            (Some(w), BpfStats::Sampled) if now.duration_since(w.since) >= WINDOW => {
                self.close_window(ebpf)
            }
            _ => {}
        }
    }

    fn open_window(&mut self, ebpf: &aya::Ebpf, now: Instant) {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => {
                self.open = Some(OpenWindow {
                    _stats: fd,
                    baseline: run_totals(ebpf),
                    since: now,
                })
            }
            Err(e) => {
                log::warn!(
                    "cannot turn on the kernel's bpf_stats for a cost window ({e}): the \
                     programs' costs are not measured"
                );
                self.mode = BpfStats::Off;
            }
        }
    }

    fn close_window(&mut self, ebpf: &aya::Ebpf) {
        let in_window = self.in_open_window(ebpf);
        if let Some(w) = self.open.take() {
            self.measured += w.since.elapsed();
        }
        add_into(&mut self.closed, in_window);
    }

    /// What each program did in the open window so far.
    fn in_open_window(&self, ebpf: &aya::Ebpf) -> HashMap<String, RunTotals> {
        let Some(w) = &self.open else {
            return HashMap::new();
        };
        run_totals(ebpf)
            .into_iter()
            .map(|(program, (runs, ns))| {
                let (runs_before, ns_before) =
                    w.baseline.get(&program).copied().unwrap_or_default();
                let delta = (
                    runs.saturating_sub(runs_before),
                    ns.saturating_sub(ns_before),
                );
                (program, delta)
            })
            .collect()
    }

    /// Runs and time per program over every window, the open one up to now included, and the
    /// seconds measured: both only grow.
    fn totals(&self, ebpf: &aya::Ebpf) -> (HashMap<String, RunTotals>, Duration) {
        let mut totals = self.closed.clone();
        add_into(&mut totals, self.in_open_window(ebpf));
        let open = self
            .open
            .as_ref()
            .map_or(Duration::ZERO, |w| w.since.elapsed());
        (totals, self.measured + open)
    }
}

/// Adds each program's runs and time in `more` to its totals in `into`.
fn add_into(into: &mut HashMap<String, RunTotals>, more: HashMap<String, RunTotals>) {
    for (program, (runs, ns)) in more {
        let total = into.entry(program).or_default();
        total.0 += runs;
        total.1 += ns;
    }
}

/// Every loaded program's counters as the kernel has them now.
fn run_totals(ebpf: &aya::Ebpf) -> HashMap<String, RunTotals> {
    ebpf.programs()
        .filter_map(|(name, prog): (&str, &Program)| {
            let info = prog.info().ok()?;
            Some((
                name.to_string(),
                (info.run_count(), info.run_time().as_nanos() as u64),
            ))
        })
        .collect()
}

impl Probes {
    /// Each program's runs and run time inside the cost windows so far (see [`BpfStats`]), and
    /// the runs the kernel skipped (counted all the time).
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        let (totals, measured) = self.cost_windows.totals(&self.ebpf);
        let mut costs: Vec<ProgramCost> = self
            .ebpf
            .programs()
            // Only the programs loaded (of a pair, the BTF or the classic one).
            .filter(|(_, prog)| prog.info().is_ok())
            .map(|(name, prog): (&str, &Program)| {
                let (run_count, run_time_ns) = totals.get(name).copied().unwrap_or_default();
                ProgramCost {
                    program: name.to_string(),
                    run_count,
                    run_time_ns,
                    mean_ns_per_run: if run_count > 0 {
                        run_time_ns as f64 / run_count as f64
                    } else {
                        0.0
                    },
                    measured_s: measured.as_secs_f64(),
                    recursion_misses: prog
                        .fd()
                        .ok()
                        .and_then(|fd| recursion_misses(std::os::fd::AsFd::as_fd(fd)).ok())
                        .unwrap_or(0),
                }
            })
            .collect();
        costs.sort_by(|a, b| a.program.cmp(&b.program));
        costs
    }

    /// Opens or closes a cost window when one is due; call it often (the capture's every step).
    pub fn tick_cost_windows(&mut self) {
        self.cost_windows.tick(&self.ebpf);
    }
}

/// The kernel's count of runs it skipped for the program behind `fd` (`bpf_prog_info`'s
/// `recursion_misses`, which aya's `ProgramInfo` does not expose).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
    use std::os::fd::AsRawFd;
    // SAFETY: both are plain C structs for which all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    // SAFETY: `attr.info` describes `info`, which outlives the call; the kernel writes at most
    // `info_len` bytes into it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
