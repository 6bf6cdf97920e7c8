//! One thread that reads every GPU at a fixed rate and keeps the samples for the capture.
//!
//! A single thread (not one per GPU, not the capture loop) so a slow driver read delays only GPU
//! samples, never frame collection; it runs at the agent's own lowered priority.

use std::{
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

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
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = if backends.is_empty() {
            None
        } else {
            let shared = Arc::clone(&series);
            let period = config.period;
            std::thread::Builder::new()
                .name("nvbind-gpu".into())
                .spawn(move || run(backends, shared, period, stopped))
                .map_err(|e| log::warn!("cannot start the GPU sampler thread: {e}"))
                .ok()
        };
        Sampler {
            config,
            series,
            stop: Some(stop),
            thread,
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

fn run(
    mut backends: Vec<(usize, Box<dyn GpuBackend>)>,
    series: Arc<Mutex<Vec<GpuSeries>>>,
    period: Duration,
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
        next += period;
        let now = Instant::now();
        if next < now {
            next = now + period;
        }
        match stopped.recv_timeout(next.saturating_duration_since(now)) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
