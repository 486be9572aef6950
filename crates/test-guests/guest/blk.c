/*
 * Ember test guest: a minimal virtio-blk driver (virtio 1.x, modern
 * virtio-mmio transport version 2, one split virtqueue, polling) and the
 * blk-* scenarios.
 *
 * Devices are discovered from "virtio_mmio.device=<size>@<addr>:<irq>[:<id>]"
 * command-line tokens (the syntax of Linux's virtio_mmio.device= parameter);
 * the i-th token is device i. Everything runs with interrupts disabled: the
 * driver notifies the device and then polls the used ring with a bounded
 * spin. The descriptor table, the rings, the request header, the status
 * byte and the data buffers live in .bss (guest-physical == virtual).
 *
 * Integer code only, short loops: see main.c.
 */
#include "core.h"

/* virtio-mmio registers (virtio 1.x, section 4.2.2). */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LOW 0x080
#define VM_QUEUE_DESC_HIGH 0x084
#define VM_QUEUE_DRIVER_LOW 0x090
#define VM_QUEUE_DRIVER_HIGH 0x094
#define VM_QUEUE_DEVICE_LOW 0x0a0
#define VM_QUEUE_DEVICE_HIGH 0x0a4
#define VM_CONFIG_GENERATION 0x0fc
#define VM_CONFIG 0x100

#define VIRTIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_ID_BLOCK 2

/* Device status bits. */
#define ST_ACKNOWLEDGE 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u
#define ST_NEEDS_RESET 64u
#define ST_FAILED 128u

/* Feature bits (low word / high word). */
#define F_BLK_RO (1u << 5)
#define F_BLK_FLUSH (1u << 9)
#define F_HI_VERSION_1 (1u << 0) /* bit 32 */

/* Request types and status values. */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_ID_BYTES 20

/* Descriptor flags. */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

#define SECTOR_SIZE 512
#define MAX_COUNT 8
#define BUF_SIZE (MAX_COUNT * SECTOR_SIZE)
#define QSZ_MAX 8
#define MAX_DEVS 32
#define POLL_SPINS 2000000u
#define TOKEN_CAP 80

#define barrier() __asm__ volatile("" : : : "memory")

/* ------------------------------------------------------------------------ */
/* Virtqueue memory (one queue, reused by every device in turn)             */

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[QSZ_MAX];
	u16 used_event;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[QSZ_MAX];
	u16 avail_event;
};

/* desc: 16-byte aligned, avail: 2, used: 4 (virtio 1.x split queue). */
static struct {
	struct virtq_desc desc[QSZ_MAX];
	struct virtq_avail avail __attribute__((aligned(64)));
	struct virtq_used used __attribute__((aligned(64)));
} vq __attribute__((aligned(4096)));

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
/* Devices                                                                  */

struct dev {
	u32 index;
	int valid;   /* token parsed and address usable */
	int is_blk;  /* magic OK and DeviceID 2 (any version) */
	u64 size;
	u64 base;
	u32 irq;
	/* Set by blk_init. */
	u32 feat_lo, feat_hi;
	u64 capacity;
	u16 qsize;
	u16 avail_idx;
	u16 used_idx;
};

static struct dev devs[MAX_DEVS];
static u32 ndevs;

static inline u32 mmio_rd(const struct dev *d, u32 off)
{
	return *(const volatile u32 *)(d->base + off);
}

static inline void mmio_wr(const struct dev *d, u32 off, u32 val)
{
	*(volatile u32 *)(d->base + off) = val;
}

/* ------------------------------------------------------------------------ */
/* Command-line parsing                                                     */

/* parse_num plus an optional K/M/G/T suffix (like Linux's memparse). */
static int parse_size(const char **s, u64 *out)
{
	if (!parse_num(s, out))
		return 0;
	int shift = 0;
	switch (**s) {
	case 'K':
	case 'k':
		shift = 10;
		break;
	case 'M':
	case 'm':
		shift = 20;
		break;
	case 'G':
	case 'g':
		shift = 30;
		break;
	case 'T':
	case 't':
		shift = 40;
		break;
	}
	if (shift) {
		*out <<= shift;
		(*s)++;
	}
	return 1;
}

