//! The present probes: uprobes on the graphics libraries' frame calls (`vkQueuePresentKHR`,
//! `glXSwapBuffers`, `eglSwapBuffers`), on the installed Vulkan drivers' present functions, and
//! on those a process learns at run time.

use std::{
    collections::HashSet,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    UProbe,
};
use nvbind_common::{compile_call, present_source};

use super::{
    error_chain,
    libraries::{self, LibraryFile},
    vulkan, ProbeStatus, Probes,
};

/// Where in a file a uprobe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ProbeAt {
    /// An exported function.
    Symbol(&'static str),
    /// A file offset (a function learned at run time).
    Offset(u64),
}

/// One uprobe: a program at a place in a file (identified by device and inode, as the kernel does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct UprobePoint {
    dev: u64,
    ino: u64,
    at: ProbeAt,
    program: &'static str,
}

/// A graphics library copy hooked because processes of one user map it (not a host library:
/// those stay hooked for the agent's life).
#[derive(Debug)]
pub(super) struct HookedCopy {
    /// Whose budget it spends.
    uid: u32,
    /// Its name in the probes' statuses.
    display: String,
    /// Processes seen mapping it.
    mappers: HashSet<u32>,
}

/// The real uid of `pid`, from its status file (not the owner of /proc/PID, which the kernel
/// shows as root for a process that made itself undumpable).
fn real_uid(pid: u32) -> Option<u32> {
    let status = crate::identity::read_bounded(&format!("/proc/{pid}/status"), 16 << 10)?;
    String::from_utf8_lossy(&status)
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Library copies hooked on behalf of one non-root user's processes (a game in a container or
/// runtime maps a few; a hundred is an attack).
pub const COPIES_PER_USER: usize = 16;
/// The most uprobes the agent places (one fd each): half of systemd's default fd limit.
pub const MAX_UPROBES: usize = 512;

impl Probes {
    /// Attaches every hook of a library file once (by inode). Returns how many hooks attached.
    pub fn attach_library(&mut self, lib: &LibraryFile) -> usize {
        if self.hooked_files.contains(&(lib.dev, lib.ino)) {
            return 0;
        }
        // A process's copy is reached through /proc/PID/map_files/START-END, named by its
        // mapping's address range: the dynamic loader still laying the library out (or the
        // process exiting) can make that name vanish between the read of the maps and the
        // attach, and every hook of the file would then fail for good. The file is opened once
        // and every hook attached through the open file; a file gone before it could be opened
        // is left for the next scan to find again.
        let file = match std::fs::File::open(&lib.path) {
            Ok(file) => file,
            Err(e) => {
                log::debug!("{}: not hooked now, it went away: {e}", lib.display);
                return 0;
            }
        };
        let target = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        self.hooked_files.insert((lib.dev, lib.ino));
        let mut attached = 0;
        // Return probes that did not attach, by symbol: a frame held at the entry of such a
        // call would never be sent, so its entry probe is not placed either.
        let mut returns_missing = Vec::new();
        for hook in lib.kind.hooks {
            let point = UprobePoint {
                dev: lib.dev,
                ino: lib.ino,
                at: ProbeAt::Symbol(hook.symbol),
                program: hook.program,
            };
            let result = if returns_missing.contains(&hook.symbol) {
                Err(format!(
                    "its return probe did not attach ({} is measured when it returns)",
                    hook.symbol
                ))
            } else {
                self.attach_uprobe(point, &target, hook.cookie)
            };
            if hook.program.ends_with("_ret") && result.is_err() {
                returns_missing.push(hook.symbol);
            }
            // Only the frame and compile hooks are worth a line each in doctor.
            if hook.program != lib.kind.main_program && result.is_ok() {
                attached += 1;
                continue;
            }
            let ok = result.is_ok();
            attached += ok as usize;
            self.statuses.push(ProbeStatus {
                name: format!("uprobe:{}:{}", lib.display, hook.symbol),
                family: lib.kind.family.into(),
                program: hook.program.into(),
                hook: "uprobe".into(),
                fallback: None,
                attached: ok,
                reason: result.err(),
                fix: None,
            });
        }
        attached
    }
    /// Hooks every installed Vulkan driver's `vkQueuePresentKHR` and compile calls, 64-bit and
    /// 32-bit (see [`vulkan`]), and OpenGL's compile stubs (see `super::opengl`).
    pub(super) fn hook_installed_vulkan_drivers(&mut self) {
        for resolution in vulkan::resolve_installed(std::time::Duration::from_secs(15)) {
            let found = match resolution.found {
                Ok(found) => found,
                Err(e) => {
                    self.statuses
                        .push(Self::resolver_failed(resolution.abi, &e));
                    continue;
                }
            };
            for f in found {
                if f.function != vulkan::PRESENT_FUNCTION {
                    let result = self.attach_compile_hooks(&f);
                    self.statuses
                        .push(Self::compile_status(&f, &f.path, result));
                    continue;
                }
                let result = self.attach_vulkan_present(&f.path, f.dev, f.ino, f.offset);
                self.statuses.push(ProbeStatus {
                    name: format!(
                        "uprobe:{}+{:#x}:vkQueuePresentKHR ({})",
                        f.path.display(),
                        f.offset,
                        f.device
                    ),
                    family: "present".into(),
                    program: "nvbind_present".into(),
                    hook: "uprobe".into(),
                    fallback: None,
                    attached: result.is_ok(),
                    reason: result.err(),
                    fix: None,
                });
            }
        }
    }
    /// The status line of a resolver that gave no answer, with what to install.
    fn resolver_failed(abi: vulkan::Abi, e: &anyhow::Error) -> ProbeStatus {
        let drivers = abi.drivers();
        let vulkan_fix = |what: &str| {
            format!(
                "install {what}; games are still hooked when they resolve vkQueuePresentKHR, \
                 minus their first frames"
            )
        };
        let (name, family, program, reason, fix) = match abi {
            vulkan::Abi::X86_64 | vulkan::Abi::I386 => (
                format!("uprobe:vkQueuePresentKHR ({drivers})"),
                "present",
                "nvbind_present",
                format!("cannot resolve the drivers' present functions: {e:#}"),
                vulkan_fix(if abi == vulkan::Abi::X86_64 {
                    "the Vulkan loader and a driver"
                } else {
                    "the 32-bit Vulkan loader and a 32-bit driver (Debian: libvulkan1:i386 and \
                     mesa-vulkan-drivers:i386), or ignore this if no 32-bit Vulkan game runs here"
                }),
            ),
            vulkan::Abi::OpenGl => (
                format!("uprobe:glCompileShader ({drivers})"),
                "compile",
                "nvbind_compile",
                format!("cannot resolve OpenGL's compile functions: {e:#}"),
                "install libglvnd (Debian: libglx0 and libegl1), or ignore this if no OpenGL \
                 game runs here; programs that ask glXGetProcAddress or eglGetProcAddress are \
                 still timed from then on"
                    .to_string(),
            ),
        };
        ProbeStatus {
            name,
            family: family.into(),
            program: program.into(),
            hook: "uprobe".into(),
            fallback: None,
            attached: false,
            reason: Some(reason),
            fix: Some(fix),
        }
    }
    /// Hooks a driver's shader or pipeline compile function (see `nvbind_compile`): return probe
    /// first, so an entry is never counted without its return.
    fn attach_compile_hooks(&mut self, f: &vulkan::DriverFunction) -> Result<(), String> {
        let Some(call) = compile_call::from_name(&f.function) else {
            return Err(format!("{} is not a compile call nvbind times", f.function));
        };
        let at = |program| UprobePoint {
            dev: f.dev,
            ino: f.ino,
            at: ProbeAt::Offset(f.offset),
            program,
        };
        self.attach_uprobe(at("nvbind_compile_ret"), &f.path, 0)?;
        self.attach_uprobe(at("nvbind_compile"), &f.path, u64::from(call))
    }
    /// The status line of a compile function's hooks; `shown` names the file (the path the driver
    /// has, where the kernel reaches it through another).
    fn compile_status(
        f: &vulkan::DriverFunction,
        shown: &Path,
        result: Result<(), String>,
    ) -> ProbeStatus {
        ProbeStatus {
            name: format!(
                "uprobe:{}+{:#x}:{} ({})",
                shown.display(),
                f.offset,
                f.function,
                f.device
            ),
            family: "compile".into(),
            program: "nvbind_compile".into(),
            hook: "uprobe".into(),
            fallback: None,
            attached: result.is_ok(),
            reason: result.err(),
            fix: None,
        }
    }
    /// Hooks a `vkQueuePresentKHR` implementation at a file offset: return probe first, so an
    /// entry is never counted without its return (see `in_vulkan_present` in the kernel).
    fn attach_vulkan_present(
        &mut self,
        file: &Path,
        dev: u64,
        ino: u64,
        offset: u64,
    ) -> Result<(), String> {
        let at = |program| UprobePoint {
            dev,
            ino,
            at: ProbeAt::Offset(offset),
            program,
        };
        self.attach_uprobe(at("nvbind_present_vk_ret"), file, 0)?;
        self.attach_uprobe(
            at("nvbind_present"),
            file,
            present_source::VULKAN_RESOLVED as u64,
        )
    }
    /// The file and offset of a function `pid` learned at `address`, or None when `program` is
    /// already placed there (for this process or another).
    fn learned_place(
        &self,
        pid: u32,
        address: u64,
        program: &'static str,
    ) -> Result<Option<(libraries::Mapping, u64)>, String> {
        let (mapping, offset) = libraries::locate(pid, address)
            .ok_or_else(|| format!("address {address:#x} is not in a file mapping of pid {pid}"))?;
        let key = UprobePoint {
            dev: mapping.dev,
            ino: mapping.ino,
            at: ProbeAt::Offset(offset),
            program,
        };
        Ok((!self.uprobe_points.contains_key(&key)).then_some((mapping, offset)))
    }
    /// Probes a `vkQueuePresentKHR` implementation that `pid` learned at `address`.
    /// Returns the mapped file's name when a new probe was placed.
    pub fn attach_resolved_present(
        &mut self,
        pid: u32,
        address: u64,
    ) -> Result<Option<String>, String> {
        let Some((mapping, offset)) = self.learned_place(pid, address, "nvbind_present")? else {
            return Ok(None);
        };
        self.attach_vulkan_present(&mapping.open_path(pid), mapping.dev, mapping.ino, offset)?;
        self.statuses.push(ProbeStatus {
            name: format!("uprobe:{}+{offset:#x}:vkQueuePresentKHR", mapping.path),
            family: "present".into(),
            program: "nvbind_present".into(),
            hook: "uprobe".into(),
            fallback: None,
            attached: true,
            reason: None,
            fix: None,
        });
        Ok(Some(format!("{}+{offset:#x}", mapping.path)))
    }
    /// Hooks a compile function (`call`, a `compile_call`) that `pid` learned at `address`
    /// from `vkGet*ProcAddr`: a driver the resolvers did not see at start (a container's own
    /// Mesa, one a game is pointed at). Returns the mapped file's name when new probes were
    /// placed. Within [`MAX_UPROBES`], like every hook of a file a process brought.
    pub fn attach_resolved_compile(
        &mut self,
        pid: u32,
        address: u64,
        call: u32,
    ) -> Result<Option<String>, String> {
        let function = compile_call::name(call);
        if function == "unknown" {
            return Err(format!("no compile call numbered {call}"));
        }
        let Some((mapping, offset)) = self.learned_place(pid, address, "nvbind_compile")? else {
            return Ok(None);
        };
        if self.uprobe_points.len() + 2 > MAX_UPROBES {
            return Err(format!(
                "the agent holds {} uprobes, the most it places is {MAX_UPROBES}",
                self.uprobe_points.len()
            ));
        }
        let f = vulkan::DriverFunction {
            function: function.to_string(),
            path: mapping.open_path(pid),
            dev: mapping.dev,
            ino: mapping.ino,
            offset,
            device: format!("learned from pid {pid}"),
        };
        // Only hooks that attached get a status line: a process that makes the attach fail again
        // and again must not grow the list.
        self.attach_compile_hooks(&f)?;
        self.statuses
            .push(Self::compile_status(&f, Path::new(&mapping.path), Ok(())));
        Ok(Some(format!("{}+{offset:#x}", mapping.path)))
    }
    /// Places one uprobe (once: a point already probed is left alone). `target` is a path the
    /// kernel can open to reach the file named by `point`.
    fn attach_uprobe(
        &mut self,
        point: UprobePoint,
        target: &Path,
        cookie: u64,
    ) -> Result<(), String> {
        if self.uprobe_points.contains_key(&point) {
            return Ok(());
        }
        let program = point.program;
        let prog: &mut UProbe = self.program(program)?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| error_chain(&e))?;
        }
        let location = match point.at {
            ProbeAt::Symbol(symbol) => UProbeAttachLocation::Symbol(symbol),
            ProbeAt::Offset(offset) => UProbeAttachLocation::AbsoluteOffset(offset),
        };
        let attach_point = UProbeAttachPoint {
            location,
            cookie: (cookie != 0).then_some(cookie),
        };
        let link = prog
            .attach(attach_point, target, UProbeScope::AllProcesses)
            .map_err(|e| error_chain(&e))?;
        self.uprobe_points.insert(point, link);
        Ok(())
    }
    /// Releases the hooks of library copies no process maps any more (`alive`: every pid now),
    /// and gives them back to their user's budget. Host libraries stay hooked.
    pub fn release_unmapped_copies(&mut self, alive: &HashSet<u32>) {
        let mut gone = Vec::new();
        for (file, copy) in &mut self.copies {
            // Gone from the listing, and from /proc itself (a listing is never exact).
            copy.mappers
                .retain(|&pid| alive.contains(&pid) || crate::target::is_alive(pid));
            if copy.mappers.is_empty() {
                gone.push((*file, copy.uid));
            }
        }
        for ((dev, ino), uid) in gone {
            if let Some(copy) = self.copies.remove(&(dev, ino)) {
                // Its lines in the probes' statuses go with it (a user who maps copy after copy
                // must not grow them).
                let prefix = format!("uprobe:{}:", copy.display);
                self.statuses.retain(|s| !s.name.starts_with(&prefix));
            }
            self.hooked_files.remove(&(dev, ino));
            if let Some(spent) = self.copies_by_uid.get_mut(&uid) {
                *spent = spent.saturating_sub(1);
            }
            let points: Vec<UprobePoint> = self
                .uprobe_points
                .keys()
                .filter(|p| p.dev == dev && p.ino == ino)
                .copied()
                .collect();
            for point in points {
                let Some(link) = self.uprobe_points.remove(&point) else {
                    continue;
                };
                let detached = self
                    .program::<UProbe>(point.program)
                    .and_then(|prog| prog.detach(link).map_err(|e| error_chain(&e)));
                if let Err(e) = detached {
                    log::debug!("cannot detach {} from {dev}:{ino}: {e}", point.program);
                }
            }
            log::info!(
                "released the hooks of a library copy no process maps any more (file \
                 {dev}:{ino}, hooked for uid {uid})"
            );
        }
    }
    /// Attaches hooks in every not-yet-hooked graphics library `pid` has mapped.
    /// Returns the names of the newly hooked files.
    ///
    /// Each hooked file holds a uprobe fd per hook for the daemon's life, so copies are budgeted:
    /// any user can map a thousand copies of libEGL, and must not spend the fds that later games
    /// need. A non-root user's processes get [`COPIES_PER_USER`] hooked copies in all; nobody's
    /// copies take the probes past [`MAX_UPROBES`].
    pub fn attach_process_libraries(&mut self, pid: u32) -> Vec<String> {
        let mut hooked = Vec::new();
        let mut refused = Vec::new();
        // Read once, and only when the process maps something not hooked yet (most scans find
        // nothing new).
        let mut owner_uid = None;
        for lib in libraries::process_libraries(pid) {
            if let Some(copy) = self.copies.get_mut(&(lib.dev, lib.ino)) {
                copy.mappers.insert(pid);
                continue;
            }
            if self.hooked_files.contains(&(lib.dev, lib.ino)) {
                continue;
            }
            let Some(owner) = *owner_uid.get_or_insert_with(|| real_uid(pid)) else {
                return hooked;
            };
            let spent = self.copies_by_uid.get(&owner).copied().unwrap_or(0);
            if (owner != 0 && spent >= COPIES_PER_USER)
                || self.uprobe_points.len() + lib.kind.hooks.len() > MAX_UPROBES
            {
                refused.push(lib.display);
                continue;
            }
            if self.attach_library(&lib) > 0 {
                *self.copies_by_uid.entry(owner).or_default() += 1;
                self.copies.insert(
                    (lib.dev, lib.ino),
                    HookedCopy {
                        uid: owner,
                        display: lib.display.clone(),
                        mappers: HashSet::from([pid]),
                    },
                );
                hooked.push(lib.display);
            }
        }
        // Said at most every 10 s: the refusals repeat with every scan of such a process.
        let now = std::time::Instant::now();
        let quiet = self
            .budget_warned_at
            .is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(10));
        if let (false, false, Some(Some(owner))) = (refused.is_empty(), quiet, owner_uid) {
            self.budget_warned_at = Some(now);
            log::warn!(
                "pid {pid} (uid {owner}): {} copies of graphics libraries not hooked (first: {}): \
                 a user's processes get {COPIES_PER_USER} hooked copies, and the agent places at \
                 most {MAX_UPROBES} uprobes (it holds {}); further refusals are logged at most \
                 every 10 s",
                refused.len(),
                refused[0],
                self.uprobe_points.len()
            );
        }
        hooked
    }
}
