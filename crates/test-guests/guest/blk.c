/*
 * Ember test guest: a minimal virtio-blk driver (virtio 1.x, modern
 * virtio-mmio transport version 2, one split virtqueue, polling) and the
 * blk-* scenarios.
 *
 * Devices are discovered from "virtio_mmio.device=<size>@<addr>:<irq>[:<id>]"
 * command-line tokens (the syntax of Linux's virtio_mmio.device= parameter);
 * the i-th token is device i. The transport, discovery and the rings are
 * virtio.c's; everything runs with interrupts disabled: the driver notifies
 * the device and then polls the used ring with a bounded spin. The request
 * header, the status byte and the data buffers live in .bss
 * (guest-physical == virtual).
 *
 * Integer code only, short loops: see main.c.
 */
#include "virtio.h"

#define VIRTIO_ID_BLOCK 2

/* Feature bits (low word). */
#define F_BLK_RO (1u << 5)
#define F_BLK_FLUSH (1u << 9)

/* Request types and status values. */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_ID_BYTES 20

#define SECTOR_SIZE 512
#define MAX_COUNT 8
#define BUF_SIZE (MAX_COUNT * SECTOR_SIZE)
#define POLL_SPINS 2000000u

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

static struct blk_req_hdr req_hdr __attribute__((aligned(16)));
static u8 req_status __attribute__((aligned(16)));
static u8 buf_w[BUF_SIZE] __attribute__((aligned(4096)));
static u8 buf_r[2][BUF_SIZE] __attribute__((aligned(4096)));

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */

/* The capacity (in sectors) of the device initialised last. */
static u64 capacity;

static void read_capacity(const struct virtio_dev *d)
{
	capacity = virtio_config_u64(d, 0);
}

static const u16 queue_sizes[] = { VIRTQ_MAX };

/* One request queue of up to 8 entries, at least 4 (3 descriptors). */
static const struct virtio_driver blk_driver = {
	.name = "blk",
	.device_id = VIRTIO_ID_BLOCK,
	.every_token = 1,
	.features = F_BLK_RO | F_BLK_FLUSH,
	.required = 0,
	.nqueues = 1,
	.qsize = queue_sizes,
	.qmin = 4,
	.read_config = read_capacity,
};

/*
 * Writes the descriptors of one request (header, optional data buffer,
 * status byte) from descriptor 0, without making it available. data_len == 0
 * means no data descriptor (FLUSH).
 */
static void blk_prepare(u32 type, u64 sector, void *data, u32 data_len,
			int device_writes_data)
{
	u16 n = 0;

	req_hdr.type = type;
	req_hdr.reserved = 0;
	req_hdr.sector = sector;
	req_status = 0xFF;

	virtq_desc(0, n, &req_hdr, sizeof(req_hdr), VIRTQ_DESC_F_NEXT, n + 1);
	n++;
	if (data_len) {
		virtq_desc(0, n, data, data_len,
			   VIRTQ_DESC_F_NEXT |
				   (device_writes_data ? VIRTQ_DESC_F_WRITE : 0),
			   n + 1);
		n++;
	}
	virtq_desc(0, n, &req_status, 1, VIRTQ_DESC_F_WRITE, 0);
}

/*
 * Submits one request (see blk_prepare) and polls the used ring. Returns the
 * status byte the device wrote (0xff if it wrote none). Prints blk: timeout
 * and finishes if the device does not complete it.
 */
static u8 blk_request(struct virtio_dev *d, u32 type, u64 sector, void *data,
		      u32 data_len, int device_writes_data)
{
	blk_prepare(type, sector, data, data_len, device_writes_data);
	if (!virtq_submit(d, 0, 0, POLL_SPINS)) {
		con_puts("blk: timeout\n");
		done();
	}
	return *(volatile u8 *)&req_status;
}

/* ------------------------------------------------------------------------ */
/* Helpers for the scenarios                                                */

/* Byte i of LBA s: low byte of (seed*31 + s*7 + i*13). */
static void fill_pattern(u8 *buf, u64 seed, u64 sector, u32 count)
{
	for (u32 s = 0; s < count; s++) {
		u8 v = (u8)(seed * 31 + (sector + s) * 7);
		u8 *p = buf + (u64)s * SECTOR_SIZE;
		for (u32 i = 0; i < SECTOR_SIZE; i++) {
			p[i] = v;
			v = (u8)(v + 13);
		}
	}
}

static int bytes_equal(const u8 *a, const u8 *b, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		if (a[i] != b[i])
			return 0;
	}
	return 1;
}

struct params {
	u64 sector;
	u32 count;
	u64 seed;
};

static void read_params(struct params *p)
{
	u64 count = param("blk.count=", 1);

	p->sector = param("blk.sector=", 0);
	p->seed = param("blk.seed=", 1);
	if (count < 1)
		count = 1;
	if (count > MAX_COUNT)
		count = MAX_COUNT;
	p->count = (u32)count;
}

