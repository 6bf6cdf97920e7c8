//! Per-frame exports in other tools' formats, so their viewers can load nvbind's captures:
//!
//! - [`mangohud_csv`]: MangoHud's frame log (as MangoHud 0.6.8 writes it with `log_interval=0`),
//!   read by MangoHud's own tools, the FlightlessMango log viewer, MangoPlot and CapFrameX.
//! - [`presentmon_csv`]: PresentMon's classic (1.x) CSV with its default columns, read by
//!   CapFrameX and the many scripts written for PresentMon.
//!
//! Both describe one process. Each column's source and unit is documented next to its name below
//! and in docs/exports.md. What nvbind does not measure is written the way the tool itself writes
//! a value it does not have (0 in MangoHud's log; PresentMon's defaults in its CSV), never left
//! blank, so every row has every column and the files parse like the tools' own.
//!
//! The first frame of a process has no frame time; both exports skip it, as MangoHud and
//! PresentMon do (each needs a previous present before it writes a row). A process without frame
//! times gets a file with the headers only (not an error): scripts that always expect a file find
//! one, and an empty capture is visible as such.
//!
//! Values are written without quoting, as the tools write them; text taken from the host or the
//! process (names, versions) has commas and line breaks replaced by spaces so it cannot shift
//! columns in readers that split lines at commas (the FlightlessMango viewer and CapFrameX do).

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::{
    write::{write_atomically, WriteError},
    FrameRow, Report,
};
use crate::gpu::{GpuReport, GpuSample};

/// MangoHud's first header line: the system the log was made on.
pub const MANGOHUD_SYSTEM_COLUMNS: [&str; 7] = [
    "os",
    "cpu",
    "gpu",
    "ram",
    "kernel",
    "driver",
    "cpuscheduler",
];

/// MangoHud's per-frame header line (MangoHud 0.6.8, `src/logging.cpp`), with units:
///
/// | column | MangoHud's meaning and unit | nvbind writes |
/// |---|---|---|
/// | fps | 1e6 / frametime (frames per second, from the integer µs) | the same |
/// | frametime | time since the previous present, µs, truncated to an integer | the present-to-present time |
/// | cpu_load | whole-CPU load, percent | 0 (not sampled) |
/// | gpu_load | GPU busy, integer percent | highest utilisation over the frame, rounded |
/// | cpu_temp | °C | 0 (not sampled) |
/// | gpu_temp | °C, integer | last GPU sample at or before the present |
/// | gpu_core_clock | MHz, integer | lowest graphics clock over the frame, rounded |
/// | gpu_mem_clock | MHz, integer | last GPU sample at or before the present |
/// | gpu_vram_used | GiB (2^30 bytes) | last GPU sample at or before the present |
/// | gpu_power | W, integer | last GPU sample at or before the present, rounded |
/// | ram_used | system RAM in use, GiB | 0 (not sampled) |
/// | elapsed | ns since logging started | ns since the capture started |
pub const MANGOHUD_FRAME_COLUMNS: [&str; 12] = [
    "fps",
    "frametime",
    "cpu_load",
    "gpu_load",
    "cpu_temp",
    "gpu_temp",
    "gpu_core_clock",
    "gpu_mem_clock",
    "gpu_vram_used",
    "gpu_power",
    "ram_used",
    "elapsed",
];

/// PresentMon 1.x's CSV header with its default options (display tracking on; no `-track_debug`,
/// `-track_gpu`, `-track_input` or `-qpc_time` columns), in the order PresentMon 1.7 to 1.10 write
/// it (`PresentMon/CsvOutput.cpp`; the columns are described in the "CSV columns" section of the
/// console application's README). Times are in milliseconds, `TimeInSeconds` in seconds.
pub const PRESENTMON_COLUMNS: [&str; 15] = [
    "Application",
    "ProcessID",
    "SwapChainAddress",
    "Runtime",
    "SyncInterval",
    "PresentFlags",
    "Dropped",
    "TimeInSeconds",
    "msInPresentAPI",
    "msBetweenPresents",
    "AllowsTearing",
    "PresentMode",
    "msUntilRenderComplete",
    "msUntilDisplayed",
    "msBetweenDisplayChange",
];

