//! sca-export
