//! sca-train