/// The MangoHud log's system line. MangoHud fills it at start-up from the host; nvbind from the
/// host when the export is written and from the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MangoHudSystem {
    /// `PRETTY_NAME` of /etc/os-release, without quotes.
    pub os: String,
    /// The last `model name` of /proc/cpuinfo, with parenthesised parts (`(R)`, `(TM)`) removed.
    pub cpu: String,
    /// The GPU's name (MangoHud: the Vulkan device name; nvbind: the name discovery gave the
    /// process's GPU), or empty.
    pub gpu: String,
    /// `MemTotal` of /proc/meminfo, in kB.
    pub ram: String,
    /// The kernel release (`uname -r`), from the report.
    pub kernel: String,
    /// MangoHud writes the OpenGL version string `glxinfo` prints; nvbind runs no GL client and
    /// writes the GPU's kernel driver and its version instead (`amdgpu 6.8.0`), or empty.
    pub driver: String,
    /// The cpufreq governor of CPU 0 (MangoHud's "cpuscheduler"), or empty.
    pub cpuscheduler: String,
}

impl MangoHudSystem {
    /// Reads the host (os-release, cpuinfo, meminfo, cpufreq) and takes the kernel and the GPU
    /// from the report. Anything unreadable is left empty, as MangoHud leaves it.
    pub fn of_host(report: &Report, gpu: Option<&GpuReport>) -> MangoHudSystem {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let os_release = match fs::read_to_string("/etc/os-release") {
            Ok(text) => text,
            Err(_) => read("/usr/lib/os-release"),
        };
        MangoHudSystem {
            os: os_pretty_name(&os_release),
            cpu: cpu_model(&read("/proc/cpuinfo")),
            gpu: gpu.map(|g| g.info.name.clone()).unwrap_or_default(),
            ram: mem_total_kb(&read("/proc/meminfo"))
                .map(|kb| kb.to_string())
                .unwrap_or_default(),
            kernel: report.host.kernel.clone(),
            driver: gpu.map(gpu_driver).unwrap_or_default(),
            cpuscheduler: read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
                .trim()
                .to_string(),
        }
    }

    fn fields(&self) -> [&str; 7] {
        [
            &self.os,
            &self.cpu,
            &self.gpu,
            &self.ram,
            &self.kernel,
            &self.driver,
            &self.cpuscheduler,
        ]
    }
}

/// `PRETTY_NAME` from an os-release file, unquoted.
fn os_pretty_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.replace(['"', '\''], "").trim().to_string())
        .unwrap_or_default()
}

