//! Finding each installed Vulkan driver's `vkQueuePresentKHR` before any game runs, for 64-bit
//! and for 32-bit (i386) games.
//!
//! Games call the driver's present function through a pointer from `vkGetDeviceProcAddr`. Hooking
//! that pointer only when a game resolves it loses frames: the kernel takes ~10 ms to register a
//! uprobe, and a game presents right after resolving. So at startup the agent runs short-lived
//! helpers that create a Vulkan device on every GPU, with layers disabled, ask for
//! `vkQueuePresentKHR`, and print the pointer. The agent turns each pointer into a file and offset
//! with the helper's own `/proc/PID/maps` (the helper waits, drivers mapped, until the agent has
//! read it) and hooks them before tracking anything, which also covers Vulkan games that were
//! already running. The helpers keep driver libraries out of the agent.
//!
//! Two helpers, one per ABI, because a process loads drivers of its own word size only: the agent
//! itself (`nvbind-agent __resolve-vulkan-present`) for the 64-bit drivers, and an embedded i386
//! program (`resolve32/resolve32.c`, built by build.rs) for the 32-bit ones, run when the host has
//! a 32-bit runtime. They run side by side.
//!
//! "Installed" means what the Vulkan loader finds in a clean environment: the helpers get none of
//! the caller's `VK_*` variables, so an agent started from a shell that points games at other
//! drivers (`VK_ICD_FILENAMES`, `VK_DRIVER_FILES`, …) still hooks the host's own.

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ash::vk;
use nvbind_common::compile_call;

use super::libraries;

/// The 32-bit resolver, built from `resolve32/` by build.rs (empty when this machine's C compiler
/// could not emit i386 code).
static RESOLVE32: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/resolve32"));

/// The dynamic linker every i386 program names: a host without it runs no 32-bit games.
const I386_INTERPRETER: &str = "/lib/ld-linux.so.2";

/// What a helper resolves: the drivers of one word size (a process loads drivers of its own
/// only), or OpenGL's compile functions (`super::opengl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    X86_64,
    I386,
    OpenGl,
}

impl Abi {
    /// How doctor and the report name what this helper resolves, as a whole.
    pub fn drivers(self) -> &'static str {
        match self {
            Abi::X86_64 => "installed Vulkan drivers",
            Abi::I386 => "installed 32-bit Vulkan drivers",
            Abi::OpenGl => "installed OpenGL libraries",
        }
    }
}

/// The functions the helpers look up in each driver: the present function, and the shader and
/// pipeline compile calls nvbind times (`nvbind_common::compile_call`) that are Vulkan's.
fn driver_functions() -> impl Iterator<Item = &'static str> {
    std::iter::once(PRESENT_FUNCTION).chain(
        compile_call::NAMES
            .iter()
            .filter(|(call, _)| !compile_call::is_gl(*call))
            .map(|(_, name)| *name),
    )
}

/// The present function's name.
pub const PRESENT_FUNCTION: &str = "vkQueuePresentKHR";

/// A driver's function: the mapped file and the offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFunction {
    /// Its Vulkan name (the present function or a `compile_call`).
    pub function: String,
    pub path: PathBuf,
    /// The file's identity as the helper's memory map gives it (uprobes live on inodes).
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// The device it was resolved for.
    pub device: String,
}

/// One helper's answer.
pub struct Resolution {
    pub abi: Abi,
    pub found: Result<Vec<DriverFunction>>,
}

/// The helper's side (`__resolve-vulkan-present`, 64-bit): resolve in this process, print one
/// `0xADDRESS<TAB>DEVICE` line per device and `end`, then wait for stdin to close (the agent reads
/// this process's maps meanwhile).
pub fn serve_here() -> Result<()> {
    // SAFETY: loads the system's Vulkan loader; failures are returned, not unwound.
    let entry = unsafe { ash::Entry::load() }.context("no Vulkan loader (libvulkan.so.1)")?;
    let app = vk::ApplicationInfo::default()
        .application_name(c"nvbind-resolve")
        .api_version(vk::API_VERSION_1_0);
    let create = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: valid create info; the instance is destroyed below.
    let instance = unsafe { entry.create_instance(&create, None) }.context("vkCreateInstance")?;
    let mut lines = String::new();
    let mut devices = Vec::new();
    // SAFETY: valid instance.
    let physical_devices = unsafe { instance.enumerate_physical_devices() }.unwrap_or_default();
    for physical in physical_devices {
        // SAFETY: valid handles; each device is destroyed before the instance.
        unsafe {
            let props = instance.get_physical_device_properties(physical);
            let name = props
                .device_name_as_c_str()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let has_swapchain = instance
                .enumerate_device_extension_properties(physical)
                .unwrap_or_default()
                .iter()
                .any(|e| e.extension_name_as_c_str() == Ok(ash::khr::swapchain::NAME));
            if !has_swapchain {
                continue;
            }
            let priorities = [1.0f32];
            let queue = vk::DeviceQueueCreateInfo::default()
                .queue_family_index(0)
                .queue_priorities(&priorities);
            let extensions = [ash::khr::swapchain::NAME.as_ptr()];
            let info = vk::DeviceCreateInfo::default()
                .queue_create_infos(std::slice::from_ref(&queue))
                .enabled_extension_names(&extensions);
            let Ok(device) = instance.create_device(physical, &info, None) else {
                continue;
            };
            for function in driver_functions() {
                let Ok(c_name) = std::ffi::CString::new(function) else {
                    continue;
                };
                let address =
                    (instance.fp_v1_0().get_device_proc_addr)(device.handle(), c_name.as_ptr());
                if let Some(address) = address {
                    lines.push_str(&format_line(address as usize as u64, &name, function));
                }
            }
            devices.push(device);
        }
    }
    lines.push_str("end\n");
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(lines.as_bytes())?;
    stdout.flush()?;
    // Until the agent is done with our maps; what comes in is of no interest.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    // SAFETY: every child object is destroyed before its parent.
    unsafe {
        for device in devices {
            device.destroy_device(None);
        }
        instance.destroy_instance(None);
    }
    Ok(())
}

