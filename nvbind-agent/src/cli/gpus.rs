//! `gpus`: the GPUs found and their counters now.

use std::time::Duration;

use anyhow::Result;

use super::args::RootArgs;
use crate::gpu;

pub(super) fn list(json: bool, roots: &RootArgs) -> Result<u8> {
    let discovery = gpu::discover(&roots.roots()?, &gpu::Warnings::default());
    let listing = gpu::show::listing(&discovery, Duration::from_millis(100));
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print!(
            "{}",
            crate::identity::terminal_safe(&gpu::show::render(&listing))
        );
    }
    Ok(0)
}
