//! The system-call filter every sandboxed app runs under (`assay __seccomp -- PROGRAM …`,
//! run inside the sandbox after the drop to the app's user, before the app's own
//! environment is set: an `LD_PRELOAD` of the recipe's cannot skip it).
//!
//! Namespaces, users and capabilities already keep an app from the worker; the filter
//! takes away the kernel interfaces an app has no use for and that have been the way out
//! of sandboxes like this one: making user namespaces (in which it would hold every
//! capability, and so could mount, and reach much more of the kernel), `io_uring` (which
//! seccomp cannot see into), kernel keyrings (which outlive the app and are shared by its
//! uid, so the next app on the same port would read them), mounts, BPF, perf events,
//! `userfaultfd`, `ptrace` and module loading. Each of these fails with `EPERM` (`clone3` with
//! `ENOSYS`, so that the C library falls back to `clone`, whose flags the filter can
//! read); every other call is allowed. A call in another architecture's ABI (32-bit or
//! x32 on x86_64) kills the process: the filter knows only the native numbers.

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;
use std::ffi::OsString;

/// The hidden subcommand that runs a program under the filter.
pub const SUBCOMMAND: &str = "__seccomp";

/// System calls that fail with `EPERM`.
const DENIED: &[(&str, i64)] = &[
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    // Reading or steering another process of the app's (on kernels before 4.8, ptrace
    // could also skip this filter); no web app debugs itself.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
];

/// `clone` flags that make a namespace: refused, whatever else the call asks for.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// Syscall numbers from here up are x32's on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("no system-call filter for this architecture ({0})")]
    Architecture(String),
    #[error("cannot build the system-call filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the system-call filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// The filters, in the order they are installed: the `EPERM` ones, then `clone3`'s.
pub fn filters() -> Result<Vec<BpfProgram>, FilterError> {
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| FilterError::Architecture(std::env::consts::ARCH.into()))?;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = *flag as u64;
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    let mut eperm: BpfProgram = eperm.try_into()?;
    if arch == seccompiler::TargetArch::x86_64 {
        refuse_x32(&mut eperm);
    }
    Ok(vec![eperm, clone3.try_into()?])
}

/// Kill a process that makes an x32 call: after the architecture check (the program's
/// first three instructions), before anything else.
fn refuse_x32(program: &mut BpfProgram) {
    // Classic BPF opcodes: BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JGE | BPF_K, BPF_RET | BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    let check = [
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0, // seccomp_data.nr
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_KILL_PROCESS,
        },
    ];
    program.splice(3..3, check);
}

/// `assay __seccomp -- PROGRAM ARGS…`: install the filters, then become the program.
pub fn run(command: Vec<OsString>) -> std::process::ExitCode {
    let fail = |what: String| {
        eprintln!("assay sandbox: {what}");
        std::process::ExitCode::from(127)
    };
    let Some(program) = command.first() else {
        return fail("no program to run under the system-call filter".into());
    };
    // The sandbox set `no_new_privs` already; set again, it is what lets an unprivileged
    // process install a filter at all.
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return fail(format!("cannot set no_new_privs: {e}"));
    }
    let installed = filters().and_then(|filters| {
        filters
            .iter()
            .try_for_each(|f| seccompiler::apply_filter(f).map_err(FilterError::from))
    });
    if let Err(e) = installed {
        return fail(e.to_string());
    }
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(program)
        .args(&command[1..])
        .exec();
    fail(format!("cannot run {}: {e}", program.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_build_for_this_machine() {
        let filters = filters().unwrap();
        assert_eq!(filters.len(), 2);
        // The x32 check sits right after the architecture check.
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(filters[0][4].k, X32_SYSCALL_BIT);
            assert_eq!(filters[0][5].k, libc::SECCOMP_RET_KILL_PROCESS);
        }
        let names: std::collections::HashSet<_> = DENIED.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), DENIED.len(), "no call listed twice");
    }
}
