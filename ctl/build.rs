//! Links libgcc's unwinder into ctl statically, where the C compiler has one, so that ctl
//! does not load `libgcc_s.so.1` at every start. That library's constructor probes the CPU
//! (`__cpu_indicator_init`), and `cpuid` traps to the hypervisor on a virtual machine: the
//! two cost a short run about 0.2 ms there (docs/benchmarks.md, section 9). Without
//! `libgcc_eh.a`, ctl links as before, with `libgcc_s.so.1`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
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
    // Named before std's `-lgcc_s`, the archive resolves the unwinder's symbols first, and the
    // linker (with --as-needed, rustc's default) then leaves libgcc_s out.
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=gcc_eh");
}
