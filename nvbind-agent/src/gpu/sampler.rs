//! One thread that reads every GPU at a fixed rate and keeps the samples for the capture.
//!
//! A single thread (not one per GPU, not the capture loop) so a slow driver read delays only GPU
//! samples, never frame collection; it runs at the agent's own lowered priority.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The time between samples while the owner says it is idle (the daemon, with no game tracked):
/// the GPUs' status stays fresh for the live view, at a tenth of the default rate's cost. A read
/// costs 0.1 to 0.3 ms of CPU (265 µs through NVML on an H100, BENCHMARKS.md): at 10 Hz that
/// alone would be 0.27 % of a core, for weeks of waiting for a game.
pub const IDLE_PERIOD: Duration = Duration::from_secs(1);

use super::{backend_for, Discovery, GpuBackend, GpuInfo, GpuSample};
use crate::clock::monotonic_ns;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Time between samples (default 100 ms: 10 Hz).
    pub period: Duration,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            period: Duration::from_millis(100),
        }
    }
}

impl SamplerConfig {
    /// The sampling rate rule, for `record --gpu-sample-hz` and the daemon's `gpu.sample_hz`:
    /// 0 turns sampling off (`None`), otherwise 0.1 to 1000 reads a second. `name` is the value
    /// as the user gave it, for the error.
    pub fn from_hz(hz: f64, name: &str) -> Result<Option<SamplerConfig>, String> {
        if hz == 0.0 {
            Ok(None)
        } else if hz.is_finite() && (0.1..=1000.0).contains(&hz) {
            Ok(Some(SamplerConfig {
                period: Duration::from_secs_f64(1.0 / hz),
            }))
        } else {
            Err(format!(
                "{name} must be 0 (off) or between 0.1 and 1000, not {hz}"
            ))
        }
    }
}

/// Everything sampled from one GPU.
#[derive(Debug, Clone)]
pub struct GpuSeries {
    pub info: GpuInfo,
    /// Why this GPU has no samples, when it has none by design (no driver, unknown vendor).
    pub not_sampled: Option<String>,
    pub samples: Vec<GpuSample>,
    /// Time spent reading this GPU, over all samples.
    pub read_ns: u64,
}

pub struct Sampler {
    config: SamplerConfig,
    series: Arc<Mutex<Vec<GpuSeries>>>,
    /// Whether the thread samples every IDLE_PERIOD (at least) instead of every period.
    idle: Arc<AtomicBool>,
    /// Dropped to stop the thread; a message wakes it (the end of an idle period).
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling every GPU of `discovery` that has a backend. GPUs without one are kept,
    /// with the reason, so reports can say why they have no counters.
    pub fn start(discovery: &Discovery, config: SamplerConfig) -> Sampler {
        let mut backends: Vec<(usize, Box<dyn GpuBackend>)> = Vec::new();
        let mut series = Vec::new();
        for (i, gpu) in discovery.gpus.iter().enumerate() {
            let not_sampled = match backend_for(gpu, discovery, &discovery.warnings) {
                Ok(backend) => {
                    backends.push((i, backend));
                    None
                }
                Err(why) => Some(why),
            };
            series.push(GpuSeries {
                info: gpu.clone(),
                not_sampled,
                samples: Vec::new(),
                read_ns: 0,
            });
        }
        let series = Arc::new(Mutex::new(series));
        let idle = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = if backends.is_empty() {
            None
        } else {
            let shared = Arc::clone(&series);
            let period = config.period;
            let idle = Arc::clone(&idle);
            std::thread::Builder::new()
                .name("nvbind-gpu".into())
                .spawn(move || run(backends, shared, period, &idle, stopped))
                .map_err(|e| log::warn!("cannot start the GPU sampler thread: {e}"))
                .ok()
        };
        Sampler {
            config,
            series,
            idle,
            stop: Some(stop),
            thread,
        }
    }

    /// Samples every IDLE_PERIOD while `idle` (unless the configured period is longer), every
    /// period otherwise; leaving idle takes a sample at once, so a game's first frames have one.
    pub fn set_idle(&self, idle: bool) {
        if self.idle.swap(idle, Ordering::Relaxed) && !idle {
            if let Some(stop) = &self.stop {
                let _ = stop.send(());
            }
        }
    }

    pub fn config(&self) -> SamplerConfig {
        self.config
    }

    /// A copy of every GPU's samples taken at or after `from_ns` (the daemon's view of one game
    /// session; the thread goes on sampling).
    pub fn since(&self, from_ns: u64) -> Vec<GpuSeries> {
        lock(&self.series)
            .iter()
            .map(|s| GpuSeries {
                info: s.info.clone(),
                not_sampled: s.not_sampled.clone(),
                samples: s
                    .samples
                    .iter()
                    .filter(|x| x.t_ns >= from_ns)
                    .cloned()
                    .collect(),
                read_ns: s.read_ns,
            })
            .collect()
    }

