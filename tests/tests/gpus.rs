//! GPU discovery and sampling against fixture hosts laid out like real sysfs (tests/fixtures/hosts,
//! each documented in its README), with real device nodes made by mknod, and the NVML-absent path
//! on this machine. This machine has no GPU: the NVML path with a driver is not tested here.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nvbind_tests::{
    agent, busiest, monotonic_ns, percentile, pids_named, record_game, require_root, stderr,
    stutter_unreported, FixtureHost, GameRun,
};
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

/// A game that runs on until the test has seen what it waits for: `--stop-file` in the fixture
/// host (the game checks it before each frame, once it has presented its `--frames`). A number
/// of frames alone would be a guess at how long a loaded machine takes to sample.
struct UntilStopped {
    file: PathBuf,
    arg: String,
}

impl UntilStopped {
    fn new(host: &FixtureHost) -> UntilStopped {
        // One file per recording: a test that records twice on one host must not find the
        // first game's stop file already there.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = host.dir.path().join(format!("stop-the-game-{n}"));
        UntilStopped {
            arg: file.display().to_string(),
            file,
        }
    }

    /// The game's arguments: `--stop-file FILE` and `rest`.
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--stop-file", self.arg.as_str()];
        args.extend_from_slice(rest);
        args
    }

    fn stop(&self) {
        std::fs::write(&self.file, "").expect("write the stop file");
    }
}

/// Replaces a fixture file the way no reader can see it half written: a new file renamed over
/// the old one (the sampler opens each file afresh for every reading). `std::fs::write` would
/// truncate first, and a sample taken in between would read an empty file.
fn replace_file(path: &Path, text: &str) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&tmp, text).expect("write the new content");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

/// When the test changed fixture files: CLOCK_MONOTONIC just before the first rename and just
/// after the last.
#[derive(Debug, Clone, Copy)]
struct Change {
    before: u64,
    after: u64,
}

/// Renames `files` into place, timed.
fn change(files: &[(&Path, &str)]) -> Change {
    let before = monotonic_ns();
    for (path, text) in files {
        replace_file(path, text);
    }
    Change {
        before,
        after: monotonic_ns(),
    }
}

/// What a sample can have read, from the sampler's contract: one thread stamps a sample
/// (`t_ns`) before it reads any file and has read everything before it stamps the next one. So
/// sample `i` read only the content in place over `[t[i], t[i + 1])`, whatever the scheduler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Every read of the sample was over before the change began.
    Before,
    /// Every read began after the change was complete.
    After,
    /// The change happened while the sample was being taken: either content.
    Either,
}

fn side(t: &[u64], i: usize, c: Change) -> Side {
    if t.get(i + 1).is_some_and(|&next| next <= c.before) {
        Side::Before
    } else if t[i] >= c.after {
        Side::After
    } else {
        Side::Either
    }
}

/// The report's samples of one GPU and their CLOCK_MONOTONIC stamps.
fn samples_of(gpu: &Value) -> (Vec<Value>, Vec<u64>) {
    let samples = gpu["samples"].as_array().expect("samples").clone();
    let t: Vec<u64> = samples
        .iter()
        .map(|s| s["t_ns"].as_u64().expect("t_ns"))
        .collect();
    assert!(
        t.windows(2).all(|w| w[0] < w[1]),
        "samples are in time order: {t:?}"
    );
    (samples, t)
}

/// The sampler keeps its rate without depending on how busy the machine is: its ticks are a
/// whole period apart at least (after a stall it skips ticks rather than bursting), so the
/// samples never outnumber what their own span allows; and it is not slower than asked for:
/// most gaps between samples are near one period (a 2x slower sampler fails this; noise would
/// have to stall most of the ticks by a whole period to).
fn assert_sampled_every(t: &[u64], period_s: f64) {
    assert!(t.len() >= 3, "too few samples to judge a rate: {t:?}");
    let span_s = (t[t.len() - 1] - t[0]) as f64 / 1e9;
    assert!(
        ((t.len() - 1) as f64) < span_s / period_s + 1.0,
        "{} samples over {span_s} s at one per {period_s} s: the sampler bursts",
        t.len()
    );
    let mut gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e9).collect();
    gaps.sort_by(f64::total_cmp);
    let median = percentile(&gaps, 0.5);
    assert!(
        median > period_s / 2.0 && median < period_s * 2.0,
        "median gap between samples {median} s, asked for one per {period_s} s: {gaps:?}"
    );
}

