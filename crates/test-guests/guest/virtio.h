/*
 * The virtio-mmio driver core shared by blk.c, net.c and vsock.c (virtio
 * 1.x, modern virtio-mmio transport version 2, split virtqueues, polling):
 * device discovery from "virtio_mmio.device=" tokens, register access, the
 * initialisation sequence, configuration reads, the rings and the used-ring
 * wait, plus the output helpers of their scenarios. Implemented in virtio.c.
 *
 * One driver runs per boot (the scenario's), on one device at a time: the
 * device table and the rings are shared by the drivers and reused by every
 * device in turn. Everything runs with interrupts disabled: the driver
 * notifies the device and then polls the used ring with a bounded spin.
 * Rings live in .bss (guest-physical == virtual).
 */
#ifndef EMBER_VIRTIO_H
#define EMBER_VIRTIO_H

#include "core.h"

/* virtio-mmio registers (virtio 1.x, section 4.2.2). */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LOW 0x080
#define VM_QUEUE_DESC_HIGH 0x084
#define VM_QUEUE_DRIVER_LOW 0x090
#define VM_QUEUE_DRIVER_HIGH 0x094
#define VM_QUEUE_DEVICE_LOW 0x0a0
#define VM_QUEUE_DEVICE_HIGH 0x0a4
#define VM_CONFIG_GENERATION 0x0fc
#define VM_CONFIG 0x100

/* Descriptor flags. */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

/* Entries per queue, the most any driver asks for. */
#define VIRTQ_MAX 8
/* Queues per device, the most any driver uses (vsock: RX, TX, EVENT). */
#define VIRTIO_MAX_QUEUES 3

#define barrier() __asm__ volatile("" : : : "memory")

/* ------------------------------------------------------------------------ */
/* Split virtqueues                                                         */

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[VIRTQ_MAX];
	u16 used_event;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[VIRTQ_MAX];
	u16 avail_event;
};

/* One queue's rings, one 4 KiB-aligned block (desc: 16-byte aligned,
 * avail: 2, used: 4, virtio 1.x split queue). */
struct virtq {
	struct virtq_desc desc[VIRTQ_MAX];
	struct virtq_avail avail __attribute__((aligned(64)));
	struct virtq_used used __attribute__((aligned(64)));
} __attribute__((aligned(4096)));

/* The driver's view of one queue. */
struct virtq_ring {
	struct virtq *vq;
	u16 size; /* a power of two */
	u16 avail_idx;
	u16 used_idx;
};

/* Queue q of the device being driven, set up by virtio_init. */
extern struct virtq_ring virtio_rings[VIRTIO_MAX_QUEUES];

/* ------------------------------------------------------------------------ */
/* Drivers and devices                                                      */

struct virtio_dev;

/* What a driver wants from its devices. */
struct virtio_driver {
	const char *name;  /* prefix of its lines: "blk" gives "blk: none" */
	u32 device_id;     /* DeviceID of its devices */
	/*
	 * 1: every token is a device number (dev=, <name>.dev=), malformed
	 * tokens and other devices included; 0: only this driver's devices are
	 * numbered, 0, 1, ... in command-line order.
	 */
	int every_token;
	u32 features;      /* low feature word bits accepted when offered */
	u32 required;      /* low feature word bits it cannot do without */
	u32 nqueues;       /* queues set up, 0 .. nqueues - 1 */
	const u16 *qsize;  /* wanted size of each queue (a power of two) */
	u32 qmin;          /* smallest acceptable queue size */
	/* Reads the configuration space before DRIVER_OK (may be 0). */
	void (*read_config)(const struct virtio_dev *d);
};

/* One "virtio_mmio.device=" token. */
struct virtio_dev {
	u32 index;   /* the device number (see every_token) */
	int match;   /* usable, MagicValue "virt" and the driver's DeviceID */
	u64 base;
	u32 irq;
	u32 feat_lo, feat_hi; /* offered features, read by virtio_init */
};

