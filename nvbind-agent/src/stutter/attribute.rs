//! Why a frame stuttered: a verdict from a fixed vocabulary, made from the evidence the kernel
//! gathered inside that frame's interval. See docs/stutter.md for the rules in prose.

use nvbind_common::compile_call;
use serde::{Deserialize, Serialize};

use crate::frames::DriverFeedback;

/// The verdict vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The thread was runnable but another task had its CPU.
    CpuContention,
    /// The thread was blocked inside a GPU driver ioctl (fence wait, submission throttling).
    GpuDriverWait,
    /// The thread was blocked elsewhere: I/O, a lock, a sleep.
    Blocked,
    /// Waiting on the GPU while the GPU was clocked down (thermal, power, reliability limits).
    GpuThrottle,
    /// Waiting on the GPU while its memory was (nearly) full.
    VramPressure,
    /// The presenting thread, or a thread of the game it waited for, was inside the driver's
    /// shader or pipeline creation (`vkCreateGraphicsPipelines` and the like).
    ShaderCompile,
    /// The evidence does not explain the frame.
    Unknown,
}

impl Cause {
    pub const ALL: [Cause; 7] = [
        Cause::CpuContention,
        Cause::GpuDriverWait,
        Cause::Blocked,
        Cause::GpuThrottle,
        Cause::VramPressure,
        Cause::ShaderCompile,
        Cause::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::CpuContention => "cpu-contention",
            Cause::GpuDriverWait => "gpu-driver-wait",
            Cause::Blocked => "blocked",
            Cause::GpuThrottle => "gpu-throttle",
            Cause::VramPressure => "vram-pressure",
            Cause::ShaderCompile => "shader-compile",
            Cause::Unknown => "unknown",
        }
    }
}

/// What the kernel saw the presenting thread do in the frame interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadEvidence {
    pub tid: u32,
    pub comm: String,
    pub on_cpu_ms: f64,
    /// Runnable but not running (woken or preempted, until it got a CPU).
    pub runq_wait_ms: f64,
    pub max_runq_wait_ms: f64,
    /// Off-CPU and not runnable, in total and split by where.
    pub blocked_ms: f64,
    pub max_blocked_ms: f64,
    pub blocked_in_gpu_ioctl_ms: f64,
    /// Uninterruptible sleep (`D`: disk I/O, some kernel locks) outside GPU ioctls.
    pub blocked_uninterruptible_ms: f64,
    /// Interruptible sleep outside GPU ioctls (futex, poll, nanosleep, pipes).
    pub blocked_sleeping_ms: f64,
    /// Time the scheduler probes could not place: switches the kernel did not report (see
    /// docs/probes.md). The rest of the evidence covers the frame less this.
    #[serde(default)]
    pub unseen_ms: f64,
    #[serde(default)]
    pub missed_switches: u64,
    pub involuntary_switches: u64,
    pub migrations: u64,
    pub gpu_ioctls: u64,
    pub gpu_ioctl_ms: f64,
    /// Time inside shader and pipeline compile calls (every call, however short).
    #[serde(default)]
    pub compile_ms: f64,
    #[serde(default)]
    pub compile_calls: u64,
}

/// A shader or pipeline compile call of one of the game's threads during the frame (calls of
/// half a millisecond or longer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompileEvidence {
    pub tid: u32,
    /// The thread's name.
    pub thread: String,
    /// The function (`vkCreateGraphicsPipelines`, `glLinkProgram`, …).
    pub call: String,
    /// How much of the frame it spent in the call.
    pub in_frame_ms: f64,
    /// The whole call.
    pub duration_ms: f64,
    /// Pipelines it was asked to create (0 for a call that creates none).
    pub pipelines: u32,
    /// Whether the game gave it a pipeline cache (whether the cache held the pipelines only the
    /// driver knows: `driver_feedback`, see docs/stutter.md).
    pub cache_given: bool,
    /// What the driver said of its pipelines, where the game asked (creation feedback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_feedback: Option<DriverFeedback>,
    /// Whether it is the presenting thread's.
    pub presenting_thread: bool,
}

