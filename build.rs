//! Embeds the template catalog (`templates/*.toml`) in the binary, so that an installed
//! `assay` does not depend on the source tree.

use std::io::Write;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("templates/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR"))
        .join("builtin_templates.rs");
    let mut f = std::fs::File::create(out).expect("create builtin_templates.rs");
    writeln!(f, "pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[").unwrap();
    for p in names {
        println!("cargo:rerun-if-changed={}", p.display());
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        writeln!(
            f,
            "    ({name:?}, include_str!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    writeln!(f, "];").unwrap();
}
