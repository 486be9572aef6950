/*
 * Ember test guest: a minimal virtio-vsock driver (virtio 1.x, modern
 * virtio-mmio transport version 2, split virtqueues RX 0 / TX 1 / EVENT 2,
 * polling) and the vsock-* scenarios: one stream connection at a time, to
 * or from the host (CID 2), with credit-based flow control.
 *
 * Devices are discovered from "virtio_mmio.device=<size>@<addr>:<irq>[:<id>]"
 * command-line tokens by virtio.c, as for blk.c; the i-th token is device
 * i. Everything runs with interrupts disabled: the driver notifies the device
 * and polls the used rings with bounded spins. Rings and buffers live in
 * .bss (guest-physical == virtual).
 *
 * Integer code only, short loops, no division: see main.c.
 */
#include "virtio.h"

#define VIRTIO_ID_VSOCK 19

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
#define EVENT_TRANSPORT_RESET 0

#define RXQ 0
#define TXQ 1
#define EVQ 2
#define EVQ_BUFS 2	/* event buffers posted */
#define RX_DATA 512	/* data bytes per RX buffer */
#define BUF_ALLOC 4096	/* receive buffer advertised to the host */
#define MSG_MAX 128	/* vsock.msg bytes */
#define REPLY_MAX 64	/* vsock-connect reply bytes kept */
#define LISTEN_MAX 256	/* vsock-listen bytes kept */
#define TOKEN_CAP 400
#define SPINS_TX 2000000u
#define WAIT_DEFAULT 3000000u
#define LISTEN_WAIT_DEFAULT 10000000u

/* ------------------------------------------------------------------------ */
/* Packets and buffers                                                      */

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

static struct rx_buf rx_bufs[VIRTQ_MAX] __attribute__((aligned(64)));
static u8 ev_bufs[EVQ_BUFS][8] __attribute__((aligned(64)));
static struct vsock_hdr tx_hdr __attribute__((aligned(64)));
static u8 tx_data[LISTEN_MAX] __attribute__((aligned(64)));

/* The last packet received (header and up to RX_DATA data bytes). */
static struct vsock_hdr rx_hdr;
static u8 rx_data[RX_DATA];
static u32 rx_len;

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */

/* The guest CID of the device initialised last. */
static u64 guest_cid;

static void read_cid(const struct virtio_dev *d)
{
	guest_cid = virtio_config_u64(d, 0);
}

static const u16 queue_sizes[] = { VIRTQ_MAX, VIRTQ_MAX, 4 };

/* RX and TX queues of up to 8 entries, EVENT up to 4, each at least 2;
 * VERSION_1 only. */
static const struct virtio_driver vsock_driver = {
	.name = "vsock",
	.device_id = VIRTIO_ID_VSOCK,
	.every_token = 1,
	.features = 0,
	.required = 0,
	.nqueues = 3,
	.qsize = queue_sizes,
	.qmin = 2,
	.read_config = read_cid,
};

/* Initialises d, then posts every RX buffer and EVQ_BUFS event buffers. */
static void vsock_init(struct virtio_dev *d)
{
	virtio_init(d);
	for (u16 i = 0; i < virtio_rings[RXQ].size; i++)
		virtq_post(RXQ, i, &rx_bufs[i], sizeof(rx_bufs[i]));
	virtio_notify(d, RXQ);
	for (u16 i = 0; i < EVQ_BUFS && i < virtio_rings[EVQ].size; i++)
		virtq_post(EVQ, i, &ev_bufs[i], sizeof(ev_bufs[i]));
	virtio_notify(d, EVQ);
}

/* Sends tx_hdr (and tx_data when tx_hdr.len > 0), waiting until it is used. */
static void tx_send(struct virtio_dev *d)
{
	virtq_desc(TXQ, 0, &tx_hdr, sizeof(tx_hdr),
		   tx_hdr.len ? VIRTQ_DESC_F_NEXT : 0, 1);
	virtq_desc(TXQ, 1, tx_data, tx_hdr.len, 0, 0);
	if (!virtq_submit(d, TXQ, 0, SPINS_TX)) {
		con_puts("vsock: tx-timeout\n");
		done();
	}
}

/*
 * Waits (at most *budget polls, decremented) for an RX packet and copies it
 * to rx_hdr / rx_data / rx_len, then gives the buffer back to the device.
 * Returns 0 on timeout. Packets not from the host to this guest's CID are
 * skipped.
 */