static u8 read_into(struct virtio_dev *d, u8 *buf, u8 poison, const struct params *p)
{
	u32 len = p->count * SECTOR_SIZE;

	memset(buf, poison, len);
	return blk_request(d, BLK_T_IN, p->sector, buf, len, 1);
}

static u8 write_pattern(struct virtio_dev *d, const struct params *p)
{
	fill_pattern(buf_w, p->seed, p->sector, p->count);
	return blk_request(d, BLK_T_OUT, p->sector, buf_w, p->count * SECTOR_SIZE,
			   0);
}

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */

/* blk-info, for every block device (see virtio_each). */
static void info_line(struct virtio_dev *d, void *arg)
{
	(void)arg;
	virtio_init(d);
	con_puts("blk");
	kv("dev", d->index);
	kv("addr", d->base);
	kv("irq", d->irq);
	kv("capacity", capacity);
	kv("features_lo", d->feat_lo);
	kv("features_hi", d->feat_hi);
	kv("ro", (d->feat_lo & F_BLK_RO) ? 1 : 0);
	con_putc('\n');
}

/* blk-multi, for every block device (see virtio_each). */
static void multi_line(struct virtio_dev *d, void *arg)
{
	const struct params *p = arg;

	virtio_init(d);
	u8 st = read_into(d, buf_r[0], 0xA5, p);
	con_puts("blk-multi");
	kv("dev", d->index);
	kv("status", st);
	kv("sum", fnv1a(buf_r[0], p->count * SECTOR_SIZE));
	con_putc('\n');
}

static void scenario_write(struct virtio_dev *d, const struct params *p)
{
	u8 st = write_pattern(d, p);

	con_puts("blk-write");
	kv("status", st);
	kv("sector", p->sector);
	kv("count", p->count);
	con_putc('\n');
}

/*
 * Reads blk.count sectors at blk.sector, blk.repeat times (default once, for
 * rate-limit tests); prints the first failing status (or 0) and the last data.
 */
static void scenario_read(struct virtio_dev *d, const struct params *p)
{
	u64 repeat = param("blk.repeat=", 1);
	u8 st = 0;

	if (repeat < 1)
		repeat = 1;
	for (u64 i = 0; i < repeat; i++) {
		u8 one = read_into(d, buf_r[0], 0xA5, p);
		if (st == 0)
			st = one;
	}
	con_puts("blk-read");
	kv("status", st);
	kv("sum", fnv1a(buf_r[0], p->count * SECTOR_SIZE));
	con_puts(" head=");
	put_hexbytes(buf_r[0], 16);
	if (repeat > 1)
		kv("repeat", repeat);
	con_putc('\n');
}

/* One line of blk-rescan: the capacity and the hash of the sectors read. */
static void rescan_report(struct virtio_dev *d, const struct params *p, u64 phase)
{
	u8 st = read_into(d, buf_r[0], 0xA5, p);

	con_puts("blk-rescan");
	kv("phase", phase);
	kv("status", st);
	kv("capacity", virtio_config_u64(d, 0));
	kv("sum", fnv1a(buf_r[0], p->count * SECTOR_SIZE));
	con_putc('\n');
}

/*
 * Reads, then waits (up to blk.wait polls, default 20,000,000) for the device's
 * configuration generation to change -- the host swapped the backing file --
 * and reads again.
 */
static void scenario_rescan(struct virtio_dev *d, const struct params *p)
{
	u64 polls = param("blk.wait=", 20000000);
	u32 generation = virtio_rd(d, VM_CONFIG_GENERATION);

	rescan_report(d, p, 1);
	con_puts("blk-rescan: waiting\n");
	while (polls-- && virtio_rd(d, VM_CONFIG_GENERATION) == generation)
		;
	if (virtio_rd(d, VM_CONFIG_GENERATION) == generation) {
		con_puts("blk-rescan: no change\n");
		return;
	}
	rescan_report(d, p, 2);
}

static void scenario_roundtrip(struct virtio_dev *d, const struct params *p)
{
	u8 sw = write_pattern(d, p);
	u8 sr = read_into(d, buf_r[0], 0xA5, p);

	con_puts("blk-roundtrip");
	kv("status_w", sw);
	kv("status_r", sr);
	kv("match", bytes_equal(buf_w, buf_r[0], p->count * SECTOR_SIZE));
	con_putc('\n');
}

static void scenario_flush(struct virtio_dev *d, const struct params *p)
{
	u8 sw = write_pattern(d, p);
	u8 sf = blk_request(d, BLK_T_FLUSH, 0, 0, 0, 0);

	con_puts("blk-flush");
	kv("status_w", sw);
	kv("status_f", sf);
	con_putc('\n');
}

