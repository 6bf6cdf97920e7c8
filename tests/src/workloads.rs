//! Real workloads and the processes under test: finding them, waiting until they present, a
//! private X server, and the clock and CPU pinning the synthetic game and its competitors use.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{presents_so_far, progress_path};

/// Pids of running processes with this name (comm).
pub fn pids_named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim_end() == comm)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the synthetic game whose truth file is `truth` has presented at least `frames`
/// frames, by its own count ([`presents_so_far`]): not a guess from CPU time or start-up time
/// (its first presents can cost far more CPU than later ones while Mesa compiles shaders).
///
/// The deadline only bounds a hang.
pub fn wait_for_presents(truth: &Path, frames: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let presented = presents_so_far(truth);
        if presented >= u64::from(frames) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the game presented {presented} of {frames} frames within 60 s ({})",
            progress_path(truth).display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Write calls an X client makes while starting up, before its first present: vkcube on lavapipe
/// makes about 30 (32 for `vkcube --c 1`, measured with strace), then about 6 per frame (every
/// present flushes the frame to the X server).
pub const X_WRITES_WHILE_PRESENTING: u64 = 300;

/// Waits until the X client `pid` presents frames in a loop: its write calls (the kernel's count,
/// `syscw` in /proc/PID/io) pass [`X_WRITES_WHILE_PRESENTING`], ten times what starting up makes.
/// The deadline only bounds a hang.
pub fn wait_until_presenting(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .unwrap_or_else(|e| panic!("pid {pid} is gone before presenting: {e}"));
        let writes: u64 = io
            .lines()
            .find_map(|l| l.strip_prefix("syscw:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("syscw in /proc/PID/io");
        if writes >= X_WRITES_WHILE_PRESENTING {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} made only {writes} write calls in 60 s: it is not presenting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a process with this name runs; its pid.
pub fn wait_for_process(comm: &str, limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(pid) = pids_named(comm).first() {
            return *pid;
        }
        assert!(
            Instant::now() < deadline,
            "no process named {comm} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private X server (Xvfb) for one test, stopped on drop.
pub struct Xvfb {
    child: Child,
    pub display: String,
}

static NEXT_DISPLAY: AtomicU32 = AtomicU32::new(0);

impl Xvfb {
    pub fn start() -> Result<Xvfb> {
        let n = 150 + (std::process::id() % 50) * 10 + NEXT_DISPLAY.fetch_add(1, Ordering::Relaxed);
        let display = format!(":{n}");
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
        let child = Command::new("Xvfb")
            .args([
                display.as_str(),
                "-screen",
                "0",
                "640x480x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start Xvfb (cargo xtask setup installs it)")?;
        let mut x = Xvfb { child, display };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("Xvfb {} did not start within 10 s", x.display);
            }
            if let Ok(Some(status)) = x.child.try_wait() {
                bail!("Xvfb {} exited: {status}", x.display);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(x)
    }
}

impl Xvfb {
    /// Keeps the X server (every thread of it) on one CPU, away from a competitor a test runs on
    /// another: a client blocked on a server that waits behind the competitor is a different
    /// story (a wait chain) from the one such a test tells.
    pub fn pin_to_cpu(&self, cpu: usize) -> Result<()> {
        let pid = self.child.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("cannot list the threads of Xvfb (pid {pid})"))?;
        for task in tasks {
            let tid = task?.file_name().to_string_lossy().parse::<u32>()?;
            pin_task_to_cpu(tid, cpu)?;
        }
        Ok(())
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its socket and lock file.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock the kernel's probes stamp events with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs a test program's body with a log of its ground truth, and writes the log to `path`
/// whatever happened: a test reads what was done before a failure.
pub fn with_ground_truth(
    path: &std::path::Path,
    body: impl FnOnce(&mut String) -> Result<()>,
) -> Result<()> {
    let mut log = String::new();
    let result = body(&mut log);
    std::fs::write(path, &log).with_context(|| format!("write {}", path.display()))?;
    result
}

/// The calling thread's id (what the kernel's probes and reports call a thread).
pub fn gettid() -> u32 {
    // SAFETY: a syscall without arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    pin_task_to_cpu(0, cpu)
}

/// Pins task `tid` (0: the calling thread) to one CPU.
fn pin_task_to_cpu(tid: u32, cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} is out of range");
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it (bounds checked above).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t.
    unsafe {
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin task {tid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Programs and their shared libraries locked in memory (the page cache) while this lives: a
/// competitor that execs them in its bursts never waits for the disk, which on a shared machine
/// may have dropped their pages since they last ran, and so never leaves its CPU idle.
pub struct Resident {
    mappings: Vec<(*mut libc::c_void, usize)>,
}

impl Resident {
    /// Locks each program named (a path, or a name found in `PATH`) and every library `ldd`
    /// lists for it.
    pub fn programs(names: &[&str]) -> Result<Resident> {
        let mut files: Vec<PathBuf> = Vec::new();
        for name in names {
            let program = find_program(name)?;
            let ldd = Command::new("ldd")
                .arg(&program)
                .output()
                .with_context(|| format!("cannot run ldd on {}", program.display()))?;
            files.push(program);
            files.extend(
                String::from_utf8_lossy(&ldd.stdout)
                    .split_whitespace()
                    .filter(|word| word.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
        files.sort();
        files.dedup();
        let mut resident = Resident {
            mappings: Vec::new(),
        };
        for file in files {
            resident.lock(&file)?;
        }
        Ok(resident)
    }

    fn lock(&mut self, path: &Path) -> Result<()> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a fresh read-only shared mapping of a file we opened, unmapped only in Drop.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            bail!(
                "cannot map {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        self.mappings.push((at, len));
        // SAFETY: the mapping just made, `len` bytes long.
        if unsafe { libc::mlock(at, len) } != 0 {
            bail!(
                "cannot lock {} in memory: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        for &(at, len) in &self.mappings {
            // SAFETY: mappings made in `lock`, not used after this.
            unsafe { libc::munmap(at, len) };
        }
    }
}

/// A program's path: `name` itself when it has a slash, else the first match in `PATH`.
fn find_program(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not in PATH"))
}
