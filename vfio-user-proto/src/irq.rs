//! Interrupt state: the eventfds a client registered with DEVICE_SET_IRQS, per-vector mask
//! and pending bits, and [`IrqHandle`], the device's way to raise an interrupt.
//!
//! Semantics follow VFIO's `VFIO_DEVICE_SET_IRQS`: exactly one DATA_ and one ACTION_ flag;
//! `ACTION_TRIGGER|DATA_EVENTFD` assigns eventfds to vectors `start..start+count` (no
//! descriptors at all = de-assign that range); `ACTION_TRIGGER|DATA_NONE` with `count == 0`
//! disables the whole index; `DATA_NONE`/`DATA_BOOL` with TRIGGER fire (loopback test),
//! with MASK/UNMASK mask or unmask. A masked vector that fires becomes pending and is
//! delivered on unmask.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use crate::wire::IrqSetFlags;

/// Upper bound on vectors per index we keep state for (MSI-X allows 2048).
pub const MAX_VECTORS: u32 = 2048;
/// Upper bound on IRQ indices we keep state for.
pub const MAX_INDICES: u32 = 64;

#[derive(Debug, Default)]
struct Vector {
    eventfd: Option<OwnedFd>,
    masked: bool,
    pending: bool,
}

impl Vector {
    fn fire(&mut self) -> bool {
        if self.masked {
            self.pending = true;
            return false;
        }
        match &self.eventfd {
            Some(fd) => match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "eventfd write failed");
                    false
                }
            },
            None => {
                self.pending = true;
                false
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct IrqTable {
    indices: Vec<Vec<Vector>>,
}

/// Why raising an interrupt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IrqError {
    #[error("IRQ index {index} vector {vector} does not exist")]
    NoSuchVector { index: u32, vector: u32 },
}

impl IrqTable {
    /// Size the table from the device's IRQ info (`counts[i]` vectors for index `i`).
    pub(crate) fn new(counts: &[u32]) -> Self {
        Self {
            indices: counts
                .iter()
                .take(MAX_INDICES as usize)
                .map(|&c| (0..c.min(MAX_VECTORS)).map(|_| Vector::default()).collect())
                .collect(),
        }
    }

    /// Drop every eventfd and mask/pending bit (client went away).
    pub(crate) fn reset(&mut self) {
        for idx in &mut self.indices {
            for v in idx.iter_mut() {
                *v = Vector::default();
            }
        }
    }

    /// Apply a DEVICE_SET_IRQS request. `bools` is the DATA_BOOL payload.
    pub(crate) fn set(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        bools: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), Errno> {
        let flags = IrqSetFlags::from_bits(flags).ok_or(Errno::EINVAL)?;
        let data = flags & IrqSetFlags::DATA_TYPE_MASK;
        let action = flags & IrqSetFlags::ACTION_TYPE_MASK;
        if data.bits().count_ones() != 1 || action.bits().count_ones() != 1 {
            return Err(Errno::EINVAL);
        }
        if data != IrqSetFlags::DATA_EVENTFD && !fds.is_empty() {
            return Err(Errno::EINVAL);
        }
        let vectors = self.indices.get_mut(index as usize).ok_or(Errno::EINVAL)?;
        if count == 0 {
            // VFIO: DATA_NONE + TRIGGER + count 0 disables all interrupts of the index.
            if data == IrqSetFlags::DATA_NONE && action == IrqSetFlags::ACTION_TRIGGER {
                for v in vectors.iter_mut() {
                    *v = Vector::default();
                }
                return Ok(());
            }
            return Err(Errno::EINVAL);
        }
        let end = start.checked_add(count).ok_or(Errno::EINVAL)?;
        if end as usize > vectors.len() {
            return Err(Errno::EINVAL);
        }
        let range = &mut vectors[start as usize..end as usize];
        match data {
            IrqSetFlags::DATA_NONE => {
                for v in range.iter_mut() {
                    apply(v, action);
                }
            }
            IrqSetFlags::DATA_BOOL => {
                let bools = bools.get(..count as usize).ok_or(Errno::EINVAL)?;
                for (v, &b) in range.iter_mut().zip(bools) {
                    if b != 0 {
                        apply(v, action);
                    }
                }
            }
            _ => {
                if action != IrqSetFlags::ACTION_TRIGGER {
                    // Mask/unmask through eventfds (KVM resamplefd) is not implemented.
                    return Err(Errno::EINVAL);
                }
                if fds.is_empty() {
                    for v in range.iter_mut() {
                        v.eventfd = None;
                    }
                } else if fds.len() == count as usize {
                    for (v, fd) in range.iter_mut().zip(fds) {
                        v.eventfd = Some(fd);
                    }
                } else {
                    return Err(Errno::EINVAL);
                }
            }
        }
        Ok(())
    }

    fn vector(&mut self, index: u32, vector: u32) -> Result<&mut Vector, IrqError> {
        self.indices
            .get_mut(index as usize)
            .and_then(|v| v.get_mut(vector as usize))
            .ok_or(IrqError::NoSuchVector { index, vector })
    }
}

