"""Host-side data: sources -> documents -> packed rows (the batch contract) -> batches."""
