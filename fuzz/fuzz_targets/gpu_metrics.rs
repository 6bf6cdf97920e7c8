//! Fuzzes the amdgpu `gpu_metrics` decoder: it must never panic or read out of bounds (the
//! sanitizer build checks the latter), and whatever it returns must hold the guarantees its
//! documentation gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvbind_gpu_metrics::{indep_throttle_reasons, parse, MetricsError};

/// Largest value a `u16` member can carry that is not the "unsupported" marker.
const MAX_U16: f32 = 65534.0;

fuzz_target!(|data: &[u8]| {
    let result = parse(data);
    assert_eq!(result, parse(data), "parse is not deterministic");

    let m = match result {
        Ok(m) => m,
        Err(MetricsError::TooShort { len }) => {
            assert!(len < 4 && len == data.len());
            return;
        }
        Err(MetricsError::Truncated { need, have, .. }) => {
            assert!(have < need && have <= data.len());
            return;
        }
        Err(MetricsError::Unsupported | MetricsError::UnknownRevision { .. }) => return,
    };

    // The header bytes come back unchanged, and an all-ones header never parses.
    assert!(data.len() >= 4);
    assert_eq!((m.format_revision, m.content_revision), (data[2], data[3]));
    assert!(data[..2] != [0xFF, 0xFF] && data[2] != 0xFF && data[3] != 0xFF);

    for t in [
        m.temperature_edge_celsius,
        m.temperature_hotspot_celsius,
        m.temperature_mem_celsius,
        m.temperature_soc_celsius,
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            t.is_finite() && (0.0..=MAX_U16).contains(&t),
            "temperature {t}"
        );
    }
    for r in [
        m.gfx_activity_ratio,
        m.memory_activity_ratio,
        m.media_activity_ratio,
    ]
    .into_iter()
    .flatten()
    {
        assert!((0.0..=1.0).contains(&r), "ratio {r}");
    }
    if let Some(w) = m.socket_power_watts {
        // u16 W (v1), u16 mW (v2) or u32 mW (v3): finite and below 2^32 mW.
        assert!(
            w.is_finite() && (0.0..=4_294_967.5).contains(&w),
            "power {w}"
        );
    }
    for hz in [m.gfx_clock_hz, m.soc_clock_hz, m.memory_clock_hz]
        .into_iter()
        .flatten()
    {
        assert!(
            hz % 1_000_000 == 0 && hz <= 65_534 * 1_000_000,
            "clock {hz}"
        );
    }
    if let Some(rpm) = m.fan_rpm {
        assert!(rpm < 0xFFFF);
    }
    assert_ne!(m.throttle_status, Some(u32::MAX));
    assert_ne!(m.indep_throttle_status, Some(u64::MAX));

    // Reason names: known, in report order, each at most once.
    const ORDER: [&str; 9] = [
        "power", "current", "edc", "thermal", "vr-hot", "prochot", "apcc", "ppm", "fit",
    ];
    for status in [
        m.indep_throttle_status.unwrap_or(0),
        m.throttle_status.unwrap_or(0).into(),
    ] {
        let mut last = None;
        for name in indep_throttle_reasons(status) {
            let pos = ORDER
                .iter()
                .position(|&n| n == name)
                .expect("unknown reason");
            assert!(
                last.is_none_or(|l| l < pos),
                "{name} out of order or repeated"
            );
            last = Some(pos);
        }
    }
});
