/*
 * Ember test guest: a minimal virtio-vsock driver (virtio 1.x, modern
 * virtio-mmio transport version 2, split virtqueues RX 0 / TX 1 / EVENT 2,
 * polling) and the vsock-* scenarios: one stream connection at a time, to
 * or from the host (CID 2), with credit-based flow control.
 *
 * Devices are discovered from "virtio_mmio.device=<size>@<addr>:<irq>[:<id>]"
 * command-line tokens like blk.c does; the i-th token is device i.
 * Everything runs with interrupts disabled: the driver notifies the device
 * and polls the used rings with bounded spins. Rings and buffers live in
 * .bss (guest-physical == virtual).
 *
 * Integer code only, short loops, no division: see main.c.
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
#define VIRTIO_ID_VSOCK 19

#define ST_ACKNOWLEDGE 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u
#define ST_NEEDS_RESET 64u
#define ST_FAILED 128u
#define F_HI_VERSION_1 (1u << 0) /* bit 32 */

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

/* virtio-vsock (virtio 1.x, section 5.10). */
#define HOST_CID 2
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUT_RCV 1u
#define SHUT_SEND 2u
#define SHUT_BOTH 3u

#define RXQ 0
#define TXQ 1
#define EVQ 2
#define QSZ 8		/* RX and TX queue size */
#define EVQ_BUFS 2	/* event buffers posted */
#define RX_DATA 512	/* data bytes per RX buffer */
#define BUF_ALLOC 4096	/* receive buffer advertised to the host */
#define MSG_MAX 128	/* vsock.msg bytes */
#define REPLY_MAX 64	/* vsock-connect reply bytes kept */
#define LISTEN_MAX 256	/* vsock-listen bytes kept */
#define MAX_DEVS 32
#define TOKEN_CAP 400
#define SPINS_TX 2000000u
#define WAIT_DEFAULT 3000000u
#define LISTEN_WAIT_DEFAULT 10000000u

#define barrier() __asm__ volatile("" : : : "memory")

/* ------------------------------------------------------------------------ */
/* Virtqueues and buffers                                                   */

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[QSZ];
	u16 used_event;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[QSZ];
	u16 avail_event;
};

struct vq {
	struct virtq_desc desc[QSZ];
	struct virtq_avail avail __attribute__((aligned(64)));
	struct virtq_used used __attribute__((aligned(64)));
} __attribute__((aligned(4096)));

/* The driver's view of one queue. */
struct ring {
	struct vq *vq;
	u16 size;
	u16 avail_idx;
	u16 used_idx;
};

struct vsock_hdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

struct rx_buf {
	struct vsock_hdr hdr;
	u8 data[RX_DATA];
} __attribute__((packed));

static struct vq vqs[3];
static struct ring rings[3];
static struct rx_buf rx_bufs[QSZ] __attribute__((aligned(64)));
static u8 ev_bufs[EVQ_BUFS][8] __attribute__((aligned(64)));
static struct vsock_hdr tx_hdr __attribute__((aligned(64)));
static u8 tx_data[LISTEN_MAX] __attribute__((aligned(64)));

/* The last packet received (header and up to RX_DATA data bytes). */
static struct vsock_hdr rx_hdr;
static u8 rx_data[RX_DATA];
static u32 rx_len;

/* ------------------------------------------------------------------------ */
/* Devices                                                                  */

