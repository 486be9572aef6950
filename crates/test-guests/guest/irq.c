/*
 * Interrupts and time: the local APIC helpers, a 64-bit IDT with interrupt
 * gates, and the ticks scenario (LAPIC timer interrupts, TSC and kvmclock
 * monotonicity), for tests that check a guest keeps time across a
 * save/restore.
 */
#include "core.h"

#define LAPIC_EOI 0xB0
#define LAPIC_SVR 0xF0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_DIVIDE 0x3E0

#define SVR_ENABLE 0x100
#define SPURIOUS_VECTOR 0xFF
#define LVT_MASKED 0x10000
#define LVT_PERIODIC 0x20000
#define DIVIDE_BY_1 0xB
#define TIMER_VECTOR 0x40

#define IDT_VECTORS 256
#define GATE_INTERRUPT_PRESENT 0x8E

#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define KVM_FEATURE_CLOCKSOURCE2 (1u << 3)

u32 lapic_read(u32 reg)
{
	return *(volatile u32 *)(LAPIC_BASE + reg);
}

void lapic_write(u32 reg, u32 val)
{
	*(volatile u32 *)(LAPIC_BASE + reg) = val;
}

void lapic_enable(void)
{
	lapic_write(LAPIC_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
}

u32 cpu_apic_id(void)
{
	u32 a, b, c, d;

	cpuid(1, 0, &a, &b, &c, &d);
	return b >> 24;
}

/* Timer interrupts taken so far (incremented by irq_timer_entry). */
volatile u64 irq_ticks __attribute__((used));

void irq_unexpected(void) __attribute__((noreturn, used));

void irq_unexpected(void)
{
	con_puts("irq: unexpected\n");
	park();
}

/*
 * The interrupt entries. The timer entry counts, acknowledges the LAPIC
 * (EOI, through a register: an absolute disp32 would be sign-extended) and
 * returns; the spurious vector needs no EOI; every other vector (exceptions
 * included) reports and parks.
 */
__asm__(".pushsection .text.irq, \"ax\", @progbits\n"
	".globl irq_timer_entry\n"
	"irq_timer_entry:\n"
	"	pushq %rax\n"
	"	incq irq_ticks(%rip)\n"
	"	movl $0xfee000b0, %eax\n"
	"	movl $0, (%rax)\n"
	"	popq %rax\n"
	"	iretq\n"
	".globl irq_spurious_entry\n"
	"irq_spurious_entry:\n"
	"	iretq\n"
	".globl irq_unexpected_entry\n"
	"irq_unexpected_entry:\n"
	"	andq $-16, %rsp\n"
	"	call irq_unexpected\n"
	".popsection\n");

extern char irq_timer_entry[], irq_spurious_entry[], irq_unexpected_entry[];

static u64 idt[2 * IDT_VECTORS] __attribute__((aligned(16)));

static void set_gate(u32 vector, const void *handler, u16 cs)
{
	u64 h = (u64)handler;

	idt[2 * vector] = (h & 0xFFFF) | ((u64)cs << 16) |
			  ((u64)GATE_INTERRUPT_PRESENT << 40) |
			  (((h >> 16) & 0xFFFF) << 48);
	idt[2 * vector + 1] = h >> 32;
}

/* Loads an IDT whose gates use the current code segment. */
static void idt_install(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) desc = {sizeof(idt) - 1, (u64)idt};
	u16 cs;

	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (u32 v = 0; v < IDT_VECTORS; v++)
		set_gate(v, irq_unexpected_entry, cs);
	set_gate(TIMER_VECTOR, irq_timer_entry, cs);
	set_gate(SPURIOUS_VECTOR, irq_spurious_entry, cs);
	__asm__ volatile("lidt %0" : : "m"(desc) : "memory");
}

/* The 8259 PICs stay unprogrammed: mask every line so none fires. */
static void pic_mask_all(void)
{
	outb(0x21, 0xFF);
	outb(0xA1, 0xFF);
}

/* pvclock_vcpu_time_info, filled in by KVM. */
struct pvclock {
	u32 version;
	u32 pad0;
	u64 tsc_timestamp;
	u64 system_time;
	u32 tsc_to_system_mul;
	signed char tsc_shift;
	u8 flags;
	u8 pad[2];
};

