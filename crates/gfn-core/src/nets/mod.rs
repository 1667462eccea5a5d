//! Built-in policy networks beyond the MLP, on candle, with parameters drawn from the library's
//! seeded RNG: a pre-LayerNorm [`transformer`] encoder for token sequences and a [`gin`] (graph
//! isomorphism network) for graphs. Each gives per-position / per-node outputs and a pooled
//! per-state output, so it can serve as P_F, P_B or log F.

pub mod gin;
pub mod transformer;
