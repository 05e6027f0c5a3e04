//! `drove kernel build`: compiles the migration-enabled kernel from source.
