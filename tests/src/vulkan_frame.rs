//! One frame's work for the test clients that present through Vulkan (`vk-compile`,
//! `wl-feedback`): clear the acquired swapchain image and leave it ready to present.

use anyhow::Result;
use ash::vk;

/// What a frame is drawn with: the device, its queue, a resettable command pool and an
/// unsignalled fence (waited for and reset here).
pub struct FrameTools<'a> {
    pub device: &'a ash::Device,
    pub queue: vk::Queue,
    pub pool: vk::CommandPool,
    pub fence: vk::Fence,
}

/// Clears `image` (a swapchain image whose acquisition signals `acquired`) to `color`, moves it
/// to `PRESENT_SRC_KHR` and waits for the GPU: the image can be presented when this returns.
///
/// # Safety
/// Every handle is live and belongs to `tools.device`; `image` was acquired with `acquired`.
pub unsafe fn clear_for_present(
    tools: &FrameTools<'_>,
    acquired: vk::Semaphore,
    image: vk::Image,
    color: [f32; 4],
) -> Result<()> {
    let device = tools.device;
    let cmd = device.allocate_command_buffers(
        &vk::CommandBufferAllocateInfo::default()
            .command_pool(tools.pool)
            .command_buffer_count(1),
    )?[0];
    device.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())?;
    let range = vk::ImageSubresourceRange::default()
        .aspect_mask(vk::ImageAspectFlags::COLOR)
        .level_count(1)
        .layer_count(1);
    let barrier = |from, to, src, dst| {
        vk::ImageMemoryBarrier::default()
            .old_layout(from)
            .new_layout(to)
            .src_access_mask(src)
            .dst_access_mask(dst)
            .image(image)
            .subresource_range(range)
    };
    device.cmd_pipeline_barrier(
        cmd,
        vk::PipelineStageFlags::TOP_OF_PIPE,
        vk::PipelineStageFlags::TRANSFER,
        vk::DependencyFlags::empty(),
        &[],
        &[],
        &[barrier(
            vk::ImageLayout::UNDEFINED,
            vk::ImageLayout::TRANSFER_DST_OPTIMAL,
            vk::AccessFlags::empty(),
            vk::AccessFlags::TRANSFER_WRITE,
        )],
    );
    device.cmd_clear_color_image(
        cmd,
        image,
        vk::ImageLayout::TRANSFER_DST_OPTIMAL,
        &vk::ClearColorValue { float32: color },
        &[range],
    );
    device.cmd_pipeline_barrier(
        cmd,
        vk::PipelineStageFlags::TRANSFER,
        vk::PipelineStageFlags::BOTTOM_OF_PIPE,
        vk::DependencyFlags::empty(),
        &[],
        &[],
        &[barrier(
            vk::ImageLayout::TRANSFER_DST_OPTIMAL,
            vk::ImageLayout::PRESENT_SRC_KHR,
            vk::AccessFlags::TRANSFER_WRITE,
            vk::AccessFlags::empty(),
        )],
    );
    device.end_command_buffer(cmd)?;
    let waits = [acquired];
    let stages = [vk::PipelineStageFlags::TRANSFER];
    let cmds = [cmd];
    let submit = vk::SubmitInfo::default()
        .wait_semaphores(&waits)
        .wait_dst_stage_mask(&stages)
        .command_buffers(&cmds);
    device.queue_submit(tools.queue, &[submit], tools.fence)?;
    device.wait_for_fences(&[tools.fence], true, u64::MAX)?;
    device.reset_fences(&[tools.fence])?;
    device.free_command_buffers(tools.pool, &cmds);
    Ok(())
}
