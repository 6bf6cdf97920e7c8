//! The probes: `doctor` (which ones attach here, and why not), and the internal resolvers of the
//! Vulkan drivers' functions and of OpenGL's compile functions.

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

/// `__resolve-gl`, run by the agent itself.
pub(super) fn resolve_gl() -> Result<u8> {
    probes::opengl::serve_here()?;
    Ok(0)
}
