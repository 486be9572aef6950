/*
 * Ember test guest: a minimal virtio-net driver (virtio 1.x, modern
 * virtio-mmio transport version 2, receive queue 0 and transmit queue 1,
 * split virtqueues, polling) and the net-* scenarios.
 *
 * Devices are discovered from "virtio_mmio.device=<size>@<addr>:<irq>[:<id>]"
 * command-line tokens by virtio.c, as for blk.c; net devices (DeviceID 1)
 * are numbered 0, 1, ... in command-line order, and "net.dev=N" picks the
 * N-th. The driver accepts VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC and (if
 * offered) VIRTIO_NET_F_STATUS: no offloads, no mergeable buffers, so every
 * frame travels with a 12-byte virtio_net_hdr_v1 in front of it, in one
 * buffer. net.h exposes the driver to mmds.c (the mmds-http scenario). Everything runs with interrupts disabled: the driver notifies the
 * device and polls the used rings with bounded spins. Rings and buffers
 * live in .bss (guest-physical == virtual).
 *
 * Integer code only, short loops: see main.c.
 */
#include "virtio.h"
#include "net.h"

#define VIRTIO_ID_NET 1

/* Feature bits (low word). */
#define F_NET_MAC (1u << 5)
#define F_NET_STATUS (1u << 16)

/* Configuration space. */
#define CFG_MAC 0
#define CFG_STATUS 6
#define NET_S_LINK_UP 1

#define RXQ 0
#define TXQ 1

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

static const char tag[TAG_LEN + 1] = "ember-net-test";

static u8 rx_bufs[VIRTQ_MAX][RX_BUF_SIZE] __attribute__((aligned(4096)));
static u8 tx_buf[VNET_HDR_LEN + FRAME_MAX] __attribute__((aligned(64)));

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */

/* The configuration of the device initialised last. */
static u8 mac[6];
static u32 link;

static inline u8 mmio_rd8(const struct virtio_dev *d, u32 off)
{
	return *(const volatile u8 *)(d->base + off);
}

static inline u16 mmio_rd16(const struct virtio_dev *d, u32 off)
{
	return *(const volatile u16 *)(d->base + off);
}

/* The MAC (byte accesses) and, if offered, the link status. */
static void read_mac_link(const struct virtio_dev *d, void *arg)
{
	(void)arg;
	for (u32 i = 0; i < 6; i++)
		mac[i] = mmio_rd8(d, VM_CONFIG + CFG_MAC + i);
	link = NET_S_LINK_UP;
	if (d->feat_lo & F_NET_STATUS)
		link = mmio_rd16(d, VM_CONFIG + CFG_STATUS) & NET_S_LINK_UP;
}

static void read_config(const struct virtio_dev *d)
{
	virtio_config_read(d, read_mac_link, 0);
}

static const u16 queue_sizes[] = { VIRTQ_MAX, VIRTQ_MAX };

/* Receive and transmit queues of up to 8 entries, at least 2; MAC needed. */
static const struct virtio_driver net_driver = {
	.name = "net",
	.device_id = VIRTIO_ID_NET,
	.every_token = 0,
	.features = F_NET_MAC | F_NET_STATUS,
	.required = F_NET_MAC,
	.nqueues = 2,
	.qsize = queue_sizes,
	.qmin = 2,
	.read_config = read_config,
};

u32 net_transmit(struct virtio_dev *d, u32 len)
{
	memset(tx_buf, 0, VNET_HDR_LEN);
	virtq_desc(TXQ, 0, tx_buf, VNET_HDR_LEN + len, 0, 0);
	return virtq_submit(d, TXQ, 0, TX_SPINS) ? 0 : 1;
}

void net_repost(struct virtio_dev *d, u32 id)
{
	virtq_publish(d, RXQ, (u16)id);
}

u8 *net_tx_frame(void)
{
	return tx_buf + VNET_HDR_LEN;
}

const u8 *net_mac(void)
{
	return mac;
}

void net_post_rx(struct virtio_dev *d)
{
	for (u16 i = 0; i < virtio_rings[RXQ].size; i++)
		virtq_post(RXQ, i, rx_bufs[i], RX_BUF_SIZE);
	virtio_notify(d, RXQ);
}

