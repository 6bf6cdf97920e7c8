//! GPU discovery and sampling against fixture hosts laid out like real sysfs (tests/fixtures/hosts,
//! each documented in its README), with real device nodes made by mknod, and the NVML-absent path
//! on this machine. This machine has no GPU: the NVML path with a driver is not tested here.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

use nvbind_tests::{agent, busiest, record_game, require_root, stderr, FixtureHost, GameRun};
use serde_json::{json, Value};

const DGPU_DIR: &str = "sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0/0000:02:00.0/0000:03:00.0";

/// `record_game` with `host` as the machine's GPUs (its roots follow `agent_args`), in a fresh
/// directory inside the host's, so the report outlives the call as long as the host does.
fn record_on(
    host: &FixtureHost,
    agent_args: &[&str],
    game_args: &[&str],
    during: impl FnOnce(),
) -> GameRun {
    let dir = tempfile::tempdir_in(host.dir.path())
        .expect("tempdir")
        .keep();
    let roots = host.root_args();
    let mut args = agent_args.to_vec();
    args.extend(roots.iter().map(String::as_str));
    record_game(&dir, &args, game_args, during)
}

fn gpus_json(host: &FixtureHost, extra: &[&str]) -> (Value, String) {
    let mut args: Vec<String> = vec!["gpus".into(), "--json".into()];
    args.extend(host.root_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent(&refs);
    assert!(out.status.success(), "gpus failed: {}", stderr(&out));
    let listing = serde_json::from_slice(&out.stdout).expect("gpus --json is JSON");
    (listing, stderr(&out))
}

/// `(path relative to the host's dev root, major, minor, shared)` of a GPU's nodes.
fn nodes(host: &FixtureHost, gpu: &Value) -> Vec<(String, u64, u64, bool)> {
    let dev = host.path("dev");
    gpu["device_nodes"]
        .as_array()
        .expect("device_nodes")
        .iter()
        .map(|n| {
            let path = Path::new(n["path"].as_str().expect("path"));
            (
                path.strip_prefix(&dev)
                    .expect("node under the dev root")
                    .display()
                    .to_string(),
                n["major"].as_u64().expect("major"),
                n["minor"].as_u64().expect("minor"),
                n["shared"].as_bool().expect("shared"),
            )
        })
        .collect()
}

fn node(path: &str, major: u64, minor: u64, shared: bool) -> (String, u64, u64, bool) {
    (path.to_string(), major, minor, shared)
}

/// The sample without its timestamp.
fn now(gpu: &Value) -> Value {
    let mut s = gpu["now"].clone();
    s.as_object_mut().expect("now").remove("t_ns");
    s
}

#[test]
fn an_amd_dgpu_is_discovered_and_read_exactly() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let (listing, _) = gpus_json(&host, &[]);
    assert_eq!(listing["nvml"]["state"], "not-needed");
    let gpus = listing["gpus"].as_array().expect("gpus");
    // The HDA audio function, bridges and the CPU's data fabric are not GPUs.
    assert_eq!(gpus.len(), 1, "{listing:#}");
    let g = &gpus[0];
    assert_eq!(g["vendor"], "amd");
    assert_eq!(g["pci_address"], "0000:03:00.0");
    assert_eq!(g["pci_id"], "1002:73bf");
    assert_eq!(g["driver"], "amdgpu");
    assert_eq!(g["driver_version"], "in-tree (kernel 6.12.48-1-lts)");
    // pci.ids names subsystem 1002:0e3a; the chip name is the fallback.
    assert_eq!(g["name"], "AMD/ATI Radeon RX 6900 XT");
    assert_eq!(g["uuid"], "a4c1f2e9b3d87065");
    assert_eq!(g["runtime_suspended"], false);
    // The only GPU is card1 (not card0): nodes are paired through sysfs, not by index.
    assert_eq!(
        nodes(&host, g),
        [
            node("dri/card1", 226, 1, false),
            node("dri/renderD128", 226, 128, false),
            node("kfd", 235, 0, true),
        ]
    );
    assert_eq!(
        now(g),
        json!({
            "utilization_ratio": 0.97,
            "memory_utilization_ratio": 0.41,
            "graphics_clock_hertz": 2.25e9,
            "memory_clock_hertz": 1.0e9,
            "vram_used_bytes": 6442450944u64,
            "vram_total_bytes": 17163091968u64,
            "power_watts": 255.0,
            "power_limit_watts": 255.0,
            "temperature_celsius": 62.0,
            "hotspot_temperature_celsius": 78.0,
            "fan_rpm": 1650.0,
            // From gpu_metrics v1.3: PPT0 and TEMP_HOTSPOT set in indep_throttle_status.
            "throttle_reasons": ["power", "thermal"],
        })
    );
}