/// One line of a helper's answer.
pub fn format_line(address: u64, device: &str, function: &str) -> String {
    format!("{address:#x}\t{device}\t{function}\n")
}

/// Parses one line of a helper's answer (not `end`): (address, device, function). A line of two
/// fields names the present function (what the helpers printed before they looked up more).
pub fn parse_line(line: &str) -> Option<(u64, String, String)> {
    let mut fields = line.splitn(3, '\t');
    let address = fields.next()?;
    let device = fields.next().unwrap_or("");
    let function = fields.next().unwrap_or(PRESENT_FUNCTION);
    let address = u64::from_str_radix(address.trim().strip_prefix("0x")?, 16).ok()?;
    Some((address, device.to_string(), function.to_string()))
}

/// The agent's side: runs the helpers (side by side, with one deadline) and returns what each
/// found. The 32-bit one only where the host has a 32-bit runtime: without one no 32-bit game
/// can run, and there is nothing to say.
pub fn resolve_installed(timeout: Duration) -> Vec<Resolution> {
    let deadline = Instant::now() + timeout;
    let mut abis = vec![Abi::X86_64, Abi::OpenGl];
    if Path::new(I386_INTERPRETER).exists() {
        abis.push(Abi::I386);
    }
    let started: Vec<(Abi, Result<Helper>)> =
        abis.into_iter().map(|a| (a, Helper::start(a))).collect();
    started
        .into_iter()
        .map(|(abi, helper)| Resolution {
            abi,
            found: helper.and_then(|h| h.finish(deadline)),
        })
        .collect()
}

/// A running helper: its answer's lines arrive on `lines`, its stderr is gathered by `stderr`.
struct Helper {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: JoinHandle<String>,
}

impl Helper {
    fn start(abi: Abi) -> Result<Helper> {
        // The memfd holding the 32-bit program must stay open until it has been executed.
        let (mut cmd, _program) = match abi {
            Abi::X86_64 => {
                let exe = std::env::current_exe().context("cannot find the agent's own binary")?;
                let mut cmd = Command::new(exe);
                cmd.arg("__resolve-vulkan-present");
                (cmd, None)
            }
            Abi::I386 => {
                let (cmd, fd) = resolve32_command()?;
                (cmd, Some(fd))
            }
            Abi::OpenGl => {
                let exe = std::env::current_exe().context("cannot find the agent's own binary")?;
                let mut cmd = Command::new(exe);
                cmd.arg("__resolve-gl");
                (cmd, None)
            }
        };
        without_callers_library_env(&mut cmd, std::env::vars_os().map(|(key, _)| key));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the resolver")?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            bail!("the resolver's output was not piped");
        };
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Helper {
            child,
            lines,
            stderr,
        })
    }

    /// Reads the answer, locates each pointer in the helper's memory map, and lets it exit.
    fn finish(mut self, deadline: Instant) -> Result<Vec<DriverFunction>> {
        let mut pointers = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "end" => break,
                Ok(line) => pointers.extend(parse_line(&line)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    bail!("no answer in time");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Output closed without `end`: it failed, and says why on stderr.
                    let status = self.child.wait()?;
                    let err = self.stderr.join().unwrap_or_default();
                    match err.lines().rfind(|l| !l.trim().is_empty()) {
                        Some(line) => bail!("{}", line.trim()),
                        None => bail!("the resolver exited without an answer ({status})"),
                    }
                }
            }
        }
        let pid = self.child.id();
        let mut found: Vec<DriverFunction> = Vec::new();
        for (address, device, function) in pointers {
            let Some((mapping, offset)) = libraries::locate(pid, address) else {
                continue;
            };
            let new = DriverFunction {
                function,
                path: PathBuf::from(mapping.path),
                dev: mapping.dev,
                ino: mapping.ino,
                offset,
                device,
            };
            if !found
                .iter()
                .any(|f| (f.dev, f.ino, f.offset) == (new.dev, new.ino, new.offset))
            {
                found.push(new);
            }
        }
        // Closing stdin lets it exit.
        drop(self.child.stdin.take());
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(found)
    }
}

