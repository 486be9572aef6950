/*
 * Ember test guest: a minimal virtio-net driver (virtio 1.x, modern
 * virtio-mmio transport version 2, receive queue 0 and transmit queue 1,
 * split virtqueues, polling) and the net-* scenarios.
 *
 * Devices are discovered from "virtio_mmio.device=<size>@<addr>:<irq>[:<id>]"
 * command-line tokens, as in blk.c; net devices (DeviceID 1) are numbered
 * 0, 1, ... in command-line order, and "net.dev=N" picks the N-th. The
 * driver accepts VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC and (if offered)
 * VIRTIO_NET_F_STATUS: no offloads, no mergeable buffers, so every frame
 * travels with a 12-byte virtio_net_hdr_v1 in front of it, in one buffer.
 * Everything runs with interrupts disabled: the driver notifies the device
 * and polls the used rings with bounded spins. Rings and buffers live in
 * .bss (guest-physical == virtual).
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
#define VIRTIO_ID_NET 1

/* Device status bits. */
#define ST_ACKNOWLEDGE 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u
#define ST_NEEDS_RESET 64u
#define ST_FAILED 128u

/* Feature bits (low word / high word). */
#define F_NET_MAC (1u << 5)
#define F_NET_STATUS (1u << 16)
#define F_HI_VERSION_1 (1u << 0) /* bit 32 */

/* Configuration space. */
#define CFG_MAC 0
#define CFG_STATUS 6
#define NET_S_LINK_UP 1

/* Descriptor flags. */
#define VIRTQ_DESC_F_WRITE 2

#define RXQ 0
#define TXQ 1
#define QSZ_MAX 8
#define MAX_DEVS 32
#define TOKEN_CAP 80

#define VNET_HDR_LEN 12
#define ETH_HLEN 14
#define ETHERTYPE_TEST 0x88b5
#define TAG_LEN 14 /* "ember-net-test" */
#define FRAME_MIN (ETH_HLEN + TAG_LEN)
#define FRAME_MAX 1514
#define FRAME_DEFAULT 64
#define RX_BUF_SIZE 2048
#define TX_SPINS 2000000u
#define RECV_WAIT_DEFAULT 10000000u

#define barrier() __asm__ volatile("" : : : "memory")

static const char tag[TAG_LEN + 1] = "ember-net-test";

/* ------------------------------------------------------------------------ */
/* Virtqueue memory: one receive and one transmit queue                     */

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

struct virtq {
	struct virtq_desc desc[QSZ_MAX];
	struct virtq_avail avail __attribute__((aligned(64)));
	struct virtq_used used __attribute__((aligned(64)));
} __attribute__((aligned(4096)));

static struct virtq vqs[2];
static u8 rx_bufs[QSZ_MAX][RX_BUF_SIZE] __attribute__((aligned(4096)));
static u8 tx_buf[VNET_HDR_LEN + FRAME_MAX] __attribute__((aligned(64)));

/* ------------------------------------------------------------------------ */
/* Devices                                                                  */

struct ring {
	u16 size;
	u16 avail_idx;
	u16 used_idx;
};

struct dev {
	u32 index;   /* among net devices */
	u64 base;
	u32 irq;
	u32 feat_lo, feat_hi;
	u8 mac[6];
	u32 link;
	struct ring ring[2];
};

static struct dev devs[MAX_DEVS];
static u32 ndevs; /* net devices found */

static inline u32 mmio_rd(const struct dev *d, u32 off)
{
	return *(const volatile u32 *)(d->base + off);
}

static inline void mmio_wr(const struct dev *d, u32 off, u32 val)
{
	*(volatile u32 *)(d->base + off) = val;
}

static inline u8 mmio_rd8(const struct dev *d, u32 off)
{
	return *(const volatile u8 *)(d->base + off);
}

static inline u16 mmio_rd16(const struct dev *d, u32 off)
{
	return *(const volatile u16 *)(d->base + off);
}

/* ------------------------------------------------------------------------ */
/* Command-line parsing (the syntax of blk.c)                               */

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