fn apply(v: &mut Vector, action: IrqSetFlags) {
    if action == IrqSetFlags::ACTION_MASK {
        v.masked = true;
    } else if action == IrqSetFlags::ACTION_UNMASK {
        v.masked = false;
        if v.pending && v.eventfd.is_some() {
            v.pending = false;
            v.fire();
        }
    } else {
        v.fire();
    }
}

/// The device's handle for raising interrupts. Cheap to clone; valid across reconnects.
#[derive(Debug, Clone, Default)]
pub struct IrqHandle {
    pub(crate) table: Arc<Mutex<IrqTable>>,
}

impl IrqHandle {
    /// Raise vector `vector` of IRQ index `index` (e.g. [`crate::wire::irq_index::MSIX`]).
    /// Returns whether an eventfd was signalled; `false` means the vector is masked or has no
    /// eventfd, and it is left pending (delivered on unmask).
    pub fn trigger(&self, index: u32, vector: u32) -> Result<bool, IrqError> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        Ok(t.vector(index, vector)?.fire())
    }

    /// Whether the client registered an eventfd for this vector.
    pub fn has_eventfd(&self, index: u32, vector: u32) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.vector(index, vector)
            .map(|v| v.eventfd.is_some())
            .unwrap_or(false)
    }

    /// Whether this vector is masked.
    pub fn is_masked(&self, index: u32, vector: u32) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.vector(index, vector).map(|v| v.masked).unwrap_or(false)
    }

    /// Whether this vector has an undelivered interrupt.
    pub fn is_pending(&self, index: u32, vector: u32) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.vector(index, vector).map(|v| v.pending).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsFd;

    fn eventfd() -> (EventFd, OwnedFd) {
        let e = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd");
        let dup = e.as_fd().try_clone_to_owned().expect("dup");
        (e, dup)
    }

    const TRIGGER_EVENTFD: u32 =
        IrqSetFlags::ACTION_TRIGGER.bits() | IrqSetFlags::DATA_EVENTFD.bits();

    #[test]
    fn trigger_writes_registered_eventfd() {
        let h = IrqHandle {
            table: Arc::new(Mutex::new(IrqTable::new(&[1, 1, 4]))),
        };
        let (e, fd) = eventfd();
        h.table
            .lock()
            .expect("lock")
            .set(TRIGGER_EVENTFD, 2, 3, 1, &[], vec![fd])
            .expect("set");
        assert!(h.trigger(2, 3).expect("vector exists"));
        assert_eq!(e.read().expect("signalled"), 1);
        assert_eq!(
            h.trigger(2, 4),
            Err(IrqError::NoSuchVector {
                index: 2,
                vector: 4
            })
        );
    }

    #[test]
    fn masked_vector_stays_pending_until_unmask() {
        let h = IrqHandle {
            table: Arc::new(Mutex::new(IrqTable::new(&[1]))),
        };
        let (e, fd) = eventfd();
        let mut t = h.table.lock().expect("lock");
        t.set(TRIGGER_EVENTFD, 0, 0, 1, &[], vec![fd]).expect("set");
        let mask = (IrqSetFlags::ACTION_MASK | IrqSetFlags::DATA_NONE).bits();
        t.set(mask, 0, 0, 1, &[], vec![]).expect("mask");
        drop(t);
        assert!(!h.trigger(0, 0).expect("exists"));
        assert!(h.is_pending(0, 0));
        assert!(e.read().is_err(), "nothing delivered while masked");
        let unmask = (IrqSetFlags::ACTION_UNMASK | IrqSetFlags::DATA_BOOL).bits();
        h.table
            .lock()
            .expect("lock")
            .set(unmask, 0, 0, 1, &[1], vec![])
            .expect("unmask");
        assert_eq!(e.read().expect("delivered on unmask"), 1);
        assert!(!h.is_pending(0, 0));
    }

    #[test]
    fn set_irqs_rejects_bad_flag_combinations_and_ranges() {
        let mut t = IrqTable::new(&[1, 2]);
        let none_trigger = (IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_NONE).bits();
        assert_eq!(t.set(0, 0, 0, 1, &[], vec![]), Err(Errno::EINVAL));
        assert_eq!(
            t.set(
                none_trigger | IrqSetFlags::DATA_BOOL.bits(),
                0,
                0,
                1,
                &[],
                vec![]
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            t.set(none_trigger, 1, 1, 2, &[], vec![]),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            t.set(none_trigger, 1, u32::MAX, 2, &[], vec![]),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            t.set(none_trigger, 9, 0, 1, &[], vec![]),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            t.set(TRIGGER_EVENTFD, 1, 0, 2, &[], vec![eventfd().1]),
            Err(Errno::EINVAL)
        );
        assert!(
            t.set(none_trigger, 1, 0, 0, &[], vec![]).is_ok(),
            "count 0 disables the index"
        );
        assert!(
            t.set(TRIGGER_EVENTFD, 1, 0, 2, &[], vec![]).is_ok(),
            "no fds de-assigns"
        );
    }
}
