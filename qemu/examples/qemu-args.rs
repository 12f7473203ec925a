//! Print the QEMU arguments for a topology file, one per line (for inspection and shells):
//! `cargo run -p qemu --example qemu-args -- topology.toml [QMP_SOCKET]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let path = argv
        .next()
        .ok_or("usage: qemu-args TOPOLOGY.toml [QMP_SOCKET]")?;
    let topology = qemu::Topology::load(path.as_ref())?;
    let options = qemu::LaunchOptions {
        qmp_socket: argv.next().map(Into::into),
        ..qemu::LaunchOptions::default()
    };
    for arg in qemu::build_qemu_args(&topology, &options)? {
        println!("{arg}");
    }
    Ok(())
}