#[test]
fn an_amd_apu_takes_what_sysfs_lacks_from_gpu_metrics_v2() {
    require_root();
    let host = FixtureHost::new("amd-apu");
    let (listing, _) = gpus_json(&host, &[]);
    let g = &listing["gpus"][0];
    assert_eq!(g["pci_id"], "1002:163f");
    assert_eq!(g["uuid"], Value::Null, "Van Gogh has no unique_id");
    assert_eq!(
        nodes(&host, g),
        [
            node("dri/card0", 226, 0, false),
            node("dri/renderD128", 226, 128, false),
            node("kfd", 235, 0, true),
        ]
    );
    assert_eq!(
        now(g),
        json!({
            "utilization_ratio": 0.63,
            "graphics_clock_hertz": 1.04e9,
            // No mclk in an APU's hwmon: uclk from gpu_metrics v2.2.
            "memory_clock_hertz": 8.0e8,
            "vram_used_bytes": 455278592u64,
            "vram_total_bytes": 1073741824u64,
            "power_watts": 14.109,
            "power_limit_watts": 15.0,
            "temperature_celsius": 63.0,
            "throttle_reasons": ["power"],
        })
    );
}

#[test]
fn intel_i915_and_xe_report_frequency_throttle_and_power() {
    require_root();
    let i915 = FixtureHost::new("intel-i915");
    let (listing, _) = gpus_json(&i915, &[]);
    let g = &listing["gpus"][0];
    assert_eq!(g["vendor"], "intel");
    assert_eq!(g["driver"], "i915");
    assert_eq!(
        g["name"],
        "Intel Corporation Alder Lake-P GT2 [Iris Xe Graphics]"
    );
    // An iGPU on i915 has no hwmon and no busy counter in sysfs: absent, not zero.
    assert_eq!(
        now(g),
        json!({"graphics_clock_hertz": 1.1e9, "throttle_reasons": ["power"]})
    );

    let xe = FixtureHost::new("intel-xe");
    let dir = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0/0000:03:00.0";
    let energy = xe.path(&format!("{dir}/hwmon/hwmon3/energy1_input"));
    let (listing, _) = gpus_json(&xe, &[]);
    let g = &listing["gpus"][0];
    assert_eq!(g["driver"], "xe");
    assert_eq!(g["pci_id"], "8086:e20b");
    assert_eq!(
        nodes(&xe, g),
        [
            node("dri/card0", 226, 0, false),
            node("dri/renderD128", 226, 128, false)
        ]
    );
    let s = now(g);
    assert_eq!(s["graphics_clock_hertz"], 2.4e9);
    assert_eq!(s["throttle_reasons"], json!(["thermal"]));
    assert_eq!(s["temperature_celsius"], 85.0);
    assert_eq!(s["power_limit_watts"], 190.0);
    // The fixture's energy counter stands still between the two readings: 0 W, honestly.
    assert_eq!(s["power_watts"], 0.0);

    // A sampled capture while the counter climbs 10 J per second gives ~10 W.
    let run = record_on(
        &xe,
        &["--gpu-sample-hz", "20"],
        &["--frames", "120", "--interval-ms", "16.7"],
        || {
            let start: u64 = std::fs::read_to_string(&energy)
                .expect("energy")
                .trim()
                .parse()
                .expect("µJ");
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_millis(1500) {
                let uj = start + (t0.elapsed().as_secs_f64() * 10e6) as u64;
                std::fs::write(&energy, format!("{uj}\n")).expect("write energy");
                std::thread::sleep(Duration::from_millis(10));
            }
        },
    );
    let report = run.report;
    let samples = report["gpus"][0]["samples"].as_array().expect("samples");
    let watts: Vec<f64> = samples
        .iter()
        .filter_map(|s| s["power_watts"].as_f64())
        .filter(|&w| w > 0.0)
        .collect();
    assert!(watts.len() >= 10, "{watts:?}");
    let mut sorted = watts.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!((8.0..12.0).contains(&median), "{watts:?}");
}

