//! The locator's failure messages, driven through the environment it reads. One test function
//! in its own test binary: it changes process-wide environment variables.

use qemu::{LocateError, QemuInstall};

#[test]
fn missing_or_unusable_qemu_fails_with_one_line_naming_the_provisioning_script() {
    let empty = tempfile::tempdir().expect("tempdir");
    std::env::set_var("PATH", empty.path());
    std::env::set_var("MOCK_ACCEL_CACHE", empty.path());
    std::env::remove_var("MOCK_ACCEL_ROOTFS");

    // Nothing anywhere.
    std::env::remove_var("QEMU");
    let err = QemuInstall::locate().expect_err("no QEMU exists");
    assert!(matches!(err, LocateError::NotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("scripts/provision-rootfs.sh"), "{text}");
    assert!(text.contains("no complete rootfs-trixie-*"), "{text}");
    assert!(!text.contains('\n'), "{text}");

    // An explicit override that does not exist is an error, not a fallback.
    std::env::set_var("QEMU", "/nonexistent/qemu-system-x86_64");
    let err = QemuInstall::locate().expect_err("override does not exist");
    assert!(matches!(err, LocateError::Override { .. }), "{err}");
    assert!(
        err.to_string().contains("scripts/provision-rootfs.sh"),
        "{err}"
    );

    // An override that runs but is not QEMU.
    std::env::set_var("QEMU", "/bin/true");
    let err = QemuInstall::locate().expect_err("/bin/true is not QEMU");
    assert!(
        err.to_string().contains("unrecognised --version output"),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'), "{err}");

    // A rootfs directory without the completion marker.
    std::env::remove_var("QEMU");
    let partial = empty.path().join("rootfs-trixie-0000000000000000");
    std::fs::create_dir(&partial).expect("mkdir");
    let err = QemuInstall::locate().expect_err("incomplete rootfs");
    assert!(
        err.to_string().contains("no complete rootfs-trixie-*"),
        "{err}"
    );
    std::env::set_var("MOCK_ACCEL_ROOTFS", &partial);
    let err = QemuInstall::locate().expect_err("incomplete rootfs override");
    assert!(matches!(err, LocateError::RootfsOverride { .. }), "{err}");
    assert!(err.to_string().contains(".complete"), "{err}");
}