/// The helpers answer for the host, not for the caller: none of the caller's Vulkan loader
/// variables (driver and layer lists and filters) reach them, and layers are off (the driver's own
/// function is wanted; layers call down to it anyway). Nor do the dynamic linker's: a library
/// path or preload of the caller's would answer for its copies, not the host's.
fn without_callers_library_env(cmd: &mut Command, caller: impl Iterator<Item = OsString>) {
    for key in caller {
        let bytes = key.as_encoded_bytes();
        if bytes.starts_with(b"VK_") || bytes == b"LD_LIBRARY_PATH" || bytes == b"LD_PRELOAD" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("VK_LOADER_LAYERS_DISABLE", "~all~")
        .env("DISABLE_MANGOHUD", "1");
}

/// A command running the embedded 32-bit resolver from an anonymous in-memory file (nothing is
/// written to disk, and a `noexec` /tmp does not matter), and that file, to keep open until the
/// command has started.
fn resolve32_command() -> Result<(Command, OwnedFd)> {
    if RESOLVE32.is_empty() {
        bail!(
            "this nvbind-agent was built without its 32-bit Vulkan resolver (the build machine's \
             C compiler could not build i386 code)"
        );
    }
    let name = c"nvbind-resolve32";
    // MFD_EXEC: executable even where vm.memfd_noexec makes memfds non-executable by default;
    // kernels before 6.3 do not know the flag (EINVAL) and allow exec anyway.
    // SAFETY: a valid NUL-terminated name; the returned descriptor is owned below.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_EXEC) };
    if raw < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    }
    if raw < 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot create the 32-bit resolver's in-memory file");
    }
    // SAFETY: a descriptor just returned by memfd_create, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    std::fs::File::from(fd.try_clone()?)
        .write_all(RESOLVE32)
        .context("cannot write the 32-bit resolver")?;
    // Close-on-exec is no obstacle: the kernel opens the program before it closes descriptors.
    let mut cmd = Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    cmd.arg0(OsStr::new("nvbind-resolve32"));
    Ok((cmd, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_lines_round_trip() {
        let device = "llvmpipe (LLVM 15.0.6, 256 bits)";
        let line = format_line(0xf665e680, device, "vkCreateGraphicsPipelines");
        assert_eq!(
            parse_line(line.trim_end_matches('\n')),
            Some((
                0xf665e680,
                device.to_string(),
                "vkCreateGraphicsPipelines".to_string()
            ))
        );
        // A line without the function is the present function's.
        assert_eq!(
            parse_line(&format!("0x10\t{device}")),
            Some((0x10, device.to_string(), PRESENT_FUNCTION.to_string()))
        );
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("end"), None);
    }

    #[test]
    fn the_resolvers_get_none_of_the_callers_vulkan_or_linker_variables() {
        let mut cmd = Command::new("true");
        let caller = [
            "VK_ICD_FILENAMES",
            "VK_DRIVER_FILES",
            "HOME",
            "XDG_DATA_DIRS",
            "LD_LIBRARY_PATH",
            "LD_PRELOAD",
        ];
        without_callers_library_env(&mut cmd, caller.iter().map(OsString::from));
        let envs: Vec<_> = cmd.get_envs().collect();
        for removed in [
            "VK_ICD_FILENAMES",
            "VK_DRIVER_FILES",
            "LD_LIBRARY_PATH",
            "LD_PRELOAD",
        ] {
            assert!(envs.contains(&(OsStr::new(removed), None)), "{envs:?}");
        }
        for kept in ["HOME", "XDG_DATA_DIRS"] {
            assert!(!envs.iter().any(|(k, _)| *k == kept), "{envs:?}");
        }
        assert!(envs.contains(&(
            OsStr::new("VK_LOADER_LAYERS_DISABLE"),
            Some(OsStr::new("~all~"))
        )));
    }

    #[test]
    fn the_32_bit_resolver_is_an_i386_program() {
        assert!(
            !RESOLVE32.is_empty(),
            "NOT RUN: this build has no 32-bit resolver (its C compiler could not build i386 \
             code; see the build's warning)"
        );
        // The ELF header: magic, class (1: 32-bit), machine (3: i386).
        assert_eq!(&RESOLVE32[..4], b"\x7fELF");
        assert_eq!(RESOLVE32[4], 1, "ELFCLASS32");
        assert_eq!(
            u16::from_le_bytes([RESOLVE32[18], RESOLVE32[19]]),
            3,
            "EM_386"
        );
        // It runs under the interpreter every i386 program names.
        let interpreter = I386_INTERPRETER.as_bytes();
        assert!(RESOLVE32
            .windows(interpreter.len())
            .any(|w| w == interpreter));
    }
}
