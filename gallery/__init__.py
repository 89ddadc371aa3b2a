"""Layer 2: the identity store (SQL is the truth, FAISS is derived). Imports reid only."""