const u8 *net_receive(struct virtio_dev *d, u64 *budget, u32 *len, u32 *id)
{
	u32 used;

	if (!virtq_wait_used(d, RXQ, budget, id, &used) ||
	    *id >= virtio_rings[RXQ].size)
		return 0;
	if (used > RX_BUF_SIZE)
		used = RX_BUF_SIZE;
	*len = used > VNET_HDR_LEN ? used - VNET_HDR_LEN : 0;
	return rx_bufs[*id] + VNET_HDR_LEN;
}

/* ------------------------------------------------------------------------ */
/* Helpers for the scenarios                                                */

static void put_mac(const u8 *m)
{
	for (u32 i = 0; i < 6; i++) {
		if (i)
			con_putc(':');
		put_hexbytes(&m[i], 1);
	}
}

/*
 * The test frame of `len` bytes at f: broadcast destination, the device's
 * MAC as source, EtherType 0x88b5, "ember-net-test", then byte i = i & 0xff.
 */
static void build_frame(u8 *f, u32 len)
{
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
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

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */

/* net-info, for every net device (see virtio_each). */
static void info_line(struct virtio_dev *d, void *arg)
{
	(void)arg;
	virtio_init(d);
	con_puts("net");
	kv("dev", d->index);
	con_puts(" mac=");
	put_mac(mac);
	kv("features_lo", d->feat_lo);
	kv("features_hi", d->feat_hi);
	kv("addr", d->base);
	kv("irq", d->irq);
	kv("link", link);
	con_putc('\n');
}

static void scenario_send(struct virtio_dev *d)
{
	u32 len = frame_len_param();
	u64 repeat = count_param("net.repeat=");
	u32 status = 0;

	build_frame(tx_buf + VNET_HDR_LEN, len);
	for (u64 i = 0; i < repeat; i++) {
		u32 one = net_transmit(d, len);
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

/* A scenario that handles received frames: its two status lines, what it
 * does once the buffers are posted (before, may be 0) and with each frame
 * (fn gives the buffer back). */
struct rx_scenario {
	const char *ready;
	const char *timeout;
	void (*before)(struct virtio_dev *d);
	void (*fn)(struct virtio_dev *d, u32 id, u32 len);
};

/* Room for one net.frame= value: 120 frame bytes as hex. */
#define INJECT_HEX_CAP 242

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes the hex string s into out; returns the byte count, 0 if s is not
 * an even number of hex digits. */
static u32 parse_hex(const char *s, u8 *out, u32 cap)
{
	u32 n = 0;

	for (; s[0] && n < cap; s += 2, n++) {
		int hi = hex_digit(s[0]);
		int lo = hi < 0 ? -1 : hex_digit(s[1]);

		if (lo < 0)
			return 0;
		out[n] = (u8)(hi << 4 | lo);
	}
	return n;
}

/* net-inject: sends each net.frame=<hex> frame, in command-line order. */
static void inject_frames(struct virtio_dev *d)
{
	char hex[INJECT_HEX_CAP];

	for (u32 n = 0; cmdline_token("net.frame=", n, hex, sizeof(hex)); n++) {
		u32 len = parse_hex(hex, tx_buf + VNET_HDR_LEN, FRAME_MAX);
		u32 status = len ? net_transmit(d, len) : 1;

		con_puts("net-inject");
		kv("status", status);
		kv("len", len);
		con_putc('\n');
	}
}

/* The frame length of a used receive buffer: the used length (at most the
 * buffer) minus the header, 0 if shorter. */
static u32 frame_len(u32 used_len)
{
	if (used_len > RX_BUF_SIZE)
		used_len = RX_BUF_SIZE;
	return used_len > VNET_HDR_LEN ? used_len - VNET_HDR_LEN : 0;
}

/*
 * Fills the receive queue (descriptor i is rx_bufs[i], device-writable),
 * notifies the device and prints the ready line. Then, net.count times,
 * waits (net.wait polls) for a received frame and hands the buffer index
 * and the frame length (used length minus the header, 0 if shorter) to the
 * scenario. Prints the timeout line and stops on a timeout or a used entry
 * naming no buffer of ours.
 */
static void rx_frames(struct virtio_dev *d, const struct rx_scenario *s)
{
	u64 count = count_param("net.count=");

	net_post_rx(d);
	con_puts(s->ready);
	if (s->before)
		s->before(d);
	for (u64 n = 0; n < count; n++) {
		u64 wait = param("net.wait=", RECV_WAIT_DEFAULT);
		u32 id, len;

		if (!net_receive(d, &wait, &len, &id)) {
			con_puts(s->timeout);
			return;
		}
		s->fn(d, id, len);
	}
}

/* net-recv: prints one received frame. */
static void recv_frame(struct virtio_dev *d, u32 id, u32 len)
{
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
	net_repost(d, id);
}

/* net-echo: sends one received frame back with the MACs swapped. */
static void echo_frame(struct virtio_dev *d, u32 id, u32 len)
{
	const u8 *f = rx_bufs[id] + VNET_HDR_LEN;
	u8 *out = tx_buf + VNET_HDR_LEN;

	if (len > FRAME_MAX)
		len = FRAME_MAX;
	memcpy(out, f, len);
	if (len >= 12) {
		memcpy(out, f + 6, 6);
		memcpy(out + 6, f, 6);
	}
	net_repost(d, id);
	u32 status = net_transmit(d, len);
	con_puts("net-echo");
	kv("status", status);
	kv("len", len);
	kv("sum", fnv1a(out, len));
	con_putc('\n');
}

static const struct rx_scenario net_recv = {
	"net-recv: ready\n", "net-recv: timeout\n", 0, recv_frame,
};

static const struct rx_scenario net_echo = {
	"net-echo: ready\n", "net-echo: timeout\n", 0, echo_frame,
};

/* net-inject: sends the net.frame= frames, then prints what comes back as
 * net-recv does. */
static const struct rx_scenario net_inject = {
	"net-inject: ready\n", "net-recv: timeout\n", inject_frames, recv_frame,
};

/*
 * net-serve, for snapshot tests: posts the receive buffers, prints where the
 * receive used ring and buffers are, then forever prints every frame that
 * arrives (as net-recv) and sends the test frame on a serial 's'.
 */
static void __attribute__((noreturn)) scenario_serve(struct virtio_dev *d)
{
	u32 len = frame_len_param();

	net_post_rx(d);
	con_puts("net-serve: ready");
	kv("used", (u64)&virtio_rings[RXQ].vq->used);
	kv("bufs", (u64)rx_bufs);
	kv("bufs_len", (u64)virtio_rings[RXQ].size * RX_BUF_SIZE);
	con_putc('\n');
	for (;;) {
		u64 one_poll = 1;
		u32 id, used_len;

		if (virtq_wait_used(d, RXQ, &one_poll, &id, &used_len) &&
		    id < virtio_rings[RXQ].size) {
			recv_frame(d, id, frame_len(used_len));
		}
		if (con_getc_nowait() == 's') {
			build_frame(tx_buf + VNET_HDR_LEN, len);
			u32 status = net_transmit(d, len);
			con_puts("net-serve sent");
			kv("status", status);
			kv("len", len);
			kv("sum", fnv1a(tx_buf + VNET_HDR_LEN, len));
			con_putc('\n');
		}
	}
}

int net_scenario(const char *name)
{
	static const char *const names[] = {
		"net-info", "net-send", "net-recv", "net-echo", "net-inject",
		"mmds-http",
		"net-serve",
	};
	int which = name_index(name, names, sizeof(names) / sizeof(names[0]));

	if (which < 0)
		return 0;

	virtio_discover(&net_driver);
	if (which == 0) {
		virtio_each(info_line, 0);
		done();
	}
	struct virtio_dev *d = virtio_select("net.dev=");
	virtio_init(d);
	switch (which) {
	case 1:
		scenario_send(d);
		break;
	case 2:
		rx_frames(d, &net_recv);
		break;
	case 4:
		rx_frames(d, &net_inject);
		break;
	case 5:
		mmds_http(d);
		break;
	case 6:
		scenario_serve(d);
	default:
		rx_frames(d, &net_echo);
		break;
	}
	done();
}