/// The CPU model as MangoHud shows it: the last `model name` line's value, without the
/// parenthesised parts.
fn cpu_model(cpuinfo: &str) -> String {
    let Some(model) = cpuinfo
        .lines()
        .rev()
        .filter(|l| l.starts_with("model name"))
        .find_map(|l| l.split_once(':').map(|(_, v)| v))
    else {
        return String::new();
    };
    let mut out = String::with_capacity(model.len());
    let mut depth = 0usize;
    for c in model.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// `MemTotal` in kB.
fn mem_total_kb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn gpu_driver(gpu: &GpuReport) -> String {
    if gpu.info.driver == "none" {
        return String::new();
    }
    match &gpu.info.driver_version {
        Some(v) => format!("{} {v}", gpu.info.driver),
        None => gpu.info.driver.clone(),
    }
}

/// The GPU a process renders on, chosen as the frames' GPU evidence is: the GPU whose device node
/// it had open, else the only GPU that was sampled.
fn process_gpu(report: &Report, pid: u32) -> Option<&GpuReport> {
    let address = report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .and_then(|p| p.gpu.as_deref());
    match address {
        Some(a) => report.gpus.iter().find(|g| g.info.pci_address == a),
        None => {
            let mut sampled = report.gpus.iter().filter(|g| g.sampled);
            match (sampled.next(), sampled.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }
}

/// The GPU's last awake sample taken at or before `t_ns` (CLOCK_MONOTONIC).
fn sample_at(gpu: Option<&GpuReport>, t_ns: u64) -> Option<&GpuSample> {
    let samples = &gpu?.samples;
    let after = samples.partition_point(|s| s.sample.t_ns <= t_ns);
    samples[..after]
        .iter()
        .rev()
        .map(|s| &s.sample)
        .find(|s| !s.suspended)
}

/// Text from the host or the process, made safe for an unquoted CSV field.
fn field(text: &str) -> String {
    text.replace([',', '\n', '\r'], " ").trim().to_string()
}

/// A number as C++ streams print a double by default (`%g` with 6 significant digits), the way
/// MangoHud writes its floating-point columns.
fn cpp_float(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() { "nan" } else { "inf" }.to_string();
    }
    if x == 0.0 {
        return "0".to_string();
    }
    // The exponent after rounding to 6 significant digits decides the notation.
    let sci = format!("{x:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        trim(&format!("{x:.*}", (5 - exp) as usize))
    }
}

/// A duration in milliseconds as PresentMon 1.x prints doubles (`%.14lf`).
fn presentmon_float(x: f64) -> String {
    format!("{x:.14}")
}

/// Frame time in whole microseconds, truncated as MangoHud truncates nanoseconds.
fn frametime_us(frame_time_ms: f64) -> u64 {
    let ns = (frame_time_ms * 1e6).round().max(0.0) as u64;
    ns / 1000
}

/// Rounded to an integer, 0 when unknown (MangoHud's integer columns).
fn int_or_zero(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{}", v.round() as i64),
        _ => "0".to_string(),
    }
}

fn csv_writer<W: Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .flexible(true)
        .quote_style(csv::QuoteStyle::Never)
        .from_writer(out)
}

fn csv_err(path: &Path) -> impl Fn(csv::Error) -> WriteError + '_ {
    move |e| {
        if e.is_io_error() {
            match e.into_kind() {
                csv::ErrorKind::Io(source) => WriteError::Io {
                    path: path.to_path_buf(),
                    source,
                },
                other => WriteError::Encode {
                    path: path.to_path_buf(),
                    message: format!("{other:?}"),
                },
            }
        } else {
            WriteError::Encode {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        }
    }
}

