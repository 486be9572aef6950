/*
 * The smp scenario: the boot processor starts the application processors
 * with INIT-SIPI-SIPI through a real-mode trampoline copied to 0x8000, and
 * every CPU then counts in its own counter, printing it under a spinlock.
 * APs left out at boot (smp.start=) are started when a byte arrives on COM1.
 */
#include "core.h"

#define TRAMPOLINE_ADDR 0x8000
#define SIPI_VECTOR (TRAMPOLINE_ADDR >> 12)

#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define ICR_INIT_ASSERT 0x4500
#define ICR_STARTUP 0x4600
#define ICR_PENDING 0x1000

#define AP_STACK_SIZE 4096
/* Each counter in its own 64-byte line: stride in u64 units. */
#define COUNTER_STRIDE 8
#define SMP_DEFAULT_EVERY 100000
/* Polls of the "alive" flag after a SIPI before trying again / giving up. */
#define AP_WAIT_POLLS 2000000

/*
 * The AP trampoline, assembled here and copied to TRAMPOLINE_ADDR. T(x) is
 * the address of x in the copy. Real mode -> 32-bit protected mode (own
 * GDT) -> long mode with the BSP's CR3, then smp_tramp_entry(smp_tramp_cpu)
 * on the stack smp_tramp_stack; the BSP fills those three before each SIPI.
 */
#define STR2(x) #x
#define STR(x) STR2(x)
#define T(x) "(" #x " - smp_tramp_start + " STR(TRAMPOLINE_ADDR) ")"

__asm__(".pushsection .rodata.trampoline, \"a\", @progbits\n"
	".balign 16\n"
	".globl smp_tramp_start\n"
	"smp_tramp_start:\n"
	".code16\n"
	"	cli\n"
	"	xorw %ax, %ax\n"
	"	movw %ax, %ds\n"
	"	lgdtl " T(tramp_gdt_desc) "\n"
	"	movl %cr0, %eax\n"
	"	andl $0x9fffffff, %eax\n" /* caches on (CD, NW off) */
	"	orl $1, %eax\n"		  /* PE */
	"	movl %eax, %cr0\n"
	"	ljmpl $0x08, $" T(tramp_32) "\n"
	".code32\n"
	"tramp_32:\n"
	"	movl $0x10, %eax\n"
	"	movl %eax, %ds\n"
	"	movl %eax, %es\n"
	"	movl %eax, %ss\n"
	"	movl %cr4, %eax\n"
	"	orl $0x20, %eax\n" /* PAE */
	"	movl %eax, %cr4\n"
	"	movl " T(smp_tramp_cr3) ", %eax\n"
	"	movl %eax, %cr3\n"
	"	movl $0xC0000080, %ecx\n" /* EFER.LME */
	"	rdmsr\n"
	"	orl $0x100, %eax\n"
	"	wrmsr\n"
	"	movl %cr0, %eax\n"
	"	orl $0x80000000, %eax\n" /* PG */
	"	movl %eax, %cr0\n"
	"	ljmpl $0x18, $" T(tramp_64) "\n"
	".code64\n"
	"tramp_64:\n"
	"	movl $0x10, %eax\n"
	"	movl %eax, %ds\n"
	"	movl %eax, %es\n"
	"	movl %eax, %ss\n"
	"	movl %eax, %fs\n"
	"	movl %eax, %gs\n"
	"	movq " T(smp_tramp_stack) ", %rsp\n"
	"	movl " T(smp_tramp_cpu) ", %edi\n"
	"	movq " T(smp_tramp_entry) ", %rax\n"
	"	call *%rax\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n"
	".balign 8\n"
	"tramp_gdt:\n"
	"	.quad 0\n"
	"	.quad 0x00CF9A000000FFFF\n" /* 0x08: 32-bit code */
	"	.quad 0x00CF92000000FFFF\n" /* 0x10: flat data */
	"	.quad 0x00AF9A000000FFFF\n" /* 0x18: 64-bit code */
	"tramp_gdt_desc:\n"
	"	.word 31\n"
	"	.long " T(tramp_gdt) "\n"
	".balign 8\n"
	".globl smp_tramp_stack\n"
	"smp_tramp_stack: .quad 0\n"
	".globl smp_tramp_entry\n"
	"smp_tramp_entry: .quad 0\n"
	".globl smp_tramp_cr3\n"
	"smp_tramp_cr3: .long 0\n"
	".globl smp_tramp_cpu\n"
	"smp_tramp_cpu: .long 0\n"
	".globl smp_tramp_end\n"
	"smp_tramp_end:\n"
	".popsection\n");

extern char smp_tramp_start[], smp_tramp_end[], smp_tramp_stack[],
	smp_tramp_entry[], smp_tramp_cr3[], smp_tramp_cpu[];

/* The address of trampoline symbol sym in the copy at TRAMPOLINE_ADDR. */
static volatile void *in_copy(const char *sym)
{
	return (volatile void *)(TRAMPOLINE_ADDR + (u64)(sym - smp_tramp_start));
}

static u8 ap_stack[MP_MAX_CPUS][AP_STACK_SIZE] __attribute__((aligned(16)));
static volatile u64 counters[MP_MAX_CPUS * COUNTER_STRIDE]
	__attribute__((aligned(64)));
static volatile u32 console_lock;
static volatile u32 ap_alive;
static u64 count_every;

static void lock(void)
{
	u32 taken = 1;

	for (;;) {
		__asm__ volatile("lock xchgl %0, %1"
				 : "+r"(taken), "+m"(console_lock)
				 :
				 : "memory");
		if (!taken)
			return;
		taken = 1;
		while (console_lock)
			__asm__ volatile("pause");
	}
}

static void unlock(void)
{
	__asm__ volatile("" : : : "memory");
	console_lock = 0;
}

