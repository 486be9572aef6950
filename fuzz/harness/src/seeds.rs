//! Seed corpora, built from well-formed inputs: virtio-block requests of
//! every type laid out in real virtqueues, a driver's whole virtio-mmio
//! handshake, the README's config file and Firecracker-style configs, one
//! request per API route, and minimal kernel images of each format (the
//! script adds the real test-guest kernels). Each seed is also a regression
//! input: `cargo test` in this crate runs them all through their harnesses.

use ember_api::routes::{Method, ROUTES};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_STATUS,
};

use crate::block::{self, flags, SeedBuilder};
use crate::mmio;

/// A named seed.
pub type Seed = (String, Vec<u8>);

const NEXT: u16 = 1;
const W: u16 = 2;
const INDIRECT: u16 = 4;

/// Every target's seeds, as (target, seeds).
pub fn all(readme: Option<&str>) -> Vec<(&'static str, Vec<Seed>)> {
    vec![
        ("virtio_block", virtio_block()),
        ("virtio_mmio", virtio_mmio()),
        ("config_file", config_file(readme)),
        ("api_request", api_request()),
        ("api_http", api_http()),
        ("kernel_image", kernel_image()),
        ("vsock_packet", vsock_packet()),
        ("virtio_net_tx", virtio_net_tx()),
        ("virtio_rng", virtio_rng()),
        ("mmds_frames", mmds_frames()),
        ("balloon_pfns", balloon_pfns()),
        ("snapshot_state", snapshot_state()),
    ]
}

fn seed(name: &str, bytes: Vec<u8>) -> Seed {
    (name.to_owned(), bytes)
}

/// A read of `lens` buffers at `sector`; returns the chain's descriptors.
fn read_req(b: &mut SeedBuilder, sector: u64, lens: &[u32]) -> Vec<(u64, u32, u16)> {
    let hdr = b.header(VIRTIO_BLK_T_IN, sector);
    let mut descs = vec![(u64::from(hdr), 16, 0)];
    for &len in lens {
        descs.push((u64::from(b.buffer(len)), len, W));
    }
    descs.push((u64::from(b.buffer(1)), 1, W));
    descs
}

fn write_req(b: &mut SeedBuilder, sector: u64, data: &[u8]) -> Vec<(u64, u32, u16)> {
    let hdr = b.header(VIRTIO_BLK_T_OUT, sector);
    let buf = b.buffer(data.len() as u32);
    b.write_mem(buf, data);
    vec![
        (u64::from(hdr), 16, 0),
        (u64::from(buf), data.len() as u32, 0),
        (u64::from(b.buffer(1)), 1, W),
    ]
}

fn simple_req(b: &mut SeedBuilder, kind: u32, data_len: u32) -> Vec<(u64, u32, u16)> {
    let hdr = b.header(kind, 0);
    let mut descs = vec![(u64::from(hdr), 16, 0)];
    if data_len > 0 {
        descs.push((u64::from(b.buffer(data_len)), data_len, W));
    }
    descs.push((u64::from(b.buffer(1)), 1, W));
    descs
}

