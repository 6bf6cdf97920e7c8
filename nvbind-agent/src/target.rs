//! What to record: a running process (`--pid`), a process by name that may not exist yet
//! (`--comm`), every process (`--all`), or a command the agent launches (`-- COMMAND ARGS`).
//!
//! A launched command is forked, held before `execve` until the agent has put it in the tracked
//! set, then released: its first instruction, first thread and first frame are all seen.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Pid(u32),
    Comm(String),
    Command(Vec<String>),
    /// Every process, running and future.
    All,
}

impl std::fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSpec::Pid(pid) => write!(f, "pid {pid}"),
            TargetSpec::Comm(name) => write!(f, "comm {name}"),
            TargetSpec::Command(argv) => write!(f, "command {}", argv.join(" ")),
            TargetSpec::All => write!(f, "all processes"),
        }
    }
}

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("no process with pid {0}: check the pid with `ps -p {0}`")]
    NoSuchPid(u32),
    #[error("command not found: {0}: check the name or give a full path")]
    CommandNotFound(String),
    #[error("invalid command argument (contains a NUL byte): {0:?}")]
    BadArgument(String),
    #[error("cannot launch {command}: {source}")]
    Launch {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a process exists and is not a zombie. Only the kernel's word that it is gone counts:
/// when /proc cannot be read for another reason (out of fds or memory, which a hostile user can
/// cause), the process is taken as alive, never as exited (its kernel exit event still ends it).
pub fn is_alive(pid: u32) -> bool {
    let Ok(pid_t) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    if unsafe { libc::kill(pid_t, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(process_state(&stat), Some(b'Z' | b'X' | b'x')),
        Err(e) => !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)),
    }
}

/// The state letter of a /proc/PID/stat line (after the command name, which may hold spaces and
/// parentheses).
fn process_state(stat: &[u8]) -> Option<u8> {
    let after_name = stat.iter().rposition(|&b| b == b')')?;
    stat.get(after_name + 2).copied()
}

/// How much of /proc/TID/cgroup is read: a path per hierarchy, and a user with a delegated
/// subtree (systemd's user instance) can nest cgroups as deep as it likes.
const CGROUP_FILE_MAX_BYTES: u64 = 64 << 10;
/// The longest cgroup path kept (the kernel's `PATH_MAX`).
const CGROUP_PATH_MAX: usize = 4096;

/// The cgroup of a task (a tid works: /proc resolves thread ids too): its cgroup v2 path, or on a
/// v1-only host the path in the `cpu` hierarchy (the one that decides who gets a CPU). Any task
/// can be asked about (a culprit is any process on the host), so the read is bounded and the
/// path made printable: it goes into reports and sentences.
pub fn cgroup_of(tid: u32) -> Option<String> {
    let bytes =
        crate::identity::read_bounded(&format!("/proc/{tid}/cgroup"), CGROUP_FILE_MAX_BYTES)?;
    parse_cgroup_file(&String::from_utf8_lossy(&bytes))
        .map(|path| crate::identity::printable_within(&path, CGROUP_PATH_MAX))
}

/// The process (thread group) a task belongs to.
pub fn tgid_of(tid: u32) -> Option<u32> {
    procfs::process::Process::new(tid as i32)
        .and_then(|p| p.status())
        .ok()
        .map(|s| s.tgid as u32)
}

fn parse_cgroup_file(text: &str) -> Option<String> {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((controllers, path))
        })
        .collect();
    entries
        .iter()
        .find(|(controllers, _)| controllers.is_empty())
        .or_else(|| {
            entries
                .iter()
                .find(|(controllers, _)| controllers.split(',').any(|c| c == "cpu"))
        })
        .map(|(_, path)| path.to_string())
}

/// Checks a `--pid` target before anything is loaded.
pub fn check_pid(pid: u32) -> Result<(), TargetError> {
    if pid == 0 || !is_alive(pid) {
        return Err(TargetError::NoSuchPid(pid));
    }
    Ok(())
}

/// Running processes whose `comm` is `name` (compared on the 15 bytes the kernel keeps).
pub fn processes_named(name: &str) -> Vec<u32> {
    let want = &name.as_bytes()[..name.len().min(15)];
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| {
            let stat = p.stat().ok()?;
            (stat.comm.as_bytes() == want && !matches!(stat.state, 'Z' | 'X'))
                .then_some(p.pid as u32)
        })
        .collect()
}

/// Every live process but the agent itself.
pub fn all_processes() -> Vec<u32> {
    let me = std::process::id();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| {
            let stat = p.stat().ok()?;
            (p.pid as u32 != me && !matches!(stat.state, 'Z' | 'X')).then_some(p.pid as u32)
        })
        .collect()
}

