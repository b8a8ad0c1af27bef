"""Model surgery: importance and masks, the one removal rule, physical slicing, activation checkpointing,
least-squares reconstruction of kept weights, and the sparsity-level database built from it (with the
`database` stage around it: `database_stage`)."""
