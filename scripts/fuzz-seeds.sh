#!/usr/bin/env bash
# Generates the seed corpora of every fuzz target into fuzz/corpus/<target>/
# (or DIR/<target>/ when a directory is given) from real, well-formed inputs:
#   - kernel_image: the test-guest kernels (ELF, PVH, bzImage), as built by
#     crates/test-guests, plus minimal images of each format;
#   - virtio_block, virtio_mmio: well-formed descriptor chains and a driver's
#     register handshake, encoded by fuzz/harness (src/seeds.rs);
#   - config_file: the README's config-file example and Firecracker-style files;
#   - api_request: one request per route of ember_api::routes::ROUTES.
# Files already in the corpus (what the fuzzer found interesting) are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-fuzz/corpus}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# The test guests, copied out of their crate's build.
cargo run -q --locked -p ember-test-guests -- "$out/kernel_image" >/dev/null
# Everything else, from the harness crate's generator.
cargo run -q --manifest-path fuzz/Cargo.toml -p ember-fuzz-harness --bin fuzz-seeds -- "$out"
echo "kernel_image: + the test-guest kernels (guest-elf64, guest-pvh, guest-bzimage)"
