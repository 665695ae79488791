//! Library side of the `tuwen` command: the pieces its subcommands are made of, public so that
//! tests and `cargo xtask` drive exactly what users run.

pub mod caption;
pub mod device;
pub mod extract;
pub mod parity;
pub mod retrieve;
pub mod score;
pub mod serve;
pub mod train;
pub mod vqa;