/// virtio-block requests in a queue.
pub fn virtio_block() -> Vec<Seed> {
    let mut seeds = Vec::new();

    let mut b = SeedBuilder::new(0, 16, 0, 4);
    let d = read_req(&mut b, 2, &[1024, 512]);
    b.chain(&d).kick();
    seeds.push(seed("read-scattered", b.finish()));

    let mut b = SeedBuilder::new(flags::WRITEBACK, 16, 0, 4);
    let d = write_req(&mut b, 1, &[0x5a; 1024]);
    b.chain(&d);
    let d = read_req(&mut b, 1, &[1024]);
    b.chain(&d);
    let d = simple_req(&mut b, VIRTIO_BLK_T_FLUSH, 0);
    b.chain(&d);
    let d = simple_req(&mut b, VIRTIO_BLK_T_GET_ID, 20);
    b.chain(&d);
    let d = simple_req(&mut b, 0x1234, 0);
    b.chain(&d).kick();
    seeds.push(seed("write-read-flush-getid-unsupported", b.finish()));

    let mut b = SeedBuilder::new(flags::READ_ONLY, 8, 0, 3);
    let d = write_req(&mut b, 0, &[9; 512]);
    b.chain(&d);
    let d = read_req(&mut b, 0, &[512]);
    b.chain(&d).kick();
    seeds.push(seed("read-only-drive", b.finish()));

    let mut b = SeedBuilder::new(flags::EVENT_IDX, 16, 0, 4);
    b.used_event(0);
    for sector in 0..3 {
        let d = read_req(&mut b, sector, &[512]);
        b.chain(&d);
    }
    b.kick().used_event(5);
    let d = read_req(&mut b, 4, &[512]);
    b.chain(&d).kick();
    seeds.push(seed("event-idx", b.finish()));

    // An indirect table holding header, data and status.
    let mut b = SeedBuilder::new(0, 16, 0, 4);
    let hdr = b.header(VIRTIO_BLK_T_IN, 3);
    let data = b.buffer(512);
    let status = b.buffer(1);
    let table = b.buffer(48);
    b.desc_at(table, 0, (u64::from(hdr), 16, NEXT, 1))
        .desc_at(table, 1, (u64::from(data), 512, W | NEXT, 2))
        .desc_at(table, 2, (u64::from(status), 1, W, 0))
        .chain(&[(u64::from(table), 48, INDIRECT)])
        .kick();
    seeds.push(seed("indirect", b.finish()));

    // Any layout: header and data in one buffer, data and status in another.
    let mut b = SeedBuilder::new(0, 16, 0, 4);
    let hdr = b.header(VIRTIO_BLK_T_OUT, 4);
    b.write_mem(hdr + 16, &[7; 512]);
    let status = b.buffer(1);
    b.chain(&[(u64::from(hdr), 16 + 512, 0), (u64::from(status), 1, W)]);
    let hdr = b.header(VIRTIO_BLK_T_IN, 4);
    let buf = b.buffer(513);
    b.chain(&[(u64::from(hdr), 16, 0), (u64::from(buf), 513, W)])
        .kick();
    seeds.push(seed("any-layout", b.finish()));

    // Out of range and partial sectors, on a disk with a partial last sector.
    let mut b = SeedBuilder::new(0, 8, 100, 4);
    for (sector, len) in [(7u64, 1024u32), (8, 512), (u64::MAX, 512), (0, 100)] {
        let d = read_req(&mut b, sector, &[len]);
        b.chain(&d);
    }
    let d = write_req(&mut b, 7, &[1; 1024]);
    b.chain(&d).kick();
    seeds.push(seed("out-of-range", b.finish()));

    // Malformed chains: a loop, no status, a head past the queue, a readable
    // buffer after a writable one, a buffer outside memory.
    let mut b = SeedBuilder::new(0, 8, 0, 4);
    let hdr = b.header(VIRTIO_BLK_T_IN, 0);
    let st = b.buffer(1);
    let first = b.reserve(2);
    b.desc_at(
        block::SEED_DESC,
        first,
        (u64::from(hdr), 16, NEXT, first + 1),
    )
    .desc_at(
        block::SEED_DESC,
        first + 1,
        (u64::from(st), 1, W | NEXT, first),
    )
    .publish(first)
    .publish(40);
    b.chain(&[(u64::from(hdr), 16, 0)]);
    b.chain(&[
        (u64::from(hdr), 16, 0),
        (u64::from(st), 1, W),
        (u64::from(hdr), 16, 0),
    ]);
    b.chain(&[
        (u64::from(hdr), 16, 0),
        (0xfff0_0000, 512, W),
        (u64::from(st), 1, W),
    ]);
    b.kick();
    seeds.push(seed("malformed", b.finish()));

    let mut b = SeedBuilder::new(0, 8, 0, 4);
    let d = read_req(&mut b, 0, &[512]);
    b.chain(&d).avail_idx(40).kick().avail_idx(1).kick();
    seeds.push(seed("avail-index-too-far", b.finish()));

    // A buffer spanning the memory hole.
    let mut b = SeedBuilder::new(flags::HOLE, 8, 0, 4);
    let hdr = b.header(VIRTIO_BLK_T_IN, 0);
    let st = b.buffer(1);
    b.chain(&[
        (u64::from(hdr), 16, 0),
        (block::HOLE.0 - 0x100, 0x200, W),
        (u64::from(st), 1, W),
    ])
    .kick();
    seeds.push(seed("hole", b.finish()));

    // Reset and reuse.
    let mut b = SeedBuilder::new(0, 8, 0, 2);
    let d = read_req(&mut b, 0, &[512]);
    b.chain(&d).kick().reset();
    let d = write_req(&mut b, 1, &[3; 512]);
    b.chain(&d).kick();
    seeds.push(seed("reset", b.finish()));

    // A full 256-entry queue of 2-descriptor flushes, wrapping once.
    let mut b = SeedBuilder::new(0, 4, 0, 8);
    for round in 0..2 {
        for _ in 0..128 {
            let d = simple_req(&mut b, VIRTIO_BLK_T_FLUSH, 0);
            b.chain(&d);
        }
        b.kick();
        let _ = round;
    }
    seeds.push(seed("full-queue", b.finish()));

    seeds
}

