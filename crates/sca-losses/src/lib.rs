//! sca-losses