fn flush_err(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The rows of `pid` that have a frame time (every frame but its first).
fn timed_rows(rows: &[FrameRow], pid: u32) -> impl Iterator<Item = (&FrameRow, f64)> {
    rows.iter()
        .filter(move |r| r.pid == pid)
        .filter_map(|r| r.frame_time_ms.map(|ft| (r, ft)))
}

/// Writes the frames of process `pid` as a MangoHud 0.6.8 frame log (atomically): the system
/// line with what the host says now, then one line per frame with a frame time.
pub fn mangohud_csv(
    path: &Path,
    report: &Report,
    rows: &[FrameRow],
    pid: u32,
) -> Result<(), WriteError> {
    let gpu = process_gpu(report, pid);
    let system = MangoHudSystem::of_host(report, gpu);
    mangohud_csv_with(path, &system, report, rows, pid)
}

/// [`mangohud_csv`] with the system line given.
pub fn mangohud_csv_with(
    path: &Path,
    system: &MangoHudSystem,
    report: &Report,
    rows: &[FrameRow],
    pid: u32,
) -> Result<(), WriteError> {
    let gpu = process_gpu(report, pid);
    // `elapsed` counts from the capture's start: the first frame's present time less its `t_s`
    // (exact differences between frames, whatever the rounding of `t_s`).
    let start_ns = rows
        .iter()
        .find(|r| r.pid == pid)
        .map(|r| r.present_ns.saturating_sub((r.t_s * 1e9).round() as u64));
    write_atomically(path, |out| {
        let mut csv = csv_writer(&mut *out);
        let err = csv_err(path);
        csv.write_record(MANGOHUD_SYSTEM_COLUMNS).map_err(&err)?;
        csv.write_record(system.fields().map(field)).map_err(&err)?;
        csv.write_record(MANGOHUD_FRAME_COLUMNS).map_err(&err)?;
        for (row, frame_time_ms) in timed_rows(rows, pid) {
            let us = frametime_us(frame_time_ms);
            // A frame under 1 µs would make MangoHud write `inf`; nvbind writes 0 (no value).
            let fps = if us > 0 { 1e6 / us as f64 } else { 0.0 };
            let sample = sample_at(gpu, row.present_ns);
            let elapsed = row
                .present_ns
                .saturating_sub(start_ns.unwrap_or(row.present_ns));
            let record: [String; 12] = [
                cpp_float(fps),
                us.to_string(),
                "0".into(),
                int_or_zero(row.gpu_utilization_ratio.map(|r| r * 100.0)),
                "0".into(),
                int_or_zero(sample.and_then(|s| s.temperature_celsius)),
                int_or_zero(row.gpu_clock_hertz.map(|hz| hz / 1e6)),
                int_or_zero(sample.and_then(|s| s.memory_clock_hertz).map(|hz| hz / 1e6)),
                cpp_float(
                    sample
                        .and_then(|s| s.vram_used_bytes)
                        .map_or(0.0, crate::gpu::gib),
                ),
                int_or_zero(sample.and_then(|s| s.power_watts)),
                "0".into(),
                elapsed.to_string(),
            ];
            csv.write_record(&record).map_err(&err)?;
        }
        csv.flush().map_err(flush_err(path))
    })
}

/// PresentMon's `Application`: the name a person knows the process by (PresentMon writes the
/// module name: a Windows game's .exe, which is also nvbind's name for a Wine process);
/// `<error>`, as PresentMon writes it, when it has none.
fn application(report: &Report, pid: u32) -> String {
    let Some(p) = report.processes.iter().find(|p| p.pid == pid) else {
        return "<error>".into();
    };
    match field(&p.name) {
        n if n.is_empty() => "<error>".into(),
        n => n,
    }
}

/// PresentMon's `Runtime` for nvbind's frame source.
fn runtime(source: &str) -> &'static str {
    match source {
        "vulkan" | "vulkan-loader" => "Vulkan",
        "glx" | "egl" => "OpenGL",
        _ => "Other",
    }
}

/// Writes the frames of process `pid` as a PresentMon 1.x CSV (atomically), one row per frame
/// with a frame time.
///
/// What nvbind does not know is written as PresentMon writes a present it has no data for: its
/// `PresentEvent` defaults (swap chain `0x0000000000000000`, `SyncInterval` -1, `PresentFlags` 0,
/// `AllowsTearing` 0, `PresentMode` `Other`) and 0 for the durations it did not measure
/// (`msInPresentAPI`, `msUntilRenderComplete`).
///
/// The display columns come from `frames.display`'s join (the frame's own flip or the
/// compositor's): `Dropped` 1 for a frame replaced before any flip, `msUntilDisplayed` from the
/// present to its flip, `msBetweenDisplayChange` from the previous displayed frame's flip to its
/// own, both 0 for a dropped frame, as PresentMon writes them. A frame whose fate is not known
/// (no display tracked, or the capture's last) is written as PresentMon writes a present when it
/// does not track the display: displayed, with 0s. (`NA` belongs to PresentMon 2's new metrics,
/// never to these columns.)
pub fn presentmon_csv(
    path: &Path,
    report: &Report,
    rows: &[FrameRow],
    pid: u32,
) -> Result<(), WriteError> {
    let app = application(report, pid);
    let unknown_ms = presentmon_float(0.0);
    write_atomically(path, |out| {
        let mut csv = csv_writer(&mut *out);
        let err = csv_err(path);
        csv.write_record(PRESENTMON_COLUMNS).map_err(&err)?;
        // The previous displayed frame's display time, for msBetweenDisplayChange.
        let mut last_display_ns = rows
            .iter()
            .find(|r| r.pid == pid)
            .and_then(|r| r.display_ns);
        for (row, frame_time_ms) in timed_rows(rows, pid) {
            let dropped = if row.displayed == Some(false) {
                "1"
            } else {
                "0"
            };
            let until_displayed = row
                .present_to_display_ms
                .map_or_else(|| unknown_ms.clone(), presentmon_float);
            let between = match (row.display_ns, last_display_ns) {
                (Some(now), Some(before)) => {
                    presentmon_float(now.saturating_sub(before) as f64 / 1e6)
                }
                _ => unknown_ms.clone(),
            };
            if row.display_ns.is_some() {
                last_display_ns = row.display_ns;
            }
            let record: [&str; 15] = [
                &app,
                &pid.to_string(),
                "0x0000000000000000",
                runtime(&row.source),
                "-1",
                "0",
                dropped,
                &presentmon_float(row.t_s),
                &unknown_ms,
                &presentmon_float(frame_time_ms),
                "0",
                "Other",
                &unknown_ms,
                &until_displayed,
                &between,
            ];
            csv.write_record(record).map_err(&err)?;
        }
        csv.flush().map_err(flush_err(path))
    })
}

