// SPDX-License-Identifier: GPL-2.0

//! Every bound mock-accel function, under one global mutex: which are shown (class device
//! plus `/dev` node), each PF's `sriov_numvfs`, and the lookup `/dev` files use.
//!
//! SR-IOV is emulated (DESIGN.md §5): a PF's VFs are PCI functions 1..N of its slot, probed
//! like any function, but a VF is *shown* only while its index is below the PF's
//! `sriov_numvfs` (0 after probe, like the PCI core). Writing `sriov_numvfs` shows or hides
//! them; unbinding a PF hides its VFs.
//!
//! Locking: class devices and `/dev` nodes are created under the lock but always destroyed
//! after it is released (destroying waits for running sysfs callbacks, and the PF's
//! `sriov_*` callbacks take this lock). `/dev` `open` never takes it (it runs under the misc
//! core's lock, which `misc_register` takes under ours).

use kernel::prelude::*;

use crate::{devnode, devnode::DevNode, sys, Inner};

/// Most functions tracked (PFs + VFs).
const MAX_ENTRIES: usize = 2 * sys::MAX_DEVICES;
/// Most VFs of one PF (functions 1..7 of its slot).
const MAX_VFS: usize = 7;

/// What makes a function visible: its `/dev` node and class device (fields drop in order).
struct Shown {
    // Dropped first: no new opens; open files see ENODEV through the registry.
    _node: Pin<KBox<DevNode>>,
    // Dropped second: removes the sysfs directory, waiting for running callbacks.
    _class_dev: sys::ClassDevice,
}

struct Entry {
    id: u64,
    inner: sys::InnerRef,
    /// Slot key shared by a PF and its VFs.
    key: u32,
    /// PF: N of `mockN`; VF: its index M.
    number: usize,
    is_vf: bool,
    /// PFs: VFs currently enabled.
    numvfs: u32,
    shown: Option<Shown>,
}

pub(crate) struct Registry {
    entries: [Option<Entry>; MAX_ENTRIES],
    next_id: u64,
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Self { entries: [const { None }; MAX_ENTRIES], next_id: 1 }
    }

    fn pf(&self, key: u32) -> Option<&Entry> {
        self.entries.iter().flatten().find(|e| !e.is_vf && e.key == key)
    }
}

/// Creates the class device and `/dev` node of `e` (PF `pf` is its PF number).
fn show(e: &Entry, pf: usize) -> Result<Shown> {
    let name = if e.is_vf { devnode::name(pf, Some(e.number)) } else { devnode::name(pf, None) }
        .ok_or(ENOSPC)?;
    let inner = e.inner.get();
    // The node first: if the class device then fails, dropping the node here is safe under
    // the lock (no callback of a misc device takes it).
    let node = DevNode::register(e.id, name)?;
    let class_dev = sys::ClassDevice::create(inner.parent(), inner, name, e.is_vf)?;
    Ok(Shown { _node: node, _class_dev: class_dev })
}

/// Adds a bound function; shows PFs at once and VFs if their PF enabled them.
/// Returns the registry id.
pub(crate) fn register(inner: &Inner<'_>, key: u32, number: usize, is_vf: bool) -> Result<u64> {
    let mut reg = sys::REGISTRY.lock();
    let id = reg.next_id;
    reg.next_id += 1;
    let free = reg.entries.iter().position(Option::is_none).ok_or(EBUSY)?;
    let mut e = Entry { id, inner: sys::InnerRef::new(inner), key, number, is_vf, numvfs: 0, shown: None };
    let pf_number = if is_vf {
        let pf = reg.pf(key).ok_or(EPROBE_DEFER)?;
        (number < pf.numvfs as usize).then_some(pf.number)
    } else {
        Some(number)
    };
    if let Some(pf) = pf_number {
        e.shown = Some(show(&e, pf)?);
    }
    reg.entries[free] = Some(e);
    Ok(id)
}

/// Removes function `id` (and, for a PF, hides its VFs); destroys outside the lock.
pub(crate) fn unregister(id: u64) {
    let mut doomed: [Option<Shown>; MAX_VFS + 1] = [const { None }; MAX_VFS + 1];
    {
        let mut reg = sys::REGISTRY.lock();
        let Some(slot) = reg.entries.iter_mut().find(|s| s.as_ref().is_some_and(|e| e.id == id))
        else {
            return;
        };
        let e = slot.take();
        if let Some(e) = e {
            doomed[0] = e.shown;
            if !e.is_vf {
                let vfs = reg.entries.iter_mut().flatten().filter(|v| v.is_vf && v.key == e.key);
                for (d, v) in doomed[1..].iter_mut().zip(vfs) {
                    *d = v.shown.take();
                }
            }
        }
    }
    drop(doomed);
}

/// Runs `f` on shown function `id` under the lock; `ENODEV` once it is gone or hidden.
pub(crate) fn with_device<R>(id: u64, f: impl FnOnce(&Inner<'_>) -> Result<R>) -> Result<R> {
    let reg = sys::REGISTRY.lock();
    let e = reg
        .entries
        .iter()
        .flatten()
        .find(|e| e.id == id && e.shown.is_some())
        .ok_or(ENODEV)?;
    f(e.inner.get())
}

/// `sriov_totalvfs` of the PF at `key`: VF functions bound in its slot.
pub(crate) fn totalvfs(key: u32) -> u32 {
    let reg = sys::REGISTRY.lock();
    reg.entries.iter().flatten().filter(|e| e.is_vf && e.key == key).count() as u32
}

/// `sriov_numvfs` of the PF at `key`.
pub(crate) fn numvfs(key: u32) -> u32 {
    sys::REGISTRY.lock().pf(key).map_or(0, |e| e.numvfs)
}

/// Writes `sriov_numvfs`: like the PCI core, `-ERANGE` above `sriov_totalvfs` and `-EBUSY`
/// when changing between two non-zero values.
pub(crate) fn set_numvfs(key: u32, n: u32) -> Result {
    let mut doomed: [Option<Shown>; MAX_VFS] = [const { None }; MAX_VFS];
    let result = {
        let mut reg = sys::REGISTRY.lock();
        let total = reg.entries.iter().flatten().filter(|e| e.is_vf && e.key == key).count();
        let (current, pf_number) = reg.pf(key).map(|p| (p.numvfs, p.number)).ok_or(ENODEV)?;
        if n as usize > total {
            Err(ERANGE)
        } else if n == current {
            Ok(())
        } else if current != 0 && n != 0 {
            Err(EBUSY)
        } else {
            let mut result = Ok(());
            let mut d = doomed.iter_mut();
            for e in reg.entries.iter_mut().flatten().filter(|e| e.is_vf && e.key == key) {
                let want = (e.number as u32) < n;
                if want && e.shown.is_none() {
                    match show(e, pf_number) {
                        Ok(s) => e.shown = Some(s),
                        Err(err) => result = Err(err),
                    }
                } else if !want {
                    if let Some(slot) = d.next() {
                        *slot = e.shown.take();
                    }
                }
            }
            if let Some(pf) = reg.entries.iter_mut().flatten().find(|e| !e.is_vf && e.key == key) {
                pf.numvfs = if result.is_ok() { n } else { 0 };
            }
            result
        }
    };
    drop(doomed);
    result
}
