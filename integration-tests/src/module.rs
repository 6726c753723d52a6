//! The test Redis module `ferrytype` (`modules/ferrytype.c` beside this crate), built with the
//! system C compiler on first use.
//!
//! Tests load it into `redis-server` (`--loadmodule <path>`) to make keys holding module values
//! (RDB type 7, `RDB_TYPE_MODULE_2`), and check that ferry carries them over as opaque DUMP /
//! RESTORE payloads to a target that has the module loaded too. The module's data type is
//! `ferrytyp1` (encoding version 1): a byte string plus a u64 counter, driven by
//! `FERRYTYPE.SET key value` (replies with the counter, the number of SETs on the key),
//! `FERRYTYPE.PUT key value counter` (sets both exactly) and `FERRYTYPE.GET key` (replies
//! `[value, counter]` or nil). See the comment at the top of `ferrytype.c`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Path of `ferrytype.so`, ready for `redis-server --loadmodule`: compiled from
/// `modules/ferrytype.c` into `<target dir>/test-modules/` (the target dir is `CARGO_TARGET_DIR`
/// or the workspace's `target`), at most once per process, and not at all while the `.so` is
/// newer than the C source and header.
///
/// The compiler (`cc`, else `gcc`) writes a file of a temporary name that is then renamed, so a
/// test process running at the same time never loads a half-written module.
///
/// Panics, with the compiler's stderr, when no C compiler is found or the compilation fails.
pub fn ferrytype_module() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("integration-tests has a parent directory");
    let sources = [manifest.join("modules/ferrytype.c"), manifest.join("modules/redismodule.h")];
    // Joining keeps an absolute CARGO_TARGET_DIR as it is and anchors a relative one at the
    // workspace root, so the path stays valid for a redis-server started in another directory.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    let dir = target.join("test-modules");
    let so = dir.join("ferrytype.so");

    let newest_source = sources
        .iter()
        .map(|s| modified(s).unwrap_or_else(|| panic!("ferrytype test module: cannot read {}", s.display())))
        .max()
        .unwrap();
    if modified(&so).is_some_and(|built| built > newest_source) {
        return so;
    }

    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("ferrytype test module: cannot create {}: {e}", dir.display()));
    let tmp = dir.join(format!(".ferrytype.so.{}.tmp", std::process::id()));
    compile(&sources[0], &tmp);
    std::fs::rename(&tmp, &so).unwrap_or_else(|e| {
        let _ = std::fs::remove_file(&tmp);
        panic!("ferrytype test module: cannot rename {} to {}: {e}", tmp.display(), so.display())
    });
    so
}

/// Compiles `src` into the shared object `out` with `cc`, or `gcc` when there is no `cc`.
fn compile(src: &Path, out: &Path) {
    for compiler in ["cc", "gcc"] {
        let result = Command::new(compiler).args(["-shared", "-fPIC", "-O2", "-o"]).arg(out).arg(src).output();
        let output = match result {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("ferrytype test module: cannot run {compiler}: {e}"),
        };
        if !output.status.success() {
            let _ = std::fs::remove_file(out);
            panic!(
                "ferrytype test module: `{compiler}` failed ({}) compiling {}: {}",
                output.status,
                src.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        return;
    }
    panic!("ferrytype test module: no C compiler found (tried cc and gcc) to build {}", src.display());
}

/// Modification time of `path`, or `None` when it does not exist or cannot be read.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
