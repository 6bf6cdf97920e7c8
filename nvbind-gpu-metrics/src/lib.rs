//! Decoder for amdgpu's binary sysfs file `/sys/class/drm/cardN/device/gpu_metrics`.
//!
//! The file is one C struct, chosen by its 4-byte `metrics_table_header` (`structure_size: u16`,
//! `format_revision: u8`, `content_revision: u8`). The layouts are the kernel's
//! `drivers/gpu/drm/amd/include/kgd_pp_interface.h` (`gpu_metrics_vF_C`): plain, *not* packed C
//! structs, so every member sits at its natural alignment and the compiler inserts hidden padding
//! (4 bytes after the header of v1.0 and v2.0, 2 bytes after `average_ipu_power` in v3.0) besides
//! the `padding` members the header names. The offsets below were derived from the header with that
//! rule and are checked by the tests, which lay the structs out member by member.
//!
//! The kernel fills the whole struct with `0xFF` before writing what the firmware reports
//! (`smu_cmn_init_soft_gpu_metrics`), so an all-ones member (`0xFFFF`, `0xFFFF_FFFF`, ...) means
//! "not supported" and decodes to `None`. The file is in host byte order; the hosts amdgpu is used
//! on (x86_64, aarch64, ppc64le) are little-endian, so this decoder reads little-endian.
//!
//! Units differ by revision. They come from the header's comments and from the drivers that fill
//! each struct and the firmware interface headers they copy from: `swsmu/smu11/navi10_ppt.c` and
//! `sienna_cichlid_ppt.c` (v1.0–v1.3), `smu13/smu_v13_0_6_ppt.c` (v1.4/v1.5), `smu12/renoir_ppt.c`
//! (v2.0–v2.2), `smu11/vangogh_ppt.c` (v2.2/v2.3), `smu14/smu_v14_0_0_ppt.c` (v3.0):
//!
//! | revision  | temperatures | activity      | socket power            | clocks |
//! |-----------|--------------|---------------|-------------------------|--------|
//! | v1.0–v1.3 | °C           | %             | `average_socket_power` W | MHz    |
//! | v1.4–v1.5 | °C           | %             | `curr_socket_power` W    | MHz    |
//! | v2.0–v2.4 | centi-°C     | centi-% (0..=10000) | `average_socket_power` mW | MHz |
//! | v3.0      | centi-°C     | % (0..=100)   | `average_socket_power` mW (u32) | MHz |
//!
//! Newer content revisions, and what happens to them:
//! * format 2: v2.1 → v2.4 only ever appended members, so a content revision above 4 is decoded
//!   with the v2.4 layout when the buffer holds at least a v2.4 struct.
//! * format 3: a content revision above 0 is decoded with the v3.0 layout when the buffer holds a
//!   v3.0 struct (an assumption: no later v3 struct exists yet to say whether v3 will only append).
//! * format 1: v1.4 onwards are *not* append-only (v1.5 inserts `jpeg_activity` before the energy
//!   counter, v1.6 inserts throttle residencies and was itself reshaped in place between kernel
//!   releases, v1.8 drops `throttle_status`). Decoding v1.6+ with the v1.5 layout would produce
//!   wrong numbers, so for content revision 6 and above only the prefix every v1.4+ struct shares
//!   is decoded (hotspot/memory temperature, `curr_socket_power`, gfx/umc activity; bytes 4..16).
//!
//! `structure_size` is used when it is at least the header's own 4 bytes: the decoder then looks at
//! no more than `min(structure_size, buffer length)` bytes. A smaller value is ignored (the buffer
//! length is used). Nothing past the buffer is ever read, and no input can make [`parse`] panic.
//!
//! User space only (the agent reads the file; the fuzz target in `fuzz/` feeds it bytes), which is
//! why it is its own crate rather than part of `nvbind-common`, the `#[repr(C)]` types shared with
//! the kernel programs.

// Plain byte parsing: no I/O and no allocation, so it needs nothing beyond `core`.
#![no_std]

use core::fmt;

/// Normalised view in base units; None = the revision lacks it or the firmware marks it
/// unsupported.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GpuMetrics {
    pub format_revision: u8,
    pub content_revision: u8,
    /// dGPU `temperature_edge`; APU `temperature_gfx`. °C.
    pub temperature_edge_celsius: Option<f32>,
    /// dGPU `temperature_hotspot` (junction); APU: None. °C.
    pub temperature_hotspot_celsius: Option<f32>,
    /// dGPU `temperature_mem`; APU: None. °C.
    pub temperature_mem_celsius: Option<f32>,
    /// APU `temperature_soc`; dGPU: None. °C.
    pub temperature_soc_celsius: Option<f32>,
    /// `average_gfx_activity`, 0.0..=1.0.
    pub gfx_activity_ratio: Option<f32>,
    /// `average_umc_activity` (memory controller) where present, 0.0..=1.0.
    pub memory_activity_ratio: Option<f32>,
    /// `average_mm_activity` (UVD/VCN) or v3.0 `average_vcn_activity`, 0.0..=1.0.
    pub media_activity_ratio: Option<f32>,
    /// `average_socket_power` (v1.4/v1.5: `curr_socket_power`). W.
    pub socket_power_watts: Option<f32>,
    /// `current_gfxclk`, else `average_gfxclk_frequency`. Hz.
    pub gfx_clock_hz: Option<u64>,
    /// `current_socclk`, else `average_socclk_frequency`. Hz.
    pub soc_clock_hz: Option<u64>,
    /// `current_uclk`, else `average_uclk_frequency`. Hz. On APUs this is the memory (UMC) clock:
    /// renoir reports `CLOCK_UMCCLK` there, vangogh its `MemclkFrequency`; the data-fabric clock
    /// (`current_fclk`/`average_fclk_frequency`) is deliberately not used.
    pub memory_clock_hz: Option<u64>,
    /// `current_fan_speed` (v1.0–v1.3 only; APUs report `fan_pwm`, not RPM). RPM.
    pub fan_rpm: Option<u32>,
    /// `throttle_status`: ASIC-dependent raw bits (absent in v3.0).
    pub throttle_status: Option<u32>,
    /// `indep_throttle_status`: ASIC-independent bits, see [`throttler`] (v1.3, v2.2+).
    pub indep_throttle_status: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsError {
    /// Shorter than the 4-byte header.
    TooShort { len: usize },
    /// structure_size 0xFFFF or format/content 0xFF: the firmware does not provide metrics.
    Unsupported,
    /// A revision this parser does not know.
    UnknownRevision { format: u8, content: u8 },
    /// The buffer (or the header's structure_size) is shorter than the revision's struct.
    Truncated {
        format: u8,
        content: u8,
        need: usize,
        have: usize,
    },
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MetricsError::TooShort { len } => write!(
                f,
                "gpu_metrics is {len} bytes, shorter than its 4-byte header"
            ),
            MetricsError::Unsupported => write!(
                f,
                "gpu_metrics header is all-ones: the firmware does not provide metrics"
            ),
            MetricsError::UnknownRevision { format, content } => write!(
                f,
                "gpu_metrics v{format}.{content} is a format revision this parser does not know"
            ),
            MetricsError::Truncated {
                format,
                content,
                need,
                have,
            } => write!(
                f,
                "gpu_metrics v{format}.{content} needs {need} bytes but only {have} are available \
                 (buffer or structure_size too short)"
            ),
        }
    }
}

