//! An app archive comes from another worker's upload: unpacking it, whether it succeeds
//! or fails, creates nothing outside the destination, leaves no link, device or set-id
//! file behind, and touches nothing next to it.
#![no_main]

use assay::kinds::generate::unpack;
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const BYSTANDER: &[u8] = b"must not change\n";

fuzz_target!(|data: &[u8]| {
    // In memory when the machine has it: every run creates and removes a few files.
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let root = base.path();
    // The destination is nested so that `..` one or two levels up lands on something
    // watched: a sibling file and the folders that hold the destination.
    let dest = root.join("apps").join("app");
    std::fs::create_dir(root.join("apps")).unwrap();
    std::fs::write(root.join("apps").join("bystander"), BYSTANDER).unwrap();
    let archive = root.join("app.tar");
    std::fs::write(&archive, data).unwrap();

    let result = unpack(&archive, &dest);

    assert_eq!(
        std::fs::read(root.join("apps").join("bystander")).unwrap(),
        BYSTANDER
    );
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let expected = path == archive
                || path == root.join("apps")
                || path == root.join("apps").join("bystander")
                || path.starts_with(&dest);
            assert!(
                expected,
                "{path:?} created outside the destination ({result:?})"
            );
            let kind = meta.file_type();
            assert!(
                kind.is_file() || kind.is_dir(),
                "{path:?} is neither a file nor a folder: {kind:?}"
            );
            assert_eq!(
                meta.permissions().mode() & 0o7000,
                0,
                "{path:?} keeps set-id or sticky bits"
            );
            // A second name for a file means a hard link (to the archive or the bystander).
            assert!(
                kind.is_dir() || meta.nlink() == 1,
                "{path:?} is hard-linked"
            );
            if kind.is_dir() {
                // An archive may make a folder unreadable; the check and the clean-up
                // still need to get in.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
                stack.push(path);
            }
        }
    }
});