static inline u32 virtio_rd(const struct virtio_dev *d, u32 off)
{
	return *(const volatile u32 *)(d->base + off);
}

static inline void virtio_wr(const struct virtio_dev *d, u32 off, u32 val)
{
	*(volatile u32 *)(d->base + off) = val;
}

/*
 * Collects the "virtio_mmio.device=<size>@<addr>:<irq>[:<id>]" tokens (at
 * most 32) for drv. A device is probed (MagicValue, DeviceID) only if its
 * token parses and its register window lies in [1 MiB, 4 GiB) (the
 * identity-mapped range) and is 4-byte aligned.
 */
void virtio_discover(const struct virtio_driver *drv);

/*
 * The device selected by the numeric parameter key (a device number), or
 * the first matching device without it. Prints "<name>: none" and finishes
 * if there is none.
 */
struct virtio_dev *virtio_select(const char *key);

/*
 * Calls fn(d, arg) for every matching device in order, resetting the device
 * after each call; prints "<name>: none" if there is none.
 */
void virtio_each(void (*fn)(struct virtio_dev *d, void *arg), void *arg);

/*
 * Full virtio 1.x initialisation (section 3.1.1 with the MMIO specifics of
 * 4.2.3): reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK, the
 * queues, the driver's config read, DRIVER_OK. Prints init-failed and
 * finishes on any failure.
 */
void virtio_init(struct virtio_dev *d);

/* Writes 0 to Status and waits (bounded) until it reads back as 0. */
int virtio_reset(struct virtio_dev *d);

/* Prints "<name>: init-failed dev=.. step=<step> status=..", sets FAILED
 * in Status and finishes. */
void virtio_init_failed(struct virtio_dev *d, const char *step)
	__attribute__((noreturn));

/* Calls read(d, arg) until ConfigGeneration reads the same before and after
 * (at most 10 times). */
void virtio_config_read(const struct virtio_dev *d,
			void (*read)(const struct virtio_dev *d, void *arg),
			void *arg);

/* A 64-bit config field at off, two 32-bit reads, generation-checked. */
u64 virtio_config_u64(const struct virtio_dev *d, u32 off);

/* ------------------------------------------------------------------------ */
/* Queue operations                                                         */

/* Writes descriptor i of queue q. */
void virtq_desc(u32 q, u16 i, const void *addr, u32 len, u16 flags, u16 next);

/* Makes descriptor head available on queue q (without notifying). */
void virtq_add(u32 q, u16 head);

/* Makes descriptor i of queue q a device-writable buffer of len bytes at
 * buf and available (without notifying). */
void virtq_post(u32 q, u16 i, void *buf, u32 len);

/* Writes q to QueueNotify. */
void virtio_notify(const struct virtio_dev *d, u32 q);

/* virtq_add and virtio_notify. */
void virtq_publish(const struct virtio_dev *d, u32 q, u16 head);

/*
 * Polls queue q's used ring for a new entry, at most about *budget times
 * (*budget loses the polls spent). Returns 1 with the entry's id and len,
 * after writing a non-zero InterruptStatus back to InterruptACK; 0 on
 * timeout.
 */
int virtq_wait_used(const struct virtio_dev *d, u32 q, u64 *budget, u32 *id,
		    u32 *len);

/* Publishes head on queue q and waits up to spins polls for the device to
 * use it: 1 if it did. */
int virtq_submit(const struct virtio_dev *d, u32 q, u16 head, u64 spins);

/* ------------------------------------------------------------------------ */
/* Helpers of the scenarios                                                 */

/* The index of name in names[0..n), or -1. */
int name_index(const char *name, const char *const *names, u32 n);

/* 32-bit FNV-1a (offset basis 0x811c9dc5, prime 0x01000193). */
u32 fnv1a(const u8 *p, u32 n);

/* Two lowercase hex digits per byte. */
void put_hexbytes(const u8 *p, u32 n);

/* Bytes 0x21..0x7e as they are, anything else as '?'. */
void put_printable(const u8 *p, u32 n);

#endif