fn le_desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&addr.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&next.to_le_bytes());
    v
}

const VERSION_1_HIGH: u32 = 1; // VIRTIO_F_VERSION_1 (bit 32), in word 1
const EVENT_IDX_LOW: u32 = 1 << 29; // VIRTIO_RING_F_EVENT_IDX
const Q_DESC: u32 = 0x1000;
const Q_AVAIL: u32 = 0x2000;
const Q_USED: u32 = 0x3000;

fn handshake(b: &mut mmio::SeedBuilder, low_features: u32) {
    b.reg(VIRTIO_MMIO_STATUS, 0)
        .reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE)
        .get(VIRTIO_MMIO_STATUS)
        .reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        )
        .reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0)
        .get(VIRTIO_MMIO_DEVICE_FEATURES)
        .reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1)
        .get(VIRTIO_MMIO_DEVICE_FEATURES)
        .reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0)
        .reg(VIRTIO_MMIO_DRIVER_FEATURES, low_features)
        .reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1)
        .reg(VIRTIO_MMIO_DRIVER_FEATURES, VERSION_1_HIGH)
        .reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        )
        .get(VIRTIO_MMIO_STATUS);
}

fn setup_queue(b: &mut mmio::SeedBuilder, size: u32, desc: u32) {
    b.reg(VIRTIO_MMIO_QUEUE_SEL, 0)
        .get(VIRTIO_MMIO_QUEUE_NUM_MAX)
        .reg(VIRTIO_MMIO_QUEUE_NUM, size)
        .reg(VIRTIO_MMIO_QUEUE_DESC_LOW, desc)
        .reg(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0)
        .reg(VIRTIO_MMIO_QUEUE_AVAIL_LOW, Q_AVAIL)
        .reg(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0)
        .reg(VIRTIO_MMIO_QUEUE_USED_LOW, Q_USED)
        .reg(VIRTIO_MMIO_QUEUE_USED_HIGH, 0)
        .reg(VIRTIO_MMIO_QUEUE_READY, 1)
        .get(VIRTIO_MMIO_QUEUE_READY);
}

fn driver_ok(b: &mut mmio::SeedBuilder) {
    b.reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK,
    )
    .get(VIRTIO_MMIO_STATUS);
}

/// A read request at descriptor 0 of the queue at [`Q_DESC`], published.
fn mmio_request(b: &mut mmio::SeedBuilder, kind: u32, avail_idx: u16) {
    let (hdr, data, status) = (0x1_0000u64, 0x1_1000u64, 0x1_2000u64);
    let mut header = kind.to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&1u64.to_le_bytes());
    let mut table = le_desc(hdr, 16, NEXT, 1);
    table.extend(le_desc(data, 512, W | NEXT, 2));
    table.extend(le_desc(status, 1, W, 0));
    let mut avail = 0u16.to_le_bytes().to_vec();
    avail.extend_from_slice(&avail_idx.to_le_bytes());
    for _ in 0..avail_idx {
        avail.extend_from_slice(&0u16.to_le_bytes());
    }
    b.mem(hdr as u32, &header)
        .mem(Q_DESC, &table)
        .mem(Q_AVAIL, &avail);
}