    /// Every GPU with its newest sample (none yet, or not sampled: `None`).
    pub fn latest(&self) -> Vec<(GpuInfo, Option<GpuSample>, Option<String>)> {
        lock(&self.series)
            .iter()
            .map(|s| {
                (
                    s.info.clone(),
                    s.samples.last().cloned(),
                    s.not_sampled.clone(),
                )
            })
            .collect()
    }

    /// Drops samples older than `before_ns` (the daemon keeps only what live sessions cover).
    pub fn forget_before(&self, before_ns: u64) {
        for s in lock(&self.series).iter_mut() {
            let keep_from = s.samples.partition_point(|x| x.t_ns < before_ns);
            s.samples.drain(..keep_from);
        }
    }

    /// Stops the thread and hands over everything sampled.
    pub fn finish(mut self) -> Vec<GpuSeries> {
        self.stop_thread();
        std::mem::take(&mut *lock(&self.series))
    }

    fn stop_thread(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::warn!("the GPU sampler thread panicked; samples up to then are kept");
            }
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn lock(series: &Mutex<Vec<GpuSeries>>) -> std::sync::MutexGuard<'_, Vec<GpuSeries>> {
    series
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The time to the next sample.
fn period_now(period: Duration, idle: bool) -> Duration {
    if idle {
        period.max(IDLE_PERIOD)
    } else {
        period
    }
}

fn run(
    mut backends: Vec<(usize, Box<dyn GpuBackend>)>,
    series: Arc<Mutex<Vec<GpuSeries>>>,
    period: Duration,
    idle: &AtomicBool,
    stopped: mpsc::Receiver<()>,
) {
    let mut next = Instant::now();
    loop {
        let mut taken = Vec::with_capacity(backends.len());
        for (i, backend) in backends.iter_mut() {
            let started = Instant::now();
            let sample = backend.sample(monotonic_ns());
            taken.push((*i, sample, started.elapsed().as_nanos() as u64));
        }
        {
            let mut series = lock(&series);
            for (i, sample, cost) in taken {
                if let Some(s) = series.get_mut(i) {
                    s.samples.push(sample);
                    s.read_ns += cost;
                }
            }
        }
        // Fixed-rate ticks; after a stall, skip the missed ones rather than burst to catch up.
        let period = period_now(period, idle.load(Ordering::Relaxed));
        next += period;
        let now = Instant::now();
        if next < now {
            next = now + period;
        }
        match stopped.recv_timeout(next.saturating_duration_since(now)) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // Woken: idle no more; the ticks start again from now.
            Ok(()) => next = Instant::now(),
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sampling_is_at_most_once_a_second_and_never_faster_than_asked() {
        let tenth = Duration::from_millis(100);
        assert_eq!(period_now(tenth, false), tenth);
        assert_eq!(period_now(tenth, true), IDLE_PERIOD);
        let ten_s = Duration::from_secs(10);
        assert_eq!(period_now(ten_s, true), ten_s);
    }

    /// A GPU whose reads are counted.
    struct Counted(Arc<std::sync::atomic::AtomicU64>);

    impl GpuBackend for Counted {
        fn sample(&mut self, t_ns: u64) -> GpuSample {
            self.0.fetch_add(1, Ordering::Relaxed);
            GpuSample {
                t_ns,
                ..Default::default()
            }
        }
    }

    #[test]
    fn leaving_idle_takes_a_sample_at_once() {
        let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let series = Arc::new(Mutex::new(Vec::new()));
        let idle = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel();
        // A period far beyond the test: only the first read and a wakeup can take samples.
        let period = Duration::from_secs(3600);
        let thread = {
            let (reads, series, idle) =
                (Arc::clone(&reads), Arc::clone(&series), Arc::clone(&idle));
            std::thread::spawn(move || {
                run(
                    vec![(0, Box::new(Counted(reads)))],
                    series,
                    period,
                    &idle,
                    stopped,
                )
            })
        };
        let sampler = Sampler {
            config: SamplerConfig { period },
            series,
            idle,
            stop: Some(stop),
            thread: Some(thread),
        };
        let wait_for = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while reads.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "no read {n} within 60 s");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        wait_for(1);
        sampler.set_idle(true);
        sampler.set_idle(true);
        sampler.set_idle(false);
        wait_for(2);
        sampler.set_idle(false);
        // Stopping joins the thread: nothing but the first read and the wakeup's were taken.
        drop(sampler);
        assert_eq!(reads.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rates_are_off_or_between_a_tenth_and_a_thousand_hertz() {
        assert_eq!(SamplerConfig::from_hz(0.0, "x"), Ok(None));
        assert_eq!(
            SamplerConfig::from_hz(10.0, "x"),
            Ok(Some(SamplerConfig::default()))
        );
        for hz in [-1.0, 0.05, 1000.5, f64::NAN, f64::INFINITY] {
            let e = SamplerConfig::from_hz(hz, "--gpu-sample-hz").unwrap_err();
            assert!(e.starts_with("--gpu-sample-hz must be 0 (off)"), "{e}");
        }
    }
}