/// The agent's opens of files in one directory (inotify `IN_OPEN`): the sampler opens a file
/// once per sample, so a test can wait until it has read a changed file again instead of
/// sleeping for a time it guesses.
struct Opens {
    fd: OwnedFd,
    dir: PathBuf,
    counts: HashMap<String, u64>,
}

impl Opens {
    fn watch(dir: &Path) -> Opens {
        // SAFETY: inotify_init1 has no preconditions; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.display().to_string()).expect("path");
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_OPEN) };
        assert!(wd >= 0, "watch {}", dir.display());
        Opens {
            fd,
            dir: dir.to_path_buf(),
            counts: HashMap::new(),
        }
    }

    /// Counts what is queued now.
    fn take(&mut self) {
        for (_, mask, name) in read_events(&self.fd) {
            if mask & libc::IN_ISDIR == 0 {
                *self.counts.entry(name).or_default() += 1;
            }
        }
    }

    /// Forgets every open queued so far. An open counted after this began after it, except that
    /// of a sample already under way, so `n` more opens are at least `n - 1` samples stamped
    /// after it.
    fn restart(&mut self) {
        self.take();
        self.counts.clear();
    }

    /// Waits until `name` has been opened `n` times since the last restart. The game must still
    /// run (the sampler stops with it); the deadline only bounds a hang.
    fn wait(&mut self, name: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.take();
            let seen = self.counts.get(name).copied().unwrap_or(0);
            if seen >= n {
                return;
            }
            assert!(
                !pids_named("synthetic-game").is_empty(),
                "the game ended before the agent had read {}/{name} {n} times (it did {seen} \
                 times): the capture is too short for this test",
                self.dir.display()
            );
            assert!(
                Instant::now() < deadline,
                "the agent read {}/{name} {seen} times in a minute, not {n}",
                self.dir.display()
            );
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
        }
    }
}

/// Every inotify event queued on `fd` now: (watch, mask, name).
fn read_events(fd: &OwnedFd) -> Vec<(i32, u32, String)> {
    let mut events = Vec::new();
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
            events.push((ev.wd, ev.mask, name));
            off += std::mem::size_of::<libc::inotify_event>() + ev.len as usize;
        }
    }
    events
}

/// The samples a frame's GPU evidence covers, as the report defines it: from the previous
/// present to one sampling period after this one.
fn in_frame<'a>(
    samples: &'a [Value],
    t: &[u64],
    from_ns: u64,
    to_ns: u64,
    period_ns: u64,
) -> Vec<&'a Value> {
    samples
        .iter()
        .zip(t)
        .filter(|(_, &t)| t >= from_ns && t <= to_ns + period_ns)
        .map(|(s, _)| s)
        .collect()
}

/// The CSV rows of process `pid`, in frame order, with their present times.
fn rows_of(run: &GameRun, pid: u64) -> Vec<(&HashMap<String, String>, u64)> {
    let rows: Vec<_> = run
        .rows
        .iter()
        .filter(|r| r["pid"] == pid.to_string())
        .map(|r| (r, r["present_ns"].parse::<u64>().expect("present_ns")))
        .collect();
    for (i, (r, _)) in rows.iter().enumerate() {
        assert_eq!(r["frame"], i.to_string(), "rows in frame order");
    }
    rows
}

