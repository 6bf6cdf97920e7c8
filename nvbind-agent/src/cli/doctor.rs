//! The probes: `doctor` (which ones attach here, and why not), and the internal resolver of the
//! Vulkan drivers' present function.

use anyhow::Result;

use crate::probes::{self, KernelHooks};

pub(super) fn doctor(json: bool, mount_tracefs: bool, kernel_hooks: KernelHooks) -> Result<u8> {
    let d = crate::doctor::diagnose(mount_tracefs, kernel_hooks);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", crate::doctor::render(&d));
    }
    Ok(if d.ready { 0 } else { 1 })
}

/// `__resolve-vulkan-present`, run by the agent itself.
pub(super) fn resolve_vulkan_present() -> Result<u8> {
    probes::vulkan::serve_here()?;
    Ok(0)
}
