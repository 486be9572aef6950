/*
 * The snapcount scenario, for snapshot tests: a count that never ends,
 * kept in a fixed guest-physical page, and a region of pages holding a
 * known pattern that the guest re-verifies ('v' on COM1) or partly rewrites
 * ('d', for dirty-page tracking) on request.
 */
#include "core.h"

#define PAGE_SIZE 4096
#define PAGE_QWORDS (PAGE_SIZE / 8)
#define SNAP_DEFAULT_BASE 0x2000000
#define SNAP_DEFAULT_PAGES 16
#define SNAP_MAX_PAGES 1024
#define SNAP_DEFAULT_DIRTY 4

/* Qword 0: the count of count= lines printed so far. */
static volatile u64 count_page[PAGE_QWORDS] __attribute__((aligned(PAGE_SIZE)));

static u64 region_base;
static u64 region_pages;
static u32 page_gen[SNAP_MAX_PAGES];
static u64 dirty_cursor;

/* The pattern qword at guest-physical addr for a page of generation gen. */
static u64 pattern(u64 addr, u32 gen)
{
	return (addr ^ ((u64)gen << 48)) * 0x9E3779B97F4A7C15ul + gen;
}

static volatile u64 *page_at(u64 page)
{
	return (volatile u64 *)(region_base + page * PAGE_SIZE);
}

static void fill_page(u64 page)
{
	volatile u64 *q = page_at(page);
	u64 addr = (u64)q;

	for (u64 i = 0; i < PAGE_QWORDS; i++)
		q[i] = pattern(addr + 8 * i, page_gen[page]);
}

/* Sum (wrapping) of every qword of the region; *bad counts the pages that
 * differ from their pattern. */
static u64 region_sum(u64 *bad)
{
	u64 sum = 0;

	*bad = 0;
	for (u64 p = 0; p < region_pages; p++) {
		volatile u64 *q = page_at(p);
		int differs = 0;
		for (u64 i = 0; i < PAGE_QWORDS; i++) {
			u64 v = q[i];
			sum += v;
			differs |= v != pattern((u64)q + 8 * i, page_gen[p]);
		}
		*bad += (u64)differs;
	}
	return sum;
}

static void verify(void)
{
	u64 bad;
	u64 sum = region_sum(&bad);

	con_puts("pages: verify");
	kv("n", region_pages);
	kv("bad", bad);
	kv("sum", sum);
	con_putc('\n');
}

/* Rewrites the next n pages (round robin) with their next generation. */
static void dirty(u64 n)
{
	for (u64 i = 0; i < n; i++) {
		u64 p = dirty_cursor;
		dirty_cursor = (dirty_cursor + 1) % region_pages;
		page_gen[p]++;
		fill_page(p);
		con_puts("dirty");
		kv("addr", (u64)page_at(p));
		kv("gen", page_gen[p]);
		con_putc('\n');
	}
	con_puts("dirty:");
	kv("n", n);
	con_putc('\n');
}

static void __attribute__((noreturn)) scenario_snapcount(void)
{
	u64 wait = count_delay();
	u64 dirty_n = param("snap.dirty=", SNAP_DEFAULT_DIRTY);
	u64 bad;

	region_base = param("snap.base=", SNAP_DEFAULT_BASE) & ~(u64)(PAGE_SIZE - 1);
	region_pages = param("snap.pages=", SNAP_DEFAULT_PAGES);
	if (region_pages < 1)
		region_pages = 1;
	if (region_pages > SNAP_MAX_PAGES)
		region_pages = SNAP_MAX_PAGES;
	if (dirty_n > region_pages)
		dirty_n = region_pages;

	con_puts("snapcount:");
	kv("counter", (u64)count_page);
	con_putc('\n');
	for (u64 p = 0; p < region_pages; p++)
		fill_page(p);
	con_puts("pages:");
	kv("base", region_base);
	kv("n", region_pages);
	kv("sum", region_sum(&bad));
	con_putc('\n');

	for (;;) {
		con_puts("count=");
		puthex(count_page[0]);
		con_putc('\n');
		count_page[0]++;
		delay(wait);
		int c = con_getc_nowait();
		if (c == 'v')
			verify();
		else if (c == 'd')
			dirty(dirty_n);
	}
}

int snap_scenario(const char *name)
{
	if (!streq(name, "snapcount"))
		return 0;
	scenario_snapcount();
}
