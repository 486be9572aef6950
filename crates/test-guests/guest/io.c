/*
 * Ember test guest: i8042 (keyboard controller) and unclaimed-I/O scenarios.
 *
 * - keys: enables the keyboard like a driver would and prints every byte the
 *   controller delivers (the VMM's Ctrl-Alt-Del API injects scancodes into
 *   the i8042 output buffer).
 * - i8042-selftest: controller self test (0xAA) and read-command-byte (0x20).
 * - ioprobe: reads and writes unclaimed I/O ports and unclaimed MMIO, then
 *   reads the boot-timer device.
 *
 * Interrupts stay disabled: everything polls, and every wait is bounded
 * except the wait for the first key (see scenario_keys). Integer code only:
 * see main.c.
 */
#include "core.h"

/* i8042 ports and status bits. */
#define I8042_DATA 0x60
#define I8042_STATUS 0x64 /* read */
#define I8042_CMD 0x64	  /* write */
#define I8042_OBF 0x01	  /* output buffer full: data to read at 0x60 */
#define I8042_IBF 0x02	  /* input buffer full: controller busy */

/* Controller commands. */
#define I8042_CMD_READ_CMDBYTE 0x20
#define I8042_CMD_WRITE_CMDBYTE 0x60
#define I8042_CMD_SELF_TEST 0xAA

/* Command byte written by "keys": keyboard interrupt enabled (bit 0),
 * system flag (bit 2), scancode translation (bit 6); keyboard clock enabled
 * (bit 4 clear). */
#define KEYS_CMDBYTE 0x45

/* Status polls while waiting for IBF clear or for a reply. */
#define I8042_SPINS 100000u
/* At most this many stale bytes are read when draining. */
#define I8042_DRAIN_MAX 64u

#define KEYS_DEFAULT_MAX 4
#define KEYS_MAX_MAX 64
#define KEYS_DEFAULT_IDLE 3000000

/* ------------------------------------------------------------------------ */
/* i8042 helpers                                                            */

/* Waits (bounded) until the controller accepts a byte (IBF clear). */
static void i8042_wait_write(void)
{
	for (u32 i = 0; i < I8042_SPINS; i++) {
		if (!(inb(I8042_STATUS) & I8042_IBF))
			return;
	}
}

static void i8042_command(u8 cmd)
{
	i8042_wait_write();
	outb(I8042_CMD, cmd);
}

static void i8042_write_data(u8 val)
{
	i8042_wait_write();
	outb(I8042_DATA, val);
}

/* Waits (bounded) for a byte in the output buffer. Returns 1 and stores it
 * in *out, or 0 on timeout. */
static int i8042_read(u8 *out)
{
	for (u32 i = 0; i < I8042_SPINS; i++) {
		if (inb(I8042_STATUS) & I8042_OBF) {
			*out = inb(I8042_DATA);
			return 1;
		}
	}
	return 0;
}

/* Reads and discards pending output bytes (at most I8042_DRAIN_MAX, so a
 * status port stuck at 0xff cannot hang the guest). */
static void i8042_drain(void)
{
	for (u32 i = 0; i < I8042_DRAIN_MAX; i++) {
		if (!(inb(I8042_STATUS) & I8042_OBF))
			return;
		(void)inb(I8042_DATA);
	}
}

/* Prints "i8042 <key>=0x.." or "i8042 <key>=none" for a command's reply. */
static void i8042_reply(const char *key)
{
	u8 v;

	con_puts("i8042");
	if (i8042_read(&v)) {
		kv(key, v);
	} else {
		con_putc(' ');
		con_puts(key);
		con_puts("=none");
	}
	con_putc('\n');
}

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */

/*
 * keys: drain, write the command byte 0x45, print "keys: ready", then print
 * every byte read from port 0x60 while status bit 0 is set. Stops after
 * keys.max bytes, after keys.idle consecutive empty polls once at least one
 * byte arrived, or (only if keys.wait is non-zero) after keys.wait empty
 * polls without any byte. Without keys.wait the guest waits for the first
 * byte forever.
 */
