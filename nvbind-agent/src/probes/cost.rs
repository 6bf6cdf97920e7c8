//! What the programs cost, from the kernel's own counters: runs and run time (bpf_stats) and
//! the runs it skipped (recursion misses), per program.

use serde::{Deserialize, Serialize};

use aya::programs::Program;

use super::Probes;

/// Per-program cost from the kernel's bpf_stats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub mean_ns_per_run: f64,
    /// Times the kernel skipped the program because another tracing program was running on the
    /// same CPU (its recursion guard): events it never saw.
    #[serde(default)]
    pub recursion_misses: u64,
}

impl Probes {
    /// Run count and time of every loaded program (bpf_stats).
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        let mut costs: Vec<ProgramCost> = self
            .ebpf
            .programs()
            .filter_map(|(name, prog): (&str, &Program)| {
                let info = prog.info().ok()?;
                let run_count = info.run_count();
                let run_time_ns = info.run_time().as_nanos() as u64;
                Some(ProgramCost {
                    program: name.to_string(),
                    run_count,
                    run_time_ns,
                    mean_ns_per_run: if run_count > 0 {
                        run_time_ns as f64 / run_count as f64
                    } else {
                        0.0
                    },
                    recursion_misses: prog
                        .fd()
                        .ok()
                        .and_then(|fd| recursion_misses(std::os::fd::AsFd::as_fd(fd)).ok())
                        .unwrap_or(0),
                })
            })
            .collect();
        costs.sort_by(|a, b| a.program.cmp(&b.program));
        costs
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
