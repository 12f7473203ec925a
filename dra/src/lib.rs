//! dra (skeleton).
