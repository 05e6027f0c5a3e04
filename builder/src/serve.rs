//! `drove serve`: HTTP server for the PXE directory.
