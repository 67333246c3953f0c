//! One module per command (the binary's; the library has none of this).

pub(crate) mod check;
pub(crate) mod history;
pub(crate) mod mount;
pub(crate) mod notify;
pub(crate) mod options;
pub(crate) mod repair;
pub(crate) mod status;
