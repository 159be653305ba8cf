//! Writes the seed inputs of each fuzz target to `seeds/<target>/` (run from the fuzz folder).

use std::path::Path;

fn main() -> std::io::Result<()> {
    for (target, name, bytes) in rexec_fuzz::seeds() {
        let dir = Path::new("seeds").join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
