//! Reading what the agent wrote: the JSON report, the per-frame CSV, and the kernel's skipped
//! probe runs the report counts.

use std::path::Path;

/// Reads a JSON report.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The report's entry for the process with the most frames.
pub fn busiest(report: &serde_json::Value) -> &serde_json::Value {
    &report["processes"][0]
}

/// Parses the per-frame CSV into rows of (column → value).
pub fn read_csv(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("CSV header")
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

/// Runs of the scheduler probes the kernel skipped during a capture (the report's
/// `agent.bpf[].recursion_misses` of `nvbind_sched_*`): events nvbind could not see, so counts
/// checked against the kernel's own may fall short by that many.
pub fn skipped_sched_runs(report: &serde_json::Value) -> u64 {
    skipped_runs(report, "nvbind_sched")
}

/// Runs the kernel skipped (the report's `agent.bpf[].recursion_misses`) of the programs whose
/// name starts with `prefix`.
pub fn skipped_runs(report: &serde_json::Value, prefix: &str) -> u64 {
    report["agent"]["bpf"]
        .as_array()
        .expect("agent.bpf")
        .iter()
        .filter(|c| c["program"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|c| c["recursion_misses"].as_u64().expect("recursion_misses"))
        .sum()
}

/// How far a switch count may be from the kernel's own count of `truth`: the scheduler events
/// the kernel skipped (see [`skipped_sched_runs`]), two CPUs updating one thread's record at
/// once (each can lose an increment), and the few switches of start-up and exit around the
/// game's getrusage reads: 5 + 1 %. A real bug (a kind of switch not counted, a thread's counts
/// lost) is far outside it.
pub fn switch_count_slack(truth: u64, report: &serde_json::Value) -> u64 {
    5 + truth / 100 + skipped_sched_runs(report)
}

/// Whether the report says it could not judge a stutter because the kernel did not report what
/// a thread did: the verdict `unknown`, with a sentence that says the kernel "did not report"
/// the presenting thread's switches, or the time of the game's thread it was blocked on
/// (docs/stutter.md). Now and then a context switch or a wakeup reaches no tracepoint consumer at
/// all (docs/probes.md); tests count such frames and still require most frames judged. Any other
/// `unknown` (the evidence, unseen time or not, does not explain the frame) is not excused.
pub fn stutter_unreported(e: &serde_json::Value) -> bool {
    e["cause"] == "unknown"
        && e["summary"]
            .as_str()
            .is_some_and(|s| s.contains("did not report"))
}
