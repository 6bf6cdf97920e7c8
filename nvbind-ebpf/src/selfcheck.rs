//! A check of the `task_struct` offsets by value (`doctor` loads it; the agent never does).
//! Rust eBPF has no CO-RE: the BTF programs read fields at offsets the agent took from the
//! running kernel's BTF. Here each is read for the task a switch switches out, which is the
//! current task, and compared with what the kernel's helpers say of the current task; the next
//! task's pid is compared with the task the CPU's following switch switches out. A wrong offset
//! reads another field, and (nearly) never equals.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_smp_processor_id},
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use nvbind_common::{OffsetCheck, TASK_COMM_LEN};

use crate::state::{
    argument_field, current_ids, kernel_field, TASK_COMM_OFF, TASK_CPU_OFF, TASK_PID_OFF,
    TASK_TGID_OFF,
};

/// One per CPU (index 0): the agent adds them up.
#[map]
pub static OFFSET_CHECKS: PerCpuArray<OffsetCheck> = PerCpuArray::with_max_entries(1, 0);

/// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
#[btf_tracepoint(function = "sched_switch")]
pub fn nvbind_offsets_check(ctx: BtfTracePointContext) -> u32 {
    let Some(check) = OFFSET_CHECKS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; a switch never interrupts another on the same CPU.
    let check = unsafe { &mut *check };
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let (tgid, tid) = current_ids();
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    check.switches += 1;
    let pid: i32 = argument_field(prev, &TASK_PID_OFF);
    check.pid_equal += u64::from(pid as u32 == tid);
    let on_cpu: u32 = argument_field(prev, &TASK_CPU_OFF);
    check.cpu_equal += u64::from(on_cpu == cpu);
    // Compared as two words: an array comparison would be a call to memcmp.
    let comm: Option<[u64; 2]> = kernel_field(prev, &TASK_COMM_OFF);
    let current: Option<[u64; 2]> = bpf_get_current_comm()
        .ok()
        // SAFETY: 16 bytes reinterpreted as two words; any bit pattern is a valid u64.
        .map(|c: [u8; TASK_COMM_LEN]| unsafe { core::mem::transmute(c) });
    check.comm_equal += u64::from(comm.is_some() && comm == current);
    // 0: the kernel's BTF had no lineage layout (offset 0 is never `tgid`).
    if TASK_TGID_OFF.load() != 0 {
        check.tgid_compared += 1;
        let read: Option<i32> = kernel_field(prev, &TASK_TGID_OFF);
        check.tgid_equal += u64::from(read == Some(tgid as i32));
    }
    if check.last_next != 0 {
        check.next_compared += 1;
        check.next_equal += u64::from(check.last_next as u32 == tid);
    }
    let next_pid: i32 = argument_field(next, &TASK_PID_OFF);
    check.last_next = 1 << 32 | u64::from(next_pid as u32);
    0
}
