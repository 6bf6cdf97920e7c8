//! A synthetic game for nvbind's accuracy tests: a frame loop with known pacing and injected
//! stalls that presents through the real `eglSwapBuffers` of libEGL.so.1 (a pbuffer on Mesa's
//! surfaceless platform, so no display is needed) and writes its own ground truth: the
//! CLOCK_MONOTONIC times just before and just after each present call (`BEFORE AFTER`, one line
//! per frame), and in `TRUTH.rusage` the kernel's own counts (getrusage) for the frame thread
//! and the whole process (see [`nvbind_tests::GameRusage`]).
//!
//! With `--submit-cpu N` every frame waits for a `submit` thread pinned to CPU N (a renderer's
//! submit thread): a competitor on that CPU stalls the frame through it.
//!
//! Stalls come in three kinds, each a different cause for nvbind to find:
//! - `sleep`: the frame thread sleeps (a `blocked` stutter);
//! - `lock`: the frame thread waits on a mutex a `loader` thread holds while it sleeps (`blocked`);
//! - `kvm`: the frame thread blocks inside an ioctl: `KVM_RUN` on a virtual CPU whose guest
//!   halts, until a `waker` thread signals it. That is a thread asleep inside a driver's ioctl
//!   until an outside event, which is exactly what a GPU fence wait in a DRM or NVIDIA ioctl looks
//!   like to the kernel; this kernel has no GPU driver, so tests declare KVM's ioctl type (0xAE) as
//!   a GPU one (`record --gpu-ioctl-type 0xAE`).

