//! nvbind's kernel programs. One module per probe family; the maps and load-time settings they
//! share live in [`state`].
//!
//! Every program starts with a lookup in the tracked-thread map and returns at once for anything
//! else, so the cost on an untracked system is one or two hash lookups per event. Scheduler and
//! ioctl events are aggregated in maps; only frames and rare process events go to the ring buffer.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on map values (a user's discovery charges): the BPF target offers no atomic types.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod compile;
#[cfg(target_arch = "bpf")]
mod culprit;
#[cfg(target_arch = "bpf")]
mod drm;
#[cfg(target_arch = "bpf")]
mod ioctl;
#[cfg(target_arch = "bpf")]
mod present;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod sched;
#[cfg(target_arch = "bpf")]
mod selfcheck;
#[cfg(target_arch = "bpf")]
mod state;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Host builds (clippy, `cargo check --workspace`) see an empty binary: the programs only exist
/// for the bpfel target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
