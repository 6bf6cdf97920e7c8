/*
 * nvbind's 32-bit Vulkan resolver: the i386 twin of `nvbind-agent __resolve-vulkan-present`.
 *
 * A 32-bit game loads the host's 32-bit Vulkan loader and 32-bit drivers, which a 64-bit process
 * cannot load. The agent embeds this program and runs it at start (when the host has a 32-bit
 * runtime), so the 32-bit drivers' vkQueuePresentKHR is hooked before any 32-bit game resolves
 * it, exactly as for the 64-bit drivers; and their shader and pipeline compile calls.
 *
 * It is freestanding (no libc headers or startup files: the agent builds it with the host's gcc
 * -m32, which needs no 32-bit development packages) and linked against libvulkan.so.1 only; the
 * host's i386 dynamic linker loads the real loader, which brings libc in. Protocol, on stdout:
 * one line `0xADDRESS<TAB>DEVICE<TAB>FUNCTION` per function found on each GPU that offers
 * VK_KHR_swapchain, then `end`. It then
 * waits for stdin to close, so the agent can turn each address into a file and offset with this
 * process's own /proc/PID/maps while the drivers are still mapped. Errors: one line on stderr and
 * exit status 1.
 */

typedef unsigned int u32;
typedef int i32;
typedef void (*vk_fn)(void);

/* The only symbol imported at link time; everything else comes through it. */
extern vk_fn vkGetInstanceProcAddr(void *instance, const char *name);

/* Vulkan's create-info structures, as laid out by the i386 ABI (4-byte pointers). */
struct application_info {
	u32 s_type; /* VK_STRUCTURE_TYPE_APPLICATION_INFO = 0 */
	const void *next;
	const char *application_name;
	u32 application_version;
	const char *engine_name;
	u32 engine_version;
	u32 api_version;
};

struct instance_create_info {
	u32 s_type; /* VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1 */
	const void *next;
	u32 flags;
	const struct application_info *application;
	u32 layer_count;
	const char *const *layers;
	u32 extension_count;
	const char *const *extensions;
};

struct queue_create_info {
	u32 s_type; /* VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO = 2 */
	const void *next;
	u32 flags;
	u32 family;
	u32 count;
	const float *priorities;
};

struct device_create_info {
	u32 s_type; /* VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO = 3 */
	const void *next;
	u32 flags;
	u32 queue_info_count;
	const struct queue_create_info *queue_infos;
	u32 layer_count;
	const char *const *layers;
	u32 extension_count;
	const char *const *extensions;
	const void *features;
};

struct extension_properties {
	char name[256];
	u32 spec_version;
};

typedef i32 (*create_instance_fn)(const struct instance_create_info *, const void *, void **);
typedef i32 (*enumerate_devices_fn)(void *, u32 *, void **);
typedef void (*device_properties_fn)(void *, void *);
typedef i32 (*enumerate_extensions_fn)(void *, const char *, u32 *, struct extension_properties *);
typedef i32 (*create_device_fn)(void *, const struct device_create_info *, const void *, void **);
typedef vk_fn (*get_device_proc_addr_fn)(void *, const char *);

#define VK_SUCCESS 0
#define VK_INCOMPLETE 5
#define API_VERSION_1_0 (1u << 22)
/* VkPhysicalDeviceProperties: five u32 (API and driver version, vendor and device ID, type),
 * then the device name. */
#define DEVICE_NAME_OFFSET 20
#define DEVICE_NAME_LEN 256
#define MAX_DEVICES 16
#define MAX_EXTENSIONS 1024

/* Linux's i386 system calls (int $0x80), the four this program needs. */
#define SYS_READ 3
#define SYS_WRITE 4
#define SYS_PRCTL 172
#define SYS_EXIT_GROUP 252
#define PR_SET_NAME 15

static long syscall3(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return ret;
}

static __attribute__((noreturn)) void exit_group(int status)
{
	for (;;)
		syscall3(SYS_EXIT_GROUP, status, 0, 0);
}

static u32 length(const char *s)
{
	u32 n = 0;
	while (s[n])
		n++;
	return n;
}