/// Every live descendant of `pid` (children, grandchildren, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = all
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.pid as u32, p.stat().ok()?.ppid as u32)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Finds a program the way `execvp` would.
pub fn resolve_program(program: &str) -> Result<PathBuf, TargetError> {
    let is_executable = |p: &Path| {
        p.is_file()
            && CString::new(p.as_os_str().as_bytes())
                // SAFETY: a valid NUL-terminated path.
                .map(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
                .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(TargetError::CommandNotFound(program.into()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| TargetError::CommandNotFound(program.into()))
}

/// A command forked by the agent and held before `execve`.
pub struct Launched {
    pub pid: u32,
    release_fd: libc::c_int,
    exit: Option<i32>,
}

impl Launched {
    /// Forks `argv`; the child waits for [`Launched::release`] before `execve`. The child gets its
    /// own process group so the agent can stop it and everything it started.
    pub fn spawn(argv: &[String]) -> Result<Launched, TargetError> {
        let program = resolve_program(&argv[0])?;
        let to_c = |s: &[u8]| {
            CString::new(s).map_err(|_| TargetError::BadArgument(String::from_utf8_lossy(s).into()))
        };
        let path = to_c(program.as_os_str().as_bytes())?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| to_c(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        arg_ptrs.push(std::ptr::null());
        let env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());

        let launch_err = |source| TargetError::Launch {
            command: argv.join(" "),
            source,
        };
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(launch_err(std::io::Error::last_os_error()));
        }
        let [read_fd, write_fd] = fds;
        // SAFETY: after fork the child only calls async-signal-safe functions (setpgid, close,
        // read, execve, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(launch_err(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            unsafe {
                libc::setpgid(0, 0);
                libc::close(write_fd);
                let mut byte = 0u8;
                let n = libc::read(read_fd, (&mut byte as *mut u8).cast(), 1);
                if n != 1 {
                    // The agent went away before releasing us: do not run untracked.
                    libc::_exit(127);
                }
                libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
                libc::_exit(127);
            }
        }
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(read_fd) };
        // Also set the group from the parent side, so a kill of the group cannot race the child.
        // SAFETY: plain syscall.
        unsafe { libc::setpgid(pid, pid) };
        Ok(Launched {
            pid: pid as u32,
            release_fd: write_fd,
            exit: None,
        })
    }

    /// Lets the child `execve`.
    pub fn release(&mut self) {
        if self.release_fd >= 0 {
            let byte = 1u8;
            // SAFETY: writing one byte from a valid buffer to our pipe end.
            unsafe {
                libc::write(self.release_fd, (&byte as *const u8).cast(), 1);
                libc::close(self.release_fd);
            }
            self.release_fd = -1;
        }
    }

    /// The exit code once the child has ended (`128 + signal` for a signal), reaping it.
    pub fn try_wait(&mut self) -> Option<i32> {
        if self.exit.is_none() {
            let mut status = 0;
            // SAFETY: valid out-pointer; WNOHANG never blocks.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
            if r == self.pid as i32 {
                self.exit = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
        self.exit
    }

    /// Stops the command and its process group: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: std::time::Duration) {
        self.release();
        if self.try_wait().is_some() {
            return;
        }
        let group = -(self.pid as i32);
        // SAFETY: plain syscalls on our own child's process group.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        while self.try_wait().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.stop(std::time::Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernel_saying_so_makes_a_process_dead() {
        assert_eq!(process_state(b"42 (a) b) c) S 1 2"), Some(b'S'));
        assert_eq!(process_state(b"42 (x"), None);
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(3_999_999), "no such pid");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while is_alive(child.id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!is_alive(child.id()), "a zombie is not alive");
        child.wait().expect("reap");

        // Out of fds: this test again, in a process of its own whose fd table it fills.
        const CHILD: &str = "NVBIND_TEST_IS_ALIVE_WITHOUT_FDS";
        if std::env::var_os(CHILD).is_some() {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            // SAFETY: setrlimit reads a valid rlimit.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
            let mut hold = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                hold.push(f);
            }
            assert_eq!(
                std::fs::File::open("/dev/null")
                    .map_err(|e| e.raw_os_error())
                    .err(),
                Some(Some(libc::EMFILE))
            );
            assert!(is_alive(1), "EMFILE is not the process's death");
            assert!(!is_alive(3_999_999), "the kernel still says what is gone");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "target::tests::only_the_kernel_saying_so_makes_a_process_dead",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the test in a process of its own");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn resolves_programs_like_execvp() {
        assert!(resolve_program("sh").is_ok());
        assert!(matches!(
            resolve_program("no-such-program-nvbind"),
            Err(TargetError::CommandNotFound(_))
        ));
    }

    #[test]
    fn launched_command_waits_for_release_and_reports_exit() {
        use std::time::{Duration, Instant};

        let mut child =
            Launched::spawn(&["sh".into(), "-c".into(), "exit 3".into()]).expect("spawn");
        // Held before exec: the forked child ends up asleep (state S) on its release pipe, the
        // only place it can block, still this test's image (named like the thread that forked
        // it, not `sh`). Waiting for that state, not for a time, proves the hold on a machine
        // of any speed; a child that did not wait would exec `sh` and exit (state Z).
        let proc_file = |name: &str| {
            std::fs::read_to_string(format!("/proc/{}/{name}", child.pid)).unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stat = proc_file("stat");
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            match state {
                Some('S') => break,
                Some('R' | 'D') => {}
                other => panic!("the child ran before its release (state {other:?}): {stat}"),
            }
            assert!(
                Instant::now() < deadline,
                "the child never blocked on its release: {stat}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let forker = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
        assert_eq!(proc_file("comm"), forker, "not exec'd before its release");
        assert_eq!(child.try_wait(), None, "held before exec");
        child.release();
        // The deadline only bounds a hang.
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().is_none() {
            assert!(Instant::now() < deadline, "sh -c 'exit 3' did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(child.try_wait(), Some(3));
    }

    #[test]
    fn unknown_pid_is_an_error() {
        assert!(matches!(
            check_pid(u32::MAX - 1),
            Err(TargetError::NoSuchPid(_))
        ));
        assert!(check_pid(std::process::id()).is_ok());
    }

    #[test]
    fn cgroup_files_give_the_v2_path_or_the_cpu_hierarchy() {
        let hybrid = "12:devices:/user.slice\n4:cpu,cpuacct:/user.slice/game\n0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(
            parse_cgroup_file(hybrid).as_deref(),
            Some("/user.slice/user-0.slice/session-1.scope")
        );
        let v1 = "12:devices:/a\n4:cpu,cpuacct:/games/steam\n";
        assert_eq!(parse_cgroup_file(v1).as_deref(), Some("/games/steam"));
        assert_eq!(parse_cgroup_file("garbage"), None);
    }
}
