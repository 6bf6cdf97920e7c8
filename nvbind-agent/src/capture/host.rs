//! What the agent says about the machine and itself: the host's description in a capture, the
//! agent's own CPU time and memory, and its lowered priority.

use crate::frames::Capture;

/// The agent's nice value while recording: it yields the CPU to the game it measures, so it does
/// not cause the stutters it reports (it drains a ring buffer that holds seconds of frames).
pub const AGENT_NICE: i32 = 5;

/// The agent's CPU time (user + system, seconds) and peak resident memory (bytes) so far.
pub fn cpu_time_and_peak_rss() -> (f64, u64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        tv(usage.ru_utime) + tv(usage.ru_stime),
        usage.ru_maxrss as u64 * 1024,
    )
}

/// Lowers the agent's priority (AGENT_NICE), so it does not cause the stutters it measures.
pub fn yield_to_games() {
    // SAFETY: setpriority on this process; failure only leaves the priority as it was.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) } != 0 {
        log::debug!(
            "cannot lower the agent's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Fills in the host's kernel, name and CPU count.
pub(super) fn describe_host(capture: &mut Capture) {
    let (kernel, hostname) = uname();
    capture.kernel = kernel;
    capture.hostname = hostname;
    capture.cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
}

/// This machine's host name (empty when it cannot be read).
pub fn hostname() -> String {
    uname().1
}

/// (kernel release, hostname).
fn uname() -> (String, String) {
    // SAFETY: zeroed utsname is a valid out-parameter.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (String::new(), String::new());
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (text(&uts.release), text(&uts.nodename))
}