static int same(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

static void write_all(int fd, const char *s, u32 n)
{
	while (n > 0) {
		long done = syscall3(SYS_WRITE, fd, (long)s, n);
		if (done == -4 /* EINTR */)
			continue;
		if (done <= 0)
			exit_group(1);
		s += done;
		n -= (u32)done;
	}
}

static void put(int fd, const char *s)
{
	write_all(fd, s, length(s));
}

static __attribute__((noreturn)) void fail(const char *what)
{
	put(2, "nvbind-resolve32: ");
	put(2, what);
	put(2, "\n");
	exit_group(1);
}

static void put_hex(u32 value)
{
	char text[11] = "0x";
	for (int i = 0; i < 8; i++)
		text[2 + i] = "0123456789abcdef"[(value >> (28 - 4 * i)) & 0xf];
	write_all(1, text, 10);
}

/* gcc may turn structure copies and clears into calls to these even when freestanding. */
void *memset(void *dest, int c, unsigned long n)
{
	unsigned char *d = dest;
	while (n--)
		*d++ = (unsigned char)c;
	return dest;
}

void *memcpy(void *dest, const void *src, unsigned long n)
{
	unsigned char *d = dest;
	const unsigned char *s = src;
	while (n--)
		*d++ = *s++;
	return dest;
}

static vk_fn instance_function(void *instance, const char *name)
{
	vk_fn f = vkGetInstanceProcAddr(instance, name);
	if (!f)
		fail(name);
	return f;
}

/* Large tables live here rather than on the stack. */
static void *devices[MAX_DEVICES];

/* The present function, and the shader and pipeline compile calls nvbind times (the names of
 * nvbind_common::compile_call::NAMES; the agent ignores a name it does not know). */
static const char *const functions[] = {
	"vkQueuePresentKHR",
	"vkCreateGraphicsPipelines",
	"vkCreateComputePipelines",
	"vkCreateRayTracingPipelinesKHR",
	"vkCreateShaderModule",
	"vkCreatePipelineCache",
	"vkMergePipelineCaches",
	"vkGetPipelineCacheData",
};
static struct extension_properties extensions[MAX_EXTENSIONS];
static unsigned long long properties[4096 / 8];

static int has_swapchain(enumerate_extensions_fn enumerate, void *physical)
{
	u32 count = MAX_EXTENSIONS;
	i32 result = enumerate(physical, 0, &count, extensions);
	if (result != VK_SUCCESS && result != VK_INCOMPLETE)
		return 0;
	for (u32 i = 0; i < count; i++)
		if (same(extensions[i].name, "VK_KHR_swapchain"))
			return 1;
	return 0;
}

void resolve(void)
{
	/* The agent runs this program from an in-memory file, whose name the kernel would give it
	 * (a descriptor number): a name people can read in `ps`. */
	syscall3(SYS_PRCTL, PR_SET_NAME, (long)"nvbind-resolv32", 0);
	struct application_info app = {
		.s_type = 0,
		.application_name = "nvbind-resolve32",
		.api_version = API_VERSION_1_0,
	};
	struct instance_create_info instance_info = { .s_type = 1, .application = &app };
	void *instance = 0;
	create_instance_fn create_instance =
		(create_instance_fn)instance_function(0, "vkCreateInstance");
	i32 result = create_instance(&instance_info, 0, &instance);
	if (result != VK_SUCCESS)
		fail("vkCreateInstance failed (no 32-bit Vulkan driver?)");

	enumerate_devices_fn enumerate_devices =
		(enumerate_devices_fn)instance_function(instance, "vkEnumeratePhysicalDevices");
	device_properties_fn device_properties =
		(device_properties_fn)instance_function(instance, "vkGetPhysicalDeviceProperties");
	enumerate_extensions_fn enumerate_extensions = (enumerate_extensions_fn)instance_function(
		instance, "vkEnumerateDeviceExtensionProperties");
	create_device_fn create_device =
		(create_device_fn)instance_function(instance, "vkCreateDevice");
	get_device_proc_addr_fn get_device_proc_addr =
		(get_device_proc_addr_fn)instance_function(instance, "vkGetDeviceProcAddr");

	u32 count = MAX_DEVICES;
	result = enumerate_devices(instance, &count, devices);
	if (result != VK_SUCCESS && result != VK_INCOMPLETE)
		count = 0;
	for (u32 i = 0; i < count; i++) {
		if (!has_swapchain(enumerate_extensions, devices[i]))
			continue;
		static const float priority = 1.0f;
		struct queue_create_info queue = {
			.s_type = 2, .family = 0, .count = 1, .priorities = &priority
		};
		static const char *const swapchain[] = { "VK_KHR_swapchain" };
		struct device_create_info device_info = {
			.s_type = 3,
			.queue_info_count = 1,
			.queue_infos = &queue,
			.extension_count = 1,
			.extensions = swapchain,
		};
		void *device = 0;
		if (create_device(devices[i], &device_info, 0, &device) != VK_SUCCESS)
			continue;
		device_properties(devices[i], properties);
		char *name = (char *)properties + DEVICE_NAME_OFFSET;
		name[DEVICE_NAME_LEN - 1] = 0;
		/* A line per function found: ADDRESS, device, function. */
		for (unsigned f = 0; f < sizeof functions / sizeof *functions; f++) {
			vk_fn function = get_device_proc_addr(device, functions[f]);
			if (!function)
				continue;
			put_hex((u32)function);
			put(1, "\t");
			put(1, name);
			put(1, "\t");
			put(1, functions[f]);
			put(1, "\n");
		}
	}
	put(1, "end\n");
	/* Keep the drivers mapped until the agent has read this process's maps and closed stdin.
	 * Nothing is destroyed: exiting frees it all. */
	char byte;
	while (syscall3(SYS_READ, 0, (long)&byte, 1) != 0)
		;
	exit_group(0);
}

/* The entry point the dynamic linker jumps to, after it has loaded and initialised libvulkan.so.1
 * and its dependencies. The i386 ABI wants a 16-byte aligned stack at each call. */
__asm__(".globl _start\n"
	"_start:\n"
	"	xorl %ebp, %ebp\n"
	"	andl $-16, %esp\n"
	"	call resolve\n"
	"	hlt\n");
