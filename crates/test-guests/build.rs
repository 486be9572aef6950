//! Build script for `ember-test-guests`.
//!
//! Compiles the freestanding guest sources in `guest/` with gcc, links them
//! with the image linker scripts and writes three images into `OUT_DIR`:
//!
//! - `guest-elf64`: ELF64 kernel for the Linux 64-bit boot protocol,
//! - `guest-pvh`: the same plus a Xen PVH note with a 32-bit entry point,
//! - `guest-bzimage`: a bzImage built here from the flat `guest-elf64` payload.
//!
//! Any failure panics with gcc's output, which fails the build.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Physical load and link address of every image.
const LOAD_ADDR: u64 = 0x10_0000;
/// Offset of the 64-bit entry point from the load address.
const ENTRY64_OFFSET: u64 = 0x200;
/// Number of 512-byte setup sectors after the boot sector in the bzImage.
const SETUP_SECTS: u8 = 1;

/// Flags shared by every compilation.
const CFLAGS: &[&str] = &[
    "-m64",
    "-ffreestanding",
    "-nostdlib",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-mcmodel=small",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-builtin",
    "-fno-strict-aliasing",
    "-fno-delete-null-pointer-checks",
    "-fno-tree-loop-distribute-patterns",
    "-fcf-protection=none",
    // No alignment padding: keeps multi-byte NOPs out of executed paths.
    "-falign-functions=1",
    "-falign-jumps=1",
    "-falign-loops=1",
    "-falign-labels=1",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
];

/// Flags shared by every link.
const LDFLAGS: &[&str] = &[
    "-m64",
    "-nostdlib",
    "-static",
    "-no-pie",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=0x1000",
    "-Wl,-z,noexecstack",
    "-Wl,--no-warn-rwx-segments",
    "-Wl,--fatal-warnings",
];

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env_var("OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    println!("cargo:rerun-if-changed={}", guest_dir.display());
    for entry in fs::read_dir(&guest_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", guest_dir.display()))
    {
        let entry = entry.unwrap_or_else(|e| panic!("cannot read {}: {e}", guest_dir.display()));
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    let gcc = cc::Build::new()
        .cargo_metadata(false)
        .get_compiler()
        .path()
        .to_path_buf();

    let obj = |src: &str| compile(&gcc, &guest_dir, &out_dir, src);
    let head = obj("head64.S");
    let pvh = obj("pvh.S");
    // Every C file in guest/ is part of the C core shared by all images.
    let mut c_sources: Vec<String> = fs::read_dir(&guest_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", guest_dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", guest_dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".c"))
        .collect();
    c_sources.sort();
    let core: Vec<PathBuf> = c_sources.iter().map(|src| obj(src)).collect();

    let elf64 = out_dir.join("guest-elf64");
    let linux64_objects: Vec<&Path> = std::iter::once(head.as_path())
        .chain(core.iter().map(PathBuf::as_path))
        .collect();
    link(
        &gcc,
        &guest_dir.join("linux64.ld"),
        &linux64_objects,
        &elf64,
    );
    let pvh_img = out_dir.join("guest-pvh");
    let pvh_objects: Vec<&Path> = [head.as_path(), pvh.as_path()]
        .into_iter()
        .chain(core.iter().map(PathBuf::as_path))
        .collect();
    link(&gcc, &guest_dir.join("pvh.ld"), &pvh_objects, &pvh_img);

    let elf = read(&elf64);
    check_entry(&elf, &elf64);
    check_entry(&read(&pvh_img), &pvh_img);

    let (payload, mem_size) = flatten(&elf);
    let bzimage = make_bzimage(&payload, mem_size);
    let bz_path = out_dir.join("guest-bzimage");
    fs::write(&bz_path, bzimage)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", bz_path.display()));
}

fn env_var(name: &str) -> String {
    env::var(name).unwrap_or_else(|e| panic!("{name} not set: {e}"))
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs a command, panicking with its output if it fails or prints anything.
fn run(mut cmd: Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "guest build failed ({}): {cmd:?}\n{stdout}{stderr}",
            out.status
        );
    }
    if !stderr.trim().is_empty() {
        panic!("guest build produced diagnostics: {cmd:?}\n{stderr}");
    }
}

fn compile(gcc: &Path, guest_dir: &Path, out_dir: &Path, src: &str) -> PathBuf {
    let obj = out_dir.join(format!("{src}.o"));
    let mut cmd = Command::new(gcc);
    cmd.args(CFLAGS)
        .arg("-I")
        .arg(guest_dir)
        .arg("-c")
        .arg(guest_dir.join(src))
        .arg("-o")
        .arg(&obj);
    run(cmd);
    obj
}

fn link(gcc: &Path, script: &Path, objs: &[&Path], out: &Path) {
    let mut cmd = Command::new(gcc);
    cmd.args(LDFLAGS).arg("-T").arg(script);
    for o in objs {
        cmd.arg(o);
    }
    cmd.arg("-o").arg(out);
    run(cmd);
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    let s: [u8; 2] = b[off..off + 2]
        .try_into()
        .unwrap_or_else(|_| panic!("short ELF"));
    u16::from_le_bytes(s)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let s: [u8; 4] = b[off..off + 4]
        .try_into()
        .unwrap_or_else(|_| panic!("short ELF"));
    u32::from_le_bytes(s)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let s: [u8; 8] = b[off..off + 8]
        .try_into()
        .unwrap_or_else(|_| panic!("short ELF"));
    u64::from_le_bytes(s)
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or_else(|_| panic!("value {v:#x} does not fit usize"))
}

