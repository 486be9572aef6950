//! Decoding files that the real `bitcode` 0.6.9 serializer wrote (the
//! `*.bpf` files beside this one, as seccompiler-bin writes them), one per
//! packing, and refusing damaged ones.

use super::*;
use crate::seccomp::{filters_from_json, ThreadKind};

/// The default filters of the day the fixture was made, compiled by
/// seccompiler-bin's format into `default-filters.bpf` (the JSON beside it).
const DEFAULT: &[u8] = include_bytes!("default-filters.bpf");
const DEFAULT_JSON: &str = include_str!("default-filters.json");

fn word(i: &sock_filter) -> u64 {
    u64::from(i.code) | u64::from(i.jt) << 16 | u64::from(i.jf) << 24 | u64::from(i.k) << 32
}

fn words(bytes: &[u8]) -> Vec<(String, Vec<u64>)> {
    decode(bytes)
        .unwrap()
        .into_iter()
        .map(|(name, program)| (name, program.iter().map(word).collect()))
        .collect()
}

fn one(name: &str, values: &[u64]) -> Vec<(String, Vec<u64>)> {
    vec![(name.to_owned(), values.to_vec())]
}

#[test]
fn the_default_filters_compiled_by_bitcode_decode_to_the_same_programs() {
    let decoded = decode(DEFAULT).unwrap();
    let defaults = filters_from_json(DEFAULT_JSON.as_bytes()).unwrap();
    assert_eq!(decoded.len(), 3);
    for (name, program) in decoded {
        let kind = ThreadKind::from_name(&name).unwrap();
        let expected: Vec<u64> = defaults[&kind].iter().map(word).collect();
        assert_eq!(
            program.iter().map(word).collect::<Vec<_>>(),
            expected,
            "{name}"
        );
    }
}

#[test]
fn every_integer_packing_decodes() {
    let small: Vec<u64> = (1..=20).collect();
    assert_eq!(words(include_bytes!("w8.bpf")), one("vmm", &small));
    let offset: Vec<u64> = (300..=307).collect();
    assert_eq!(words(include_bytes!("w8-offset.bpf")), one("vmm", &offset));
    assert_eq!(
        words(include_bytes!("w16.bpf")),
        one("vmm", &[1000, 2, 60000, 4, 5])
    );
    assert_eq!(
        words(include_bytes!("w32.bpf")),
        one("vmm", &[70000, 70001, 70002, 1, 2, 3])
    );
    // Names are lowercased, and an empty program is kept (as Firecracker does).
    assert_eq!(
        words(include_bytes!("w64.bpf")),
        vec![
            ("api".to_owned(), vec![]),
            ("vcpu".to_owned(), vec![u64::MAX, 0, 5])
        ]
    );
    assert_eq!(words(include_bytes!("empty-map.bpf")), vec![]);
}

#[test]
fn large_lengths_decode_and_long_names_are_refused() {
    // A 300-instruction program and a 300-byte name: both lengths are "large".
    let err = decode(include_bytes!("large-lengths.bpf")).unwrap_err();
    assert!(err.0.contains("thread name of 300 bytes"), "{err:?}");
}

#[test]
fn damaged_files_are_errors_not_panics() {
    for len in 0..DEFAULT.len() {
        assert!(decode(&DEFAULT[..len]).is_err(), "truncated to {len}");
    }
    let mut trailing = DEFAULT.to_vec();
    trailing.push(0);
    assert!(decode(&trailing).unwrap_err().0.contains("after the end"));
    let mut bad_packing = include_bytes!("w8.bpf").to_vec();
    bad_packing[5] = 0x7f; // the lengths' packing byte
    assert!(decode(&bad_packing).is_err());
    assert!(decode(&[0xff; 9]).is_err());
    assert!(decode(&[200]).unwrap_err().0.contains("200 threads"));
    let huge = vec![0u8; MAX_FILE_BYTES + 1];
    assert!(decode(&huge).unwrap_err().0.contains("more than"));
    // Every single-byte change decodes or fails cleanly.
    for at in 0..DEFAULT.len().min(64) {
        let mut changed = DEFAULT.to_vec();
        changed[at] ^= 0xa5;
        let _ = decode(&changed);
    }
}