use std::{
    ffi::c_void,
    io::Write,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use libloading::{Library, Symbol};
use nvbind_tests::{monotonic_ns, pin_to_cpu, progress_path, rusage_path, Rusage};

#[derive(Debug, Parser)]
struct Args {
    /// Frames to present (with `--stop-file`, the least it presents).
    #[arg(long, default_value_t = 300)]
    frames: u32,
    /// Go on presenting after `--frames` until this file exists (checked before each frame): for
    /// a test that needs the game running until it has seen something happen, however slow the
    /// machine, rather than for a number of frames it guesses is enough.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Target frame interval in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    interval_ms: f64,
    /// Busy CPU work per frame in milliseconds (the "render" part of the frame).
    #[arg(long, default_value_t = 1.0)]
    work_ms: f64,
    /// Every Nth frame stalls (0: never).
    #[arg(long, default_value_t = 0)]
    stall_every: u32,
    /// Length of a stall, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    stall_ms: f64,
    /// How a frame stalls.
    #[arg(long, value_enum, default_value_t = StallKind::Sleep)]
    stall_kind: StallKind,
    /// Pin the frame thread to this CPU.
    #[arg(long)]
    pin_cpu: Option<usize>,
    /// Each frame, hand a submission to a `submit` thread pinned to this CPU and wait until it is
    /// done (a renderer's submit thread): whatever keeps that thread off its CPU stalls the frame
    /// through it.
    #[arg(long)]
    submit_cpu: Option<usize>,
    /// The `submit` thread's busy work per frame, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    submit_ms: f64,
    /// Present from a thread created after startup instead of the main thread.
    #[arg(long)]
    render_thread: bool,
    /// Sleep this long before the first frame (lets a test attach to a running process).
    #[arg(long, default_value_t = 0.0)]
    startup_delay_ms: f64,
    /// Before every Nth frame's present, make one that fails (a swap of no surface, which EGL
    /// refuses with EGL_FALSE): not a frame, and not in the ground truth (0: never).
    #[arg(long, default_value_t = 0)]
    fail_every: u32,
    /// Make every present one that fails (a swap of no surface): a process that calls
    /// eglSwapBuffers and never presents a frame. The ground truth then lists none.
    #[arg(long)]
    no_surface: bool,
    /// Each frame, start this many short-lived threads and wait for them (a job system that
    /// churns through threads).
    #[arg(long, default_value_t = 0)]
    churn_threads: u32,
    /// Where to write the ground truth: per frame, one line `BEFORE AFTER`, the CLOCK_MONOTONIC
    /// nanoseconds read just before and just after the present call. A probe on the call must
    /// stamp the frame inside that window, however slow the machine.
    #[arg(long)]
    truth: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StallKind {
    Sleep,
    Lock,
    Kvm,
}

type EglDisplay = *mut c_void;
type EglSurface = *mut c_void;
type EglConfig = *mut c_void;

const EGL_SURFACE_TYPE: i32 = 0x3033;
const EGL_PBUFFER_BIT: i32 = 0x0001;
const EGL_RENDERABLE_TYPE: i32 = 0x3040;
const EGL_OPENGL_ES2_BIT: i32 = 0x0004;
const EGL_CONTEXT_CLIENT_VERSION: i32 = 0x3098;
const EGL_OPENGL_ES_API: u32 = 0x30A0;
const EGL_WIDTH: i32 = 0x3057;
const EGL_HEIGHT: i32 = 0x3056;
const EGL_NONE: i32 = 0x3038;

struct Egl {
    _lib: Library,
    display: EglDisplay,
    surface: EglSurface,
    swap: unsafe extern "C" fn(EglDisplay, EglSurface) -> u32,
    /// Whether a pbuffer surface exists and is current with a context on this thread, so a
    /// swap of it succeeds (a no-op for a pbuffer, and `EGL_TRUE`).
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
            let bind_api: Symbol<unsafe extern "C" fn(u32) -> u32> = lib.get(b"eglBindAPI\0")?;
            let create_context: Symbol<
                unsafe extern "C" fn(EglDisplay, EglConfig, *mut c_void, *const i32) -> *mut c_void,
            > = lib.get(b"eglCreateContext\0")?;
            let make_current: Symbol<
                unsafe extern "C" fn(EglDisplay, EglSurface, EglSurface, *mut c_void) -> u32,
            > = lib.get(b"eglMakeCurrent\0")?;

            let display = get_display(std::ptr::null_mut());
            let mut surface = std::ptr::null_mut();
            if !display.is_null()
                && initialize(display, std::ptr::null_mut(), std::ptr::null_mut()) != 0
            {
                let attrs = [
                    EGL_SURFACE_TYPE,
                    EGL_PBUFFER_BIT,
                    EGL_RENDERABLE_TYPE,
                    EGL_OPENGL_ES2_BIT,
                    EGL_NONE,
                ];
                let mut config: EglConfig = std::ptr::null_mut();
                let mut n = 0;
                if choose(display, attrs.as_ptr(), &mut config, 1, &mut n) != 0 && n > 0 {
                    let size = [EGL_WIDTH, 64, EGL_HEIGHT, 64, EGL_NONE];
                    surface = create_pbuffer(display, config, size.as_ptr());
                }
                // A swap succeeds only for the surface of the calling thread's current context
                // (EGL_BAD_SURFACE otherwise): make one current here, on the frame thread.
                if !surface.is_null() && bind_api(EGL_OPENGL_ES_API) != 0 {
                    let version = [EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE];
                    let context =
                        create_context(display, config, std::ptr::null_mut(), version.as_ptr());
                    if context.is_null() || make_current(display, surface, surface, context) == 0 {
                        surface = std::ptr::null_mut();
                    }
                } else {
                    surface = std::ptr::null_mut();
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

    /// A present of the pbuffer; whether EGL took it.
    fn present(&self) -> bool {
        // SAFETY: display/surface come from this library.
        unsafe { (self.swap)(self.display, self.surface) != 0 }
    }

    /// A present EGL refuses (no surface: `EGL_BAD_SURFACE`); whether EGL took it.
    fn present_nothing(&self) -> bool {
        // SAFETY: EGL rejects a null surface cleanly.
        unsafe { (self.swap)(self.display, std::ptr::null_mut()) != 0 }
    }
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

/// A `loader` thread that, on request, takes the shared lock and sleeps holding it.
struct LockStaller {
    lock: Arc<Mutex<()>>,
    requests: mpsc::Sender<()>,
    held: mpsc::Receiver<()>,
}

impl LockStaller {
    fn start(hold: Duration) -> Result<LockStaller> {
        let lock = Arc::new(Mutex::new(()));
        let (requests, incoming) = mpsc::channel::<()>();
        let (held_tx, held) = mpsc::channel();
        let shared = Arc::clone(&lock);
        std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                while incoming.recv().is_ok() {
                    let Ok(guard) = shared.lock() else { return };
                    if held_tx.send(()).is_err() {
                        return;
                    }
                    std::thread::sleep(hold);
                    drop(guard);
                }
            })
            .context("cannot start the loader thread")?;
        Ok(LockStaller {
            lock,
            requests,
            held,
        })
    }

    fn stall(&self) -> Result<()> {
        self.requests.send(()).context("loader thread gone")?;
        self.held.recv().context("loader thread gone")?;
        let _guard = self
            .lock
            .lock()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?;
        Ok(())
    }
}

/// A `submit` thread on its own CPU that does each frame's submission while the frame thread
/// waits for it.
struct Submitter {
    requests: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

impl Submitter {
    fn start(cpu: usize, work_ms: f64) -> Result<Submitter> {
        let (requests, incoming) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name("submit".into())
            .spawn(move || {
                let pinned = pin_to_cpu(cpu).map_err(|e| format!("{e:#}"));
                let ok = pinned.is_ok();
                if ready_tx.send(pinned).is_err() || !ok {
                    return;
                }
                while incoming.recv().is_ok() {
                    spin(work_ms);
                    if done_tx.send(()).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the submit thread")?;
        ready
            .recv()
            .context("submit thread gone")?
            .map_err(|e| anyhow::anyhow!("cannot pin the submit thread to CPU {cpu}: {e}"))?;
        Ok(Submitter { requests, done })
    }

    fn submit(&self) -> Result<()> {
        self.requests.send(()).context("submit thread gone")?;
        self.done.recv().context("submit thread gone")
    }
}

/// What the frame loop saw: each present's [before, after] clock reads, and the frame thread's
/// getrusage at the end (its whole life) and over the loop alone.
struct FrameLoop {
    truth: Vec<(u64, u64)>,
    thread: Rusage,
    in_loop: Rusage,
}

/// The count of presents made so far, in a shared file mapping that tests read as it changes
/// (see `nvbind_tests::presents_so_far`): no system call per frame.
struct Progress {
    count: &'static AtomicU64,
}

impl Progress {
    fn create(path: &std::path::Path) -> Result<Progress> {
        // Read and write: a shared mapping needs both.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.set_len(8)
            .with_context(|| format!("cannot size {}", path.display()))?;
        // SAFETY: a fresh 8-byte shared mapping of a file we own; it stays mapped for the life
        // of the process (never unmapped), so the 'static reference below stays valid.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            bail!(
                "cannot map {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: page-aligned, 8 bytes, zero-filled by set_len, mapped for ever (above).
        let count = unsafe { AtomicU64::from_ptr(at.cast::<u64>()) };
        Ok(Progress { count })
    }

    fn set(&self, presents: u64) {
        self.count.store(presents, Ordering::Release);
    }
}

fn frame_loop(args: &Args) -> Result<FrameLoop> {
    if let Some(cpu) = args.pin_cpu {
        pin_to_cpu(cpu).context("--pin-cpu")?;
    }
    let stall = Duration::from_secs_f64(args.stall_ms / 1000.0);
    let lock_staller = match args.stall_kind {
        StallKind::Lock => Some(LockStaller::start(stall)?),
        _ => None,
    };
    let mut kvm_staller = match args.stall_kind {
        StallKind::Kvm => Some(kvm_stall::KvmStaller::new()?),
        _ => None,
    };
    let submitter = match args.submit_cpu {
        Some(cpu) => Some(Submitter::start(cpu, args.submit_ms)?),
        None => None,
    };
    let egl = Egl::open()?;
    if !egl.real_surface && !args.no_surface {
        bail!(
            "EGL gave no pbuffer surface (Mesa's EGL with a pbuffer config is needed: cargo \
             xtask setup installs it); --no-surface makes presents that fail on purpose"
        );
    }
    eprintln!(
        "synthetic-game: presenting {} frames through eglSwapBuffers ({})",
        args.frames,
        if args.no_surface {
            "no surface: EGL rejects each swap"
        } else {
            "pbuffer surface"
        }
    );
    std::thread::sleep(Duration::from_secs_f64(args.startup_delay_ms / 1000.0));
    let progress = Progress::create(&progress_path(&args.truth))?;
    let interval = (args.interval_ms * 1e6) as u64;
    let mut truth = Vec::with_capacity(args.frames as usize);
    let loop_start = Rusage::of(libc::RUSAGE_THREAD)?;
    let mut next = monotonic_ns();
    let go_on = |i: u32| i < args.frames || args.stop_file.as_deref().is_some_and(|f| !f.exists());
    let mut i = 0;
    while go_on(i) {
        spin(args.work_ms);
        for _ in 0..args.churn_threads {
            std::thread::spawn(|| std::hint::black_box(0u64))
                .join()
                .map_err(|_| anyhow::anyhow!("a churned thread panicked"))?;
        }
        if args.stall_every > 0 && i % args.stall_every == args.stall_every - 1 {
            match (&lock_staller, kvm_staller.as_mut()) {
                (Some(l), _) => l.stall()?,
                (_, Some(k)) => k.stall(stall)?,
                _ => std::thread::sleep(stall),
            }
        }
        if let Some(s) = &submitter {
            s.submit()?;
        }
        sleep_until(next);
        if args.no_surface {
            if egl.present_nothing() {
                bail!("EGL took a swap of no surface");
            }
        } else {
            if args.fail_every > 0
                && i % args.fail_every == args.fail_every - 1
                && egl.present_nothing()
            {
                bail!("EGL took a swap of no surface");
            }
            let before = monotonic_ns();
            if !egl.present() {
                bail!("EGL refused a swap of the pbuffer");
            }
            truth.push((before, monotonic_ns()));
        }
        progress.set(truth.len() as u64);
        next += interval;
        let now = monotonic_ns();
        if next < now {
            next = now;
        }
        i += 1;
    }
    // The frame thread's own switches and CPU time, as the kernel counted them.
    // The library's teardown (its threads joined) happens before the count, not after it.
    drop(egl);
    let thread = Rusage::of(libc::RUSAGE_THREAD)?;
    Ok(FrameLoop {
        truth,
        thread,
        in_loop: thread.since(&loop_start),
    })
}

#[cfg(target_arch = "x86_64")]
mod kvm_stall {
    //! A virtual CPU that halts, so `KVM_RUN` sleeps in the kernel until this thread is signalled.

    use std::time::Duration;

    use anyhow::{Context, Result};
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuFd, VmFd};

    /// Guest code at guest-physical 0: `hlt; jmp 0` (interrupts off, so it halts for good).
    const GUEST_CODE: [u8; 3] = [0xf4, 0xeb, 0xfd];
    const GUEST_MEMORY: usize = 0x1000;

    pub struct KvmStaller {
        vcpu: VcpuFd,
        vm: Option<VmFd>,
        /// Page-aligned guest memory (KVM requires alignment), unmapped after the VM is gone.
        memory: *mut libc::c_void,
    }

    impl Drop for KvmStaller {
        fn drop(&mut self) {
            self.vm.take();
            // SAFETY: the mapping made in `new`, no longer used by any VM.
            unsafe { libc::munmap(self.memory, GUEST_MEMORY) };
        }
    }

    extern "C" fn on_wake(_: libc::c_int) {}

    impl KvmStaller {
        pub fn new() -> Result<KvmStaller> {
            let kvm = Kvm::new().context(
                "cannot open /dev/kvm (the kvm stall needs it: a KVM-capable kernel and root)",
            )?;
            let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
            // The in-kernel interrupt controller makes HLT sleep in the kernel instead of exiting.
            vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
            // SAFETY: an anonymous private mapping, checked below.
            let memory = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    GUEST_MEMORY,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if memory == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error()).context("cannot map guest memory");
            }
            // SAFETY: the mapping is GUEST_MEMORY bytes long and writable.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    GUEST_CODE.as_ptr(),
                    memory.cast::<u8>(),
                    GUEST_CODE.len(),
                )
            };
            let region = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: GUEST_MEMORY as u64,
                userspace_addr: memory as u64,
            };
            // SAFETY: the mapping outlives the VM (Drop drops the VM first, then unmaps).
            if let Err(e) = unsafe { vm.set_user_memory_region(region) } {
                // SAFETY: the mapping made above, unused.
                unsafe { libc::munmap(memory, GUEST_MEMORY) };
                return Err(e).context("KVM_SET_USER_MEMORY_REGION");
            }
            let vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
            let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
            let mut regs = vcpu.get_regs().context("KVM_GET_REGS")?;
            regs.rip = 0;
            regs.rflags = 0x2;
            vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
            // A handler without SA_RESTART: the signal ends KVM_RUN with EINTR.
            // SAFETY: installing a handler that does nothing.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_wake as extern "C" fn(libc::c_int) as usize;
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
            }
            Ok(KvmStaller {
                vcpu,
                vm: Some(vm),
                memory,
            })
        }

        /// Blocks inside `KVM_RUN` for about `how_long`.
        pub fn stall(&mut self, how_long: Duration) -> Result<()> {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            let waker = std::thread::Builder::new()
                .name("waker".into())
                .spawn(move || {
                    std::thread::sleep(how_long);
                    // SAFETY: `me` is this (still running) thread: stall waits for the waker.
                    unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                })
                .context("cannot start the waker thread")?;
            loop {
                match self.vcpu.run() {
                    Err(e) if e.errno() == libc::EINTR => break,
                    Err(e) => return Err(e).context("KVM_RUN"),
                    // HLT exits to user space only without an in-kernel irqchip; go back in.
                    Ok(_) if waker.is_finished() => break,
                    Ok(_) => continue,
                }
            }
            waker
                .join()
                .map_err(|_| anyhow::anyhow!("waker thread panicked"))
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kvm_stall {
    use anyhow::{bail, Result};
    use std::time::Duration;

    pub struct KvmStaller;

    impl KvmStaller {
        pub fn new() -> Result<KvmStaller> {
            bail!("the kvm stall is written for x86-64 guests only")
        }

        pub fn stall(&mut self, _: Duration) -> Result<()> {
            Ok(())
        }
    }
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
    let FrameLoop {
        truth,
        thread,
        in_loop,
    } = if args.render_thread {
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
    for (before, after) in truth {
        writeln!(out, "{before} {after}")?;
    }
    drop(out);
    // Last, so that the process's count includes everything but its exit.
    let process = Rusage::of(libc::RUSAGE_SELF)?;
    let path = rusage_path(&args.truth);
    std::fs::write(
        &path,
        format!(
            "thread {}\nframe_loop {}\nprocess {}\n",
            thread.line(),
            in_loop.line(),
            process.line()
        ),
    )
    .with_context(|| format!("cannot write {}", path.display()))?;
    // Gone at once: no exit handlers (Mesa's joins its threads) switching after the counts
    // were taken. Everything is written (plain files, closed).
    // SAFETY: _exit ends the process; nothing of ours is left to run.
    unsafe { libc::_exit(0) }
}
