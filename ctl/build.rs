//! Links libgcc's unwinder into ctl statically, where the C compiler has one, so that ctl
//! does not load `libgcc_s.so.1` at every start. That library's constructor probes the CPU
//! (`__cpu_indicator_init`), and `cpuid` traps to the hypervisor on a virtual machine, where
//! that is a measurable part of starting ctl (docs/benchmarks.md, section 9). Native builds
//! only (the compiler asked is the host's); elsewhere, or without `libgcc_eh.a`, ctl links
//! as before, with `libgcc_s.so.1`. Sets `cfg(static_unwinder)` when it links the archive.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(static_unwinder)");
    let env = |name: &str| {
        println!("cargo:rerun-if-env-changed={name}");
        std::env::var(name).ok()
    };
    let target = env("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") || env("HOST").as_deref() != Some(target.as_str()) {
        return;
    }
    let cc = env(&format!("CC_{}", target.replace('-', "_")))
        .or_else(|| env("CC"))
        .unwrap_or_else(|| "cc".into());
    let Ok(out) = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let archive = Path::new(&path);
    // An unknown file name is printed back as given, without a directory.
    let Some(dir) = archive.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    if !archive.is_file() {
        return;
    }
    println!("cargo:rerun-if-changed={}", archive.display());
    // Named before std's `-lgcc_s`, the archive resolves the unwinder's symbols first, and the
    // linker (with --as-needed, rustc's default) then leaves libgcc_s out.
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=gcc_eh");
    println!("cargo:rustc-cfg=static_unwinder");
}