/* Parses "<size>@<addr>:<irq>[:<id>]". */
static int parse_device(const char *s, struct dev *d)
{
	u64 irq, id;

	if (!parse_size(&s, &d->size) || *s++ != '@')
		return 0;
	if (!parse_num(&s, &d->base) || *s++ != ':')
		return 0;
	if (*s < '0' || *s > '9' || !parse_num(&s, &irq) || irq == 0 ||
	    irq > 0xFFFFFFFFu)
		return 0;
	d->irq = (u32)irq;
	if (*s == ':') {
		s++;
		if (!parse_num(&s, &id))
			return 0;
	}
	return *s == 0;
}

/*
 * Collects the virtio_mmio.device= tokens. A device is probed (MagicValue,
 * DeviceID) only if its token parses and its register window lies below
 * 4 GiB (the identity-mapped range) and is 4-byte aligned.
 */
static void discover(void)
{
	char val[TOKEN_CAP];

	ndevs = 0;
	while (ndevs < MAX_DEVS &&
	       cmdline_token("virtio_mmio.device=", ndevs, val, sizeof(val))) {
		struct dev *d = &devs[ndevs];
		memset(d, 0, sizeof(*d));
		d->index = ndevs++;
		if (!parse_device(val, d) || (d->base & 3) ||
		    d->base + 0x200 > 0x100000000ul || d->base < 0x100000ul)
			continue;
		d->valid = 1;
		d->is_blk = mmio_rd(d, VM_MAGIC) == VIRTIO_MAGIC &&
			    mmio_rd(d, VM_DEVICE_ID) == VIRTIO_ID_BLOCK;
	}
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */

static void __attribute__((noreturn)) init_failed(struct dev *d, const char *step)
{
	u32 status = mmio_rd(d, VM_STATUS);

	con_puts("blk: init-failed");
	kv("dev", d->index);
	con_puts(" step=");
	con_puts(step);
	kv("status", status);
	con_putc('\n');
	mmio_wr(d, VM_STATUS, status | ST_FAILED);
	done();
}

/* Writes 0 to Status and waits (bounded) until it reads back as 0. */
static int dev_reset(struct dev *d)
{
	mmio_wr(d, VM_STATUS, 0);
	for (u32 i = 0; i < 1000; i++) {
		if (mmio_rd(d, VM_STATUS) == 0)
			return 1;
	}
	return 0;
}

static void set_status(struct dev *d, u32 bits)
{
	mmio_wr(d, VM_STATUS, mmio_rd(d, VM_STATUS) | bits);
}

/* Reads a 64-bit config field with two 32-bit reads, generation-checked. */
static u64 config_u64(struct dev *d, u32 off)
{
	u32 gen, lo, hi;
	u32 tries = 0;

	do {
		gen = mmio_rd(d, VM_CONFIG_GENERATION);
		lo = mmio_rd(d, VM_CONFIG + off);
		hi = mmio_rd(d, VM_CONFIG + off + 4);
	} while (gen != mmio_rd(d, VM_CONFIG_GENERATION) && ++tries < 10);
	return ((u64)hi << 32) | lo;
}

/*
 * Full virtio 1.x initialisation (section 3.1.1 with the MMIO specifics of
 * 4.2.3): reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK,
 * queue 0 setup, config read, DRIVER_OK. Prints init-failed and finishes on
 * any failure.
 */
static void blk_init(struct dev *d)
{
	if (mmio_rd(d, VM_MAGIC) != VIRTIO_MAGIC)
		init_failed(d, "magic");
	if (mmio_rd(d, VM_VERSION) != 2)
		init_failed(d, "version");
	if (mmio_rd(d, VM_DEVICE_ID) != VIRTIO_ID_BLOCK)
		init_failed(d, "device-id");
	if (!dev_reset(d))
		init_failed(d, "reset");
	set_status(d, ST_ACKNOWLEDGE);
	set_status(d, ST_DRIVER);

	mmio_wr(d, VM_DEVICE_FEATURES_SEL, 0);
	d->feat_lo = mmio_rd(d, VM_DEVICE_FEATURES);
	mmio_wr(d, VM_DEVICE_FEATURES_SEL, 1);
	d->feat_hi = mmio_rd(d, VM_DEVICE_FEATURES);
	if (!(d->feat_hi & F_HI_VERSION_1))
		init_failed(d, "features");
	mmio_wr(d, VM_DRIVER_FEATURES_SEL, 0);
	mmio_wr(d, VM_DRIVER_FEATURES, d->feat_lo & (F_BLK_RO | F_BLK_FLUSH));
	mmio_wr(d, VM_DRIVER_FEATURES_SEL, 1);
	mmio_wr(d, VM_DRIVER_FEATURES, F_HI_VERSION_1);
	set_status(d, ST_FEATURES_OK);
	if (!(mmio_rd(d, VM_STATUS) & ST_FEATURES_OK))
		init_failed(d, "features-ok");

	mmio_wr(d, VM_QUEUE_SEL, 0);
	if (mmio_rd(d, VM_QUEUE_READY) != 0)
		init_failed(d, "queue-busy");
	u32 max = mmio_rd(d, VM_QUEUE_NUM_MAX);
	u32 q = QSZ_MAX;
	while (q > max)
		q >>= 1;
	if (q < 4)
		init_failed(d, "queue-max");
	d->qsize = (u16)q;
	d->avail_idx = 0;
	d->used_idx = 0;
	memset(&vq, 0, sizeof(vq));
	u64 desc = (u64)&vq.desc, avail = (u64)&vq.avail, used = (u64)&vq.used;
	mmio_wr(d, VM_QUEUE_NUM, q);
	mmio_wr(d, VM_QUEUE_DESC_LOW, (u32)desc);
	mmio_wr(d, VM_QUEUE_DESC_HIGH, (u32)(desc >> 32));
	mmio_wr(d, VM_QUEUE_DRIVER_LOW, (u32)avail);
	mmio_wr(d, VM_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
	mmio_wr(d, VM_QUEUE_DEVICE_LOW, (u32)used);
	mmio_wr(d, VM_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
	mmio_wr(d, VM_QUEUE_READY, 1);
	if (mmio_rd(d, VM_QUEUE_READY) != 1)
		init_failed(d, "queue-ready");

	d->capacity = config_u64(d, 0);

	set_status(d, ST_DRIVER_OK);
	u32 st = mmio_rd(d, VM_STATUS);
	if ((st & (ST_NEEDS_RESET | ST_FAILED)) || !(st & ST_DRIVER_OK))
		init_failed(d, "driver-ok");
}

/*
 * Submits one request (header, optional data buffer, status byte) and polls
 * the used ring. data_len == 0 means no data descriptor (FLUSH). Returns the
 * status byte the device wrote (0xff if it wrote none). Prints blk: timeout
 * and finishes if the device does not complete it.
 */
static u8 blk_request(struct dev *d, u32 type, u64 sector, void *data,
		      u32 data_len, int device_writes_data)
{
	u16 n = 0;

	req_hdr.type = type;
	req_hdr.reserved = 0;
	req_hdr.sector = sector;
	req_status = 0xFF;

	vq.desc[n].addr = (u64)&req_hdr;
	vq.desc[n].len = sizeof(req_hdr);
	vq.desc[n].flags = VIRTQ_DESC_F_NEXT;
	vq.desc[n].next = n + 1;
	n++;
	if (data_len) {
		vq.desc[n].addr = (u64)data;
		vq.desc[n].len = data_len;
		vq.desc[n].flags = VIRTQ_DESC_F_NEXT |
				   (device_writes_data ? VIRTQ_DESC_F_WRITE : 0);
		vq.desc[n].next = n + 1;
		n++;
	}
	vq.desc[n].addr = (u64)&req_status;
	vq.desc[n].len = 1;
	vq.desc[n].flags = VIRTQ_DESC_F_WRITE;
	vq.desc[n].next = 0;

	/*
	 * Descriptors and ring entry before the index (x86: a compiler barrier
	 * is enough). qsize is a power of two: mask instead of a div.
	 */
	vq.avail.ring[d->avail_idx & (d->qsize - 1)] = 0;
	barrier();
	d->avail_idx++;
	*(volatile u16 *)&vq.avail.idx = d->avail_idx;
	barrier();
	mmio_wr(d, VM_QUEUE_NOTIFY, 0);

	u32 i;
	for (i = 0; i < POLL_SPINS; i++) {
		if (*(volatile u16 *)&vq.used.idx != d->used_idx)
			break;
	}
	if (i == POLL_SPINS) {
		con_puts("blk: timeout\n");
		done();
	}
	barrier();
	d->used_idx++;

	u32 isr = mmio_rd(d, VM_INTERRUPT_STATUS);
	if (isr)
		mmio_wr(d, VM_INTERRUPT_ACK, isr);
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

static u32 fnv1a(const u8 *p, u32 n)
{
	u32 h = 0x811c9dc5u;

	for (u32 i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x01000193u;
	}
	return h;
}

static int bytes_equal(const u8 *a, const u8 *b, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		if (a[i] != b[i])
			return 0;
	}
	return 1;
}

static void put_hexbytes(const u8 *p, u32 n)
{
	static const char digits[] = "0123456789abcdef";

	for (u32 i = 0; i < n; i++) {
		con_putc(digits[p[i] >> 4]);
		con_putc(digits[p[i] & 0xF]);
	}
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

/*
 * The device selected by blk.dev=N (device index N), or the first block
 * device without blk.dev. Prints "blk: none" and finishes if there is none.
 */
static struct dev *select_dev(void)
{
	u64 want = param("blk.dev=", ~0ul);

	for (u32 i = 0; i < ndevs; i++) {
		if (devs[i].is_blk && (want == ~0ul || want == i))
			return &devs[i];
	}
	con_puts("blk: none\n");
	done();
}

static u8 read_into(struct dev *d, u8 *buf, u8 poison, const struct params *p)
{
	u32 len = p->count * SECTOR_SIZE;

	memset(buf, poison, len);
	return blk_request(d, BLK_T_IN, p->sector, buf, len, 1);
}

static u8 write_pattern(struct dev *d, const struct params *p)
{
	fill_pattern(buf_w, p->seed, p->sector, p->count);
	return blk_request(d, BLK_T_OUT, p->sector, buf_w, p->count * SECTOR_SIZE,
			   0);
}

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */

static void scenario_info(void)
{
	int any = 0;

	for (u32 i = 0; i < ndevs; i++) {
		struct dev *d = &devs[i];
		if (!d->is_blk)
			continue;
		any = 1;
		blk_init(d);
		con_puts("blk");
		kv("dev", d->index);
		kv("addr", d->base);
		kv("irq", d->irq);
		kv("capacity", d->capacity);
		kv("features_lo", d->feat_lo);
		kv("features_hi", d->feat_hi);
		kv("ro", (d->feat_lo & F_BLK_RO) ? 1 : 0);
		con_putc('\n');
		dev_reset(d);
	}
	if (!any)
		con_puts("blk: none\n");
}

static void scenario_multi(const struct params *p)
{
	int any = 0;

	for (u32 i = 0; i < ndevs; i++) {
		struct dev *d = &devs[i];
		if (!d->is_blk)
			continue;
		any = 1;
		blk_init(d);
		u8 st = read_into(d, buf_r[0], 0xA5, p);
		con_puts("blk-multi");
		kv("dev", d->index);
		kv("status", st);
		kv("sum", fnv1a(buf_r[0], p->count * SECTOR_SIZE));
		con_putc('\n');
		dev_reset(d);
	}
	if (!any)
		con_puts("blk: none\n");
}

static void scenario_write(struct dev *d, const struct params *p)
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
static void scenario_read(struct dev *d, const struct params *p)
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
static void rescan_report(struct dev *d, const struct params *p, u64 phase)
{
	u8 st = read_into(d, buf_r[0], 0xA5, p);

	con_puts("blk-rescan");
	kv("phase", phase);
	kv("status", st);
	kv("capacity", config_u64(d, 0));
	kv("sum", fnv1a(buf_r[0], p->count * SECTOR_SIZE));
	con_putc('\n');
}

/*
 * Reads, then waits (up to blk.wait polls, default 20,000,000) for the device's
 * configuration generation to change -- the host swapped the backing file --
 * and reads again.
 */
static void scenario_rescan(struct dev *d, const struct params *p)
{
	u64 polls = param("blk.wait=", 20000000);
	u32 generation = mmio_rd(d, VM_CONFIG_GENERATION);

	rescan_report(d, p, 1);
	con_puts("blk-rescan: waiting\n");
	while (polls-- && mmio_rd(d, VM_CONFIG_GENERATION) == generation)
		;
	if (mmio_rd(d, VM_CONFIG_GENERATION) == generation) {
		con_puts("blk-rescan: no change\n");
		return;
	}
	rescan_report(d, p, 2);
}

static void scenario_roundtrip(struct dev *d, const struct params *p)
{
	u8 sw = write_pattern(d, p);
	u8 sr = read_into(d, buf_r[0], 0xA5, p);

	con_puts("blk-roundtrip");
	kv("status_w", sw);
	kv("status_r", sr);
	kv("match", bytes_equal(buf_w, buf_r[0], p->count * SECTOR_SIZE));
	con_putc('\n');
}

static void scenario_flush(struct dev *d, const struct params *p)
{
	u8 sw = write_pattern(d, p);
	u8 sf = blk_request(d, BLK_T_FLUSH, 0, 0, 0, 0);

	con_puts("blk-flush");
	kv("status_w", sw);
	kv("status_f", sf);
	con_putc('\n');
}

static void scenario_id(struct dev *d)
{
	u8 *id = buf_r[0];

	memset(id, 0, BLK_ID_BYTES);
	u8 st = blk_request(d, BLK_T_GET_ID, 0, id, BLK_ID_BYTES, 1);
	con_puts("blk-id");
	kv("status", st);
	con_puts(" id=");
	for (u32 i = 0; i < BLK_ID_BYTES && id[i]; i++)
		con_putc(id[i] > 0x20 && id[i] < 0x7F ? (char)id[i] : '?');
	con_putc('\n');
}

static void scenario_past_end(struct dev *d)
{
	memset(buf_r[0], 0xA5, SECTOR_SIZE);
	u8 st = blk_request(d, BLK_T_IN, d->capacity, buf_r[0], SECTOR_SIZE, 1);

	con_puts("blk-past-end");
	kv("status", st);
	con_putc('\n');
}

static void scenario_reset(struct dev *d, const struct params *p)
{
	u8 s1 = read_into(d, buf_r[0], 0xA5, p);

	if (!dev_reset(d))
		init_failed(d, "reset");
	blk_init(d);
	u8 s2 = read_into(d, buf_r[1], 0x5A, p);

	con_puts("blk-reset");
	kv("status1", s1);
	kv("status2", s2);
	kv("match", bytes_equal(buf_r[0], buf_r[1], p->count * SECTOR_SIZE));
	con_putc('\n');
}

int blk_scenario(const char *name)
{
	static const char *const names[] = {
		"blk-info",  "blk-multi",    "blk-write", "blk-read",
		"blk-roundtrip", "blk-flush", "blk-id", "blk-past-end",
		"blk-reset", "blk-rescan",
	};
	u32 which = 0;
	struct params p;

	while (which < sizeof(names) / sizeof(names[0]) &&
	       !streq(name, names[which]))
		which++;
	if (which == sizeof(names) / sizeof(names[0]))
		return 0;

	discover();
	read_params(&p);
	if (which == 0) {
		scenario_info();
		done();
	}
	if (which == 1) {
		scenario_multi(&p);
		done();
	}

	struct dev *d = select_dev();
	blk_init(d);
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
	default:
		scenario_reset(d, &p);
		break;
	}
	done();
}