/* Prints "cpuN" (N decimal, below 100). */
static void put_cpu(u32 cpu)
{
	con_puts("cpu");
	if (cpu >= 10)
		con_putc((char)('0' + cpu / 10));
	con_putc((char)('0' + cpu % 10));
}

static void announce(u32 cpu)
{
	lock();
	put_cpu(cpu);
	con_puts(": online");
	kv("apic", cpu_apic_id());
	con_putc('\n');
	unlock();
}

/* Counts forever; the BSP (cpu 0) also calls poll() after every line. */
static void __attribute__((noreturn)) count_forever(u32 cpu, void (*poll)(void))
{
	volatile u64 *counter = &counters[cpu * COUNTER_STRIDE];

	for (;;) {
		for (u64 i = 0; i < count_every; i++)
			(*counter)++;
		lock();
		put_cpu(cpu);
		con_putc('=');
		puthex(*counter);
		con_putc('\n');
		unlock();
		if (poll)
			poll();
	}
}

void smp_ap_main(u32 cpu) __attribute__((noreturn, used));

void smp_ap_main(u32 cpu)
{
	ap_alive = 1;
	announce(cpu);
	count_forever(cpu, 0);
}

/* Sends one IPI and waits for the LAPIC to deliver it. */
static void send_ipi(u32 apic, u32 icr_low)
{
	lapic_write(LAPIC_ICR_HIGH, apic << 24);
	lapic_write(LAPIC_ICR_LOW, icr_low);
	for (int i = 0; i < 100000; i++) {
		if (!(lapic_read(LAPIC_ICR_LOW) & ICR_PENDING))
			return;
	}
}

static int wait_alive(void)
{
	for (u64 i = 0; i < AP_WAIT_POLLS; i++) {
		if (ap_alive)
			return 1;
	}
	return 0;
}

/* INIT-SIPI(-SIPI) to the AP with APIC id apic, running as cpu. */
static int start_ap(u32 cpu, u32 apic)
{
	*(volatile u64 *)in_copy(smp_tramp_stack) =
		(u64)&ap_stack[cpu][AP_STACK_SIZE];
	*(volatile u32 *)in_copy(smp_tramp_cpu) = cpu;
	ap_alive = 0;
	send_ipi(apic, ICR_INIT_ASSERT);
	delay(1000);
	send_ipi(apic, ICR_STARTUP | SIPI_VECTOR);
	if (wait_alive())
		return 1;
	send_ipi(apic, ICR_STARTUP | SIPI_VECTOR);
	return wait_alive();
}

static u32 cpu_count;
static u8 cpu_apic[MP_MAX_CPUS];
static u32 cpus_started;

/* Starts the APs up to (not including) cpu index `until`. */
static void start_aps(u32 until)
{
	for (; cpus_started < until; cpus_started++) {
		u32 cpu = cpus_started;
		if (!start_ap(cpu, cpu_apic[cpu])) {
			lock();
			con_puts("smp: ");
			put_cpu(cpu);
			con_puts(" timeout");
			kv("apic", cpu_apic[cpu]);
			con_putc('\n');
			unlock();
		}
	}
	lock();
	con_puts("smp:");
	kv("started", cpus_started);
	con_putc('\n');
	unlock();
}

/* BSP: a byte on COM1 starts the APs left out at boot. */
static void poll_serial(void)
{
	if (cpus_started < cpu_count && con_getc_nowait() >= 0)
		start_aps(cpu_count);
}

/* Fills cpu_count and cpu_apic: the BSP first, then the MP table order. */
static void find_cpus(void)
{
	struct mp_cpus mp;
	u32 bsp = cpu_apic_id();
	u64 wanted;

	mptable_walk(&mp);
	wanted = param("smp.cpus=", mp.cpus ? mp.cpus : 1);
	if (wanted < 1)
		wanted = 1;
	if (wanted > MP_MAX_CPUS)
		wanted = MP_MAX_CPUS;
	cpu_count = 1;
	cpu_apic[0] = (u8)bsp;
	for (u32 i = 0; i < mp.cpus && i < MP_MAX_CPUS && cpu_count < wanted; i++) {
		if (mp.apic_id[i] != bsp)
			cpu_apic[cpu_count++] = mp.apic_id[i];
	}
	/* Beyond the MP table: APIC ids in order, skipping the BSP's. */
	for (u32 id = 0; cpu_count < wanted; id++) {
		int known = 0;
		for (u32 j = 0; j < cpu_count; j++)
			known |= cpu_apic[j] == id;
		if (!known)
			cpu_apic[cpu_count++] = (u8)id;
	}
}

static void __attribute__((noreturn)) scenario_smp(void)
{
	u64 start;
	u64 cr3;

	find_cpus();
	start = param("smp.start=", cpu_count - 1);
	if (start > cpu_count - 1)
		start = cpu_count - 1;
	count_every = param("smp.every=", SMP_DEFAULT_EVERY);

	memcpy((void *)TRAMPOLINE_ADDR, smp_tramp_start,
	       (u64)(smp_tramp_end - smp_tramp_start));
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	*(volatile u32 *)in_copy(smp_tramp_cr3) = (u32)cr3;
	*(volatile u64 *)in_copy(smp_tramp_entry) = (u64)smp_ap_main;
	lapic_enable();

	con_puts("smp:");
	kv("cpus", cpu_count);
	kv("start", start);
	kv("counters", (u64)counters);
	kv("stride", COUNTER_STRIDE * 8);
	con_putc('\n');
	announce(0);
	cpus_started = 1;
	start_aps(1 + (u32)start);
	count_forever(0, poll_serial);
}

int smp_scenario(const char *name)
{
	if (!streq(name, "smp"))
		return 0;
	scenario_smp();
}
