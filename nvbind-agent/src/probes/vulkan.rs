//! Finding each installed Vulkan driver's `vkQueuePresentKHR` before any game runs.
//!
//! Games call the driver's present function through a pointer from `vkGetDeviceProcAddr`. Hooking
//! that pointer only when a game resolves it loses frames: the kernel takes ~10 ms to register a
//! uprobe, and a game presents right after resolving. So at startup the agent runs itself as a
//! short-lived helper (`nvbind-agent __resolve-vulkan-present`) that creates a Vulkan device on
//! every GPU, with layers disabled, asks for `vkQueuePresentKHR`, and prints where it lives. The
//! agent hooks those addresses (by file and offset) before tracking anything, which also covers
//! Vulkan games that were already running. The helper keeps driver libraries out of the agent.

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ash::vk;

use super::libraries;

/// A driver's present function: the mapped file and the offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentFunction {
    pub path: PathBuf,
    pub offset: u64,
    /// The device it was resolved for.
    pub device: String,
}

/// The helper's side: resolve in this process and print `offset<TAB>path<TAB>device` lines.
pub fn resolve_here() -> Result<Vec<PresentFunction>> {
    // SAFETY: loads the system's Vulkan loader; failures are returned, not unwound.
    let entry = unsafe { ash::Entry::load() }.context("no Vulkan loader (libvulkan.so.1)")?;
    let app = vk::ApplicationInfo::default()
        .application_name(c"nvbind-resolve")
        .api_version(vk::API_VERSION_1_0);
    let create = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: valid create info; the instance is destroyed below.
    let instance = unsafe { entry.create_instance(&create, None) }.context("vkCreateInstance")?;
    let mut found = Vec::new();
    // SAFETY: valid instance.
    let devices = unsafe { instance.enumerate_physical_devices() }.unwrap_or_default();
    for physical in devices {
        // SAFETY: valid handles; the device is destroyed before the instance.
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
            let function = (instance.fp_v1_0().get_device_proc_addr)(
                device.handle(),
                c"vkQueuePresentKHR".as_ptr(),
            );
            if let Some(function) = function {
                if let Some((mapping, offset)) =
                    libraries::locate(std::process::id(), function as usize as u64)
                {
                    found.push(PresentFunction {
                        path: PathBuf::from(mapping.path),
                        offset,
                        device: name,
                    });
                }
            }
            device.destroy_device(None);
        }
    }
    // SAFETY: every child object is destroyed.
    unsafe { instance.destroy_instance(None) };
    found.dedup_by(|a, b| a.path == b.path && a.offset == b.offset);
    Ok(found)
}

/// Formats the helper's output.
pub fn format_lines(found: &[PresentFunction]) -> String {
    found
        .iter()
        .map(|f| format!("{:#x}\t{}\t{}\n", f.offset, f.path.display(), f.device))
        .collect()
}

/// Parses the helper's output.
pub fn parse_lines(text: &str) -> Vec<PresentFunction> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let offset = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
            let path = PathBuf::from(parts.next()?);
            let device = parts.next().unwrap_or("").to_string();
            Some(PresentFunction {
                path,
                offset,
                device,
            })
        })
        .collect()
}

/// The agent's side: runs the helper (with a deadline) and returns what it found.
pub fn resolve_with_helper(timeout: Duration) -> Result<Vec<PresentFunction>> {
    let exe = std::env::current_exe().context("cannot find the agent's own binary")?;
    let mut child = Command::new(exe)
        .arg("__resolve-vulkan-present")
        // The driver's own function, not a layer's: layers call down to it anyway.
        .env("VK_LOADER_LAYERS_DISABLE", "~all~")
        .env("DISABLE_MANGOHUD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the Vulkan resolver")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut s) = child.stdout.take() {
                s.read_to_string(&mut out)?;
            }
            if let Some(mut s) = child.stderr.take() {
                s.read_to_string(&mut err)?;
            }
            if !status.success() {
                bail!("{}", err.lines().last().unwrap_or("failed").trim());
            }
            return Ok(parse_lines(&out));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no answer within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_lines_round_trip() {
        let f = vec![PresentFunction {
            path: "/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so".into(),
            offset: 0x5c4b0,
            device: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
        }];
        assert_eq!(parse_lines(&format_lines(&f)), f);
        assert!(parse_lines("garbage\n").is_empty());
    }
}
