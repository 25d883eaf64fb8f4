//! sca-attention
