use super::*;

fn sample() -> StateFile {
    let mut optional = Section::json("device.rng", 2, &vec![1u32, 2, 3]).unwrap();
    optional.required = false;
    StateFile {
        sections: vec![
            Section::json("vm", 1, &("memory", 128)).unwrap(),
            Section::json("vcpu.0", 7, &[0u64; 3]).unwrap(),
            optional,
        ],
    }
}

fn all_known(_: &str) -> bool {
    true
}

/// Recomputes the checksum after a test edited the content.
fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - CHECKSUM_LEN;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

fn parse_err(bytes: &[u8]) -> Error {
    let err = StateFile::from_bytes(bytes, &all_known).unwrap_err();
    assert!(!err.to_string().contains('\n'), "{err}");
    err
}

/// Offset of the first section (the "vm" section's id length).
const FIRST_SECTION: usize = HEADER_LEN;

#[test]
fn round_trip_keeps_every_section() {
    let file = sample();
    let bytes = file.to_bytes().unwrap();
    assert_eq!(&bytes[..8], b"EMBERSNP");
    assert_eq!(bytes[8..10], FORMAT_VERSION.to_le_bytes());
    assert_eq!(bytes[10..12], HOST_ARCH.to_le_bytes());
    assert_eq!(bytes[16..20], 3u32.to_le_bytes());
    assert_eq!(StateFile::from_bytes(&bytes, &all_known).unwrap(), file);
    let vcpu: [u64; 3] = file.section("vcpu.0").unwrap().decode().unwrap();
    assert_eq!(vcpu, [0; 3]);
    let empty = StateFile::default().to_bytes().unwrap();
    assert_eq!(empty.len(), HEADER_LEN + CHECKSUM_LEN);
    assert!(StateFile::from_bytes(&empty, &all_known)
        .unwrap()
        .sections
        .is_empty());
}

#[test]
fn unknown_optional_sections_are_skipped_and_unknown_required_ones_refused() {
    let bytes = sample().to_bytes().unwrap();
    let read = StateFile::from_bytes(&bytes, &|id| id != "device.rng").unwrap();
    let ids: Vec<&str> = read.sections.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["vm", "vcpu.0"]);
    let err = StateFile::from_bytes(&bytes, &|id| id != "vcpu.0").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownRequiredSection { id, version: 7 } if id == "vcpu.0"),
        "{err}"
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample().to_bytes().unwrap();
    for len in 0..bytes.len() {
        parse_err(&bytes[..len]);
    }
    assert!(matches!(parse_err(b"EMBER"), Error::Truncated { .. }));
    let mut header_only = bytes[..HEADER_LEN].to_vec();
    assert!(matches!(parse_err(&header_only), Error::Truncated { .. }));
    header_only.truncate(10);
    assert!(matches!(parse_err(&header_only), Error::Truncated { .. }));
}

#[test]
fn every_flipped_bit_is_an_error() {
    let bytes = sample().to_bytes().unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        parse_err(&flipped);
    }
    let mut flipped = bytes.clone();
    flipped[FIRST_SECTION + 3] ^= 0x10;
    assert!(matches!(parse_err(&flipped), Error::Checksum { .. }));
}

#[test]
fn wrong_magic_version_architecture_and_flags_are_refused() {
    let bytes = sample().to_bytes().unwrap();
    let mut other = bytes.clone();
    other[0] = b'X';
    assert!(matches!(parse_err(&other), Error::BadMagic));
    assert!(matches!(parse_err(b"{\"json\": 1}"), Error::BadMagic));

    let mut other = bytes.clone();
    other[8..10].copy_from_slice(&2u16.to_le_bytes());
    assert!(matches!(parse_err(&other), Error::UnsupportedVersion(2)));

    let foreign = if HOST_ARCH == ARCH_X86_64 {
        ARCH_AARCH64
    } else {
        ARCH_X86_64
    };
    let mut other = bytes.clone();
    other[10..12].copy_from_slice(&foreign.to_le_bytes());
    reseal(&mut other);
    let err = parse_err(&other);
    assert!(matches!(err, Error::OtherArchitecture { .. }), "{err}");
    assert!(err.to_string().contains(&arch_name(foreign)));

    let mut other = bytes.clone();
    other[12] = 4;
    reseal(&mut other);
    assert!(matches!(parse_err(&other), Error::UnknownFileFlags(4)));
}

