//! Building the kernel programs, and installing the pieces that needs.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

const TOOLCHAIN: &str = "nightly";
const TARGET: &str = "bpfel-unknown-none";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where the built object is copied; the agent's build script embeds it.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/bpf/portcullis.bpf.o")
}

pub fn build() -> Result<PathBuf> {
    ensure_nightly("the BPF target needs `-Z build-std`")?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    let root = workspace_root();
    let target_dir = root.join("target/bpf");
    let rustflags = [
        "--cfg",
        "bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let status = Command::new("rustup")
        .args(["run", TOOLCHAIN, "cargo", "build", "--release"])
        .args(["-p", "portcullis-ebpf", "--bin", "portcullis-bpf"])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .status()
        .context("running the nightly cargo for the BPF target")?;
    if !status.success() {
        bail!("building the BPF programs failed ({status})");
    }
    let built = target_dir.join(TARGET).join("release/portcullis-bpf");
    let object = object_path();
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    println!("xtask: BPF object at {}", object.display());
    Ok(object)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with how to install nightly when it is missing; `needs` says
/// what for (`the BPF target needs -Z build-std`).
pub fn ensure_nightly(needs: &str) -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed for the nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!("no nightly toolchain: {needs}. Install one with `rustup toolchain install nightly`");
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        TOOLCHAIN,
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    println!("xtask: installing nightly rust-src (needed for -Z build-std=core)");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN])
        .status()?;
    if !status.success() {
        bail!("`rustup component add rust-src --toolchain nightly` failed ({status})");
    }
    Ok(())
}

fn bpf_linker_works() -> bool {
    Command::new("rustup")
        .args(["run", TOOLCHAIN, "bpf-linker", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// bpf-linker must link against the LLVM that nightly's rustc emits bitcode
/// for. Nightly ships it as `lib/libLLVM.so.<major>.<minor>-rust-<version>`;
/// bpf-linker's build looks for `<prefix>/lib/libLLVM.so`, so a prefix
/// folder with that one symlink is enough.
fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustc").args([&format!("+{TOOLCHAIN}"), "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("nightly ships no libLLVM.so.* in {}", lib.display()))?;
    let major =
        llvm_major(&llvm).with_context(|| format!("unexpected LLVM library name {llvm}"))?;
    let prefix = workspace_root().join("target/xtask/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} ({llvm}); this takes a few minutes"
    );
    let status = Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        bail!("installing bpf-linker failed ({status})");
    }
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but `rustup run nightly bpf-linker --version` fails");
    }
    Ok(())
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22.
fn llvm_major(name: &str) -> Option<u32> {
    name.strip_prefix("libLLVM.so.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn reads_the_llvm_major_from_nightly_library_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.21.1"), Some(21));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
    }
}