/// A driver's register accesses.
pub fn virtio_mmio() -> Vec<Seed> {
    let mut seeds = Vec::new();

    let mut b = mmio::SeedBuilder::new(0);
    handshake(&mut b, EVENT_IDX_LOW);
    setup_queue(&mut b, 16, Q_DESC);
    driver_ok(&mut b);
    mmio_request(&mut b, VIRTIO_BLK_T_IN, 1);
    b.reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0)
        .run()
        .get(VIRTIO_MMIO_INTERRUPT_STATUS)
        .reg(VIRTIO_MMIO_INTERRUPT_ACK, 1)
        .get(VIRTIO_MMIO_INTERRUPT_STATUS);
    for width in [1, 2, 4, 8] {
        b.read(VIRTIO_MMIO_CONFIG as u16, width)
            .read(VIRTIO_MMIO_CONFIG as u16 + 12, width);
    }
    b.reg(VIRTIO_MMIO_STATUS, 0).get(VIRTIO_MMIO_STATUS);
    seeds.push(seed("handshake-request-reset", b.finish()));

    let mut b = mmio::SeedBuilder::new(0);
    for offset in (0..0x100u16).step_by(4) {
        b.read(offset, 4);
    }
    for (offset, width) in [(0u16, 1usize), (0, 2), (0, 8), (2, 4), (0x71, 1), (0xfc, 2)] {
        b.read(offset, width);
    }
    b.read(0x200, 4).read(0xffc, 4);
    seeds.push(seed("every-register", b.finish()));

    // Out of order and refused steps.
    let mut b = mmio::SeedBuilder::new(FLAG_HOLE_AND_RO);
    b.reg(VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX)
        .reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER)
        .get(VIRTIO_MMIO_STATUS)
        .reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK)
        .reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    handshake(&mut b, u32::MAX);
    b.reg(VIRTIO_MMIO_QUEUE_NUM, 12)
        .get(VIRTIO_MMIO_STATUS)
        .reg(VIRTIO_MMIO_STATUS, 0);
    handshake(&mut b, 0);
    // A queue across the memory hole, then DRIVER_OK: activation fails.
    setup_queue(&mut b, 256, (crate::block::HOLE.0 - 0x800) as u32);
    driver_ok(&mut b);
    b.get(VIRTIO_MMIO_INTERRUPT_STATUS)
        .reg(VIRTIO_MMIO_STATUS, 0)
        .reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED,
        )
        .get(VIRTIO_MMIO_STATUS)
        .write(VIRTIO_MMIO_CONFIG as u16, 4, 0xdead_beef)
        .write(VIRTIO_MMIO_STATUS as u16, 1, 0);
    seeds.push(seed("refused-steps", b.finish()));

    // Requests made available before DRIVER_OK, then a second queue selection.
    let mut b = mmio::SeedBuilder::new(0);
    handshake(&mut b, 0);
    setup_queue(&mut b, 8, Q_DESC);
    mmio_request(&mut b, VIRTIO_BLK_T_GET_ID, 1);
    driver_ok(&mut b);
    b.run()
        .reg(VIRTIO_MMIO_QUEUE_SEL, 1)
        .get(VIRTIO_MMIO_QUEUE_NUM_MAX)
        .get(VIRTIO_MMIO_QUEUE_READY)
        .reg(VIRTIO_MMIO_QUEUE_NOTIFY, 1)
        .reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0)
        .run();
    seeds.push(seed("early-request", b.finish()));

    seeds
}

const FLAG_HOLE_AND_RO: u8 = mmio::FLAG_HOLE | mmio::FLAG_READ_ONLY;

/// The ```json blocks of a Markdown file.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```json") => current = Some(String::new()),
            (Some(block), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Config files: the README's examples and Firecracker-style ones.
pub fn config_file(readme: Option<&str>) -> Vec<Seed> {
    let mut seeds: Vec<Seed> = readme
        .map(json_blocks)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, text)| seed(&format!("readme-{i}"), text.into_bytes()))
        .collect();
    let texts: &[(&str, &str)] = &[
        (
            "minimal",
            r#"{"boot-source": {"kernel_image_path": "vmlinux"}}"#,
        ),
        (
            "firecracker-full",
            r#"{
  "boot-source": {
    "kernel_image_path": "vmlinux.bin",
    "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
    "initrd_path": null
  },
  "drives": [
    {
      "drive_id": "rootfs",
      "path_on_host": "rootfs.ext4",
      "is_root_device": true,
      "partuuid": null,
      "is_read_only": false,
      "cache_type": "Unsafe",
      "io_engine": "Sync",
      "rate_limiter": {
        "bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100},
        "ops": {"size": 100, "refill_time": 1000}
      }
    },
    {
      "drive_id": "data_1",
      "path_on_host": "data.img",
      "is_root_device": false,
      "is_read_only": true,
      "cache_type": "Writeback"
    }
  ],
  "machine-config": {
    "vcpu_count": 2,
    "mem_size_mib": 1024,
    "smt": false,
    "track_dirty_pages": false,
    "huge_pages": "None",
    "cpu_template": "None"
  }
}"#,
        ),
        (
            "unsupported-sections",
            r#"{"boot-source": {"kernel_image_path": "k"},
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
  "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
  "logger": {"log_path": "/tmp/log"}, "metrics": {"metrics_path": "/tmp/m"},
  "mmds-config": {"network_interfaces": ["eth0"]}, "balloon": {"amount_mib": 0},
  "entropy": {}, "cpu-config": {}}"#,
        ),
        (
            "invalid-values",
            r#"{"boot-source": {"kernel_image_path": "k"},
  "machine-config": {"vcpu_count": 0, "mem_size_mib": 0, "smt": true, "huge_pages": "2M", "cpu_template": "T2"},
  "drives": [
    {"drive_id": "a", "path_on_host": "x", "is_root_device": true, "is_read_only": false},
    {"drive_id": "a", "path_on_host": "y", "is_root_device": true, "is_read_only": false, "io_engine": "Async"},
    {"drive_id": "bad id!", "path_on_host": "z", "is_root_device": false, "is_read_only": false}
  ]}"#,
        ),
        (
            "unknown-field",
            r#"{"boot-source": {"kernel_image_path": "k", "turbo": true}}"#,
        ),
        (
            "malformed",
            "{\n  \"boot-source\": {\n    \"kernel_image_path\": \"k\",\n  }\n}",
        ),
        (
            "no-kernel",
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#,
        ),
    ];
    seeds.extend(
        texts
            .iter()
            .map(|(name, text)| seed(name, text.as_bytes().to_vec())),
    );
    seeds
}

