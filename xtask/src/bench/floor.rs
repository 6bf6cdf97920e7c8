//! The floor: the least a scheduler probe that asks "is this task one of ours" can cost on this
//! kernel. A pair of BTF tracepoint programs (sched_switch and sched_wakeup) that do nothing but
//! one task-local-storage lookup of the task the event is about, written here as eBPF
//! instructions and loaded with the raw `bpf()` calls: aya-ebpf has no task-storage map, and a
//! task-storage map needs BTF for its key and value, which this file builds too (two integers).
//! nvbind's untracked path is measured against it in the same run.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::OnceLock,
};

use anyhow::{bail, Context, Result};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_RAW_TP, bpf_attr, bpf_cmd, bpf_func_id::BPF_FUNC_task_storage_get,
    bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, bpf_prog_info, bpf_prog_type::BPF_PROG_TYPE_TRACING,
};

use super::peers::PeerRun;

/// One eBPF instruction as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `r2 = *(u64 *)(r1 + off)`: the tracepoint's argument at `off` (its task pointer).
const LDX_DW: u8 = 0x79;
/// `r = imm64` (two instructions); with src 1, imm is a map's fd.
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
/// `r = imm`.
const MOV64_IMM: u8 = 0xb7;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// `bpf_task_storage_get(&map, task, NULL, 0); return 0;` for the task at byte `task_arg` of the
/// tracepoint's arguments.
fn lookup_program(map_fd: i32, task_arg: i16) -> [Insn; 8] {
    [
        insn(LDX_DW, 2, 1, task_arg, 0),
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_IMM, 3, 0, 0, 0),
        insn(MOV64_IMM, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_task_storage_get as i32),
        insn(MOV64_IMM, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr that outlives the call, and every
    // pointer in it points at memory that outlives the call too.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union for which all-zero is valid (and what the kernel
    // expects in the fields a command does not use).
    unsafe { std::mem::zeroed() }
}

fn fd(ret: i64) -> OwnedFd {
    // SAFETY: a successful bpf() call that creates an object returns a new fd that we own.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// BTF with type 1 `int` (the task-storage key the kernel requires) and type 2 `u64` (the value).
fn key_value_btf() -> Vec<u8> {
    let strings = b"\0int\0u64\0";
    let int_kind = 1u32 << 24;
    let types: [u32; 8] = [
        // [1] int: name "int", kind INT, 4 bytes; signed, 32 bits.
        1,
        int_kind,
        4,
        (1 << 24) | 32,
        // [2] u64: name "u64", kind INT, 8 bytes; 64 bits.
        5,
        int_kind,
        8,
        64,
    ];
    let type_len = (types.len() * 4) as u32;
    let mut btf = Vec::new();
    btf.extend_from_slice(&0xeb9f_u16.to_ne_bytes()); // magic
    btf.push(1); // version
    btf.push(0); // flags
    for field in [24u32, 0, type_len, type_len, strings.len() as u32] {
        // hdr_len, type_off, type_len, str_off, str_len
        btf.extend_from_slice(&field.to_ne_bytes());
    }
    for word in types {
        btf.extend_from_slice(&word.to_ne_bytes());
    }
    btf.extend_from_slice(strings);
    btf
}

/// The ids in the kernel's BTF of the typedefs behind the `sched_switch` and `sched_wakeup` BTF
/// tracepoints (`btf_trace_<name>`). Found once per bench run: bpftool prints the whole kernel
/// BTF (megabytes of text), and the floor is attached in every round.
fn tracepoint_btf_ids() -> Result<[u32; 2]> {
    static IDS: OnceLock<[u32; 2]> = OnceLock::new();
    if let Some(ids) = IDS.get() {
        return Ok(*ids);
    }
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
        .output()
        .context("run bpftool (cargo xtask setup --bench installs it)")?;
    if !out.status.success() {
        bail!(
            "bpftool could not read the kernel's BTF: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let id_of = |name: &str| -> Result<u32> {
        let wanted = format!("] TYPEDEF 'btf_trace_{name}' ");
        text.lines()
            .find(|l| l.contains(&wanted))
            .and_then(|l| l.strip_prefix('['))
            .and_then(|l| l.split(']').next())
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("the kernel's BTF has no btf_trace_{name}"))
    };
    let ids = [id_of("sched_switch")?, id_of("sched_wakeup")?];
    Ok(*IDS.get_or_init(|| ids))
}

/// The floor's programs, loaded and attached; detached when dropped.
pub struct Floor {
    /// (name, program, link).
    programs: Vec<(&'static str, OwnedFd, OwnedFd)>,
    _map: OwnedFd,
    _btf: OwnedFd,
}

/// The programs' names as bpftool shows them (the peers' sched_switch is found by name).
pub const SWITCH: &str = "floor_sched_swi";
const WAKEUP: &str = "floor_sched_wak";

impl Floor {
    pub fn attach() -> Result<Floor> {
        let btf_bytes = key_value_btf();
        let mut log = vec![0u8; 4096];
        let mut attr = zeroed_attr();
        // SAFETY: writing plain fields of the union's BTF_LOAD member.
        unsafe {
            let a = &mut attr.__bindgen_anon_7;
            a.btf = btf_bytes.as_ptr() as u64;
            a.btf_size = btf_bytes.len() as u32;
            a.btf_log_buf = log.as_mut_ptr() as u64;
            a.btf_log_size = log.len() as u32;
            a.btf_log_level = 1;
        }
        let btf = fd(sys_bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr)
            .with_context(|| format!("load the floor's BTF: {}", c_text(&log)))?);

        let mut attr = zeroed_attr();
        // SAFETY: writing plain fields of the union's MAP_CREATE member.
        unsafe {
            let a = &mut attr.__bindgen_anon_1;
            a.map_type = BPF_MAP_TYPE_TASK_STORAGE as u32;
            a.key_size = 4;
            a.value_size = 8;
            a.max_entries = 0;
            a.map_flags = 1; // BPF_F_NO_PREALLOC, which local storage requires
            a.btf_fd = btf.as_raw_fd() as u32;
            a.btf_key_type_id = 1;
            a.btf_value_type_id = 2;
        }
        let map = fd(sys_bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)
            .context("create the floor's task-storage map (BPF_MAP_TYPE_TASK_STORAGE)")?);

        let ids = tracepoint_btf_ids()?;
        // sched_switch(bool preempt, prev, next, prev_state): the next task, at byte 16;
        // sched_wakeup(p): byte 0.
        let mut programs = Vec::new();
        for ((name, task_arg), btf_id) in [(SWITCH, 16), (WAKEUP, 0)].into_iter().zip(ids) {
            let prog = load(name, &lookup_program(map.as_raw_fd(), task_arg), btf_id)?;
            let mut attr = zeroed_attr();
            attr.raw_tracepoint.name = 0; // a BTF tracepoint: the target is the program's
            attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
            let link = fd(sys_bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
                .with_context(|| format!("attach the floor's {name}"))?);
            programs.push((name, prog, link));
        }
        Ok(Floor {
            programs,
            _map: map,
            _btf: btf,
        })
    }

    /// Each program's (name, runs, ns) as the kernel counts them (bpf_stats on).
    pub fn counters(&self) -> Result<Vec<(&'static str, u64, u64)>> {
        self.programs
            .iter()
            .map(|(name, prog, _)| {
                // SAFETY: a plain C struct for which all-zero is valid.
                let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
                let mut attr = zeroed_attr();
                attr.info.bpf_fd = prog.as_raw_fd() as u32;
                attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
                attr.info.info = &mut info as *mut bpf_prog_info as u64;
                sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)
                    .with_context(|| format!("read the floor's {name} counters"))?;
                Ok((*name, info.run_cnt, info.run_time_ns))
            })
            .collect()
    }
}

