//! Boot media writers, one table keyed by output name (`disk`, `floppy`, `pxe`).

pub mod fat;
