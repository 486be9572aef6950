//! `snapshot_state`: see `ember_fuzz_harness::snapshot` for the invariants.

#![no_main]

use ember_fuzz_harness::alloc::CountingAlloc;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| ember_fuzz_harness::run("snapshot_state", data));
