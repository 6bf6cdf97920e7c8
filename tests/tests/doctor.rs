//! `doctor` on this kernel: every probe listed, DRM unavailable with a reason, the rest attached.

use nvbind_tests::{agent, require_root, stderr};

#[test]
fn doctor_lists_every_probe_with_its_state() {
    require_root();
    let out = agent(&["doctor", "--json"]);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", stderr(&out)));
    assert!(out.status.success(), "doctor says not ready: {d}");
    assert_eq!(d["ready"], true);
    let probes = d["probes"].as_array().expect("probes");
    let state = |name: &str| {
        probes
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
    };
    for name in [
        "sched:sched_switch",
        "sched:sched_wakeup",
        "sched:sched_wakeup_new",
        "syscalls:sys_enter_ioctl",
        "syscalls:sys_exit_ioctl",
        "task:task_newtask",
        "sched:sched_process_exec",
        "sched:sched_process_exit",
    ] {
        assert_eq!(state(name)["attached"], true, "{name}: {}", state(name));
    }
    let has_drm = std::path::Path::new("/sys/kernel/tracing/events/drm").exists();
    // Where DRM exists (the test VM, tests/drm_vm.rs) the kprobes attach too; on this machine's
    // kernel every DRM probe says why not, and the rest goes on.
    for name in [
        "drm:drm_vblank_event",
        "drm:drm_vblank_event_queued",
        "drm:drm_vblank_event_delivered",
        "kprobe:drm_mode_page_flip_ioctl",
        "kprobe:drm_mode_atomic_ioctl",
        "kprobe:drm_crtc_queue_sequence_ioctl",
        "kprobe:drm_send_event_timestamp_locked",
    ] {
        let p = state(name);
        assert_eq!(p["attached"], has_drm, "{name}: {p}");
        if !has_drm {
            assert!(p["reason"].as_str().unwrap_or("").contains("no DRM"), "{p}");
        }
    }
    for symbol in ["vkQueuePresentKHR", "glXSwapBuffers", "eglSwapBuffers"] {
        assert!(
            probes.iter().any(|p| p["family"] == "present"
                && p["attached"] == true
                && p["name"].as_str().unwrap_or("").ends_with(symbol)),
            "no attached present probe on {symbol}"
        );
    }

    let table = agent(&["doctor"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("sched:sched_switch") && text.contains("attached"),
        "{text}"
    );
    assert!(text.contains("ready: record can run"), "{text}");
}

/// Which tracepoints the scheduler and process probes use, and why: BTF tracepoints where the
/// kernel has BTF (this machine's and the test VM's kernels do), classic ones when asked, each
/// saying so.
#[test]
fn doctor_says_which_kind_of_tracepoint_each_scheduler_and_process_probe_uses() {
    require_root();
    let has_btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    assert!(
        has_btf,
        "this kernel has no /sys/kernel/btf/vmlinux: the BTF tracepoints cannot be tested here"
    );
    for (hooks, hook, program_suffix, fallback) in [
        ("auto", "tp_btf", "_btf", None),
        ("btf", "tp_btf", "_btf", None),
        ("classic", "tracepoint", "", Some("--kernel-hooks classic")),
    ] {
        let out = agent(&["doctor", "--json", "--kernel-hooks", hooks]);
        let d: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", stderr(&out)));
        assert_eq!(d["ready"], true, "--kernel-hooks {hooks}: {d}");
        for (category, name, program) in [
            ("sched", "sched_switch", "nvbind_sched_switch"),
            ("sched", "sched_wakeup", "nvbind_sched_wakeup"),
            ("sched", "sched_wakeup_new", "nvbind_sched_wakeup_new"),
            ("task", "task_newtask", "nvbind_newtask"),
            ("sched", "sched_process_exec", "nvbind_exec"),
            ("task", "task_rename", "nvbind_rename"),
            ("sched", "sched_process_exit", "nvbind_exit"),
            ("sched", "sched_process_free", "nvbind_process_free"),
        ] {
            let p = d["probes"]
                .as_array()
                .expect("probes")
                .iter()
                .find(|p| p["name"] == format!("{category}:{name}"))
                .cloned()
                .unwrap_or_default();
            assert_eq!(p["attached"], true, "--kernel-hooks {hooks}: {p}");
            assert_eq!(p["hook"], hook, "--kernel-hooks {hooks}: {p}");
            assert_eq!(
                p["program"],
                format!("{program}{program_suffix}"),
                "--kernel-hooks {hooks}: {p}"
            );
            match fallback {
                Some(why) => assert!(
                    p["fallback"].as_str().unwrap_or("").contains(why),
                    "--kernel-hooks {hooks}: {p}"
                ),
                None => assert!(p.get("fallback").is_none(), "{p}"),
            }
        }
    }
    let table = agent(&["doctor", "--kernel-hooks", "classic"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("not on its BTF hook: classic tracepoints were asked for"),
        "{text}"
    );
}

/// The `task_struct` offsets the BTF programs read (taken from the kernel's BTF: Rust eBPF has
/// no CO-RE) are checked by value on live switches: each field read for the task switched out
/// equals the kernel's own answer for the current task, and each switch's next pid is the task
/// the CPU's following switch switches out. A wrong offset reads another field and fails.
#[test]
fn doctor_checks_the_task_struct_offsets_by_value() {
    require_root();
    let out = agent(&["doctor", "--json", "--kernel-hooks", "btf"]);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", stderr(&out)));
    let checked = &d["task_offsets"];
    let switches = checked["switches"].as_u64().unwrap_or(0);
    assert!(switches > 0, "no switch seen by the offsets check: {d}");
    let fields = checked["fields"].as_array().expect("fields");
    for name in [
        "prev->pid",
        "prev->cpu",
        "prev->comm",
        "next->pid",
        "prev->tgid",
    ] {
        let f = fields
            .iter()
            .find(|f| f["field"] == name)
            .unwrap_or_else(|| panic!("{name} not checked: {checked}"));
        let compared = f["compared"].as_u64().unwrap_or(0);
        let equal = f["equal"].as_u64().unwrap_or(0);
        // Equal nearly always (a thread that execs from a non-leader thread changes its pid
        // between two switches); a wrong offset reads another field, next to never equal.
        assert!(
            compared > 0 && equal * 100 >= compared * 99,
            "{name}: {equal} of {compared} equal: {checked}"
        );
    }
    assert_eq!(d["ready"], true, "{d}");
    let text = agent(&["doctor", "--kernel-hooks", "btf"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("task_struct offsets from BTF checked by value on"),
        "{text}"
    );
    // With the classic tracepoints there is nothing to check, and doctor says why.
    let out = agent(&["doctor", "--json", "--kernel-hooks", "classic"]);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", stderr(&out)));
    assert!(d.get("task_offsets").is_none(), "{d}");
    assert!(
        d["task_offsets_not_checked"]
            .as_str()
            .is_some_and(|why| why.contains("not on BTF tracepoints")),
        "{d}"
    );
}