static volatile struct pvclock kvmclock __attribute__((aligned(64)));

/* Registers the kvmclock area if CPUID advertises it; returns 1 if so. */
static int kvmclock_enable(void)
{
	u32 max, sig1, sig2, sig3, features, b, c, d;
	u32 ecx, edx, a1;

	cpuid(1, 0, &a1, &b, &ecx, &edx);
	if (!(ecx >> 31))
		return 0;
	cpuid(0x40000000, 0, &max, &sig1, &sig2, &sig3);
	/* "KVMKVMKVM\0\0\0" */
	if (sig1 != 0x4b4d564b || sig2 != 0x564b4d56 || sig3 != 0x4d ||
	    max < 0x40000001)
		return 0;
	cpuid(0x40000001, 0, &features, &b, &c, &d);
	if (!(features & KVM_FEATURE_CLOCKSOURCE2))
		return 0;
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (u64)&kvmclock | 1);
	return 1;
}

/* Nanoseconds of the kvmclock (version-checked read). */
static u64 kvmclock_ns(void)
{
	u32 version;
	u64 ns;

	do {
		version = kvmclock.version;
		__asm__ volatile("" : : : "memory");
		u64 delta = rdtsc() - kvmclock.tsc_timestamp;
		signed char shift = kvmclock.tsc_shift;
		if (shift < 0)
			delta >>= -shift;
		else
			delta <<= shift;
		ns = kvmclock.system_time +
		     (u64)(((unsigned __int128)delta *
			    kvmclock.tsc_to_system_mul) >> 32);
		__asm__ volatile("" : : : "memory");
	} while ((version & 1) || version != kvmclock.version);
	return ns;
}

#define TICKS_DEFAULT_COUNT 10000000
#define TICKS_DEFAULT_EVERY 10

static void scenario_ticks(void)
{
	u64 initial = param("ticks.count=", TICKS_DEFAULT_COUNT);
	u64 every = param("ticks.every=", TICKS_DEFAULT_EVERY);
	u64 lines = param("ticks.lines=", 0);
	int have_clock;
	u64 last_tsc, last_ns = 0;

	if (!every)
		every = 1;
	if (!initial || initial > 0xFFFFFFFF)
		initial = TICKS_DEFAULT_COUNT;
	have_clock = kvmclock_enable();
	pic_mask_all();
	idt_install();
	lapic_enable();
	lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_1);
	lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR | LVT_PERIODIC);
	lapic_write(LAPIC_TIMER_INITIAL, (u32)initial);

	con_puts("ticks: running");
	kv("vector", TIMER_VECTOR);
	kv("count", initial);
	kv("every", every);
	kv("kvmclock", have_clock);
	kv("ticks_addr", (u64)&irq_ticks);
	con_putc('\n');

	last_tsc = rdtsc();
	if (have_clock)
		last_ns = kvmclock_ns();
	__asm__ volatile("sti");
	for (u64 printed = 0, next = every; !lines || printed < lines;) {
		__asm__ volatile("hlt" : : : "memory");
		u64 now = irq_ticks;
		if (now < next)
			continue;
		next = now + every;
		u64 tsc = rdtsc();
		if (tsc < last_tsc) {
			con_puts("tsc: backwards");
			kv("last", last_tsc);
			kv("now", tsc);
			con_putc('\n');
			park();
		}
		last_tsc = tsc;
		con_puts("tick=");
		puthex(now);
		kv("tsc", tsc);
		if (have_clock) {
			u64 ns = kvmclock_ns();
			if (ns < last_ns) {
				con_puts("\nkvmclock: backwards");
				kv("last", last_ns);
				kv("now", ns);
				con_putc('\n');
				park();
			}
			last_ns = ns;
			kv("clock", ns);
		}
		con_putc('\n');
		printed++;
	}
	__asm__ volatile("cli");
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
}

int ticks_scenario(const char *name)
{
	if (!streq(name, "ticks"))
		return 0;
	scenario_ticks();
	return 1;
}
