/*
 * vsock-* scenarios: the virtio-vsock driver is being written; until it lands no
 * vsock-* scenario exists and the dispatcher reports the name as unknown.
 */
#include "core.h"

int vsock_scenario(const char *name)
{
	(void)name;
	return 0;
}
