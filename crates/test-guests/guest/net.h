/*
 * The virtio-net driver of net.c as other scenario files use it: one
 * transmit buffer, the receive buffers posted once, polling.
 */
#ifndef EMBER_NET_H
#define EMBER_NET_H

#include "virtio.h"

/* The frame bytes of the transmit buffer (after the virtio-net header). */
u8 *net_tx_frame(void);

/*
 * Sends the transmit buffer (a zeroed header, then `len` frame bytes) and
 * waits for the device to return it. Returns 0x0 when returned, 0x1 on
 * timeout.
 */
u32 net_transmit(struct virtio_dev *d, u32 len);

/* Posts every receive buffer and notifies the device. */
void net_post_rx(struct virtio_dev *d);

/*
 * Waits (spending *budget polls) for a received frame; returns its bytes
 * (after the virtio-net header) and sets *len and the buffer's *id, to be
 * given back with net_repost. Returns 0 on a timeout or a used entry naming
 * no buffer of ours.
 */
const u8 *net_receive(struct virtio_dev *d, u64 *budget, u32 *len, u32 *id);

/* Gives receive buffer `id` back to the device. */
void net_repost(struct virtio_dev *d, u32 id);

/* The MAC of the device initialised last. */
const u8 *net_mac(void);

/* The mmds-http scenario (mmds.c) on an initialised device. */
void mmds_http(struct virtio_dev *d);

#endif
