//! sca-eval
