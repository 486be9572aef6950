/*
 * Ember test guest: the virtio-mmio driver core shared by the block, net and
 * vsock drivers (see virtio.h).
 *
 * Integer code only, short loops, no division: see main.c.
 */
#include "virtio.h"

#define VIRTIO_MAGIC 0x74726976u /* "virt" */

/* Device status bits. */
#define ST_ACKNOWLEDGE 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u
#define ST_NEEDS_RESET 64u
#define ST_FAILED 128u

/* Feature bits of the high word. */
#define F_HI_VERSION_1 (1u << 0) /* bit 32 */

#define MAX_DEVS 32
#define TOKEN_CAP 80

struct virtq_ring virtio_rings[VIRTIO_MAX_QUEUES];
static struct virtq vqs[VIRTIO_MAX_QUEUES];

static const struct virtio_driver *drv;
static struct virtio_dev devs[MAX_DEVS];
static u32 ndevs;

/* ------------------------------------------------------------------------ */
/* Discovery                                                                */

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

/* Parses "<size>@<addr>:<irq>[:<id>]" into base and irq. */
static int parse_device(const char *s, u64 *base, u32 *irq)
{
	u64 size, v, id;

	if (!parse_size(&s, &size) || *s++ != '@')
		return 0;
	if (!parse_num(&s, base) || *s++ != ':')
		return 0;
	if (*s < '0' || *s > '9' || !parse_num(&s, &v) || v == 0 ||
	    v > 0xFFFFFFFFu)
		return 0;
	*irq = (u32)v;
	if (*s == ':') {
		s++;
		if (!parse_num(&s, &id))
			return 0;
	}
	return *s == 0;
}

/* Whether the token of d parses to a usable window holding drv's device. */
static int probe(const char *token, struct virtio_dev *d)
{
	if (!parse_device(token, &d->base, &d->irq) || (d->base & 3) ||
	    d->base + 0x200 > 0x100000000ul || d->base < 0x100000ul)
		return 0;
	return virtio_rd(d, VM_MAGIC) == VIRTIO_MAGIC &&
	       virtio_rd(d, VM_DEVICE_ID) == drv->device_id;
}

void virtio_discover(const struct virtio_driver *driver)
{
	char val[TOKEN_CAP];

	drv = driver;
	ndevs = 0;
	for (u32 t = 0; t < MAX_DEVS &&
			cmdline_token("virtio_mmio.device=", t, val, sizeof(val));
	     t++) {
		struct virtio_dev *d = &devs[ndevs];
		memset(d, 0, sizeof(*d));
		d->match = probe(val, d);
		if (d->match || drv->every_token)
			d->index = ndevs++;
	}
}

static void print_none(void)
{
	con_puts(drv->name);
	con_puts(": none\n");
}

struct virtio_dev *virtio_select(const char *key)
{
	u64 want = param(key, ~0ul);

	for (u32 i = 0; i < ndevs; i++) {
		if (devs[i].match && (want == ~0ul || want == devs[i].index))
			return &devs[i];
	}
	print_none();
	done();
}

void virtio_each(void (*fn)(struct virtio_dev *d, void *arg), void *arg)
{
	int any = 0;

	for (u32 i = 0; i < ndevs; i++) {
		if (!devs[i].match)
			continue;
		any = 1;
		fn(&devs[i], arg);
		virtio_reset(&devs[i]);
	}
	if (!any)
		print_none();
}

/* ------------------------------------------------------------------------ */
/* Initialisation                                                           */

void virtio_init_failed(struct virtio_dev *d, const char *step)
{
	u32 status = virtio_rd(d, VM_STATUS);

	con_puts(drv->name);
	con_puts(": init-failed");
	kv("dev", d->index);
	con_puts(" step=");
	con_puts(step);
	kv("status", status);
	con_putc('\n');
	virtio_wr(d, VM_STATUS, status | ST_FAILED);
	done();
}

int virtio_reset(struct virtio_dev *d)
{
	virtio_wr(d, VM_STATUS, 0);
	for (u32 i = 0; i < 1000; i++) {
		if (virtio_rd(d, VM_STATUS) == 0)
			return 1;
	}
	return 0;
}

