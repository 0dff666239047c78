//! Compiles the control-plane protos in pure Rust (no protoc needed) and
//! embeds the BPF object when `cargo xtask build-ebpf` has produced one.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../proto");
    let proto = proto_root.join("portcullis/v1/control.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

    println!("cargo:rustc-check-cfg=cfg(embedded_bpf)");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_BPF_OBJECT");
    let object = env::var_os("PORTCULLIS_BPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/portcullis.bpf.o"));
    println!("cargo:rerun-if-changed={}", object.display());
    if object.is_file() {
        println!("cargo:rustc-cfg=embedded_bpf");
        println!(
            "cargo:rustc-env=PORTCULLIS_BPF_OBJECT_PATH={}",
            object.canonicalize()?.display()
        );
    } else {
        println!(
            "cargo:warning=no BPF object at {}: the agent will need --bpf-object (run `cargo xtask build-ebpf`)",
            object.display()
        );
    }
    Ok(())
}
