//! Turning a dependency's panic into an error.
//!
//! The parquet crate panics on some corrupt files instead of returning an error (an
//! out-of-range slice in its footer or page decoding). While a [`Guard`] is alive, the panic
//! hook records the message and location instead of printing them, and the code that caught
//! the unwind ([`catch`], or the engine's asynchronous guard) puts them into the error it
//! returns.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Guards alive now: while any is, a panic is recorded, not printed.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// The last recorded panic: message and `file:line`.
static LAST: Mutex<Option<String>> = Mutex::new(None);
static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ACTIVE.load(Ordering::SeqCst) == 0 {
                return previous(info);
            }
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", short_path(l.file()), l.line()))
                .unwrap_or_default();
            let text = format!("{}{at}", payload_text(info.payload()));
            if let Ok(mut last) = LAST.lock() {
                *last = Some(text);
            }
        }));
    });
}

/// A registry path without the machine-specific prefix: `parquet-59.3.2/src/...`.
fn short_path(file: &str) -> &str {
    match file.find("/registry/src/") {
        Some(i) => {
            let rest = &file[i + "/registry/src/".len()..];
            rest.split_once('/').map_or(rest, |(_, tail)| tail)
        }
        None => file,
    }
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// While alive, panics are recorded for [`describe`] / [`take_last`] instead of printed.
pub struct Guard(());

impl Guard {
    pub fn enter() -> Self {
        install_hook();
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Guard(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The last recorded panic's text (message and location), taken.
pub fn take_last() -> Option<String> {
    LAST.lock().ok().and_then(|mut last| last.take())
}

/// The text of the last recorded panic, or the payload's own message.
pub fn describe(payload: &(dyn Any + Send)) -> String {
    take_last().unwrap_or_else(|| payload_text(payload))
}

/// Runs `work`; a panic inside it is `Err` with its message and location.
pub fn catch<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    let _guard = Guard::enter();
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|payload| describe(payload.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_location() {
        let caught = catch(|| -> u32 { panic!("slice out of range") }).unwrap_err();
        assert!(caught.starts_with("slice out of range at "), "{caught}");
        assert!(caught.contains("panics.rs:"), "{caught}");
        assert_eq!(catch(|| 7), Ok(7));
    }

    #[test]
    fn registry_paths_lose_their_machine_prefix() {
        assert_eq!(
            short_path(
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/parquet-59.3.2/src/a.rs"
            ),
            "parquet-59.3.2/src/a.rs"
        );
        assert_eq!(short_path("src/guard.rs"), "src/guard.rs");
    }
}
