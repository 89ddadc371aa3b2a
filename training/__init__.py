"""Layer 2: the config-driven trainer. Imports reid only."""
