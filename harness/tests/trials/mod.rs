//! Every trial area; each file exports `trials(env)`.

use harness::trial::Environment;
use libtest_mimic::Trial;

pub mod batch;
pub mod common;
pub mod daily;
pub mod detect;
pub mod foundation;
pub mod grading;
pub mod hardening;
pub mod hostile;
pub mod hosts;
pub mod members;
pub mod partition;
pub mod proxy;
pub mod ssh;
pub mod trust;

/// All trials, in the order they run.
pub fn all(env: &Environment) -> Vec<Trial> {
    let mut t = Vec::new();
    t.extend(foundation::trials(env));
    t.extend(hosts::trials(env));
    t.extend(detect::trials(env));
    t.extend(members::trials(env));
    t.extend(ssh::trials(env));
    t.extend(trust::trials(env));
    t.extend(partition::trials(env));
    t.extend(proxy::trials(env));
    t.extend(grading::trials(env));
    t.extend(batch::trials(env));
    t.extend(hardening::trials(env));
    t.extend(hostile::trials(env));
    t.extend(daily::trials(env));
    t
}
