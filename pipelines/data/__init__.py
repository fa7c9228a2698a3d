"""Data: videos -> shots -> clips -> WebDataset shards, and the training loaders that read them
(on-the-fly degradation, flow pairs)."""