/// A guest talking to the MMDS: ARP, the handshake and requests (V1 and
/// V2, with and without a token, IMDS compatibility), and some junk.
pub fn mmds_frames() -> Vec<Seed> {
    use crate::mmds::{arp_request, encode, tcp_frame, DRAIN, FIX_ACK};
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;
    const FIN_ACK: u8 = 0x11;
    let conversation = |settings: u8, requests: &[&[u8]]| {
        let mut frames = vec![
            (DRAIN, arp_request()),
            (DRAIN, tcp_frame(40000, 100, 0, SYN, &[])),
            (FIX_ACK | DRAIN, tcp_frame(40000, 101, 0, ACK, &[])),
        ];
        let mut seq = 101u32;
        for request in requests {
            frames.push((FIX_ACK | DRAIN, tcp_frame(40000, seq, 0, PSH_ACK, request)));
            seq += u32::try_from(request.len()).unwrap_or(0);
            frames.push((FIX_ACK | DRAIN, tcp_frame(40000, seq, 0, ACK, &[])));
        }
        frames.push((FIX_ACK | DRAIN, tcp_frame(40000, seq, 0, FIN_ACK, &[])));
        encode(settings, &frames)
    };
    let get = b"GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n";
    let token = b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n";
    let with_bad_token = b"GET /latest/ HTTP/1.1\r\nX-metadata-token: abc\r\n\r\n";
    let flood: Vec<(u8, Vec<u8>)> = (0..300u16)
        .map(|i| (0, tcp_frame(1000 + i, 1, 0, SYN, &[])))
        .collect();
    vec![
        seed("get", conversation(0, &[get])),
        seed("v2-token", conversation(1, &[get, token, with_bad_token])),
        seed(
            "imds-compat",
            conversation(2, &[get, b"GET /latest/meta-data/ HTTP/1.0\r\n\r\n"]),
        ),
        seed(
            "bad-requests",
            conversation(0, &[b"PATCH / HTTP/1.1\r\n\r\n", b"\x00\x01\r\n\r\n"]),
        ),
        seed("syn-flood", encode(0, &flood)),
        seed(
            "short-frames",
            encode(
                0,
                &[(DRAIN, vec![0; 10]), (DRAIN, arp_request()[..20].to_vec())],
            ),
        ),
    ]
}

/// Requests whole, in pieces, pipelined, waiting for `100 Continue`, and
/// over each limit.
pub fn api_http() -> Vec<Seed> {
    use crate::http::encode;
    let put = b"PUT /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\": \"Paused\"}";
    let expect = b"PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    let long_head = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'x'; 300], b"\r\n\r\n"].concat();
    vec![
        seed("get", encode(&[b"GET / HTTP/1.1\r\n\r\n"])),
        seed(
            "put-in-pieces",
            encode(&[&put[..10], &put[10..40], &put[40..]]),
        ),
        seed(
            "pipelined",
            encode(&[b"GET / HTTP/1.1\r\n\r\n\r\nGET /version HTTP/1.0\r\n\r\n"]),
        ),
        seed("expect-continue", encode(&[expect, b"{}"])),
        seed("head-too-long", encode(&[&long_head])),
        seed(
            "body-too-long",
            encode(&[b"PUT /vm HTTP/1.1\r\nContent-Length: 129\r\n\r\n"]),
        ),
        seed(
            "chunked",
            encode(&[b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]),
        ),
    ]
}