/// Who had a thread's CPU while it waited: the task that held it longest in one stretch (`tid`,
/// `pid`, `comm`, `cgroup`: their meanings as in report v2), and the process blamed for the wait
/// (`process_pid`, `process`, …: the one whose tasks held the CPU longest, a young process's
/// counted under its nearest ancestor that is not; see docs/stutter.md), that task's own process
/// or an ancestor of it. Every name and command line in it is printable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RanInstead {
    /// The task that held the CPU longest in one stretch during the wait: a thread of the process
    /// blamed, or one of its young descendants.
    pub tid: u32,
    /// That task's own process, when known (a preemptor that exited before the agent saw it is
    /// not).
    pub pid: Option<u32>,
    /// That task's name.
    pub comm: String,
    /// That task's cgroup (v2 path from /proc, else the cgroup id the kernel gave), when there is
    /// one.
    pub cgroup: Option<String>,
    /// Run-queue wait attributed to it: within the frame for the presenting thread; the longest
    /// single wait for another thread.
    pub wait_ms: f64,
    /// The process blamed: `pid`, or, when that process was young, its nearest ancestor that was
    /// not. `null` when unknown.
    #[serde(default)]
    pub process_pid: Option<u32>,
    /// Its name (its main thread's, after any `execve`): the kernel's, read at its longest
    /// stretch in the wait, else /proc's; empty when neither is known.
    #[serde(default)]
    pub process: String,
    /// Its command line, read from /proc while it ran (`null` for a kernel thread, or a process
    /// gone before it was read).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Its cgroup, read from /proc while it ran (`null` when it was gone first).
    #[serde(default)]
    pub process_cgroup: Option<String>,
    /// Whether it is a kernel thread (`ksoftirqd`, `kworker`).
    #[serde(default)]
    pub kernel_thread: bool,
    /// Whether some of its time was its children's: processes it started shortly before or
    /// during the wait (a shell loop's commands, `make -j`'s compilers).
    #[serde(default)]
    pub children: bool,
    /// How long its tasks held the CPU during that wait; `null` when the culprit was inferred
    /// (the preemptor, or the task that ran last), not measured.
    #[serde(default)]
    pub held_ms: Option<f64>,
}

impl RanInstead {
    /// Whether it may be named as the culprit: a kernel thread only when it really held the CPU
    /// for at least half the wait charged to it (else it is just what ran last, or in between).
    pub fn nameable(&self) -> bool {
        !self.kernel_thread || self.held_ms.is_some_and(|held| 2.0 * held >= self.wait_ms)
    }
}

/// Who a person would blame for a stutter: the process that kept the presenting thread off the
/// CPU, or kept the game's own thread it waited for off the CPU (then `via` is that thread).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blame {
    #[serde(flatten)]
    pub who: RanInstead,
    /// The game's thread between the presenting thread and the culprit, when there is one.
    pub via: Option<ViaThread>,
}

/// The game's own thread the presenting thread was blocked on while it waited for a CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViaThread {
    pub tid: u32,
    pub comm: String,
    /// How long it waited for a CPU over the busy threads' window.
    pub runq_wait_ms: f64,
}

/// Another thread of the process over (about) the same interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusyThread {
    pub tid: u32,
    pub comm: String,
    pub on_cpu_ms: f64,
    pub runq_wait_ms: f64,
    pub blocked_ms: f64,
    pub blocked_in_gpu_ioctl_ms: f64,
    /// Time the scheduler probes could not place (switches the kernel did not report).
    #[serde(default)]
    pub unseen_ms: f64,
    pub involuntary_switches: u64,
    pub migrations: u64,
    /// Who kept it waiting for a CPU longest, when that wait ended within the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_behind: Option<RanInstead>,
}

/// The GPU's state during the frame, where GPU counters were sampled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuEvidence {
    /// Whether GPU counters cover this frame.
    pub sampled: bool,
    /// Why not, when they do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_ratio: Option<f64>,
    /// Clock throttle reasons active during the frame (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle_reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_used_ratio: Option<f64>,
    /// Which GPU (PCI address) the readings are from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// Samples that fell in the frame (its interval plus one sampling period after it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub samples: u32,
    /// The lowest graphics clock sampled over the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics_clock_hertz: Option<f64>,
    /// The highest temperature sampled over the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<f64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Everything a stutter verdict rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub presenting_thread: ThreadEvidence,
    pub ran_instead: Option<RanInstead>,
    /// The process's busiest other threads (by on-CPU time) over `busy_threads_window_ms`, which
    /// spans the frame plus up to one sampling period on each side.
    pub busy_threads: Vec<BusyThread>,
    pub busy_threads_window_ms: Option<f64>,
    pub gpu: GpuEvidence,
    /// The game's compile calls during the frame, the longest share of the frame first (at
    /// most a few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compiles: Vec<CompileEvidence>,
}

/// A verdict, its confidence (0–1), the sentence that explains it, and who is to blame.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub cause: Cause,
    pub confidence: f64,
    pub summary: String,
    /// The process a person would blame (`cpu-contention` only), when one is known.
    pub culprit: Option<Blame>,
}