/// The samples that frame `frame` of `rows` covers (none for the first frame).
fn frame_samples<'a>(
    rows: &[(&HashMap<String, String>, u64)],
    frame: usize,
    samples: &'a [Value],
    t: &[u64],
    period_ns: u64,
) -> Vec<&'a Value> {
    match frame.checked_sub(1) {
        Some(prev) => in_frame(samples, t, rows[prev].1, rows[frame].1, period_ns),
        None => Vec::new(),
    }
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

    // A sampled capture while the counter climbs 10 J per second: each sample's power is the
    // energy used since the previous sample over the time between them, so over the capture the
    // powers add up to exactly the energy the counter gained. The test pins both ends (the
    // first sample read the counter before it moved, the last after it stopped), so this holds
    // however the writes and the samples interleave on a busy machine; a wrong unit, a nominal
    // period instead of the measured one, or smoothing across samples breaks it.
    let hwmon = energy.parent().expect("hwmon dir").to_path_buf();
    let start: u64 = std::fs::read_to_string(&energy)
        .expect("energy")
        .trim()
        .parse()
        .expect("µJ");
    let mut last = start;
    let game = UntilStopped::new(&xe);
    let run = record_on(
        &xe,
        &["--gpu-sample-hz", "20"],
        &game.args(&["--frames", "240", "--interval-ms", "16.7"]),
        || {
            let mut opens = Opens::watch(&hwmon);
            // The agent has read the counter at least once before it moves.
            opens.wait("energy1_input", 1);
            let t0 = monotonic_ns();
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(10));
                // 10 W: 10 µJ per µs since t0.
                last = start + (monotonic_ns() - t0) / 100;
                replace_file(&energy, &format!("{last}\n"));
            }
            // An open queued after this began after the last rename, but for one already under
            // way: the second one read the final value, and so does every later sample.
            opens.restart();
            opens.wait("energy1_input", 2);
            game.stop();
        },
    );
    assert!(last > start, "the counter climbed");
    let gpu = &run.report["gpus"][0];
    let (samples, t) = samples_of(gpu);
    assert_eq!(
        samples[0].get("power_watts"),
        None,
        "one energy reading gives no power: {}",
        samples[0]
    );
    let mut joules = 0.0;
    for (i, s) in samples.iter().enumerate().skip(1) {
        let watts = s["power_watts"]
            .as_f64()
            .unwrap_or_else(|| panic!("sample {i} has no power: {s}"));
        assert!(watts >= 0.0, "sample {i}: {s}");
        joules += watts * (t[i] - t[i - 1]) as f64 / 1e9;
    }
    let gained = (last - start) as f64 * 1e-6;
    assert!(
        (joules - gained).abs() <= gained * 1e-9,
        "the samples' power adds up to {joules} J; the counter gained {gained} J"
    );
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
    read_events(&fd)
        .into_iter()
        // Listing a directory (drm/) reads nothing from the GPU.
        .filter(|(_, mask, _)| mask & libc::IN_ISDIR == 0)
        .map(|(wd, _, name)| format!("{}/{name}", names[&wd]))
        .collect()
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
    // A capture reads every file many times (the kernel counts the opens; the test waits for
    // them rather than for a time); each bad one is reported once.
    const READS: u64 = 5;
    let hwmon = dev.join("hwmon/hwmon2");
    let game = UntilStopped::new(&host);
    let run = record_on(
        &host,
        &["--gpu-sample-hz", "50"],
        &game.args(&["--frames", "60", "--interval-ms", "16.7"]),
        || {
            let mut device = Opens::watch(&dev);
            let mut sensors = Opens::watch(&hwmon);
            device.wait("gpu_busy_percent", READS);
            device.wait("gpu_metrics", READS);
            sensors.wait("temp1_input", READS);
            game.stop();
        },
    );
    let err = &run.stderr;
    for file in ["gpu_busy_percent", "temp1_input", "gpu_metrics"] {
        let warnings = err.lines().filter(|l| l.contains(file)).count();
        assert_eq!(warnings, 1, "one warning for {file}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    let g = &run.report["gpus"][0];
    assert!(g["summary"]["samples"].as_u64() >= Some(READS), "{g}");
    let samples = g["samples"].as_array().expect("samples");
    assert_eq!(g["summary"]["samples"].as_u64(), Some(samples.len() as u64));
    // Every sample alike: the files are broken throughout, and nothing else is lost.
    for s in samples {
        // gpu_busy_percent is garbage and gpu_metrics truncated: no utilisation at all, not 0.
        assert!(s.get("utilization_ratio").is_none(), "{s}");
        assert!(s.get("throttle_reasons").is_none(), "{s}");
        // The edge temperature is empty; nothing else is lost.
        assert!(s.get("temperature_celsius").is_none(), "{s}");
        assert_eq!(s["hotspot_temperature_celsius"], 78.0, "{s}");
        assert_eq!(s["memory_utilization_ratio"], 0.41, "{s}");
        assert_eq!(s["power_watts"], 255.0, "{s}");
    }
}

/// The amd-dgpu fixture's VRAM use, and what the sampled capture fills it to (past 95 %).
const VRAM_USED: u64 = 6442450944;
const VRAM_FULL: u64 = 16800000000;

/// Checks what a sample read against what the fixture held over the time it was taken.
fn assert_read(i: usize, s: &Value, field: &str, allowed: &[&Value]) {
    assert!(
        allowed.contains(&&s[field]),
        "sample {i}: {field} is {}, the fixture held {allowed:?} while it was taken: {s}",
        s[field]
    );
}

#[test]
fn a_sampled_capture_summarises_the_gpu_and_joins_it_with_frames() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let dev = host.path(DGPU_DIR);
    let (busy, temp, vram) = (
        dev.join("gpu_busy_percent"),
        dev.join("hwmon/hwmon2/temp1_input"),
        dev.join("mem_info_vram_used"),
    );
    for (file, was) in [(&busy, "97"), (&temp, "62000"), (&vram, "6442450944")] {
        let text = std::fs::read_to_string(file).expect("fixture file");
        assert_eq!(text.trim(), was, "{}", file.display());
    }
    // The GPU changes during the capture: busy drops, it heats up, VRAM fills past 95 %, and
    // is freed again. Each step waits for the sampler to have read the files (the kernel
    // counts its opens), not for a time; the files are replaced whole, never seen half written.
    let (mut filled, mut freed) = (None, None);
    let game = UntilStopped::new(&host);
    let run = record_on(
        &host,
        &[],
        &game.args(&[
            "--frames",
            "240",
            "--interval-ms",
            "16.7",
            "--stall-every",
            "60",
            "--stall-ms",
            "80",
        ]),
        || {
            // Every sample opens mem_info_vram_used once.
            let mut opens = Opens::watch(&dev);
            // At least 3 samples of the GPU as it was.
            opens.wait("mem_info_vram_used", 4);
            filled = Some(change(&[
                (&busy, "30\n"),
                (&temp, "91000\n"),
                (&vram, &format!("{VRAM_FULL}\n")),
            ]));
            // At least 5 samples taken wholly while VRAM was full.
            opens.restart();
            opens.wait("mem_info_vram_used", 7);
            freed = Some(change(&[(&vram, &format!("{VRAM_USED}\n"))]));
            // At least one after it was freed.
            opens.restart();
            opens.wait("mem_info_vram_used", 2);
            game.stop();
        },
    );
    let (filled, freed) = (filled.expect("filled"), freed.expect("freed"));
    let report = &run.report;
    assert_eq!(report["gpu_sample_period_s"], 0.1);
    let g = &report["gpus"][0];
    assert_eq!(g["sampled"], true);
    assert_eq!(g["pci_address"], "0000:03:00.0");
    let (samples, t) = samples_of(g);
    // 10 Hz, judged on the samples' own times.
    assert_sampled_every(&t, 0.1);

    // Each sample read what the fixture held while it was taken: exact, however the sampler
    // and the test were scheduled.
    let (busy_was, busy_now) = (json!(0.97), json!(0.3));
    let (temp_was, temp_now) = (json!(62.0), json!(91.0));
    let (used, full) = (json!(VRAM_USED), json!(VRAM_FULL));
    let (mut before, mut while_full, mut after) = (0, 0, 0);
    for (i, s) in samples.iter().enumerate() {
        match side(&t, i, filled) {
            Side::Before => {
                before += 1;
                assert_read(i, s, "utilization_ratio", &[&busy_was]);
                assert_read(i, s, "temperature_celsius", &[&temp_was]);
                assert_read(i, s, "vram_used_bytes", &[&used]);
            }
            Side::Either => {
                assert_read(i, s, "utilization_ratio", &[&busy_was, &busy_now]);
                assert_read(i, s, "temperature_celsius", &[&temp_was, &temp_now]);
                assert_read(i, s, "vram_used_bytes", &[&used, &full]);
            }
            Side::After => {
                assert_read(i, s, "utilization_ratio", &[&busy_now]);
                assert_read(i, s, "temperature_celsius", &[&temp_now]);
                let vram_then: &[&Value] = match side(&t, i, freed) {
                    Side::Before => {
                        while_full += 1;
                        &[&full]
                    }
                    Side::Either => &[&full, &used],
                    Side::After => {
                        after += 1;
                        &[&used]
                    }
                };
                assert_read(i, s, "vram_used_bytes", vram_then);
            }
        }
    }
    assert!(
        before >= 3 && while_full >= 5 && after >= 1,
        "the test waited for 3 samples before the change, 5 while VRAM was full and 1 after; \
         the report has {before}, {while_full} and {after}"
    );

    let s = &g["summary"];
    assert_eq!(s["samples"].as_u64(), Some(samples.len() as u64));
    let mut utilization: Vec<f64> = samples
        .iter()
        .map(|x| x["utilization_ratio"].as_f64().expect("utilization"))
        .collect();
    utilization.sort_by(f64::total_cmp);
    // Nearest rank over the samples, which hold both readings.
    assert_eq!(
        s["utilization_p95_ratio"].as_f64(),
        Some(percentile(&utilization, 0.95)),
        "{s}"
    );
    assert_eq!(
        s["utilization_p50_ratio"].as_f64(),
        Some(percentile(&utilization, 0.50)),
        "{s}"
    );
    assert_eq!(s["temperature_max_celsius"], 91.0);
    assert_eq!(s["hotspot_temperature_max_celsius"], 78.0);
    assert_eq!(s["graphics_clock_min_hertz"], 2.25e9);
    assert_eq!(s["graphics_clock_max_hertz"], 2.25e9);
    assert_eq!(s["power_mean_watts"], 255.0);
    assert_eq!(s["power_limit_watts"], 255.0);
    assert_eq!(s["vram_peak_bytes"], VRAM_FULL);
    assert_eq!(s["vram_total_bytes"], 17163091968u64);
    assert_eq!(s["throttled_ratio"], 1.0);
    assert!(s["read_cost_us"].as_f64() > Some(0.0));
    // Throttled throughout, for the blob's two reasons: from the first sample to the last.
    let throttle = g["throttle_intervals"].as_array().expect("throttle");
    assert_eq!(throttle.len(), 1, "{throttle:?}");
    assert_eq!(throttle[0]["reasons"], json!(["power", "thermal"]));
    assert_eq!(throttle[0]["start_s"], samples[0]["t_s"], "{throttle:?}");
    assert_eq!(
        throttle[0]["end_s"],
        samples[samples.len() - 1]["t_s"],
        "{throttle:?}"
    );
    // VRAM pressure from the first sample that read it full to the first that read it freed.
    let pressure = g["vram_pressure_intervals"].as_array().expect("vram");
    assert_eq!(pressure.len(), 1, "{pressure:?}");
    let first = samples
        .iter()
        .position(|x| x["vram_used_bytes"] == full)
        .expect("a sample with VRAM full");
    let end = first
        + samples[first..]
            .iter()
            .position(|x| x["vram_used_bytes"] != full)
            .expect("a sample after VRAM was freed");
    assert_eq!(
        pressure[0]["start_s"], samples[first]["t_s"],
        "{pressure:?}"
    );
    assert_eq!(pressure[0]["end_s"], samples[end]["t_s"], "{pressure:?}");

    // Every stutter carries the GPU's state over that frame: the samples from the previous
    // present to one period after this one, as the report's own samples say.
    let p = busiest(report);
    let rows = rows_of(&run, p["pid"].as_u64().expect("pid"));
    let period_ns = 100_000_000;
    let max_utilization = |seen: &[&Value]| {
        seen.iter()
            .filter_map(|x| x["utilization_ratio"].as_f64())
            .reduce(f64::max)
    };
    let events = p["stutters"]["events"].as_array().expect("events");
    assert!(events.len() >= 3, "{}", p["stutters"]);
    let mut sampled_events = 0;
    for e in events {
        let frame = e["frame"].as_u64().expect("frame") as usize;
        let seen = frame_samples(&rows, frame, &samples, &t, period_ns);
        let gpu = &e["evidence"]["gpu"];
        if seen.is_empty() {
            // A stalled sampler took nothing over this frame: the evidence says so.
            assert_eq!(gpu["sampled"], false, "{e}");
            let missing = gpu["missing"].as_str().unwrap_or_default();
            assert!(missing.contains("no GPU sample"), "{e}");
            continue;
        }
        sampled_events += 1;
        assert_eq!(gpu["sampled"], true, "{e}");
        assert_eq!(gpu["pci_address"], "0000:03:00.0", "{e}");
        assert_eq!(gpu["throttle_reasons"], json!(["power", "thermal"]), "{e}");
        assert_eq!(gpu["samples"].as_u64(), Some(seen.len() as u64), "{e}");
        assert_eq!(
            gpu["utilization_ratio"].as_f64(),
            max_utilization(&seen),
            "{e}"
        );
    }
    assert!(
        sampled_events >= 1,
        "no stutter had a GPU sample in it: {}",
        p["stutters"]
    );
    // ... and so does every frame in the CSV.
    let (mut joined, mut after_drop) = (0, 0);
    for (i, (row, _)) in rows.iter().enumerate() {
        let seen = frame_samples(&rows, i, &samples, &t, period_ns);
        let Some(utilization) = max_utilization(&seen) else {
            assert_eq!(row["gpu_throttle_reasons"], "", "frame {i}: {row:?}");
            assert_eq!(row["gpu_utilization_ratio"], "", "frame {i}: {row:?}");
            continue;
        };
        joined += 1;
        assert_eq!(
            row["gpu_throttle_reasons"], "power+thermal",
            "frame {i}: {row:?}"
        );
        let csv: f64 = row["gpu_utilization_ratio"]
            .parse()
            .unwrap_or_else(|e| panic!("frame {i}: {e}: {row:?}"));
        assert_eq!(csv, utilization, "frame {i}: {row:?}");
        if utilization == 0.3 {
            after_drop += 1;
        }
    }
    assert!(
        joined >= 1 && after_drop >= 1,
        "{joined} frames joined, {after_drop} at 30 %"
    );

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
/// the amd-dgpu fixture as its GPU.
fn driver_waits_on(host: &FixtureHost) -> GameRun {
    record_on(
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
    )
}

/// The stalled frames' events (a host hitch may add another stutter; those are not judged here,
/// nor a stalled frame in which the presenting thread waited longer for a CPU than in the stalled
/// ioctl, nor one whose switches the kernel did not report, as the report says), each with how many GPU samples the report has over its frame. A frame the sampler took
/// nothing over (a machine stalled for longer than the frame) has no GPU evidence: its verdict
/// must say so and stay the plain driver wait. Returns only the events with samples, and at least
/// one, so the verdicts the test is about are always judged.
fn stalled(run: &GameRun) -> Vec<Value> {
    let p = busiest(&run.report);
    let events = p["stutters"]["events"].as_array().expect("events");
    let injected: Vec<&Value> = events
        .iter()
        .filter(|e| e["frame"].as_u64().is_some_and(|f| f % 50 == 49))
        .collect();
    assert_eq!(injected.len(), 4, "{}", p["stutters"]);
    let rows = rows_of(run, p["pid"].as_u64().expect("pid"));
    let period_s = run.report["gpu_sample_period_s"].as_f64().expect("period");
    let period_ns = (period_s * 1e9).round() as u64;
    let (samples, t) = samples_of(&run.report["gpus"][0]);
    let mut judged = Vec::new();
    for e in injected {
        // A stall the host's own load outweighed (the presenting thread waited longer for a CPU
        // than inside the stalled ioctl) is truly CPU contention as well: not this test's story.
        let presenter = &e["evidence"]["presenting_thread"];
        let ms = |name: &str| {
            presenter[name]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {e}"))
        };
        if stutter_unreported(e) {
            eprintln!("note: the kernel did not report this frame's switches: {e}");
            continue;
        }
        if ms("runq_wait_ms") > ms("blocked_in_gpu_ioctl_ms") {
            eprintln!("note: the host's load outweighed the stall in this frame: {e}");
            continue;
        }
        let frame = e["frame"].as_u64().expect("frame") as usize;
        let seen = frame_samples(&rows, frame, &samples, &t, period_ns);
        let gpu = &e["evidence"]["gpu"];
        if seen.is_empty() {
            assert_eq!(gpu["sampled"], false, "{e}");
            assert_eq!(e["cause"], "gpu-driver-wait", "{e}");
        } else {
            assert_eq!(gpu["sampled"], true, "{e}");
            assert_eq!(gpu["samples"].as_u64(), Some(seen.len() as u64), "{e}");
            judged.push(e.clone());
        }
    }
    assert!(
        !judged.is_empty(),
        "no stalled frame had a GPU sample in it: {}",
        p["stutters"]
    );
    judged
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

    // No throttle status (a GPU without gpu_metrics) and VRAM 99 % full. (No capture runs
    // while the fixture changes.)
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
