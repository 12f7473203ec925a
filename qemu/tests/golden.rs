//! Golden tests: the QEMU command lines generated for the topologies in `tests/golden/*.toml`
//! must equal `tests/golden/*.txt` exactly (one argument per line, `# node NAME` before each
//! node's arguments).
//!
//! After an intended change, regenerate and review the diff:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p qemu --test golden
//! git diff qemu/tests/golden/
//! ```

use std::path::{Path, PathBuf};

use qemu::{build_qemu_args, Cluster, DirectBoot, LaunchOptions, Serial};

/// Launch options as the launcher will use them: per-node QMP socket, serial log and pidfile
/// under a run directory, direct boot of the test guest.
fn options_for(node: &str) -> LaunchOptions {
    let run = PathBuf::from("/run/mock-accel").join(node);
    LaunchOptions {
        boot: Some(DirectBoot {
            kernel: "/cache/mock-accel/guest/bzImage".into(),
            initrd: Some("/cache/mock-accel/guest/initramfs.cpio.gz".into()),
            append: Some("console=ttyS0 panic=-1".into()),
        }),
        serial: Serial::File(run.join("serial.log")),
        qmp_socket: Some(run.join("qmp.sock")),
        pidfile: Some(run.join("qemu.pid")),
        no_reboot: true,
        ..LaunchOptions::default()
    }
}

fn render(cluster: &Cluster) -> String {
    let mut out = String::new();
    for node in &cluster.nodes {
        out.push_str(&format!("# node {}\n", node.name));
        let args = build_qemu_args(node, &options_for(&node.name))
            .unwrap_or_else(|e| panic!("node {}: {e}", node.name));
        for arg in args {
            out.push_str(&arg);
            out.push('\n');
        }
    }
    out
}

fn check(case: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let input = dir.join(format!("{case}.toml"));
    let cluster = Cluster::load(&input).unwrap_or_else(|e| panic!("{case}: {e}"));
    compare(case, &render(&cluster));
}

/// Compare `actual` with `tests/golden/CASE.txt` (or write it with `UPDATE_GOLDEN=1`).
fn compare(case: &str, actual: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let expected_path = dir.join(format!("{case}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with UPDATE_GOLDEN=1 cargo test -p qemu --test golden",
            expected_path.display()
        )
    });
    if actual != expected {
        let first_diff = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or(actual.lines().count().min(expected.lines().count()));
        panic!(
            "{case}: generated arguments differ from {} at line {}:\n  generated: {:?}\n  expected:  {:?}\n\
             (intended? UPDATE_GOLDEN=1 cargo test -p qemu --test golden, then review git diff)",
            expected_path.display(),
            first_diff + 1,
            actual.lines().nth(first_diff),
            expected.lines().nth(first_diff),
        );
    }
}

#[test]
fn one_node_one_numa_without_vfs() {
    check("1node-1numa");
}

#[test]
fn one_node_one_numa_with_vfs() {
    check("1node-1numa-vfs");
}

#[test]
fn one_node_two_numa_without_vfs() {
    check("1node-2numa");
}

#[test]
fn one_node_two_numa_with_vfs() {
    check("1node-2numa-vfs");
}

#[test]
fn one_node_four_numa_without_vfs() {
    check("1node-4numa");
}

#[test]
fn one_node_four_numa_with_vfs() {
    check("1node-4numa-vfs");
}

#[test]
fn two_nodes_one_numa_without_vfs() {
    check("2node-1numa");
}

#[test]
fn two_nodes_two_numa_with_vfs_is_the_seeds_default_cluster() {
    check("2node-2numa-vfs");
}

#[test]
fn two_nodes_one_numa_with_vfs() {
    check("2node-1numa-vfs");
}

#[test]
fn two_nodes_two_numa_without_vfs() {
    check("2node-2numa");
}

#[test]
fn two_nodes_four_numa_without_vfs() {
    check("2node-4numa");
}

#[test]
fn two_nodes_four_numa_with_vfs() {
    check("2node-4numa-vfs");
}

/// What `mock-accel-cluster up --image disk.qcow2` runs for the default cluster: the plan's
/// sockets under the run directory, one socket per NUMA node, overlay + NoCloud seed drives and
/// user networking with an SSH port per node.
#[test]
fn launcher_default_cluster_with_a_disk_image() {
    use qemu::plan::{ClusterShape, Plan};
    use qemu::{Drive, UserNet};
    let plan = Plan::from_shape(&ClusterShape::default(), Path::new("/run/mock-accel"))
        .expect("default plan");
    let mut out = String::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        out.push_str(&format!("# node {}\n", node.name()));
        let options = LaunchOptions {
            serial: Serial::File(node.serial_log()),
            qmp_socket: Some(node.qmp_socket()),
            socket_per_numa_node: true,
            drives: vec![
                Drive {
                    path: node.overlay(),
                    format: "qcow2".into(),
                    read_only: false,
                },
                Drive {
                    path: node.seed(),
                    format: "raw".into(),
                    read_only: true,
                },
            ],
            user_net: Some(UserNet {
                ssh_port: 2222 + i as u16,
            }),
            ..LaunchOptions::default()
        };
        for arg in build_qemu_args(&node.topology, &options).expect("args") {
            out.push_str(&arg);
            out.push('\n');
        }
    }
    compare("launcher-image", &out);
}

#[test]
fn every_golden_input_has_a_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(str::to_owned)
        })
        .collect();
    cases.sort();
    assert_eq!(
        cases,
        [
            "1node-1numa",
            "1node-1numa-vfs",
            "1node-2numa",
            "1node-2numa-vfs",
            "1node-4numa",
            "1node-4numa-vfs",
            "2node-1numa",
            "2node-1numa-vfs",
            "2node-2numa",
            "2node-2numa-vfs",
            "2node-4numa",
            "2node-4numa-vfs"
        ]
    );
}
