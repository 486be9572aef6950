/*
 * Ember test guest: a minimal virtio-rng (entropy) driver (virtio 1.x,
 * modern virtio-mmio transport version 2, one split virtqueue, polling) and
 * the rng-* scenarios.
 *
 * rng-read asks rng.reqs= times (default 1) for rng.bytes= random bytes
 * (default 64, at most 4096) in one device-writable buffer, and prints
 *   rng: reqs=.. got=.. nonzero=0|1 distinct=0|1 sum=..
 * where got is the total used length, nonzero says a byte of the last
 * buffer is not 0 and distinct that the last two buffers differ.
 * rng-readonly offers a device-readable buffer and prints the used length
 * the device returns (0 as Firecracker's) and whether the buffer was left
 * alone:
 *   rng-readonly: len=.. untouched=0|1
 *
 * Integer code only, short loops: see main.c.
 */
#include "virtio.h"

#define VIRTIO_ID_RNG 4
#define BUF_SIZE 4096
/* Polls per wait; a rate-limited device may take a while. */
#define POLL_SPINS 20000000u
#define POLL_TRIES 20

static u8 buf[2][BUF_SIZE] __attribute__((aligned(4096)));

static const u16 queue_sizes[] = { VIRTQ_MAX };

static const struct virtio_driver rng_driver = {
	.name = "rng",
	.device_id = VIRTIO_ID_RNG,
	.every_token = 0,
	.features = 0,
	.required = 0,
	.nqueues = 1,
	.qsize = queue_sizes,
	.qmin = 1,
	.read_config = 0,
};

/* Offers len bytes at p (device-writable or not) as descriptor 0 and waits
 * for the device; returns the used length. Prints rng: timeout and
 * finishes if the device does not answer. */
static u32 rng_request(struct virtio_dev *d, u8 *p, u32 len, int writable)
{
	u32 id, used;

	virtq_desc(0, 0, p, len, writable ? VIRTQ_DESC_F_WRITE : 0, 0);
	virtq_publish(d, 0, 0);
	for (int tries = 0; tries < POLL_TRIES; tries++) {
		u64 budget = POLL_SPINS;
		if (virtq_wait_used(d, 0, &budget, &id, &used))
			return used;
	}
	con_puts("rng: timeout\n");
	done();
}

static int any_nonzero(const u8 *p, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (p[i])
			return 1;
	return 0;
}

static int differ(const u8 *a, const u8 *b, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (a[i] != b[i])
			return 1;
	return 0;
}

static void scenario_read(struct virtio_dev *d)
{
	u64 reqs = param("rng.reqs=", 1);
	u64 bytes = param("rng.bytes=", 64);
	u64 got = 0;

	if (reqs < 1)
		reqs = 1;
	if (bytes < 1)
		bytes = 1;
	if (bytes > BUF_SIZE)
		bytes = BUF_SIZE;
	for (u64 i = 0; i < reqs; i++) {
		u8 *p = buf[i & 1];
		memset(p, 0, (u32)bytes);
		got += rng_request(d, p, (u32)bytes, 1);
	}
	con_puts("rng:");
	kv("reqs", reqs);
	kv("got", got);
	kv("nonzero", any_nonzero(buf[(reqs - 1) & 1], (u32)bytes));
	kv("distinct", reqs > 1 && differ(buf[0], buf[1], (u32)bytes));
	kv("sum", fnv1a(buf[(reqs - 1) & 1], (u32)bytes));
	con_putc('\n');
}

static void scenario_readonly(struct virtio_dev *d)
{
	memset(buf[0], 0x5a, 64);
	u32 len = rng_request(d, buf[0], 64, 0);
	int untouched = 1;

	for (u32 i = 0; i < 64; i++)
		if (buf[0][i] != 0x5a)
			untouched = 0;
	con_puts("rng-readonly:");
	kv("len", len);
	kv("untouched", untouched);
	con_putc('\n');
}

int rng_scenario(const char *name)
{
	static const char *const names[] = { "rng-read", "rng-readonly" };
	int which = name_index(name, names, sizeof(names) / sizeof(names[0]));

	if (which < 0)
		return 0;
	virtio_discover(&rng_driver);
	struct virtio_dev *d = virtio_select("rng.dev=");
	virtio_init(d);
	if (which == 0)
		scenario_read(d);
	else
		scenario_readonly(d);
	done();
}