static void scenario_id(struct virtio_dev *d)
{
	u8 *id = buf_r[0];

	memset(id, 0, BLK_ID_BYTES);
	u8 st = blk_request(d, BLK_T_GET_ID, 0, id, BLK_ID_BYTES, 1);
	u32 n = 0;

	while (n < BLK_ID_BYTES && id[n])
		n++;
	con_puts("blk-id");
	kv("status", st);
	con_puts(" id=");
	put_printable(id, n);
	con_putc('\n');
}

static void scenario_past_end(struct virtio_dev *d)
{
	memset(buf_r[0], 0xA5, SECTOR_SIZE);
	u8 st = blk_request(d, BLK_T_IN, capacity, buf_r[0], SECTOR_SIZE, 1);

	con_puts("blk-past-end");
	kv("status", st);
	con_putc('\n');
}

static void scenario_reset(struct virtio_dev *d, const struct params *p)
{
	u8 s1 = read_into(d, buf_r[0], 0xA5, p);

	if (!virtio_reset(d))
		virtio_init_failed(d, "reset");
	virtio_init(d);
	u8 s2 = read_into(d, buf_r[1], 0x5A, p);

	con_puts("blk-reset");
	kv("status1", s1);
	kv("status2", s2);
	kv("match", bytes_equal(buf_r[0], buf_r[1], p->count * SECTOR_SIZE));
	con_putc('\n');
}

/* Polls the used ring after a queued request's first completion, for a
 * duplicate (about 1 s in the emulating KVM). */
#define SERVE_LINGER 200000u

/*
 * blk-serve, for snapshot tests: one sector (blk.sector) driven by serial
 * bytes. 'w' writes the pattern of the next generation and waits; 'r' reads
 * the sector back; 'q' queues such a write and notifies the device without
 * waiting ('a': without notifying it either); 'c' waits for the queued
 * write and counts its completions.
 */
static void __attribute__((noreturn)) scenario_serve(struct virtio_dev *d,
						     const struct params *p)
{
	const struct params one = { p->sector, 1, 0 };
	u64 gen = 0;

	con_puts("blk-serve: ready");
	kv("sector", p->sector);
	con_putc('\n');
	for (;;) {
		int c = con_getc_nowait();

		if (c == 'w' || c == 'q' || c == 'a') {
			gen++;
			fill_pattern(buf_w, gen, p->sector, 1);
		}
		if (c == 'w') {
			u8 st = blk_request(d, BLK_T_OUT, p->sector, buf_w, SECTOR_SIZE, 0);
			con_puts("blk-serve write");
			kv("status", st);
			kv("gen", gen);
			con_putc('\n');
		} else if (c == 'r') {
			u8 st = read_into(d, buf_r[0], 0xA5, &one);
			con_puts("blk-serve read");
			kv("status", st);
			kv("sum", fnv1a(buf_r[0], SECTOR_SIZE));
			con_putc('\n');
		} else if (c == 'q' || c == 'a') {
			blk_prepare(BLK_T_OUT, p->sector, buf_w, SECTOR_SIZE, 0);
			virtq_add(0, 0);
			if (c == 'q')
				virtio_notify(d, 0);
			con_puts("blk-serve queued");
			kv("gen", gen);
			kv("notified", c == 'q');
			con_putc('\n');
		} else if (c == 'c') {
			u64 budget = POLL_SPINS;
			u32 id, len, n = 0;

			while (virtq_wait_used(d, 0, &budget, &id, &len)) {
				n++;
				budget = SERVE_LINGER;
			}
			con_puts("blk-serve completed");
			kv("n", n);
			kv("status", *(volatile u8 *)&req_status);
			con_putc('\n');
		}
	}
}

int blk_scenario(const char *name)
{
	static const char *const names[] = {
		"blk-info",  "blk-multi",    "blk-write", "blk-read",
		"blk-roundtrip", "blk-flush", "blk-id", "blk-past-end",
		"blk-reset", "blk-rescan", "blk-serve",
	};
	int which = name_index(name, names, sizeof(names) / sizeof(names[0]));
	struct params p;

	if (which < 0)
		return 0;

	virtio_discover(&blk_driver);
	read_params(&p);
	if (which == 0) {
		virtio_each(info_line, 0);
		done();
	}
	if (which == 1) {
		virtio_each(multi_line, &p);
		done();
	}

	struct virtio_dev *d = virtio_select("blk.dev=");
	virtio_init(d);
	switch (which) {
	case 2:
		scenario_write(d, &p);
		break;
	case 3:
		scenario_read(d, &p);
		break;
	case 4:
		scenario_roundtrip(d, &p);
		break;
	case 5:
		scenario_flush(d, &p);
		break;
	case 6:
		scenario_id(d);
		break;
	case 7:
		scenario_past_end(d);
		break;
	case 9:
		scenario_rescan(d, &p);
		break;
	case 10:
		scenario_serve(d, &p);
	default:
		scenario_reset(d, &p);
		break;
	}
	done();
}
