//! Layers over tensors and the loader that fills them from checkpoints by their
//! public names.
