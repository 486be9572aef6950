/*
 * Ember test guest: the mmds-http scenario, an HTTP client of the MMDS
 * over a minimal TCP of its own, on the virtio-net driver of net.c.
 *
 * The guest is 172.16.0.2; the MMDS is 169.254.169.254, port 80. It asks
 * for the MMDS's MAC with ARP, then makes each request on a connection of
 * its own (source port 40000 + n): SYN, then the request with the ACK of
 * the SYN-ACK, then it acknowledges every in-order segment until the
 * server's FIN (requests say "Connection: close"), answered with FIN-ACK.
 * IPv4 and TCP checksums are computed; segments out of order are
 * acknowledged again and dropped.
 *
 * With mmds.v2=1: a GET without a token, a PUT /latest/api/token with
 * X-metadata-token-ttl-seconds: 60, then the GET with the token the PUT
 * returned. Otherwise one GET. The path is mmds.path= (default "/"); GETs
 * ask for JSON. Each response is printed whole, escaped (\r, \n, \\ and
 * \xHH for spaces and other bytes outside '!'..'~'), on one line:
 * "mmds-http conn=0x.. status=0x.. response=...". status is 0x0, or 0x1
 * when the exchange timed out or the server reset the connection.
 */
#include "virtio.h"
#include "net.h"

#define ETH_HLEN 14
#define IP_HLEN 20
#define TCP_HLEN 20
#define HDRS (ETH_HLEN + IP_HLEN + TCP_HLEN)

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10

#define FIRST_PORT 40000
#define ISS 1000
#define MAX_SEGMENTS 64
#define RESPONSE_CAP 2048
#define REQUEST_CAP 512
#define TOKEN_CAP 128
#define RECV_WAIT_DEFAULT 10000000u

static const u8 guest_ip[4] = { 172, 16, 0, 2 };
static const u8 mmds_ip[4] = { 169, 254, 169, 254 };
static u8 mmds_mac[6];
static u16 ip_id;

static u8 response[RESPONSE_CAP];
static u32 response_len;

/* One connection, from the guest's side. */
struct conn {
	u16 port;
	u32 snd_nxt;
	u32 rcv_nxt;
};

/* A segment from the MMDS to the connection's port. */
struct segment {
	u32 seq;
	u8 flags;
	u32 len;
};

static void put16(u8 *p, u32 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

static void put32(u8 *p, u32 v)
{
	put16(p, v >> 16);
	put16(p + 2, v);
}

static u32 get16(const u8 *p)
{
	return (u32)p[0] << 8 | p[1];
}

static u32 get32(const u8 *p)
{
	return get16(p) << 16 | get16(p + 2);
}

static int same(const u8 *a, const u8 *b, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

/* The one's-complement sum of n bytes (big-endian 16-bit words) plus sum. */
static u32 sum16(u32 sum, const u8 *p, u32 n)
{
	for (u32 i = 0; i + 1 < n; i += 2)
		sum += get16(p + i);
	if (n & 1)
		sum += (u32)p[n - 1] << 8;
	return sum;
}

static u32 fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

/* The Ethernet header from our MAC to dst; returns the payload. */
static u8 *ethernet(u8 *f, const u8 *dst, u32 type)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, net_mac(), 6);
	put16(f + 12, type);
	return f + ETH_HLEN;
}

/* ARP for the MMDS's address; learns its MAC. Returns 1 on an answer. */
static int resolve(struct virtio_dev *d)
{
	static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const u8 request[8] = { 0, 1, 8, 0, 6, 4, 0, 1 };
	u8 *a = ethernet(net_tx_frame(), broadcast, 0x0806);

	memcpy(a, request, 8);
	memcpy(a + 8, net_mac(), 6);
	memcpy(a + 14, guest_ip, 4);
	memset(a + 18, 0, 6);
	memcpy(a + 24, mmds_ip, 4);
	if (net_transmit(d, ETH_HLEN + 28))
		return 0;
	for (u32 n = 0; n < MAX_SEGMENTS; n++) {
		u64 wait = param("net.wait=", RECV_WAIT_DEFAULT);
		u32 len, id;
		const u8 *f = net_receive(d, &wait, &len, &id);

		if (!f)
			return 0;
		const u8 *r = f + ETH_HLEN;
		int answer = len >= ETH_HLEN + 28 && get16(f + 12) == 0x0806 &&
			     get16(r + 6) == 2 && same(r + 14, mmds_ip, 4);
		if (answer)
			memcpy(mmds_mac, r + 8, 6);
		net_repost(d, id);
		if (answer)
			return 1;
	}
	return 0;
}