static void set_status(struct virtio_dev *d, u32 bits)
{
	virtio_wr(d, VM_STATUS, virtio_rd(d, VM_STATUS) | bits);
}

static void write_addr(struct virtio_dev *d, u32 low_reg, const void *p)
{
	u64 addr = (u64)p;

	virtio_wr(d, low_reg, (u32)addr);
	virtio_wr(d, low_reg + 4, (u32)(addr >> 32));
}

/*
 * Programs queue q with its .bss rings (zeroed, indices 0): size = the
 * largest power of two <= min(QueueNumMax, the driver's size), at least the
 * driver's minimum.
 */
static void setup_queue(struct virtio_dev *d, u32 q)
{
	struct virtq_ring *r = &virtio_rings[q];
	struct virtq *vq = &vqs[q];

	virtio_wr(d, VM_QUEUE_SEL, q);
	if (virtio_rd(d, VM_QUEUE_READY) != 0)
		virtio_init_failed(d, "queue-busy");
	u32 max = virtio_rd(d, VM_QUEUE_NUM_MAX);
	u32 size = drv->qsize[q];
	while (size > max)
		size >>= 1;
	if (size < drv->qmin)
		virtio_init_failed(d, "queue-max");
	memset(vq, 0, sizeof(*vq));
	r->vq = vq;
	r->size = (u16)size;
	r->avail_idx = 0;
	r->used_idx = 0;
	virtio_wr(d, VM_QUEUE_NUM, size);
	write_addr(d, VM_QUEUE_DESC_LOW, &vq->desc);
	write_addr(d, VM_QUEUE_DRIVER_LOW, &vq->avail);
	write_addr(d, VM_QUEUE_DEVICE_LOW, &vq->used);
	virtio_wr(d, VM_QUEUE_READY, 1);
	if (virtio_rd(d, VM_QUEUE_READY) != 1)
		virtio_init_failed(d, "queue-ready");
}

void virtio_init(struct virtio_dev *d)
{
	if (virtio_rd(d, VM_MAGIC) != VIRTIO_MAGIC)
		virtio_init_failed(d, "magic");
	if (virtio_rd(d, VM_VERSION) != 2)
		virtio_init_failed(d, "version");
	if (virtio_rd(d, VM_DEVICE_ID) != drv->device_id)
		virtio_init_failed(d, "device-id");
	if (!virtio_reset(d))
		virtio_init_failed(d, "reset");
	set_status(d, ST_ACKNOWLEDGE);
	set_status(d, ST_DRIVER);

	virtio_wr(d, VM_DEVICE_FEATURES_SEL, 0);
	d->feat_lo = virtio_rd(d, VM_DEVICE_FEATURES);
	virtio_wr(d, VM_DEVICE_FEATURES_SEL, 1);
	d->feat_hi = virtio_rd(d, VM_DEVICE_FEATURES);
	if (!(d->feat_hi & F_HI_VERSION_1) ||
	    (d->feat_lo & drv->required) != drv->required)
		virtio_init_failed(d, "features");
	virtio_wr(d, VM_DRIVER_FEATURES_SEL, 0);
	virtio_wr(d, VM_DRIVER_FEATURES, d->feat_lo & drv->features);
	virtio_wr(d, VM_DRIVER_FEATURES_SEL, 1);
	virtio_wr(d, VM_DRIVER_FEATURES, F_HI_VERSION_1);
	set_status(d, ST_FEATURES_OK);
	if (!(virtio_rd(d, VM_STATUS) & ST_FEATURES_OK))
		virtio_init_failed(d, "features-ok");

	for (u32 q = 0; q < drv->nqueues; q++)
		setup_queue(d, q);
	if (drv->read_config)
		drv->read_config(d);

	set_status(d, ST_DRIVER_OK);
	u32 st = virtio_rd(d, VM_STATUS);
	if ((st & (ST_NEEDS_RESET | ST_FAILED)) || !(st & ST_DRIVER_OK))
		virtio_init_failed(d, "driver-ok");
}

/* ------------------------------------------------------------------------ */
/* Configuration space                                                      */

void virtio_config_read(const struct virtio_dev *d,
			void (*read)(const struct virtio_dev *d, void *arg),
			void *arg)
{
	u32 gen, tries = 0;

	do {
		gen = virtio_rd(d, VM_CONFIG_GENERATION);
		read(d, arg);
	} while (gen != virtio_rd(d, VM_CONFIG_GENERATION) && ++tries < 10);
}