#[test]
fn a_mixed_host_pairs_nodes_through_sysfs_and_states_what_is_missing() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let (listing, _) = gpus_json(&host, &[]);
    // Not the live /sys: NVML is not asked by default.
    assert_eq!(listing["nvml"]["state"], "not-consulted");
    let gpus = listing["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 2, "the HDA functions are not GPUs: {listing:#}");
    let (nv, amd) = (&gpus[0], &gpus[1]);
    assert_eq!(nv["pci_address"], "0000:01:00.0");
    assert_eq!(nv["name"], "NVIDIA GeForce RTX 4070");
    assert_eq!(nv["uuid"], "GPU-6c7f1e3a-9b2d-4f8e-a1c3-5d7e9f0b2a48");
    assert_eq!(nv["driver_version"], "580.95.05");
    // NVIDIA is on the lower bus but owns card1/renderD129; the AMD card owns card0.
    assert_eq!(
        nodes(&host, nv),
        [
            node("dri/card1", 226, 1, false),
            node("dri/renderD129", 226, 129, false),
            node("nvidia0", 195, 0, false),
            node("nvidiactl", 195, 255, true),
            node("nvidia-modeset", 195, 254, true),
            node("nvidia-uvm", 509, 0, true),
            node("nvidia-uvm-tools", 509, 1, true),
        ]
    );
    assert_eq!(amd["pci_address"], "0000:0c:00.0");
    assert_eq!(
        nodes(&host, amd),
        [
            node("dri/card0", 226, 0, false),
            node("dri/renderD128", 226, 128, false),
            node("kfd", 235, 0, true),
        ]
    );
    assert_eq!(amd["runtime_suspended"], true);
    assert_eq!(amd["now"]["suspended"], true);
    assert_eq!(now(amd), json!({"suspended": true}));

    // Asked anyway, NVML is absent on this machine: a state with a reason, not an error.
    let (listing, _) = gpus_json(&host, &["--nvml", "always"]);
    assert_eq!(listing["nvml"]["state"], "no-driver");
    let reason = listing["nvml"]["reason"].as_str().expect("reason");
    assert!(reason.starts_with("no NVIDIA driver"), "{reason}");
    assert!(reason.contains("libnvidia-ml.so.1"), "{reason}");
    assert_eq!(listing["gpus"][0]["not_sampled"], reason);
    assert!(listing["gpus"][0].get("now").is_none());
}

#[test]
fn this_host_without_nvidia_driver_lists_what_it_has() {
    require_root();
    let out = agent(&["gpus", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing: Value = serde_json::from_slice(&out.stdout).expect("json");
    let has_nvidia = listing["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .any(|g| g["vendor"] == "nvidia");
    let nvml = &listing["nvml"]["state"];
    if has_nvidia {
        assert!(nvml == "ready" || nvml == "no-driver", "{listing:#}");
    } else {
        assert_eq!(nvml, "not-needed", "{listing:#}");
        eprintln!(
            "NOT RUN HERE: NVML with a real NVIDIA driver (this machine has no NVIDIA GPU); \
             the no-driver path is checked with --nvml always on the mixed fixture host"
        );
    }
    let text = agent(&["gpus"]);
    assert!(text.status.success());
}

/// inotify on the suspended card's directories: which files the agent opened there.
fn opened_files(dirs: &[&Path], run: impl FnOnce()) -> Vec<String> {
    // SAFETY: inotify_init1 has no preconditions; the descriptor is owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut names = std::collections::HashMap::new();
    for dir in dirs {
        let c = std::ffi::CString::new(dir.display().to_string()).expect("path");
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_OPEN) };
        assert!(wd >= 0, "watch {}", dir.display());
        names.insert(wd, dir.display().to_string());
    }
    run();
    let mut opened = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            // SAFETY: the kernel wrote whole inotify_event records into the buffer.
            let ev = unsafe { &*(buf.as_ptr().add(off) as *const libc::inotify_event) };
            let name_bytes =
                &buf[off + std::mem::size_of::<libc::inotify_event>()..][..ev.len as usize];
            let name = String::from_utf8_lossy(name_bytes)
                .trim_end_matches('\0')
                .to_string();
            // Listing a directory (drm/) reads nothing from the GPU.
            if ev.mask & libc::IN_ISDIR == 0 {
                opened.push(format!("{}/{name}", names[&ev.wd]));
            }
            off += std::mem::size_of::<libc::inotify_event>() + ev.len as usize;
        }
    }
    opened
}

