//! `nvbind-device`: the cgroup v2 device policy, a separate object from the probes so that each
//! binding loads its own small copy (its own rules map) and pins it in bpffs.
//!
//! The program runs on every `open()`/`mknod()` of a device node by a task in the cgroup it is
//! attached to (or a descendant) and allows the access only if the rules map has an entry for
//! the exact device, or for its major with `ANY_MINOR`, whose access bits cover the request.
//! Two hash lookups at most, whatever the number of rules or of bound cgroups.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod policy {
    use aya_ebpf::{
        macros::{cgroup_device, map},
        maps::{Array, HashMap},
        programs::DeviceContext,
    };
    use nvbind_common::device_policy::{BindingRecord, DeviceRuleKey, ANY_MINOR, MAX_RULES};

    /// The allowlist: device → allowed access bits.
    #[map]
    static DEVICE_RULES: HashMap<DeviceRuleKey, u32> = HashMap::with_max_entries(MAX_RULES, 0);

    /// What the binding is for (written and read by the agent only; the program never reads it).
    #[map]
    static BINDING_RECORD: Array<BindingRecord> = Array::with_max_entries(1, 0);

    #[cgroup_device]
    pub fn nvbind_devices(ctx: DeviceContext) -> i32 {
        // SAFETY: the kernel passes a valid `bpf_cgroup_dev_ctx` to cgroup_device programs.
        let (access_type, major, minor) = unsafe {
            let dev = &*ctx.device;
            (dev.access_type, dev.major, dev.minor)
        };
        let kind = access_type & 0xffff;
        let access = access_type >> 16;
        let exact = DeviceRuleKey { kind, major, minor };
        let any = DeviceRuleKey {
            kind,
            major,
            minor: ANY_MINOR,
        };
        // As cgroup v1 does, any matching rule that covers the request allows it: an exact
        // rule with less access does not hide a wider any-minor rule.
        // SAFETY: map values are plain integers, read once.
        let exact_bits = unsafe { DEVICE_RULES.get(&exact).copied().unwrap_or(0) };
        if access & !exact_bits == 0 {
            return 1;
        }
        let any_bits = unsafe { DEVICE_RULES.get(&any).copied().unwrap_or(0) };
        i32::from(access & !any_bits == 0)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Host builds see an empty binary: the program only exists for the bpfel target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
