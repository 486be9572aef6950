/*
 * Ember test guest: a minimal virtio-balloon driver (virtio 1.x, modern
 * virtio-mmio transport, polling) and the balloon-* scenarios.
 *
 * The pages given to the balloon come from a free region of guest memory
 * (balloon.base=, default 32 MiB, far above the image), never from the
 * image or its stack. PFNs are 4 KiB frame numbers, at most 256 a buffer.
 *
 * Integer code only, short loops: see main.c.
 */
#include "virtio.h"

#define VIRTIO_ID_BALLOON 5

/* Feature bits (low word). */
#define F_STATS_VQ (1u << 1)
#define F_DEFLATE_ON_OOM (1u << 2)

#define Q_INFLATE 0
#define Q_DEFLATE 1
#define Q_STATS 2

/* Configuration space: num_pages (le32), actual (le32). */
#define CFG_NUM_PAGES 0
#define CFG_ACTUAL 4

#define PFNS_PER_BUF 256
#define PAGE_SHIFT 12
#define POLL_SPINS 2000000u
/* Most pages one scenario inflates (16 MiB). */
#define MAX_PAGES 4096u

static u32 pfns[PFNS_PER_BUF] __attribute__((aligned(16)));

/* One statistics entry as the device reads it (packed: 10 bytes). */
struct stat_entry {
	u16 tag;
	u64 val;
} __attribute__((packed));

static struct stat_entry stats[2] __attribute__((aligned(16)));

static const u16 queue_sizes[] = { VIRTQ_MAX, VIRTQ_MAX, VIRTQ_MAX };

/* Inflate and deflate queues only: statistics are declined. */
static const struct virtio_driver balloon_driver = {
	.name = "balloon",
	.device_id = VIRTIO_ID_BALLOON,
	.every_token = 0,
	.features = F_DEFLATE_ON_OOM,
	.required = 0,
	.nqueues = 2,
	.qsize = queue_sizes,
	.qmin = 1,
	.read_config = 0,
};

/* The same with the statistics queue. */
static const struct virtio_driver balloon_stats_driver = {
	.name = "balloon",
	.device_id = VIRTIO_ID_BALLOON,
	.every_token = 0,
	.features = F_DEFLATE_ON_OOM | F_STATS_VQ,
	.required = F_STATS_VQ,
	.nqueues = 3,
	.qsize = queue_sizes,
	.qmin = 1,
	.read_config = 0,
};

static u32 num_pages(const struct virtio_dev *d)
{
	return virtio_rd(d, VM_CONFIG + CFG_NUM_PAGES);
}

/* The first PFN of the free region. */
static u64 base_pfn(void)
{
	return param("balloon.base=", 0x2000000) >> PAGE_SHIFT;
}

/* Writes a byte at the start of each of n pages from the free region, so
 * the host backs them. */
static void touch(u32 n)
{
	u64 first = base_pfn();

	for (u32 i = 0; i < n; i++)
		*(volatile u8 *)((first + i) << PAGE_SHIFT) = 0xA5;
}

/* Gives n pages from the free region to queue q, a buffer of at most 256
 * PFNs at a time; returns the pages the device took. */
static u32 send_pages(struct virtio_dev *d, u32 q, u32 n)
{
	u64 first = base_pfn();
	u32 sent = 0;

	while (sent < n) {
		u32 count = n - sent;

		if (count > PFNS_PER_BUF)
			count = PFNS_PER_BUF;
		for (u32 i = 0; i < count; i++)
			pfns[i] = (u32)(first + sent + i);
		virtq_desc(q, 0, pfns, count * 4, 0, 0);
		if (!virtq_submit(d, q, 0, POLL_SPINS)) {
			con_puts("balloon: timeout\n");
			done();
		}
		sent += count;
	}
	return sent;
}

/* Inflates to the target, updates actual and reports; returns the pages. */
static u32 inflate_to_target(struct virtio_dev *d, const char *what)
{
	u32 target = num_pages(d);
	u32 n = target < MAX_PAGES ? target : MAX_PAGES;

	touch(n);
	u32 inflated = send_pages(d, Q_INFLATE, n);
	virtio_wr(d, VM_CONFIG + CFG_ACTUAL, inflated);
	u8 first = *(volatile u8 *)(base_pfn() << PAGE_SHIFT);

	con_puts(what);
	kv("num_pages", target);
	kv("inflated", inflated);
	kv("actual", virtio_rd(d, VM_CONFIG + CFG_ACTUAL));
	kv("zeroed", n ? first == 0 : 0);
	kv("features_lo", d->feat_lo);
	con_putc('\n');
	return inflated;
}

/* balloon-inflate: inflate to num_pages, then deflate it all. */
static void scenario_inflate(struct virtio_dev *d)
{
	u32 n = inflate_to_target(d, "balloon-inflate");
	u32 deflated = send_pages(d, Q_DEFLATE, n);

	virtio_wr(d, VM_CONFIG + CFG_ACTUAL, 0);
	*(volatile u8 *)(base_pfn() << PAGE_SHIFT) = 0x5A;
	con_puts("balloon-deflate");
	kv("deflated", deflated);
	kv("actual", virtio_rd(d, VM_CONFIG + CFG_ACTUAL));
	kv("usable", *(volatile u8 *)(base_pfn() << PAGE_SHIFT) == 0x5A);
	con_putc('\n');
}

/* balloon-follow: waits (up to balloon.wait= polls) for the host to change
 * the target, then inflates to it. */
static void scenario_follow(struct virtio_dev *d)
{
	u64 polls = param("balloon.wait=", 20000000);
	u32 generation = virtio_rd(d, VM_CONFIG_GENERATION);

	con_puts("balloon-follow: waiting");
	kv("num_pages", num_pages(d));
	con_putc('\n');
	while (polls-- && virtio_rd(d, VM_CONFIG_GENERATION) == generation)
		;
	if (virtio_rd(d, VM_CONFIG_GENERATION) == generation) {
		con_puts("balloon-follow: no change\n");
		return;
	}
	inflate_to_target(d, "balloon-follow");
	if (param("balloon.park=", 0))
		park();
}

/* balloon-stats: posts a statistics buffer (free and total memory) and
 * waits for the device to give it back at its polling tick. */
static void scenario_stats(struct virtio_dev *d)
{
	u32 id, len;
	u64 spins = param("balloon.wait=", 20000000);

	stats[0].tag = 4; /* VIRTIO_BALLOON_S_MEMFREE */
	stats[0].val = 0x1000000;
	stats[1].tag = 5; /* VIRTIO_BALLOON_S_MEMTOT */
	stats[1].val = 0x8000000;
	virtq_desc(Q_STATS, 0, stats, sizeof(stats), 0, 0);
	virtq_publish(d, Q_STATS, 0);
	con_puts("balloon-stats: posted\n");
	int returned = virtq_wait_used(d, Q_STATS, &spins, &id, &len);
	con_puts("balloon-stats");
	kv("returned", returned);
	con_putc('\n');
	if (param("balloon.park=", 0))
		park();
}

int balloon_scenario(const char *name)
{
	static const char *const names[] = {
		"balloon-inflate", "balloon-follow", "balloon-stats",
	};
	int which = name_index(name, names, sizeof(names) / sizeof(names[0]));

	if (which < 0)
		return 0;
	virtio_discover(which == 2 ? &balloon_stats_driver : &balloon_driver);
	struct virtio_dev *d = virtio_select("balloon.dev=");
	virtio_init(d);
	if (which == 0)
		scenario_inflate(d);
	else if (which == 1)
		scenario_follow(d);
	else
		scenario_stats(d);
	done();
}
