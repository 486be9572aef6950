//! Counters grouped by subsystem or device, as a VM reports them for metrics.

/// One group of counters, e.g. `vcpu` or `block_rootfs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricGroup {
    /// Group name.
    pub name: String,
    /// (counter, value) pairs.
    pub counters: Vec<(&'static str, u64)>,
}

impl MetricGroup {
    /// A group called `name`.
    pub fn new(name: impl Into<String>, counters: Vec<(&'static str, u64)>) -> MetricGroup {
        MetricGroup {
            name: name.into(),
            counters,
        }
    }
}