/// Bit numbers of the ASIC-independent throttle status (`SMU_THROTTLER_*_BIT` in
/// `drivers/gpu/drm/amd/pm/swsmu/inc/amdgpu_smu.h`).
pub mod throttler {
    // Power throttlers.
    pub const PPT0: u32 = 0;
    pub const PPT1: u32 = 1;
    pub const PPT2: u32 = 2;
    pub const PPT3: u32 = 3;
    pub const SPL: u32 = 4;
    pub const FPPT: u32 = 5;
    pub const SPPT: u32 = 6;
    pub const SPPT_APU: u32 = 7;
    // Current throttlers.
    pub const TDC_GFX: u32 = 16;
    pub const TDC_SOC: u32 = 17;
    pub const TDC_MEM: u32 = 18;
    pub const TDC_VDD: u32 = 19;
    pub const TDC_CVIP: u32 = 20;
    pub const EDC_CPU: u32 = 21;
    pub const EDC_GFX: u32 = 22;
    pub const APCC: u32 = 23;
    // Temperature.
    pub const TEMP_GPU: u32 = 32;
    pub const TEMP_CORE: u32 = 33;
    pub const TEMP_MEM: u32 = 34;
    pub const TEMP_EDGE: u32 = 35;
    pub const TEMP_HOTSPOT: u32 = 36;
    pub const TEMP_SOC: u32 = 37;
    pub const TEMP_VR_GFX: u32 = 38;
    pub const TEMP_VR_SOC: u32 = 39;
    pub const TEMP_VR_MEM0: u32 = 40;
    pub const TEMP_VR_MEM1: u32 = 41;
    pub const TEMP_LIQUID0: u32 = 42;
    pub const TEMP_LIQUID1: u32 = 43;
    pub const VRHOT0: u32 = 44;
    pub const VRHOT1: u32 = 45;
    pub const PROCHOT_CPU: u32 = 46;
    pub const PROCHOT_GFX: u32 = 47;
    // Other.
    pub const PPM: u32 = 56;
    pub const FIT: u32 = 57;
}

/// Mask of the bits `first..=last`.
const fn bits(first: u32, last: u32) -> u64 {
    (u64::MAX >> (63 - last)) & (u64::MAX << first)
}

/// Reason groups in report order, each with the mask of its `SMU_THROTTLER_*` bits.
const REASON_GROUPS: [(&str, u64); 9] = [
    ("power", bits(throttler::PPT0, throttler::SPPT_APU)),
    ("current", bits(throttler::TDC_GFX, throttler::TDC_CVIP)),
    ("edc", bits(throttler::EDC_CPU, throttler::EDC_GFX)),
    (
        "thermal",
        bits(throttler::TEMP_GPU, throttler::TEMP_LIQUID1),
    ),
    ("vr-hot", bits(throttler::VRHOT0, throttler::VRHOT1)),
    (
        "prochot",
        bits(throttler::PROCHOT_CPU, throttler::PROCHOT_GFX),
    ),
    ("apcc", 1 << throttler::APCC),
    ("ppm", 1 << throttler::PPM),
    ("fit", 1 << throttler::FIT),
];

/// Names of the throttle reasons set in an ASIC-independent throttle status, grouped the way a
/// user reads them: "power" (PPT*, SPL, FPPT, SPPT*), "current" (TDC_*), "edc" (EDC_*), "thermal"
/// (TEMP_*), "vr-hot" (VRHOT*), "prochot" (PROCHOT_*), "apcc", "ppm", "fit" — each name at most
/// once, in that order.
///
/// Bits the kernel does not define (8..=15, 24..=31, 48..=55, 58..=63) are ignored.
pub fn indep_throttle_reasons(status: u64) -> impl Iterator<Item = &'static str> {
    REASON_GROUPS
        .iter()
        .filter(move |(_, mask)| status & mask != 0)
        .map(|(name, _)| *name)
}

const HEADER_LEN: usize = 4;

/// Decodes a `gpu_metrics` blob. See the module documentation for the revisions and units.
pub fn parse(bytes: &[u8]) -> Result<GpuMetrics, MetricsError> {
    let Some(&[size_lo, size_hi, format, content]) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(MetricsError::TooShort { len: bytes.len() });
    };
    let structure_size = u16::from_le_bytes([size_lo, size_hi]);
    if structure_size == u16::MAX || format == u8::MAX || content == u8::MAX {
        return Err(MetricsError::Unsupported);
    }
    let layout =
        Layout::select(format, content).ok_or(MetricsError::UnknownRevision { format, content })?;

    let declared = usize::from(structure_size);
    let have = if declared >= HEADER_LEN {
        declared.min(bytes.len())
    } else {
        bytes.len()
    };
    let need = layout.size();
    if have < need {
        return Err(MetricsError::Truncated {
            format,
            content,
            need,
            have,
        });
    }
    let fields = Fields(bytes.get(..have).unwrap_or(bytes));

    let mut m = layout.decode(fields);
    m.format_revision = format;
    m.content_revision = content;
    Ok(m)
}

/// The struct layout a header selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `gpu_metrics_v1_0`.
    V1_0,
    /// `gpu_metrics_v1_1` .. `v1_3` (content 1..=3): same offsets, longer tails.
    V1_1 { content: u8 },
    /// `gpu_metrics_v1_4`.
    V1_4,
    /// `gpu_metrics_v1_5`.
    V1_5,
    /// Format 1, content 6 or newer: only the prefix shared by every v1.4+ struct.
    V1Prefix,
    /// `gpu_metrics_v2_0`.
    V2_0,
    /// `gpu_metrics_v2_1` .. `v2_4` (content 1..=4; newer contents use 4).
    V2_1 { content: u8 },
    /// `gpu_metrics_v3_0` (and newer format-3 contents).
    V3_0,
}

impl Layout {
    fn select(format: u8, content: u8) -> Option<Layout> {
        Some(match (format, content) {
            (1, 0) => Layout::V1_0,
            (1, 1..=3) => Layout::V1_1 { content },
            (1, 4) => Layout::V1_4,
            (1, 5) => Layout::V1_5,
            (1, _) => Layout::V1Prefix,
            (2, 0) => Layout::V2_0,
            (2, _) => Layout::V2_1 {
                content: content.min(4),
            },
            (3, _) => Layout::V3_0,
            _ => return None,
        })
    }

    /// `sizeof` the struct (rounded up to its 8-byte alignment, as the kernel reports it).
    fn size(self) -> usize {
        match self {
            Layout::V1_0 => 80,
            Layout::V1_1 { content: 1 } => 96,
            Layout::V1_1 { content: 2 } => 104,
            Layout::V1_1 { .. } => 120,
            Layout::V1_4 => 288,
            Layout::V1_5 => 360,
            Layout::V1Prefix => V1_PREFIX_LEN,
            Layout::V2_0 => 120,
            Layout::V2_1 { content: 1 } => 120,
            Layout::V2_1 { content: 2 } => 128,
            Layout::V2_1 { content: 3 } => 152,
            Layout::V2_1 { .. } => 168,
            Layout::V3_0 => 264,
        }
    }

    fn decode(self, f: Fields<'_>) -> GpuMetrics {
        match self {
            Layout::V1_0 => decode_dgpu(f, &DGPU_V1_0),
            Layout::V1_1 { content } => decode_dgpu(
                f,
                &DgpuOffsets {
                    indep_throttle_status: (content >= 3).then_some(112),
                    ..DGPU_V1_1
                },
            ),
            Layout::V1_4 => decode_mi(f, &MI_V1_4),
            Layout::V1_5 => decode_mi(f, &MI_V1_5),
            Layout::V1Prefix => decode_v1_prefix(f),
            Layout::V2_0 => decode_apu(f, &APU_V2_0),
            Layout::V2_1 { content } => decode_apu(
                f,
                &ApuOffsets {
                    indep_throttle_status: (content >= 2).then_some(120),
                    ..APU_V2_1
                },
            ),
            Layout::V3_0 => decode_v3_0(f),
        }
    }
}

/// Bounds-checked little-endian reads; an all-ones value ("not supported") reads as None, and so
/// does an offset past the end (which the size check before decoding already rules out).
#[derive(Clone, Copy)]
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u16(self, off: usize) -> Option<u16> {
        let v = u16::from_le_bytes(*self.0.get(off..)?.first_chunk::<2>()?);
        (v != u16::MAX).then_some(v)
    }

    fn u32(self, off: usize) -> Option<u32> {
        let v = u32::from_le_bytes(*self.0.get(off..)?.first_chunk::<4>()?);
        (v != u32::MAX).then_some(v)
    }

    fn u64(self, off: usize) -> Option<u64> {
        let v = u64::from_le_bytes(*self.0.get(off..)?.first_chunk::<8>()?);
        (v != u64::MAX).then_some(v)
    }

    /// The first supported element of a `u16` array of `len` elements at `off`.
    fn first_u16(self, off: usize, len: usize) -> Option<u16> {
        (0..len).find_map(|i| self.u16(off + 2 * i))
    }
}