static void scenario_keys(void)
{
	u64 max = param("keys.max=", KEYS_DEFAULT_MAX);
	u64 idle_limit = param("keys.idle=", KEYS_DEFAULT_IDLE);
	u64 wait_limit = param("keys.wait=", 0);
	u64 count = 0;
	u64 idle = 0;

	if (max < 1)
		max = 1;
	if (max > KEYS_MAX_MAX)
		max = KEYS_MAX_MAX;

	i8042_drain();
	i8042_command(I8042_CMD_WRITE_CMDBYTE);
	i8042_write_data(KEYS_CMDBYTE);
	con_puts("keys: ready\n");

	while (count < max) {
		if (inb(I8042_STATUS) & I8042_OBF) {
			u8 b = inb(I8042_DATA);
			con_puts("key=");
			puthex(b);
			con_putc('\n');
			count++;
			idle = 0;
			continue;
		}
		idle++;
		if (count ? idle >= idle_limit : (wait_limit && idle >= wait_limit))
			break;
	}
	con_puts("keys: done");
	kv("count", count);
	con_putc('\n');
}

static void scenario_i8042_selftest(void)
{
	i8042_drain();
	i8042_command(I8042_CMD_SELF_TEST);
	i8042_reply("selftest");
	i8042_drain();
	i8042_command(I8042_CMD_READ_CMDBYTE);
	i8042_reply("cmdbyte");
}

/* Ports and MMIO addresses with no device behind them in Ember. */
static const u16 probe_ports[] = {0x80, 0x2f8, 0x510};
static const u64 probe_mmio[] = {0xD0000000ul, 0xC0010000ul};

/* Boot-timer device (offset 0 is the signal register; offset 1 reads 0). */
#define BOOT_TIMER_ADDR 0xC0000000ul

static void print_probe(const char *what, u64 addr, u64 size, u64 value)
{
	con_puts(what);
	kv("addr", addr);
	kv("size", size);
	kv("value", value);
	con_putc('\n');
}

static u64 port_read(u16 port, u32 size)
{
	switch (size) {
	case 1:
		return inb(port);
	case 2:
		return inw(port);
	default:
		return inl(port);
	}
}

static u64 mmio_read(u64 addr, u32 size)
{
	switch (size) {
	case 1:
		return *(const volatile u8 *)addr;
	case 2:
		return *(const volatile u16 *)addr;
	case 4:
		return *(const volatile u32 *)addr;
	default:
		return *(const volatile u64 *)addr;
	}
}

static void mmio_write(u64 addr, u32 size, u64 val)
{
	switch (size) {
	case 1:
		*(volatile u8 *)addr = (u8)val;
		break;
	case 2:
		*(volatile u16 *)addr = (u16)val;
		break;
	case 4:
		*(volatile u32 *)addr = (u32)val;
		break;
	default:
		*(volatile u64 *)addr = val;
		break;
	}
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static void scenario_ioprobe(void)
{
	static const u8 port_bytes[] = {0x00, 0x55, 0xaa, 0xff};

	for (u32 p = 0; p < NELEM(probe_ports); p++) {
		for (u32 size = 1; size <= 4; size <<= 1)
			print_probe("port", probe_ports[p], size,
				    port_read(probe_ports[p], size));
	}
	for (u32 i = 0; i < NELEM(port_bytes); i++) {
		outb(0x80, port_bytes[i]);
		outb(0x2f8, port_bytes[i]);
	}
	for (u32 m = 0; m < NELEM(probe_mmio); m++) {
		for (u32 size = 1; size <= 8; size <<= 1)
			print_probe("mmio", probe_mmio[m], size,
				    mmio_read(probe_mmio[m], size));
	}
	for (u32 m = 0; m < NELEM(probe_mmio); m++) {
		for (u32 size = 1; size <= 8; size <<= 1)
			mmio_write(probe_mmio[m], size, 0x5a5a5a5a5a5a5a5aul);
	}
	print_probe("mmio", BOOT_TIMER_ADDR + 1, 1, mmio_read(BOOT_TIMER_ADDR + 1, 1));
}

int io_scenario(const char *name)
{
	if (streq(name, "keys"))
		scenario_keys();
	else if (streq(name, "i8042-selftest"))
		scenario_i8042_selftest();
	else if (streq(name, "ioprobe"))
		scenario_ioprobe();
	else
		return 0;
	return 1;
}
