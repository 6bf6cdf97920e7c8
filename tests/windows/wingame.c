/*
 * A tiny Windows game for nvbind's Wine tests, built with mingw-w64 and run under Wine on Xvfb.
 *
 *   wingame.exe gl FRAMES TRUTH            OpenGL: SwapBuffers (wined3d/winex11 -> GLX)
 *   wingame.exe vk FRAMES TRUTH            Vulkan: vkQueuePresentKHR through Wine's winevulkan
 *   wingame.exe vk-thread FRAMES TRUTH     Vulkan, presented from a second thread while the game
 *                                          thread does the work (as DXVK's presenter does)
 *   wingame.exe two-windows FRAMES TRUTH   OpenGL into two windows: FRAMES into the first, one
 *                                          frame in four into the second
 *
 * TRUTH gets one line `BEFORE AFTER` per present (CLOCK_MONOTONIC read just before and just
 * after the call, in ns: the same ground truth the synthetic game writes), and TRUTH.threads one
 * line `GAME_TID PRESENTER_TID` (Linux thread ids). In two-windows mode TRUTH holds the first
 * window's presents and TRUTH.second the second's.
 *
 * With WINGAME_HOLD_FILE set in its environment, the program waits after its last frame until
 * that file exists: a test holds it open until the agent has said what it read of the process.
 *
 * The clock and the thread ids are Linux's own, read with raw system calls: a Windows program has
 * no API for them, and these are what nvbind's probes see. This only works under Wine on Linux
 * x86-64, which is the only place this program is meant to run.
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <GL/gl.h>
#define VK_USE_PLATFORM_WIN32_KHR
#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINUX_SYS_GETTID 186
#define LINUX_SYS_CLOCK_GETTIME 228
#define LINUX_CLOCK_MONOTONIC 1

static long long linux_syscall2(long long nr, long long a, long long b)
{
    long long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return ret;
}

static unsigned long long monotonic_ns(void)
{
    struct {
        long long sec;
        long long nsec;
    } ts = {0, 0};
    linux_syscall2(LINUX_SYS_CLOCK_GETTIME, LINUX_CLOCK_MONOTONIC, (long long)&ts);
    return (unsigned long long)ts.sec * 1000000000ull + (unsigned long long)ts.nsec;
}

static long long linux_tid(void)
{
    return linux_syscall2(LINUX_SYS_GETTID, 0, 0);
}

static void die(const char *what)
{
    fprintf(stderr, "wingame: %s\n", what);
    fflush(stderr);
    ExitProcess(2);
}

static FILE *open_or_die(const char *path, const char *suffix)
{
    char name[1024];
    snprintf(name, sizeof name, "%s%s", path, suffix);
    FILE *f = fopen(name, "w");
    if (!f)
        die("cannot open the truth file");
    return f;
}

static void pump_messages(void)
{
    MSG msg;
    while (PeekMessageA(&msg, NULL, 0, 0, PM_REMOVE)) {
        TranslateMessage(&msg);
        DispatchMessageA(&msg);
    }
}

static HWND make_window(const char *title, int x)
{
    static int registered;
    HINSTANCE instance = GetModuleHandleA(NULL);
    if (!registered) {
        WNDCLASSA wc;
        memset(&wc, 0, sizeof wc);
        wc.style = CS_OWNDC;
        wc.lpfnWndProc = DefWindowProcA;
        wc.hInstance = instance;
        wc.lpszClassName = "wingame";
        if (!RegisterClassA(&wc))
            die("RegisterClass failed");
        registered = 1;
    }
    HWND hwnd = CreateWindowExA(0, "wingame", title, WS_OVERLAPPEDWINDOW | WS_VISIBLE, x, 0, 256,
                                256, NULL, NULL, instance, NULL);
    if (!hwnd)
        die("CreateWindowEx failed");
    pump_messages();
    return hwnd;
}

/* ---- OpenGL ---------------------------------------------------------------------------- */

static HDC gl_window(const char *title, int x, HGLRC *context)
{
    HDC dc = GetDC(make_window(title, x));
    PIXELFORMATDESCRIPTOR pfd;
    memset(&pfd, 0, sizeof pfd);
    pfd.nSize = sizeof pfd;
    pfd.nVersion = 1;
    pfd.dwFlags = PFD_DRAW_TO_WINDOW | PFD_SUPPORT_OPENGL | PFD_DOUBLEBUFFER;
    pfd.iPixelType = PFD_TYPE_RGBA;
    pfd.cColorBits = 32;
    pfd.cDepthBits = 24;
    int format = ChoosePixelFormat(dc, &pfd);
    if (!format || !SetPixelFormat(dc, format, &pfd))
        die("no OpenGL pixel format");
    *context = wglCreateContext(dc);
    if (!*context)
        die("wglCreateContext failed");
    return dc;
}