/// Temperature in `1/divisor` °C → °C.
fn celsius(raw: Option<u16>, divisor: f32) -> Option<f32> {
    raw.map(|v| f32::from(v) / divisor)
}

/// Activity in `1/full_scale` of "always busy" → ratio. A value above full scale cannot be read
/// in this revision's unit (the firmware disagrees with the header), so it is reported as missing
/// rather than clamped to a believable-looking 100 %.
fn ratio(raw: Option<u16>, full_scale: u16) -> Option<f32> {
    raw.filter(|&v| v <= full_scale)
        .map(|v| f32::from(v) / f32::from(full_scale))
}

/// MHz → Hz.
fn hz(mhz: Option<u16>) -> Option<u64> {
    mhz.map(|v| u64::from(v) * 1_000_000)
}

/// mW → W.
fn watts_from_milliwatts(mw: Option<u32>) -> Option<f32> {
    mw.map(|v| v as f32 / 1000.0)
}

/// Offsets of the members decoded from the dGPU layouts v1.0–v1.3 (all `u16` unless noted).
struct DgpuOffsets {
    temperature_edge: usize,              // °C
    temperature_hotspot: usize,           // °C
    temperature_mem: usize,               // °C
    average_gfx_activity: usize,          // %
    average_umc_activity: usize,          // %
    average_mm_activity: usize,           // %
    average_socket_power: usize,          // W
    average_gfxclk_frequency: usize,      // MHz
    average_socclk_frequency: usize,      // MHz
    average_uclk_frequency: usize,        // MHz
    current_gfxclk: usize,                // MHz
    current_socclk: usize,                // MHz
    current_uclk: usize,                  // MHz
    throttle_status: usize,               // u32, ASIC-dependent bits
    current_fan_speed: usize,             // RPM
    indep_throttle_status: Option<usize>, // u64, SMU_THROTTLER_* bits (v1.3)
}

/// `gpu_metrics_v1_0`: 4 bytes of hidden padding after the header put `system_clock_counter` (u64)
/// at 8; 80 bytes in all.
const DGPU_V1_0: DgpuOffsets = DgpuOffsets {
    temperature_edge: 16,
    temperature_hotspot: 18,
    temperature_mem: 20,
    average_gfx_activity: 28,
    average_umc_activity: 30,
    average_mm_activity: 32,
    average_socket_power: 34,
    average_gfxclk_frequency: 40,
    average_socclk_frequency: 42,
    average_uclk_frequency: 44,
    current_gfxclk: 54,
    current_socclk: 56,
    current_uclk: 58,
    throttle_status: 68,
    current_fan_speed: 72,
    indep_throttle_status: None,
};

/// `gpu_metrics_v1_1` .. `v1_3` (96 / 104 / 120 bytes); v1.3 adds `indep_throttle_status` at 112.
const DGPU_V1_1: DgpuOffsets = DgpuOffsets {
    temperature_edge: 4,
    temperature_hotspot: 6,
    temperature_mem: 8,
    average_gfx_activity: 16,
    average_umc_activity: 18,
    average_mm_activity: 20,
    average_socket_power: 22,
    average_gfxclk_frequency: 40,
    average_socclk_frequency: 42,
    average_uclk_frequency: 44,
    current_gfxclk: 54,
    current_socclk: 56,
    current_uclk: 58,
    throttle_status: 68,
    current_fan_speed: 72,
    indep_throttle_status: None,
};

fn decode_dgpu(f: Fields<'_>, o: &DgpuOffsets) -> GpuMetrics {
    GpuMetrics {
        temperature_edge_celsius: celsius(f.u16(o.temperature_edge), 1.0),
        temperature_hotspot_celsius: celsius(f.u16(o.temperature_hotspot), 1.0),
        temperature_mem_celsius: celsius(f.u16(o.temperature_mem), 1.0),
        gfx_activity_ratio: ratio(f.u16(o.average_gfx_activity), 100),
        memory_activity_ratio: ratio(f.u16(o.average_umc_activity), 100),
        media_activity_ratio: ratio(f.u16(o.average_mm_activity), 100),
        socket_power_watts: f.u16(o.average_socket_power).map(f32::from),
        gfx_clock_hz: hz(f
            .u16(o.current_gfxclk)
            .or(f.u16(o.average_gfxclk_frequency))),
        soc_clock_hz: hz(f
            .u16(o.current_socclk)
            .or(f.u16(o.average_socclk_frequency))),
        memory_clock_hz: hz(f.u16(o.current_uclk).or(f.u16(o.average_uclk_frequency))),
        fan_rpm: f.u16(o.current_fan_speed).map(u32::from),
        throttle_status: f.u32(o.throttle_status),
        indep_throttle_status: o.indep_throttle_status.and_then(|off| f.u64(off)),
        ..GpuMetrics::default()
    }
}

/// Offsets of the members decoded from the Instinct (MI300, smu_v13_0_6) layouts v1.4/v1.5.
struct MiOffsets {
    throttle_status: usize, // u32, ASIC-dependent bits
    current_gfxclk: usize,  // u16[MAX_GFX_CLKS = 8], MHz, one per XCC
    current_socclk: usize,  // u16[MAX_CLKS = 4], MHz
    current_uclk: usize,    // u16, MHz
}

/// Shared by every v1.4+ struct: hotspot °C, mem °C, vrsoc °C, curr_socket_power W,
/// average_gfx_activity %, average_umc_activity %.
const V1_PREFIX_LEN: usize = 16;
const V1_PREFIX_TEMPERATURE_HOTSPOT: usize = 4; // °C
const V1_PREFIX_TEMPERATURE_MEM: usize = 6; // °C
const V1_PREFIX_CURR_SOCKET_POWER: usize = 10; // W
const V1_PREFIX_AVERAGE_GFX_ACTIVITY: usize = 12; // %
const V1_PREFIX_AVERAGE_UMC_ACTIVITY: usize = 14; // %

/// `gpu_metrics_v1_4` (288 bytes).
const MI_V1_4: MiOffsets = MiOffsets {
    throttle_status: 40,
    current_gfxclk: 240,
    current_socclk: 256,
    current_uclk: 280,
};

/// `gpu_metrics_v1_5` (360 bytes): `jpeg_activity[32]` at 24 pushes everything after it by 64.
const MI_V1_5: MiOffsets = MiOffsets {
    throttle_status: 104,
    current_gfxclk: 312,
    current_socclk: 328,
    current_uclk: 352,
};

fn decode_v1_prefix(f: Fields<'_>) -> GpuMetrics {
    GpuMetrics {
        temperature_hotspot_celsius: celsius(f.u16(V1_PREFIX_TEMPERATURE_HOTSPOT), 1.0),
        temperature_mem_celsius: celsius(f.u16(V1_PREFIX_TEMPERATURE_MEM), 1.0),
        gfx_activity_ratio: ratio(f.u16(V1_PREFIX_AVERAGE_GFX_ACTIVITY), 100),
        memory_activity_ratio: ratio(f.u16(V1_PREFIX_AVERAGE_UMC_ACTIVITY), 100),
        socket_power_watts: f.u16(V1_PREFIX_CURR_SOCKET_POWER).map(f32::from),
        ..GpuMetrics::default()
    }
}

fn decode_mi(f: Fields<'_>, o: &MiOffsets) -> GpuMetrics {
    GpuMetrics {
        gfx_clock_hz: hz(f.first_u16(o.current_gfxclk, 8)),
        soc_clock_hz: hz(f.first_u16(o.current_socclk, 4)),
        memory_clock_hz: hz(f.u16(o.current_uclk)),
        throttle_status: f.u32(o.throttle_status),
        ..decode_v1_prefix(f)
    }
}

