//! The host side of the MMDS on the `ember` binary: `GET|PUT|PATCH /mmds`,
//! `PUT /mmds/config`, `mmds-config` in config files and `GET /vm/config`,
//! `--metadata` and `--mmds-size-limit`, before and after the start, with
//! Firecracker's status codes and fault messages.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

#[path = "../../../crates/devices/src/virtio/net/tests/host.rs"]
mod host;

use ember_test_guests::ELF64_PATH;
use serde_json::{json, Value};

use common::*;

const NOT_INITIALIZED: &str = "MMDS error: The MMDS data store is not initialized.";
const TOO_BIG: &str = "MMDS limit exceeded error: The MMDS patch request doesn't fit.";
const PARKED: &str = "console=ttyS0 ember.test=hlt";

/// Asserts a reply of `status` whose fault_message holds `needle`.
fn fault(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let message = reply.fault();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

fn get(ember: &Ember) -> Value {
    let reply = ember.call("GET", "/mmds", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

fn add_interface(ember: &Ember, id: &str) {
    ember.ok(
        "PUT",
        &format!("/network-interfaces/{id}"),
        &json!({"iface_id": id, "host_dev_name": format!("ember-m{id}")}).to_string(),
    );
}

#[test]
fn the_document_is_put_patched_and_got() {
    let ember = Ember::start(&[]);
    assert_eq!(get(&ember), json!({}));
    let patch = ember.call("PATCH", "/mmds", Some(r#"{"a": 1}"#));
    fault(&patch, 400, NOT_INITIALIZED);
    let doc = json!({"latest": {"meta-data": {"ami-id": "dummy", "keep": "k"}}});
    ember.ok("PUT", "/mmds", &doc.to_string());
    assert_eq!(get(&ember), doc);
    ember.ok(
        "PATCH",
        "/mmds",
        r#"{"latest": {"meta-data": {"ami-id": "other", "keep": null, "new": [1]}}}"#,
    );
    assert_eq!(
        get(&ember),
        json!({"latest": {"meta-data": {"ami-id": "other", "new": [1]}}})
    );
    ember.ok("PUT", "/mmds", r#"{"b": "c"}"#);
    assert_eq!(get(&ember), json!({"b": "c"}));
    let cases = [
        (
            "PUT",
            "/mmds",
            Some("{nope"),
            "An error occurred when deserializing",
        ),
        (
            "PATCH",
            "/mmds",
            Some("[1,"),
            "An error occurred when deserializing",
        ),
        (
            "PUT",
            "/mmds/other",
            Some("{}"),
            "Unrecognized PUT request path `other`.",
        ),
        (
            "GET",
            "/mmds",
            Some("{}"),
            "GET request cannot have a body.",
        ),
        ("PUT", "/mmds", None, "Empty PUT request."),
        ("PATCH", "/mmds", None, "Empty PATCH request."),
    ];
    for (method, path, body, needle) in cases {
        fault(&ember.call(method, path, body), 400, needle);
    }
    assert_eq!(get(&ember), json!({"b": "c"}), "refusals change nothing");
}

#[test]
fn mmds_config_is_checked_and_shown_in_vm_config() {
    let ember = Ember::start(&[]);
    assert_eq!(
        ember.call("GET", "/vm/config", None).json()["mmds-config"],
        Value::Null
    );
    let put = |body: &str| ember.call("PUT", "/mmds/config", Some(body));
    let no_such = "MMMDS config error: The list of network interface IDs provided contains at \
                   least one ID that does not correspond to any existing network interface.";
    fault(&put(r#"{"network_interfaces": ["eth0"]}"#), 400, no_such);
    add_interface(&ember, "eth0");
    let cases = [
        (
            r#"{"network_interfaces": []}"#,
            "MMMDS config error: The list of network interface IDs that allow forwarding MMDS \
             requests is empty.",
        ),
        (r#"{"network_interfaces": ["eth0", "foo"]}"#, no_such),
        (
            r#"{"network_interfaces": ["eth0"], "ipv4_address": "1.1.1.1"}"#,
            "MMMDS config error: The MMDS IPv4 address is not link local.",
        ),
        (
            r#"{"network_interfaces": ["eth0"], "ipv4_address": "169.254.0.1"}"#,
            "not link local",
        ),
        (
            r#"{"network_interfaces": ["eth0"], "ipv4_address": ""}"#,
            "An error occurred when deserializing the json body of a request",
        ),
        (
            r#"{"version": "foo", "network_interfaces": ["eth0"]}"#,
            "unknown variant `foo`, expected `V1` or `V2`",
        ),
        (
            r#"{"network_interfaces": ["eth0"], "x": 1}"#,
            "unknown field `x`",
        ),
    ];
    for (body, needle) in cases {
        fault(&put(body), 400, needle);
    }
    assert_eq!(
        ember.call("GET", "/vm/config", None).json()["mmds-config"],
        Value::Null
    );
    let v1 = put(r#"{"network_interfaces": ["eth0"]}"#);
    assert_eq!(v1.status, 204);
    assert_eq!(v1.header("deprecation"), Some("true"));
    assert_eq!(
        ember.call("GET", "/vm/config", None).json()["mmds-config"],
        json!({"version": "V1", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254", "imds_compat": false})
    );
    let v2 = put(r#"{"version": "V2", "network_interfaces": ["eth0"],
            "ipv4_address": "169.254.169.250", "imds_compat": true}"#);
    assert_eq!(v2.status, 204);
    assert_eq!(v2.header("deprecation"), None);
    assert_eq!(
        ember.call("GET", "/vm/config", None).json()["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.250", "imds_compat": true})
    );
    ember.wait_for_log("PUT /mmds/config: V1 is deprecated. Use V2 instead.");
}

#[test]
fn the_size_limit_is_enforced_before_anything_is_stored() {
    let ember = Ember::start(&[
        "--mmds-size-limit",
        "100",
        "--http-api-max-payload-size",
        "1000",
    ]);
    let fill = |n: usize| json!({"k": "a".repeat(n)}).to_string();
    assert_eq!(fill(92).len(), 100);
    ember.ok("PUT", "/mmds", &fill(92));
    fault(&ember.call("PUT", "/mmds", Some(&fill(93))), 413, TOO_BIG);
    assert_eq!(get(&ember).to_string(), fill(92));
    fault(
        &ember.call("PATCH", "/mmds", Some(r#"{"x": "y"}"#)),
        413,
        TOO_BIG,
    );
    assert_eq!(get(&ember).to_string(), fill(92));
    ember.ok("PATCH", "/mmds", r#"{"k": "short", "x": "y"}"#);
    assert_eq!(get(&ember), json!({"k": "short", "x": "y"}));
    // The request body is bounded by the API payload limit, as every body.
    let body = ember.call("PUT", "/mmds", Some(&fill(1100)));
    assert_eq!(body.status, 400, "{body:?}");
    assert_eq!(get(&ember), json!({"k": "short", "x": "y"}));
}

#[test]
fn the_default_size_limit_is_the_api_payload_limit() {
    let ember = Ember::start(&["--http-api-max-payload-size", "300"]);
    let doc = json!({"k": "a".repeat(200)});
    ember.ok("PUT", "/mmds", &doc.to_string());
    let grow = json!({"l": "b".repeat(150)}).to_string();
    fault(&ember.call("PATCH", "/mmds", Some(&grow)), 413, TOO_BIG);
    assert_eq!(get(&ember), doc);
}

#[test]
fn after_the_start_the_document_stays_reachable_and_the_config_is_fixed() {
    let ember = Ember::start(&[]);
    ember.ok("PUT", "/mmds", r#"{"a": "b"}"#);
    ember.boot(ELF64_PATH, PARKED, 1);
    ember.wait_for("hlt: parked");
    assert_eq!(get(&ember), json!({"a": "b"}));
    ember.ok("PATCH", "/mmds", r#"{"c": "d"}"#);
    assert_eq!(get(&ember), json!({"a": "b", "c": "d"}));
    ember.ok("PUT", "/mmds", r#"{"e": "f"}"#);
    assert_eq!(get(&ember), json!({"e": "f"}));
    fault(
        &ember.call(
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces": ["eth0"]}"#),
        ),
        400,
        "The requested operation is not supported after starting the microVM",
    );

    let without = Ember::start(&[]);
    without.boot(ELF64_PATH, PARKED, 1);
    without.wait_for("hlt: parked");
    for (method, body) in [("GET", None), ("PUT", Some("{}")), ("PATCH", Some("{}"))] {
        fault(&without.call(method, "/mmds", body), 400, NOT_INITIALIZED);
    }
}

#[test]
fn metadata_fills_the_store_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let doc = json!({"latest": {"meta-data": {"ami-id": "ami-12345678"}}});
    let pretty = serde_json::to_string_pretty(&doc).unwrap();
    let path = temp_file(dir.path(), "m.json", pretty.as_bytes());
    let path = path.to_str().unwrap();
    let ember = Ember::start(&["--metadata", path]);
    assert_eq!(get(&ember), doc);
    // The size limit applies to compact JSON, as Firecracker measures it.
    let limit = doc.to_string().len().to_string();
    let ember = Ember::start(&["--metadata", path, "--mmds-size-limit", &limit]);
    assert_eq!(get(&ember), doc);
    let socket = dir.path().join("s");
    let socket = socket.to_str().unwrap();
    let short = (doc.to_string().len() - 1).to_string();
    let bad = temp_file(dir.path(), "bad.json", b"{\"a\": ");
    let bad = bad.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "--metadata",
                path,
                "--mmds-size-limit",
                &short,
                "--api-sock",
                socket,
            ],
            "doesn't fit",
        ),
        (
            vec!["--metadata", bad, "--api-sock", socket],
            "not valid JSON",
        ),
        (
            vec!["--metadata", "/nonexistent/m.json", "--api-sock", socket],
            "/nonexistent/m.json",
        ),
        (
            vec!["--metadata", "/dev/null", "--api-sock", socket],
            "/dev/null",
        ),
    ] {
        let out = ember_to_the_end(&args);
        assert_error(&out, needle);
        assert_error(&out, "--metadata");
    }
}

#[test]
fn a_config_file_configures_the_mmds() {
    host::in_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let metadata = temp_file(dir.path(), "m.json", br#"{"k": "v"}"#);
        let mut config = json!({
            "boot-source": {"kernel_image_path": ELF64_PATH, "boot_args": PARKED},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "ember-mc0"}],
            "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]}
        });
        let path = temp_file(dir.path(), "c.json", config.to_string().as_bytes());
        let ember = Ember::start(&[
            "--config-file",
            path.to_str().unwrap(),
            "--metadata",
            metadata.to_str().unwrap(),
        ]);
        ember.wait_for("hlt: parked");
        assert_eq!(
            ember.call("GET", "/vm/config", None).json()["mmds-config"],
            json!({"version": "V2", "network_interfaces": ["eth0"],
                   "ipv4_address": "169.254.169.254", "imds_compat": false})
        );
        assert_eq!(get(&ember), json!({"k": "v"}));

        config["mmds-config"] = json!({"network_interfaces": ["eth1"]});
        let path = temp_file(dir.path(), "c.json", config.to_string().as_bytes());
        let out = ember_to_the_end(&["--no-api", "--config-file", path.to_str().unwrap()]);
        assert_error(
            &out,
            "invalid mmds-config: The list of network interface IDs provided",
        );
    });
}

#[test]
fn mmds_requests_are_counted_under_firecrackers_names() {
    host::in_netns(|| {
        let ember = Ember::start(&[]);
        let metrics = ember.dir().join("metrics.json");
        ember.ok(
            "PUT",
            "/metrics",
            &json!({"metrics_path": metrics}).to_string(),
        );
        add_interface(&ember, "0");
        get(&ember);
        ember.ok("PUT", "/mmds", "{}");
        fault(
            &ember.call("PUT", "/mmds", Some("{nope")),
            400,
            "deserializing",
        );
        ember.ok("PUT", "/mmds/config", r#"{"network_interfaces": ["0"]}"#);
        ember.ok("PATCH", "/mmds", r#"{"a": 1}"#);
        fault(
            &ember.call("PATCH", "/mmds", Some("[")),
            400,
            "deserializing",
        );
        ember.boot(ELF64_PATH, PARKED, 1);
        ember.wait_for("hlt: parked");
        ember.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
        let text = std::fs::read_to_string(&metrics).unwrap();
        let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let count = |group: &str, key: &str| line[group][key].as_u64().unwrap();
        assert_eq!(count("get_api_requests", "mmds_count"), 1, "{line}");
        assert_eq!(count("put_api_requests", "mmds_count"), 3, "{line}");
        assert_eq!(count("put_api_requests", "mmds_fails"), 1, "{line}");
        assert_eq!(count("patch_api_requests", "mmds_count"), 2, "{line}");
        assert_eq!(count("patch_api_requests", "mmds_fails"), 1, "{line}");
        assert_eq!(
            count("deprecated_api", "deprecated_http_api_calls"),
            1,
            "{line}"
        );
    });
}