static void gl_present(HDC dc, HGLRC context, unsigned frame, FILE *truth)
{
    if (!wglMakeCurrent(dc, context))
        die("wglMakeCurrent failed");
    glClearColor((float)(frame % 64) / 64.0f, 0.2f, 0.4f, 1.0f);
    glClear(GL_COLOR_BUFFER_BIT);
    unsigned long long before = monotonic_ns();
    if (!SwapBuffers(dc))
        die("SwapBuffers failed");
    unsigned long long after = monotonic_ns();
    fprintf(truth, "%llu %llu\n", before, after);
}

static void run_gl(unsigned frames, const char *truth_path, int two_windows)
{
    HGLRC first_context, second_context = NULL;
    HDC first = gl_window("wingame", 0, &first_context);
    HDC second = two_windows ? gl_window("wingame second view", 300, &second_context) : NULL;
    FILE *truth = open_or_die(truth_path, "");
    FILE *second_truth = two_windows ? open_or_die(truth_path, ".second") : NULL;
    FILE *threads = open_or_die(truth_path, ".threads");
    fprintf(threads, "%lld %lld\n", linux_tid(), linux_tid());
    fclose(threads);
    for (unsigned i = 0; i < frames; i++) {
        pump_messages();
        gl_present(first, first_context, i, truth);
        if (second && i % 4 == 0)
            gl_present(second, second_context, i, second_truth);
    }
    fclose(truth);
    if (second_truth)
        fclose(second_truth);
}

/* ---- Vulkan ---------------------------------------------------------------------------- */

static PFN_vkGetInstanceProcAddr get_instance_proc;
static VkInstance instance;
static VkDevice device;

static PFN_vkVoidFunction instance_fn(const char *name)
{
    PFN_vkVoidFunction f = get_instance_proc(instance, name);
    if (!f)
        die(name);
    return f;
}

#define INSTANCE_FN(name) PFN_##name name = (PFN_##name)instance_fn(#name)
#define CHECK(call)                                                                            \
    do {                                                                                       \
        VkResult r_ = (call);                                                                  \
        if (r_ != VK_SUCCESS)                                                                  \
            die(#call);                                                                        \
    } while (0)

struct vk_game {
    VkQueue queue;
    VkSwapchainKHR swapchain;
    uint32_t image_count;
    VkCommandBuffer commands[8];
    VkSemaphore acquired, rendered;
    VkFence done;
    uint32_t image;
    FILE *truth;
    PFN_vkAcquireNextImageKHR acquire;
    PFN_vkQueueSubmit submit;
    PFN_vkQueuePresentKHR present;
    PFN_vkWaitForFences wait;
    PFN_vkResetFences reset;
    HANDLE work_done, presented;
    unsigned frames;
    long long presenter_tid;
};

static void record_clear(VkCommandBuffer cmd, VkImage image, PFN_vkBeginCommandBuffer begin,
                         PFN_vkCmdPipelineBarrier barrier, PFN_vkCmdClearColorImage clear,
                         PFN_vkEndCommandBuffer end)
{
    VkCommandBufferBeginInfo info = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    CHECK(begin(cmd, &info));
    VkImageSubresourceRange range = {VK_IMAGE_ASPECT_COLOR_BIT, 0, 1, 0, 1};
    VkImageMemoryBarrier to_clear = {VK_STRUCTURE_TYPE_IMAGE_MEMORY_BARRIER};
    to_clear.dstAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
    to_clear.oldLayout = VK_IMAGE_LAYOUT_UNDEFINED;
    to_clear.newLayout = VK_IMAGE_LAYOUT_TRANSFER_DST_OPTIMAL;
    to_clear.srcQueueFamilyIndex = VK_QUEUE_FAMILY_IGNORED;
    to_clear.dstQueueFamilyIndex = VK_QUEUE_FAMILY_IGNORED;
    to_clear.image = image;
    to_clear.subresourceRange = range;
    barrier(cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 0, NULL, 0,
            NULL, 1, &to_clear);
    VkClearColorValue color = {{0.1f, 0.3f, 0.6f, 1.0f}};
    clear(cmd, image, VK_IMAGE_LAYOUT_TRANSFER_DST_OPTIMAL, &color, 1, &range);
    VkImageMemoryBarrier to_present = to_clear;
    to_present.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
    to_present.dstAccessMask = 0;
    to_present.oldLayout = VK_IMAGE_LAYOUT_TRANSFER_DST_OPTIMAL;
    to_present.newLayout = VK_IMAGE_LAYOUT_PRESENT_SRC_KHR;
    barrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, 0, 0, NULL,
            0, NULL, 1, &to_present);
    CHECK(end(cmd));
}

