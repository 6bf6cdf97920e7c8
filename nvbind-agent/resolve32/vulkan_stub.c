/* A link-time stand-in for the 32-bit libvulkan.so.1: gives the resolver its DT_NEEDED entry and
 * vkGetInstanceProcAddr's name, without 32-bit Vulkan packages on the build machine. Never run:
 * the dynamic linker loads the host's real loader by its soname. */
void *vkGetInstanceProcAddr(void *instance, const char *name)
{
	(void)instance;
	(void)name;
	return 0;
}