#[test]
fn a_suspended_gpu_is_not_woken() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let dev =
        host.path("sys/devices/pci0000:00/0000:00:03.1/0000:0a:00.0/0000:0b:00.0/0000:0c:00.0");
    let hwmon = dev.join("hwmon/hwmon3");
    let opened = opened_files(&[&dev, &hwmon], || {
        let (listing, _) = gpus_json(&host, &[]);
        assert_eq!(listing["gpus"][1]["now"]["suspended"], true);
    });
    // Identity attributes live in PCI config space or driver memory; the counters make the
    // driver talk to the GPU. None of those may be opened.
    let counters: Vec<&String> = opened
        .iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or("");
            !matches!(
                name,
                "vendor"
                    | "device"
                    | "class"
                    | "subsystem_vendor"
                    | "subsystem_device"
                    | "product_name"
                    | "unique_id"
                    | ""
            )
        })
        .collect();
    assert!(
        counters.is_empty(),
        "a suspended GPU's counters were read: {counters:?}"
    );
    assert!(
        opened.iter().any(|f| f.ends_with("/vendor")),
        "the watch saw nothing at all (is inotify working?): {opened:?}"
    );
}

#[test]
fn broken_sysfs_files_are_skipped_with_one_warning_each() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let dev = host.path(DGPU_DIR);
    std::fs::write(dev.join("gpu_busy_percent"), "ninety-seven\n").expect("write");
    std::fs::write(dev.join("hwmon/hwmon2/temp1_input"), "").expect("write");
    let blob = std::fs::read(dev.join("gpu_metrics")).expect("blob");
    std::fs::write(dev.join("gpu_metrics"), &blob[..50]).expect("truncate");
    // A capture reads every file many times; each bad one is reported once.
    let run = record_on(
        &host,
        &["--gpu-sample-hz", "50"],
        &["--frames", "60", "--interval-ms", "16.7"],
        || {},
    );
    let err = &run.stderr;
    for file in ["gpu_busy_percent", "temp1_input", "gpu_metrics"] {
        let warnings = err.lines().filter(|l| l.contains(file)).count();
        assert_eq!(warnings, 1, "one warning for {file}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    let g = &run.report["gpus"][0];
    assert!(g["summary"]["samples"].as_u64() >= Some(20), "{g}");
    let s = &g["samples"][0];
    // gpu_busy_percent is garbage and gpu_metrics truncated: no utilisation at all, not 0.
    assert!(s.get("utilization_ratio").is_none(), "{s}");
    assert!(s.get("throttle_reasons").is_none(), "{s}");
    // The edge temperature is empty; nothing else is lost.
    assert!(s.get("temperature_celsius").is_none(), "{s}");
    assert_eq!(s["hotspot_temperature_celsius"], 78.0);
    assert_eq!(s["memory_utilization_ratio"], 0.41);
    assert_eq!(s["power_watts"], 255.0);
}

#[test]
fn a_sampled_capture_summarises_the_gpu_and_joins_it_with_frames() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let dev = host.path(DGPU_DIR);
    let run = record_on(
        &host,
        &[],
        &[
            "--frames",
            "240",
            "--interval-ms",
            "16.7",
            "--stall-every",
            "60",
            "--stall-ms",
            "80",
        ],
        || {
            // The GPU changes during the capture: busy drops, it heats up, VRAM fills past 95 %.
            std::thread::sleep(Duration::from_millis(1200));
            std::fs::write(dev.join("gpu_busy_percent"), "30\n").expect("write");
            std::fs::write(dev.join("hwmon/hwmon2/temp1_input"), "91000\n").expect("write");
            std::fs::write(dev.join("mem_info_vram_used"), "16800000000\n").expect("write");
            std::thread::sleep(Duration::from_millis(1000));
            std::fs::write(dev.join("mem_info_vram_used"), "6442450944\n").expect("write");
        },
    );
    let report = &run.report;
    assert_eq!(report["gpu_sample_period_s"], 0.1);
    let g = &report["gpus"][0];
    assert_eq!(g["sampled"], true);
    assert_eq!(g["pci_address"], "0000:03:00.0");
    let s = &g["summary"];
    let samples = s["samples"].as_u64().expect("samples");
    let duration = report["capture"]["duration_s"].as_f64().expect("duration");
    // 10 Hz over the capture (the sampler starts before the first frame and stops after).
    assert!(
        (samples as f64) >= duration * 10.0 * 0.8,
        "{samples} samples in {duration} s"
    );
    assert_eq!(s["utilization_p95_ratio"], 0.97);
    let p50 = s["utilization_p50_ratio"].as_f64().expect("p50");
    assert!(p50 == 0.97 || p50 == 0.3, "{s}");
    assert_eq!(s["temperature_max_celsius"], 91.0);
    assert_eq!(s["hotspot_temperature_max_celsius"], 78.0);
    assert_eq!(s["graphics_clock_min_hertz"], 2.25e9);
    assert_eq!(s["graphics_clock_max_hertz"], 2.25e9);
    assert_eq!(s["power_mean_watts"], 255.0);
    assert_eq!(s["power_limit_watts"], 255.0);
    assert_eq!(s["vram_peak_bytes"], 16800000000u64);
    assert_eq!(s["vram_total_bytes"], 17163091968u64);
    assert_eq!(s["throttled_ratio"], 1.0);
    assert!(s["read_cost_us"].as_f64() > Some(0.0));
    // Throttled throughout, for the blob's two reasons; VRAM pressure for about a second.
    let throttle = g["throttle_intervals"].as_array().expect("throttle");
    assert_eq!(throttle.len(), 1, "{throttle:?}");
    assert_eq!(throttle[0]["reasons"], json!(["power", "thermal"]));
    let pressure = g["vram_pressure_intervals"].as_array().expect("vram");
    assert_eq!(pressure.len(), 1, "{pressure:?}");
    let (from, to) = (
        pressure[0]["start_s"].as_f64().expect("start"),
        pressure[0]["end_s"].as_f64().expect("end"),
    );
    assert!((0.7..1.4).contains(&(to - from)), "{pressure:?}");

    // Every stutter carries the GPU's state over that frame.
    let p = busiest(report);
    let events = p["stutters"]["events"].as_array().expect("events");
    assert!(events.len() >= 3, "{}", p["stutters"]);
    for e in events {
        let gpu = &e["evidence"]["gpu"];
        assert_eq!(gpu["sampled"], true, "{e}");
        assert_eq!(gpu["pci_address"], "0000:03:00.0", "{e}");
        assert_eq!(gpu["throttle_reasons"], json!(["power", "thermal"]), "{e}");
        assert!(gpu["samples"].as_u64() >= Some(1), "{e}");
    }
    // ... and so does every frame in the CSV.
    let rows = &run.rows;
    let joined = rows
        .iter()
        .filter(|r| r["gpu_throttle_reasons"] == "power+thermal")
        .count();
    assert!(joined >= rows.len() - 2, "{joined} of {} rows", rows.len());
    assert!(rows.iter().any(|r| r["gpu_utilization_ratio"] == "0.3"));

    // People read the same in the summary.
    let summary = agent(&["report", &run.out.display().to_string()]);
    assert!(summary.status.success(), "{}", stderr(&summary));
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(
        text.contains("GPU 0 AMD/ATI Radeon RX 6900 XT [0000:03:00.0]"),
        "{text}"
    );
    assert!(text.contains(": power, thermal"), "{text}");
    assert!(text.contains("VRAM ≥ 95% full"), "{text}");
}

