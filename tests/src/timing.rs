//! Frame and timing assertions against the synthetic game's own present windows: exact however
//! slow or noisy the machine, because each present is stamped inside its window.

use crate::PresentWindow;

/// Nearest-rank percentile of a sorted slice.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty());
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Asserts that every captured present time (CLOCK_MONOTONIC ns, in frame order) lies inside the
/// game's own window for that frame. Exact however slow the machine: the probe fires inside the
/// call, so a time outside the window is a wrong frame, a wrong clock or a shifted stamp.
pub fn assert_within_windows(captured: &[u64], windows: &[PresentWindow]) {
    assert_eq!(
        captured.len(),
        windows.len(),
        "one captured frame per present"
    );
    let outside: Vec<String> = captured
        .iter()
        .zip(windows)
        .enumerate()
        .filter(|(_, (&t, w))| !w.contains(t))
        .map(|(i, (&t, w))| {
            format!(
                "frame {i}: {t} not in [{}, {}] ({:+} ns from the window)",
                w.before,
                w.after,
                if t < w.before {
                    t as i64 - w.before as i64
                } else {
                    t as i64 - w.after as i64
                }
            )
        })
        .collect();
    assert!(
        outside.is_empty(),
        "{} of {} frames stamped outside their present call: {}",
        outside.len(),
        captured.len(),
        outside
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Bounds, on the game's own clock, of frame `k`'s time (present `k - 1` to present `k`, ms) as a
/// probe at the present call measures it: each present is stamped inside its [before, after]
/// window, so the interval lies within [before(k) − after(k − 1), after(k) − before(k − 1)],
/// however slow or noisy the machine.
pub fn frame_bounds_ms(w: &[PresentWindow], k: usize) -> (f64, f64) {
    let (lo, hi) = frame_bounds_ns(w, k);
    (lo as f64 / 1e6, hi as f64 / 1e6)
}

/// [`frame_bounds_ms`] in nanoseconds.
pub fn frame_bounds_ns(w: &[PresentWindow], k: usize) -> (u64, u64) {
    (
        w[k].before.saturating_sub(w[k - 1].after),
        w[k].after.saturating_sub(w[k - 1].before),
    )
}

/// The game's own pace: its median frame interval by its clock, ms.
pub fn pace_ms(w: &[PresentWindow]) -> f64 {
    let mut intervals: Vec<f64> = w
        .windows(2)
        .map(|p| p[1].before.saturating_sub(p[0].before) as f64 / 1e6)
        .collect();
    intervals.sort_by(f64::total_cmp);
    percentile(&intervals, 0.5)
}

/// What the windows allow for each frame interval (frame `i + 1` took element `i`), in ms,
/// sorted: the shortest (`after` of the earlier present to `before` of the later) and the
/// longest (`before` to `after`). Any frame stamped inside its window has an interval between
/// the two, so any percentile of the true intervals lies between the same percentile of each.
pub fn interval_bounds_ms(windows: &[PresentWindow]) -> (Vec<f64>, Vec<f64>) {
    let (mut shortest, mut longest): (Vec<f64>, Vec<f64>) = (1..windows.len())
        .map(|k| frame_bounds_ms(windows, k))
        .unzip();
    shortest.sort_by(f64::total_cmp);
    longest.sort_by(f64::total_cmp);
    (shortest, longest)
}

/// Asserts that a reported frame-time quantile (ms) is one the game's own windows allow. The
/// report's percentiles come from an HdrHistogram at 3 significant digits (≤ 0.1 % off, rounded
/// up) and may pick a neighbouring rank; nothing else is allowed for.
pub fn assert_quantile_allowed(windows: &[PresentWindow], q: f64, reported_ms: f64, what: &str) {
    let (shortest, longest) = interval_bounds_ms(windows);
    assert!(!shortest.is_empty(), "{what}: fewer than two frames");
    let n = shortest.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    let low = shortest[rank.saturating_sub(1)] * (1.0 - 2e-3);
    let high = longest[(rank + 1).min(n - 1)] * (1.0 + 2e-3);
    assert!(
        (low..=high).contains(&reported_ms),
        "{what}: reported {reported_ms:.4} ms, the game's own present windows allow          [{low:.4}, {high:.4}] ms"
    );
}

/// Asserts that a reported average FPS is one the game's own windows allow: frames − 1 intervals
/// over the span from the first present to the last, each end somewhere inside its window.
pub fn assert_fps_allowed(windows: &[PresentWindow], reported_fps: f64) {
    let (first, last) = (windows[0], windows[windows.len() - 1]);
    let intervals = (windows.len() - 1) as f64;
    let low = intervals / ((last.after - first.before) as f64 / 1e9) * (1.0 - 1e-9);
    let high =
        intervals / ((last.before.saturating_sub(first.after)).max(1) as f64 / 1e9) * (1.0 + 1e-9);
    assert!(
        (low..=high).contains(&reported_fps),
        "fps_avg {reported_fps}: the game's own present windows allow [{low}, {high}]"
    );
}
