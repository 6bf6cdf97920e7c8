//! A Vulkan game for nvbind's shader-compile tests: a frame loop that presents through the real
//! `vkQueuePresentKHR` of the installed driver (an XCB window on the test's X server; lavapipe
//! here) and, every `--compile-every` frames, builds graphics pipelines from deliberately large
//! shaders, each batch's shaders its own (a driver cannot reuse an earlier batch's work).
//!
//! It writes its own ground truth to `--log`, one line per event, times on CLOCK_MONOTONIC:
//! - `frame BEFORE AFTER`: just before and just after each present call;
//! - `compile CALL TID START END COUNT CACHE HIT [VALID HITS]`: each shader-module and pipeline
//!   creation call (`vkCreateShaderModule`, `vkCreateGraphicsPipelines`), the thread that made
//!   it, how many pipelines it created (0 for a shader module), whether a pipeline cache was
//!   given (1/0), whether the driver says the cache held the pipelines (`hit`, `miss`, or
//!   `unknown` where it does not say: VK_EXT_pipeline_creation_feedback), and for a pipeline
//!   call the pipelines whose feedback the driver filled in and, of them, those it says came
//!   from the cache.
//!
//! `--compile-on worker`: the pipelines are built on a worker thread while the render thread
//! waits for them (a renderer that needs the pipeline for this frame). `--pipeline-cache PATH`:
//! a VkPipelineCache loaded from PATH when the file exists and written back at the end, so a
//! second run is a warm one.

use std::{
    ffi::c_void, fmt::Write as _, io::Write as _, path::PathBuf, sync::mpsc, time::Duration,
};

use anyhow::{bail, Context, Result};
use ash::vk;
use clap::{Parser, ValueEnum};
use libloading::Library;
use nvbind_tests::{
    gettid, monotonic_ns,
    vulkan_frame::{clear_for_present, FrameTools},
    with_ground_truth,
};

