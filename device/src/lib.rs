//! device (skeleton).