/// Offsets of the members decoded from the APU layouts v2.0–v2.4 (all `u16` unless noted).
struct ApuOffsets {
    temperature_gfx: usize,               // centi-°C
    temperature_soc: usize,               // centi-°C
    average_gfx_activity: usize,          // centi-%
    average_mm_activity: usize,           // centi-%
    average_socket_power: usize,          // mW
    average_gfxclk_frequency: usize,      // MHz
    average_socclk_frequency: usize,      // MHz
    average_uclk_frequency: usize,        // MHz
    current_gfxclk: usize,                // MHz
    current_socclk: usize,                // MHz
    current_uclk: usize,                  // MHz
    throttle_status: usize,               // u32, ASIC-dependent bits
    indep_throttle_status: Option<usize>, // u64, SMU_THROTTLER_* bits (v2.2+)
}

/// `gpu_metrics_v2_0` (120 bytes): like v1.0, `system_clock_counter` sits at 8 after 4 bytes of
/// hidden padding.
const APU_V2_0: ApuOffsets = ApuOffsets {
    temperature_gfx: 16,
    temperature_soc: 18,
    average_gfx_activity: 40,
    average_mm_activity: 42,
    average_socket_power: 44,
    average_gfxclk_frequency: 68,
    average_socclk_frequency: 70,
    average_uclk_frequency: 72,
    current_gfxclk: 80,
    current_socclk: 82,
    current_uclk: 84,
    throttle_status: 112,
    indep_throttle_status: None,
};

/// `gpu_metrics_v2_1` .. `v2_4` (120 / 128 / 152 / 168 bytes); v2.2 adds `indep_throttle_status`
/// at 120 after `fan_pwm` and `padding[3]`.
const APU_V2_1: ApuOffsets = ApuOffsets {
    temperature_gfx: 4,
    temperature_soc: 6,
    average_gfx_activity: 28,
    average_mm_activity: 30,
    average_socket_power: 40,
    average_gfxclk_frequency: 64,
    average_socclk_frequency: 66,
    average_uclk_frequency: 68,
    current_gfxclk: 76,
    current_socclk: 78,
    current_uclk: 80,
    throttle_status: 108,
    indep_throttle_status: None,
};

fn decode_apu(f: Fields<'_>, o: &ApuOffsets) -> GpuMetrics {
    GpuMetrics {
        temperature_edge_celsius: celsius(f.u16(o.temperature_gfx), 100.0),
        temperature_soc_celsius: celsius(f.u16(o.temperature_soc), 100.0),
        gfx_activity_ratio: ratio(f.u16(o.average_gfx_activity), 10_000),
        media_activity_ratio: ratio(f.u16(o.average_mm_activity), 10_000),
        socket_power_watts: watts_from_milliwatts(f.u16(o.average_socket_power).map(u32::from)),
        gfx_clock_hz: hz(f
            .u16(o.current_gfxclk)
            .or(f.u16(o.average_gfxclk_frequency))),
        soc_clock_hz: hz(f
            .u16(o.current_socclk)
            .or(f.u16(o.average_socclk_frequency))),
        memory_clock_hz: hz(f.u16(o.current_uclk).or(f.u16(o.average_uclk_frequency))),
        throttle_status: f.u32(o.throttle_status),
        indep_throttle_status: o.indep_throttle_status.and_then(|off| f.u64(off)),
        ..GpuMetrics::default()
    }
}

/// `gpu_metrics_v3_0` (264 bytes; the layout released in Linux 6.7). Hidden padding: 2 bytes at
/// 102 (before `system_clock_counter`, u64 at 104) and 2 bytes at 118 (after `average_ipu_power`).
/// It has no current clocks, throttle status bits or fan.
mod v3_0 {
    pub const TEMPERATURE_GFX: usize = 4; // centi-°C
    pub const TEMPERATURE_SOC: usize = 6; // centi-°C
    /// The header says "% [0-100]", as does smu14_driver_if_v14_0_0.h; the driver copies the
    /// firmware value unchanged. (smu_v14_0_0's own sensor path divides it by 100, which does not
    /// match either header; this decoder follows the headers.)
    pub const AVERAGE_GFX_ACTIVITY: usize = 42; // %
    pub const AVERAGE_VCN_ACTIVITY: usize = 44; // %
    pub const AVERAGE_SOCKET_POWER: usize = 112; // u32, mW
    pub const AVERAGE_GFXCLK_FREQUENCY: usize = 174; // MHz
    pub const AVERAGE_SOCCLK_FREQUENCY: usize = 176; // MHz
    pub const AVERAGE_UCLK_FREQUENCY: usize = 186; // MHz
}

