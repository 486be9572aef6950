/*
 * net-* scenarios: the virtio-net driver is being written; until it lands no
 * net-* scenario exists and the dispatcher reports the name as unknown.
 */
#include "core.h"

int net_scenario(const char *name)
{
	(void)name;
	return 0;
}