/// One request per route and method, plus some wrong ones.
pub fn api_request() -> Vec<Seed> {
    let body_for = |template: &str, method: Method| -> Option<&'static str> {
        Some(match (template, method) {
            (_, Method::Get) => return None,
            ("/machine-config", Method::Put) => r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
            ("/machine-config", _) => r#"{"vcpu_count": 4}"#,
            ("/boot-source", _) => {
                r#"{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0", "initrd_path": "initrd"}"#
            }
            ("/drives/{drive_id}", Method::Put) => {
                r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": true, "is_read_only": false, "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#
            }
            ("/drives/{drive_id}", _) => r#"{"drive_id": "d", "path_on_host": "/y"}"#,
            ("/network-interfaces/{iface_id}", _) => {
                r#"{"iface_id": "i", "host_dev_name": "tap0"}"#
            }
            ("/vsock", _) => r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#,
            ("/logger", _) => r#"{"log_path": "/log", "level": "Info", "show_level": true}"#,
            ("/metrics", _) => r#"{"metrics_path": "/metrics"}"#,
            ("/actions", _) => r#"{"action_type": "InstanceStart"}"#,
            ("/vm", _) => r#"{"state": "Paused"}"#,
            _ => "{}",
        })
    };
    let mut seeds = Vec::new();
    for (template, methods) in ROUTES {
        let path = template
            .replace("{drive_id}", "d")
            .replace("{iface_id}", "i");
        for &method in *methods {
            let body = body_for(template, method);
            let name = format!("{}{}", method.as_str(), path.replace('/', "_"));
            seeds.push(seed(
                &name,
                crate::api::encode(method, &path, body.map(str::as_bytes)),
            ));
        }
    }
    let wrong: &[(&str, Method, &str, Option<&str>)] = &[
        ("bad-json", Method::Put, "/machine-config", Some("{nope")),
        ("no-body", Method::Put, "/boot-source", None),
        ("get-with-body", Method::Get, "/", Some("{}")),
        (
            "id-mismatch",
            Method::Put,
            "/drives/a",
            Some(
                r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": true, "is_read_only": false}"#,
            ),
        ),
        ("trailing-slash", Method::Get, "/vm/config/", None),
        (
            "unknown-action",
            Method::Put,
            "/actions",
            Some(r#"{"action_type": "Explode"}"#),
        ),
        ("nowhere", Method::Patch, "/nowhere", Some("{}")),
        ("double-slash", Method::Get, "//machine-config", None),
        ("extra-segment", Method::Get, "/machine-config/extra", None),
        (
            "drive-extra-segment",
            Method::Put,
            "/drives/d/extra",
            Some(r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false}"#),
        ),
        ("bad-id", Method::Put, "/network-interfaces/a-b", Some("{}")),
        ("empty-patch", Method::Patch, "/machine-config", Some("{}")),
    ];
    for &(name, method, path, body) in wrong {
        seeds.push(seed(
            name,
            crate::api::encode(method, path, body.map(str::as_bytes)),
        ));
    }
    seeds
}