struct dev {
	u32 index;
	int is_vsock;
	u64 size;
	u64 base;
	u32 irq;
	u64 cid;
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

/* parse_num plus an optional K/M/G suffix (like Linux's memparse). */
static int parse_size(const char **s, u64 *out)
{
	if (!parse_num(s, out))
		return 0;
	int shift = 0;
	if (**s == 'K' || **s == 'k')
		shift = 10;
	else if (**s == 'M' || **s == 'm')
		shift = 20;
	else if (**s == 'G' || **s == 'g')
		shift = 30;
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

/* Collects the virtio_mmio.device= tokens and probes the usable ones. */
static void discover(void)
{
	char val[80];

	ndevs = 0;
	while (ndevs < MAX_DEVS &&
	       cmdline_token("virtio_mmio.device=", ndevs, val, sizeof(val))) {
		struct dev *d = &devs[ndevs];
		memset(d, 0, sizeof(*d));
		d->index = ndevs++;
		if (!parse_device(val, d) || (d->base & 3) ||
		    d->base + 0x200 > 0x100000000ul || d->base < 0x100000ul)
			continue;
		d->is_vsock = mmio_rd(d, VM_MAGIC) == VIRTIO_MAGIC &&
			      mmio_rd(d, VM_DEVICE_ID) == VIRTIO_ID_VSOCK;
	}
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */

static void __attribute__((noreturn)) init_failed(struct dev *d, const char *step)
{
	u32 status = mmio_rd(d, VM_STATUS);

	con_puts("vsock: init-failed");
	kv("dev", d->index);
	con_puts(" step=");
	con_puts(step);
	kv("status", status);
	con_putc('\n');
	mmio_wr(d, VM_STATUS, status | ST_FAILED);
	done();
}

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

static void ring_publish(struct dev *d, u32 q, u16 head)
{
	struct ring *r = &rings[q];

	r->vq->avail.ring[r->avail_idx & (r->size - 1)] = head;
	barrier();
	r->avail_idx++;
	*(volatile u16 *)&r->vq->avail.idx = r->avail_idx;
	barrier();
	mmio_wr(d, VM_QUEUE_NOTIFY, q);
}

/* Programs queue q with `want` entries (at most QueueNumMax, power of 2). */
static void setup_queue(struct dev *d, u32 q, u16 want)
{
	struct ring *r = &rings[q];
	struct vq *vq = &vqs[q];

	mmio_wr(d, VM_QUEUE_SEL, q);
	if (mmio_rd(d, VM_QUEUE_READY) != 0)
		init_failed(d, "queue-busy");
	u32 max = mmio_rd(d, VM_QUEUE_NUM_MAX);
	u32 size = want;
	while (size > max)
		size >>= 1;
	if (size < 2)
		init_failed(d, "queue-max");
	memset(vq, 0, sizeof(*vq));
	r->vq = vq;
	r->size = (u16)size;
	r->avail_idx = 0;
	r->used_idx = 0;
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

/*
 * Full virtio 1.x initialisation: reset, ACKNOWLEDGE, DRIVER, VERSION_1
 * only, FEATURES_OK, the three queues, the guest CID, DRIVER_OK; then every
 * RX buffer and EVQ_BUFS event buffers are posted.
 */
static void vsock_init(struct dev *d)
{
	if (mmio_rd(d, VM_MAGIC) != VIRTIO_MAGIC)
		init_failed(d, "magic");
	if (mmio_rd(d, VM_VERSION) != 2)
		init_failed(d, "version");
	if (mmio_rd(d, VM_DEVICE_ID) != VIRTIO_ID_VSOCK)
		init_failed(d, "device-id");
	if (!dev_reset(d))
		init_failed(d, "reset");
	set_status(d, ST_ACKNOWLEDGE);
	set_status(d, ST_DRIVER);
	mmio_wr(d, VM_DEVICE_FEATURES_SEL, 1);
	if (!(mmio_rd(d, VM_DEVICE_FEATURES) & F_HI_VERSION_1))
		init_failed(d, "features");
	mmio_wr(d, VM_DRIVER_FEATURES_SEL, 0);
	mmio_wr(d, VM_DRIVER_FEATURES, 0);
	mmio_wr(d, VM_DRIVER_FEATURES_SEL, 1);
	mmio_wr(d, VM_DRIVER_FEATURES, F_HI_VERSION_1);
	set_status(d, ST_FEATURES_OK);
	if (!(mmio_rd(d, VM_STATUS) & ST_FEATURES_OK))
		init_failed(d, "features-ok");
	setup_queue(d, RXQ, QSZ);
	setup_queue(d, TXQ, QSZ);
	setup_queue(d, EVQ, 4);
	d->cid = config_u64(d, 0);
	set_status(d, ST_DRIVER_OK);
	u32 st = mmio_rd(d, VM_STATUS);
	if ((st & (ST_NEEDS_RESET | ST_FAILED)) || !(st & ST_DRIVER_OK))
		init_failed(d, "driver-ok");

	struct ring *rx = &rings[RXQ];
	for (u16 i = 0; i < rx->size; i++) {
		rx->vq->desc[i].addr = (u64)&rx_bufs[i];
		rx->vq->desc[i].len = sizeof(rx_bufs[i]);
		rx->vq->desc[i].flags = VIRTQ_DESC_F_WRITE;
		rx->vq->desc[i].next = 0;
		ring_publish(d, RXQ, i);
	}
	struct ring *ev = &rings[EVQ];
	for (u16 i = 0; i < EVQ_BUFS && i < ev->size; i++) {
		ev->vq->desc[i].addr = (u64)&ev_bufs[i];
		ev->vq->desc[i].len = sizeof(ev_bufs[i]);
		ev->vq->desc[i].flags = VIRTQ_DESC_F_WRITE;
		ev->vq->desc[i].next = 0;
		ring_publish(d, EVQ, i);
	}
}

static void ack_interrupt(struct dev *d)
{
	u32 isr = mmio_rd(d, VM_INTERRUPT_STATUS);

	if (isr)
		mmio_wr(d, VM_INTERRUPT_ACK, isr);
}

/* Sends tx_hdr (and tx_data when tx_hdr.len > 0), waiting until it is used. */
static void tx_send(struct dev *d)
{
	struct ring *r = &rings[TXQ];
	struct virtq_desc *desc = r->vq->desc;

	desc[0].addr = (u64)&tx_hdr;
	desc[0].len = sizeof(tx_hdr);
	desc[0].flags = tx_hdr.len ? VIRTQ_DESC_F_NEXT : 0;
	desc[0].next = 1;
	desc[1].addr = (u64)tx_data;
	desc[1].len = tx_hdr.len;
	desc[1].flags = 0;
	desc[1].next = 0;
	ring_publish(d, TXQ, 0);
	u32 i;
	for (i = 0; i < SPINS_TX; i++) {
		if (*(volatile u16 *)&r->vq->used.idx != r->used_idx)
			break;
	}
	if (i == SPINS_TX) {
		con_puts("vsock: tx-timeout\n");
		done();
	}
	barrier();
	r->used_idx++;
	ack_interrupt(d);
}

/*
 * Waits (at most *budget polls, decremented) for an RX packet and copies it
 * to rx_hdr / rx_data / rx_len, then gives the buffer back to the device.
 * Returns 0 on timeout. Packets not from the host to this guest's CID are
 * skipped.
 */
static int rx_poll(struct dev *d, u64 *budget)
{
	struct ring *r = &rings[RXQ];

	for (;;) {
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
		struct virtq_used_elem *e = &r->vq->used.ring[r->used_idx & (r->size - 1)];
		u16 id = (u16)(e->id & (r->size - 1));
		u32 len = e->len;
		r->used_idx++;
		int ok = len >= sizeof(struct vsock_hdr);
		if (ok) {
			memcpy(&rx_hdr, &rx_bufs[id].hdr, sizeof(rx_hdr));
			rx_len = rx_hdr.len;
			if (rx_len > RX_DATA || rx_len > len - sizeof(struct vsock_hdr))
				rx_len = 0;
			memcpy(rx_data, rx_bufs[id].data, rx_len);
			ok = rx_hdr.src_cid == HOST_CID && rx_hdr.dst_cid == d->cid &&
			     rx_hdr.type == TYPE_STREAM;
		}
		ring_publish(d, RXQ, id);
		ack_interrupt(d);
		if (ok)
			return 1;
	}
}

/* ------------------------------------------------------------------------ */
/* One connection                                                           */

struct conn {
	struct dev *d;
	u32 local_port;		/* guest side */
	u32 peer_port;		/* host side */
	u32 peer_buf_alloc;
	u32 peer_fwd_cnt;
	u32 tx_cnt;		/* data bytes sent */
	u32 fwd_cnt;		/* data bytes received and consumed */
	u32 fwd_sent;		/* fwd_cnt as last told to the host */
	u32 peer_shut;		/* SHUTDOWN flags received */
	int reset;		/* RST received */
};

static void send_raw(struct dev *d, u32 src_port, u32 dst_port, u16 op, u32 flags,
		     u32 buf_alloc, u32 fwd_cnt, u32 len)
{
	tx_hdr.src_cid = d->cid;
	tx_hdr.dst_cid = HOST_CID;
	tx_hdr.src_port = src_port;
	tx_hdr.dst_port = dst_port;
	tx_hdr.len = len;
	tx_hdr.type = TYPE_STREAM;
	tx_hdr.op = op;
	tx_hdr.flags = flags;
	tx_hdr.buf_alloc = buf_alloc;
	tx_hdr.fwd_cnt = fwd_cnt;
	tx_send(d);
}

/* Sends a packet on c (data, if any, already in tx_data). */
static void conn_send(struct conn *c, u16 op, u32 flags, u32 len)
{
	send_raw(c->d, c->local_port, c->peer_port, op, flags, BUF_ALLOC, c->fwd_cnt, len);
	c->fwd_sent = c->fwd_cnt;
}

/* Answers a packet that belongs to no connection with an RST. */
static void refuse_rx(struct dev *d)
{
	if (rx_hdr.op != OP_RST)
		send_raw(d, rx_hdr.dst_port, rx_hdr.src_port, OP_RST, 0, 0, 0, 0);
}

/*
 * Waits for the next packet of c, within *budget polls. Credit requests are
 * answered here; other connections' packets get an RST. Returns the op
 * (credit updates included, so senders can re-check their credit), 0 on
 * timeout. RW data is in rx_data / rx_len and counted as consumed.
 */
static u16 conn_wait(struct conn *c, u64 *budget)
{
	while (rx_poll(c->d, budget)) {
		if (rx_hdr.dst_port != c->local_port || rx_hdr.src_port != c->peer_port) {
			refuse_rx(c->d);
			continue;
		}
		c->peer_buf_alloc = rx_hdr.buf_alloc;
		c->peer_fwd_cnt = rx_hdr.fwd_cnt;
		switch (rx_hdr.op) {
		case OP_CREDIT_REQUEST:
			conn_send(c, OP_CREDIT_UPDATE, 0, 0);
			continue;
		case OP_RST:
			c->reset = 1;
			break;
		case OP_SHUTDOWN:
			c->peer_shut |= rx_hdr.flags & SHUT_BOTH;
			break;
		case OP_RW:
			c->fwd_cnt += rx_len;
			/* Data is consumed at once: tell the host about the room. */
			if (c->fwd_cnt - c->fwd_sent >= BUF_ALLOC / 2)
				conn_send(c, OP_CREDIT_UPDATE, 0, 0);
			break;
		default:
			break;
		}
		return rx_hdr.op;
	}
	return 0;
}

/* Sends buf[0..len) as RW packets within the host's credit. Returns 0 if
 * the connection ended or no credit came in time. */
static int conn_write(struct conn *c, const u8 *buf, u32 len, u64 *budget)
{
	while (len) {
		u32 credit = c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt);
		if (c->tx_cnt - c->peer_fwd_cnt > c->peer_buf_alloc)
			credit = 0;
		if (credit == 0) {
			conn_send(c, OP_CREDIT_REQUEST, 0, 0);
			u16 op = conn_wait(c, budget);
			if (op == 0 || c->reset || (c->peer_shut & SHUT_RCV))
				return 0;
			continue;
		}
		u32 n = len < credit ? len : credit;
		if (n > LISTEN_MAX)
			n = LISTEN_MAX;
		memcpy(tx_data, buf, n);
		conn_send(c, OP_RW, 0, n);
		c->tx_cnt += n;
		buf += n;
		len -= n;
	}
	return 1;
}

/*
 * Ends c: if the host already closed (RST, or SHUTDOWN with both flags) the
 * guest answers with an RST; otherwise it sends SHUTDOWN(both) and waits for
 * the host's RST (sending its own if none comes). Prints "<who> closed=host"
 * or "closed=guest".
 */
static void conn_close(struct conn *c, const char *who, u64 wait)
{
	const char *by = "guest";

	if (c->reset) {
		by = "host";
	} else if (c->peer_shut == SHUT_BOTH) {
		conn_send(c, OP_RST, 0, 0);
		by = "host";
	} else {
		conn_send(c, OP_SHUTDOWN, SHUT_BOTH, 0);
		u64 budget = wait;
		while (!c->reset && conn_wait(c, &budget))
			;
		if (!c->reset)
			conn_send(c, OP_RST, 0, 0);
	}
	con_puts(who);
	con_puts(" closed=");
	con_puts(by);
	con_putc('\n');
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

/* Bytes 0x21..0x7e as they are, anything else as '?'. */
static void put_printable(const u8 *p, u32 n)
{
	for (u32 i = 0; i < n; i++)
		con_putc(p[i] > 0x20 && p[i] < 0x7F ? (char)p[i] : '?');
}

static int hexdigit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * The vsock.msg bytes: the token's value with %XX escapes decoded (the
 * command line cannot hold spaces inside a token), at most MSG_MAX bytes;
 * "hello from the guest\n" without the token.
 */
static u32 message(u8 *out)
{
	static const char def[] = "hello from the guest\n";
	char val[TOKEN_CAP];
	u32 n = 0;

	if (!cmdline_token("vsock.msg=", 0, val, sizeof(val))) {
		for (; def[n]; n++)
			out[n] = (u8)def[n];
		return n;
	}
	for (const char *p = val; *p && n < MSG_MAX; n++) {
		int hi, lo;
		if (p[0] == '%' && (hi = hexdigit(p[1])) >= 0 && (lo = hexdigit(p[2])) >= 0) {
			out[n] = (u8)((hi << 4) | lo);
			p += 3;
		} else {
			out[n] = (u8)*p++;
		}
	}
	return n;
}

/* The device selected by vsock.dev=N, or the first vsock device. */
static struct dev *select_dev(void)
{
	u64 want = param("vsock.dev=", ~0ul);

	for (u32 i = 0; i < ndevs; i++) {
		if (devs[i].is_vsock && (want == ~0ul || want == i))
			return &devs[i];
	}
	con_puts("vsock: none\n");
	done();
}

static u32 port_param(void)
{
	return (u32)param("vsock.port=", 1234);
}

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */

static void scenario_info(void)
{
	int any = 0;

	for (u32 i = 0; i < ndevs; i++) {
		struct dev *d = &devs[i];
		if (!d->is_vsock)
			continue;
		any = 1;
		vsock_init(d);
		con_puts("vsock");
		kv("dev", d->index);
		kv("cid", d->cid);
		con_putc('\n');
		dev_reset(d);
	}
	if (!any)
		con_puts("vsock: none\n");
}

static void scenario_connect(struct dev *d)
{
	static u8 msg[MSG_MAX];
	static u8 reply[REPLY_MAX];
	u64 wait = param("vsock.wait=", WAIT_DEFAULT);
	u64 budget = wait;
	struct conn c;
	u32 n = 0;

	memset(&c, 0, sizeof(c));
	c.d = d;
	c.local_port = (u32)param("vsock.src=", 49152);
	c.peer_port = port_param();
	conn_send(&c, OP_REQUEST, 0, 0);
	u16 op;
	do {
		op = conn_wait(&c, &budget);
	} while (op == OP_CREDIT_UPDATE);
	if (op != OP_RESPONSE) {
		con_puts("vsock-connect status=");
		con_puts(op == 0 ? "timeout" : "rst");
		con_putc('\n');
		if (op != 0 && op != OP_RST)
			conn_send(&c, OP_RST, 0, 0);
		return;
	}
	budget = wait;
	if (!conn_write(&c, msg, message(msg), &budget)) {
		con_puts("vsock-connect status=rst\n");
		conn_close(&c, "vsock-connect", wait);
		return;
	}
	/* The reply: up to a newline, REPLY_MAX bytes, or the host's close. */
	budget = wait;
	while (n < REPLY_MAX && !c.reset && !(c.peer_shut & SHUT_SEND)) {
		op = conn_wait(&c, &budget);
		if (op == 0)
			break;
		if (op != OP_RW)
			continue;
		int eol = 0;
		for (u32 i = 0; i < rx_len && n < REPLY_MAX; i++) {
			reply[n++] = rx_data[i];
			if (rx_data[i] == '\n') {
				eol = 1;
				break;
			}
		}
		if (eol)
			break;
	}
	con_puts("vsock-connect status=");
	if (n) {
		con_puts("ok reply=");
		put_printable(reply, n);
	} else {
		con_puts(c.reset ? "rst" : op == 0 ? "timeout" : "ok reply=");
	}
	con_putc('\n');
	conn_close(&c, "vsock-connect", wait);
}

static void scenario_listen(struct dev *d)
{
	static u8 got[LISTEN_MAX];
	u32 port = port_param();
	u64 want = param("vsock.len=", 16);
	u64 wait = param("vsock.wait=", LISTEN_WAIT_DEFAULT);
	u64 linger = param("vsock.linger=", WAIT_DEFAULT);
	u64 budget = wait;
	struct conn c;
	u32 n = 0;

	if (want < 1)
		want = 1;
	if (want > LISTEN_MAX)
		want = LISTEN_MAX;
	con_puts("vsock-listen: ready");
	kv("port", port);
	con_putc('\n');

	memset(&c, 0, sizeof(c));
	c.d = d;
	for (;;) {
		if (!rx_poll(d, &budget)) {
			con_puts("vsock-listen: timeout\n");
			return;
		}
		if (rx_hdr.op == OP_REQUEST && rx_hdr.dst_port == port)
			break;
		refuse_rx(d);
	}
	c.local_port = port;
	c.peer_port = rx_hdr.src_port;
	c.peer_buf_alloc = rx_hdr.buf_alloc;
	c.peer_fwd_cnt = rx_hdr.fwd_cnt;
	conn_send(&c, OP_RESPONSE, 0, 0);
	con_puts("vsock-listen: accepted");
	kv("peer", c.peer_port);
	con_putc('\n');

	budget = linger;
	while (n < want && !c.reset && !(c.peer_shut & SHUT_SEND)) {
		u16 op = conn_wait(&c, &budget);
		if (op == 0)
			break;
		for (u32 i = 0; op == OP_RW && i < rx_len && n < want; i++)
			got[n++] = rx_data[i];
	}
	con_puts("vsock-listen received=");
	put_printable(got, n);
	kv("sum", fnv1a(got, n));
	con_putc('\n');

	/* Echo, upper-cased, unless the host can no longer receive. */
	if (n && !c.reset && !(c.peer_shut & SHUT_RCV)) {
		for (u32 i = 0; i < n; i++)
			got[i] = got[i] >= 'a' && got[i] <= 'z' ? (u8)(got[i] - 32) : got[i];
		budget = linger;
		conn_write(&c, got, n, &budget);
	}
	/* Give the host a chance to close first. */
	budget = linger;
	while (!c.reset && c.peer_shut != SHUT_BOTH && conn_wait(&c, &budget))
		;
	conn_close(&c, "vsock-listen", linger);
}

int vsock_scenario(const char *name)
{
	static const char *const names[] = {
		"vsock-info",
		"vsock-connect",
		"vsock-listen",
	};
	u32 which = 0;

	while (which < sizeof(names) / sizeof(names[0]) && !streq(name, names[which]))
		which++;
	if (which == sizeof(names) / sizeof(names[0]))
		return 0;

	discover();
	if (which == 0) {
		scenario_info();
		done();
	}
	struct dev *d = select_dev();
	vsock_init(d);
	if (which == 1)
		scenario_connect(d);
	else
		scenario_listen(d);
	done();
}
