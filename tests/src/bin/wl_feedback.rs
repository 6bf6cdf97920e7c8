//! A Wayland client that presents through the real `eglSwapBuffers` (Mesa's EGL on the
//! compositor's Wayland socket) and asks the compositor, for every frame, what became of it
//! (`wp_presentation` feedback: presented at which time, or discarded). That feedback is the
//! compositor's own ground truth, against which the agent's join of a game's frames to the
//! compositor's flips is checked.
//!
//! Writes JSON to `--out`: the presentation clock, and per frame the entry and return time of its
//! `eglSwapBuffers` (CLOCK_MONOTONIC ns, the clock the agent's probes read) and the compositor's
//! verdict.
//!
//! Kinds of game it plays: `--swap-interval 1` (the default) waits for the compositor like a
//! vsynced game (Vulkan: FIFO); `--swap-interval 0` presents as fast as it can (Vulkan: MAILBOX
//! or IMMEDIATE); `--frame-ms` makes each frame take at least that long (a game that cannot keep
//! up). `--api vulkan` presents through `vkQueuePresentKHR` (Mesa's Wayland WSI) instead.

use std::{
    collections::BTreeMap,
    ffi::c_void,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ash::vk;
use clap::Parser;
use libloading::{Library, Symbol};
use nvbind_tests::{
    monotonic_ns,
    vulkan_frame::{clear_for_present, FrameTools},
};
use serde_json::json;
use wayland_client::{
    globals::{registry_queue_init, GlobalListContents},
    protocol::{wl_compositor, wl_registry, wl_surface},
    Connection, Dispatch, Proxy, QueueHandle,
};
use wayland_protocols::{
    wp::presentation_time::client::{wp_presentation, wp_presentation_feedback},
    xdg::shell::client::{xdg_surface, xdg_toplevel, xdg_wm_base},
};

#[derive(Parser)]
#[command(about = "Present through EGL on Wayland and record wp_presentation feedback")]
struct Args {
    /// Frames to present.
    #[arg(long, default_value_t = 300)]
    frames: u32,
    /// eglSwapInterval: 1 waits for the compositor's frame callback, 0 does not.
    #[arg(long, default_value_t = 1)]
    swap_interval: i32,
    /// The least time a frame takes, ms (slept before its present; 0: none).
    #[arg(long, default_value_t = 0.0)]
    frame_ms: f64,
    /// Where to write the JSON record.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Surface size.
    #[arg(long, default_value_t = 256)]
    size: i32,
    /// What presents: EGL (`eglSwapBuffers`) or Vulkan (`vkQueuePresentKHR`).
    #[arg(long, value_enum, default_value_t = Api::Egl)]
    api: Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    Egl,
    Vulkan,
}

/// A way to draw and present frames on the surface.
trait Presenter {
    /// Draws frame `i` (not yet presented).
    fn draw(&mut self, i: u32) -> Result<()>;
    /// Presents it: the call nvbind hooks.
    fn present(&mut self) -> Result<()>;
}

/// What the compositor said about one frame.
#[derive(Debug, Clone, Copy, Default)]
enum Verdict {
    #[default]
    Pending,
    Presented {
        display_ns: u64,
        refresh_ns: u32,
        seq: u64,
        flags: u32,
    },
    Discarded,
}

#[derive(Default)]
struct State {
    clock_id: Option<u32>,
    configured: bool,
    closed: bool,
    verdicts: BTreeMap<u32, Verdict>,
}

impl Dispatch<wl_registry::WlRegistry, GlobalListContents> for State {
    fn event(
        _: &mut Self,
        _: &wl_registry::WlRegistry,
        _: wl_registry::Event,
        _: &GlobalListContents,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

impl Dispatch<wl_compositor::WlCompositor, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_compositor::WlCompositor,
        _: wl_compositor::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

impl Dispatch<wl_surface::WlSurface, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_surface::WlSurface,
        _: wl_surface::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

impl Dispatch<xdg_wm_base::XdgWmBase, ()> for State {
    fn event(
        _: &mut Self,
        base: &xdg_wm_base::XdgWmBase,
        event: xdg_wm_base::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_wm_base::Event::Ping { serial } = event {
            base.pong(serial);
        }
    }
}

impl Dispatch<xdg_surface::XdgSurface, ()> for State {
    fn event(
        state: &mut Self,
        surface: &xdg_surface::XdgSurface,
        event: xdg_surface::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_surface::Event::Configure { serial } = event {
            surface.ack_configure(serial);
            state.configured = true;
        }
    }
}

impl Dispatch<xdg_toplevel::XdgToplevel, ()> for State {
    fn event(
        state: &mut Self,
        _: &xdg_toplevel::XdgToplevel,
        event: xdg_toplevel::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_toplevel::Event::Close = event {
            state.closed = true;
        }
    }
}

impl Dispatch<wp_presentation::WpPresentation, ()> for State {
    fn event(
        state: &mut Self,
        _: &wp_presentation::WpPresentation,
        event: wp_presentation::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let wp_presentation::Event::ClockId { clk_id } = event {
            state.clock_id = Some(clk_id);
        }
    }
}

impl Dispatch<wp_presentation_feedback::WpPresentationFeedback, u32> for State {
    fn event(
        state: &mut Self,
        _: &wp_presentation_feedback::WpPresentationFeedback,
        event: wp_presentation_feedback::Event,
        frame: &u32,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        let verdict = match event {
            wp_presentation_feedback::Event::Presented {
                tv_sec_hi,
                tv_sec_lo,
                tv_nsec,
                refresh,
                seq_hi,
                seq_lo,
                flags,
            } => {
                let secs = (u64::from(tv_sec_hi) << 32) | u64::from(tv_sec_lo);
                Verdict::Presented {
                    display_ns: secs * 1_000_000_000 + u64::from(tv_nsec),
                    refresh_ns: refresh,
                    seq: (u64::from(seq_hi) << 32) | u64::from(seq_lo),
                    flags: flags.into(),
                }
            }
            wp_presentation_feedback::Event::Discarded => Verdict::Discarded,
            _ => return,
        };
        state.verdicts.insert(*frame, verdict);
    }
}

type EglDisplay = *mut c_void;
type EglSurface = *mut c_void;
type EglConfig = *mut c_void;
type EglContext = *mut c_void;

const EGL_PLATFORM_WAYLAND_KHR: u32 = 0x31D8;
const EGL_SURFACE_TYPE: i32 = 0x3033;
const EGL_WINDOW_BIT: i32 = 0x0004;
const EGL_RENDERABLE_TYPE: i32 = 0x3040;
const EGL_OPENGL_ES2_BIT: i32 = 0x0004;
const EGL_RED_SIZE: i32 = 0x3024;
const EGL_GREEN_SIZE: i32 = 0x3023;
const EGL_BLUE_SIZE: i32 = 0x3022;
const EGL_CONTEXT_CLIENT_VERSION: i32 = 0x3098;
const EGL_OPENGL_ES_API: u32 = 0x30A0;
const EGL_NONE: i32 = 0x3038;
const GL_COLOR_BUFFER_BIT: u32 = 0x4000;

/// Mesa's EGL on a Wayland surface, through `libEGL.so.1` and `libwayland-egl.so.1` (loaded at
/// run time: the machine building the tests needs neither).
struct Egl {
    _egl: Library,
    _wayland_egl: Library,
    display: EglDisplay,
    surface: EglSurface,
    swap: unsafe extern "C" fn(EglDisplay, EglSurface) -> u32,
    clear_color: unsafe extern "C" fn(f32, f32, f32, f32),
    clear: unsafe extern "C" fn(u32),
}

impl Egl {
    /// # Safety
    /// `display` and `surface` are live `wl_display*` and `wl_surface*` of this connection.
    unsafe fn open(
        display: *mut c_void,
        surface: *mut c_void,
        size: i32,
        interval: i32,
    ) -> Result<Egl> {
        let egl = Library::new("libEGL.so.1").context("cannot load libEGL.so.1")?;
        let wayland_egl =
            Library::new("libwayland-egl.so.1").context("cannot load libwayland-egl.so.1")?;
        let window_create: Symbol<unsafe extern "C" fn(*mut c_void, i32, i32) -> *mut c_void> =
            wayland_egl.get(b"wl_egl_window_create\0")?;
        let get_platform_display: Symbol<
            unsafe extern "C" fn(u32, *mut c_void, *const isize) -> EglDisplay,
        > = egl.get(b"eglGetPlatformDisplay\0")?;
        let initialize: Symbol<unsafe extern "C" fn(EglDisplay, *mut i32, *mut i32) -> u32> =
            egl.get(b"eglInitialize\0")?;
        let bind_api: Symbol<unsafe extern "C" fn(u32) -> u32> = egl.get(b"eglBindAPI\0")?;
        let choose: Symbol<
            unsafe extern "C" fn(EglDisplay, *const i32, *mut EglConfig, i32, *mut i32) -> u32,
        > = egl.get(b"eglChooseConfig\0")?;
        let create_context: Symbol<
            unsafe extern "C" fn(EglDisplay, EglConfig, EglContext, *const i32) -> EglContext,
        > = egl.get(b"eglCreateContext\0")?;
        let create_window: Symbol<
            unsafe extern "C" fn(EglDisplay, EglConfig, *mut c_void, *const i32) -> EglSurface,
        > = egl.get(b"eglCreateWindowSurface\0")?;
        let make_current: Symbol<
            unsafe extern "C" fn(EglDisplay, EglSurface, EglSurface, EglContext) -> u32,
        > = egl.get(b"eglMakeCurrent\0")?;
        let swap_interval: Symbol<unsafe extern "C" fn(EglDisplay, i32) -> u32> =
            egl.get(b"eglSwapInterval\0")?;
        let get_proc: Symbol<unsafe extern "C" fn(*const std::ffi::c_char) -> *mut c_void> =
            egl.get(b"eglGetProcAddress\0")?;
        let swap: Symbol<unsafe extern "C" fn(EglDisplay, EglSurface) -> u32> =
            egl.get(b"eglSwapBuffers\0")?;

        let dpy = get_platform_display(EGL_PLATFORM_WAYLAND_KHR, display, std::ptr::null());
        if dpy.is_null() {
            bail!("eglGetPlatformDisplay(EGL_PLATFORM_WAYLAND_KHR) failed");
        }
        let (mut major, mut minor) = (0, 0);
        if initialize(dpy, &mut major, &mut minor) == 0 {
            bail!("eglInitialize failed on the Wayland display");
        }
        bind_api(EGL_OPENGL_ES_API);
        let attributes = [
            EGL_SURFACE_TYPE,
            EGL_WINDOW_BIT,
            EGL_RENDERABLE_TYPE,
            EGL_OPENGL_ES2_BIT,
            EGL_RED_SIZE,
            8,
            EGL_GREEN_SIZE,
            8,
            EGL_BLUE_SIZE,
            8,
            EGL_NONE,
        ];
        let mut config: EglConfig = std::ptr::null_mut();
        let mut count = 0;
        if choose(dpy, attributes.as_ptr(), &mut config, 1, &mut count) == 0 || count < 1 {
            bail!("no EGL config with a window surface and GLES2");
        }
        let context_attributes = [EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE];
        let context = create_context(
            dpy,
            config,
            std::ptr::null_mut(),
            context_attributes.as_ptr(),
        );
        if context.is_null() {
            bail!("eglCreateContext failed");
        }
        let window = window_create(surface, size, size);
        if window.is_null() {
            bail!("wl_egl_window_create failed");
        }
        let egl_surface = create_window(dpy, config, window, std::ptr::null());
        if egl_surface.is_null() {
            bail!("eglCreateWindowSurface failed");
        }
        if make_current(dpy, egl_surface, egl_surface, context) == 0 {
            bail!("eglMakeCurrent failed");
        }
        if swap_interval(dpy, interval) == 0 {
            bail!("eglSwapInterval({interval}) failed");
        }
        let clear_color = get_proc(c"glClearColor".as_ptr());
        let clear = get_proc(c"glClear".as_ptr());
        if clear_color.is_null() || clear.is_null() {
            bail!("no glClearColor/glClear from eglGetProcAddress");
        }
        Ok(Egl {
            swap: *swap,
            clear_color: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(f32, f32, f32, f32)>(
                clear_color,
            ),
            clear: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32)>(clear),
            display: dpy,
            surface: egl_surface,
            _egl: egl,
            _wayland_egl: wayland_egl,
        })
    }
}

impl Presenter for Egl {
    fn draw(&mut self, i: u32) -> Result<()> {
        let shade = (i % 64) as f32 / 64.0;
        // SAFETY: the context is current on this thread.
        unsafe {
            (self.clear_color)(shade, 0.3, 1.0 - shade, 1.0);
            (self.clear)(GL_COLOR_BUFFER_BIT);
        }
        Ok(())
    }

    fn present(&mut self) -> Result<()> {
        // SAFETY: display and surface are live; the context is current.
        if unsafe { (self.swap)(self.display, self.surface) } == 0 {
            bail!("eglSwapBuffers failed");
        }
        Ok(())
    }
}

/// Vulkan (Mesa's lavapipe or a GPU) on the Wayland surface: a swapchain cleared and presented.
struct Vulkan {
    _entry: ash::Entry,
    device: ash::Device,
    swapchain_fn: ash::khr::swapchain::Device,
    swapchain: vk::SwapchainKHR,
    images: Vec<vk::Image>,
    queue: vk::Queue,
    pool: vk::CommandPool,
    acquired: vk::Semaphore,
    fence: vk::Fence,
    /// The image drawn and not yet presented.
    index: u32,
}

impl Vulkan {
    /// # Safety
    /// `display` and `surface` are live `wl_display*` and `wl_surface*` of this connection.
    unsafe fn open(
        display: *mut c_void,
        surface: *mut c_void,
        size: u32,
        interval: i32,
    ) -> Result<Vulkan> {
        let entry = ash::Entry::load().context("no Vulkan loader (libvulkan.so.1)")?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"wl-feedback")
            .api_version(vk::API_VERSION_1_1);
        let extensions = [
            ash::khr::surface::NAME.as_ptr(),
            ash::khr::wayland_surface::NAME.as_ptr(),
        ];
        let instance = entry
            .create_instance(
                &vk::InstanceCreateInfo::default()
                    .application_info(&app)
                    .enabled_extension_names(&extensions),
                None,
            )
            .context("vkCreateInstance with VK_KHR_wayland_surface")?;
        let physical = *instance
            .enumerate_physical_devices()?
            .first()
            .context("no Vulkan device")?;
        let wayland_fn = ash::khr::wayland_surface::Instance::new(&entry, &instance);
        let surface = wayland_fn
            .create_wayland_surface(
                &vk::WaylandSurfaceCreateInfoKHR::default()
                    .display(display)
                    .surface(surface),
                None,
            )
            .context("vkCreateWaylandSurfaceKHR")?;
        let surface_fn = ash::khr::surface::Instance::new(&entry, &instance);
        if !surface_fn.get_physical_device_surface_support(physical, 0, surface)? {
            bail!("queue family 0 cannot present to the Wayland surface");
        }
        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(0)
            .queue_priorities(&priorities)];
        let device_extensions = [ash::khr::swapchain::NAME.as_ptr()];
        let device = instance
            .create_device(
                physical,
                &vk::DeviceCreateInfo::default()
                    .queue_create_infos(&queue_info)
                    .enabled_extension_names(&device_extensions),
                None,
            )
            .context("vkCreateDevice")?;
        let caps = surface_fn.get_physical_device_surface_capabilities(physical, surface)?;
        let formats = surface_fn.get_physical_device_surface_formats(physical, surface)?;
        let format = formats
            .iter()
            .find(|f| f.format == vk::Format::B8G8R8A8_UNORM)
            .or(formats.first())
            .copied()
            .context("the surface has no format")?;
        let modes = surface_fn.get_physical_device_surface_present_modes(physical, surface)?;
        // Interval 0: a mode that never waits for the compositor, where the driver has one.
        let mode = if interval == 0 {
            [vk::PresentModeKHR::MAILBOX, vk::PresentModeKHR::IMMEDIATE]
                .into_iter()
                .find(|m| modes.contains(m))
                .unwrap_or(vk::PresentModeKHR::FIFO)
        } else {
            vk::PresentModeKHR::FIFO
        };
        // A Wayland surface has no size of its own (0xFFFFFFFF): the swapchain gives it one.
        let extent = if caps.current_extent.width == u32::MAX {
            vk::Extent2D {
                width: size,
                height: size,
            }
        } else {
            caps.current_extent
        };
        let swapchain_fn = ash::khr::swapchain::Device::new(&instance, &device);
        let swapchain = swapchain_fn
            .create_swapchain(
                &vk::SwapchainCreateInfoKHR::default()
                    .surface(surface)
                    .min_image_count(caps.min_image_count.max(3))
                    .image_format(format.format)
                    .image_color_space(format.color_space)
                    .image_extent(extent)
                    .image_array_layers(1)
                    .image_usage(vk::ImageUsageFlags::TRANSFER_DST)
                    .pre_transform(caps.current_transform)
                    .composite_alpha(vk::CompositeAlphaFlagsKHR::OPAQUE)
                    .present_mode(mode)
                    .clipped(true),
                None,
            )
            .context("vkCreateSwapchainKHR")?;
        let images = swapchain_fn.get_swapchain_images(swapchain)?;
        let queue = device.get_device_queue(0, 0);
        let pool = device.create_command_pool(
            &vk::CommandPoolCreateInfo::default()
                .queue_family_index(0)
                .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
            None,
        )?;
        let acquired = device.create_semaphore(&vk::SemaphoreCreateInfo::default(), None)?;
        let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
        Ok(Vulkan {
            _entry: entry,
            device,
            swapchain_fn,
            swapchain,
            images,
            queue,
            pool,
            acquired,
            fence,
            index: 0,
        })
    }
}

