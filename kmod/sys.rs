// SPDX-License-Identifier: GPL-2.0

//! The driver's only unsafe code: the C interfaces kernel 7.3's Rust crate has no safe
//! abstraction for (device classes, class devices with sysfs attributes, `dev->numa_node`,
//! the PCI bus/devfn of a function), called through `kernel::bindings`; the registry's
//! global lock and its pointer to each function's [`Inner`]; the `/dev` node lookup in
//! `open`; plus the lock-free table of PF numbers.
//!
//! Invariants: a [`ClassDevice`] holds a pointer to its [`Inner`] as driver data, and the
//! registry an [`InnerRef`]; the owner (`MockAccel`) unregisters from the registry (which
//! destroys the class device, waiting for running sysfs callbacks, and stops `/dev` files
//! from reaching the `Inner`) before dropping the `Inner`. The class outlives every class
//! device because the module drops the PCI driver registration (unbinding all devices)
//! before the [`Class`].

use crate::{devnode::DevFile, devnode::DevNode, Inner};
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use kernel::ffi::c_char;
use kernel::miscdevice::MiscDeviceRegistration;
use kernel::{bindings, device, prelude::*};

kernel::sync::global_lock! {
    // SAFETY: `init_registry` runs once, in the module initializer, before the PCI driver
    // registers (the only way to reach any other use of the lock).
    pub(crate) unsafe(uninit) static REGISTRY: Mutex<crate::registry::Registry> =
        crate::registry::Registry::new();
}

/// Initializes [`REGISTRY`]; called exactly once, from module init.
pub(crate) fn init_registry() {
    // SAFETY: called once, from module init, before any other use (see above).
    unsafe { REGISTRY.init() };
}

/// The registry's pointer to a bound function's [`Inner`].
pub(crate) struct InnerRef(*const Inner<'static>);

// SAFETY: `Inner` is only read through shared references (its BAR accessors are `&self`
// MMIO); the pointer moves between threads only inside the registry mutex.
unsafe impl Send for InnerRef {}

impl InnerRef {
    pub(crate) fn new(inner: &Inner<'_>) -> Self {
        // A lifetime-erasing pointer cast; it is only dereferenced in `get`.
        Self(inner as *const Inner<'_> as *const Inner<'static>)
    }

    /// The `Inner`, valid while the entry holding this is in the registry.
    pub(crate) fn get(&self) -> &Inner<'_> {
        // SAFETY: the owner removes the registry entry (under the registry lock, which every
        // caller holds while using the returned reference) before freeing the `Inner`.
        unsafe { &*self.0 }
    }
}

/// Registry id of the `/dev` node `misc` belongs to.
pub(crate) fn devnode_id(misc: &MiscDeviceRegistration<DevFile>) -> u64 {
    let field = misc as *const MiscDeviceRegistration<DevFile> as *mut MiscDeviceRegistration<DevFile>;
    // SAFETY: every `MiscDeviceRegistration<DevFile>` is the `reg` field of a pinned
    // `DevNode` (only `DevNode::register` creates one), alive while its node can be opened;
    // `id` is written before `reg` registers and never changes.
    unsafe { (*kernel::container_of!(field, DevNode, reg)).id }
}

/// Maximum number of mock-accel functions (PFs + VFs) in one guest.
pub(crate) const MAX_DEVICES: usize = 64;

/// The registered `mock-accel` class (null before init / after exit).
static CLASS: AtomicPtr<bindings::class> = AtomicPtr::new(core::ptr::null_mut());

/// PF numbers (`mockN`): 0 = free, else the PF's slot key.
static SLOTS: [AtomicU32; MAX_DEVICES] = [const { AtomicU32::new(0) }; MAX_DEVICES];

/// `IS_ERR_OR_NULL()` for pointers returned by the kernel.
fn is_err<T>(p: *mut T) -> bool {
    p.is_null() || (p as usize) >= (usize::MAX - bindings::MAX_ERRNO as usize)
}

/// Owner of the `mock-accel` class.
pub(crate) struct Class;

impl Class {
    pub(crate) fn create() -> Result<Self> {
        // SAFETY: `class_create` keeps the name pointer, a string literal living forever.
        let cls = unsafe { bindings::class_create(c"mock-accel".as_ptr().cast()) };
        if is_err(cls) {
            return Err(ENOMEM);
        }
        CLASS.store(cls, Ordering::Release);
        Ok(Class)
    }
}