fn load(name: &str, insns: &[Insn], attach_btf_id: u32) -> Result<OwnedFd> {
    let license = CString::new("GPL").context("license")?;
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = zeroed_attr();
    // SAFETY: writing plain fields of the union's PROG_LOAD member.
    unsafe {
        let a = &mut attr.__bindgen_anon_3;
        a.prog_type = BPF_PROG_TYPE_TRACING as u32;
        a.expected_attach_type = BPF_TRACE_RAW_TP as u32;
        a.attach_btf_id = attach_btf_id;
        a.insns = insns.as_ptr() as u64;
        a.insn_cnt = insns.len() as u32;
        a.license = license.as_ptr() as u64;
        a.log_buf = log.as_mut_ptr() as u64;
        a.log_size = log.len() as u32;
        a.log_level = 1;
        for (dst, src) in a.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
    }
    let ret = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
        .with_context(|| format!("load the floor's {name}: {}", c_text(&log)))?;
    Ok(fd(ret))
}

/// A NUL-terminated buffer the kernel wrote (a verifier log), as text.
fn c_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

/// Runs the storm with the floor attached; with `timed`, bpf_stats is on and the programs' cost
/// is read (as for the peers).
pub fn run(timed: bool, storm: impl FnOnce() -> Result<f64>) -> Result<PeerRun> {
    let _stats = if timed {
        Some(super::peers::Stats::on()?)
    } else {
        None
    };
    let floor = Floor::attach()?;
    let before = floor.counters()?;
    let ops = storm()?;
    let after = floor.counters()?;
    drop(floor);
    let delta = |i: usize| {
        (
            after[i].1.saturating_sub(before[i].1),
            after[i].2.saturating_sub(before[i].2),
        )
    };
    let total_time: u64 = (0..after.len()).map(|i| delta(i).1).sum();
    super::peers::peer_run(ops, timed, delta(0), total_time, "the floor")
}
