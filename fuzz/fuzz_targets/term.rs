//! Literal terms: `term::parse_elixir`, and `term::parse_erlang` with the lock-file literals and
//! with every literal (what a Hex tarball's `metadata.config` is read with), on arbitrary text.
//! Nothing may panic or overflow the stack. Every literal is a superset of the lock-file ones:
//! what `Literals::Lock` reads, `Literals::All` reads too, as the same terms at the same places
//! (but for the escape `\^?`, which lock files read as DEL and Erlang as 31).

#![no_main]

use hexmirror::term::{self, Literals};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = term::parse_elixir(text);
    let all = term::parse_erlang(text, Literals::All);
    if let Ok(lock) = term::parse_erlang(text, Literals::Lock) {
        let all = all.expect("what the lock-file literals read, every literal reads");
        if !text.contains("^?") {
            assert_eq!(lock, all, "the lock-file and full readings differ");
        }
    }
});