struct config_u64 {
	u32 off;
	u64 val;
};

static void read_u64(const struct virtio_dev *d, void *arg)
{
	struct config_u64 *c = arg;
	u32 lo = virtio_rd(d, VM_CONFIG + c->off);
	u32 hi = virtio_rd(d, VM_CONFIG + c->off + 4);

	c->val = ((u64)hi << 32) | lo;
}

u64 virtio_config_u64(const struct virtio_dev *d, u32 off)
{
	struct config_u64 c = { off, 0 };

	virtio_config_read(d, read_u64, &c);
	return c.val;
}

/* ------------------------------------------------------------------------ */
/* Queues                                                                   */

void virtq_desc(u32 q, u16 i, const void *addr, u32 len, u16 flags, u16 next)
{
	struct virtq_desc *desc = &virtio_rings[q].vq->desc[i];

	desc->addr = (u64)addr;
	desc->len = len;
	desc->flags = flags;
	desc->next = next;
}

void virtq_add(u32 q, u16 head)
{
	struct virtq_ring *r = &virtio_rings[q];

	/*
	 * Descriptors and ring entry before the index (x86: a compiler barrier
	 * is enough). size is a power of two: mask instead of a div.
	 */
	r->vq->avail.ring[r->avail_idx & (r->size - 1)] = head;
	barrier();
	r->avail_idx++;
	*(volatile u16 *)&r->vq->avail.idx = r->avail_idx;
	barrier();
}

void virtq_post(u32 q, u16 i, void *buf, u32 len)
{
	virtq_desc(q, i, buf, len, VIRTQ_DESC_F_WRITE, 0);
	virtq_add(q, i);
}

void virtio_notify(const struct virtio_dev *d, u32 q)
{
	virtio_wr(d, VM_QUEUE_NOTIFY, q);
}

void virtq_publish(const struct virtio_dev *d, u32 q, u16 head)
{
	virtq_add(q, head);
	virtio_notify(d, q);
}

int virtq_wait_used(const struct virtio_dev *d, u32 q, u64 *budget, u32 *id,
		    u32 *len)
{
	struct virtq_ring *r = &virtio_rings[q];
	volatile u16 *used_idx = &r->vq->used.idx;
	u16 seen = r->used_idx;
	u64 left = *budget;

	while (*used_idx == seen) {
		if (left == 0) {
			*budget = 0;
			return 0;
		}
		left--;
	}
	*budget = left;
	barrier();
	struct virtq_used_elem *e = &r->vq->used.ring[seen & (r->size - 1)];
	*id = *(volatile u32 *)&e->id;
	*len = *(volatile u32 *)&e->len;
	r->used_idx++;

	/* The guest polls: acknowledge whatever interrupt the device raised. */
	u32 isr = virtio_rd(d, VM_INTERRUPT_STATUS);
	if (isr)
		virtio_wr(d, VM_INTERRUPT_ACK, isr);
	return 1;
}

int virtq_submit(const struct virtio_dev *d, u32 q, u16 head, u64 spins)
{
	u32 id, len;

	virtq_publish(d, q, head);
	return virtq_wait_used(d, q, &spins, &id, &len);
}

/* ------------------------------------------------------------------------ */
/* Helpers of the scenarios                                                 */

int name_index(const char *name, const char *const *names, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		if (streq(name, names[i]))
			return (int)i;
	}
	return -1;
}

u32 fnv1a(const u8 *p, u32 n)
{
	u32 h = 0x811c9dc5u;

	for (u32 i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x01000193u;
	}
	return h;
}

void put_hexbytes(const u8 *p, u32 n)
{
	static const char digits[] = "0123456789abcdef";

	for (u32 i = 0; i < n; i++) {
		con_putc(digits[p[i] >> 4]);
		con_putc(digits[p[i] & 0xF]);
	}
}

void put_printable(const u8 *p, u32 n)
{
	for (u32 i = 0; i < n; i++)
		con_putc(p[i] > 0x20 && p[i] < 0x7F ? (char)p[i] : '?');
}