#[test]
fn section_lengths_past_the_end_are_refused() {
    let bytes = sample().to_bytes().unwrap();
    // "vm": id length 1 byte, id 2 bytes, version 2, flags 2, then the length.
    let len_at = FIRST_SECTION + 1 + 2 + 2 + 2;
    for len in [u64::MAX, 1 << 40, bytes.len() as u64] {
        let mut other = bytes.clone();
        other[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
        reseal(&mut other);
        let err = parse_err(&other);
        assert!(
            matches!(
                err,
                Error::Truncated {
                    what: "section payload",
                    ..
                }
            ),
            "{err}"
        );
    }
    let mut other = bytes.clone();
    other[FIRST_SECTION] = 200;
    reseal(&mut other);
    assert!(matches!(
        parse_err(&other),
        Error::Truncated { .. } | Error::BadSectionId { .. }
    ));
}

#[test]
fn huge_and_wrong_section_counts_are_refused() {
    let bytes = sample().to_bytes().unwrap();
    for count in [u32::MAX, 1 << 20, 4] {
        let mut other = bytes.clone();
        other[16..20].copy_from_slice(&count.to_le_bytes());
        reseal(&mut other);
        let err = parse_err(&other);
        assert!(
            matches!(err, Error::TooManySections { .. } | Error::Truncated { .. }),
            "{err}"
        );
    }
    let mut fewer = bytes.clone();
    fewer[16..20].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut fewer);
    assert!(matches!(parse_err(&fewer), Error::TrailingBytes { .. }));
}

#[test]
fn bad_section_ids_and_flags_are_refused() {
    let bytes = sample().to_bytes().unwrap();
    for (byte, reason) in [
        (0xff, "not ASCII"),
        (b' ', "characters other than"),
        (b'/', "characters other than"),
    ] {
        let mut other = bytes.clone();
        other[FIRST_SECTION + 2] = byte;
        reseal(&mut other);
        let err = parse_err(&other);
        assert!(
            matches!(
                err,
                Error::BadSectionId {
                    offset: FIRST_SECTION,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(reason), "{err}");
    }
    let mut other = bytes.clone();
    other[FIRST_SECTION] = 0;
    reseal(&mut other);
    assert!(parse_err(&other).to_string().contains("empty"));

    let mut other = bytes.clone();
    other[FIRST_SECTION + 5] = 0x80;
    reseal(&mut other);
    assert!(matches!(
        parse_err(&other),
        Error::UnknownSectionFlags { .. }
    ));

    let mut twins = sample();
    twins.sections[1].id = "vm".to_owned();
    assert!(matches!(twins.to_bytes(), Err(Error::DuplicateSection(_))));
    let mut other = bytes.clone();
    // "vcpu.0" becomes "vm" padded: rename it in place to a twin of "vm".
    let second = FIRST_SECTION + 1 + 2 + 2 + 2 + 8 + sample().sections[0].payload.len();
    assert_eq!(&other[second + 1..second + 7], b"vcpu.0");
    other[second + 1..second + 7].copy_from_slice(b"vm____");
    other[second] = 2;
    other.splice(second + 3..second + 7, []);
    other[16..20].copy_from_slice(&3u32.to_le_bytes());
    reseal(&mut other);
    assert!(matches!(parse_err(&other), Error::DuplicateSection(id) if id == "vm"));
}

#[test]
fn invalid_sections_are_not_written() {
    for id in ["", "a b", "é", &"x".repeat(MAX_ID_LEN + 1)] {
        let file = StateFile {
            sections: vec![Section::json(id, 1, &0).unwrap()],
        };
        let err = file.to_bytes().unwrap_err();
        assert!(matches!(err, Error::BadSectionIdToWrite { .. }), "{err}");
    }
    let longest = "x".repeat(MAX_ID_LEN);
    let file = StateFile {
        sections: vec![Section::json(longest.as_str(), 1, &0).unwrap()],
    };
    let bytes = file.to_bytes().unwrap();
    assert_eq!(StateFile::from_bytes(&bytes, &all_known).unwrap(), file);
}

#[test]
fn payloads_that_are_not_the_expected_json_are_errors() {
    let section = Section::json("vm", 4, &"text").unwrap();
    let err = section.decode::<u64>().unwrap_err();
    assert!(matches!(err, Error::Decode { version: 4, .. }), "{err}");
    let raw = Section {
        id: "raw".to_owned(),
        version: 1,
        required: true,
        payload: vec![0xff, 0],
    };
    assert!(raw.decode::<String>().is_err());
    let map: std::collections::HashMap<Vec<u8>, u8> = [(vec![1], 1)].into();
    assert!(matches!(
        Section::json("m", 1, &map),
        Err(Error::Encode { .. })
    ));
}

#[test]
fn the_format_version_is_read_even_when_unsupported() {
    let mut bytes = StateFile::default().to_bytes().unwrap();
    assert_eq!(format_version(&bytes).unwrap(), FORMAT_VERSION);
    bytes[8] = 9;
    assert_eq!(format_version(&bytes).unwrap(), 9);
    assert!(matches!(
        format_version(b"EMBERSNP\x01"),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        format_version(b"NOTASNAP\x01\x00"),
        Err(Error::BadMagic)
    ));
}
