//! The subcommands a user runs: `up` (and `verify`, which is `up --verify`), `doctor`,
//! `cleanup`, and `completions` and `man` (`generate`). Each puts the layers below together; nothing below uses them. (`guard` and
//! `oci-runtime`, hidden, live in `host`: they are parts of one host's daemon tree.)
//!
//! Layer rule: `cmd` is the top layer; it may use every other folder.

pub mod cleanup;
pub mod doctor;
pub mod generate;
pub mod up;
