//! hostsgen: filled in by its own issue.
