"""Text: token and segment features, baselines, embeddings and LLM attribution."""