impl Presenter for Vulkan {
    fn draw(&mut self, i: u32) -> Result<()> {
        let shade = (i % 64) as f32 / 64.0;
        // SAFETY: valid handles; the fence is waited for before anything is reused.
        unsafe {
            let (index, _) = self
                .swapchain_fn
                .acquire_next_image(self.swapchain, u64::MAX, self.acquired, vk::Fence::null())
                .context("vkAcquireNextImageKHR")?;
            self.index = index;
            let tools = FrameTools {
                device: &self.device,
                queue: self.queue,
                pool: self.pool,
                fence: self.fence,
            };
            clear_for_present(
                &tools,
                self.acquired,
                self.images[index as usize],
                [shade, 0.3, 1.0 - shade, 1.0],
            )
        }
    }

    fn present(&mut self) -> Result<()> {
        let swapchains = [self.swapchain];
        let indices = [self.index];
        let info = vk::PresentInfoKHR::default()
            .swapchains(&swapchains)
            .image_indices(&indices);
        // SAFETY: valid handles; the image was acquired and drawn.
        unsafe { self.swapchain_fn.queue_present(self.queue, &info) }
            .context("vkQueuePresentKHR")?;
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let connection = Connection::connect_to_env()
        .context("cannot connect to the Wayland compositor (is WAYLAND_DISPLAY set?)")?;
    let (globals, mut queue) = registry_queue_init::<State>(&connection)
        .context("cannot list the compositor's globals")?;
    let qh = queue.handle();
    let compositor: wl_compositor::WlCompositor =
        globals.bind(&qh, 4..=5, ()).context("no wl_compositor")?;
    let wm_base: xdg_wm_base::XdgWmBase = globals.bind(&qh, 1..=2, ()).context("no xdg_wm_base")?;
    let presentation: wp_presentation::WpPresentation = globals
        .bind(&qh, 1..=1, ())
        .context("the compositor has no wp_presentation")?;
    let mut state = State::default();

    let surface = compositor.create_surface(&qh, ());
    let xdg = wm_base.get_xdg_surface(&surface, &qh, ());
    let toplevel = xdg.get_toplevel(&qh, ());
    toplevel.set_title("nvbind wl-feedback".into());
    surface.commit();
    while !state.configured {
        queue
            .blocking_dispatch(&mut state)
            .context("the compositor went away before configuring the window")?;
    }
    let clock_id = state.clock_id.unwrap_or(libc::CLOCK_MONOTONIC as u32);
    if clock_id != libc::CLOCK_MONOTONIC as u32 {
        bail!("the compositor presents on clock {clock_id}, not CLOCK_MONOTONIC");
    }

    let display = connection.backend().display_ptr() as *mut c_void;
    let wl_surface = surface.id().as_ptr() as *mut c_void;
    // SAFETY: both pointers are this connection's live objects (libwayland's, the system
    // backend), and outlive the EGL or Vulkan surface (the process ends first).
    let mut presenter: Box<dyn Presenter> = unsafe {
        match args.api {
            Api::Egl => Box::new(Egl::open(
                display,
                wl_surface,
                args.size,
                args.swap_interval,
            )?),
            Api::Vulkan => Box::new(Vulkan::open(
                display,
                wl_surface,
                args.size.max(1) as u32,
                args.swap_interval,
            )?),
        }
    };

    let mut frames = Vec::with_capacity(args.frames as usize);
    let started = Instant::now();
    for i in 0..args.frames {
        if state.closed {
            break;
        }
        let frame_start = Instant::now();
        presenter.draw(i)?;
        if args.frame_ms > 0.0 {
            let least = Duration::from_secs_f64(args.frame_ms / 1000.0);
            if let Some(left) = least.checked_sub(frame_start.elapsed()) {
                std::thread::sleep(left);
            }
        }
        // Asked before the swap: the feedback belongs to the next commit, which is the swap's.
        let _feedback = presentation.feedback(&surface, &qh, i);
        let entry_ns = monotonic_ns();
        presenter
            .present()
            .with_context(|| format!("presenting frame {i}"))?;
        let return_ns = monotonic_ns();
        frames.push((i, entry_ns, return_ns));
        connection.flush().ok();
        queue
            .dispatch_pending(&mut state)
            .context("dispatching the compositor's events")?;
    }
    let elapsed = started.elapsed();

    // Every frame's verdict comes with or before the next flip's; wait a few refreshes for the
    // last ones.
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.verdicts.len() < frames.len() && Instant::now() < deadline {
        queue
            .roundtrip(&mut state)
            .context("waiting for the last frames' feedback")?;
        std::thread::sleep(Duration::from_millis(20));
    }

    let records: Vec<_> = frames
        .iter()
        .map(|&(i, entry_ns, return_ns)| {
            let verdict = state.verdicts.get(&i).copied().unwrap_or_default();
            match verdict {
                Verdict::Presented {
                    display_ns,
                    refresh_ns,
                    seq,
                    flags,
                } => json!({
                    "frame": i, "entry_ns": entry_ns, "return_ns": return_ns,
                    "verdict": "presented", "display_ns": display_ns,
                    "refresh_ns": refresh_ns, "seq": seq, "flags": flags,
                }),
                Verdict::Discarded => json!({
                    "frame": i, "entry_ns": entry_ns, "return_ns": return_ns,
                    "verdict": "discarded",
                }),
                Verdict::Pending => json!({
                    "frame": i, "entry_ns": entry_ns, "return_ns": return_ns,
                    "verdict": "pending",
                }),
            }
        })
        .collect();
    let presented = records
        .iter()
        .filter(|r| r["verdict"] == "presented")
        .count();
    let discarded = records
        .iter()
        .filter(|r| r["verdict"] == "discarded")
        .count();
    let out = json!({
        "pid": std::process::id(),
        "clock_id": clock_id,
        "swap_interval": args.swap_interval,
        "api": format!("{:?}", args.api).to_lowercase(),
        "frame_ms": args.frame_ms,
        "seconds": elapsed.as_secs_f64(),
        "presented": presented,
        "discarded": discarded,
        "frames": records,
    });
    let text = serde_json::to_string_pretty(&out)?;
    let partial = args.out.with_extension("partial");
    std::fs::write(&partial, text)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wl-feedback: {} frames in {:.2} s: {presented} presented, {discarded} discarded",
        frames.len(),
        elapsed.as_secs_f64()
    );
    Ok(())
}
