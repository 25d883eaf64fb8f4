//! sca-cluster
