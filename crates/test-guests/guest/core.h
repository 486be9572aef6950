/*
 * C-only declarations shared by the guest's C files (virtio.h adds the
 * virtio-mmio driver core of blk.c, net.c and vsock.c).
 * guest.h stays assembler-safe; this header is not included from .S files.
 */
#ifndef EMBER_CORE_H
#define EMBER_CORE_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

_Static_assert(sizeof(u64) == 8, "u64 must be 64-bit");

/* Port I/O. */
static inline void outb(u16 port, u8 val)
{
	__asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline void outw(u16 port, u16 val)
{
	__asm__ volatile("outw %0, %1" : : "a"(val), "Nd"(port));
}

static inline void outl(u16 port, u32 val)
{
	__asm__ volatile("outl %0, %1" : : "a"(val), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 val;
	__asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
	return val;
}

static inline u16 inw(u16 port)
{
	u16 val;
	__asm__ volatile("inw %1, %0" : "=a"(val) : "Nd"(port));
	return val;
}

static inline u32 inl(u16 port)
{
	u32 val;
	__asm__ volatile("inl %1, %0" : "=a"(val) : "Nd"(port));
	return val;
}

static inline void cpuid(u32 leaf, u32 subleaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid"
			 : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
			 : "a"(leaf), "c"(subleaf));
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return lo | ((u64)hi << 32);
}

static inline void wrmsr(u32 msr, u64 val)
{
	__asm__ volatile("wrmsr"
			 : : "c"(msr), "a"((u32)val), "d"((u32)(val >> 32)));
}

/* libc replacements (main.c). */
void *memset(void *dst, int c, unsigned long n);
void *memcpy(void *dst, const void *src, unsigned long n);

/* COM1 output (main.c). */
void con_putc(char c);
void con_puts(const char *s);
/* The next byte received on COM1, or -1 if none is waiting. */
int con_getc_nowait(void);
/* Prints v as lowercase hex with a 0x prefix and no leading zeros. */
void puthex(u64 v);
/* Prints " key=0x..." */
void kv(const char *key, u64 v);

/* Prints "guest: done" and resets through the i8042. */
void done(void) __attribute__((noreturn));
void i8042_reset(void) __attribute__((noreturn));
/* Halts the vCPU for good (cli; hlt), the VM staying up. */
void park(void) __attribute__((noreturn));

int streq(const char *a, const char *b);

/*
 * Finds the nth (0-based) space-separated command-line token that starts
 * with key and copies the rest of that token into out (NUL-terminated,
 * truncated to cap - 1 characters). Returns 1 if found, 0 otherwise (out is
 * then the empty string).
 */
int cmdline_token(const char *key, u32 nth, char *out, int cap);

/*
 * Parses "0x<hex>" or "<decimal>" at *s; advances *s. Returns 1 on success
 * (at least one digit).
 */
/* The value of hexadecimal digit `c`, or -1. */
int hexval(char c);

int parse_num(const char **s, u64 *out);

/* Value of the first "key<number>" token (key includes the '='), or def if
 * the token is absent or its value is not exactly one number. */
u64 param(const char *key, u64 def);

/* Busy loop of n iterations (6 instructions each). */
void delay(u64 n);
/* The count.delay= parameter (busy-loop iterations between count lines). */
u64 count_delay(void);

/* Processors of the MP table (main.c). */
#define MP_MAX_CPUS 32
struct mp_cpus {
	u32 cpus;		  /* enabled processor entries */
	u8 apic_id[MP_MAX_CPUS];  /* their APIC ids, in table order */
	int have_bsp;
	u8 bsp;			  /* APIC id of the entry with the BSP flag */
	int unknown;		  /* the walk stopped at an unknown entry */
	u32 unknown_type, unknown_index;
	u64 unknown_offset;
};
/* Walks the MP table; returns 0 (and a zeroed *out) if there is none. */
int mptable_walk(struct mp_cpus *out);

/* Local APIC (irq.c). */
#define LAPIC_BASE 0xFEE00000ul
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 val);
/* Software-enables the local APIC (spurious vector 0xff). */
void lapic_enable(void);
/* This CPU's APIC id (CPUID leaf 1 EBX[31:24]). */
u32 cpu_apic_id(void);

/* Block-device scenarios (blk.c): runs scenario name if it is one of them
 * and returns 1 (most of them never return), returns 0 otherwise. */
int blk_scenario(const char *name);

/* i8042 and unclaimed-I/O scenarios (io.c): same convention. */
int io_scenario(const char *name);

/* Runs the net-* scenario `name` (net.c); returns 0 if it is not one. */
int net_scenario(const char *name);

/* Runs the vsock-* scenario `name` (vsock.c); returns 0 if it is not one. */
int vsock_scenario(const char *name);

/* Runs the rng-* scenario `name` (rng.c); returns 0 if it is not one. */
int rng_scenario(const char *name);
/* Runs the balloon-* scenario `name` (balloon.c); returns 0 if it is not one. */
int balloon_scenario(const char *name);
/* Runs the ticks scenario (irq.c); returns 0 if `name` is not it. */
int ticks_scenario(const char *name);
/* Runs the smp scenario (smp.c); returns 0 if `name` is not it. */
int smp_scenario(const char *name);
/* Runs the snapcount scenario (snap.c); returns 0 if `name` is not it. */
int snap_scenario(const char *name);

#endif