/// VRAM use above which a GPU wait is put down to memory pressure.
pub const VRAM_PRESSURE_RATIO: f64 = 0.95;
/// A component must explain at least this share of the frame's excess over its baseline.
const MIN_SHARE_OF_EXCESS: f64 = 0.5;
/// Confidence is scaled by this when the verdict rests on another thread, not the presenting one.
const INDIRECT: f64 = 0.6;

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Decides why frame `frame` (index in the process's frames) took `frame_time_ms` against a
/// trailing average of `baseline_ms`.
pub fn attribute(frame: u64, frame_time_ms: f64, baseline_ms: f64, e: &Evidence) -> Verdict {
    let t = &e.presenting_thread;
    let excess = (frame_time_ms - baseline_ms).max(f64::EPSILON);
    let head = format!(
        "frame {frame} took {frame_time_ms:.1} ms ({:.1}× the {baseline_ms:.1} ms average)",
        frame_time_ms / baseline_ms.max(f64::EPSILON)
    );
    let who = if t.comm.is_empty() {
        format!("the presenting thread (tid {})", t.tid)
    } else {
        format!("the presenting thread `{}` (tid {})", t.comm, t.tid)
    };
    let blocked_elsewhere = (t.blocked_ms - t.blocked_in_gpu_ioctl_ms).max(0.0);
    // The presenting thread's time in the interval, by what it was doing.
    let mut parts = [
        (Some(Cause::CpuContention), t.runq_wait_ms),
        (Some(Cause::GpuDriverWait), t.blocked_in_gpu_ioctl_ms),
        (Some(Cause::Blocked), blocked_elsewhere),
        (None, t.on_cpu_ms),
    ];
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (dominant, amount) = parts[0];
    let second = parts[1].1;
    if t.compile_ms >= MIN_SHARE_OF_EXCESS * excess && t.compile_ms >= t.runq_wait_ms {
        // Inside the driver's compiler: whatever the thread did there (ran, waited for the
        // compiler's own threads), the frame waited for a pipeline. The compile calls are timed
        // by their own probes, so this holds even where the kernel missed a context switch.
        return Verdict {
            cause: Cause::ShaderCompile,
            culprit: None,
            confidence: round2((t.compile_ms / excess).min(1.0)),
            summary: format!(
                "{head}: {who} spent {:.1} ms in {}",
                t.compile_ms,
                presenting_thread_calls(e, t.compile_calls)
            ),
        };
    }
    if t.unseen_ms > amount && t.unseen_ms >= MIN_SHARE_OF_EXCESS * excess {
        // The kernel did not report what the thread did over most of the frame: say so rather
        // than judge it on the part that was seen.
        return Verdict {
            cause: Cause::Unknown,
            culprit: None,
            confidence: round2((t.unseen_ms / excess).min(1.0)),
            summary: format!(
                "{head}: the kernel did not report {} of {who}, so {:.1} ms of \
                 the frame cannot be placed (it ran {:.1} ms, waited {:.1} ms for a CPU and was \
                 blocked {:.1} ms in the rest)",
                match t.missed_switches {
                    0 | 1 => "a context switch".to_string(),
                    n => format!("{n} context switches"),
                },
                t.unseen_ms,
                t.on_cpu_ms,
                t.runq_wait_ms,
                t.blocked_ms
            ),
        };
    }
    let direct_confidence =
        round2((amount / excess).min(1.0) * (1.0 - 0.5 * second / amount.max(f64::EPSILON)));

    if amount < MIN_SHARE_OF_EXCESS * excess {
        return Verdict {
            cause: Cause::Unknown,
            culprit: None,
            confidence: round2(1.0 - amount / excess),
            summary: format!(
                "{head}: the kernel's evidence does not explain it ({who} ran {:.1} ms, waited {:.1} \
                 ms for a CPU and was blocked {:.1} ms{})",
                t.on_cpu_ms,
                t.runq_wait_ms,
                t.blocked_ms,
                if t.unseen_ms > 0.0 {
                    format!("; {:.1} ms went unreported by the kernel", t.unseen_ms)
                } else {
                    String::new()
                }
            ),
        };
    }
    match dominant {
        None => Verdict {
            cause: Cause::Unknown,
            culprit: None,
            confidence: direct_confidence,
            summary: format!(
                "{head}: {who} was on a CPU for {:.1} ms, without contention or blocking: the \
                 game's own work on that thread (shader compilation, loading, simulation)",
                t.on_cpu_ms
            ),
        },
        Some(Cause::CpuContention) => {
            let culprit = e
                .ran_instead
                .as_ref()
                .filter(|r| r.nameable())
                .map(|r| Blame {
                    who: r.clone(),
                    via: None,
                });
            let instead = match (&culprit, &e.ran_instead) {
                (Some(b), _) => format!(" while {} held its CPU", describe(&b.who)),
                (None, Some(r)) => format!(
                    "; no task held its CPU for most of the wait (the kernel thread `{}` ran \
                     last)",
                    r.comm
                ),
                (None, None) => String::new(),
            };
            Verdict {
                cause: Cause::CpuContention,
                confidence: direct_confidence,
                summary: format!(
                    "{head}: {who} was runnable for {:.1} ms{instead} ({} involuntary switches, {} \
                     migrations)",
                    t.runq_wait_ms, t.involuntary_switches, t.migrations
                ),
                culprit,
            }
        }
        Some(Cause::GpuDriverWait) => {
            let gpu = &e.gpu;
            let (cause, why) = if gpu.sampled && !gpu.throttle_reasons.is_empty() {
                (
                    Cause::GpuThrottle,
                    format!(
                        " while the GPU was throttled ({})",
                        gpu.throttle_reasons.join(", ")
                    ),
                )
            } else if gpu
                .vram_used_ratio
                .is_some_and(|r| gpu.sampled && r >= VRAM_PRESSURE_RATIO)
            {
                (
                    Cause::VramPressure,
                    format!(
                        " with {:.0}% of the GPU's memory in use",
                        gpu.vram_used_ratio.unwrap_or(0.0) * 100.0
                    ),
                )
            } else {
                (Cause::GpuDriverWait, String::new())
            };
            Verdict {
                cause,
                confidence: direct_confidence,
                culprit: None,
                summary: format!(
                    "{head}: {who} was blocked {:.1} ms inside GPU driver ioctls ({} call{}){why}",
                    t.blocked_in_gpu_ioctl_ms,
                    t.gpu_ioctls,
                    if t.gpu_ioctls == 1 { "" } else { "s" }
                ),
            }
        }
        Some(_) => blocked_verdict(&head, &who, excess, direct_confidence, e),
    }
}

/// The other thread of the game that spent the most of the frame in compile calls, when that is
/// at least `threshold` ms: (tid, name, ms).
fn compiling_thread(e: &Evidence, threshold: f64) -> Option<(u32, String, f64)> {
    let mut by_thread: Vec<(u32, String, f64)> = Vec::new();
    for c in e.compiles.iter().filter(|c| !c.presenting_thread) {
        match by_thread.iter_mut().find(|(tid, _, _)| *tid == c.tid) {
            Some(entry) => entry.2 += c.in_frame_ms,
            None => by_thread.push((c.tid, c.thread.clone(), c.in_frame_ms)),
        }
    }
    by_thread
        .into_iter()
        .filter(|(_, _, ms)| *ms >= threshold)
        .max_by(|a, b| a.2.total_cmp(&b.2))
}

/// The presenting thread's compile calls in a sentence: "vkCreateGraphicsPipelines (3 pipelines,
/// no cache)" for one, "4 compile calls, 60.0 ms of it in vkCreateGraphicsPipelines (…)" for
/// several; `calls` is how many the kernel counted (the evidence lists only the long ones).
fn presenting_thread_calls(e: &Evidence, calls: u64) -> String {
    let listed: Vec<&CompileEvidence> = e.compiles.iter().filter(|c| c.presenting_thread).collect();
    describe_calls(&listed, calls)
}

/// Thread `tid`'s compile calls in a sentence (see [`presenting_thread_calls`]).
fn compile_calls_of(e: &Evidence, tid: u32) -> String {
    let listed: Vec<&CompileEvidence> = e.compiles.iter().filter(|c| c.tid == tid).collect();
    describe_calls(&listed, listed.len() as u64)
}

fn describe_calls(listed: &[&CompileEvidence], calls: u64) -> String {
    let Some(longest) = listed
        .iter()
        .max_by(|a, b| a.duration_ms.total_cmp(&b.duration_ms))
    else {
        return format!(
            "{calls} shader or pipeline compile call{}",
            if calls == 1 { "" } else { "s" }
        );
    };
    let one = match call_details(longest) {
        Some(details) => format!("{} ({details})", longest.call),
        None => longest.call.clone(),
    };
    if calls <= 1 && listed.len() <= 1 {
        one
    } else {
        format!(
            "{} compile calls, {:.1} ms of it in {one}",
            calls.max(listed.len() as u64),
            longest.in_frame_ms
        )
    }
}

/// "3 pipelines, no cache", "1 pipeline, with a pipeline cache"; nothing for a call that
/// creates no pipeline (a shader module, OpenGL's compile and link: no cache argument either).
fn call_details(c: &CompileEvidence) -> Option<String> {
    let creates_pipelines =
        compile_call::from_name(&c.call).is_some_and(compile_call::creates_pipelines);
    if !creates_pipelines {
        return None;
    }
    let cache = match (c.cache_given, c.driver_feedback) {
        (false, _) => "no cache".to_string(),
        (true, None) => "with a pipeline cache".to_string(),
        (true, Some(f)) => format!(
            "with a pipeline cache, {} of {} from it by the driver's feedback",
            f.cache_hits, f.pipelines
        ),
    };
    Some(match c.pipelines {
        1 => format!("1 pipeline, {cache}"),
        n => format!("{n} pipelines, {cache}"),
    })
}

/// The culprit for a sentence: "`sh` (pid 812, `sh -c while …`, through the children it started
/// (longest on the CPU: `tick`, pid 900), cgroup /)", "`vkcube` (pid 9096, thread `llvmpipe-0`
/// tid 9098, cgroup /)", "the kernel thread `ksoftirqd/1` (pid 15)"; a process whose name is
/// unknown is "an unnamed process (pid 40, thread `worker` tid 42)".
fn describe(r: &RanInstead) -> String {
    let id = r
        .process_pid
        .map_or(format!("tid {}", r.tid), |p| format!("pid {p}"));
    if r.kernel_thread {
        // A kernel thread is a process of one task: the task's name is the process's.
        let name = if r.process.is_empty() {
            &r.comm
        } else {
            &r.process
        };
        return format!("the kernel thread `{name}` ({id})");
    }
    let mut parts = vec![id];
    let by_itself = r.process_pid.is_none() || r.pid == r.process_pid;
    if r.children && !by_itself {
        if let Some(cmdline) = r.cmdline.as_deref().filter(|c| !c.is_empty()) {
            parts.push(format!("`{}`", shorten(cmdline, 60)));
        }
        parts.push(format!(
            "through the children it started (longest on the CPU: `{}`{})",
            r.comm,
            r.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        ));
    } else if r.process_pid.is_some_and(|p| p != r.tid) && !r.comm.is_empty() {
        parts.push(format!("thread `{}` tid {}", r.comm, r.tid));
    }
    if let Some(c) = r.process_cgroup.as_ref().or(r.cgroup.as_ref()) {
        parts.push(format!("cgroup {c}"));
    }
    let name = if r.process.is_empty() {
        "an unnamed process".to_string()
    } else {
        format!("`{}`", r.process)
    };
    format!("{name} ({})", parts.join(", "))
}

/// The verdict's sentence as any local user may read it (the daemon's TCP API and its page):
/// without the culprit's command line, whose arguments can hold another user's secrets (the
/// session reports and the root-only socket keep it).
pub fn public_summary(v: &Verdict) -> String {
    let cmdline = v
        .culprit
        .as_ref()
        .and_then(|b| b.who.cmdline.as_deref())
        .filter(|c| !c.is_empty());
    match cmdline {
        // `describe` writes it as "`CMDLINE`, " before the children it started.
        Some(cmdline) => v
            .summary
            .replacen(&format!("`{}`, ", shorten(cmdline, 60)), "", 1),
        None => v.summary.clone(),
    }
}

/// `text` on one line (runs of whitespace as one space: a shell script's newlines), cut to `max`
/// characters with an ellipsis when longer.
fn shorten(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The presenting thread slept outside the GPU driver. If it was waiting for another thread of
/// the game that could not run (or was itself stuck in the driver), that is the cause; else
/// `blocked`.
fn blocked_verdict(head: &str, who: &str, excess: f64, confidence: f64, e: &Evidence) -> Verdict {
    let t = &e.presenting_thread;
    let threshold = MIN_SHARE_OF_EXCESS * excess;
    let starved = e
        .busy_threads
        .iter()
        .filter(|b| b.runq_wait_ms >= threshold)
        .max_by(|a, b| a.runq_wait_ms.total_cmp(&b.runq_wait_ms));
    let in_driver = e
        .busy_threads
        .iter()
        .filter(|b| b.blocked_in_gpu_ioctl_ms >= threshold)
        .max_by(|a, b| {
            a.blocked_in_gpu_ioctl_ms
                .total_cmp(&b.blocked_in_gpu_ioctl_ms)
        });
    if let Some((tid, thread, compile_ms)) = compiling_thread(e, threshold) {
        return Verdict {
            cause: Cause::ShaderCompile,
            culprit: None,
            confidence: round2(confidence * INDIRECT),
            summary: format!(
                "{head}: {who} was blocked {:.1} ms while the game's thread `{thread}` (tid {tid}) \
                 spent {compile_ms:.1} ms of the frame in {}",
                t.blocked_ms,
                compile_calls_of(e, tid)
            ),
        };
    }
    if let Some(b) = starved {
        // The chain: the presenting thread waited for the game's thread, which waited behind the
        // culprit; that culprit is the stutter's, not whoever briefly held the presenting
        // thread's own CPU.
        let culprit = b
            .waited_behind
            .as_ref()
            .filter(|r| r.nameable())
            .map(|r| Blame {
                who: r.clone(),
                via: Some(ViaThread {
                    tid: b.tid,
                    comm: b.comm.clone(),
                    runq_wait_ms: b.runq_wait_ms,
                }),
            });
        return Verdict {
            cause: Cause::CpuContention,
            confidence: round2(confidence * INDIRECT),
            summary: format!(
                "{head}: {who} was blocked {:.1} ms waiting for the game's thread `{}` (tid {}), \
                 which waited {:.1} ms for a CPU{}",
                t.blocked_ms,
                b.comm,
                b.tid,
                b.runq_wait_ms,
                culprit
                    .as_ref()
                    .map(|c| format!(" behind {}", describe(&c.who)))
                    .unwrap_or_default()
            ),
            culprit,
        };
    }
    let unreported = e
        .busy_threads
        .iter()
        .filter(|b| b.unseen_ms >= threshold)
        .max_by(|a, b| a.unseen_ms.total_cmp(&b.unseen_ms));
    if in_driver.is_none() {
        if let Some(b) = unreported {
            // The thread it waited for may have been starved or stuck, but the kernel did not say.
            return Verdict {
                cause: Cause::Unknown,
                culprit: None,
                confidence: round2(confidence * INDIRECT),
                summary: format!(
                    "{head}: {who} was blocked {:.1} ms, while the kernel did not report {:.1} ms \
                     of the game's thread `{}` (tid {}): what held it up cannot be told",
                    t.blocked_ms, b.unseen_ms, b.comm, b.tid
                ),
            };
        }
    }
    if let Some(b) = in_driver {
        return Verdict {
            cause: Cause::GpuDriverWait,
            culprit: None,
            confidence: round2(confidence * INDIRECT),
            summary: format!(
                "{head}: {who} was blocked {:.1} ms, while the game's thread `{}` (tid {}) was \
                 blocked {:.1} ms inside GPU driver ioctls",
                t.blocked_ms, b.comm, b.tid, b.blocked_in_gpu_ioctl_ms
            ),
        };
    }
    let io = if t.blocked_uninterruptible_ms >= 1.0 {
        format!(
            "; {:.1} ms of it in uninterruptible sleep (disk I/O or a kernel lock)",
            t.blocked_uninterruptible_ms
        )
    } else {
        String::new()
    };
    Verdict {
        cause: Cause::Blocked,
        culprit: None,
        confidence,
        summary: format!(
            "{head}: {who} was blocked {:.1} ms outside the GPU driver (longest single wait {:.1} \
             ms){io}",
            t.blocked_ms - t.blocked_in_gpu_ioctl_ms,
            t.max_blocked_ms
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(t: ThreadEvidence) -> Evidence {
        Evidence {
            presenting_thread: ThreadEvidence {
                tid: 7,
                comm: "render".into(),
                ..t
            },
            ran_instead: None,
            busy_threads: Vec::new(),
            busy_threads_window_ms: None,
            gpu: GpuEvidence::default(),
            compiles: Vec::new(),
        }
    }

    fn compile(tid: u32, thread: &str, in_frame_ms: f64, pipelines: u32) -> CompileEvidence {
        CompileEvidence {
            tid,
            thread: thread.into(),
            call: "vkCreateGraphicsPipelines".into(),
            in_frame_ms,
            duration_ms: in_frame_ms,
            pipelines,
            cache_given: false,
            driver_feedback: None,
            presenting_thread: tid == 7,
        }
    }

    #[test]
    fn a_frame_spent_in_the_drivers_compiler_is_a_shader_compile() {
        let mut e = evidence(ThreadEvidence {
            on_cpu_ms: 90.0,
            compile_ms: 84.0,
            compile_calls: 1,
            ..Default::default()
        });
        e.compiles.push(compile(7, "render", 84.0, 3));
        let v = attribute(812, 96.0, 16.0, &e);
        assert_eq!(v.cause, Cause::ShaderCompile);
        assert!(v.culprit.is_none());
        assert_eq!(
            v.summary,
            "frame 812 took 96.0 ms (6.0× the 16.0 ms average): the presenting thread `render` \
             (tid 7) spent 84.0 ms in vkCreateGraphicsPipelines (3 pipelines, no cache)"
        );
        assert!(v.confidence > 0.9, "{}", v.confidence);
        // Several calls: how many, and the one that took the frame.
        e.presenting_thread.compile_calls = 3;
        e.compiles.push(CompileEvidence {
            call: "vkCreateShaderModule".into(),
            pipelines: 0,
            ..compile(7, "render", 0.7, 0)
        });
        let v = attribute(812, 96.0, 16.0, &e);
        assert!(
            v.summary.ends_with(
                "spent 84.0 ms in 3 compile calls, 84.0 ms of it in vkCreateGraphicsPipelines \
                 (3 pipelines, no cache)"
            ),
            "{}",
            v.summary
        );
        // With a cache, and the driver's word on it.
        e.compiles[0].cache_given = true;
        e.compiles[0].driver_feedback = Some(DriverFeedback {
            pipelines: 3,
            cache_hits: 1,
        });
        let v = attribute(812, 96.0, 16.0, &e);
        assert!(
            v.summary.ends_with(
                "vkCreateGraphicsPipelines (3 pipelines, with a pipeline cache, 1 of 3 from it \
                 by the driver's feedback)"
            ),
            "{}",
            v.summary
        );
        // OpenGL's calls create no pipeline and take no cache: the sentence says neither.
        e.compiles = vec![CompileEvidence {
            call: "glLinkProgram".into(),
            ..compile(7, "render", 84.0, 0)
        }];
        e.presenting_thread.compile_calls = 1;
        let v = attribute(812, 96.0, 16.0, &e);
        assert!(
            v.summary.ends_with("spent 84.0 ms in glLinkProgram"),
            "{}",
            v.summary
        );
        // A short compile in a frame that waited for a CPU is not what took it.
        let mut e = evidence(ThreadEvidence {
            runq_wait_ms: 80.0,
            compile_ms: 2.0,
            compile_calls: 1,
            ..Default::default()
        });
        e.compiles.push(compile(7, "render", 2.0, 1));
        assert_eq!(attribute(1, 96.0, 16.0, &e).cause, Cause::CpuContention);
    }

    #[test]
    fn a_frame_that_waited_for_a_compiling_worker_is_a_shader_compile_through_it() {
        let mut e = evidence(ThreadEvidence {
            blocked_ms: 75.0,
            max_blocked_ms: 75.0,
            ..Default::default()
        });
        e.compiles.push(compile(9, "shader-worker", 70.0, 2));
        let v = attribute(40, 90.0, 16.0, &e);
        assert_eq!(v.cause, Cause::ShaderCompile);
        assert!(
            v.summary.ends_with(
                "was blocked 75.0 ms while the game's thread `shader-worker` (tid 9) spent 70.0 \
                 ms of the frame in vkCreateGraphicsPipelines (2 pipelines, no cache)"
            ),
            "{}",
            v.summary
        );
        // A worker's compile far shorter than the wait does not explain it.
        e.compiles[0].in_frame_ms = 5.0;
        assert_eq!(attribute(40, 90.0, 16.0, &e).cause, Cause::Blocked);
    }

    fn process(pid: u32, comm: &str, wait_ms: f64) -> RanInstead {
        RanInstead {
            tid: pid,
            pid: Some(pid),
            comm: comm.into(),
            wait_ms,
            process_pid: Some(pid),
            process: comm.into(),
            held_ms: Some(wait_ms),
            ..Default::default()
        }
    }

    fn contention(ran_instead: RanInstead) -> Evidence {
        let mut e = evidence(ThreadEvidence {
            on_cpu_ms: 4.0,
            runq_wait_ms: 80.0,
            max_runq_wait_ms: 79.0,
            blocked_ms: 12.0,
            blocked_sleeping_ms: 12.0,
            involuntary_switches: 1,
            ..Default::default()
        });
        e.ran_instead = Some(ran_instead);
        e
    }

    #[test]
    fn a_long_run_queue_wait_is_contention_and_names_who_ran() {
        let e = contention(RanInstead {
            cgroup: Some("/user.slice".into()),
            ..process(812, "shader-compiler", 80.0)
        });
        let v = attribute(4210, 96.0, 16.7, &e);
        assert_eq!(v.cause, Cause::CpuContention);
        assert!(v.confidence > 0.8, "{v:?}");
        assert!(v
            .summary
            .contains("`shader-compiler` (pid 812, cgroup /user.slice)"));
        assert!(v.summary.starts_with("frame 4210 took 96.0 ms"));
        let culprit = v.culprit.expect("a culprit");
        assert_eq!((culprit.who.process_pid, culprit.via), (Some(812), None));
    }

    #[test]
    fn a_process_working_through_children_is_named_with_its_command_line() {
        let e = contention(RanInstead {
            cmdline: Some(format!("sh -c while :;\n  do {}; done", "x".repeat(80))),
            children: true,
            tid: 900,
            pid: Some(900),
            comm: "tick".into(),
            ..process(812, "sh", 80.0)
        });
        let v = attribute(1, 96.0, 16.7, &e);
        assert!(
            v.summary.contains(
                "while `sh` (pid 812, `sh -c while :; do xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…`, \
                 through the children it started (longest on the CPU: `tick`, pid 900)) held its CPU"
            ),
            "{}",
            v.summary
        );
        // Any local user reads it without the command line.
        let public = public_summary(&v);
        assert!(
            public.contains(
                "while `sh` (pid 812, through the children it started (longest on the CPU: \
                 `tick`, pid 900)) held its CPU"
            ),
            "{public}"
        );
        assert!(!public.contains("while :;"), "{public}");
        // A thread of the process itself is a thread, not a child.
        let e = contention(RanInstead {
            tid: 9098,
            comm: "llvmpipe-0".into(),
            ..process(9096, "vkcube", 80.0)
        });
        let v = attribute(1, 96.0, 16.7, &e);
        assert!(
            v.summary
                .contains("`vkcube` (pid 9096, thread `llvmpipe-0` tid 9098)"),
            "{}",
            v.summary
        );
        // A process whose name is not known is not named after its thread.
        let e = contention(RanInstead {
            tid: 9098,
            comm: "llvmpipe-0".into(),
            process: String::new(),
            ..process(9096, "vkcube", 80.0)
        });
        let v = attribute(1, 96.0, 16.7, &e);
        assert!(
            v.summary
                .contains("while an unnamed process (pid 9096, thread `llvmpipe-0` tid 9098)"),
            "{}",
            v.summary
        );
    }

    #[test]
    fn a_kernel_thread_is_named_only_when_it_held_the_cpu_for_the_wait() {
        let kthread = RanInstead {
            kernel_thread: true,
            ..process(15, "ksoftirqd/1", 80.0)
        };
        let v = attribute(1, 96.0, 16.7, &contention(kthread.clone()));
        assert!(v.culprit.is_some());
        assert!(v
            .summary
            .contains("the kernel thread `ksoftirqd/1` (pid 15)"));
        for held_ms in [None, Some(1.0)] {
            let v = attribute(
                1,
                96.0,
                16.7,
                &contention(RanInstead {
                    held_ms,
                    ..kthread.clone()
                }),
            );
            assert_eq!(v.cause, Cause::CpuContention);
            assert!(v.culprit.is_none(), "{v:?}");
            assert!(v.summary.contains("no task held its CPU"), "{}", v.summary);
        }
    }

    #[test]
    fn a_long_sleep_is_blocked() {
        let e = evidence(ThreadEvidence {
            on_cpu_ms: 4.0,
            blocked_ms: 72.0,
            max_blocked_ms: 60.0,
            blocked_sleeping_ms: 72.0,
            ..Default::default()
        });
        let v = attribute(1, 76.0, 16.7, &e);
        assert_eq!(v.cause, Cause::Blocked);
        assert!(v.confidence > 0.8, "{v:?}");
    }

    #[test]
    fn a_wait_inside_the_gpu_driver_is_a_driver_wait_unless_the_gpu_throttled() {
        let mut e = evidence(ThreadEvidence {
            on_cpu_ms: 4.0,
            blocked_ms: 70.0,
            blocked_in_gpu_ioctl_ms: 60.0,
            gpu_ioctls: 3,
            ..Default::default()
        });
        assert_eq!(attribute(1, 76.0, 16.7, &e).cause, Cause::GpuDriverWait);
        e.gpu = GpuEvidence {
            sampled: true,
            throttle_reasons: vec!["hw-thermal-slowdown".into()],
            ..Default::default()
        };
        assert_eq!(attribute(1, 76.0, 16.7, &e).cause, Cause::GpuThrottle);
        e.gpu = GpuEvidence {
            sampled: true,
            vram_used_ratio: Some(0.99),
            ..Default::default()
        };
        assert_eq!(attribute(1, 76.0, 16.7, &e).cause, Cause::VramPressure);
    }

    #[test]
    fn waiting_on_a_starved_sibling_is_contention_with_less_confidence() {
        let mut e = evidence(ThreadEvidence {
            blocked_ms: 70.0,
            blocked_sleeping_ms: 70.0,
            ..Default::default()
        });
        let direct = attribute(1, 76.0, 16.7, &e);
        e.busy_threads.push(BusyThread {
            tid: 9,
            comm: "main".into(),
            on_cpu_ms: 5.0,
            runq_wait_ms: 55.0,
            blocked_ms: 0.0,
            blocked_in_gpu_ioctl_ms: 0.0,
            unseen_ms: 0.0,
            involuntary_switches: 2,
            migrations: 0,
            waited_behind: Some(process(4242, "make", 50.0)),
        });
        let v = attribute(1, 76.0, 16.7, &e);
        assert_eq!(v.cause, Cause::CpuContention);
        assert!(v.confidence < direct.confidence);
        assert!(
            v.summary.contains(
                "blocked 70.0 ms waiting for the game's thread `main` (tid 9), which waited 55.0 \
                 ms for a CPU behind `make` (pid 4242)"
            ),
            "{}",
            v.summary
        );
        // The headline culprit is the worker's, through the worker, whoever briefly held the
        // presenting thread's own CPU.
        e.ran_instead = Some(process(700, "Xvfb", 0.9));
        let culprit = attribute(1, 76.0, 16.7, &e).culprit.expect("a culprit");
        assert_eq!(
            (culprit.who.process.as_str(), culprit.via.map(|v| v.tid)),
            ("make", Some(9))
        );
    }

    #[test]
    fn unexplained_frames_are_unknown_and_own_work_says_so() {
        let e = evidence(ThreadEvidence {
            on_cpu_ms: 5.0,
            runq_wait_ms: 2.0,
            blocked_ms: 3.0,
            ..Default::default()
        });
        assert_eq!(attribute(1, 80.0, 16.0, &e).cause, Cause::Unknown);
        let e = evidence(ThreadEvidence {
            on_cpu_ms: 75.0,
            ..Default::default()
        });
        let v = attribute(1, 80.0, 16.0, &e);
        assert_eq!(v.cause, Cause::Unknown);
        assert!(v.summary.contains("own work"));
    }

    #[test]
    fn a_frame_the_kernel_did_not_report_is_not_judged_on_what_was_seen() {
        // 70 ms unplaced, 8 ms of it seen as a CPU wait: contention would be a guess.
        let mut e = evidence(ThreadEvidence {
            on_cpu_ms: 2.0,
            runq_wait_ms: 8.0,
            unseen_ms: 70.0,
            missed_switches: 1,
            ..Default::default()
        });
        let v = attribute(3, 80.0, 16.0, &e);
        assert_eq!(v.cause, Cause::Unknown, "{v:?}");
        assert!(
            v.summary
                .contains("did not report a context switch of the presenting thread `render`"),
            "{v:?}"
        );
        assert!(v.summary.contains("70.0 ms of the frame cannot be placed"));
        // A few unseen milliseconds do not hide a wait the kernel did report.
        e.presenting_thread.runq_wait_ms = 70.0;
        e.presenting_thread.unseen_ms = 8.0;
        assert_eq!(attribute(3, 80.0, 16.0, &e).cause, Cause::CpuContention);
        // Compile calls are timed by their own probes: a missed switch does not hide them (a
        // 312 ms frame with 292 ms in glCompileShader and glLinkProgram, 240 ms of it unseen by
        // the scheduler probes, seen in the suite).
        let mut e = evidence(ThreadEvidence {
            on_cpu_ms: 52.9,
            blocked_ms: 19.7,
            unseen_ms: 240.0,
            missed_switches: 1,
            compile_ms: 292.4,
            compile_calls: 2,
            ..Default::default()
        });
        e.compiles.push(CompileEvidence {
            call: "glLinkProgram".into(),
            ..compile(7, "render", 145.2, 0)
        });
        let v = attribute(90, 312.7, 19.6, &e);
        assert_eq!(v.cause, Cause::ShaderCompile, "{v:?}");
    }

    #[test]
    fn causes_serialize_in_kebab_case() {
        let names: Vec<String> = Cause::ALL
            .iter()
            .map(|c| serde_json::to_string(c).expect("serializes"))
            .collect();
        for (c, json) in Cause::ALL.iter().zip(&names) {
            assert_eq!(json, &format!("\"{}\"", c.name()));
        }
    }
}
