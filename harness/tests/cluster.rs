//! Full-cluster trials: each brings up its own cluster in Docker (unique name and subnet),
//! breaks it, asserts what it sees with deadlines, and always tears it down.
//!
//! Run with `cargo test -p harness --test cluster`; pass a trial name to filter. Trials run
//! one at a time unless `--test-threads` says otherwise (the machine has 2 cores).

mod trials;

use harness::trial::{announce, prepare};

fn main() {
    let mut args = libtest_mimic::Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let env = if args.list {
        harness::trial::Environment::Unavailable("listing only".into())
    } else {
        prepare()
    };
    announce(&env);
    let trials = trials::all(&env);
    libtest_mimic::run(&args, trials).exit();
}