impl Drop for Class {
    fn drop(&mut self) {
        let cls = CLASS.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !cls.is_null() {
            // SAFETY: `cls` came from a successful `class_create` and is destroyed once; every
            // class device was removed when the PCI driver registration was dropped.
            unsafe { bindings::class_destroy(cls) };
        }
    }
}

/// Key of a PCI function's slot (bus and device number; function ignored), never 0.
pub(crate) fn slot_key<C: device::DeviceContext>(dev: &device::Device<C>) -> u32 {
    let raw = dev as *const device::Device<C> as *const bindings::device;
    // SAFETY: `dev` is the `struct device` embedded in a live `struct pci_dev` (it is the
    // device of a bound PCI function), so stepping back by the field offset is container_of.
    let pci = unsafe {
        (raw as *const u8).sub(core::mem::offset_of!(bindings::pci_dev, dev))
            as *const bindings::pci_dev
    };
    // SAFETY: `pci` is live while we hold `dev`; `bus` is set before probe and stays valid.
    let (bus, devfn) = unsafe { (u32::from((*(*pci).bus).number), (*pci).devfn) };
    ((bus << 8) | (devfn & !7)) + 1
}

/// Allocates a PF number for the PF at slot `key` (never 0).
pub(crate) fn alloc_slot(key: u32) -> Option<usize> {
    SLOTS
        .iter()
        .position(|s| s.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire).is_ok())
}

/// Frees a PF number from [`alloc_slot`].
pub(crate) fn free_slot(slot: usize) {
    if let Some(s) = SLOTS.get(slot) {
        s.store(0, Ordering::Release);
    }
}

/// Index (`mockN`) of the PF registered for slot `key`.
pub(crate) fn pf_index(key: u32) -> Option<usize> {
    SLOTS.iter().position(|s| s.load(Ordering::Acquire) == key)
}

/// `dev_to_node(dev)`: the device's NUMA node (-1 when unknown).
pub(crate) fn numa_node<C: device::DeviceContext>(dev: &device::Device<C>) -> i32 {
    let raw = dev as *const device::Device<C> as *const bindings::device;
    // SAFETY: `device::Device` is `#[repr(transparent)]` over `Opaque<struct device>`; the
    // reference keeps it alive and `numa_node` is a plain int set before probe.
    unsafe { (*raw).numa_node }
}

/// `core::fmt::Write` into a fixed byte buffer (a sysfs page), truncating silently.
pub(crate) struct PageWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> PageWriter<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl core::fmt::Write for PageWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// A `struct device_attribute` that can live in a `static`.
#[repr(transparent)]
struct Attr(bindings::device_attribute);

// SAFETY: the attributes are never mutated after compile time; the kernel only reads them.
unsafe impl Sync for Attr {}

const fn attr(name: &'static CStr, writable: bool) -> Attr {
    // SAFETY: all-zero is a valid `device_attribute` (null pointers, `None` callbacks).
    let mut a: bindings::device_attribute = unsafe { core::mem::zeroed() };
    a.attr.name = name.as_ptr().cast();
    a.attr.mode = if writable { 0o644 } else { 0o444 };
    a.__bindgen_anon_1.show = Some(show);
    if writable {
        a.__bindgen_anon_2.store = Some(store);
    }
    Attr(a)
}

/// uuid, memory_size, capabilities, status (RW), numa_node (all); physfn (VFs);
/// sriov_numvfs (RW), sriov_totalvfs (PFs).
static ATTRS: [Attr; 8] = [
    attr(c"uuid", false),
    attr(c"memory_size", false),
    attr(c"capabilities", false),
    attr(c"status", true),
    attr(c"numa_node", false),
    attr(c"physfn", false),
    attr(c"sriov_numvfs", true),
    attr(c"sriov_totalvfs", false),
];

/// Whether `ATTRS[i]` belongs on a VF (`vf`) or PF class device.
fn attr_wanted(i: usize, vf: bool) -> bool {
    match i {
        0..=4 => true,
        5 => vf,
        _ => !vf,
    }
}

/// Name of the attribute `attr` points at.
///
/// # Safety
/// `attr` must point to one of [`ATTRS`].
unsafe fn attr_name<'a>(attr: *const bindings::device_attribute) -> &'a str {
    // SAFETY: guaranteed by the caller; our names are static NUL-terminated ASCII literals.
    unsafe { CStr::from_char_ptr((*attr).attr.name.cast()) }
        .to_str()
        .unwrap_or("")
}

