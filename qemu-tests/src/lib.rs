//! VM harness for drove's QEMU tests.
