//! sca-data
