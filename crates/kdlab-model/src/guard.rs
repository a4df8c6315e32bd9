//! Turning a panic into an error without printing it: the one process-wide panic hook.
//!
//! burn's backends report device failures by panicking, and third-party readers (the pickle
//! reader) may panic on hostile bytes; both are caught where they can happen and reported as the
//! errors they are.

use std::cell::Cell;

thread_local! {
    /// Set while this thread is inside `quietly_catch`.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into an error (the panic's message) without printing it.
///
/// One process-wide hook, installed once, stays silent only for threads inside this function:
/// swapping hooks per call would race between threads (the app trains and inspects at once) and
/// could silence every later panic.
pub fn quietly_catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was_quiet));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "internal panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_the_hook_stays_for_others() {
        assert_eq!(quietly_catch(|| 3), Ok(3));
        let caught = quietly_catch(|| -> usize { panic!("broken {}", 7) });
        assert_eq!(caught, Err("broken 7".to_string()));
        let nested = quietly_catch(|| quietly_catch(|| panic!("inner")).is_err());
        assert_eq!(nested, Ok(true));
    }
}