/* Sends a segment with `flags` and n bytes of data on c. */
static u32 send_segment(struct virtio_dev *d, struct conn *c, u32 flags,
			const u8 *data, u32 n)
{
	u8 *ip = ethernet(net_tx_frame(), mmds_mac, 0x0800);
	u8 *t = ip + IP_HLEN;

	ip[0] = 0x45;
	ip[1] = 0;
	put16(ip + 2, IP_HLEN + TCP_HLEN + n);
	put16(ip + 4, ip_id++);
	put16(ip + 6, 0x4000);
	ip[8] = 64;
	ip[9] = 6;
	put16(ip + 10, 0);
	memcpy(ip + 12, guest_ip, 4);
	memcpy(ip + 16, mmds_ip, 4);
	put16(ip + 10, fold(sum16(0, ip, IP_HLEN)));

	put16(t, c->port);
	put16(t + 2, 80);
	put32(t + 4, c->snd_nxt);
	put32(t + 8, flags & TCP_ACK ? c->rcv_nxt : 0);
	t[12] = (TCP_HLEN / 4) << 4;
	t[13] = (u8)flags;
	put16(t + 14, 0xffff);
	put16(t + 16, 0);
	put16(t + 18, 0);
	memcpy(t + TCP_HLEN, data, n);
	/* The pseudo-header: addresses, protocol, TCP length. */
	u32 sum = sum16(6 + TCP_HLEN + n, ip + 12, 8);
	put16(t + 16, fold(sum16(sum, t, TCP_HLEN + n)));

	c->snd_nxt += n + ((flags & (TCP_SYN | TCP_FIN)) ? 1 : 0);
	return net_transmit(d, HDRS + n);
}

/*
 * Waits for the next segment from the MMDS to c's port (other frames are
 * dropped) and copies its data to the end of the response (which only
 * grows by it if the segment is the next in order). Returns 0 on a timeout.
 */
static int next_segment(struct virtio_dev *d, const struct conn *c,
			struct segment *s)
{
	for (u32 n = 0; n < MAX_SEGMENTS; n++) {
		u64 wait = param("net.wait=", RECV_WAIT_DEFAULT);
		u32 len, id;
		const u8 *f = net_receive(d, &wait, &len, &id);

		if (!f)
			return 0;
		const u8 *ip = f + ETH_HLEN;
		int ours = len >= HDRS && get16(f + 12) == 0x0800 &&
			   ip[9] == 6 && same(ip + 12, mmds_ip, 4);
		u32 ihl = (ip[0] & 15) * 4;
		const u8 *t = ip + ihl;
		u32 total = get16(ip + 2);
		ours = ours && ihl >= IP_HLEN && total <= len - ETH_HLEN &&
		       total >= ihl + TCP_HLEN && get16(t + 2) == c->port;
		u32 off = ours ? (u32)(t[12] >> 4) * 4 : 0;
		if (ours && off >= TCP_HLEN && ihl + off <= total) {
			u32 n_data = total - ihl - off;

			if (n_data > RESPONSE_CAP - response_len)
				n_data = RESPONSE_CAP - response_len;
			s->seq = get32(t + 4);
			s->flags = t[13];
			s->len = n_data;
			memcpy(response + response_len, t + off, n_data);
			net_repost(d, id);
			return 1;
		}
		net_repost(d, id);
	}
	return 0;
}

/* One request on a new connection; the response lands in `response`.
 * Returns 0 on success, 1 on a timeout or reset. */
