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

/* libc replacements (main.c). */
void *memset(void *dst, int c, unsigned long n);
void *memcpy(void *dst, const void *src, unsigned long n);

/* COM1 output (main.c). */
void con_putc(char c);
void con_puts(const char *s);
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

#endif