/// One ELF64 `PT_LOAD` program header.
struct Load {
    offset: usize,
    paddr: u64,
    filesz: usize,
    memsz: u64,
}

fn loads(elf: &[u8]) -> Vec<Load> {
    assert!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF",
        "not an ELF file"
    );
    assert_eq!(elf[4], 2, "not ELFCLASS64");
    let phoff = usize_of(u64_at(elf, 0x20));
    let phentsize = usize::from(u16_at(elf, 0x36));
    let phnum = usize::from(u16_at(elf, 0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(elf, ph) == 1)
        .map(|ph| Load {
            offset: usize_of(u64_at(elf, ph + 0x08)),
            paddr: u64_at(elf, ph + 0x18),
            filesz: usize_of(u64_at(elf, ph + 0x20)),
            memsz: u64_at(elf, ph + 0x28),
        })
        .collect()
}

fn check_entry(elf: &[u8], path: &Path) {
    let entry = u64_at(elf, 0x18);
    assert_eq!(
        entry,
        LOAD_ADDR + ENTRY64_OFFSET,
        "{}: e_entry {entry:#x} is not load address + 0x200; check the linker script",
        path.display()
    );
    for l in loads(elf) {
        assert!(
            l.paddr >= LOAD_ADDR,
            "{}: segment below 1 MiB",
            path.display()
        );
    }
}

/// Builds the flat image of all `PT_LOAD` segments starting at `LOAD_ADDR`.
/// Returns the file bytes (padded to 16 bytes) and the in-memory size
/// including `.bss`.
fn flatten(elf: &[u8]) -> (Vec<u8>, u64) {
    let mut flat = Vec::new();
    let mut mem_end = LOAD_ADDR;
    for l in loads(elf) {
        let start = usize_of(l.paddr - LOAD_ADDR);
        let end = start + l.filesz;
        if flat.len() < end {
            flat.resize(end, 0);
        }
        flat[start..end].copy_from_slice(&elf[l.offset..l.offset + l.filesz]);
        mem_end = mem_end.max(l.paddr + l.memsz);
    }
    flat.resize(flat.len().next_multiple_of(16), 0);
    let mem_size = (mem_end - LOAD_ADDR).max(flat.len() as u64);
    (flat, mem_size)
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Wraps a flat 64-bit payload into a bzImage (Linux x86 boot protocol 2.15).
fn make_bzimage(payload: &[u8], mem_size: u64) -> Vec<u8> {
    assert_eq!(
        payload[usize_of(ENTRY64_OFFSET)],
        0xFA,
        "payload offset 0x200 does not start with the 64-bit entry (cli)"
    );
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut img = vec![0u8; setup_len];

    let syssize =
        u32::try_from(payload.len().div_ceil(16)).unwrap_or_else(|_| panic!("payload too large"));
    let init_size = u32::try_from(mem_size.next_multiple_of(4096))
        .unwrap_or_else(|_| panic!("payload too large"));
    let code32_start =
        u32::try_from(LOAD_ADDR).unwrap_or_else(|_| panic!("load address too large"));

    img[0x1F1] = SETUP_SECTS; // setup_sects
    put_u16(&mut img, 0x1F2, 0); // root_flags
    put_u32(&mut img, 0x1F4, syssize); // syssize
    put_u16(&mut img, 0x1FA, 0xFFFF); // vid_mode = NORMAL_VGA
    put_u16(&mut img, 0x1FE, 0xAA55); // boot_flag
    img[0x200] = 0xEB; // jmp short to the real-mode hlt loop at 0x26C
    img[0x201] = 0x6A;
    img[0x202..0x206].copy_from_slice(b"HdrS"); // header
    put_u16(&mut img, 0x206, 0x020F); // version 2.15
    put_u16(&mut img, 0x20C, 0x1000); // start_sys_seg (obsolete)
    img[0x210] = 0; // type_of_loader (filled by the loader)
    img[0x211] = 0x01; // loadflags = LOADED_HIGH
    put_u32(&mut img, 0x214, code32_start); // code32_start
    put_u32(&mut img, 0x22C, 0x7FFF_FFFF); // initrd_addr_max
    put_u32(&mut img, 0x230, 0x20_0000); // kernel_alignment
    img[0x234] = 0; // relocatable_kernel
    img[0x235] = 21; // min_alignment (2 MiB)
    put_u16(&mut img, 0x236, 0x0001); // xloadflags = XLF_KERNEL_64
    put_u32(&mut img, 0x238, 2047); // cmdline_size
    put_u64(&mut img, 0x258, LOAD_ADDR); // pref_address
    put_u32(&mut img, 0x260, init_size); // init_size
                                         // Real-mode entry (never used by Ember): cli; hlt; jmp $-2.
    img[0x26C..0x270].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);

    img.extend_from_slice(payload);
    img
}