static u32 exchange(struct virtio_dev *d, u32 n, const u8 *req, u32 req_len)
{
	struct conn c = { (u16)(FIRST_PORT + n), ISS, 0 };
	struct segment s;

	response_len = 0;
	if (send_segment(d, &c, TCP_SYN, 0, 0))
		return 1;
	for (u32 i = 0;; i++) {
		if (i == MAX_SEGMENTS || !next_segment(d, &c, &s) ||
		    (s.flags & TCP_RST))
			return 1;
		if ((s.flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
			break;
	}
	c.rcv_nxt = s.seq + 1;
	if (send_segment(d, &c, TCP_ACK | TCP_PSH, req, req_len))
		return 1;
	for (u32 i = 0; i < MAX_SEGMENTS; i++) {
		if (!next_segment(d, &c, &s) || (s.flags & TCP_RST))
			return 1;
		if (s.seq != c.rcv_nxt || (s.flags & TCP_SYN)) {
			/* Out of order or a repeat: say again what we have. */
			send_segment(d, &c, TCP_ACK, 0, 0);
			continue;
		}
		response_len += s.len;
		c.rcv_nxt += s.len;
		if (s.flags & TCP_FIN) {
			c.rcv_nxt++;
			send_segment(d, &c, TCP_ACK | TCP_FIN, 0, 0);
			return 0;
		}
		if (s.len)
			send_segment(d, &c, TCP_ACK, 0, 0);
	}
	return 1;
}

static void put_escaped(const u8 *p, u32 n)
{
	static const char digits[] = "0123456789abcdef";

	for (u32 i = 0; i < n; i++) {
		u8 b = p[i];

		if (b == '\\') {
			con_puts("\\\\");
		} else if (b == '\r') {
			con_puts("\\r");
		} else if (b == '\n') {
			con_puts("\\n");
		} else if (b > 0x20 && b < 0x7f) {
			con_putc((char)b);
		} else {
			con_puts("\\x");
			con_putc(digits[b >> 4]);
			con_putc(digits[b & 15]);
		}
	}
}

/* Appends the string s to buf (of REQUEST_CAP bytes). */
static void append(u8 *buf, u32 *len, const char *s)
{
	for (; *s && *len < REQUEST_CAP; s++)
		buf[(*len)++] = (u8)*s;
}

/* Makes request n, prints its response; returns the exchange's status. */
static u32 request(struct virtio_dev *d, u32 n, const u8 *req, u32 len)
{
	u32 status = exchange(d, n, req, len);

	con_puts("mmds-http");
	kv("conn", n);
	kv("status", status);
	con_puts(" response=");
	put_escaped(response, response_len);
	con_putc('\n');
	return status;
}

/* The GET of mmds.path=, with the token if there is one. */
static u32 get_request(u8 *req, const char *token)
{
	char path[REQUEST_CAP / 2];
	u32 len = 0;

	if (!cmdline_token("mmds.path=", 0, path, sizeof(path)))
		path[0] = '/', path[1] = 0;
	append(req, &len, "GET ");
	append(req, &len, path);
	append(req, &len, " HTTP/1.1\r\nHost: 169.254.169.254\r\n"
			  "Accept: application/json\r\nConnection: close\r\n");
	if (token) {
		append(req, &len, "X-metadata-token: ");
		append(req, &len, token);
		append(req, &len, "\r\n");
	}
	append(req, &len, "\r\n");
	return len;
}

/* The token in the body of the response (after the blank line), or 0. */
static const char *token_of_response(char *token)
{
	for (u32 i = 0; i + 4 <= response_len; i++) {
		if (!same(response + i, (const u8 *)"\r\n\r\n", 4))
			continue;
		u32 n = 0;
		for (u32 j = i + 4; j < response_len && n + 1 < TOKEN_CAP; j++)
			if (response[j] > 0x20 && response[j] < 0x7f)
				token[n++] = (char)response[j];
		token[n] = 0;
		return n ? token : 0;
	}
	return 0;
}

void mmds_http(struct virtio_dev *d)
{
	static u8 req[REQUEST_CAP];
	static char token[TOKEN_CAP];
	u32 conn = 0;

	net_post_rx(d);
	if (!resolve(d)) {
		con_puts("mmds-http: no arp answer\n");
		return;
	}
	con_puts("mmds-http mac=");
	put_hexbytes(mmds_mac, 6);
	con_putc('\n');
	if (param("mmds.v2=", 0)) {
		u32 len = 0;

		request(d, conn++, req, get_request(req, 0));
		append(req, &len, "PUT /latest/api/token HTTP/1.1\r\n"
				  "X-metadata-token-ttl-seconds: 60\r\n"
				  "Connection: close\r\n\r\n");
		if (request(d, conn++, req, len))
			return;
		const char *t = token_of_response(token);
		if (!t) {
			con_puts("mmds-http: no token\n");
			return;
		}
		request(d, conn++, req, get_request(req, t));
		return;
	}
	request(d, conn, req, get_request(req, 0));
}