static void vk_setup(struct vk_game *g, HWND hwnd)
{
    HMODULE loader = LoadLibraryA("vulkan-1.dll");
    if (!loader)
        die("no vulkan-1.dll");
    get_instance_proc = (PFN_vkGetInstanceProcAddr)(void (*)(void))GetProcAddress(
        loader, "vkGetInstanceProcAddr");
    if (!get_instance_proc)
        die("no vkGetInstanceProcAddr");

    INSTANCE_FN(vkCreateInstance);
    const char *instance_extensions[] = {"VK_KHR_surface", "VK_KHR_win32_surface"};
    VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "wingame";
    app.apiVersion = VK_API_VERSION_1_0;
    VkInstanceCreateInfo create = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    create.pApplicationInfo = &app;
    create.enabledExtensionCount = 2;
    create.ppEnabledExtensionNames = instance_extensions;
    CHECK(vkCreateInstance(&create, NULL, &instance));

    INSTANCE_FN(vkCreateWin32SurfaceKHR);
    INSTANCE_FN(vkEnumeratePhysicalDevices);
    INSTANCE_FN(vkGetPhysicalDeviceSurfaceSupportKHR);
    INSTANCE_FN(vkGetPhysicalDeviceSurfaceCapabilitiesKHR);
    INSTANCE_FN(vkGetPhysicalDeviceSurfaceFormatsKHR);
    INSTANCE_FN(vkCreateDevice);
    INSTANCE_FN(vkGetDeviceProcAddr);

    VkWin32SurfaceCreateInfoKHR surface_info = {VK_STRUCTURE_TYPE_WIN32_SURFACE_CREATE_INFO_KHR};
    surface_info.hinstance = GetModuleHandleA(NULL);
    surface_info.hwnd = hwnd;
    VkSurfaceKHR surface;
    CHECK(vkCreateWin32SurfaceKHR(instance, &surface_info, NULL, &surface));

    uint32_t count = 1;
    VkPhysicalDevice physical;
    VkResult listed = vkEnumeratePhysicalDevices(instance, &count, &physical);
    if ((listed != VK_SUCCESS && listed != VK_INCOMPLETE) || count == 0)
        die("no Vulkan device");
    VkBool32 supported = VK_FALSE;
    CHECK(vkGetPhysicalDeviceSurfaceSupportKHR(physical, 0, surface, &supported));
    if (!supported)
        die("queue family 0 cannot present");

    float priority = 1.0f;
    VkDeviceQueueCreateInfo queue_info = {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    queue_info.queueCount = 1;
    queue_info.pQueuePriorities = &priority;
    const char *device_extensions[] = {"VK_KHR_swapchain"};
    VkDeviceCreateInfo device_info = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    device_info.queueCreateInfoCount = 1;
    device_info.pQueueCreateInfos = &queue_info;
    device_info.enabledExtensionCount = 1;
    device_info.ppEnabledExtensionNames = device_extensions;
    CHECK(vkCreateDevice(physical, &device_info, NULL, &device));

#define DEVICE_FN(name)                                                                        \
    PFN_##name name = (PFN_##name)vkGetDeviceProcAddr(device, #name);                          \
    if (!name)                                                                                 \
        die(#name);
    DEVICE_FN(vkGetDeviceQueue);
    DEVICE_FN(vkCreateSwapchainKHR);
    DEVICE_FN(vkGetSwapchainImagesKHR);
    DEVICE_FN(vkCreateCommandPool);
    DEVICE_FN(vkAllocateCommandBuffers);
    DEVICE_FN(vkBeginCommandBuffer);
    DEVICE_FN(vkCmdPipelineBarrier);
    DEVICE_FN(vkCmdClearColorImage);
    DEVICE_FN(vkEndCommandBuffer);
    DEVICE_FN(vkCreateSemaphore);
    DEVICE_FN(vkCreateFence);
    DEVICE_FN(vkAcquireNextImageKHR);
    DEVICE_FN(vkQueueSubmit);
    DEVICE_FN(vkQueuePresentKHR);
    DEVICE_FN(vkWaitForFences);
    DEVICE_FN(vkResetFences);
    g->acquire = vkAcquireNextImageKHR;
    g->submit = vkQueueSubmit;
    g->present = vkQueuePresentKHR;
    g->wait = vkWaitForFences;
    g->reset = vkResetFences;
    vkGetDeviceQueue(device, 0, 0, &g->queue);

    VkSurfaceCapabilitiesKHR caps;
    CHECK(vkGetPhysicalDeviceSurfaceCapabilitiesKHR(physical, surface, &caps));
    if (!(caps.supportedUsageFlags & VK_IMAGE_USAGE_TRANSFER_DST_BIT))
        die("the surface's images cannot be cleared");
    VkSurfaceFormatKHR format;
    count = 1;
    VkResult formats = vkGetPhysicalDeviceSurfaceFormatsKHR(physical, surface, &count, &format);
    if ((formats != VK_SUCCESS && formats != VK_INCOMPLETE) || count == 0)
        die("no surface format");
    VkSwapchainCreateInfoKHR swap = {VK_STRUCTURE_TYPE_SWAPCHAIN_CREATE_INFO_KHR};
    swap.surface = surface;
    swap.minImageCount = caps.minImageCount < 2 ? 2 : caps.minImageCount;
    if (caps.maxImageCount && swap.minImageCount > caps.maxImageCount)
        swap.minImageCount = caps.maxImageCount;
    swap.imageFormat = format.format;
    swap.imageColorSpace = format.colorSpace;
    swap.imageExtent = caps.currentExtent;
    if (swap.imageExtent.width == 0xFFFFFFFFu) {
        swap.imageExtent.width = 256;
        swap.imageExtent.height = 256;
    }
    swap.imageArrayLayers = 1;
    swap.imageUsage = VK_IMAGE_USAGE_TRANSFER_DST_BIT;
    swap.imageSharingMode = VK_SHARING_MODE_EXCLUSIVE;
    swap.preTransform = caps.currentTransform;
    swap.compositeAlpha = VK_COMPOSITE_ALPHA_OPAQUE_BIT_KHR;
    for (uint32_t bit = 1; bit <= 8; bit <<= 1)
        if (caps.supportedCompositeAlpha & bit) {
            swap.compositeAlpha = (VkCompositeAlphaFlagBitsKHR)bit;
            break;
        }
    swap.presentMode = VK_PRESENT_MODE_FIFO_KHR;
    swap.clipped = VK_TRUE;
    CHECK(vkCreateSwapchainKHR(device, &swap, NULL, &g->swapchain));

    VkImage images[8];
    g->image_count = 8;
    VkResult got = vkGetSwapchainImagesKHR(device, g->swapchain, &g->image_count, images);
    if (got != VK_SUCCESS && got != VK_INCOMPLETE)
        die("vkGetSwapchainImagesKHR");

    VkCommandPoolCreateInfo pool_info = {VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    VkCommandPool pool;
    CHECK(vkCreateCommandPool(device, &pool_info, NULL, &pool));
    VkCommandBufferAllocateInfo alloc = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    alloc.commandPool = pool;
    alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    alloc.commandBufferCount = g->image_count;
    CHECK(vkAllocateCommandBuffers(device, &alloc, g->commands));
    for (uint32_t i = 0; i < g->image_count; i++)
        record_clear(g->commands[i], images[i], vkBeginCommandBuffer, vkCmdPipelineBarrier,
                     vkCmdClearColorImage, vkEndCommandBuffer);

    VkSemaphoreCreateInfo sem = {VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO};
    CHECK(vkCreateSemaphore(device, &sem, NULL, &g->acquired));
    CHECK(vkCreateSemaphore(device, &sem, NULL, &g->rendered));
    VkFenceCreateInfo fence = {VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    CHECK(vkCreateFence(device, &fence, NULL, &g->done));
}

/* Acquires an image and submits its clear: the game thread's part of a frame. */
static void vk_render(struct vk_game *g)
{
    CHECK(g->acquire(device, g->swapchain, UINT64_MAX, g->acquired, VK_NULL_HANDLE, &g->image));
    VkPipelineStageFlags stage = VK_PIPELINE_STAGE_TRANSFER_BIT;
    VkSubmitInfo submit = {VK_STRUCTURE_TYPE_SUBMIT_INFO};
    submit.waitSemaphoreCount = 1;
    submit.pWaitSemaphores = &g->acquired;
    submit.pWaitDstStageMask = &stage;
    submit.commandBufferCount = 1;
    submit.pCommandBuffers = &g->commands[g->image];
    submit.signalSemaphoreCount = 1;
    submit.pSignalSemaphores = &g->rendered;
    CHECK(g->submit(g->queue, 1, &submit, g->done));
}

static void vk_present(struct vk_game *g)
{
    VkPresentInfoKHR info = {VK_STRUCTURE_TYPE_PRESENT_INFO_KHR};
    info.waitSemaphoreCount = 1;
    info.pWaitSemaphores = &g->rendered;
    info.swapchainCount = 1;
    info.pSwapchains = &g->swapchain;
    info.pImageIndices = &g->image;
    unsigned long long before = monotonic_ns();
    VkResult r = g->present(g->queue, &info);
    unsigned long long after = monotonic_ns();
    if (r != VK_SUCCESS && r != VK_SUBOPTIMAL_KHR)
        die("vkQueuePresentKHR failed");
    fprintf(g->truth, "%llu %llu\n", before, after);
}

/* One frame in flight: the next frame starts once the GPU finished the last one. */
static void vk_finish(struct vk_game *g)
{
    CHECK(g->wait(device, 1, &g->done, VK_TRUE, UINT64_MAX));
    CHECK(g->reset(device, 1, &g->done));
}

static DWORD WINAPI presenter_thread(void *arg)
{
    struct vk_game *g = arg;
    g->presenter_tid = linux_tid();
    for (unsigned i = 0; i < g->frames; i++) {
        if (WaitForSingleObject(g->work_done, INFINITE) != WAIT_OBJECT_0)
            die("presenter wait failed");
        vk_present(g);
        SetEvent(g->presented);
    }
    return 0;
}

/* Work the game thread does for each frame (simulation), so that its thread is busy. */
static volatile unsigned long long simulation_state;
static void simulate(void)
{
    for (int i = 0; i < 200000; i++)
        simulation_state = simulation_state * 6364136223846793005ull + 1442695040888963407ull;
}

static void run_vk(unsigned frames, const char *truth_path, int threaded)
{
    struct vk_game g;
    memset(&g, 0, sizeof g);
    g.frames = frames;
    vk_setup(&g, make_window("wingame", 0));
    g.truth = open_or_die(truth_path, "");
    long long game_tid = linux_tid();
    HANDLE presenter = NULL;
    if (threaded) {
        g.work_done = CreateEventA(NULL, FALSE, FALSE, NULL);
        g.presented = CreateEventA(NULL, FALSE, FALSE, NULL);
        presenter = CreateThread(NULL, 0, presenter_thread, &g, 0, NULL);
        if (!g.work_done || !g.presented || !presenter)
            die("cannot start the presenter thread");
    } else {
        g.presenter_tid = game_tid;
    }
    for (unsigned i = 0; i < frames; i++) {
        pump_messages();
        simulate();
        vk_render(&g);
        if (threaded) {
            SetEvent(g.work_done);
            if (WaitForSingleObject(g.presented, INFINITE) != WAIT_OBJECT_0)
                die("game thread wait failed");
        } else {
            vk_present(&g);
        }
        vk_finish(&g);
    }
    if (presenter && WaitForSingleObject(presenter, INFINITE) != WAIT_OBJECT_0)
        die("presenter did not finish");
    fclose(g.truth);
    FILE *threads = open_or_die(truth_path, ".threads");
    fprintf(threads, "%lld %lld\n", game_tid, g.presenter_tid);
    fclose(threads);
}

/* Waits until the file named by WINGAME_HOLD_FILE exists (at most two minutes), if it is set. */
static void hold(void)
{
    const char *path = getenv("WINGAME_HOLD_FILE");
    if (!path)
        return;
    for (int i = 0; i < 12000; i++) {
        if (GetFileAttributesA(path) != INVALID_FILE_ATTRIBUTES)
            return;
        Sleep(10);
    }
    die("WINGAME_HOLD_FILE never appeared");
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: wingame.exe gl|vk|vk-thread|two-windows FRAMES TRUTH\n");
        return 2;
    }
    unsigned frames = (unsigned)strtoul(argv[2], NULL, 10);
    if (frames == 0)
        die("FRAMES must be a positive number");
    if (!strcmp(argv[1], "gl"))
        run_gl(frames, argv[3], 0);
    else if (!strcmp(argv[1], "two-windows"))
        run_gl(frames, argv[3], 1);
    else if (!strcmp(argv[1], "vk"))
        run_vk(frames, argv[3], 0);
    else if (!strcmp(argv[1], "vk-thread"))
        run_vk(frames, argv[3], 1);
    else
        die("unknown mode (gl, vk, vk-thread or two-windows)");
    hold();
    return 0;
}