/// `path` with `-<pid>` before its extension (`frames.csv` → `frames-1234.csv`).
pub fn path_for_pid(path: &Path, pid: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{pid}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{pid}"),
    };
    path.with_file_name(name)
}

/// Where each process's export goes when the user asked for `path`: the one process with frames
/// writes `path` itself; several write `path` with `-<pid>` before the extension each; with no
/// frames at all, `path` gets a header-only file (for the first process recorded, or pid 0).
pub fn outputs(path: &Path, report: &Report) -> Vec<(u32, PathBuf)> {
    let with_frames: Vec<u32> = report
        .processes
        .iter()
        .filter(|p| p.frames.count > 0)
        .map(|p| p.pid)
        .collect();
    match with_frames.as_slice() {
        [] => vec![(
            report.processes.first().map_or(0, |p| p.pid),
            path.to_path_buf(),
        )],
        [pid] => vec![(*pid, path.to_path_buf())],
        pids => pids.iter().map(|&p| (p, path_for_pid(path, p))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use nvbind_common::{present_source, ThreadCounters};

    use super::*;
    use crate::{
        frames::{Capture, Frame, ProcessRecord, Screen},
        gpu::{test_gpu, GpuSeries, Vendor},
        report::build,
    };

    fn frame(ts_ns: u64, tid: u32, source: u32) -> Frame {
        Frame {
            ts_ns,
            tid,
            source,
            cpu: 0,
            delta: ThreadCounters::default(),
            max_runq_wait_ns: 0,
            max_blocked_ns: 0,
            last_preemptor_tid: 0,
            culprit: Default::default(),
            target: 0,
            ..Default::default()
        }
    }

    const START_NS: u64 = 1_000_000_000;

    /// Process 10 (`game`, Vulkan) presents at 0, 16.667 and 33.334 ms after the capture
    /// starts; process 20 (`other`, GLX) at 0 and 50 ms.
    fn capture() -> Capture {
        let mut capture = Capture {
            started_ns: START_NS,
            kernel: "6.1.0-test".into(),
            ..Default::default()
        };
        capture.processes.insert(
            10,
            ProcessRecord {
                pid: 10,
                comm: "game".into(),
                exe: "/opt/game/game".into(),
                frames: [0, 16_667_000, 33_334_000]
                    .into_iter()
                    .map(|t| frame(START_NS + t, 11, present_source::VULKAN_RESOLVED))
                    .collect(),
                ..Default::default()
            },
        );
        capture.processes.insert(
            20,
            ProcessRecord {
                pid: 20,
                comm: "other".into(),
                frames: [0, 50_000_000]
                    .into_iter()
                    .map(|t| frame(START_NS + t, 21, present_source::GLX))
                    .collect(),
                ..Default::default()
            },
        );
        capture
    }

    fn system() -> MangoHudSystem {
        MangoHudSystem {
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            cpu: "Intel Xeon Processor".into(),
            gpu: String::new(),
            ram: "24683656".into(),
            kernel: "6.1.0-test".into(),
            driver: String::new(),
            cpuscheduler: String::new(),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .expect("read back")
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn mangohud_headers_are_mangohuds() {
        let (report, rows) = build(&capture());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("game.csv");
        mangohud_csv_with(&path, &system(), &report, &rows, 10).expect("written");
        let l = lines(&path);
        assert_eq!(l[0], "os,cpu,gpu,ram,kernel,driver,cpuscheduler");
        assert_eq!(
            l[1],
            "Debian GNU/Linux 12 (bookworm),Intel Xeon Processor,,24683656,6.1.0-test,,"
        );
        assert_eq!(
            l[2],
            "fps,frametime,cpu_load,gpu_load,cpu_temp,gpu_temp,gpu_core_clock,gpu_mem_clock,\
             gpu_vram_used,gpu_power,ram_used,elapsed"
        );
    }

    #[test]
    fn mangohud_units_and_first_frame_skipped() {
        let (report, rows) = build(&capture());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("game.csv");
        mangohud_csv_with(&path, &system(), &report, &rows, 10).expect("written");
        let l = lines(&path);
        // Three frames of process 10: the first has no frame time and is skipped; process 20's
        // frames are not in it.
        assert_eq!(l.len(), 3 + 2, "{l:#?}");
        let first: Vec<&str> = l[3].split(',').collect();
        assert_eq!(first.len(), 12);
        assert_eq!(first[0], "59.9988", "fps = 1e6 / 16667 µs");
        assert!((first[0].parse::<f64>().expect("fps") - 1e6 / 16667.0).abs() < 1e-3);
        assert_eq!(first[1], "16667", "frametime in µs");
        assert_eq!(
            first[11], "16667000",
            "elapsed in ns since the capture started"
        );
        let second: Vec<&str> = l[4].split(',').collect();
        assert_eq!(second[1], "16667");
        assert_eq!(second[11], "33334000");
        // Nothing nvbind does not know is left blank.
        assert_eq!(&first[2..11], &["0"; 9]);
    }

    #[test]
    fn mangohud_gpu_columns_come_from_the_frame_and_the_samples() {
        let mut capture = capture();
        let dir = tempfile::tempdir().expect("tempdir");
        let sample = |t_ns: u64, temp: f64| GpuSample {
            t_ns,
            utilization_ratio: Some(0.37),
            graphics_clock_hertz: Some(1_850e6),
            memory_clock_hertz: Some(1_000e6),
            vram_used_bytes: Some(3 << 29),
            power_watts: Some(151.6),
            temperature_celsius: Some(temp),
            ..Default::default()
        };
        let mut info = test_gpu(dir.path(), Vendor::Amd, "amdgpu");
        info.name = "Radeon, RX 6800".into();
        info.driver_version = Some("6.8.0".into());
        capture.gpus = vec![GpuSeries {
            info,
            not_sampled: None,
            samples: vec![
                sample(START_NS + 5_000_000, 60.0),
                sample(START_NS + 20_000_000, 61.0),
            ],
            read_ns: 0,
        }];
        capture.gpu_period_ns = 15_000_000;
        let (report, rows) = build(&capture);
        let path = dir.path().join("game.csv");
        let gpu = process_gpu(&report, 10);
        let system = MangoHudSystem::of_host(&report, gpu);
        assert_eq!(system.gpu, "Radeon, RX 6800");
        assert_eq!(system.driver, "amdgpu 6.8.0");
        assert_eq!(system.kernel, "6.1.0-test");
        mangohud_csv_with(&path, &system, &report, &rows, 10).expect("written");
        let l = lines(&path);
        assert!(
            l[1].contains(",Radeon  RX 6800,"),
            "comma replaced: {}",
            l[1]
        );
        assert_eq!(l[1].split(',').count(), 7);
        let first: Vec<&str> = l[3].split(',').collect();
        assert_eq!(first[3], "37", "gpu_load in percent");
        assert_eq!(
            first[5], "60",
            "gpu_temp from the sample before the present"
        );
        assert_eq!(first[6], "1850", "gpu_core_clock in MHz");
        assert_eq!(first[7], "1000", "gpu_mem_clock in MHz");
        assert_eq!(first[8], "1.5", "gpu_vram_used in GiB");
        assert_eq!(first[9], "152", "gpu_power in W");
        let second: Vec<&str> = l[4].split(',').collect();
        assert_eq!(second[5], "61");
    }

    #[test]
    fn presentmon_header_and_units() {
        let (report, rows) = build(&capture());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pm.csv");
        presentmon_csv(&path, &report, &rows, 10).expect("written");
        let l = lines(&path);
        assert_eq!(
            l[0],
            "Application,ProcessID,SwapChainAddress,Runtime,SyncInterval,PresentFlags,Dropped,\
             TimeInSeconds,msInPresentAPI,msBetweenPresents,AllowsTearing,PresentMode,\
             msUntilRenderComplete,msUntilDisplayed,msBetweenDisplayChange"
        );
        assert_eq!(
            l.len(),
            1 + 2,
            "first frame skipped, other pid excluded: {l:#?}"
        );
        let first: Vec<&str> = l[1].split(',').collect();
        assert_eq!(first.len(), 15);
        assert_eq!(first[0], "game");
        assert_eq!(first[1], "10");
        assert_eq!(first[2], "0x0000000000000000");
        assert_eq!(first[3], "Vulkan");
        assert_eq!(first[4], "-1");
        assert_eq!(first[6], "0", "not dropped");
        assert_eq!(
            first[7], "0.01666700000000",
            "TimeInSeconds since the capture start"
        );
        assert_eq!(first[9], "16.66700000000000", "msBetweenPresents");
        assert_eq!(first[11], "Other");
        assert_eq!(first[14], "0.00000000000000");
        let second: Vec<&str> = l[2].split(',').collect();
        assert!((second[7].parse::<f64>().expect("t") - 0.033334).abs() < 1e-12);

        presentmon_csv(&path, &report, &rows, 20).expect("written");
        let l = lines(&path);
        assert_eq!(l.len(), 2);
        assert!(l[1].starts_with("other,20,0x0000000000000000,OpenGL,"));
        assert!(l[1].contains(",50.00000000000000,"));
    }

    #[test]
    fn presentmon_display_columns_come_from_the_compositor_join() {
        let mut c = capture();
        let frames = &mut c.processes.get_mut(&10).expect("pid 10").frames;
        // Frame 1 replaced before any flip, frame 2 shown 20 ms after its present; frame 0
        // (no frame time, so no row) shown 25 ms after it.
        frames[0].screen = Screen::Shown {
            at_ns: frames[0].ts_ns + 25_000_000,
            crtc: 0,
        };
        frames[1].screen = Screen::Replaced;
        frames[2].screen = Screen::Shown {
            at_ns: frames[2].ts_ns + 20_000_000,
            crtc: 0,
        };
        let (report, rows) = build(&c);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pm.csv");
        presentmon_csv(&path, &report, &rows, 10).expect("written");
        let l = lines(&path);
        let dropped: Vec<&str> = l[1].split(',').collect();
        assert_eq!(dropped[6], "1", "Dropped");
        assert_eq!(
            dropped[13], "0.00000000000000",
            "msUntilDisplayed of a dropped frame"
        );
        assert_eq!(dropped[14], "0.00000000000000");
        let shown: Vec<&str> = l[2].split(',').collect();
        assert_eq!(shown[6], "0");
        assert_eq!(shown[13], "20.00000000000000", "msUntilDisplayed");
        // From frame 0's display (its present + 25 ms) to frame 2's (its present + 20 ms).
        let between = 2.0 * 16.667 + 20.0 - 25.0;
        let written: f64 = shown[14].parse().expect("msBetweenDisplayChange");
        assert!((written - between).abs() < 1e-9, "{written} vs {between}");
        // The frames CSV carries the same.
        let row = rows
            .iter()
            .find(|r| r.pid == 10 && r.frame == 2)
            .expect("row");
        assert_eq!(row.displayed, Some(true));
        assert_eq!(row.present_to_display_ms, Some(20.0));
        let replaced = rows
            .iter()
            .find(|r| r.pid == 10 && r.frame == 1)
            .expect("row");
        assert_eq!(
            (replaced.displayed, replaced.display_ns),
            (Some(false), None)
        );
    }

    #[test]
    fn without_frames_the_files_have_headers_only() {
        let (report, rows) = build(&capture());
        let dir = tempfile::tempdir().expect("tempdir");
        let mh = dir.path().join("mh.csv");
        let pm = dir.path().join("pm.csv");
        mangohud_csv_with(&mh, &system(), &report, &rows, 99).expect("written");
        presentmon_csv(&pm, &report, &rows, 99).expect("written");
        assert_eq!(lines(&mh).len(), 3);
        assert_eq!(lines(&pm), vec![PRESENTMON_COLUMNS.join(",")]);
        assert_eq!(application(&report, 99), "<error>");
        // Only the final files are left.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["mh.csv", "pm.csv"]);
    }

    #[test]
    fn unwritable_paths_are_errors() {
        let (report, rows) = build(&capture());
        let path = Path::new("/nonexistent-dir/x.csv");
        let err = presentmon_csv(path, &report, &rows, 10).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x.csv"), "{err}");
        let err = mangohud_csv_with(path, &system(), &report, &rows, 10).unwrap_err();
        assert!(matches!(err, WriteError::Io { .. }), "{err}");
    }

    #[test]
    fn host_files_are_read_as_mangohud_reads_them() {
        assert_eq!(
            os_pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz\n\n\
                       processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(cpu_model(cpuinfo), "Intel Xeon Processor");
        assert_eq!(cpu_model("processor : 0\n"), "");
        assert_eq!(
            mem_total_kb("MemTotal:       24683656 kB\nMemFree: 1 kB\n"),
            Some(24683656)
        );
    }

    #[test]
    fn floats_print_like_cpp_streams() {
        assert_eq!(cpp_float(1e6 / 47283.0), "21.1493");
        assert_eq!(cpp_float(1e6 / 1663.0), "601.323");
        assert_eq!(cpp_float(0.152256), "0.152256");
        assert_eq!(cpp_float(1e6), "1e+06");
        assert_eq!(cpp_float(100.0), "100");
        assert_eq!(cpp_float(0.0), "0");
        assert_eq!(cpp_float(0.00001234), "1.234e-05");
        assert_eq!(frametime_us(16.667), 16667);
        assert_eq!(frametime_us(0.0019994), 1, "1999 ns");
    }

    #[test]
    fn several_processes_get_a_file_each() {
        let (report, _) = build(&capture());
        let out = outputs(Path::new("/tmp/x/frames.csv"), &report);
        let mut got: Vec<(u32, String)> = out
            .into_iter()
            .map(|(p, path)| (p, path.display().to_string()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (10, "/tmp/x/frames-10.csv".to_string()),
                (20, "/tmp/x/frames-20.csv".to_string())
            ]
        );
        assert_eq!(
            path_for_pid(Path::new("log"), 7),
            PathBuf::from("log-7"),
            "no extension"
        );
        let mut one = report.clone();
        one.processes.retain(|p| p.pid == 20);
        assert_eq!(
            outputs(Path::new("a.csv"), &one),
            vec![(20, PathBuf::from("a.csv"))]
        );
        one.processes.clear();
        assert_eq!(
            outputs(Path::new("a.csv"), &one),
            vec![(0, PathBuf::from("a.csv"))]
        );
    }
}