#[test]
fn sampling_can_be_turned_off_and_bad_roots_are_refused() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let run = record_on(&host, &["--gpu-sample-hz", "0"], &["--frames", "30"], || {});
    let report = run.report;
    assert_eq!(report["gpus"][0]["sampled"], false);
    assert_eq!(
        report["gpus"][0]["not_sampled"],
        "GPU sampling was off (--gpu-sample-hz 0)"
    );
    assert!(report.get("gpu_sample_period_s").is_none());

    for (args, needle) in [
        (
            vec!["gpus", "--sysfs-root", "/nonexistent"],
            "--sysfs-root /nonexistent: no such directory",
        ),
        (vec!["gpus", "--nvml", "sometimes"], "sometimes"),
        (
            vec!["record", "--gpu-sample-hz", "5000", "--", "true"],
            "--gpu-sample-hz",
        ),
    ] {
        let out = agent(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Records the KVM-stalled game (a wait inside a declared GPU ioctl, as in the stutter tests) with
/// the amd-dgpu fixture as its GPU; returns the busiest process.
fn driver_waits_on(host: &FixtureHost) -> Value {
    let run = record_on(
        host,
        &["--gpu-ioctl-type", "0xAE"],
        &[
            "--frames",
            "200",
            "--interval-ms",
            "16.7",
            "--stall-every",
            "50",
            "--stall-ms",
            "60",
            "--stall-kind",
            "kvm",
        ],
        || {},
    );
    busiest(&run.report).clone()
}

/// The stalled frames' events (a host hitch may add another stutter; those are not judged here).
fn stalled(p: &Value) -> Vec<Value> {
    let events = p["stutters"]["events"].as_array().expect("events");
    let injected: Vec<Value> = events
        .iter()
        .filter(|e| e["frame"].as_u64().is_some_and(|f| f % 50 == 49))
        .cloned()
        .collect();
    assert_eq!(injected.len(), 4, "{}", p["stutters"]);
    injected
}

/// The GPU's state decides between the three GPU verdicts: a driver wait while the GPU throttles
/// is `gpu-throttle`; with VRAM full and no throttling, `vram-pressure`; otherwise
/// `gpu-driver-wait`.
#[test]
fn gpu_counters_turn_driver_waits_into_throttle_or_vram_verdicts() {
    require_root();
    assert!(
        Path::new("/dev/kvm").exists(),
        "NOT RUN: /dev/kvm is missing, and the blocking ioctl this test uses is KVM_RUN"
    );
    let host = FixtureHost::new("amd-dgpu");
    let dev = host.path(DGPU_DIR);
    for e in stalled(&driver_waits_on(&host)) {
        assert_eq!(e["cause"], "gpu-throttle", "{e}");
        let summary = e["summary"].as_str().expect("summary");
        assert!(summary.contains("throttled (power, thermal)"), "{summary}");
    }

    // No throttle status (a GPU without gpu_metrics) and VRAM 99 % full.
    std::fs::remove_file(dev.join("gpu_metrics")).expect("rm");
    std::fs::write(dev.join("mem_info_vram_used"), "17000000000\n").expect("write");
    for e in stalled(&driver_waits_on(&host)) {
        assert_eq!(e["cause"], "vram-pressure", "{e}");
        assert!(e["evidence"]["gpu"]["vram_used_ratio"].as_f64() > Some(0.95));
    }

    // Neither: the plain driver wait, with the GPU's state still in the evidence.
    std::fs::write(dev.join("mem_info_vram_used"), "6442450944\n").expect("write");
    for e in stalled(&driver_waits_on(&host)) {
        assert_eq!(e["cause"], "gpu-driver-wait", "{e}");
        assert_eq!(e["evidence"]["gpu"]["utilization_ratio"], 0.97, "{e}");
    }
}
