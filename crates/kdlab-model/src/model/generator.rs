//! burn's random generator is process-wide, and building a module draws from it: some tensors at
//! construction (`Tensor::random` CLS tokens), the rest lazily at first use. The app trains,
//! inspects and evaluates at once, so every construction of a model — random or loaded from a
//! file, whose construction draws too before the weights replace the draws — holds one lock.
//! Without it, loading a checkpoint on one thread would shift the random demo model another
//! thread is building, and the "same seed, same model" promise would depend on timing.

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

static GENERATOR: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds `GENERATOR` (a seeded build loads a teacher from its file).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` holding the generator lock; re-entered by the thread that holds it, `f` just runs.
fn exclusively<T>(f: impl FnOnce() -> T) -> T {
    if HOLDING.with(Cell::get) {
        return f();
    }
    // A panic while building (a backend failure) leaves nothing half-done behind the lock.
    let _only_us = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            HOLDING.with(|h| h.set(false));
        }
    }
    HOLDING.with(|h| h.set(true));
    let _release = Release;
    f()
}

/// Seeds the backend's generator and runs `init` while no other thread of the process builds
/// a model. `init` must `materialize` what it builds, so that every draw happens here.
pub fn seeded<B: Backend, T>(device: &B::Device, seed: u64, init: impl FnOnce() -> T) -> T {
    exclusively(|| {
        B::seed(device, seed);
        init()
    })
}

/// Runs `build` (a model built and then given its weights) while no other thread builds one:
/// its construction draws from the shared generator, which must not shift a seeded build.
pub fn unseeded<T>(build: impl FnOnce() -> T) -> T {
    exclusively(build)
}

/// Makes every lazily initialised parameter of `module` draw its values now.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}