#[derive(Debug, Parser)]
struct Args {
    /// Frames to present (at most, with `--stop-file`).
    #[arg(long, default_value_t = 120)]
    frames: u32,
    /// Stop presenting once this file exists (checked before each frame): for a test that needs
    /// the game running until it has seen something happen.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Target frame interval in milliseconds.
    #[arg(long, default_value_t = 16.0)]
    interval_ms: f64,
    /// Every Nth frame builds a batch of pipelines before it presents (0: never), for the first
    /// `MAX_BATCHES` batches (their shaders are made before the first frame).
    #[arg(long, default_value_t = 0)]
    compile_every: u32,
    /// Pipelines per batch, created in one vkCreateGraphicsPipelines call.
    #[arg(long, default_value_t = 1)]
    pipelines: u32,
    /// Operations in each fragment shader: what makes a pipeline expensive to build.
    #[arg(long, default_value_t = 2000)]
    shader_ops: u32,
    /// Which thread builds the pipelines.
    #[arg(long, value_enum, default_value_t = CompileOn::Render)]
    compile_on: CompileOn,
    /// A pipeline cache file: loaded when it exists, written at the end.
    #[arg(long)]
    pipeline_cache: Option<PathBuf>,
    /// Where the ground truth goes.
    #[arg(long)]
    log: PathBuf,
    /// Do not present (no window): only build the pipelines, for measuring a driver.
    #[arg(long)]
    no_present: bool,
    /// Stay alive this long after the last frame, presenting nothing (a game in a menu): its
    /// series stay on the daemon's /metrics meanwhile.
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CompileOn {
    /// The render thread builds them itself.
    Render,
    /// A worker builds them; the render thread waits.
    Worker,
}

/// Batches of pipelines at most: each batch's shaders are generated before the first frame.
const MAX_BATCHES: u32 = 16;

/// The worker thread's name (`--compile-on worker`), as the tests expect to see it named.
const WORKER_NAME: &str = "shader-worker";

/// The color format the pipelines render to (dynamic rendering: no render pass object).
const COLOR_FORMAT: vk::Format = vk::Format::B8G8R8A8_UNORM;

fn main() -> Result<()> {
    let args = Args::parse();
    with_ground_truth(&args.log, |log| run(&args, log))
}

/// The fragment shader of pipeline `index` of batch `batch`: `ops` dependent operations on the
/// fragment's position, with constants of that pipeline's own.
fn fragment_wgsl(batch: u32, index: u32, ops: u32) -> String {
    let seed = 1.0 + (batch * 97 + index) as f32 / 1024.0;
    let mut body = String::new();
    for i in 0..ops {
        let k = seed + i as f32 / 4096.0;
        let _ = writeln!(body, "    v = sin(v * {k:.6} + {:.6}) * 0.999;", k / 3.0);
    }
    format!(
        "@fragment\nfn main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {{\n    var v = p.x * {seed:.6} + p.y;\n{body}    return vec4<f32>(v, v * 0.5, 1.0 - v, 1.0);\n}}\n"
    )
}

/// A full-screen triangle.
const VERTEX_WGSL: &str = "@vertex\nfn main(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {\n    let x = f32(i & 1u) * 4.0 - 1.0;\n    let y = f32(i >> 1u) * 4.0 - 1.0;\n    return vec4<f32>(x, y, 0.0, 1.0);\n}\n";

/// SPIR-V words of a WGSL module (naga).
fn spirv(wgsl: &str) -> Result<Vec<u32>> {
    let module = naga::front::wgsl::parse_str(wgsl).context("parse the WGSL")?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .context("validate the shader")?;
    naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
        .context("write SPIR-V")
}

/// Builds one batch of pipelines; appends the calls to `log`.
struct Builder {
    device: ash::Device,
    layout: vk::PipelineLayout,
    cache: vk::PipelineCache,
    /// SPIR-V of the vertex shader (the same for every pipeline).
    vertex: Vec<u32>,
    /// SPIR-V of each batch's fragment shaders, made before the first frame: the frames must
    /// wait for the driver's compiles, not for this program's shader generator.
    batches: Vec<Vec<Vec<u32>>>,
}

impl Builder {
    fn build(&self, batch: u32, log: &mut String) -> Result<Vec<vk::Pipeline>> {
        let fragments = self
            .batches
            .get(batch as usize)
            .context("a batch beyond those made")?;
        let tid = gettid();
        let module = |words: &[u32], log: &mut String| -> Result<vk::ShaderModule> {
            let info = vk::ShaderModuleCreateInfo::default().code(words);
            let start = monotonic_ns();
            // SAFETY: valid device and SPIR-V.
            let m = unsafe { self.device.create_shader_module(&info, None) };
            let end = monotonic_ns();
            let _ = writeln!(
                log,
                "compile vkCreateShaderModule {tid} {start} {end} 0 0 unknown"
            );
            m.context("vkCreateShaderModule")
        };
        let vs = module(&self.vertex, log)?;
        let fs = fragments
            .iter()
            .map(|f| module(f, log))
            .collect::<Result<Vec<_>>>()?;
        let stages: Vec<[vk::PipelineShaderStageCreateInfo; 2]> = fs
            .iter()
            .map(|&f| {
                [
                    vk::PipelineShaderStageCreateInfo::default()
                        .stage(vk::ShaderStageFlags::VERTEX)
                        .module(vs)
                        .name(c"main"),
                    vk::PipelineShaderStageCreateInfo::default()
                        .stage(vk::ShaderStageFlags::FRAGMENT)
                        .module(f)
                        .name(c"main"),
                ]
            })
            .collect();
        let vertex_input = vk::PipelineVertexInputStateCreateInfo::default();
        let assembly = vk::PipelineInputAssemblyStateCreateInfo::default()
            .topology(vk::PrimitiveTopology::TRIANGLE_LIST);
        let viewport = vk::PipelineViewportStateCreateInfo::default()
            .viewport_count(1)
            .scissor_count(1);
        let raster = vk::PipelineRasterizationStateCreateInfo::default()
            .polygon_mode(vk::PolygonMode::FILL)
            .cull_mode(vk::CullModeFlags::NONE)
            .line_width(1.0);
        let multisample = vk::PipelineMultisampleStateCreateInfo::default()
            .rasterization_samples(vk::SampleCountFlags::TYPE_1);
        let blend_attachment = [vk::PipelineColorBlendAttachmentState::default()
            .color_write_mask(vk::ColorComponentFlags::RGBA)];
        let blend = vk::PipelineColorBlendStateCreateInfo::default().attachments(&blend_attachment);
        let dynamic_states = [vk::DynamicState::VIEWPORT, vk::DynamicState::SCISSOR];
        let dynamic = vk::PipelineDynamicStateCreateInfo::default().dynamic_states(&dynamic_states);
        let formats = [COLOR_FORMAT];
        let mut feedback = vec![vk::PipelineCreationFeedback::default(); stages.len()];
        let mut stage_feedback = vec![vk::PipelineCreationFeedback::default(); stages.len() * 2];
        let mut renderings: Vec<vk::PipelineRenderingCreateInfo> = stages
            .iter()
            .map(|_| vk::PipelineRenderingCreateInfo::default().color_attachment_formats(&formats))
            .collect();
        let mut feedbacks: Vec<vk::PipelineCreationFeedbackCreateInfo> = feedback
            .iter_mut()
            .zip(stage_feedback.chunks_mut(2))
            .map(|(f, s)| {
                vk::PipelineCreationFeedbackCreateInfo::default()
                    .pipeline_creation_feedback(f)
                    .pipeline_stage_creation_feedbacks(s)
            })
            .collect();
        let infos: Vec<vk::GraphicsPipelineCreateInfo> = stages
            .iter()
            .zip(renderings.iter_mut())
            .zip(feedbacks.iter_mut())
            .map(|((s, r), f)| {
                vk::GraphicsPipelineCreateInfo::default()
                    .stages(s)
                    .vertex_input_state(&vertex_input)
                    .input_assembly_state(&assembly)
                    .viewport_state(&viewport)
                    .rasterization_state(&raster)
                    .multisample_state(&multisample)
                    .color_blend_state(&blend)
                    .dynamic_state(&dynamic)
                    .layout(self.layout)
                    .push_next(r)
                    .push_next(f)
            })
            .collect();
        let start = monotonic_ns();
        // SAFETY: valid create infos, all they point at alive until the call returns.
        let made = unsafe {
            self.device
                .create_graphics_pipelines(self.cache, &infos, None)
        };
        let end = monotonic_ns();
        drop(infos);
        let cached = u8::from(self.cache != vk::PipelineCache::null());
        let hit = if feedback
            .iter()
            .all(|f| f.flags.contains(vk::PipelineCreationFeedbackFlags::VALID))
        {
            let all_hit = feedback.iter().all(|f| {
                f.flags
                    .contains(vk::PipelineCreationFeedbackFlags::APPLICATION_PIPELINE_CACHE_HIT)
            });
            if all_hit {
                "hit"
            } else {
                "miss"
            }
        } else {
            "unknown"
        };
        let valid = feedback
            .iter()
            .filter(|f| f.flags.contains(vk::PipelineCreationFeedbackFlags::VALID))
            .count();
        let hits = feedback
            .iter()
            .filter(|f| {
                f.flags.contains(
                    vk::PipelineCreationFeedbackFlags::VALID
                        | vk::PipelineCreationFeedbackFlags::APPLICATION_PIPELINE_CACHE_HIT,
                )
            })
            .count();
        let _ = writeln!(
            log,
            "compile vkCreateGraphicsPipelines {tid} {start} {end} {} {cached} {hit} {valid} {hits}",
            fragments.len()
        );
        // SAFETY: the modules are no longer needed once the pipelines exist.
        unsafe {
            self.device.destroy_shader_module(vs, None);
            for f in fs {
                self.device.destroy_shader_module(f, None);
            }
        }
        made.map_err(|(_, e)| anyhow::anyhow!("vkCreateGraphicsPipelines: {e}"))
    }
}

/// The XCB window the swapchain presents to (libxcb, loaded at run time).
struct Window {
    _xcb: Library,
    connection: *mut c_void,
    window: u32,
}

impl Window {
    fn open(width: u16, height: u16) -> Result<Window> {
        // SAFETY: loading the system's libxcb, whose functions are called with their C types.
        unsafe {
            let xcb = Library::new("libxcb.so.1").context("load libxcb.so.1")?;
            let connect: libloading::Symbol<
                unsafe extern "C" fn(*const i8, *mut i32) -> *mut c_void,
            > = xcb.get(b"xcb_connect")?;
            let has_error: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> i32> =
                xcb.get(b"xcb_connection_has_error")?;
            let setup: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> *const c_void> =
                xcb.get(b"xcb_get_setup")?;
            let roots: libloading::Symbol<
                unsafe extern "C" fn(*const c_void) -> XcbScreenIterator,
            > = xcb.get(b"xcb_setup_roots_iterator")?;
            let generate_id: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> u32> =
                xcb.get(b"xcb_generate_id")?;
            #[allow(clippy::type_complexity)]
            let create_window: libloading::Symbol<
                unsafe extern "C" fn(
                    *mut c_void,
                    u8,
                    u32,
                    u32,
                    i16,
                    i16,
                    u16,
                    u16,
                    u16,
                    u16,
                    u32,
                    u32,
                    *const c_void,
                ) -> u32,
            > = xcb.get(b"xcb_create_window")?;
            let map_window: libloading::Symbol<unsafe extern "C" fn(*mut c_void, u32) -> u32> =
                xcb.get(b"xcb_map_window")?;
            let flush: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> i32> =
                xcb.get(b"xcb_flush")?;
            let connection = connect(std::ptr::null(), std::ptr::null_mut());
            if connection.is_null() || has_error(connection) != 0 {
                bail!("cannot connect to the X server (DISPLAY)");
            }
            let screen = roots(setup(connection)).data;
            if screen.is_null() {
                bail!("the X server has no screen");
            }
            let window = generate_id(connection);
            // XCB_WINDOW_CLASS_INPUT_OUTPUT = 1; depth/visual copied from the parent (0).
            create_window(
                connection,
                0,
                window,
                (*screen).root,
                0,
                0,
                width,
                height,
                0,
                1,
                (*screen).root_visual,
                0,
                std::ptr::null(),
            );
            map_window(connection, window);
            flush(connection);
            Ok(Window {
                _xcb: xcb,
                connection,
                window,
            })
        }
    }
}

/// `xcb_screen_t`'s first fields.
#[repr(C)]
struct XcbScreen {
    root: u32,
    default_colormap: u32,
    white_pixel: u32,
    black_pixel: u32,
    current_input_masks: u32,
    width_in_pixels: u16,
    height_in_pixels: u16,
    width_in_millimeters: u16,
    height_in_millimeters: u16,
    min_installed_maps: u16,
    max_installed_maps: u16,
    root_visual: u32,
}

#[repr(C)]
struct XcbScreenIterator {
    data: *const XcbScreen,
    rem: i32,
    index: i32,
}

/// The presenting half: surface, swapchain and one command buffer per frame that clears the
/// image (the frames need not show anything: the present call is what is measured).
struct Presenter {
    swapchain_fn: ash::khr::swapchain::Device,
    swapchain: vk::SwapchainKHR,
    images: Vec<vk::Image>,
    queue: vk::Queue,
    pool: vk::CommandPool,
    acquired: vk::Semaphore,
    fence: vk::Fence,
}

fn run(args: &Args, log: &mut String) -> Result<()> {
    // SAFETY: loads the system's Vulkan loader.
    let entry = unsafe { ash::Entry::load() }.context("no Vulkan loader (libvulkan.so.1)")?;
    let app = vk::ApplicationInfo::default()
        .application_name(c"vk-compile")
        .api_version(vk::API_VERSION_1_3);
    let mut extensions = vec![];
    if !args.no_present {
        extensions.push(ash::khr::surface::NAME.as_ptr());
        extensions.push(ash::khr::xcb_surface::NAME.as_ptr());
    }
    let create = vk::InstanceCreateInfo::default()
        .application_info(&app)
        .enabled_extension_names(&extensions);
    // SAFETY: valid create info.
    let instance = unsafe { entry.create_instance(&create, None) }.context("vkCreateInstance")?;
    // SAFETY: valid instance.
    let physical = *unsafe { instance.enumerate_physical_devices() }?
        .first()
        .context("no Vulkan device")?;
    let priorities = [1.0f32];
    let queue_info = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(0)
        .queue_priorities(&priorities)];
    let mut device_extensions = vec![];
    if !args.no_present {
        device_extensions.push(ash::khr::swapchain::NAME.as_ptr());
    }
    let mut features13 = vk::PhysicalDeviceVulkan13Features::default().dynamic_rendering(true);
    let info = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queue_info)
        .enabled_extension_names(&device_extensions)
        .push_next(&mut features13);
    // SAFETY: valid physical device and create info.
    let device =
        unsafe { instance.create_device(physical, &info, None) }.context("vkCreateDevice")?;

    let initial = match &args.pipeline_cache {
        Some(path) => std::fs::read(path).unwrap_or_default(),
        None => Vec::new(),
    };
    let cache = if args.pipeline_cache.is_some() {
        let info = vk::PipelineCacheCreateInfo::default().initial_data(&initial);
        // SAFETY: valid device; the driver checks the data's header.
        unsafe { device.create_pipeline_cache(&info, None) }.context("vkCreatePipelineCache")?
    } else {
        vk::PipelineCache::null()
    };
    // SAFETY: valid device; an empty layout.
    let layout =
        unsafe { device.create_pipeline_layout(&vk::PipelineLayoutCreateInfo::default(), None) }
            .context("vkCreatePipelineLayout")?;
    let batches = match args.compile_every {
        0 => 0,
        every => args.frames.div_ceil(every).min(MAX_BATCHES),
    };
    let builder = Builder {
        device: device.clone(),
        layout,
        cache,
        vertex: spirv(VERTEX_WGSL)?,
        batches: (0..batches)
            .map(|batch| {
                (0..args.pipelines)
                    .map(|i| spirv(&fragment_wgsl(batch, i, args.shader_ops)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?,
    };

    let presenter = if args.no_present {
        None
    } else {
        let window = Window::open(320, 240)?;
        Some((
            presenter(&entry, &instance, physical, &device, &window)?,
            window,
        ))
    };

    let mut pipelines = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        let builder = &builder;
        let channels = if args.compile_on == CompileOn::Worker {
            let (ask, asked) = mpsc::channel::<u32>();
            let (give, given) = mpsc::channel::<(Result<Vec<vk::Pipeline>>, String)>();
            std::thread::Builder::new()
                .name(WORKER_NAME.into())
                .spawn_scoped(scope, move || {
                    while let Ok(batch) = asked.recv() {
                        let mut lines = String::new();
                        let made = builder.build(batch, &mut lines);
                        if give.send((made, lines)).is_err() {
                            break;
                        }
                    }
                })
                .context("start the worker")?;
            Some((ask, given))
        } else {
            None
        };
        let interval = Duration::from_secs_f64(args.interval_ms / 1e3);
        let mut next = std::time::Instant::now();
        for frame in 0..args.frames {
            if args.stop_file.as_ref().is_some_and(|f| f.exists()) {
                break;
            }
            let batch = match args.compile_every {
                0 => u32::MAX,
                every if frame % every == 0 => frame / every,
                _ => u32::MAX,
            };
            if frame > 0 && batch < batches {
                let made = match &channels {
                    Some((ask, given)) => {
                        ask.send(batch).context("the worker is gone")?;
                        let (made, lines) = given.recv().context("the worker is gone")?;
                        log.push_str(&lines);
                        made
                    }
                    None => builder.build(batch, log),
                }?;
                pipelines.extend(made);
            }
            if let Some((p, _)) = &presenter {
                let (before, after) = present(&device, p)?;
                let _ = writeln!(log, "frame {before} {after}");
            }
            next += interval;
            let now = std::time::Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        drop(channels);
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(args.linger_ms));

    // SAFETY: the device is idle after the last present's fence; everything made here is
    // destroyed before the device.
    unsafe {
        device.device_wait_idle()?;
        if let Some(path) = &args.pipeline_cache {
            let data = device.get_pipeline_cache_data(cache)?;
            std::fs::write(path, data).with_context(|| format!("write {}", path.display()))?;
        }
        for p in pipelines {
            device.destroy_pipeline(p, None);
        }
        if let Some((p, _window)) = presenter {
            device.destroy_fence(p.fence, None);
            device.destroy_semaphore(p.acquired, None);
            device.destroy_command_pool(p.pool, None);
            p.swapchain_fn.destroy_swapchain(p.swapchain, None);
        }
        device.destroy_pipeline_layout(layout, None);
        device.destroy_pipeline_cache(cache, None);
        device.destroy_device(None);
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn presenter(
    entry: &ash::Entry,
    instance: &ash::Instance,
    physical: vk::PhysicalDevice,
    device: &ash::Device,
    window: &Window,
) -> Result<Presenter> {
    let surface_fn = ash::khr::surface::Instance::new(entry, instance);
    let xcb_fn = ash::khr::xcb_surface::Instance::new(entry, instance);
    let info = vk::XcbSurfaceCreateInfoKHR::default()
        .connection(window.connection)
        .window(window.window);
    // SAFETY: a live connection and window.
    let surface =
        unsafe { xcb_fn.create_xcb_surface(&info, None) }.context("vkCreateXcbSurfaceKHR")?;
    // SAFETY: valid handles.
    let caps = unsafe { surface_fn.get_physical_device_surface_capabilities(physical, surface) }?;
    let swapchain_fn = ash::khr::swapchain::Device::new(instance, device);
    let info = vk::SwapchainCreateInfoKHR::default()
        .surface(surface)
        .min_image_count(caps.min_image_count.max(2))
        .image_format(COLOR_FORMAT)
        .image_color_space(vk::ColorSpaceKHR::SRGB_NONLINEAR)
        .image_extent(caps.current_extent)
        .image_array_layers(1)
        .image_usage(vk::ImageUsageFlags::COLOR_ATTACHMENT | vk::ImageUsageFlags::TRANSFER_DST)
        .pre_transform(caps.current_transform)
        .composite_alpha(vk::CompositeAlphaFlagsKHR::OPAQUE)
        // Immediate where the driver has it: the frame loop paces itself.
        .present_mode(vk::PresentModeKHR::IMMEDIATE)
        .clipped(true);
    // SAFETY: valid create info.
    let swapchain =
        unsafe { swapchain_fn.create_swapchain(&info, None) }.context("vkCreateSwapchainKHR")?;
    // SAFETY: valid swapchain.
    let images = unsafe { swapchain_fn.get_swapchain_images(swapchain) }?;
    // SAFETY: valid device.
    unsafe {
        let queue = device.get_device_queue(0, 0);
        let pool = device.create_command_pool(
            &vk::CommandPoolCreateInfo::default()
                .queue_family_index(0)
                .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
            None,
        )?;
        let acquired = device.create_semaphore(&vk::SemaphoreCreateInfo::default(), None)?;
        let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
        Ok(Presenter {
            swapchain_fn,
            swapchain,
            images,
            queue,
            pool,
            acquired,
            fence,
        })
    }
}

/// One frame: acquire, clear, present; the times just before and after the present call.
fn present(device: &ash::Device, p: &Presenter) -> Result<(u64, u64)> {
    // SAFETY: valid handles; the fence is waited for before the next frame reuses anything.
    unsafe {
        let (index, _) = p
            .swapchain_fn
            .acquire_next_image(p.swapchain, u64::MAX, p.acquired, vk::Fence::null())
            .context("vkAcquireNextImageKHR")?;
        let tools = FrameTools {
            device,
            queue: p.queue,
            pool: p.pool,
            fence: p.fence,
        };
        clear_for_present(
            &tools,
            p.acquired,
            p.images[index as usize],
            [0.1, 0.2, 0.3, 1.0],
        )?;
        let swapchains = [p.swapchain];
        let indices = [index];
        let info = vk::PresentInfoKHR::default()
            .swapchains(&swapchains)
            .image_indices(&indices);
        let before = monotonic_ns();
        let presented = p.swapchain_fn.queue_present(p.queue, &info);
        let after = monotonic_ns();
        presented.context("vkQueuePresentKHR")?;
        Ok((before, after))
    }
}
