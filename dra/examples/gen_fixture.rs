//! Writes a generated sysfs fixture: `cargo run -p dra --example gen_fixture -- <root> <n>`
//! (`n` rounded up to a multiple of 3: PF + 2 VFs per group, groups alternate NUMA 0/1).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (Some(root), Some(n)) = (a.first(), a.get(1)) else {
        return Err("usage: gen_fixture <root> <devices>".into());
    };
    let n: usize = n.parse()?;
    if n > 30_000 {
        return Err("at most 30000 devices".into());
    }
    let written = dra::fixture::write_many(std::path::Path::new(root), n)?;
    println!("{written} devices under {root}");
    Ok(())
}
