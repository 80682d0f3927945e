//! The binary's memory allocator (a module of `main.rs`, not of the library): jemalloc on Linux
//! with glibc, the system's elsewhere.
//!
//! glibc's malloc keeps freed memory resident in the holes between live allocations, and sled
//! reads, drops and reads again index pages all the time: a re-sync over a store of hex.pm's
//! size (209,002 entries) peaked at 141–151 MiB of RSS with glibc (two arenas, `malloc_trim`
//! every second) around 60 MiB of live heap. jemalloc hands freed pages back to the system after
//! a decay time.
//!
//! - **The server** keeps jemalloc's arenas and thread caches, with freed pages returned after
//!   one second instead of ten.
//! - **Every other command** ([`run_lean`]) reads each entry about once and exits: its threads
//!   share one arena without thread caches, and freed pages go back at once. The same re-sync
//!   peaks at 95 MiB, in the same time (`bench/SCALE.md`).

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod imp {
    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// Read by jemalloc when it starts (before `main`); `_RJEM_MALLOC_CONF` in the environment
    /// is read after it and wins.
    #[allow(non_upper_case_globals)]
    #[export_name = "_rjem_malloc_conf"]
    pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(&CONF[0]);

    const TEXT: &[u8] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

    /// [`TEXT`] as the C string jemalloc reads.
    static CONF: [std::ffi::c_char; TEXT.len()] = {
        let mut out = [0; TEXT.len()];
        let mut i = 0;
        while i < TEXT.len() {
            out[i] = TEXT[i] as std::ffi::c_char;
            i += 1;
        }
        out
    };

    /// Sets a jemalloc control; `name` is NUL-terminated.
    fn write<T>(name: &[u8], value: T) -> Result<(), tikv_jemalloc_ctl::Error> {
        // SAFETY: every name passed here is a writable control of exactly type `T` (ssize_t
        // as isize, bool, or unsigned as u32).
        unsafe { tikv_jemalloc_ctl::raw::write(name, value) }
    }

    fn tune<T>(name: &[u8], value: T) {
        if let Err(e) = write(name, value) {
            let control = String::from_utf8_lossy(&name[..name.len() - 1]);
            tracing::debug!(%control, error = %e, "allocator: not tuned");
        }
    }

    /// Freed pages go back to the system at once, in every arena, now and later.
    pub fn return_freed_at_once() {
        tune(b"arenas.dirty_decay_ms\0", 0isize);
        tune(b"arenas.muzzy_decay_ms\0", 0isize);
        let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
        for i in 0..arenas {
            for kind in ["dirty", "muzzy"] {
                // Arenas not created yet refuse: they take the defaults above when they are.
                let _ = write(format!("arena.{i}.{kind}_decay_ms\0").as_bytes(), 0isize);
            }
        }
    }

    /// The calling thread allocates from arena 0 and keeps no cache of freed blocks.
    pub fn lean_thread() {
        tune(b"thread.tcache.enabled\0", false);
        tune(b"thread.arena\0", 0u32);
    }
}

#[cfg(not(all(target_os = "linux", not(target_env = "musl"))))]
mod imp {
    pub fn return_freed_at_once() {}
    pub fn lean_thread() {}
}

/// For a command other than `serve`, before its runtime starts: freed pages are returned at
/// once and this thread runs lean; `runtime`'s threads run lean too.
pub fn run_lean(runtime: &mut tokio::runtime::Builder) {
    imp::return_freed_at_once();
    imp::lean_thread();
    runtime.on_thread_start(imp::lean_thread);
}
