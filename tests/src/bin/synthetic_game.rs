//! A synthetic game for nvbind's accuracy tests: a frame loop with known pacing and injected
//! stalls that presents through the real `eglSwapBuffers` of libEGL.so.1 (a pbuffer on Mesa's
//! surfaceless platform, so no display is needed) and writes its own ground truth: the
//! CLOCK_MONOTONIC time just before each present, one nanosecond value per line.

use std::{ffi::c_void, io::Write, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;
use libloading::{Library, Symbol};

#[derive(Debug, Parser)]
struct Args {
    /// Frames to present.
    #[arg(long, default_value_t = 300)]
    frames: u32,
    /// Target frame interval in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    interval_ms: f64,
    /// Busy CPU work per frame in milliseconds (the "render" part of the frame).
    #[arg(long, default_value_t = 1.0)]
    work_ms: f64,
    /// Every Nth frame stalls (0: never).
    #[arg(long, default_value_t = 0)]
    stall_every: u32,
    /// Extra sleep in a stalled frame, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    stall_ms: f64,
    /// Present from a thread created after startup instead of the main thread.
    #[arg(long)]
    render_thread: bool,
    /// Sleep this long before the first frame (lets a test attach to a running process).
    #[arg(long, default_value_t = 0.0)]
    startup_delay_ms: f64,
    /// Where to write the ground-truth present times.
    #[arg(long)]
    truth: PathBuf,
}

type EglDisplay = *mut c_void;
type EglSurface = *mut c_void;
type EglConfig = *mut c_void;

const EGL_SURFACE_TYPE: i32 = 0x3033;
const EGL_PBUFFER_BIT: i32 = 0x0001;
const EGL_WIDTH: i32 = 0x3057;
const EGL_HEIGHT: i32 = 0x3056;
const EGL_NONE: i32 = 0x3038;

struct Egl {
    _lib: Library,
    display: EglDisplay,
    surface: EglSurface,
    swap: unsafe extern "C" fn(EglDisplay, EglSurface) -> u32,
    /// Whether a real pbuffer surface exists (otherwise the call fails fast inside libEGL).
    real_surface: bool,
}

impl Egl {
    fn open() -> Result<Egl> {
        // SAFETY: loading a system library; its initialisers are Mesa's/libglvnd's.
        let lib = unsafe { Library::new("libEGL.so.1") }.context("cannot load libEGL.so.1")?;
        // SAFETY: symbol types follow the EGL 1.4 specification.
        unsafe {
            let get_display: Symbol<unsafe extern "C" fn(*mut c_void) -> EglDisplay> =
                lib.get(b"eglGetDisplay\0")?;
            let initialize: Symbol<unsafe extern "C" fn(EglDisplay, *mut i32, *mut i32) -> u32> =
                lib.get(b"eglInitialize\0")?;
            let choose: Symbol<
                unsafe extern "C" fn(EglDisplay, *const i32, *mut EglConfig, i32, *mut i32) -> u32,
            > = lib.get(b"eglChooseConfig\0")?;
            let create_pbuffer: Symbol<
                unsafe extern "C" fn(EglDisplay, EglConfig, *const i32) -> EglSurface,
            > = lib.get(b"eglCreatePbufferSurface\0")?;
            let swap: Symbol<unsafe extern "C" fn(EglDisplay, EglSurface) -> u32> =
                lib.get(b"eglSwapBuffers\0")?;
            let swap = *swap;

            let display = get_display(std::ptr::null_mut());
            let mut surface = std::ptr::null_mut();
            if !display.is_null()
                && initialize(display, std::ptr::null_mut(), std::ptr::null_mut()) != 0
            {
                let attrs = [EGL_SURFACE_TYPE, EGL_PBUFFER_BIT, EGL_NONE];
                let mut config: EglConfig = std::ptr::null_mut();
                let mut n = 0;
                if choose(display, attrs.as_ptr(), &mut config, 1, &mut n) != 0 && n > 0 {
                    let size = [EGL_WIDTH, 64, EGL_HEIGHT, 64, EGL_NONE];
                    surface = create_pbuffer(display, config, size.as_ptr());
                }
            }
            Ok(Egl {
                real_surface: !surface.is_null(),
                _lib: lib,
                display,
                surface,
                swap,
            })
        }
    }

    fn present(&self) {
        // SAFETY: display/surface come from this library (or are null, which EGL rejects cleanly).
        unsafe { (self.swap)(self.display, self.surface) };
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec; an interrupted sleep just ends early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

fn spin(ms: f64) {
    let end = monotonic_ns() + (ms * 1e6) as u64;
    let mut x = 0u64;
    while monotonic_ns() < end {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn frame_loop(args: &Args) -> Result<Vec<u64>> {
    let egl = Egl::open()?;
    eprintln!(
        "synthetic-game: presenting {} frames through eglSwapBuffers ({})",
        args.frames,
        if egl.real_surface {
            "pbuffer surface"
        } else {
            "no surface: EGL rejects each swap"
        }
    );
    std::thread::sleep(Duration::from_secs_f64(args.startup_delay_ms / 1000.0));
    let interval = (args.interval_ms * 1e6) as u64;
    let mut truth = Vec::with_capacity(args.frames as usize);
    let mut next = monotonic_ns();
    for i in 0..args.frames {
        spin(args.work_ms);
        if args.stall_every > 0 && i % args.stall_every == args.stall_every - 1 {
            std::thread::sleep(Duration::from_secs_f64(args.stall_ms / 1000.0));
        }
        sleep_until(next);
        truth.push(monotonic_ns());
        egl.present();
        next += interval;
        let now = monotonic_ns();
        if next < now {
            next = now;
        }
    }
    Ok(truth)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("EGL_PLATFORM").is_none() {
        // Mesa's display-less platform gives a real pbuffer surface. Set before libEGL loads and
        // before any thread exists.
        std::env::set_var("EGL_PLATFORM", "surfaceless");
    }
    if args.frames == 0 || args.interval_ms <= 0.0 {
        bail!("--frames and --interval-ms must be positive");
    }
    let truth = if args.render_thread {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("render".into())
                .spawn_scoped(s, || frame_loop(&args))
                .context("cannot start the render thread")?
                .join()
                .map_err(|_| anyhow::anyhow!("render thread panicked"))?
        })?
    } else {
        frame_loop(&args)?
    };
    let mut out = std::fs::File::create(&args.truth)
        .with_context(|| format!("cannot write {}", args.truth.display()))?;
    for t in truth {
        writeln!(out, "{t}")?;
    }
    Ok(())
}
