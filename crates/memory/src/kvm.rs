//! What ties guest memory to KVM (the `kvm` feature): memory slots and the
//! dirty log of the pages the guest writes.

mod dirty_log;
mod slots;

pub use dirty_log::dirty_pages;
pub use slots::{register_with_kvm, register_with_kvm_logging_dirty_pages};
