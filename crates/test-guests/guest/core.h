/*
 * C-only declarations shared by the guest's C files (main.c, blk.c).
 * guest.h stays assembler-safe; this header is not included from .S files.
 */
#ifndef EMBER_CORE_H
#define EMBER_CORE_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

_Static_assert(sizeof(u64) == 8, "u64 must be 64-bit");

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

int streq(const char *a, const char *b);

/*
 * Finds the nth (0-based) space-separated command-line token that starts
 * with key and copies the rest of that token into out (NUL-terminated,
 * truncated to cap - 1 characters). Returns 1 if found, 0 otherwise (out is
 * then the empty string).
 */
int cmdline_token(const char *key, u32 nth, char *out, int cap);

/* Block-device scenarios (blk.c): runs scenario name if it is one of them
 * and returns 1 (most of them never return), returns 0 otherwise. */
int blk_scenario(const char *name);

#endif