static int rx_poll(struct virtio_dev *d, u64 *budget)
{
	u32 id, len;

	while (virtq_wait_used(d, RXQ, budget, &id, &len)) {
		id &= (u32)virtio_rings[RXQ].size - 1;
		int ok = len >= sizeof(struct vsock_hdr);
		if (ok) {
			memcpy(&rx_hdr, &rx_bufs[id].hdr, sizeof(rx_hdr));
			rx_len = rx_hdr.len;
			if (rx_len > RX_DATA || rx_len > len - sizeof(struct vsock_hdr))
				rx_len = 0;
			memcpy(rx_data, rx_bufs[id].data, rx_len);
			ok = rx_hdr.src_cid == HOST_CID && rx_hdr.dst_cid == guest_cid &&
			     rx_hdr.type == TYPE_STREAM;
		}
		virtq_publish(d, RXQ, (u16)id);
		if (ok)
			return 1;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* One connection                                                           */

struct conn {
	struct virtio_dev *d;
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

static void send_raw(struct virtio_dev *d, u32 src_port, u32 dst_port, u16 op, u32 flags,
		     u32 buf_alloc, u32 fwd_cnt, u32 len)
{
	tx_hdr.src_cid = guest_cid;
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
static void refuse_rx(struct virtio_dev *d)
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

/*
 * Answers the host's REQUEST for `port` on c (which must be closed): the
 * connection is set up afresh and the RESPONSE sent.
 */
static void conn_accept(struct conn *c, u32 port)
{
	struct virtio_dev *d = c->d;

	memset(c, 0, sizeof(*c));
	c->d = d;
	c->local_port = port;
	c->peer_port = rx_hdr.src_port;
	c->peer_buf_alloc = rx_hdr.buf_alloc;
	c->peer_fwd_cnt = rx_hdr.fwd_cnt;
	conn_send(c, OP_RESPONSE, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* Helpers for the scenarios                                                */

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
		if (p[0] == '%' && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0) {
			out[n] = (u8)((hi << 4) | lo);
			p += 3;
		} else {
			out[n] = (u8)*p++;
		}
	}
	return n;
}

static u32 port_param(void)
{
	return (u32)param("vsock.port=", 1234);
}

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */

/* vsock-info, for every vsock device (see virtio_each). */
static void info_line(struct virtio_dev *d, void *arg)
{
	(void)arg;
	vsock_init(d);
	con_puts("vsock");
	kv("dev", d->index);
	kv("cid", guest_cid);
	con_putc('\n');
}

static void scenario_connect(struct virtio_dev *d)
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

static void scenario_listen(struct virtio_dev *d)
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
	conn_accept(&c, port);
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

/* Prints an event the device put on the event queue, if there is one, and
 * gives its buffer back. Returns 1 for a transport reset. */
static int event_poll(struct virtio_dev *d)
{
	u64 one_poll = 1;
	u32 id, len;

	if (!virtq_wait_used(d, EVQ, &one_poll, &id, &len))
		return 0;
	id &= (u32)virtio_rings[EVQ].size - 1;
	u32 event = *(volatile u32 *)ev_bufs[id];
	con_puts("vsock-serve");
	kv("event", event);
	con_putc('\n');
	virtq_publish(d, EVQ, (u16)id);
	return event == EVENT_TRANSPORT_RESET;
}

/*
 * vsock-serve, for snapshot tests: forever accepts one host connection at a
 * time on vsock.port, echoes each data packet upper-cased and prints every
 * event-queue event; a transport reset drops the connection.
 */
static void __attribute__((noreturn)) scenario_serve(struct virtio_dev *d)
{
	static u8 echo[RX_DATA];
	u32 port = port_param();
	u64 linger = param("vsock.linger=", WAIT_DEFAULT);
	struct conn c;
	int open = 0;

	memset(&c, 0, sizeof(c));
	c.d = d;
	con_puts("vsock-serve: ready");
	kv("port", port);
	kv("used", (u64)&virtio_rings[RXQ].vq->used);
	kv("bufs", (u64)rx_bufs);
	kv("bufs_len", (u64)virtio_rings[RXQ].size * sizeof(rx_bufs[0]));
	con_putc('\n');
	for (;;) {
		u64 one_poll = 1;

		if (event_poll(d))
			open = 0;
		if (!open) {
			if (!rx_poll(d, &one_poll))
				continue;
			if (rx_hdr.op != OP_REQUEST || rx_hdr.dst_port != port) {
				refuse_rx(d);
				continue;
			}
			conn_accept(&c, port);
			open = 1;
			con_puts("vsock-serve accepted");
			kv("peer", c.peer_port);
			con_putc('\n');
			continue;
		}
		u16 op = conn_wait(&c, &one_poll);
		if (op == OP_RW && rx_len) {
			con_puts("vsock-serve received=");
			put_printable(rx_data, rx_len);
			con_putc('\n');
			u32 n = rx_len;
			for (u32 i = 0; i < n; i++)
				echo[i] = rx_data[i] >= 'a' && rx_data[i] <= 'z'
						  ? (u8)(rx_data[i] - 32)
						  : rx_data[i];
			u64 budget = linger;
			conn_write(&c, echo, n, &budget);
		}
		if (c.reset || c.peer_shut == SHUT_BOTH) {
			conn_close(&c, "vsock-serve", linger);
			open = 0;
		}
	}
}

int vsock_scenario(const char *name)
{
	static const char *const names[] = {
		"vsock-info",
		"vsock-connect",
		"vsock-listen",
		"vsock-serve",
	};
	int which = name_index(name, names, sizeof(names) / sizeof(names[0]));

	if (which < 0)
		return 0;

	virtio_discover(&vsock_driver);
	if (which == 0) {
		virtio_each(info_line, 0);
		done();
	}
	struct virtio_dev *d = virtio_select("vsock.dev=");
	vsock_init(d);
	if (which == 1)
		scenario_connect(d);
	else if (which == 2)
		scenario_listen(d);
	else
		scenario_serve(d);
	done();
}
