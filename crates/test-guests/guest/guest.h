/* Shared definitions for the Ember test guests (freestanding, x86_64). */
#ifndef EMBER_GUEST_H
#define EMBER_GUEST_H

/* Boot protocol identifiers passed from the entry stubs to guest_main. */
#define PROTO_LINUX64 0
#define PROTO_PVH 1

/* Link/load address of every image (1 MiB). */
#define GUEST_LOAD_ADDR 0x100000

/* Offset of the 64-bit entry point from the load address (bzImage rule). */
#define GUEST_ENTRY64_OFFSET 0x200

/* Size of the boot stack in .bss. */
#define GUEST_STACK_SIZE 0x4000

/* Selectors of the GDT loaded by the PVH stub. */
#define GDT_CODE64 0x08
#define GDT_DATA 0x10

#endif