/// A minimal ELF64 x86_64 kernel: one PT_LOAD of `payload` at 1 MiB, and
/// optionally a PVH note.
pub fn elf(payload: &[u8], memsz: u64, pvh_entry: Option<u32>) -> Vec<u8> {
    const PHDR: usize = 56;
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let data_off = (64 + PHDR * usize::from(phnum)) as u64;
    let mut note = Vec::new();
    if let Some(entry) = pvh_entry {
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
    }
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
    f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    f[0x18..0x20].copy_from_slice(&0x10_0000u64.to_le_bytes());
    f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    f[0x36..0x38].copy_from_slice(&(PHDR as u16).to_le_bytes());
    f[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
    let mut phdr = |p_type: u32, offset: u64, addr: u64, filesz: u64, memsz: u64| {
        let mut ph = vec![0u8; PHDR];
        ph[0..4].copy_from_slice(&p_type.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&addr.to_le_bytes());
        ph[24..32].copy_from_slice(&addr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        f.extend_from_slice(&ph);
    };
    phdr(1, data_off, 0x10_0000, payload.len() as u64, memsz);
    if pvh_entry.is_some() {
        phdr(4, data_off + payload.len() as u64, 0, note.len() as u64, 0);
    }
    f.extend_from_slice(payload);
    f.extend_from_slice(&note);
    f
}

/// A minimal bzImage with one setup sector and `payload` loaded at 1 MiB.
pub fn bzimage(payload: &[u8], init_size: u32) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1;
    let syssize = payload.len().div_ceil(16) as u32;
    f[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1;
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    f[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    f.extend_from_slice(payload);
    f.resize(1024 + syssize as usize * 16, 0);
    f
}

/// Minimal kernels of each format (the real test guests are added by
/// `scripts/fuzz-seeds.sh`).
pub fn kernel_image() -> Vec<Seed> {
    vec![
        seed("elf", elf(&[0x90; 64], 0x2000, None)),
        seed("elf-pvh", elf(&[0xf4; 32], 32, Some(0x10_0010))),
        seed("bzimage", bzimage(&[0xf4; 0x300], 0x1_0000)),
    ]
}

/// vsock conversations: guest-initiated to the host listener (accepted and
/// refused), host-initiated through `CONNECT`, data both ways, credit
/// updates, shutdown and reset.
pub fn vsock_packet() -> Vec<Seed> {
    use crate::vsock::{SeedBuilder, LISTEN_PORT};
    const REQUEST: u16 = 1;
    const RESPONSE: u16 = 2;
    const RST: u16 = 3;
    const SHUTDOWN: u16 = 4;
    const RW: u16 = 5;
    const CREDIT_UPDATE: u16 = 6;
    const CREDIT_REQUEST: u16 = 7;
    let mut seeds = Vec::new();

    let mut b = SeedBuilder::new();
    for _ in 0..4 {
        b.rx_buffer(4096, 1);
    }
    b.kick(0)
        .packet(5000, LISTEN_PORT, REQUEST, 0, &[])
        .kick(1)
        .run()
        .packet(5000, LISTEN_PORT, RW, 0, b"hello from the guest")
        .packet(5000, LISTEN_PORT, CREDIT_REQUEST, 0, &[])
        .kick(1)
        .run()
        .packet(5000, LISTEN_PORT, SHUTDOWN, 3, &[])
        .kick(1)
        .run()
        .packet(5000, LISTEN_PORT, RST, 0, &[])
        .kick(1);
    seeds.push(seed("guest-connects", b.finish()));

    let mut b = SeedBuilder::new();
    b.rx_buffer(256, 2)
        .kick(0)
        .packet(5001, 7, REQUEST, 0, &[])
        .kick(1)
        .run();
    seeds.push(seed("guest-refused", b.finish()));

    let mut b = SeedBuilder::new();
    for _ in 0..4 {
        b.rx_buffer(2048, 3);
    }
    b.kick(0)
        .connect(52)
        .run()
        .run()
        .packet(52, 1 << 30, RESPONSE, 0, &[])
        .kick(1)
        .run()
        .client_write(0, b"hello from the host")
        .run()
        .run()
        .packet(52, 1 << 30, CREDIT_UPDATE, 0, &[])
        .kick(1)
        .run();
    seeds.push(seed("host-connects", b.finish()));

    let mut b = SeedBuilder::new();
    b.rx_buffer(512, 1)
        .packet(5002, LISTEN_PORT, REQUEST, 0, &[])
        .kick(1)
        .reset()
        .rx_buffer(512, 1)
        .kick(0)
        .packet(5002, LISTEN_PORT, RW, 0, &[1; 100])
        .kick(1);
    seeds.push(seed("reset", b.finish()));
    seeds
}

/// virtio-net traffic: test frames in one or two descriptors, frames too
/// short and too long, a raw frame with a checksum-offload header, RX buffers
/// filled by frames the host sends.
pub fn virtio_net_tx() -> Vec<Seed> {
    use crate::net::SeedBuilder;
    let mut seeds = Vec::new();

    let mut b = SeedBuilder::new();
    b.frame(&[0x11; 64], 0)
        .frame(&[0x22; 1500], 40)
        .frame(&[0x33; 2000], 12)
        .kick(1);
    seeds.push(seed("tx-frames", b.finish()));

    let mut b = SeedBuilder::new();
    b.raw_frame(&[0; 20])
        .frame(&[], 0)
        .raw_frame(&[
            1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0,
            0, 2, 0x08, 0x00, 0x45, 0, 0, 20,
        ])
        .kick(1);
    seeds.push(seed("tx-short-and-offload", b.finish()));

    let mut b = SeedBuilder::new();
    b.rx_buffer(2048, 1)
        .rx_buffer(1600, 3)
        .kick(0)
        .host_send(60, 1)
        .host_send(1514, 2)
        .kick(0)
        .kick(0);
    seeds.push(seed("rx-frames", b.finish()));
    seeds
}

/// Entropy requests: buffers in one or several descriptors, a read-only
/// buffer, a chain past guest memory, a looping chain, an indirect table,
/// huge lengths, a bogus head, a reset, and a rate-limited queue.
pub fn virtio_rng() -> Vec<Seed> {
    use crate::rng::{SeedBuilder, LIMITED};
    let mut seeds = Vec::new();

    let mut b = SeedBuilder::new(0);
    b.writable(64, 1).writable(4096, 3).writable(1, 1).kick();
    seeds.push(seed("fills", b.finish()));

    let mut b = SeedBuilder::new(0);
    b.readable(32)
        .writable(16, 2)
        .kick()
        .reset()
        .writable(8, 1)
        .kick();
    seeds.push(seed("read-only-then-reset", b.finish()));

    let mut b = SeedBuilder::new(0);
    b.desc(10, crate::block::MEM_END - 8, 16, W, 0)
        .publish(10)
        .desc(11, 0x1_0000, 8, W | NEXT, 11)
        .publish(11)
        .desc(12, 0x1_0000, u32::MAX, W, 0)
        .publish(12)
        .desc(13, 0x1_1000, 32, INDIRECT, 0)
        .publish(13)
        .publish(200)
        .kick();
    seeds.push(seed("hostile-chains", b.finish()));

    let mut b = SeedBuilder::new(LIMITED);
    for _ in 0..6 {
        b.writable(128, 1);
    }
    b.kick().kick();
    seeds.push(seed("rate-limited", b.finish()));
    seeds
}

/// Inflate and deflate buffers: well-formed runs, duplicates, pages in the
/// hole and past the end, a too-long buffer, a device-writable one, one
/// outside memory, pages of the rings themselves.
pub fn balloon_pfns() -> Vec<Seed> {
    use crate::balloon::SeedBuilder;
    let mut seeds = Vec::new();

    let mut b = SeedBuilder::new(false);
    b.pfns(true, &[4, 5, 6, 9])
        .kick()
        .pfns(false, &[4, 5])
        .kick();
    seeds.push(seed("inflate-deflate", b.finish()));

    let mut b = SeedBuilder::new(true);
    b.pfns(
        true,
        &[7, 7, 7, 0x1f, 0x20, 0x2f, 0x30, 0x40, u32::MAX, 0x1_0000],
    )
    .kick();
    seeds.push(seed("hostile-pfns", b.finish()));

    let mut b = SeedBuilder::new(false);
    b.raw(0, 0x1_0000, 2048, 0)
        .raw(0, 0x1_0000, 8, 1)
        .raw(0, 0x3_fffc, 8, 0)
        .raw(0, 0x1_0000, 6, 0)
        .raw(1, 0, 8, 2)
        .kick();
    seeds.push(seed("malformed-buffers", b.finish()));

    let mut b = SeedBuilder::new(false);
    b.pfns(true, &[1, 2, 3]).kick().pfns(true, &[4]).kick();
    seeds.push(seed("inflate-the-rings", b.finish()));

    // A hint before any run, a run the guest answers with hints (in the
    // hole, past the end), a stop that earns DONE, a hint
    // after it; then a run without acknowledgement the host stops.
    let mut b = SeedBuilder::new(true);
    b.raw(2, 0x4000, 0x1000, 1)
        .kick()
        .start(true)
        .command(7)
        .raw(2, 0x5000, 0x1000, 1)
        .command(2)
        .raw(2, 0x6800, 0x2000, 1)
        .raw(2, 0x2_0000, 0x1_0000, 1)
        .raw(2, 0x4_0000, 0x2000, 1)
        .kick()
        .command(0)
        .raw(2, 0x9000, 0x1000, 1)
        .kick()
        .start(false)
        .command(3)
        .command(0)
        .raw(2, 0xa000, 0x1000, 1)
        .kick()
        .stop()
        .raw(2, 0xb000, 0x1000, 1)
        .raw(2, 0x1_0000, 3, 0)
        .kick();
    seeds.push(seed("hinting-runs", b.finish()));
    seeds
}

/// State files: empty, one required section, required and optional sections
/// with JSON and binary payloads, an id of the longest length, and one cut
/// short (so the fuzzer starts from every part of the layout).
pub fn snapshot_state() -> Vec<Seed> {
    use ember_snapshot::{Section, StateFile, MAX_ID_LEN};
    let state = |sections: Vec<Section>| {
        StateFile { sections }
            .to_bytes()
            .expect("seed sections are valid")
    };
    let json = |id: &str, version, value: &serde_json::Value| {
        Section::json(id, version, value).expect("JSON serializes")
    };
    let mut optional = json("device.rng.rng0", 3, &serde_json::json!({"bytes": 65536}));
    optional.required = false;
    let binary = Section {
        id: "memory-map".to_owned(),
        version: 1,
        required: false,
        payload: (0..=255).collect(),
    };
    let full = state(vec![
        json("vm", 1, &serde_json::json!({"vcpus": 2, "mem_mib": 128})),
        json(
            "vcpu.0",
            1,
            &serde_json::json!({"regs": [0, 1, 2], "msrs": {}}),
        ),
        json(
            "device.block.rootfs",
            2,
            &serde_json::json!({"path": "/rootfs.ext4"}),
        ),
        optional,
        binary,
    ]);
    let mut cut = full.clone();
    cut.truncate(full.len() / 2);
    vec![
        seed("empty", state(Vec::new())),
        seed(
            "one-section",
            state(vec![json("vm", 1, &serde_json::json!(null))]),
        ),
        seed("full", full),
        seed(
            "longest-id",
            state(vec![json(
                &"x".repeat(MAX_ID_LEN),
                u16::MAX,
                &serde_json::json!([]),
            )]),
        ),
        seed("truncated", cut),
    ]
}
