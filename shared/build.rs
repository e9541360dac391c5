//! Compiles ../proto with protox (pure Rust), so building needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "data.proto",
        "control.proto",
        "management.proto",
        "privd.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed=../proto/{f}");
    }
    let fds = protox::compile(files, ["../proto"])?;
    let mut cfg = prost_build::Config::new();
    cfg.type_attribute(".", "#[allow(clippy::doc_lazy_continuation)]");
    cfg.compile_fds(fds)?;
    Ok(())
}