/// Driver data of a class device.
///
/// # Safety
/// `dev` must be one of our class devices, alive (sysfs holds an active reference).
unsafe fn inner<'a>(dev: *mut bindings::device) -> Option<&'a Inner<'a>> {
    // SAFETY: caller guarantees `dev` is live; drvdata is the `Inner` set at creation, which
    // outlives the class device (see module invariants).
    unsafe { (bindings::dev_get_drvdata(dev) as *const Inner<'a>).as_ref() }
}

unsafe extern "C" fn show(
    dev: *mut bindings::device,
    attr: *mut bindings::device_attribute,
    buf: *mut c_char,
) -> isize {
    // SAFETY: sysfs calls `show` with a live class device of ours and one of `ATTRS`.
    let (inner, name) = unsafe { (inner(dev), attr_name(attr)) };
    let Some(inner) = inner else {
        return -(bindings::ENODEV as isize);
    };
    // SAFETY: sysfs passes a buffer of PAGE_SIZE bytes for `show` to fill.
    let page = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, bindings::PAGE_SIZE) };
    let mut w = PageWriter::new(page);
    match inner.show(name, &mut w) {
        Some(()) => w.len() as isize,
        None => -(bindings::EIO as isize),
    }
}

unsafe extern "C" fn store(
    dev: *mut bindings::device,
    attr: *mut bindings::device_attribute,
    buf: *const c_char,
    count: usize,
) -> isize {
    // SAFETY: sysfs calls `store` with a live class device of ours and one of `ATTRS`.
    let (inner, name) = unsafe { (inner(dev), attr_name(attr)) };
    let Some(inner) = inner else {
        return -(bindings::ENODEV as isize);
    };
    // SAFETY: sysfs passes `count` (< PAGE_SIZE) readable bytes.
    let input = unsafe { core::slice::from_raw_parts(buf as *const u8, count) };
    match inner.store(name, input) {
        Ok(()) => count as isize,
        Err(e) => e.to_errno() as isize,
    }
}

/// A device of class `mock-accel` with our attributes, child of a PCI function (which gives
/// it the `device` link). Dropping it unregisters the device.
pub(crate) struct ClassDevice(*mut bindings::device);

// SAFETY: the pointer is only used to unregister the device, allowed from any thread.
unsafe impl Send for ClassDevice {}
// SAFETY: nothing is accessed through `&ClassDevice`.
unsafe impl Sync for ClassDevice {}

impl ClassDevice {
    /// Creates class device `name` under `parent` with `inner` as driver data; `vf` adds the
    /// `physfn` attribute.
    pub(crate) fn create<C: device::DeviceContext>(
        parent: &device::Device<C>,
        inner: &Inner<'_>,
        name: &CStr,
        vf: bool,
    ) -> Result<Self> {
        let cls = CLASS.load(Ordering::Acquire);
        if cls.is_null() {
            return Err(ENODEV);
        }
        let parent = parent as *const device::Device<C> as *mut bindings::device;
        // SAFETY: `cls` is our live class; `parent` is a live, bound PCI device; the format
        // is "%s" with a NUL-terminated argument; `inner` outlives the device (invariants).
        let dev = unsafe {
            bindings::device_create(
                cls,
                parent,
                0,
                inner as *const Inner<'_> as *mut core::ffi::c_void,
                c"%s".as_ptr().cast(),
                name.as_ptr(),
            )
        };
        if is_err(dev) {
            return Err(ENOMEM);
        }
        // Owned from here: an early return unregisters it.
        let this = ClassDevice(dev);
        for (_, a) in ATTRS.iter().enumerate().filter(|(i, _)| attr_wanted(*i, vf)) {
            // SAFETY: `dev` is live; `a` is a static attribute.
            let rc = unsafe { bindings::device_create_file(dev, &a.0) };
            if rc != 0 {
                return Err(Error::from_errno(rc));
            }
        }
        Ok(this)
    }

    /// Removes the device and its attributes (idempotent); waits for running callbacks.
    fn destroy(&mut self) {
        let dev = core::mem::replace(&mut self.0, core::ptr::null_mut());
        if !dev.is_null() {
            // SAFETY: `dev` came from `device_create` and is unregistered once; attribute
            // files go with it (kernfs drains active callbacks first).
            unsafe { bindings::device_unregister(dev) };
        }
    }
}

impl Drop for ClassDevice {
    fn drop(&mut self) {
        self.destroy();
    }
}