/*
 * Collects the net devices among the virtio_mmio.device= tokens (at most
 * 32 tokens). A token is probed only if it parses and its window lies in
 * [1 MiB, 4 GiB) and is 4-byte aligned; it is a net device if MagicValue is
 * "virt" and DeviceID is 1.
 */
static void discover(void)
{
	char val[TOKEN_CAP];
	u64 base;
	u32 irq;

	ndevs = 0;
	for (u32 t = 0; t < MAX_DEVS &&
			cmdline_token("virtio_mmio.device=", t, val, sizeof(val));
	     t++) {
		if (!parse_device(val, &base, &irq) || (base & 3) ||
		    base + 0x200 > 0x100000000ul || base < 0x100000ul)
			continue;
		struct dev *d = &devs[ndevs];
		memset(d, 0, sizeof(*d));
		d->base = base;
		d->irq = irq;
		if (mmio_rd(d, VM_MAGIC) != VIRTIO_MAGIC ||
		    mmio_rd(d, VM_DEVICE_ID) != VIRTIO_ID_NET)
			continue;
		d->index = ndevs++;
	}
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */

static void __attribute__((noreturn)) init_failed(struct dev *d, const char *step)
{
	u32 status = mmio_rd(d, VM_STATUS);

	con_puts("net: init-failed");
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

/* Programs queue q with its .bss rings: size min(QueueNumMax, 8), a power of two >= 2. */
static void setup_queue(struct dev *d, u32 q)
{
	struct virtq *vq = &vqs[q];
	struct ring *r = &d->ring[q];

	mmio_wr(d, VM_QUEUE_SEL, q);
	if (mmio_rd(d, VM_QUEUE_READY) != 0)
		init_failed(d, "queue-busy");
	u32 max = mmio_rd(d, VM_QUEUE_NUM_MAX);
	u32 size = QSZ_MAX;
	while (size > max)
		size >>= 1;
	if (size < 2)
		init_failed(d, "queue-max");
	r->size = (u16)size;
	r->avail_idx = 0;
	r->used_idx = 0;
	memset(vq, 0, sizeof(*vq));
	u64 desc = (u64)&vq->desc, avail = (u64)&vq->avail, used = (u64)&vq->used;
	mmio_wr(d, VM_QUEUE_NUM, size);
	mmio_wr(d, VM_QUEUE_DESC_LOW, (u32)desc);
	mmio_wr(d, VM_QUEUE_DESC_HIGH, (u32)(desc >> 32));
	mmio_wr(d, VM_QUEUE_DRIVER_LOW, (u32)avail);
	mmio_wr(d, VM_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
	mmio_wr(d, VM_QUEUE_DEVICE_LOW, (u32)used);
	mmio_wr(d, VM_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
	mmio_wr(d, VM_QUEUE_READY, 1);
	if (mmio_rd(d, VM_QUEUE_READY) != 1)
		init_failed(d, "queue-ready");
}

/* Reads the MAC (byte accesses) and link status, generation-checked. */
static void read_config(struct dev *d)
{
	u32 gen, tries = 0;

	do {
		gen = mmio_rd(d, VM_CONFIG_GENERATION);
		for (u32 i = 0; i < 6; i++)
			d->mac[i] = mmio_rd8(d, VM_CONFIG + CFG_MAC + i);
		d->link = NET_S_LINK_UP;
		if (d->feat_lo & F_NET_STATUS)
			d->link = mmio_rd16(d, VM_CONFIG + CFG_STATUS) & NET_S_LINK_UP;
	} while (gen != mmio_rd(d, VM_CONFIG_GENERATION) && ++tries < 10);
}

/*
 * Full virtio 1.x initialisation (section 3.1.1, MMIO specifics of 4.2.3):
 * reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues 0 and 1,
 * config, DRIVER_OK. Prints init-failed and finishes on any failure.
 */
static void net_init(struct dev *d)
{
	if (mmio_rd(d, VM_MAGIC) != VIRTIO_MAGIC)
		init_failed(d, "magic");
	if (mmio_rd(d, VM_VERSION) != 2)
		init_failed(d, "version");
	if (mmio_rd(d, VM_DEVICE_ID) != VIRTIO_ID_NET)
		init_failed(d, "device-id");
	if (!dev_reset(d))
		init_failed(d, "reset");
	set_status(d, ST_ACKNOWLEDGE);
	set_status(d, ST_DRIVER);

	mmio_wr(d, VM_DEVICE_FEATURES_SEL, 0);
	d->feat_lo = mmio_rd(d, VM_DEVICE_FEATURES);
	mmio_wr(d, VM_DEVICE_FEATURES_SEL, 1);
	d->feat_hi = mmio_rd(d, VM_DEVICE_FEATURES);
	if (!(d->feat_hi & F_HI_VERSION_1) || !(d->feat_lo & F_NET_MAC))
		init_failed(d, "features");
	mmio_wr(d, VM_DRIVER_FEATURES_SEL, 0);
	mmio_wr(d, VM_DRIVER_FEATURES, d->feat_lo & (F_NET_MAC | F_NET_STATUS));
	mmio_wr(d, VM_DRIVER_FEATURES_SEL, 1);
	mmio_wr(d, VM_DRIVER_FEATURES, F_HI_VERSION_1);
	set_status(d, ST_FEATURES_OK);
	if (!(mmio_rd(d, VM_STATUS) & ST_FEATURES_OK))
		init_failed(d, "features-ok");

	setup_queue(d, RXQ);
	setup_queue(d, TXQ);
	read_config(d);

	set_status(d, ST_DRIVER_OK);
	u32 st = mmio_rd(d, VM_STATUS);
	if ((st & (ST_NEEDS_RESET | ST_FAILED)) || !(st & ST_DRIVER_OK))
		init_failed(d, "driver-ok");
}

/* Acknowledges whatever interrupt the device raised (the guest polls). */
static void ack_interrupt(struct dev *d)
{
	u32 isr = mmio_rd(d, VM_INTERRUPT_STATUS);

	if (isr)
		mmio_wr(d, VM_INTERRUPT_ACK, isr);
}

/* Makes descriptor `head` available on queue q and notifies the device. */
static void publish(struct dev *d, u32 q, u16 head)
{
	struct ring *r = &d->ring[q];

	vqs[q].avail.ring[r->avail_idx & (r->size - 1)] = head;
	barrier();
	r->avail_idx++;
	*(volatile u16 *)&vqs[q].avail.idx = r->avail_idx;
	barrier();
	mmio_wr(d, VM_QUEUE_NOTIFY, q);
}

/*
 * Waits up to `spins` polls for a used entry on queue q; returns 1 and the
 * entry, or 0 on timeout.
 */
static int wait_used(struct dev *d, u32 q, u64 spins, u32 *id, u32 *len)
{
	struct ring *r = &d->ring[q];
	volatile u16 *used_idx = (volatile u16 *)&vqs[q].used.idx;
	u64 i;

	for (i = 0; i < spins; i++) {
		if (*used_idx != r->used_idx)
			break;
	}
	if (i == spins)
		return 0;
	barrier();
	struct virtq_used_elem *e = &vqs[q].used.ring[r->used_idx & (r->size - 1)];
	*id = *(volatile u32 *)&e->id;
	*len = *(volatile u32 *)&e->len;
	r->used_idx++;
	ack_interrupt(d);
	return 1;
}

/*
 * Sends tx_buf (a zeroed header, then `len` frame bytes) with descriptor 0
 * of the transmit queue and waits for the device to return it. Returns
 * 0x0 when returned, 0x1 on timeout.
 */
static u32 transmit(struct dev *d, u32 len)
{
	struct virtq_desc *desc = &vqs[TXQ].desc[0];
	u32 id, used_len;

	memset(tx_buf, 0, VNET_HDR_LEN);
	desc->addr = (u64)tx_buf;
	desc->len = VNET_HDR_LEN + len;
	desc->flags = 0;
	desc->next = 0;
	publish(d, TXQ, 0);
	return wait_used(d, TXQ, TX_SPINS, &id, &used_len) ? 0 : 1;
}

/* Fills the receive queue: descriptor i is rx_bufs[i], device-writable. */
static void post_rx_buffers(struct dev *d)
{
	struct ring *r = &d->ring[RXQ];

	for (u16 i = 0; i < r->size; i++) {
		vqs[RXQ].desc[i].addr = (u64)rx_bufs[i];
		vqs[RXQ].desc[i].len = RX_BUF_SIZE;
		vqs[RXQ].desc[i].flags = VIRTQ_DESC_F_WRITE;
		vqs[RXQ].desc[i].next = 0;
		vqs[RXQ].avail.ring[i] = i;
	}
	barrier();
	r->avail_idx = r->size;
	*(volatile u16 *)&vqs[RXQ].avail.idx = r->avail_idx;
	barrier();
	mmio_wr(d, VM_QUEUE_NOTIFY, RXQ);
}

/*
 * Waits (net.wait polls) for one received frame. Returns the buffer index
 * and the frame length (used length minus the header, 0 if shorter), or
 * -1 on timeout or a used entry naming no buffer of ours.
 */
static int receive(struct dev *d, u32 *frame_len)
{
	u64 wait = param("net.wait=", RECV_WAIT_DEFAULT);
	u32 id, len;

	if (!wait_used(d, RXQ, wait, &id, &len))
		return -1;
	if (id >= d->ring[RXQ].size)
		return -1;
	if (len > RX_BUF_SIZE)
		len = RX_BUF_SIZE;
	*frame_len = len > VNET_HDR_LEN ? len - VNET_HDR_LEN : 0;
	return (int)id;
}

/* Gives buffer `id` back to the device. */
static void repost(struct dev *d, u32 id)
{
	publish(d, RXQ, (u16)id);
}

/* ------------------------------------------------------------------------ */
/* Helpers for the scenarios                                                */

static u32 fnv1a(const u8 *p, u32 n)
{
	u32 h = 0x811c9dc5u;

	for (u32 i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x01000193u;
	}
	return h;
}

static void put_hexbytes(const u8 *p, u32 n)
{
	static const char digits[] = "0123456789abcdef";

	for (u32 i = 0; i < n; i++) {
		con_putc(digits[p[i] >> 4]);
		con_putc(digits[p[i] & 0xF]);
	}
}

static void put_mac(const u8 *mac)
{
	for (u32 i = 0; i < 6; i++) {
		if (i)
			con_putc(':');
		put_hexbytes(&mac[i], 1);
	}
}

/*
 * The test frame of `len` bytes at f: broadcast destination, the device's
 * MAC as source, EtherType 0x88b5, "ember-net-test", then byte i = i & 0xff.
 */
static void build_frame(const struct dev *d, u8 *f, u32 len)
{
	memset(f, 0xff, 6);
	memcpy(f + 6, d->mac, 6);
	f[12] = ETHERTYPE_TEST >> 8;
	f[13] = ETHERTYPE_TEST & 0xff;
	memcpy(f + ETH_HLEN, tag, TAG_LEN);
	for (u32 i = FRAME_MIN; i < len; i++)
		f[i] = (u8)(i & 0xff);
}

/* net.len, clamped to FRAME_MIN..FRAME_MAX. */
static u32 frame_len_param(void)
{
	u64 len = param("net.len=", FRAME_DEFAULT);

	if (len < FRAME_MIN)
		len = FRAME_MIN;
	if (len > FRAME_MAX)
		len = FRAME_MAX;
	return (u32)len;
}

/* net.count / net.repeat style parameter: at least 1, at most 1000. */
static u64 count_param(const char *key)
{
	u64 n = param(key, 1);

	if (n < 1)
		n = 1;
	if (n > 1000)
		n = 1000;
	return n;
}

/*
 * The net device selected by net.dev=N (the N-th net device, from 0), or
 * the first one. Prints "net: none" and finishes if there is none.
 */
static struct dev *select_dev(void)
{
	u64 want = param("net.dev=", 0);

	if (want < ndevs)
		return &devs[want];
	con_puts("net: none\n");
	done();
}

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */

static void scenario_info(void)
{
	if (!ndevs)
		con_puts("net: none\n");
	for (u32 i = 0; i < ndevs; i++) {
		struct dev *d = &devs[i];
		net_init(d);
		con_puts("net");
		kv("dev", d->index);
		con_puts(" mac=");
		put_mac(d->mac);
		kv("features_lo", d->feat_lo);
		kv("features_hi", d->feat_hi);
		kv("addr", d->base);
		kv("irq", d->irq);
		kv("link", d->link);
		con_putc('\n');
		dev_reset(d);
	}
}

static void scenario_send(struct dev *d)
{
	u32 len = frame_len_param();
	u64 repeat = count_param("net.repeat=");
	u32 status = 0;

	build_frame(d, tx_buf + VNET_HDR_LEN, len);
	for (u64 i = 0; i < repeat; i++) {
		u32 one = transmit(d, len);
		if (!status)
			status = one;
	}
	con_puts("net-send");
	kv("status", status);
	kv("len", len);
	kv("sum", fnv1a(tx_buf + VNET_HDR_LEN, len));
	if (repeat > 1)
		kv("repeat", repeat);
	con_putc('\n');
}

static void scenario_recv(struct dev *d)
{
	u64 count = count_param("net.count=");

	post_rx_buffers(d);
	con_puts("net-recv: ready\n");
	for (u64 n = 0; n < count; n++) {
		u32 len;
		int id = receive(d, &len);
		if (id < 0) {
			con_puts("net-recv: timeout\n");
			return;
		}
		const u8 *hdr = rx_bufs[id];
		const u8 *f = hdr + VNET_HDR_LEN;
		con_puts("net-recv");
		kv("len", len);
		kv("ethertype", len >= ETH_HLEN ? ((u32)f[12] << 8) | f[13] : 0);
		kv("sum", fnv1a(f, len));
		con_puts(" head=");
		put_hexbytes(f, len < 16 ? len : 16);
		con_puts(" vhdr=");
		put_hexbytes(hdr, VNET_HDR_LEN);
		con_putc('\n');
		repost(d, (u32)id);
	}
}

static void scenario_echo(struct dev *d)
{
	u64 count = count_param("net.count=");

	post_rx_buffers(d);
	con_puts("net-echo: ready\n");
	for (u64 n = 0; n < count; n++) {
		u32 len;
		int id = receive(d, &len);
		if (id < 0) {
			con_puts("net-echo: timeout\n");
			return;
		}
		const u8 *f = rx_bufs[id] + VNET_HDR_LEN;
		u8 *out = tx_buf + VNET_HDR_LEN;
		if (len > FRAME_MAX)
			len = FRAME_MAX;
		memcpy(out, f, len);
		if (len >= 12) {
			memcpy(out, f + 6, 6);
			memcpy(out + 6, f, 6);
		}
		repost(d, (u32)id);
		u32 status = transmit(d, len);
		con_puts("net-echo");
		kv("status", status);
		kv("len", len);
		kv("sum", fnv1a(out, len));
		con_putc('\n');
	}
}

int net_scenario(const char *name)
{
	static const char *const names[] = {
		"net-info", "net-send", "net-recv", "net-echo",
	};
	u32 which = 0;

	while (which < sizeof(names) / sizeof(names[0]) &&
	       !streq(name, names[which]))
		which++;
	if (which == sizeof(names) / sizeof(names[0]))
		return 0;

	discover();
	if (which == 0) {
		scenario_info();
		done();
	}
	struct dev *d = select_dev();
	net_init(d);
	switch (which) {
	case 1:
		scenario_send(d);
		break;
	case 2:
		scenario_recv(d);
		break;
	default:
		scenario_echo(d);
		break;
	}
	done();
}
