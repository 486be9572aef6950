/*
 * Ember test guest: the C core shared by guest-elf64, guest-pvh and
 * guest-bzimage.
 *
 * Runs in 64-bit long mode with identity-mapped low 4 GiB, interrupts off.
 * Output goes to COM1 as "key=value" lines (hex numbers, "\n" endings).
 * The scenario is chosen with "ember.test=NAME" on the kernel command line;
 * the blk-* (virtio-blk) scenarios live in blk.c, the i8042 and unclaimed
 * I/O scenarios in io.c.
 *
 * Everything here must stay simple integer code: the target environment is
 * an instruction emulator without SSE/x87 and at about 1M instructions/s.
 */
#include "guest.h"
#include "core.h"

/* Unaligned, alias-safe views for reading boot structures. */
typedef u16 u16_una __attribute__((aligned(1), may_alias));
typedef u32 u32_una __attribute__((aligned(1), may_alias));
typedef u64 u64_una __attribute__((aligned(1), may_alias));

void guest_main(u32 proto, u64 info) __attribute__((noreturn, used));

/* ------------------------------------------------------------------------ */
/* libc replacements (gcc may emit calls to these)                          */

void *memset(void *dst, int c, unsigned long n)
{
	void *d = dst;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

void *memcpy(void *dst, const void *src, unsigned long n)
{
	void *d = dst;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

/* ------------------------------------------------------------------------ */
/* Physical memory and port access                                          */

static inline u8 rd8(u64 addr)
{
	return *(const volatile u8 *)addr;
}

static inline u16 rd16(u64 addr)
{
	return *(const volatile u16_una *)addr;
}

static inline u32 rd32(u64 addr)
{
	return *(const volatile u32_una *)addr;
}

static inline u64 rd64(u64 addr)
{
	return *(const volatile u64_una *)addr;
}

void park(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" : : : "memory");
}

void i8042_reset(void)
{
	outb(0x64, 0xFE);
	park();
}

/* ------------------------------------------------------------------------ */
/* COM1 output                                                              */

#define COM1 0x3F8
#define COM1_LSR (COM1 + 5)
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

void con_putc(char c)
{
	/* Bounded poll: the VMM's UART always reports THR empty. */
	for (int i = 0; i < 100000; i++) {
		if (inb(COM1_LSR) & LSR_THR_EMPTY)
			break;
	}
	outb(COM1, (u8)c);
}

int con_getc_nowait(void)
{
	if (!(inb(COM1_LSR) & LSR_DATA_READY))
		return -1;
	return inb(COM1);
}

void con_puts(const char *s)
{
	while (*s)
		con_putc(*s++);
}

void puthex(u64 v)
{
	static const char digits[] = "0123456789abcdef";
	char buf[16];
	int n = 0;

	con_putc('0');
	con_putc('x');
	do {
		buf[n++] = digits[v & 0xF];
		v >>= 4;
	} while (v);
	while (n)
		con_putc(buf[--n]);
}

/* Prints " key=0x..." */
void kv(const char *key, u64 v)
{
	con_putc(' ');
	con_puts(key);
	con_putc('=');
	puthex(v);
}

void done(void)
{
	con_puts("guest: done\n");
	i8042_reset();
}

/* ------------------------------------------------------------------------ */
/* Boot information                                                         */

/* struct boot_params offsets (Linux zero page). */
#define BP_EXT_RAMDISK_IMAGE 0x0C0
#define BP_EXT_RAMDISK_SIZE 0x0C4
#define BP_EXT_CMD_LINE_PTR 0x0C8
#define BP_E820_ENTRIES 0x1E8
#define BP_TYPE_OF_LOADER 0x210
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21C
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2D0
#define BP_E820_MAX 128

/* struct hvm_start_info offsets. */
#define SI_MAGIC 0
#define SI_VERSION 4
#define SI_NR_MODULES 12
#define SI_MODLIST_PADDR 16
#define SI_CMDLINE_PADDR 24
#define SI_MEMMAP_PADDR 40
#define SI_MEMMAP_ENTRIES 48
#define SI_MAGIC_VALUE 0x336ec578

#define MAX_CMDLINE 4096
#define MAX_MEMMAP 128

struct bootinfo {
	u32 proto;
	u64 info;
	u64 cmdline;
	u64 initrd_addr;
	u64 initrd_size;
};

static struct bootinfo bi;

static void bootinfo_init(u32 proto, u64 info)
{
	bi.proto = proto;
	bi.info = info;
	if (!info)
		return;
	if (proto == PROTO_PVH) {
		if (rd32(info + SI_MAGIC) != SI_MAGIC_VALUE)
			return;
		bi.cmdline = rd64(info + SI_CMDLINE_PADDR);
		u32 nr = rd32(info + SI_NR_MODULES);
		u64 mods = rd64(info + SI_MODLIST_PADDR);
		if (nr && mods) {
			bi.initrd_addr = rd64(mods + 0);
			bi.initrd_size = rd64(mods + 8);
		}
	} else {
		bi.cmdline = rd32(info + BP_CMD_LINE_PTR) |
			     ((u64)rd32(info + BP_EXT_CMD_LINE_PTR) << 32);
		bi.initrd_addr = rd32(info + BP_RAMDISK_IMAGE) |
				 ((u64)rd32(info + BP_EXT_RAMDISK_IMAGE) << 32);
		bi.initrd_size = rd32(info + BP_RAMDISK_SIZE) |
				 ((u64)rd32(info + BP_EXT_RAMDISK_SIZE) << 32);
	}
}

/* Returns the byte at index i of the command line, 0 past its end. */
static char cmdline_at(u64 i)
{
	if (!bi.cmdline || i >= MAX_CMDLINE)
		return 0;
	return (char)rd8(bi.cmdline + i);
}

static const char *const protocol_name[] = {"linux64", "pvh"};

int cmdline_token(const char *key, u32 nth, char *out, int cap)
{
	u64 i = 0;

	out[0] = 0;
	for (;;) {
		while (cmdline_at(i) == ' ')
			i++;
		if (!cmdline_at(i))
			return 0;
		/* i is the start of a token. */
		u64 k = 0;
		while (key[k] && cmdline_at(i + k) == key[k])
			k++;
		if (!key[k] && nth-- == 0) {
			int n = 0;
			u64 j = i + k;
			char c;
			while ((c = cmdline_at(j)) && c != ' ') {
				if (n < cap - 1)
					out[n++] = c;
				j++;
			}
			out[n] = 0;
			return 1;
		}
		while (cmdline_at(i) && cmdline_at(i) != ' ')
			i++;
	}
}

/* Finds the "ember.test=" token; copies its value into out. */
static void scenario_from_cmdline(char *out, int cap)
{
	cmdline_token("ember.test=", 0, out, cap);
}

int streq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int parse_num(const char **s, u64 *out)
{
	const char *p = *s;
	u64 v = 0;
	int digits = 0;

	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		p += 2;
		for (int h; (h = hexval(*p)) >= 0; p++, digits++)
			v = (v << 4) | (u64)h;
	} else {
		for (; *p >= '0' && *p <= '9'; p++, digits++)
			v = v * 10 + (u64)(*p - '0');
	}
	*s = p;
	*out = v;
	return digits > 0;
}

#define PARAM_CAP 80

u64 param(const char *key, u64 def)
{
	char val[PARAM_CAP];
	const char *p = val;
	u64 v;

	if (!cmdline_token(key, 0, val, sizeof(val)))
		return def;
	if (!parse_num(&p, &v) || *p)
		return def;
	return v;
}

/* ------------------------------------------------------------------------ */
/* bootinfo scenario                                                        */

static void print_e820(u64 addr, u64 size, u32 type, u64 *total)
{
	con_puts("e820");
	kv("addr", addr);
	kv("size", size);
	kv("type", type);
	con_putc('\n');
	if (type == 1)
		*total += size;
}

static void print_memmap(void)
{
	u64 total = 0;

	if (bi.proto == PROTO_PVH) {
		if (bi.info && rd32(bi.info + SI_MAGIC) == SI_MAGIC_VALUE &&
		    rd32(bi.info + SI_VERSION) >= 1) {
			u64 map = rd64(bi.info + SI_MEMMAP_PADDR);
			u32 n = rd32(bi.info + SI_MEMMAP_ENTRIES);
			if (n > MAX_MEMMAP)
				n = MAX_MEMMAP;
			for (u32 i = 0; map && i < n; i++) {
				u64 e = map + (u64)i * 24;
				print_e820(rd64(e), rd64(e + 8), rd32(e + 16), &total);
			}
		}
	} else if (bi.info) {
		u32 n = rd8(bi.info + BP_E820_ENTRIES);
		if (n > BP_E820_MAX)
			n = BP_E820_MAX;
		for (u32 i = 0; i < n; i++) {
			u64 e = bi.info + BP_E820_TABLE + (u64)i * 20;
			print_e820(rd64(e), rd64(e + 8), rd32(e + 16), &total);
		}
	}
	con_puts("mem_total=");
	puthex(total);
	con_putc('\n');
}

static void print_initrd(void)
{
	if (!bi.initrd_size) {
		con_puts("initrd none\n");
		return;
	}
	u32 h = 0x811c9dc5u;
	for (u64 i = 0; i < bi.initrd_size; i++) {
		h ^= rd8(bi.initrd_addr + i);
		h *= 0x01000193u;
	}
	con_puts("initrd");
	kv("addr", bi.initrd_addr);
	kv("size", bi.initrd_size);
	kv("sum", h);
	con_putc('\n');
}

static void print_loader(void)
{
	if (bi.proto == PROTO_PVH) {
		con_puts("loader type=pvh\n");
		return;
	}
	con_puts("loader");
	kv("type", bi.info ? rd8(bi.info + BP_TYPE_OF_LOADER) : 0);
	con_putc('\n');
}

#define MP_FLOAT_SIG 0x5F504D5Fu /* "_MP_" */
#define MP_CONF_SIG 0x504D4350u	 /* "PCMP" */

static u64 mp_scan(u64 start, u64 end)
{
	for (u64 a = start; a + 16 <= end; a += 16) {
		if (rd32(a) == MP_FLOAT_SIG)
			return a;
	}
	return 0;
}

int mptable_walk(struct mp_cpus *out)
{
	u64 fp = mp_scan(0x9FC00, 0xA0000);

	memset(out, 0, sizeof(*out));
	if (!fp)
		fp = mp_scan(0xF0000, 0x100000);
	if (!fp)
		return 0;
	u64 conf = rd32(fp + 4);
	if (!conf || rd32(conf) != MP_CONF_SIG)
		return 0;

	u64 len = rd16(conf + 4);
	u32 count = rd16(conf + 0x22);
	u64 off = 0x2C;

	for (u32 i = 0; i < count && off < len; i++) {
		u8 type = rd8(conf + off);
		if (type == 0) {
			u8 flags = rd8(conf + off + 3);
			u8 apic = rd8(conf + off + 1);
			if (flags & 1) {
				if (out->cpus < MP_MAX_CPUS)
					out->apic_id[out->cpus] = apic;
				out->cpus++;
			}
			if ((flags & 2) && !out->have_bsp) {
				out->have_bsp = 1;
				out->bsp = apic;
			}
			off += 20;
		} else if (type <= 4) {
			off += 8;
		} else {
			out->unknown = 1;
			out->unknown_type = type;
			out->unknown_index = i;
			out->unknown_offset = off;
			break;
		}
	}
	return 1;
}

static void print_mptable(void)
{
	struct mp_cpus mp;

	if (!mptable_walk(&mp)) {
		con_puts("mptable none\n");
		return;
	}
	if (mp.unknown) {
		con_puts("mptable_unknown");
		kv("type", mp.unknown_type);
		kv("index", mp.unknown_index);
		kv("offset", mp.unknown_offset);
		con_putc('\n');
	}
	con_puts("mptable");
	kv("cpus", mp.cpus);
	if (mp.have_bsp)
		kv("bsp", mp.bsp);
	else
		con_puts(" bsp=none");
	con_putc('\n');
}

static void put_regstr(u32 r, int *stop)
{
	for (int i = 0; i < 4 && !*stop; i++) {
		char c = (char)((r >> (8 * i)) & 0xFF);
		if (!c)
			*stop = 1;
		else
			con_putc(c);
	}
}

static void print_cpuid(void)
{
	u32 a, b, c, d;
	u32 max_basic, leaf1_ebx, hv_bit;
	u32 hv_max = 0, hv_features = 0, topo = 0;
	u32 sig[3] = {0, 0, 0};

	cpuid(0, 0, &max_basic, &b, &c, &d);
	cpuid(1, 0, &a, &leaf1_ebx, &c, &d);
	hv_bit = c >> 31;
	if (hv_bit) {
		cpuid(0x40000000, 0, &hv_max, &sig[0], &sig[1], &sig[2]);
		if (hv_max >= 0x40000001)
			cpuid(0x40000001, 0, &hv_features, &b, &c, &d);
	}
	if (max_basic >= 0xB) {
		cpuid(0xB, 1, &a, &b, &c, &d);
		topo = b & 0xFFFF;
	}

	con_puts("cpuid");
	kv("hv_bit", hv_bit);
	con_puts(" hv_sig=");
	int stop = 0;
	for (int i = 0; i < 3; i++)
		put_regstr(sig[i], &stop);
	kv("hv_max", hv_max);
	kv("hv_features", hv_features);
	kv("leaf1_ebx", leaf1_ebx);
	kv("topo_cpus", topo);
	con_putc('\n');

	u32 max_ext;
	cpuid(0x80000000, 0, &max_ext, &b, &c, &d);
	if (max_ext < 0x80000004) {
		con_puts("brand=none\n");
		return;
	}
	u32 regs[12];
	for (u32 i = 0; i < 3; i++)
		cpuid(0x80000002 + i, 0, &regs[4 * i], &regs[4 * i + 1],
		      &regs[4 * i + 2], &regs[4 * i + 3]);
	const char *brand = (const char *)regs;
	int n = 0;
	while (n < 48 && brand[n] == ' ')
		n++;
	con_puts("brand=");
	for (; n < 48 && brand[n]; n++)
		con_putc(brand[n]);
	con_putc('\n');
}

static void scenario_bootinfo(void)
{
	con_puts("cmdline=");
	for (u64 i = 0; cmdline_at(i); i++)
		con_putc(cmdline_at(i));
	con_putc('\n');
	print_memmap();
	print_initrd();
	print_loader();
	print_mptable();
	print_cpuid();
}

/* ------------------------------------------------------------------------ */
/* Other scenarios                                                          */

#define ECHO_MAX 200

static void scenario_echo(void)
{
	char line[ECHO_MAX + 1];
	int n = 0;

	con_puts("echo: ready\n");
	for (;;) {
		int in;
		while ((in = con_getc_nowait()) < 0)
			;
		char c = (char)in;
		if (c == '\n' || c == '\r')
			break;
		if (n < ECHO_MAX)
			line[n++] = c;
	}
	line[n] = 0;
	con_puts("echo=");
	con_puts(line);
	con_putc('\n');
}

static void scenario_boottimer(void)
{
	*(volatile u8 *)0xC0000000ul = 123;
	con_puts("boottimer: signalled\n");
}

static void scenario_badinsn(void)
{
	con_puts("badinsn: now\n");
	/*
	 * x87 load from unbacked MMIO; the emulator cannot handle it. The
	 * address goes through a register: an absolute disp32 operand would be
	 * sign-extended to 0xffffffffd0000000 in 64-bit mode.
	 */
	__asm__ volatile("fldt (%0)" : : "r"(0xD0000000ul) : "memory");
	con_puts("badinsn: survived\n");
	i8042_reset();
}

void delay(u64 n)
{
	for (volatile u64 d = 0; d < n; d++)
		;
}

#define COUNT_DEFAULT_N 10
#define COUNT_MAX_N 1000
#define COUNT_DEFAULT_DELAY 200000

u64 count_delay(void)
{
	return param("count.delay=", COUNT_DEFAULT_DELAY);
}

static void scenario_count(void)
{
	u64 n = param("count.n=", COUNT_DEFAULT_N);
	u64 wait = count_delay();

	if (n > COUNT_MAX_N)
		n = COUNT_MAX_N;
	for (u64 i = 0; i < n; i++) {
		con_puts("count=");
		puthex(i);
		con_putc('\n');
		if (i + 1 < n)
			delay(wait);
	}
}

static void __attribute__((noreturn)) scenario_spin(void)
{
	u64 wait = count_delay();

	con_puts("spin: running\n");
	for (u64 tick = 0;; tick++) {
		con_puts("tick=");
		puthex(tick);
		con_putc('\n');
		delay(wait);
	}
}

/* ------------------------------------------------------------------------ */

void guest_main(u32 proto, u64 info)
{
	char scenario[64];

	if (proto > PROTO_PVH)
		proto = PROTO_LINUX64;
	bootinfo_init(proto, info);
	scenario_from_cmdline(scenario, sizeof(scenario));
	if (!scenario[0])
		memcpy(scenario, "bootinfo", 9);

	con_puts("guest: start protocol=");
	con_puts(protocol_name[proto]);
	con_puts(" scenario=");
	con_puts(scenario);
	con_putc('\n');

	if (streq(scenario, "bootinfo")) {
		scenario_bootinfo();
	} else if (streq(scenario, "echo")) {
		scenario_echo();
	} else if (streq(scenario, "boottimer")) {
		scenario_boottimer();
	} else if (streq(scenario, "hlt")) {
		con_puts("hlt: parked\n");
		park();
	} else if (streq(scenario, "reset")) {
		con_puts("reset: now\n");
		i8042_reset();
	} else if (streq(scenario, "badinsn")) {
		scenario_badinsn();
	} else if (streq(scenario, "count")) {
		scenario_count();
	} else if (streq(scenario, "spin")) {
		scenario_spin();
	} else if (blk_scenario(scenario)) {
		/* blk-* scenarios (blk.c) */
	} else if (io_scenario(scenario)) {
		/* i8042 and unclaimed-I/O scenarios (io.c) */
	} else if (net_scenario(scenario)) {
		/* net-* scenarios (net.c) */
	} else if (vsock_scenario(scenario)) {
		/* vsock-* scenarios (vsock.c) */
	} else if (rng_scenario(scenario)) {
		/* rng-* scenarios (rng.c) */
	} else if (balloon_scenario(scenario)) {
		/* balloon-* scenarios (balloon.c) */
	} else if (ticks_scenario(scenario)) {
		/* ticks (irq.c) */
	} else if (smp_scenario(scenario)) {
		/* smp (smp.c) */
	} else if (snap_scenario(scenario)) {
		/* snapcount (snap.c) */
	} else {
		con_puts("guest: unknown scenario ");
		con_puts(scenario);
		con_putc('\n');
		i8042_reset();
	}
	done();
}
