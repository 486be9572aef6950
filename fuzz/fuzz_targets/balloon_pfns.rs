//! `balloon_pfns`: see `ember_fuzz_harness::balloon` for the input format and the invariants.

#![no_main]

use ember_fuzz_harness::alloc::CountingAlloc;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| ember_fuzz_harness::run("balloon_pfns", data));