fn decode_v3_0(f: Fields<'_>) -> GpuMetrics {
    GpuMetrics {
        temperature_edge_celsius: celsius(f.u16(v3_0::TEMPERATURE_GFX), 100.0),
        temperature_soc_celsius: celsius(f.u16(v3_0::TEMPERATURE_SOC), 100.0),
        gfx_activity_ratio: ratio(f.u16(v3_0::AVERAGE_GFX_ACTIVITY), 100),
        media_activity_ratio: ratio(f.u16(v3_0::AVERAGE_VCN_ACTIVITY), 100),
        socket_power_watts: watts_from_milliwatts(f.u32(v3_0::AVERAGE_SOCKET_POWER)),
        gfx_clock_hz: hz(f.u16(v3_0::AVERAGE_GFXCLK_FREQUENCY)),
        soc_clock_hz: hz(f.u16(v3_0::AVERAGE_SOCCLK_FREQUENCY)),
        memory_clock_hz: hz(f.u16(v3_0::AVERAGE_UCLK_FREQUENCY)),
        ..GpuMetrics::default()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::{vec, vec::Vec};

    const NA16: u16 = u16::MAX;
    const NA32: u32 = u32::MAX;
    const NA64: u64 = u64::MAX;

    /// Lays a C struct out member by member with natural alignment, as the kernel's compiler does,
    /// independently of the decoder's offset tables. Hidden padding is 0xFF, as the kernel's
    /// `memset(0xFF)` leaves it; `finish` rounds up to the 8-byte alignment every gpu_metrics
    /// struct has and writes `structure_size`.
    struct CStruct(Vec<u8>);

    impl CStruct {
        fn new(format: u8, content: u8) -> Self {
            CStruct(vec![0, 0, format, content])
        }
        fn align(&mut self, to: usize) -> &mut Self {
            while !self.0.len().is_multiple_of(to) {
                self.0.push(0xFF);
            }
            self
        }
        fn u8(&mut self, v: u8) -> &mut Self {
            self.0.push(v);
            self
        }
        fn u16(&mut self, v: u16) -> &mut Self {
            self.align(2).0.extend_from_slice(&v.to_le_bytes());
            self
        }
        /// `u16 member[n]`: `vals` first, the rest unsupported.
        fn u16s(&mut self, vals: &[u16], n: usize) -> &mut Self {
            assert!(vals.len() <= n);
            for i in 0..n {
                self.u16(vals.get(i).copied().unwrap_or(NA16));
            }
            self
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.align(4).0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.align(8).0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64s(&mut self, v: u64, n: usize) -> &mut Self {
            for _ in 0..n {
                self.u64(v);
            }
            self
        }
        fn finish(&mut self) -> Vec<u8> {
            self.align(8);
            let size = u16::try_from(self.0.len()).unwrap().to_le_bytes();
            self.0[..2].copy_from_slice(&size);
            self.0.clone()
        }
    }

    const FIXTURE_V1_0: &[u8] = include_bytes!("../../tests/fixtures/gpu-metrics/v1_0-navi10.bin");
    const FIXTURE_V1_3: &[u8] = include_bytes!("../../tests/fixtures/gpu-metrics/v1_3-navi21.bin");
    const FIXTURE_V2_0: &[u8] = include_bytes!("../../tests/fixtures/gpu-metrics/v2_0-renoir.bin");
    const FIXTURE_V2_2: &[u8] = include_bytes!("../../tests/fixtures/gpu-metrics/v2_2-vangogh.bin");
    const FIXTURE_V3_0: &[u8] = include_bytes!("../../tests/fixtures/gpu-metrics/v3_0-strix.bin");
    const FIXTURE_UNSUPPORTED: &[u8] =
        include_bytes!("../../tests/fixtures/gpu-metrics/unsupported.bin");

    /// `gpu_metrics_v1_0` as navi10_ppt.c fills it on an RX 5700 XT (same values as the fixture).
    fn v1_0_navi10() -> Vec<u8> {
        CStruct::new(1, 0)
            .u64(420_000_000_000) // system_clock_counter
            .u16(55) // temperature_edge
            .u16(68) // temperature_hotspot
            .u16(62) // temperature_mem
            .u16(48) // temperature_vrgfx
            .u16(45) // temperature_vrsoc
            .u16(50) // temperature_vrmem
            .u16(85) // average_gfx_activity
            .u16(30) // average_umc_activity
            .u16(0) // average_mm_activity
            .u16(180) // average_socket_power
            .u32(123_456_789) // energy_accumulator
            .u16(1880) // average_gfxclk_frequency
            .u16(1100) // average_socclk_frequency
            .u16(875) // average_uclk_frequency
            .u16(0) // average_vclk0_frequency
            .u16(0) // average_dclk0_frequency
            .u16(NA16) // average_vclk1_frequency
            .u16(NA16) // average_dclk1_frequency
            .u16(1905) // current_gfxclk
            .u16(1100) // current_socclk
            .u16(875) // current_uclk
            .u16(0) // current_vclk0
            .u16(0) // current_dclk0
            .u16(NA16) // current_vclk1
            .u16(NA16) // current_dclk1
            .u32(0) // throttle_status
            .u16(1400) // current_fan_speed
            .u8(16) // pcie_link_width
            .u8(160) // pcie_link_speed
            .finish()
    }

    /// The members v1.1, v1.2 and v1.3 share, RX 6800 XT values.
    fn v1_1_common(content: u8) -> CStruct {
        let mut s = CStruct::new(1, content);
        s.u16(62) // temperature_edge
            .u16(78) // temperature_hotspot
            .u16(70) // temperature_mem
            .u16(58) // temperature_vrgfx
            .u16(52) // temperature_vrsoc
            .u16(56) // temperature_vrmem
            .u16(97) // average_gfx_activity
            .u16(41) // average_umc_activity
            .u16(0) // average_mm_activity
            .u16(255) // average_socket_power
            .u64(4_823_718_519) // energy_accumulator
            .u64(1_234_567_890_123) // system_clock_counter
            .u16(2236) // average_gfxclk_frequency
            .u16(NA16) // average_socclk_frequency (sienna_cichlid leaves it)
            .u16(1000) // average_uclk_frequency
            .u16s(&[0, 0, 0, 0], 4) // average_{v,d}clk{0,1}_frequency
            .u16(2250) // current_gfxclk
            .u16(1200) // current_socclk
            .u16(1000) // current_uclk
            .u16s(&[0, 0, 0, 0], 4) // current_{v,d}clk{0,1}
            .u32(0) // throttle_status
            .u16(1650) // current_fan_speed
            .u16(16) // pcie_link_width
            .u16(160) // pcie_link_speed
            .u16(NA16) // padding
            .u32(NA32) // gfx_activity_acc
            .u32(NA32) // mem_activity_acc
            .u16s(&[], 4); // temperature_hbm
        s
    }

    const NAVI21_INDEP: u64 = 1 << throttler::PPT0 | 1 << throttler::TEMP_HOTSPOT;

    fn v1_3_navi21() -> Vec<u8> {
        v1_1_common(3)
            .u64(NA64) // firmware_timestamp
            .u16(1050) // voltage_soc
            .u16(1150) // voltage_gfx
            .u16(1350) // voltage_mem
            .u16(NA16) // padding1
            .u64(NAVI21_INDEP) // indep_throttle_status
            .finish()
    }

    /// The members v2.1 .. v2.4 share, Steam Deck values as vangogh_ppt.c fills them.
    fn v2_1_common(content: u8) -> CStruct {
        let mut s = CStruct::new(2, content);
        s.u16(6550) // temperature_gfx
            .u16(6025) // temperature_soc
            .u16s(&[6300, 6175, 6400, 6250], 8) // temperature_core
            .u16s(&[6100], 2) // temperature_l3
            .u16(8800) // average_gfx_activity
            .u16(500) // average_mm_activity
            .u64(987_654_321_000) // system_clock_counter
            .u16(14_500) // average_socket_power
            .u16(6200) // average_cpu_power
            .u16(1900) // average_soc_power
            .u16(5600) // average_gfx_power
            .u16s(&[1450, 1500, 1400, 1550], 8) // average_core_power
            .u16(1580) // average_gfxclk_frequency
            .u16(933) // average_socclk_frequency
            .u16(800) // average_uclk_frequency
            .u16(800) // average_fclk_frequency
            .u16(0) // average_vclk_frequency
            .u16(0) // average_dclk_frequency
            .u16(1600) // current_gfxclk
            .u16(933) // current_socclk
            .u16(800) // current_uclk
            .u16(800) // current_fclk
            .u16(0) // current_vclk
            .u16(0) // current_dclk
            .u16s(&[3500, 3480, 3510, 3495], 8) // current_coreclk
            .u16s(&[3500], 2) // current_l3clk
            .u32(1) // throttle_status (vangogh THROTTLER_STATUS_BIT_SPL)
            .u16(NA16) // fan_pwm
            .u16s(&[], 3); // padding
        s
    }

    const VANGOGH_INDEP: u64 = 1 << throttler::SPL;

    fn v2_2_vangogh() -> Vec<u8> {
        v2_1_common(2)
            .u64(VANGOGH_INDEP) // indep_throttle_status
            .finish()
    }

    /// `gpu_metrics_v2_0` as renoir_ppt.c first filled it (Ryzen 7 4800U).
    fn v2_0_renoir() -> Vec<u8> {
        CStruct::new(2, 0)
            .u64(555_000_111_222) // system_clock_counter
            .u16(5850) // temperature_gfx
            .u16(5500) // temperature_soc
            .u16s(&[6125, 6050, 6200, 6000, 5975, 6100, 6150, 6025], 8) // temperature_core
            .u16s(&[5900, 5925], 2) // temperature_l3
            .u16(4500) // average_gfx_activity
            .u16(0) // average_mm_activity
            .u16(25_000) // average_socket_power
            .u16(14_000) // average_cpu_power
            .u16(3500) // average_soc_power
            .u16(NA16) // average_gfx_power
            .u16s(&[1510, 1490, 1620, 1450, 1400, 1580, 1530, 1470], 8) // average_core_power
            .u16(1700) // average_gfxclk_frequency
            .u16(1200) // average_socclk_frequency
            .u16(NA16) // average_uclk_frequency
            .u16(1600) // average_fclk_frequency
            .u16(0) // average_vclk_frequency
            .u16(NA16) // average_dclk_frequency
            .u16(1750) // current_gfxclk
            .u16(1200) // current_socclk
            .u16(1600) // current_uclk
            .u16(1600) // current_fclk
            .u16(0) // current_vclk
            .u16(0) // current_dclk
            .u16s(&[4150, 4100, 4200, 4050, 4000, 4175, 4125, 4075], 8) // current_coreclk
            .u16s(&[4150, 4100], 2) // current_l3clk
            .u32(0) // throttle_status
            .u16(0) // fan_pwm
            .u16(NA16) // padding
            .finish()
    }

    /// `gpu_metrics_v3_0` as smu_v14_0_0_ppt.c fills it (Ryzen AI 9 HX 370, 12 cores).
    fn v3_0_strix() -> Vec<u8> {
        let cores_temp = [
            5600, 5550, 5700, 5650, 5300, 5250, 5350, 5200, 5400, 5275, 5325, 5225,
        ];
        let cores_c0 = [35, 42, 28, 31, 12, 9, 15, 11, 8, 10, 14, 7];
        let cores_power = [780, 820, 760, 790, 410, 380, 430, 400, 370, 390, 420, 360];
        let cores_clk = [
            5050, 5100, 4980, 5020, 3300, 3250, 3310, 3280, 3200, 3260, 3290, 3240,
        ];
        CStruct::new(3, 0)
            .u16(5275) // temperature_gfx
            .u16(5050) // temperature_soc
            .u16s(&cores_temp, 16) // temperature_core
            .u16(4100) // temperature_skin
            .u16(73) // average_gfx_activity
            .u16(12) // average_vcn_activity
            .u16s(&[0; 8], 8) // average_ipu_activity
            .u16s(&cores_c0, 16) // average_core_c0_activity
            .u16(9800) // average_dram_reads
            .u16(4100) // average_dram_writes
            .u16(0) // average_ipu_reads
            .u16(0) // average_ipu_writes
            .u64(3_600_000_000_000) // system_clock_counter
            .u32(28_500) // average_socket_power
            .u16(0) // average_ipu_power
            .u32(27_800) // average_apu_power
            .u32(15_200) // average_gfx_power
            .u32(0) // average_dgpu_power
            .u32(9400) // average_all_core_power
            .u16s(&cores_power, 16) // average_core_power
            .u16(41_000) // average_sys_power
            .u16(28_000) // stapm_power_limit
            .u16(28_000) // current_stapm_power_limit
            .u16(2650) // average_gfxclk_frequency
            .u16(1100) // average_socclk_frequency
            .u16(0) // average_vpeclk_frequency
            .u16(0) // average_ipuclk_frequency
            .u16(2000) // average_fclk_frequency
            .u16(700) // average_vclk_frequency
            .u16(1000) // average_uclk_frequency
            .u16(0) // average_mpipu_frequency
            .u16s(&cores_clk, 16) // current_coreclk
            .u16(5100) // current_core_maxfreq
            .u16(2900) // current_gfx_maxfreq
            .u32(0) // throttle_residency_prochot
            .u32(1520) // throttle_residency_spl
            .u32(0) // throttle_residency_fppt
            .u32(310) // throttle_residency_sppt
            .u32(0) // throttle_residency_thm_core
            .u32(0) // throttle_residency_thm_gfx
            .u32(0) // throttle_residency_thm_soc
            .u32(1000) // time_filter_alphavalue
            .finish()
    }

    /// The MI300 layouts v1.4/v1.5 (smu_v13_0_6): members through `vcn_activity`, then (v1.5)
    /// `jpeg_activity`, then the rest.
    fn v1_4_or_5(content: u8) -> Vec<u8> {
        let mut s = CStruct::new(1, content);
        s.u16(71) // temperature_hotspot
            .u16(66) // temperature_mem
            .u16(60) // temperature_vrsoc
            .u16(560) // curr_socket_power
            .u16(93) // average_gfx_activity
            .u16(38) // average_umc_activity
            .u16s(&[0, 0, 0, 0], 4); // vcn_activity
        if content >= 5 {
            s.u16s(&[0; 32], 32); // jpeg_activity
        }
        s.u64(77) // energy_accumulator
            .u64(88) // system_clock_counter
            .u32(0x40) // throttle_status
            .u32(0xFF) // gfxclk_lock_status
            .u16(16) // pcie_link_width
            .u16(320) // pcie_link_speed
            .u16(16) // xgmi_link_width
            .u16(32) // xgmi_link_speed
            .u32(1) // gfx_activity_acc
            .u32(2) // mem_activity_acc
            .u64s(3, 5); // pcie_bandwidth_acc .. pcie_replay_rover_count_acc
        if content >= 5 {
            s.u32(0) // pcie_nak_sent_count_acc
                .u32(0); // pcie_nak_rcvd_count_acc
        }
        s.u64s(4, 16) // xgmi_read_data_acc, xgmi_write_data_acc
            .u64(5) // firmware_timestamp
            .u16s(&[NA16, 2100, 2100, 2100, 2100, 2100, 2100, 2100], 8) // current_gfxclk
            .u16s(&[1143, 1143, 1143, 1143], 4) // current_socclk
            .u16s(&[0; 4], 4) // current_vclk0
            .u16s(&[0; 4], 4) // current_dclk0
            .u16(1300) // current_uclk
            .u16(NA16) // padding
            .finish()
    }

    fn expect_navi21() -> GpuMetrics {
        GpuMetrics {
            format_revision: 1,
            content_revision: 3,
            temperature_edge_celsius: Some(62.0),
            temperature_hotspot_celsius: Some(78.0),
            temperature_mem_celsius: Some(70.0),
            temperature_soc_celsius: None,
            gfx_activity_ratio: Some(0.97),
            memory_activity_ratio: Some(0.41),
            media_activity_ratio: Some(0.0),
            socket_power_watts: Some(255.0),
            gfx_clock_hz: Some(2_250_000_000),
            soc_clock_hz: Some(1_200_000_000),
            memory_clock_hz: Some(1_000_000_000),
            fan_rpm: Some(1650),
            throttle_status: Some(0),
            indep_throttle_status: Some(NAVI21_INDEP),
        }
    }

    fn expect_vangogh() -> GpuMetrics {
        GpuMetrics {
            format_revision: 2,
            content_revision: 2,
            temperature_edge_celsius: Some(65.5),
            temperature_hotspot_celsius: None,
            temperature_mem_celsius: None,
            temperature_soc_celsius: Some(60.25),
            gfx_activity_ratio: Some(0.88),
            memory_activity_ratio: None,
            media_activity_ratio: Some(0.05),
            socket_power_watts: Some(14.5),
            gfx_clock_hz: Some(1_600_000_000),
            soc_clock_hz: Some(933_000_000),
            memory_clock_hz: Some(800_000_000),
            fan_rpm: None,
            throttle_status: Some(1),
            indep_throttle_status: Some(VANGOGH_INDEP),
        }
    }

    fn expect_navi10() -> GpuMetrics {
        GpuMetrics {
            format_revision: 1,
            content_revision: 0,
            temperature_edge_celsius: Some(55.0),
            temperature_hotspot_celsius: Some(68.0),
            temperature_mem_celsius: Some(62.0),
            temperature_soc_celsius: None,
            gfx_activity_ratio: Some(0.85),
            memory_activity_ratio: Some(0.30),
            media_activity_ratio: Some(0.0),
            socket_power_watts: Some(180.0),
            gfx_clock_hz: Some(1_905_000_000),
            soc_clock_hz: Some(1_100_000_000),
            memory_clock_hz: Some(875_000_000),
            fan_rpm: Some(1400),
            throttle_status: Some(0),
            indep_throttle_status: None,
        }
    }

    fn expect_renoir() -> GpuMetrics {
        GpuMetrics {
            format_revision: 2,
            content_revision: 0,
            temperature_edge_celsius: Some(58.5),
            temperature_hotspot_celsius: None,
            temperature_mem_celsius: None,
            temperature_soc_celsius: Some(55.0),
            gfx_activity_ratio: Some(0.45),
            memory_activity_ratio: None,
            media_activity_ratio: Some(0.0),
            socket_power_watts: Some(25.0),
            gfx_clock_hz: Some(1_750_000_000),
            soc_clock_hz: Some(1_200_000_000),
            memory_clock_hz: Some(1_600_000_000),
            fan_rpm: None,
            throttle_status: Some(0),
            indep_throttle_status: None,
        }
    }

    fn expect_strix() -> GpuMetrics {
        GpuMetrics {
            format_revision: 3,
            content_revision: 0,
            temperature_edge_celsius: Some(52.75),
            temperature_hotspot_celsius: None,
            temperature_mem_celsius: None,
            temperature_soc_celsius: Some(50.5),
            gfx_activity_ratio: Some(0.73),
            memory_activity_ratio: None,
            media_activity_ratio: Some(0.12),
            socket_power_watts: Some(28.5),
            gfx_clock_hz: Some(2_650_000_000),
            soc_clock_hz: Some(1_100_000_000),
            memory_clock_hz: Some(1_000_000_000),
            fan_rpm: None,
            throttle_status: None,
            indep_throttle_status: None,
        }
    }

    /// (name, blob built here, the generator's fixture, expected decode)
    fn cases() -> [(&'static str, Vec<u8>, &'static [u8], GpuMetrics); 5] {
        [
            ("v1.0 navi10", v1_0_navi10(), FIXTURE_V1_0, expect_navi10()),
            ("v1.3 navi21", v1_3_navi21(), FIXTURE_V1_3, expect_navi21()),
            ("v2.0 renoir", v2_0_renoir(), FIXTURE_V2_0, expect_renoir()),
            (
                "v2.2 vangogh",
                v2_2_vangogh(),
                FIXTURE_V2_2,
                expect_vangogh(),
            ),
            ("v3.0 strix", v3_0_strix(), FIXTURE_V3_0, expect_strix()),
        ]
    }

    #[test]
    fn struct_sizes_match_the_kernel_layouts() {
        assert_eq!(v1_0_navi10().len(), 80);
        assert_eq!(v1_1_common(1).finish().len(), 96);
        assert_eq!(v1_3_navi21().len(), 120);
        assert_eq!(v1_4_or_5(4).len(), 288);
        assert_eq!(v1_4_or_5(5).len(), 360);
        assert_eq!(v2_0_renoir().len(), 120);
        assert_eq!(v2_1_common(1).finish().len(), 120);
        assert_eq!(v2_2_vangogh().len(), 128);
        assert_eq!(v3_0_strix().len(), 264);
    }

    #[test]
    fn member_by_member_blobs_decode_exactly() {
        for (name, blob, _, expected) in cases() {
            assert_eq!(parse(&blob), Ok(expected), "{name}");
        }
    }

    #[test]
    fn fixture_files_equal_the_member_by_member_blobs() {
        for (name, blob, fixture, _) in cases() {
            assert_eq!(
                blob.as_slice(),
                fixture,
                "{name}: make.py and this layout disagree"
            );
        }
    }

    #[test]
    fn fixture_files_decode_exactly() {
        for (name, _, fixture, expected) in cases() {
            assert_eq!(parse(fixture), Ok(expected), "{name}");
        }
        assert_eq!(parse(FIXTURE_UNSUPPORTED), Err(MetricsError::Unsupported));
    }

    #[test]
    fn fixture_throttle_reasons() {
        let navi21 = parse(FIXTURE_V1_3).unwrap();
        let reasons: Vec<_> =
            indep_throttle_reasons(navi21.indep_throttle_status.unwrap()).collect();
        assert_eq!(reasons, ["power", "thermal"]);
        let deck = parse(FIXTURE_V2_2).unwrap();
        let reasons: Vec<_> = indep_throttle_reasons(deck.indep_throttle_status.unwrap()).collect();
        assert_eq!(reasons, ["power"]);
    }

    #[test]
    fn v1_1_and_v1_2_share_v1_3_offsets_without_indep_status() {
        let v1_1 = v1_1_common(1).finish();
        let v1_2 = v1_1_common(2).u64(NA64).finish();
        assert_eq!(v1_2.len(), 104);
        for (content, blob) in [(1, v1_1), (2, v1_2)] {
            let expected = GpuMetrics {
                content_revision: content,
                indep_throttle_status: None,
                ..expect_navi21()
            };
            assert_eq!(parse(&blob), Ok(expected), "v1.{content}");
        }
    }

    #[test]
    fn v2_1_to_v2_4_share_offsets() {
        let v2_1 = v2_1_common(1).finish();
        let v2_3 = v2_1_common(3)
            .u64(VANGOGH_INDEP)
            .u16(6500) // average_temperature_gfx
            .u16(6000) // average_temperature_soc
            .u16s(&[6200], 8) // average_temperature_core
            .u16s(&[6000], 2) // average_temperature_l3
            .finish();
        let mut v2_4 = v2_1_common(4);
        v2_4.u64(VANGOGH_INDEP)
            .u16s(&[6500, 6000], 2)
            .u16s(&[6200], 8)
            .u16s(&[6000], 2)
            .u16s(&[1100, 950, 1000], 3) // average_{cpu,soc,gfx}_voltage
            .u16s(&[5000, 2000, 4000], 3); // average_{cpu,soc,gfx}_current
        let v2_4 = v2_4.finish();
        assert_eq!((v2_1.len(), v2_3.len(), v2_4.len()), (120, 152, 168));
        assert_eq!(
            parse(&v2_1),
            Ok(GpuMetrics {
                content_revision: 1,
                indep_throttle_status: None,
                ..expect_vangogh()
            })
        );
        for (content, blob) in [(3, &v2_3), (4, &v2_4)] {
            let expected = GpuMetrics {
                content_revision: content,
                ..expect_vangogh()
            };
            assert_eq!(parse(blob), Ok(expected), "v2.{content}");
        }
        // A newer content revision is read with the v2.4 layout.
        let mut v2_9 = v2_4.clone();
        v2_9[3] = 9;
        v2_9.extend_from_slice(&[0xAB; 16]);
        let expected = GpuMetrics {
            content_revision: 9,
            ..expect_vangogh()
        };
        assert_eq!(parse(&v2_9), Ok(expected));
        // ... but only when it is at least as long as v2.4.
        v2_9.truncate(160);
        v2_9[..2].copy_from_slice(&160u16.to_le_bytes());
        assert_eq!(
            parse(&v2_9),
            Err(MetricsError::Truncated {
                format: 2,
                content: 9,
                need: 168,
                have: 160
            })
        );
    }

    #[test]
    fn v1_4_and_v1_5_instinct_layouts() {
        for content in [4, 5] {
            let expected = GpuMetrics {
                format_revision: 1,
                content_revision: content,
                temperature_hotspot_celsius: Some(71.0),
                temperature_mem_celsius: Some(66.0),
                gfx_activity_ratio: Some(0.93),
                memory_activity_ratio: Some(0.38),
                socket_power_watts: Some(560.0),
                gfx_clock_hz: Some(2_100_000_000), // first supported XCC clock
                soc_clock_hz: Some(1_143_000_000),
                memory_clock_hz: Some(1_300_000_000),
                throttle_status: Some(0x40),
                ..GpuMetrics::default()
            };
            assert_eq!(parse(&v1_4_or_5(content)), Ok(expected), "v1.{content}");
        }
    }

    #[test]
    fn newer_v1_contents_decode_only_the_shared_prefix() {
        let mut blob = v1_4_or_5(5);
        blob[3] = 6;
        let expected = GpuMetrics {
            format_revision: 1,
            content_revision: 6,
            temperature_hotspot_celsius: Some(71.0),
            temperature_mem_celsius: Some(66.0),
            gfx_activity_ratio: Some(0.93),
            memory_activity_ratio: Some(0.38),
            socket_power_watts: Some(560.0),
            ..GpuMetrics::default()
        };
        assert_eq!(parse(&blob), Ok(expected));
    }

    #[test]
    fn newer_v3_content_uses_the_v3_0_layout() {
        let mut blob = v3_0_strix();
        blob[3] = 1;
        let expected = GpuMetrics {
            content_revision: 1,
            ..expect_strix()
        };
        assert_eq!(parse(&blob), Ok(expected));
    }

    #[test]
    fn all_ones_members_are_none() {
        // A header followed by nothing but the kernel's 0xFF fill.
        for (format, content, size) in [
            (1u8, 0u8, 80usize),
            (1, 3, 120),
            (1, 4, 288),
            (1, 5, 360),
            (1, 7, 400),
            (2, 0, 120),
            (2, 2, 128),
            (2, 4, 168),
            (3, 0, 264),
        ] {
            let mut blob = vec![0xFF; size];
            blob[..2].copy_from_slice(&u16::try_from(size).unwrap().to_le_bytes());
            blob[2] = format;
            blob[3] = content;
            let expected = GpuMetrics {
                format_revision: format,
                content_revision: content,
                ..GpuMetrics::default()
            };
            assert_eq!(parse(&blob), Ok(expected), "v{format}.{content}");
        }
    }

    #[test]
    fn individual_unsupported_members_are_none() {
        // navi21 with edge temperature, gfx activity, power, current_gfxclk and throttle status
        // unsupported: gfxclk falls back to the average, the rest are None.
        let mut blob = v1_3_navi21();
        for off in [4, 16, 22, 54] {
            blob[off..off + 2].copy_from_slice(&NA16.to_le_bytes());
        }
        blob[68..72].copy_from_slice(&NA32.to_le_bytes());
        blob[112..120].copy_from_slice(&NA64.to_le_bytes());
        let m = parse(&blob).unwrap();
        assert_eq!(m.temperature_edge_celsius, None);
        assert_eq!(m.gfx_activity_ratio, None);
        assert_eq!(m.socket_power_watts, None);
        assert_eq!(m.gfx_clock_hz, Some(2_236_000_000));
        assert_eq!(m.throttle_status, None);
        assert_eq!(m.indep_throttle_status, None);
        assert_eq!(m.temperature_hotspot_celsius, Some(78.0));
    }

    #[test]
    fn out_of_scale_activity_is_none() {
        let mut blob = v1_3_navi21();
        blob[16..18].copy_from_slice(&101u16.to_le_bytes());
        assert_eq!(parse(&blob).unwrap().gfx_activity_ratio, None);
        blob[16..18].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(parse(&blob).unwrap().gfx_activity_ratio, Some(1.0));
        let mut blob = v2_2_vangogh();
        blob[28..30].copy_from_slice(&10_001u16.to_le_bytes());
        assert_eq!(parse(&blob).unwrap().gfx_activity_ratio, None);
    }

    #[test]
    fn every_truncation_is_an_error_and_never_panics() {
        let mut blobs: Vec<Vec<u8>> = cases().into_iter().map(|c| c.1).collect();
        blobs.extend([v1_4_or_5(4), v1_4_or_5(5), v2_1_common(1).finish()]);
        for blob in blobs {
            let (format, content) = (blob[2], blob[3]);
            assert!(parse(&blob).is_ok());
            for len in 0..blob.len() {
                let cut = &blob[..len];
                let expected = if len < 4 {
                    MetricsError::TooShort { len }
                } else {
                    MetricsError::Truncated {
                        format,
                        content,
                        need: blob.len(),
                        have: len,
                    }
                };
                assert_eq!(
                    parse(cut),
                    Err(expected),
                    "v{format}.{content} cut to {len}"
                );
            }
        }
    }

    #[test]
    fn structure_size_limits_what_is_read() {
        // The header says the struct is shorter than the revision needs: truncated, even though
        // the buffer is long enough.
        let mut blob = v1_3_navi21();
        blob[..2].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(
            parse(&blob),
            Err(MetricsError::Truncated {
                format: 1,
                content: 3,
                need: 120,
                have: 100
            })
        );
        // A structure_size past the buffer is not trusted past the buffer.
        let mut blob = v1_3_navi21();
        blob[..2].copy_from_slice(&4000u16.to_le_bytes());
        assert_eq!(parse(&blob).map(|m| m.fan_rpm), Ok(Some(1650)));
        blob.truncate(119);
        assert_eq!(
            parse(&blob),
            Err(MetricsError::Truncated {
                format: 1,
                content: 3,
                need: 120,
                have: 119
            })
        );
        // A structure_size that cannot even cover the header is ignored.
        let mut blob = v1_3_navi21();
        blob[..2].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(parse(&blob), Ok(expect_navi21()));
        // Trailing bytes (a newer content's appended members) are ignored.
        let mut blob = v1_3_navi21();
        blob.extend_from_slice(&[0; 64]);
        assert_eq!(parse(&blob), Ok(expect_navi21()));
    }

    #[test]
    fn unsupported_and_unknown_headers() {
        assert_eq!(parse(&[]), Err(MetricsError::TooShort { len: 0 }));
        assert_eq!(parse(&[1, 2, 3]), Err(MetricsError::TooShort { len: 3 }));
        assert_eq!(parse(&[0xFF, 0xFF, 1, 3]), Err(MetricsError::Unsupported));
        assert_eq!(parse(&[0xFF; 4]), Err(MetricsError::Unsupported));
        assert_eq!(parse(&[120, 0, 0xFF, 3]), Err(MetricsError::Unsupported));
        assert_eq!(parse(&[120, 0, 1, 0xFF]), Err(MetricsError::Unsupported));
        let mut blob = vec![0xFF; 200];
        blob[..4].copy_from_slice(&[200, 0, 4, 0]);
        assert_eq!(
            parse(&blob),
            Err(MetricsError::UnknownRevision {
                format: 4,
                content: 0
            })
        );
        blob[2] = 0;
        assert_eq!(
            parse(&blob),
            Err(MetricsError::UnknownRevision {
                format: 0,
                content: 0
            })
        );
    }

    #[test]
    fn error_messages_say_what_and_why() {
        use std::string::ToString;
        let msgs = [
            MetricsError::TooShort { len: 3 }.to_string(),
            MetricsError::Unsupported.to_string(),
            MetricsError::UnknownRevision {
                format: 9,
                content: 1,
            }
            .to_string(),
            MetricsError::Truncated {
                format: 1,
                content: 3,
                need: 120,
                have: 64,
            }
            .to_string(),
        ];
        assert!(msgs[0].contains("3 bytes"));
        assert!(msgs[1].contains("does not provide"));
        assert!(msgs[2].contains("v9.1"));
        assert!(msgs[3].contains("120") && msgs[3].contains("64"));
        assert!(msgs.iter().all(|m| !m.contains('\n')));
    }

    #[test]
    fn throttle_reason_grouping() {
        let names = |s: u64| indep_throttle_reasons(s).collect::<Vec<_>>();
        assert!(names(0).is_empty());
        // Reserved bits map to nothing.
        assert!(
            names(0xFF00 | 0xFF00_0000 | 0x00FF_0000_0000_0000 | 0xFC00_0000_0000_0000).is_empty()
        );
        assert_eq!(
            names(1 << throttler::PPT0 | 1 << throttler::SPPT_APU),
            ["power"]
        );
        assert_eq!(names(1 << throttler::TDC_CVIP), ["current"]);
        assert_eq!(names(1 << throttler::EDC_GFX), ["edc"]);
        assert_eq!(names(1 << throttler::APCC), ["apcc"]);
        assert_eq!(names(1 << throttler::TEMP_LIQUID1), ["thermal"]);
        assert_eq!(names(1 << throttler::VRHOT1), ["vr-hot"]);
        assert_eq!(names(1 << throttler::PROCHOT_CPU), ["prochot"]);
        // Every group at once, in report order, each once.
        assert_eq!(
            names(u64::MAX),
            ["power", "current", "edc", "thermal", "vr-hot", "prochot", "apcc", "ppm", "fit"]
        );
        assert_eq!(
            names(
                1 << throttler::FIT
                    | 1 << throttler::TEMP_GPU
                    | 1 << throttler::TEMP_SOC
                    | 1 << throttler::SPL
            ),
            ["power", "thermal", "fit"]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep over headers and lengths (the fuzz target goes further).
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut buf = [0u8; 400];
        for _ in 0..20_000 {
            for b in buf.iter_mut() {
                *b = next() as u8;
            }
            buf[2] = (next() % 5) as u8;
            buf[3] = (next() % 8) as u8;
            let len = (next() % 401) as usize;
            if let Ok(m) = parse(&buf[..len]) {
                for r in [
                    m.gfx_activity_ratio,
                    m.memory_activity_ratio,
                    m.media_activity_ratio,
                ]
                .into_iter()
                .flatten()
                {
                    assert!((0.0..=1.0).contains(&r));
                }
            }
        }
    }
}
